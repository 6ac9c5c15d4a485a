"""Dock widget "Tumour shape": intuitive sliders + a point in the scan -> a new labels layer.

Users ask for "a tumour of 8 cm3, fairly round, here": each intuitive feature (volume, sphericity,
elongation, flatness, maximum diameter) has a slider with a checkbox, unchecked features are filled
plausibly by the model from its training distribution, and the last point of a points layer says
where. The result is placed on the image's own grid (`place_shape`) and added as a labels layer with
the image's geometry, so it saves aligned with the scan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, Container, FloatSlider, Label, LineEdit, PushButton, SpinBox, create_widget

from napari_medgen.errors import InvalidInputError

if TYPE_CHECKING:
    import napari

    from napari_medgen.core.volume import LabelMap


def point_to_physical(points_layer: Any) -> tuple[float, float, float]:
    """LPS (x, y, z) mm of the last point of a napari points layer (world axes are reversed LPS)."""
    data = np.asarray(points_layer.data)
    if data.size == 0:
        raise InvalidInputError("The points layer is empty: click the tumour location with the points tool first.")
    if data.shape[1] != 3:
        raise InvalidInputError(f"The points layer must be 3D (z, y, x); it has {data.shape[1]} dimensions.")
    world = np.asarray(points_layer.data_to_world(data[-1]), dtype=float)
    return (float(world[2]), float(world[1]), float(world[0]))


class TumourShapeWidget(Container):
    """Generate a tumour mask with requested shape features at a point of an image."""

    def __init__(self, viewer: napari.viewer.Viewer, model: str | None = None) -> None:
        from napari_medgen.pipelines.shape_generation import DEFAULT_MODEL, shape_controls

        super().__init__(labels=True)
        self._viewer = viewer
        self._model = LineEdit(value=model or DEFAULT_MODEL, label="model")
        self._image = create_widget(annotation="napari.layers.Image", label="image")
        self._points = create_widget(annotation="napari.layers.Points", label="location (points)")
        self._controls: dict[str, tuple[CheckBox, FloatSlider]] = {}
        rows: list[Any] = [self._model, self._image, self._points]
        for control in shape_controls(self._model.value):
            use = CheckBox(value=control.name in ("VoxelVolume", "Sphericity"), text=f"set {control.name}")
            unit = f" ({control.unit})" if control.unit else ""
            slider = FloatSlider(value=control.default, min=control.min, max=control.max,
                                 label=f"{control.name}{unit}", step=(control.max - control.min) / 200)
            self._controls[control.name] = (use, slider)
            rows.extend([use, slider])
        self._seed = SpinBox(value=0, min=0, max=2**31 - 1, label="seed")
        self._generate = PushButton(text="Generate tumour mask")
        self._status = Label(value="")
        rows.extend([self._seed, self._generate, self._status])
        self.extend(rows)
        self._generate.changed.connect(self._start)
        self._model.changed.connect(self._model_changed)
        self.worker: Any = None
        self.last_layer: Any = None

    def _model_changed(self) -> None:
        """Another model (bundled name or folder): its own slider ranges and defaults (each model's bank
        differs: e.g. `shape-gan-brats` spans larger tumours than `shape-gan-lesion`)."""
        from napari_medgen.errors import MedGenError
        from napari_medgen.pipelines.shape_generation import shape_controls

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
            # widen first so that neither bound is ever set across the current value
            slider.min = min(slider.min, control.min)
            slider.max = max(slider.max, control.max)
            slider.value = control.default
            slider.min, slider.max = control.min, control.max
            slider.step = (control.max - control.min) / 200
        self._status.value = f"model {self._model.value}: slider ranges from its training data"

    def request(self) -> dict[str, float]:
        """The features whose checkbox is ticked, in real units."""
        return {name: float(slider.value) for name, (use, slider) in self._controls.items() if use.value}

    def generate(self) -> LabelMap:
        """Synchronous generation on the image grid (used by the worker, tests and scripts)."""
        from napari_medgen.layers import layer_to_volume
        from napari_medgen.pipelines.shape_generation import generate_shape, place_shape

        if self._image.value is None:
            raise InvalidInputError("Choose the image the tumour goes into (open a scan first).")
        if self._points.value is None:
            raise InvalidInputError("Add a points layer and click the tumour location in the image.")
        reference = layer_to_volume(self._image.value)
        centre = point_to_physical(self._points.value)
        shape = generate_shape(self.request(), spacing=reference.spacing, seed=int(self._seed.value),
                               model=self._model.value)
        return place_shape(shape, reference, centre)

    def _start(self) -> None:
        from napari.qt.threading import create_worker

        self._generate.enabled = False
        self._status.value = "generating..."
        self.worker = create_worker(self.generate, _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(self._add_layer)
        self.worker.errored.connect(self._report)
        self.worker.finished.connect(lambda: setattr(self._generate, "enabled", True))
        self.worker.start()

    def _add_layer(self, labels: LabelMap) -> None:
        from napari_medgen.layers import volume_to_layer_data

        name = f"tumour shape (seed {int(self._seed.value)})"
        data, kwargs, _ = volume_to_layer_data(labels, name)
        self.last_layer = self._viewer.add_labels(data, **kwargs)
        volume = float((labels.array > 0).sum() * np.prod(labels.spacing))
        self._status.value = f"added '{name}': {volume:.0f} mm3"

    def _report(self, error: Exception) -> None:
        from napari_medgen.widgets.feedback import show_error

        show_error(self._status, error)
