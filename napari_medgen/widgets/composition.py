"""Dock widget "Tumour composition": place a real tumour into a tumour-free image (seed 000, training-free).

Inputs are layers: the background image, the object image and its labels layer (the tumour), and the target, either
the last point of a points layer (the tumour's centre; size from the scale box) or the first shape of a shapes layer
(a rectangle: centre and size, the scale follows from the rectangle). Coordinates go through world space, so layers
with different scales or offsets line up. A thin adapter over `pipelines.composition` (the CLI's code); it runs in
a thread worker (`JobWidget`: progress, Cancel, device) and adds two layers only when the run finishes: the composite
(an image layer on the background's geometry, shown with the background's contrast) and the placed tumour (labels).
3D backgrounds are composed slice by slice along their first axis; the target's first coordinate picks the slice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, LineEdit, PushButton, SpinBox, create_widget

from napari_medgen.errors import InvalidInputError
from napari_medgen.widgets.job_widget import JobSpec, JobWidget, source_display

if TYPE_CHECKING:
    import napari


def target_from_layers(background: Any, points: Any, shapes: Any, object_mask: np.ndarray, margin: float,
                       scale: float) -> tuple[tuple[float, ...], float]:
    """(target in the background's data coordinates, reversed: (x, y[, slice])) and the scale: a rectangle of
    ``shapes`` fixes both, else the last point of ``points`` with ``scale``."""
    ndim = background.ndim
    if shapes is not None and len(shapes.data):
        corners = np.asarray([background.world_to_data(shapes.data_to_world(v)) for v in shapes.data[0]])
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        centre = (lo + hi) / 2
        mask = np.asarray(object_mask) != 0
        ys, xs = np.nonzero(mask.reshape(-1, *mask.shape[-2:]).any(axis=0))
        crop_h = (ys.max() - ys.min() + 1) * (1 + 2 * margin)
        crop_w = (xs.max() - xs.min() + 1) * (1 + 2 * margin)
        fit = float(min((hi[-2] - lo[-2]) / crop_h, (hi[-1] - lo[-1]) / crop_w))
        if fit <= 0:
            raise InvalidInputError("The target rectangle has no area; draw a rectangle around the target place.")
        scale = fit
    elif points is not None and len(points.data):
        centre = np.asarray(background.world_to_data(points.data_to_world(points.data[-1])))
    else:
        raise InvalidInputError("Mark the target: add a point (points layer) or draw a rectangle (shapes layer) on the "
                                "background, and choose that layer.")
    centre = np.asarray(centre, float)[-ndim:]
    at = (float(centre[-1]), float(centre[-2])) + ((float(centre[0]),) if ndim == 3 else ())
    return at, float(scale)


class CompositionWidget(JobWidget):
    """Compose a tumour (object image + labels) into a background image at a marked place."""

    def __init__(self, viewer: napari.viewer.Viewer, model: str | None = None) -> None:
        from napari_medgen.pipelines.composition import DEFAULT_MODEL, DEFAULTS, METHODS

        super().__init__(viewer)
        self._background: ComboBox = create_widget(annotation="napari.layers.Image", label="background")
        self._object: ComboBox = create_widget(annotation="napari.layers.Image", label="object image")
        self._object_labels: ComboBox = create_widget(annotation="napari.layers.Labels", label="object labels")
        self._points: ComboBox = create_widget(annotation="napari.layers.Points", label="target point",
                                               options={"nullable": True})
        self._shapes: ComboBox = create_widget(annotation="napari.layers.Shapes", label="target rectangle",
                                               options={"nullable": True})
        self._shapes.tooltip = "A rectangle sets both the place and the size (it wins over the point)."
        self._scale = FloatSpinBox(value=1.0, min=0.05, max=20.0, step=0.05, label="scale")
        self._method = ComboBox(choices=METHODS, value="ours", label="method")
        self._model = LineEdit(value=model or DEFAULT_MODEL, label="backbone")
        self._model.tooltip = ("A mask-ablated mask-diffusion model (bundled name or folder) or a local Stable "
                               "Diffusion folder (nothing is downloaded). copy-paste and poisson use none.")
        self._steps = SpinBox(value=DEFAULTS["steps"], min=1, max=1000, label="steps")
        self._t_prime = SpinBox(value=DEFAULTS["t_prime"], min=0, max=1000, label="T'")
        self._t_prime.tooltip = "Grid point where composition starts (T' of the steps remain); seed 000 uses 6 of 20."
        self._tau = SpinBox(value=DEFAULTS["tau"], min=0, max=1000, label="tau")
        self._tau.tooltip = "The background outside the user box is re-injected for t in [tau, T']."
        self._seed = SpinBox(value=0, min=0, max=2**31 - 1, label="seed")
        self._same_units = CheckBox(value=False, text="object in the background's units")
        self._same_units.tooltip = ("Tick when object and background come from one scan or scanner: both are mapped "
                                    "with one intensity window, so a bright tumour stays bright.")
        self._run = PushButton(text="Compose")
        self.extend([self._background, self._object, self._object_labels, self._points, self._shapes, self._scale,
                     self._method, self._model, self._steps, self._t_prime, self._tau, self._seed, self._same_units,
                     *self.job_controls(self._run)])
        self.last_layers: tuple[Any, Any] | None = None
        self._run.changed.connect(self._start)

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer lists (napari calls this when layers change)."""
        for box in (self._background, self._object, self._object_labels, self._points, self._shapes):
            box.reset_choices()

    def options(self) -> dict[str, Any]:
        """Positional inputs and keyword options of the composition job from the current widget state."""
        from napari_medgen.pipelines.composition import check_settings

        bg, obj, labels = self._background.value, self._object.value, self._object_labels.value
        if bg is None or obj is None or labels is None:
            raise InvalidInputError("Choose the background image, the object image and the object's labels layer.")
        method = str(self._method.value)
        check_settings(method, int(self._steps.value), int(self._t_prime.value), int(self._tau.value), None)
        at, scale = target_from_layers(bg, self._points.value, self._shapes.value, labels.data, 0.15,
                                       float(self._scale.value))
        model = str(self._model.value).strip()
        if not model and method not in ("copy-paste", "poisson"):
            raise InvalidInputError("Give a backbone: a bundled model name, a checkpoint folder or a Stable Diffusion "
                                    "folder.")
        return {"at": at, "scale": scale, "method": method, "model": model, "steps": int(self._steps.value),
                "t_prime": int(self._t_prime.value), "tau": int(self._tau.value), "seed": int(self._seed.value),
                "same_units": bool(self._same_units.value)}

    def _start(self) -> None:
        self.start_job(self._job, status="composing...")

    def _job(self) -> JobSpec:
        from napari_medgen.core.volume import Volume
        from napari_medgen.pipelines.composition import compose_job
        from napari_medgen.pipelines.composition_volume import compose_volume_job

        options = self.options()
        bg_layer = self._background.value
        bg = np.asarray(bg_layer.data, np.float32)
        obj = np.asarray(self._object.value.data, np.float32)
        labels = np.asarray(self._object_labels.value.data)
        if bg_layer.rgb or self._object.value.rgb:
            raise InvalidInputError("RGB layers are not supported here; use greyscale image layers.")
        if bg.ndim == 3:
            if obj.ndim == 2:
                obj, labels = obj[None], labels[None]
            args = (Volume(bg), Volume(obj), Volume(obj).as_labels(labels.astype(np.int32)))
            return compose_volume_job, args, {**options, "axis": 0}, lambda r: self._add_layers(
                r.image.array, r.mask.array, options)
        if bg.ndim != 2 or obj.ndim != 2:
            raise InvalidInputError(f"The background and object must be 2D images (or a 3D background); got {bg.ndim}D "
                                    f"and {obj.ndim}D.")
        return compose_job, (bg, obj, labels), options, lambda r: self._add_layers(r.image, r.mask, options)

    def _add_layers(self, image: np.ndarray, mask: np.ndarray, options: dict[str, Any]) -> None:
        bg_layer = self._background.value
        geometry = {"scale": tuple(bg_layer.scale), "translate": tuple(bg_layer.translate)}
        name = f"composite ({options['method']}, seed {options['seed']})"
        image_layer = self._viewer.add_image(np.asarray(image), name=name, metadata={"composition": options},
                                             **geometry, **source_display(bg_layer))
        labels_layer = self._viewer.add_labels(np.asarray(mask).astype(np.uint8),
                                               name=f"placed tumour ({options['method']})", **geometry)
        self.last_layers = (image_layer, labels_layer)
        self._status.value = f"added '{image_layer.name}' and '{labels_layer.name}'"
