"""MedGenLib: the parts of the 3D Slicer MedGen module that need no GUI.

`conversions` (MRML nodes <-> napari-medgen `Volume` / `LabelMap`), `jobs` (the backend in a subprocess with
progress lines and Cancel), `operations` (inputs checked and written, results loaded back as nodes), `dependencies`
(what to pip-install without touching Slicer's own packages). `worker` is the script the subprocess runs.
Only MRML classes are used here (no Qt, no ``slicer.util``), so everything is testable on ``slicer-core``.
"""
