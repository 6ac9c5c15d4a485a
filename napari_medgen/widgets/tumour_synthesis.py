"""Dock widget "Tumour synthesis": put a tumour into a 3D scan, or remove, retexture, resize or move one.

A thin adapter over `napari_medgen.pipelines.tumor_synthesis` (the same code as the CLI):

* location: the last point of a points layer, turned into physical millimetres through that layer's own
  transform (`point_to_physical`, shared with the "Tumour shape" widget);
* shape: the shape generator's request from two sliders (volume, sphericity), or a drawn labels layer
  (on the scan's grid it is used where it is unless a point says where to put it; a mask from another grid
  is centred on its centroid and placed at the point);
* texture: the model's default tumour texture, or the texture of a reference region (a labels layer on a
  reference image, or on the scan itself), with a few intuitive features that can be set by hand on sliders
  whose ranges are the model's training range (2nd-98th percentile, ``feature_ranges`` in its config.json,
  read without torch).

Every operation runs in a napari thread worker over the pipeline's job generator (`JobWidget`, on the chosen
device): each sampling step moves the progress bar and is a cancellation point. The steps box shows the model's
default (`resolve_steps`) and follows the model field. Input layers are copied when the run starts and never
written; the edited scan and its label map are added as two NEW layers with the source image layer's own
transform, only when the job finishes. A cancelled or failed run adds nothing.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
    create_widget,
)

from napari_medgen.errors import DimensionError, InvalidInputError, MedGenError
from napari_medgen.layers import snapshot
from napari_medgen.widgets.job_widget import JobSpec, JobWidget
from napari_medgen.widgets.tumour_shape import point_to_physical

if TYPE_CHECKING:
    import napari

    from napari_medgen.core.volume import LabelMap, Volume
    from napari_medgen.pipelines.tumor_synthesis import EditResult

OPERATIONS: dict[str, str] = {  # operation -> past participle used in the new layers' names
    "synthesize": "synthesized",
    "remove": "removed",
    "retexture": "retextured",
    "resize": "resized",
    "move": "moved",
}
#: intuitive texture features offered as sliders (short names; the model stores them as ``original_<name>``)
TEXTURE_SLIDERS: dict[str, str] = {
    "firstorder_Mean": "brightness of the tumour (the model's normalised intensity, about -1 to 1)",
    "firstorder_Entropy": "heterogeneity: how spread out the tumour's grey levels are",
    "glcm_Contrast": "local contrast: how strongly neighbouring voxels differ (coarse, patchy texture)",
}
SHAPE_SLIDERS: tuple[str, ...] = ("VoxelVolume", "Sphericity")
SHAPE_FROM_SLIDERS = "sliders (shape generator)"
SHAPE_FROM_LABELS = "tumour labels layer"
#: layer transform attributes copied from the source image layer onto the new layers
TRANSFORM_KEYS: tuple[str, ...] = ("scale", "translate", "rotate", "shear")


def texture_controls(model: str) -> list[tuple[str, float, float, float]]:
    """(short name, low, high, default) of each `TEXTURE_SLIDERS` feature, from the checkpoint's config.json.

    The range is the model's ``feature_ranges`` (2nd-98th percentile of its training tumours), the default its
    ``default_features`` (the median); no torch import, so the dock opens fast.
    """
    from napari_medgen.hub import read_checkpoint_config

    data = read_checkpoint_config(model)
    if data["model_type"] != "bridge-unet":
        raise InvalidInputError(
            f"{model!r} is a {data['model_type']!r} checkpoint; tumour synthesis needs a texture-bridge model "
            "(bridge-unet, trained with `medgen train` on the bridge task)."
        )
    extra = data["extra"]
    ranges, defaults = extra.get("feature_ranges"), extra.get("default_features")
    if not isinstance(ranges, dict) or not isinstance(defaults, dict):
        raise InvalidInputError(f"{model!r} has no feature_ranges/default_features in its config.json; re-export it.")
    out = []
    for short in TEXTURE_SLIDERS:
        full = f"original_{short}"
        key = full if full in ranges else short
        if key not in ranges or key not in defaults:
            continue
        low, high = (float(v) for v in ranges[key])
        if not (np.isfinite(low) and np.isfinite(high)):
            continue
        if high <= low:
            high = low + max(abs(low), 1.0) * 1e-3
        out.append((short, low, high, float(np.clip(float(defaults[key]), low, high))))
    return out


def source_transform(layer: Any) -> dict[str, Any]:
    """The layer's own placement in the world (scale, translate, rotate, shear, affine) as plain arrays,
    so new layers land exactly where the source image is shown."""
    out = {key: np.array(getattr(layer, key), dtype=float) for key in TRANSFORM_KEYS}
    out["affine"] = np.array(layer.affine.affine_matrix, dtype=float)
    return out


class TumourSynthesisWidget(JobWidget):
    """Synthesize, remove, retexture, resize or move a tumour in a 3D scan (texture bridge model)."""

    def __init__(self, viewer: napari.viewer.Viewer, model: str | None = None) -> None:
        from napari_medgen.pipelines.tumor_synthesis import DEFAULT_MODEL, DEFAULT_STEPS

        super().__init__(viewer)
        self._model = LineEdit(value=model or DEFAULT_MODEL, label="model")
        self._model.tooltip = "A bundled texture-bridge name or a checkpoint folder (trained with `medgen train`)."
        self._image = create_widget(annotation="napari.layers.Image", label="image")
        self._image.tooltip = "The 3D scan to edit (at the model's voxel spacing, axis-aligned). It is not modified."
        self._points = create_widget(annotation="napari.layers.Points", label="location (points)",
                                     options={"nullable": True})
        self._points.tooltip = "Its last point is the new tumour's centre (Synthesize) or the new centre (Move)."
        self._labels = create_widget(annotation="napari.layers.Labels", label="tumour labels",
                                     options={"nullable": True})
        self._labels.tooltip = ("The tumour to remove / retexture / resize / move, on the image's grid; also the "
                                "shape source for Synthesize when 'shape from' says so.")
        self._label = SpinBox(value=0, min=0, max=65535, label="tumour label (0 = all)")
        self._shape_from = ComboBox(choices=[SHAPE_FROM_SLIDERS, SHAPE_FROM_LABELS], value=SHAPE_FROM_SLIDERS,
                                    label="shape from")
        self._shape_from.tooltip = (
            "Synthesize: a shape generated from the sliders (placed at the point), or the tumour labels layer "
            "(on the image grid: used where it is, or moved to the point if one is given)."
        )
        self._shape_sliders: dict[str, FloatSlider] = {}
        self._shape_note = Label(value="")
        self._texture_labels = create_widget(annotation="napari.layers.Labels", label="texture reference labels",
                                             options={"nullable": True})
        self._texture_labels.tooltip = ("A region whose texture the new tumour copies (Synthesize, Retexture). "
                                        "Empty: the model's default texture. Resize/Move keep the tumour's own.")
        self._texture_image = create_widget(annotation="napari.layers.Image", label="texture reference image",
                                            options={"nullable": True})
        self._texture_image.tooltip = "The scan the reference labels lie on. Empty: the image being edited."
        self._texture_label = SpinBox(value=0, min=0, max=65535, label="reference label (0 = all)")
        self._textures = Container(labels=True, label="texture features")
        self._texture_controls: dict[str, tuple[CheckBox, FloatSlider]] = {}
        self._texture_note = Label(value="")
        self._scale = FloatSpinBox(value=1.5, min=0.2, max=5.0, step=0.1, label="resize scale")
        self._scale.tooltip = "Resize: factor on the tumour's linear size (2 = twice as wide, 8x the volume)."
        self._steps = SpinBox(value=DEFAULT_STEPS, min=1, max=1000, label="steps")
        self._seed = SpinBox(value=0, min=0, max=2**31 - 1, label="seed")
        self._buttons = {op: PushButton(text=op.capitalize()) for op in OPERATIONS}
        self._build_shape_sliders()
        self.extend([self._model, self._image, self._points, self._labels, self._label, self._shape_from,
                     *self._shape_sliders.values(), self._shape_note, self._texture_labels, self._texture_image,
                     self._texture_label, self._textures, self._texture_note, self._scale, self._steps,
                     self._seed, *self.job_controls(*self._buttons.values())])
        for note in (self._shape_note, self._texture_note):
            note.native.setWordWrap(True)
        self.last_layers: tuple[Any, Any] | None = None
        self.last_report: dict[str, Any] | None = None
        self._model.changed.connect(self._refresh_texture_controls)
        self._shape_from.changed.connect(self._shape_source_changed)
        for op, button in self._buttons.items():
            button.changed.connect(lambda *_, op=op: self.start(op))
        self._refresh_texture_controls()
        self._shape_source_changed()
        self.follow_default(self._steps, self._default_steps, self._model)

    def _default_steps(self) -> int:
        from napari_medgen.pipelines.tumor_synthesis import resolve_steps

        return resolve_steps(str(self._model.value).strip())

    # ---- controls ------------------------------------------------------------------------------------
    def _build_shape_sliders(self) -> None:
        """Volume and sphericity sliders over the shape generator's training range (its config.json)."""
        from napari_medgen.pipelines.shape_generation import shape_controls
        from napari_medgen.pipelines.tumor_synthesis import DEFAULT_SHAPE_REQUEST

        try:
            controls = {c.name: c for c in shape_controls()}
        except MedGenError as error:
            self._shape_note.value = "shape generator not available: shape from a labels layer only"
            self._shape_note.tooltip = str(error)
            return
        for name in SHAPE_SLIDERS:
            control = controls.get(name)
            if control is None:
                continue
            default = float(np.clip(DEFAULT_SHAPE_REQUEST.get(name, control.default), control.min, control.max))
            unit = f" ({control.unit})" if control.unit else ""
            slider = FloatSlider(value=default, min=control.min, max=control.max, label=f"{name}{unit}",
                                 step=(control.max - control.min) / 200)
            self._shape_sliders[name] = slider

    def _shape_source_changed(self) -> None:
        for slider in self._shape_sliders.values():
            slider.enabled = self._shape_from.value == SHAPE_FROM_SLIDERS

    def _refresh_texture_controls(self) -> None:
        """One 'set' checkbox + slider per intuitive texture feature of the model named in the model field."""
        self._textures.clear()
        self._texture_controls = {}
        try:
            controls = texture_controls(str(self._model.value).strip())
        except MedGenError as error:
            self._texture_note.value = "model not usable yet (see tooltip): texture sliders unavailable"
            self._texture_note.tooltip = str(error)
            return
        for short, low, high, default in controls:
            use = CheckBox(value=False, text=f"set {short.replace('_', ' ')}")
            use.tooltip = f"Ticked: request this value; unticked: from the reference region or the default. " \
                          f"{TEXTURE_SLIDERS[short].capitalize()}."
            slider = FloatSlider(value=default, min=low, max=high, step=(high - low) / 200,
                                 label=short.replace("_", " "), enabled=False)
            slider.tooltip = f"Training range (2nd-98th percentile) {low:.3g} to {high:.3g}; default {default:.3g}."
            use.changed.connect(lambda value, s=slider: setattr(s, "enabled", bool(value)))
            self._texture_controls[short] = (use, slider)
            self._textures.extend([use, slider])
        self._texture_note.value = ""
        self._texture_note.tooltip = ""

    def texture_request(self) -> dict[str, float]:
        """The texture features whose checkbox is ticked (short names, the model's units)."""
        return {name: float(slider.value) for name, (use, slider) in self._texture_controls.items() if use.value}

    def shape_request(self) -> dict[str, float]:
        """The shape generator's request from the sliders (real units)."""
        return {name: float(slider.value) for name, slider in self._shape_sliders.items()}

    # ---- request -------------------------------------------------------------------------------------
    def _scan(self) -> tuple[Any, Volume]:
        from napari_medgen.layers import layer_to_volume

        layer = self._image.value
        if layer is None:
            raise InvalidInputError("Choose the image to edit (open a 3D scan first).")
        if getattr(layer, "rgb", False) or layer.ndim != 3:
            kind = "an RGB image" if getattr(layer, "rgb", False) else f"{layer.ndim} dimensions"
            raise DimensionError(
                f"Tumour synthesis needs a 3D scan; the image layer '{layer.name}' has {kind} (shape "
                f"{tuple(getattr(layer.data, 'shape', ()))}). Open a 3D volume (for 2D images use Generate from "
                "labels)."
            )
        return layer, snapshot(layer_to_volume(layer))

    def _tumour(self, volume: Volume) -> LabelMap:
        from napari_medgen.layers import labels_layer_to_labelmap

        layer = self._labels.value
        if layer is None:
            raise InvalidInputError("Choose the tumour labels layer (the segmentation of the tumour on this image).")
        return snapshot(labels_layer_to_labelmap(layer, volume))

    def _point(self, what: str) -> tuple[float, float, float]:
        if self._points.value is None:
            raise InvalidInputError(f"No location: add a points layer, click the {what} in the image (its last point "
                                    "is used) and choose that layer in 'location (points)'.")
        return point_to_physical(self._points.value)

    def _label_or_none(self) -> int | None:
        return int(self._label.value) or None

    def _texture_from(self, volume: Volume) -> tuple[Volume, LabelMap, int | None] | None:
        from napari_medgen.layers import labels_layer_to_labelmap, layer_to_volume

        ref_labels = self._texture_labels.value
        if ref_labels is None:
            return None
        ref_image = self._texture_image.value
        if ref_image is None or ref_image is self._image.value:
            reference = volume
        else:
            reference = snapshot(layer_to_volume(ref_image))
        labels = snapshot(labels_layer_to_labelmap(ref_labels, reference))
        return reference, labels, int(self._texture_label.value) or None

    def _shape(self, volume: Volume) -> tuple[LabelMap, tuple[float, float, float] | None]:
        """The drawn shape for Synthesize and where to put it (None: where it is drawn)."""
        from napari_medgen.layers import layer_to_volume

        layer = self._labels.value
        if layer is None:
            raise InvalidInputError("'shape from' is the tumour labels layer: choose one, or use the sliders.")
        shape = layer_to_volume(layer, layer_type="labels")
        label = self._label_or_none()
        mask = np.asarray(shape.array) == label if label is not None else np.asarray(shape.array) != 0
        if not mask.any():
            which = f"label {label}" if label is not None else "any label"
            raise InvalidInputError(f"The labels layer '{layer.name}' has no voxel of {which}: draw the shape first.")
        shape = shape.as_labels(mask.astype(np.uint8))
        has_point = self._points.value is not None and len(self._points.value.data) > 0
        if shape.same_grid(volume):
            return shape, self._point("tumour centre") if has_point else None
        return shape, self._point("tumour centre")  # the backend centres it at its centroid

    def job_arguments(self, operation: str) -> tuple[Any, tuple[Any, ...], dict[str, Any], str]:
        """(job function, positional args, keyword args, source image name) for ``operation`` from the
        current widget state; the layers' voxels are copied so later edits of them do not reach the job."""
        from napari_medgen.pipelines import tumor_synthesis as ts

        if operation not in OPERATIONS:
            raise InvalidInputError(f"Unknown operation {operation!r}; choose one of {', '.join(OPERATIONS)}.")
        model = str(self._model.value).strip()
        if not model:
            raise InvalidInputError("Give a model: a bundled texture-bridge name or a checkpoint folder.")
        layer, volume = self._scan()
        common: dict[str, Any] = {"model": model, "steps": int(self._steps.value), "seed": int(self._seed.value)}
        texture = self.texture_request() or None
        if operation == "synthesize":
            kwargs = dict(common, texture=texture, texture_from=self._texture_from(volume))
            if self._shape_from.value == SHAPE_FROM_LABELS:
                shape, centre = self._shape(volume)
                kwargs.update(shape=shape, center_mm=centre, label_value=self._label_or_none() or 1)
            else:
                if not self._shape_sliders:
                    raise InvalidInputError(f"{self._shape_note.tooltip} Use 'shape from: {SHAPE_FROM_LABELS}'.")
                kwargs.update(shape_request=self.shape_request(), center_mm=self._point("tumour centre"))
            return ts.synthesize_job, (volume,), kwargs, layer.name
        labels = self._tumour(volume)
        label = self._label_or_none()
        if operation == "remove":
            return ts.remove_job, (volume, labels, label), common, layer.name
        if operation == "retexture":
            kwargs = dict(common, texture=texture, texture_from=self._texture_from(volume))
            return ts.retexture_job, (volume, labels, label), kwargs, layer.name
        if operation == "resize":
            return ts.resize_job, (volume, labels, float(self._scale.value), label), \
                dict(common, texture=texture), layer.name
        return ts.move_job, (volume, labels, self._point("new tumour centre"), label), \
            dict(common, texture=texture), layer.name

    def edit(self, operation: str) -> EditResult:
        """Synchronous run of ``operation`` (scripts and tests); the dock uses the worker path."""
        from napari_medgen.core.progress import run_job

        job, args, kwargs, _ = self.job_arguments(operation)
        return run_job(job(*args, **kwargs, device=self.checked_device()))

    # ---- worker --------------------------------------------------------------------------------------
    def start(self, operation: str) -> None:
        """Run ``operation`` in a thread worker; its result is added as two new layers when it finishes."""
        self.start_job(partial(self._job, operation))

    def _job(self, operation: str) -> JobSpec:
        job, args, kwargs, name = self.job_arguments(operation)
        # the source layer's placement now: the layers may change while the job runs
        on_returned = partial(self._add_layers, operation=operation, name=name,
                              transform=source_transform(self._image.value))
        return job, args, kwargs, on_returned

    def _add_layers(self, result: EditResult, operation: str, name: str, transform: dict[str, Any]) -> None:
        from napari_medgen.layers import volume_to_layer_data

        past = OPERATIONS[operation]
        image_data, image_kwargs, _ = volume_to_layer_data(result.image, f"{name} {past}")
        labels_data, labels_kwargs, _ = volume_to_layer_data(result.labels, f"{name} {past} labels")
        for kwargs in (image_kwargs, labels_kwargs):
            kwargs.update({key: np.array(value) for key, value in transform.items()})
            kwargs["metadata"]["medgen_edit"] = result.report
        image_layer = self._viewer.add_image(image_data, **image_kwargs)
        labels_layer = self._viewer.add_labels(labels_data, **labels_kwargs)
        self.last_layers = (image_layer, labels_layer)
        self.last_report = result.report
        self._status.value = f"added '{image_layer.name}' and '{labels_layer.name}'"
