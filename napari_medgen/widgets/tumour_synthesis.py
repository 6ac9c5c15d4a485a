"""Dock widget "Tumour synthesis": put a tumour into a 3D scan, or remove, retexture, resize or move one.

A thin adapter over `napari_medgen.pipelines.tumor_synthesis` (the same code as the CLI). Its controls follow the
model in the model field (default: the pipeline's `DEFAULT_MODEL`, read when the widget opens):

* the **brain editor** (model type ``inpainter``: learned inpainting + fitted glioma appearance): shape from the
  two-region shape model (`appearance_editing.SHAPE_MODEL`; volume in cm3, roundness, necrotic core as % of the core),
  an edema thickness (or none), the MR sequence, and brightness sliders for the enhancing tumour, necrotic core and
  edema (brain-normalised units); no steps. The result's labels layer shows the BraTS sub-regions (1 necrotic core,
  2 edema, 4 enhancing tumour) in their own colours, named in the layer's ``features`` and name;
* a **texture bridge**: the controls below.

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
from napari_medgen.widgets.job_widget import JobSpec, JobWidget, source_display
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
#: brain editor texture sliders: pipeline control -> (label, what it does)
EDITOR_TEXTURE_SLIDERS: dict[str, tuple[str, str]] = {
    "enhancing/mean": ("enhancing brightness", "mean intensity of the enhancing tumour (the bright rim in T1c)"),
    "necrotic/mean": ("necrotic brightness", "mean intensity of the necrotic core (dark centre)"),
    "edema/mean": ("edema brightness", "mean intensity of the edema around the core"),
}
EDITOR_UNITS = ("brain-normalised units: 0 = the healthy brain's 0.5th percentile, 1 = its 99.5th percentile "
                "(measured on this scan)")
#: BraTS sub-regions the brain editor writes: value -> (name, colour)
SUBREGIONS: dict[int, tuple[str, str]] = {1: ("necrotic core", "red"), 2: ("edema", "green"),
                                          4: ("enhancing tumour", "yellow")}
#: the brain editor's necrotic core control (% of the tumour core volume): range and default
NECROTIC_PERCENT = (1.0, 60.0, 20.0)
#: the brain editor's edema thickness control (mm; the pipeline draws the shell from thickness/3 to thickness)
EDEMA_THICKNESS_MM = (1.0, 25.0, 12.0)


def is_editor(model: str) -> bool:
    """Whether ``model`` names a brain editor checkpoint (its config.json is read; no torch). An unusable name
    raises `MedGenError`."""
    from napari_medgen.pipelines.tumor_synthesis import EDITOR_TYPE, model_type

    return model_type(model) == EDITOR_TYPE


def editor_appearance(model: str) -> dict[str, Any]:
    """The fitted appearance table (sequence -> statistics) of a brain editor checkpoint's config.json."""
    from napari_medgen.hub import read_checkpoint_config

    table = read_checkpoint_config(model)["extra"].get("appearance")
    if not isinstance(table, dict) or not table:
        raise InvalidInputError(f"{model!r} has no tumour appearance statistics; export it with "
                                "`medgen train inpainter`.")
    return table


def editor_texture_controls(model: str, sequence: str) -> list[tuple[str, str, float, float, float]]:
    """(control, label, low, high, default) of each `EDITOR_TEXTURE_SLIDERS` control: brain-normalised range 0..1.6
    (wider when the training tumours were), default the fitted mean of that sub-region."""
    from napari_medgen.pipelines.appearance_editing import REGION_KEYS

    stats = editor_appearance(model).get(sequence, {}).get("labels", {})
    out = []
    for key, (label, _) in EDITOR_TEXTURE_SLIDERS.items():
        entry = stats.get(str(REGION_KEYS[key.split("/")[0]]))
        if not isinstance(entry, dict) or "mean" not in entry:
            continue
        default = float(entry["mean"])
        seen = entry.get("range", {}).get("mean", [default, default])
        low, high = min(0.0, float(seen[0]) - 0.2), max(1.6, float(seen[1]) + 0.2)
        out.append((key, label, low, high, float(np.clip(default, low, high))))
    return out


def subregion_layer_kwargs(values: Any) -> dict[str, Any]:
    """Labels-layer keyword arguments showing the BraTS sub-regions: a direct colormap (necrotic core red, edema
    green, enhancing tumour yellow) and a ``features`` table naming each label (napari shows it on hover)."""
    from napari.utils.colormaps import DirectLabelColormap

    # any other label (another tumour kept, a label painted later): magenta
    colours = {None: "magenta", 0: "transparent", **{v: c for v, (_, c) in SUBREGIONS.items()}}
    present = sorted({int(v) for v in values} - {0})
    extra = [v for v in present if v not in SUBREGIONS]
    index = [0, *SUBREGIONS, *extra]
    names = ["background", *(n for n, _ in SUBREGIONS.values()), *(f"label {v}" for v in extra)]
    cmap = DirectLabelColormap(color_dict=colours)
    return {"colormap": cmap, "features": {"index": index, "sub-region": names}}


def subregion_legend(labels: Any, spacing: Any) -> str:
    """"1 necrotic core (red) 2.1 cm3, ..." for the sub-regions present in ``labels``."""
    arr = np.asarray(labels)
    cm3 = float(np.prod(spacing)) / 1000.0
    parts = [f"{v} {name} ({colour}) {np.count_nonzero(arr == v) * cm3:.2f} cm3"
             for v, (name, colour) in SUBREGIONS.items() if np.any(arr == v)]
    return "; ".join(parts) or "no tumour left"


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
    """Synthesize, remove, retexture, resize or move a tumour in a 3D scan (brain editor or texture bridge)."""

    def __init__(self, viewer: napari.viewer.Viewer, model: str | None = None) -> None:
        from napari_medgen.pipelines import tumor_synthesis

        super().__init__(viewer)
        # read now, not at import: the default becomes the brain editor once its weights are bundled
        self._model = LineEdit(value=model or tumor_synthesis.DEFAULT_MODEL, label="model")
        self._model.tooltip = ("A bundled model name or a checkpoint folder: the brain editor (inpainter: learned "
                               "removal, glioma sub-regions) or a texture bridge (trained with `medgen train`). The "
                               "controls below follow it.")
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
        self._label.tooltip = "Which label of the tumour labels layer to edit; 0: every non-zero label."
        self._shape_from = ComboBox(choices=[SHAPE_FROM_SLIDERS, SHAPE_FROM_LABELS], value=SHAPE_FROM_SLIDERS,
                                    label="shape from")
        self._shape_from.tooltip = (
            "Synthesize: a shape generated from the sliders (placed at the point), or the tumour labels layer "
            "(on the image grid: used where it is, or moved to the point if one is given; with the brain editor "
            "its sub-region labels are kept, a one-label mask gets a necrotic core)."
        )
        self._shapes = Container(labels=True, label="shape")
        self._shape_sliders: dict[str, FloatSlider] = {}
        self._shape_note = Label(value="")
        self._editor_options = Container(labels=True, label="glioma")
        self._sequence = ComboBox(choices=["T1c"], value="T1c", label="MR sequence")
        self._sequence.tooltip = "The scan's sequence: the editor paints the tumour appearance fitted for it."
        low, high, default = EDEMA_THICKNESS_MM
        self._edema = CheckBox(value=True, text="edema around the core")
        self._edema.tooltip = "Grow an irregular edema shell (label 2) around the tumour core; unticked: none."
        self._edema_mm = FloatSlider(value=default, min=low, max=high, step=0.5, label="edema thickness (mm)")
        self._edema_mm.tooltip = ("Largest edema thickness in mm; the shell varies from a third of it to all of it "
                                  "(pipeline edema_mm = (thickness / 3, thickness)).")
        self._edema.changed.connect(lambda value: setattr(self._edema_mm, "enabled", bool(value)))
        self._texture_labels = create_widget(annotation="napari.layers.Labels", label="texture reference labels",
                                             options={"nullable": True})
        self._texture_labels.tooltip = ("A region whose texture the new tumour copies (Synthesize, Retexture). "
                                        "Empty: the model's default texture. Resize/Move keep the tumour's own.")
        self._texture_image = create_widget(annotation="napari.layers.Image", label="texture reference image",
                                            options={"nullable": True})
        self._texture_image.tooltip = "The scan the reference labels lie on. Empty: the image being edited."
        self._texture_label = SpinBox(value=0, min=0, max=65535, label="reference label (0 = all)")
        self._texture_label.tooltip = "Which label of the reference labels is the reference tumour; 0: all."
        self._textures = Container(labels=True, label="texture features")
        self._texture_controls: dict[str, tuple[CheckBox, FloatSlider]] = {}
        self._texture_note = Label(value="")
        self._scale = FloatSpinBox(value=1.5, min=0.2, max=5.0, step=0.1, label="resize scale")
        self._scale.tooltip = "Resize: factor on the tumour's linear size (2 = twice as wide, 8x the volume)."
        self._steps = SpinBox(value=tumor_synthesis.DEFAULT_STEPS, min=1, max=1000, label="steps")
        self._seed = SpinBox(value=0, min=0, max=2**31 - 1, label="seed")
        self._seed.tooltip = "Random seed: same inputs and seed, same result."
        self._buttons = {op: PushButton(text=op.capitalize()) for op in OPERATIONS}
        self._editor = False
        self.extend([self._model, self._image, self._points, self._labels, self._label, self._shape_from,
                     self._shapes, self._shape_note, self._editor_options, self._texture_labels,
                     self._texture_image, self._texture_label, self._textures, self._texture_note, self._scale,
                     self._steps, self._seed, *self.job_controls(*self._buttons.values())])
        for note in (self._shape_note, self._texture_note):
            note.native.setWordWrap(True)
        self.last_layers: tuple[Any, Any] | None = None
        self.last_report: dict[str, Any] | None = None
        self._offered: set[int] = set()  # layers already offered for pre-selection (ids)
        self._model.changed.connect(self._model_changed)
        self._sequence.changed.connect(self._refresh_texture_controls)
        self._shape_from.changed.connect(self._shape_source_changed)
        for op, button in self._buttons.items():
            button.changed.connect(lambda *_, op=op: self.start(op))
        self._model_changed()
        self.follow_default(self._steps, self._default_steps, self._model)

    def _default_steps(self) -> int:
        from napari_medgen.pipelines.tumor_synthesis import resolve_steps

        if self._editor:
            raise InvalidInputError("the brain editor has no sampling steps")  # the box is left as it is
        return resolve_steps(str(self._model.value).strip())

    # ---- layer pre-selection -----------------------------------------------------------------------------
    def reset_choices(self, *args: Any) -> None:
        """napari calls this when layers change: besides refreshing the drop-downs, an empty 'location (points)'
        or 'tumour labels' picks up a points / labels layer it has not offered before (the newest), so the flow
        point -> shape -> synthesize -> remove needs no re-selection; a choice the user made is kept. A shape made
        by the Tumour shape widget (``medgen_shape`` metadata) is selected and becomes the 'shape from' source."""
        super().reset_choices(*args)
        for box in (self._points, self._labels):
            candidates = [c for c in box.choices if c is not None]
            fresh = [c for c in candidates if id(c) not in self._offered]
            self._offered.update(id(c) for c in candidates)
            if box.value is None and fresh:
                box.value = fresh[-1]
            if box is self._labels and fresh and "medgen_shape" in getattr(fresh[-1], "metadata", {}):
                # a shape just made in the Tumour shape widget: it is the shape of the next synthesis
                box.value = fresh[-1]
                self._shape_from.value = SHAPE_FROM_LABELS
                self._label.value = 0

    # ---- controls ------------------------------------------------------------------------------------
    def _model_changed(self, *_: Any) -> None:
        """The controls of the model in the model field: brain editor or texture bridge."""
        try:
            self._editor = is_editor(str(self._model.value).strip())
        except MedGenError:
            self._editor = False  # the texture controls say why (the model name may be half typed)
        self._steps.enabled = not self._editor
        self._steps.tooltip = (
            "The brain editor inpaints and paints in one pass: no sampling steps." if self._editor
            else "Texture bridge sampling steps (more: slower, rarely better beyond the model's default)."
        )
        self._editor_options.clear()
        if self._editor:
            try:
                sequences = sorted(editor_appearance(str(self._model.value).strip()))
            except MedGenError:
                sequences = ["T1c"]
            self._sequence.choices = sequences
            self._sequence.value = "T1c" if "T1c" in sequences else sequences[0]
            self._editor_options.extend([self._sequence, self._edema, self._edema_mm])
        self._build_shape_sliders()
        self._refresh_texture_controls()
        self._shape_source_changed()

    def _build_shape_sliders(self) -> None:
        """Volume (cm3) and roundness sliders over the shape generator's training range (its config.json); with
        the brain editor the two-region model's, plus the necrotic core as % of the core volume."""
        from napari_medgen.pipelines.shape_generation import DEFAULT_MODEL as BRIDGE_SHAPES
        from napari_medgen.pipelines.shape_generation import shape_controls
        from napari_medgen.pipelines.tumor_synthesis import DEFAULT_SHAPE_REQUEST

        self._shapes.clear()
        self._shape_sliders = {}
        self._shape_note.value = self._shape_note.tooltip = ""
        if self._editor:
            from napari_medgen.pipelines.appearance_editing import SHAPE_MODEL as shape_model
        else:
            shape_model = BRIDGE_SHAPES
        try:
            controls = {c.name: c for c in shape_controls(shape_model)}
        except MedGenError as error:
            self._shape_note.value = "shape generator not available: shape from a labels layer only"
            self._shape_note.tooltip = str(error)
            return
        for name in SHAPE_SLIDERS:
            control = controls.get(name)
            if control is None:
                continue
            wanted = control.default if self._editor else DEFAULT_SHAPE_REQUEST.get(name, control.default)
            default = float(np.clip(wanted, control.min, control.max))
            if name == "VoxelVolume":  # shown in cm3, sent in mm3
                low, high, value = control.min / 1000.0, control.max / 1000.0, default / 1000.0
                label = "tumour core volume (cm3)" if self._editor else "tumour volume (cm3)"
                what = " core (necrotic core + enhancing tumour; edema not counted)" if self._editor else ""
                tip = (f"Volume of the tumour{what} in cm3 (pyradiomics VoxelVolume, sent in mm3); range: the "
                       f"shape model {shape_model}'s training tumours (1st-99th percentile).")
            else:
                low, high, value = control.min, control.max, default
                label, tip = "roundness (sphericity)", ("How round the tumour is: 1 = a perfect sphere, lower = "
                                                        "more irregular (pyradiomics Sphericity).")
            slider = FloatSlider(value=value, min=low, max=high, label=label, step=(high - low) / 200)
            slider.tooltip = tip
            self._shape_sliders[name] = slider
        if self._editor:
            low, high, default = NECROTIC_PERCENT
            slider = FloatSlider(value=default, min=low, max=high, step=0.5, label="necrotic core (% of core)")
            slider.tooltip = ("Share of the tumour core volume that is necrotic core (label 1), in %; sent to the "
                              f"two-region shape model {shape_model} as necrotic_core/VoxelVolume.")
            self._shape_sliders["necrotic_core"] = slider
        self._shapes.extend(list(self._shape_sliders.values()))

    def _shape_source_changed(self, *_: Any) -> None:
        for slider in self._shape_sliders.values():
            slider.enabled = self._shape_from.value == SHAPE_FROM_SLIDERS

    def _refresh_texture_controls(self, *_: Any) -> None:
        """One 'set' checkbox + slider per texture control of the model named in the model field (the brain
        editor's sub-region brightness, or the bridge's intuitive texture features)."""
        self._textures.clear()
        self._texture_controls = {}
        model = str(self._model.value).strip()
        try:
            if self._editor:
                controls = [(key, label, low, high, default) for key, label, low, high, default
                            in editor_texture_controls(model, str(self._sequence.value))]
            else:
                controls = [(short, short.replace("_", " "), low, high, default)
                            for short, low, high, default in texture_controls(model)]
        except MedGenError as error:
            self._texture_note.value = "model not usable yet (see tooltip): texture sliders unavailable"
            self._texture_note.tooltip = str(error)
            return
        for key, label, low, high, default in controls:
            use = CheckBox(value=False, text=f"set {label}")
            slider = FloatSlider(value=default, min=low, max=high, step=(high - low) / 200, label=label,
                                 enabled=False)
            if self._editor:
                what = EDITOR_TEXTURE_SLIDERS[key][1]
                use.tooltip = (f"Ticked: request this value; unticked: from the reference region or the editor's "
                               f"fitted glioma appearance. {what.capitalize()}.")
                slider.tooltip = (f"{what.capitalize()}, in {EDITOR_UNITS}. Default {default:.2f}: the fitted "
                                  f"{self._sequence.value} appearance (pipeline texture control {key}).")
            else:
                use.tooltip = (f"Ticked: request this value; unticked: from the reference region or the default. "
                               f"{TEXTURE_SLIDERS[key].capitalize()}.")
                slider.tooltip = (f"Training range (2nd-98th percentile) {low:.3g} to {high:.3g}; default "
                                  f"{default:.3g} (pyradiomics original_{key}, the model's normalised units).")
            use.changed.connect(lambda value, s=slider: setattr(s, "enabled", bool(value)))
            self._texture_controls[key] = (use, slider)
            self._textures.extend([use, slider])
        self._texture_note.value = ""
        self._texture_note.tooltip = ""

    def texture_request(self) -> dict[str, float]:
        """The texture controls whose checkbox is ticked (bridge: short feature names in the model's units;
        editor: ``<region>/mean`` in brain-normalised units)."""
        return {name: float(slider.value) for name, (use, slider) in self._texture_controls.items() if use.value}

    def shape_request(self) -> dict[str, float]:
        """The shape generator's request from the sliders (real units: mm3; the necrotic core of the brain editor
        as ``necrotic_core/VoxelVolume``)."""
        request: dict[str, float] = {}
        for name, slider in self._shape_sliders.items():
            if name == "VoxelVolume":
                request[name] = float(slider.value) * 1000.0
            elif name != "necrotic_core":
                request[name] = float(slider.value)
        if "necrotic_core" in self._shape_sliders and "VoxelVolume" in request:
            request["necrotic_core/VoxelVolume"] = request["VoxelVolume"] * float(
                self._shape_sliders["necrotic_core"].value) / 100.0
        return request

    def edema_mm(self) -> tuple[float, float] | None:
        """The brain editor's edema thickness range (None: no edema)."""
        if not self._edema.value:
            return None
        thickness = float(self._edema_mm.value)
        return (thickness / 3.0, thickness)

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
        # the brain editor keeps the sub-region labels (BraTS values or the shape model's 1 inside 2)
        kept = np.where(mask, np.asarray(shape.array), 0) if self._editor else mask
        shape = shape.as_labels(kept.astype(np.uint8) if kept.max(initial=0) < 256 else kept)
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
            raise InvalidInputError("Give a model: a bundled model name or a checkpoint folder.")
        editor = is_editor(model)  # a bad name fails here with the hub's message
        if editor != self._editor:  # typed without the change signal (scripts): controls follow first
            self._model_changed()
        layer, volume = self._scan()
        common: dict[str, Any] = {"model": model, "seed": int(self._seed.value)}
        if editor:
            glioma: dict[str, Any] = {"sequence": str(self._sequence.value)}
        else:
            common["steps"] = int(self._steps.value)
            glioma = {}
        texture = self.texture_request() or None
        if operation == "synthesize":
            kwargs = dict(common, texture=texture, texture_from=self._texture_from(volume), **glioma)
            if editor:
                kwargs["edema_mm"] = self.edema_mm()
            if self._shape_from.value == SHAPE_FROM_LABELS:
                shape, centre = self._shape(volume)
                kwargs.update(shape=shape, center_mm=centre)
                if not editor:
                    kwargs["label_value"] = self._label_or_none() or 1
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
            kwargs = dict(common, texture=texture, texture_from=self._texture_from(volume), **glioma)
            return ts.retexture_job, (volume, labels, label), kwargs, layer.name
        if operation == "resize":
            return ts.resize_job, (volume, labels, float(self._scale.value), label), \
                dict(common, texture=texture, **glioma), layer.name
        return ts.move_job, (volume, labels, self._point("new tumour centre"), label), \
            dict(common, texture=texture, **glioma), layer.name

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
                              transform=source_transform(self._image.value), subregions=self._editor,
                              display=source_display(self._image.value))
        return job, args, kwargs, on_returned

    def _add_layers(self, result: EditResult, operation: str, name: str, transform: dict[str, Any],
                    subregions: bool = False, display: dict[str, Any] | None = None) -> None:
        """The edited scan and its labels as two new layers; with the brain editor the labels layer shows the
        BraTS sub-regions in their own colours, named in its ``features`` (shown on hover) and its name. The
        image gets ``display`` (the source layer's contrast limits and colormap, `source_display`)."""
        from napari_medgen.layers import volume_to_layer_data

        past = OPERATIONS[operation]
        image_data, image_kwargs, _ = volume_to_layer_data(result.image, f"{name} {past}")
        labels_name = f"{name} {past} labels"
        if subregions:
            labels_name += " (" + ", ".join(f"{v} {n}" for v, (n, _) in SUBREGIONS.items()) + ")"
        labels_data, labels_kwargs, _ = volume_to_layer_data(result.labels, labels_name)
        if subregions:
            labels_kwargs.update(subregion_layer_kwargs(np.unique(labels_data)))
        for kwargs in (image_kwargs, labels_kwargs):
            kwargs.update({key: np.array(value) for key, value in transform.items()})
            kwargs["metadata"]["medgen_edit"] = result.report
        image_kwargs.update(display or {})
        image_layer = self._viewer.add_image(image_data, **image_kwargs)
        labels_layer = self._viewer.add_labels(labels_data, **labels_kwargs)
        self.last_layers = (image_layer, labels_layer)
        self.last_report = result.report
        status = f"added '{image_layer.name}' and '{labels_layer.name}'"
        if subregions:
            legend = subregion_legend(labels_data, result.labels.spacing)
            status += f": {legend}"
            self._status.tooltip = ("Labels: " + ", ".join(f"{v} = {n} ({c})" for v, (n, c) in SUBREGIONS.items())
                                    + ". Hover a voxel to see its sub-region in the status bar.")
        self._status.value = status
