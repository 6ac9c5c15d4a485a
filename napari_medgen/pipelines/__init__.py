"""End-to-end operations that front ends call (napari widgets, the CLI, Slicer), one module per pipeline.

A pipeline takes and returns `Volume` / `LabelMap` objects and hides models, schedulers and geometry.
Modules are imported on demand so that importing this package stays cheap (no torch at start-up):

* `napari_medgen.pipelines.shape_generation` -- `generate_shape` (radiomics-conditioned tumour masks)
  and `place_shape` (put a generated mask at a physical point of an image).
"""
