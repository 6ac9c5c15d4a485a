"""Dock widget "Generate from labels": a labels layer -> a new image layer that follows it slice by slice.

A thin adapter over `napari_medgen.pipelines.slice_generation` (the same code as the CLI). The model
field takes a bundled name or a checkpoint folder; its classes are read from ``config.json`` alone (no
torch) and shown as one checkbox each: ticked classes are constrained to the drawn masks, unticked ones
are left for the model to fill in. Only mask-ablated models can leave classes out, so for any other
model the boxes stay ticked and disabled. An optional reference scan (on the labels' grid) maps the
output to its intensity units and enables the anatomical-similarity slider.

The steps box shows the pipeline's `default_steps` for the model and sampler (the CLI's default too) and
follows them when either changes.

Generation runs in a napari thread worker over the pipeline's job generator (`JobWidget`): every sampling
step moves the progress bar and is a cancellation point. The image is added as a new layer with the labels
layer's own geometry only when the job finishes; a cancelled or failed run adds nothing.
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
    Label,
    LineEdit,
    PushButton,
    SpinBox,
    create_widget,
)

from napari_medgen.errors import InvalidInputError, MedGenError
from napari_medgen.widgets.job_widget import JobSpec, JobWidget, source_display

if TYPE_CHECKING:
    import napari

    from napari_medgen.core.volume import LabelMap, Volume
    from napari_medgen.pipelines.slice_generation import SliceResult

NOT_ABLATED_TIP = (
    "This model was trained on complete masks (no mask ablation), so every class must be constrained; "
    "use a mask-ablated model (e.g. the bundled seg2img-brain) to leave classes out."
)
SAMPLER_CHOICES = ("dpmpp", "ddim", "ddpm")


def _model_classes(model: str) -> tuple[list[int], list[str], bool]:
    """(class values, class names, trained with mask ablation) of a mask-diffusion checkpoint, without torch."""
    from napari_medgen.hub import read_checkpoint_config

    data = read_checkpoint_config(model)
    if data["model_type"] != "mask-diffusion":
        raise InvalidInputError(
            f"{model!r} is a {data['model_type']!r} checkpoint; this widget needs a mask-diffusion (seg2img) model."
        )
    config = data["config"]
    values = [int(v) for v in config.get("class_values", [])]
    names = [str(n) for n in config.get("class_names") or [f"class {v}" for v in values]]
    return values, names, bool(config.get("trained_with_ablation", False))


def present_classes(layer_data: Any, values: list[int]) -> set[int]:
    """Which of ``values`` occur in a labels layer's data (one comparison per class, no full np.unique)."""
    arr = np.asarray(layer_data)
    return {v for v in values if np.any(arr == v)}


def layer_kwargs_2d(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop the singleton z axis from 3D layer kwargs (``volume_to_layer_kwargs``) for a 2D source layer."""
    out = dict(kwargs)
    out["scale"] = tuple(kwargs["scale"])[1:]
    out["translate"] = tuple(kwargs["translate"])[1:]
    if "affine" in kwargs:
        out["affine"] = np.asarray(kwargs["affine"], dtype=float)[1:, 1:]
    if "units" in kwargs:
        out["units"] = tuple(kwargs["units"])[1:]
    return out


class GenerateFromLabelsWidget(JobWidget):
    """Generate an image that follows a labels layer, slice by slice, on the labels' grid."""

    def __init__(self, viewer: napari.viewer.Viewer, model: str | None = None) -> None:
        from napari_medgen.pipelines.slice_generation import DEFAULT_MODEL, DEFAULT_SAMPLER, NOISE_MODES

        super().__init__(viewer)
        self._labels: ComboBox = create_widget(annotation="napari.layers.Labels", label="labels")
        self._model = LineEdit(value=model or DEFAULT_MODEL, label="model")
        self._model.tooltip = "A bundled model name or a checkpoint folder (trained with `medgen train`)."
        self._classes = Container(labels=False, label="constrain classes")
        self._class_note = Label(value="")
        self._reference: ComboBox = create_widget(
            annotation="napari.layers.Image", label="reference (optional)", options={"nullable": True}
        )
        self._reference.tooltip = "The scan the labels were drawn on (same grid): output in its intensity units."
        self._similarity = FloatSlider(value=0.0, min=0.0, max=1.0, step=0.01, label="similarity", enabled=False)
        self._similarity.tooltip = "How much each slice resembles the reference slice (needs a reference)."
        self._axis = ComboBox(choices=[("0 (z)", 0), ("1 (y)", 1), ("2 (x)", 2)], value=0, label="slice axis")
        self._steps = SpinBox(value=1, min=1, max=1000, label="steps")
        self._steps.tooltip = "Sampling steps; set to the model's and sampler's default when either changes."
        self._sampler = ComboBox(choices=SAMPLER_CHOICES, value=DEFAULT_SAMPLER, label="sampler")
        self._noise = ComboBox(choices=NOISE_MODES, value="independent", label="noise")
        self._noise.tooltip = (
            "Starting noise of neighbouring slices: independent (most varied), shared (smoothest), "
            "correlated (in between)."
        )
        self._seed = SpinBox(value=0, min=0, max=2**31 - 1, label="seed")
        self._seed.tooltip = "Random seed: same labels, settings and seed give the same image."
        self._sampler.tooltip = "dpmpp (DPM-Solver++, fast), ddim, or ddpm (the full training schedule, slow)."
        self._axis.tooltip = "The array axis the 2D model works along: one generated slice per index on it."
        self._labels.tooltip = "The label map the image follows (a BraTS segmentation, a painted mask...)."
        self._brain_image: ComboBox = create_widget(
            annotation="napari.layers.Image", label="brain from image", options={"nullable": True}
        )
        self._brain_image.tooltip = ("An image layer on the labels' grid: its voxels above the threshold (and not "
                                     "already labelled) become the brain class, in a new labels layer.")
        self._brain_threshold = FloatSlider(value=0.1, min=0.0, max=1.0, step=0.01, label="threshold (fraction)")
        self._brain_threshold.tooltip = ("Threshold as a fraction of the image's 1st-99th percentile range: 0.1 "
                                         "keeps everything brighter than the darkest tenth (background).")
        self._add_brain = PushButton(text="Add brain class from image")
        self._add_brain.tooltip = "Makes '<labels> + brain' (the labels layer itself is not changed) and selects it."
        self._add_brain.changed.connect(self._brain_clicked)
        self._generate = PushButton(text="Generate")
        self.extend([self._labels, self._model, self._classes, self._class_note, self._brain_image,
                     self._brain_threshold, self._add_brain, self._reference, self._similarity,
                     self._axis, self._steps, self._sampler, self._noise, self._seed,
                     *self.job_controls(self._generate)])
        self._class_note.native.setWordWrap(True)
        self._class_boxes: dict[int, CheckBox] = {}
        self._ablated = False
        self.last_layer: Any = None
        self._model.changed.connect(self._refresh_classes)
        self._labels.changed.connect(self._apply_class_defaults)
        self._reference.changed.connect(self._reference_changed)
        self._generate.changed.connect(self._start)
        self._refresh_classes()
        self.follow_default(self._steps, self._default_steps, self._model, self._sampler)

    def _default_steps(self) -> int:
        from napari_medgen.pipelines.slice_generation import default_steps

        return default_steps(str(self._model.value).strip(), str(self._sampler.value))

    # ---- class checkboxes ----------------------------------------------------------------------------
    def _refresh_classes(self) -> None:
        """Rebuild one checkbox per class of the model named in the model field."""
        self._classes.clear()
        self._class_boxes = {}
        self._ablated = False
        try:
            values, names, ablated = _model_classes(str(self._model.value).strip())
        except MedGenError as error:
            self._class_note.value = "model not usable yet (see tooltip)"
            self._class_note.tooltip = str(error)
            return
        self._ablated = ablated
        for value, name in zip(values, names, strict=True):
            box = CheckBox(value=True, text=f"{value}: {name}", enabled=ablated)
            box.tooltip = "ticked: follow the drawn mask; unticked: the model fills this class in" if ablated \
                else NOT_ABLATED_TIP
            self._class_boxes[value] = box
        self._classes.extend(list(self._class_boxes.values()))
        self._class_note.value = "" if ablated else "all classes constrained (model not mask-ablated)"
        self._class_note.tooltip = "" if ablated else NOT_ABLATED_TIP
        self._apply_class_defaults()

    def _apply_class_defaults(self) -> None:
        """Tick the classes drawn in the labels layer; absent ones are left free (mask-ablated models only)."""
        layer = self._labels.value
        if not self._ablated or layer is None or not self._class_boxes:
            for box in self._class_boxes.values():
                box.value = True
            return
        present = present_classes(layer.data, list(self._class_boxes))
        for value, box in self._class_boxes.items():
            box.value = value in present
        absent = [box.text for value, box in self._class_boxes.items() if value not in present]
        self._class_note.value = (
            f"not in '{layer.name}', so left free for the model to fill in: {', '.join(absent)}. Tick a class to "
            "constrain it as absent instead." if absent else "")
        self._class_note.tooltip = self._class_note.value

    def brain_class(self) -> int | None:
        """The model's class named 'brain' (None when it has none)."""
        return next((v for v, box in self._class_boxes.items() if box.text.split(": ", 1)[-1] == "brain"), None)

    def add_brain_from_image(self) -> Any:
        """A new labels layer: the chosen labels plus the brain class wherever the chosen image is above the
        threshold and no label is drawn. Labels the user drew win; the source layer is left unchanged."""
        labels_layer, image_layer = self._labels.value, self._brain_image.value
        value = self.brain_class()
        if labels_layer is None or image_layer is None:
            raise InvalidInputError("Choose a labels layer and, under 'brain from image', the scan to threshold.")
        if value is None:
            raise InvalidInputError(f"The model {self._model.value!r} has no class named 'brain'.")
        labels = np.asarray(labels_layer.data)
        image = np.asarray(image_layer.data, dtype=np.float64)
        if image.shape != labels.shape:
            raise InvalidInputError(f"The image {image.shape} and the labels {labels.shape} are not on one grid; "
                                    "pick the scan the labels were drawn on.")
        finite = image[np.isfinite(image)]
        if finite.size == 0:
            raise InvalidInputError(f"The image '{image_layer.name}' has no finite voxels.")
        low, high = np.percentile(finite, [1, 99])
        brain = np.isfinite(image) & (image > low + float(self._brain_threshold.value) * (high - low))
        combined = labels.copy()
        combined[(combined == 0) & brain] = value
        layer = self._viewer.add_labels(combined, name=f"{labels_layer.name} + brain", scale=labels_layer.scale,
                                        translate=labels_layer.translate, affine=labels_layer.affine,
                                        metadata=dict(labels_layer.metadata))
        self.reset_choices()  # a docked widget is refreshed by napari already; a scripted one is not
        self._labels.value = layer
        self._apply_class_defaults()
        return layer

    def _brain_clicked(self) -> None:
        try:
            layer = self.add_brain_from_image()
        except MedGenError as error:
            self.report(error)
            return
        self._status.value = f"added '{layer.name}': brain class {self.brain_class()} from the image threshold"

    def _reference_changed(self) -> None:
        self._similarity.enabled = self._reference.value is not None

    def drop_classes(self) -> list[int]:
        """Classes left unconstrained: the unticked boxes."""
        return [value for value, box in self._class_boxes.items() if not box.value]

    # ---- request -------------------------------------------------------------------------------------
    def request(self) -> tuple[LabelMap, dict[str, Any], str, bool]:
        """(labels, pipeline options, output layer name, source is 2D) from the current widget state."""
        from napari_medgen.layers import labels_layer_to_labelmap, layer_to_volume, snapshot

        layer = self._labels.value
        if layer is None:
            raise InvalidInputError("Choose a labels layer (open or draw a segmentation first).")
        model = str(self._model.value).strip()
        if not model:
            raise InvalidInputError("Give a model: a bundled name (e.g. seg2img-brain) or a checkpoint folder.")
        ref_layer = self._reference.value
        if ref_layer is not None:
            reference: Volume | None = snapshot(layer_to_volume(ref_layer))
            labels = labels_layer_to_labelmap(layer, reference)
        else:
            reference = None
            labels = layer_to_volume(layer, layer_type="labels")
        labels = snapshot(labels)  # the user may keep painting while the worker reads the labels
        is_2d = np.ndim(layer.data) == 2
        seed = int(self._seed.value)
        options = {
            "model": model,
            "axis": 0 if is_2d else int(self._axis.value),  # a 2D layer is one slice along axis 0
            "drop_classes": self.drop_classes(),
            "steps": int(self._steps.value),
            "sampler": str(self._sampler.value),
            "seed": seed,
            "reference": reference,
            "similarity": float(self._similarity.value) if reference is not None else 0.0,
            "noise": str(self._noise.value),
        }
        return labels, options, f"{layer.name} seg2img (seed {seed})", is_2d

    def generate(self) -> Volume:
        """Synchronous generation (scripts and tests); the dock uses the worker path."""
        from napari_medgen.pipelines.slice_generation import generate_from_labels

        labels, options, _, _ = self.request()
        return generate_from_labels(labels, **options, device=self.checked_device()).image

    # ---- worker --------------------------------------------------------------------------------------
    def _start(self) -> None:
        self.start_job(self._job)

    def _job(self) -> JobSpec:
        from napari_medgen.pipelines.slice_generation import generate_from_labels_job

        labels, options, name, is_2d = self.request()
        # with a reference the output is in its intensity units: show it with the reference's contrast and colours
        display = source_display(self._reference.value) if options["reference"] is not None else {}
        return generate_from_labels_job, (labels,), options, partial(self._add_layer, name=name, is_2d=is_2d,
                                                                     display=display)

    def _add_layer(self, result: SliceResult, name: str, is_2d: bool,
                   display: dict[str, Any] | None = None) -> None:
        from napari_medgen.layers import volume_to_layer_data

        data, kwargs, _ = volume_to_layer_data(result.image, name)
        if is_2d:
            data, kwargs = data[0], layer_kwargs_2d(kwargs)
        kwargs.update(display or {})
        self.last_layer = self._viewer.add_image(data, **kwargs)
        self._status.value = f"added '{self.last_layer.name}'"
