"""Dock widget "Tumour shape": intuitive sliders + a point in the scan -> a new labels layer.

Users ask for "a tumour of 8 cm3, fairly round, here": each intuitive feature (volume, sphericity,
elongation, flatness, maximum diameter) has a slider with a checkbox, unchecked features are filled
plausibly by the model from its training distribution, and the last point of a points layer says
where. The result is placed on the image's own grid (`place_shape`) and added as a labels layer with
the image's geometry, so it saves aligned with the scan.

The default model is the two-region brain model `shape-gan-brats` (`appearance_editing.SHAPE_MODEL`: necrotic core
inside the tumour core, label 1 inside label 2), the model the brain editor of "Tumour synthesis" uses for 3D brain
scans; a model with a ``necrotic_core`` region gets a necrotic-core control (% of the core volume, sent as
``necrotic_core/VoxelVolume``). The lesion model (`shape-gan-lesion`) is one model-field edit away.

Generation runs `generate_shape_job` in a napari thread worker (progress per stage, Cancel between stages, on the
chosen device); the layer is added only when the job finishes.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, FloatSlider, LineEdit, PushButton, SpinBox, create_widget

from napari_medgen.errors import InvalidInputError, MedGenError
from napari_medgen.widgets.job_widget import JobSpec, JobWidget

if TYPE_CHECKING:
    import napari

    from napari_medgen.core.progress import Job
    from napari_medgen.core.volume import LabelMap, Volume


def point_to_physical(points_layer: Any) -> tuple[float, float, float]:
    """LPS (x, y, z) mm of the last point of a napari points layer (world axes are reversed LPS)."""
    data = np.asarray(points_layer.data)
    if data.size == 0:
        raise InvalidInputError("The points layer is empty: click the tumour location with the points tool first.")
    if data.shape[1] != 3:
        raise InvalidInputError(f"The points layer must be 3D (z, y, x); it has {data.shape[1]} dimensions.")
    world = np.asarray(points_layer.data_to_world(data[-1]), dtype=float)
    return (float(world[2]), float(world[1]), float(world[0]))


def shape_at_point_job(reference: Volume, center_mm: Sequence[float], features: dict[str, float],
                       **options: Any) -> Job[LabelMap]:
    """`generate_shape_job`, then `place_shape` on ``reference``'s grid at ``center_mm`` (in the worker too)."""
    from napari_medgen.pipelines.shape_generation import generate_shape_job, place_shape

    result = yield from generate_shape_job(features, **options)
    return place_shape(result.mask, reference, center_mm)


#: the inner region whose volume the necrotic-core control sets, and that control's range and default (%)
NECROTIC_REGION = "necrotic_core"
NECROTIC_PERCENT = (1.0, 60.0, 20.0)


#: pyradiomics shape feature -> (plain label with unit, display scale, what it means); the pyradiomics name goes
#: into the tooltip. Volumes are shown in cm3 (what clinicians quote) and sent in mm3.
PLAIN_NAMES: dict[str, tuple[str, float, str]] = {
    "VoxelVolume": ("volume (cm3)", 1e-3, "Tumour volume counted in voxels, in cm3."),
    "MeshVolume": ("mesh volume (cm3)", 1e-3, "Volume inside the tumour's surface mesh, in cm3."),
    "SurfaceArea": ("surface area (cm2)", 1e-2, "Area of the tumour's surface, in cm2."),
    "Sphericity": ("roundness (sphericity)", 1.0, "How round: 1 = a perfect sphere, lower = more irregular."),
    "Elongation": ("elongation", 1.0, "Second / first principal axis: 1 = not elongated, lower = cigar-like."),
    "Flatness": ("flatness", 1.0, "Third / first principal axis: 1 = not flat, lower = pancake-like."),
    "Maximum3DDiameter": ("longest diameter (mm)", 1.0, "The largest distance between two surface points, in mm."),
    "MajorAxisLength": ("major axis (mm)", 1.0, "Length of the longest principal axis, in mm."),
}


def inner_regions(model: str) -> list[str]:
    """The inner regions of a shape model (config.json; empty for one-region models)."""
    from napari_medgen.hub import read_checkpoint_config

    regions = read_checkpoint_config(model)["extra"].get("regions") or []
    return [str(r) for r in regions[:-1]]


class TumourShapeWidget(JobWidget):
    """Generate a tumour mask with requested shape features at a point of an image."""

    def __init__(self, viewer: napari.viewer.Viewer, model: str | None = None) -> None:
        from napari_medgen.pipelines.appearance_editing import SHAPE_MODEL
        from napari_medgen.pipelines.shape_generation import shape_controls

        super().__init__(viewer)
        # 3D brain scans: the two-region brain model (the lesion model is shape-gan-lesion)
        self._model = LineEdit(value=model or SHAPE_MODEL, label="model")
        self._model.tooltip = ("Shape model: a bundled name or checkpoint folder. shape-gan-brats: gliomas with a "
                               "necrotic core (label 1) inside the tumour core (label 2); shape-gan-lesion: one-region "
                               "lesions.")
        self._image = create_widget(annotation="napari.layers.Image", label="image")
        self._image.tooltip = "The scan the tumour goes into: the mask is made on its grid."
        self._points = create_widget(annotation="napari.layers.Points", label="location (points)")
        self._points.tooltip = "The last point of this layer is the tumour's centre."
        self._controls: dict[str, tuple[CheckBox, FloatSlider]] = {}
        rows: list[Any] = [self._model, self._image, self._points]
        for control in shape_controls(self._model.value):
            label, scale, meaning = PLAIN_NAMES.get(control.name, (control.name, 1.0, ""))
            use = CheckBox(value=control.name in ("VoxelVolume", "Sphericity"), text=f"set {label.split(' (')[0]}")
            low, high, default = (v * scale for v in (control.min, control.max, control.default))
            slider = FloatSlider(value=default, min=low, max=high, label=label, step=(high - low) / 200)
            tip = (f"{meaning} pyradiomics name: {control.name}"
                   f"{f' (sent in {control.unit})' if control.unit else ''}; range: the shape model's training "
                   "tumours (1st-99th percentile).").strip()
            use.tooltip = f"Ticked: ask for this value; unticked: the model decides. {tip}"
            slider.tooltip = tip
            self._controls[control.name] = (use, slider)
            rows.extend([use, slider])
        low, high, default = NECROTIC_PERCENT
        self._necrotic_use = CheckBox(value=False, text="set necrotic core")
        self._necrotic_use.tooltip = ("Ticked: ask for a necrotic core of this share of the tumour core volume (the "
                                      "volume slider's value is sent too); unticked: the model decides.")
        self._necrotic = FloatSlider(value=default, min=low, max=high, step=0.5, label="necrotic core (% of core)",
                                     enabled=False)
        self._necrotic.tooltip = ("Necrotic core volume as % of the tumour core volume (sent as "
                                  f"{NECROTIC_REGION}/VoxelVolume); only for models with a {NECROTIC_REGION} region.")
        self._necrotic_use.changed.connect(lambda value: setattr(self._necrotic, "enabled", bool(value)))
        rows.extend([self._necrotic_use, self._necrotic])
        self._seed = SpinBox(value=0, min=0, max=2**31 - 1, label="seed")
        self._seed.tooltip = "Random seed: same request and seed, same shape."
        self._generate = PushButton(text="Generate tumour mask")
        self._generate.tooltip = "Adds a new labels layer on the image's grid, centred on the last point."
        rows.extend([self._seed, *self.job_controls(self._generate)])
        self.extend(rows)
        self._generate.changed.connect(self._start)
        self._model.changed.connect(self._model_changed)
        self.last_layer: Any = None
        self._necrotic_available()

    def _necrotic_available(self) -> bool:
        """Enable the necrotic-core control when the model has that region (untick it otherwise)."""
        try:
            has = NECROTIC_REGION in inner_regions(str(self._model.value).strip())
        except MedGenError:
            has = False
        self._necrotic_use.enabled = has
        if not has:
            self._necrotic_use.value = False
        self._necrotic.enabled = has and bool(self._necrotic_use.value)
        return has

    def _model_changed(self) -> None:
        """Another model (bundled name or folder): its own slider ranges and defaults (each model's bank
        differs: e.g. `shape-gan-brats` spans larger tumours than `shape-gan-lesion`)."""
        from napari_medgen.pipelines.shape_generation import shape_controls

        self._necrotic_available()
        try:
            controls = {c.name: c for c in shape_controls(self._model.value)}
        except MedGenError as error:
            self._status.value = f"model: {error}"
            return
        for name, (use, slider) in self._controls.items():
            control = controls.get(name)
            slider.enabled = use.enabled = control is not None
            if control is None:
                use.value = False
                continue
            scale = PLAIN_NAMES.get(name, (name, 1.0, ""))[1]
            low, high, default = (v * scale for v in (control.min, control.max, control.default))
            # widen first so that neither bound is ever set across the current value
            slider.min = min(slider.min, low)
            slider.max = max(slider.max, high)
            slider.value = default
            slider.min, slider.max = low, high
            slider.step = (high - low) / 200
        self._status.value = f"model {self._model.value}: slider ranges from its training data"

    def value_of(self, name: str) -> float:
        """A slider's value in pyradiomics units (volumes shown in cm3 are sent in mm3)."""
        return float(self._controls[name][1].value) / PLAIN_NAMES.get(name, (name, 1.0, ""))[1]

    def request(self) -> dict[str, float]:
        """The features whose checkbox is ticked, in real units; with the necrotic-core control ticked also the
        volume and ``necrotic_core/VoxelVolume`` (that % of it)."""
        request = {name: self.value_of(name) for name, (use, _) in self._controls.items() if use.value}
        if self._necrotic_use.value and self._necrotic_use.enabled and "VoxelVolume" in self._controls:
            volume = self.value_of("VoxelVolume")
            request["VoxelVolume"] = volume
            request[f"{NECROTIC_REGION}/VoxelVolume"] = volume * float(self._necrotic.value) / 100.0
        return request

    def job_arguments(self) -> JobSpec:
        """(`shape_at_point_job`, args, kwargs, result handler) from the widget state (only the image's grid is
        read)."""
        from napari_medgen.layers import layer_to_volume

        if self._image.value is None:
            raise InvalidInputError("Choose the image the tumour goes into (open a scan first).")
        if self._points.value is None:
            raise InvalidInputError("Add a points layer and click the tumour location in the image.")
        reference = layer_to_volume(self._image.value)
        centre = point_to_physical(self._points.value)
        seed = int(self._seed.value)
        options = {"spacing": reference.spacing, "seed": seed, "model": self._model.value}
        request = self.request()
        return shape_at_point_job, (reference, centre, request), options, partial(self._add_layer, seed=seed,
                                                                                   request=request)

    def generate(self) -> LabelMap:
        """Synchronous generation on the image grid (scripts and tests); the dock uses the worker path."""
        from napari_medgen.core.progress import run_job

        job, args, kwargs, _ = self.job_arguments()
        return run_job(job(*args, **kwargs, device=self.checked_device()))

    def _start(self) -> None:
        self.start_job(self.job_arguments)

    def _add_layer(self, labels: LabelMap, seed: int | None = None, request: dict[str, float] | None = None) -> None:
        """Add ``labels`` as a new layer named by ``seed`` (default: the seed box; the run passes its own). Its
        metadata ``medgen_shape`` (model, request, measured volume) tells the Tumour synthesis widget to take it
        as the shape of the next synthesis."""
        from napari_medgen.layers import volume_to_layer_data

        name = f"tumour shape (seed {int(self._seed.value) if seed is None else seed})"
        data, kwargs, _ = volume_to_layer_data(labels, name)
        kwargs["metadata"] = {**kwargs.get("metadata", {}), "medgen_shape": {
            "model": str(self._model.value), "request": dict(request or {}),
            "VoxelVolume": float((np.asarray(labels.array) > 0).sum() * np.prod(labels.spacing))}}
        self.last_layer = self._viewer.add_labels(data, **kwargs)
        volume = float((labels.array > 0).sum() * np.prod(labels.spacing))
        self._status.value = f"added '{name}': {volume:.0f} mm3"
