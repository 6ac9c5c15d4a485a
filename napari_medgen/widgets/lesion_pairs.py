"""Dock widget "Lesion pairs (attention masks)": paint where the lesion goes, get images with their masks.

A thin adapter over `napari_medgen.pipelines.lesion_pairs` (the same code as ``medgen lesion-pairs``), run in
a thread worker by `JobWidget` (progress, Cancel, device; nothing is added unless the run finishes). The
optional layout is a labels layer of the model's image size (a 2D layer, or a stack whose first item is
used; any non-zero label is lesion). The N results become one image stack (N, H, W[, 3]) and one labels
stack (N, H, W) of the attention-extracted masks, so the slider steps through the pairs with each mask
over its own image (same choice as the "Paired generation" widget).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, LineEdit, PushButton, SpinBox, create_widget

from napari_medgen.errors import InvalidInputError
from napari_medgen.widgets.job_widget import JobSpec, JobWidget

if TYPE_CHECKING:
    import napari

    from napari_medgen.pipelines.lesion_pairs import LesionPairsResult

REFINE_CHOICES = ("auto", "matrix", "elementwise", "none")


def layout_from_layer(layer: Any) -> np.ndarray:
    """The 2D layout mask of a labels layer: its data, or the first item of a stack, as {0, 1} uint8."""
    data = np.asarray(layer.data)
    if data.ndim == 3 and data.shape[0] >= 1:
        data = data[0]
    if data.ndim != 2:
        raise InvalidInputError(
            f"The layout layer {layer.name!r} must be a 2D labels layer; it has shape {data.shape}."
        )
    return (data > 0).astype(np.uint8)


class LesionPairsWidget(JobWidget):
    """Generate lesion images whose masks are read from the model's attention, optionally in a painted layout."""

    def __init__(self, viewer: napari.viewer.Viewer, model: str | None = None) -> None:
        from napari_medgen.pipelines.lesion_pairs import DEFAULT_MODEL, DEFAULT_STEPS

        super().__init__(viewer)
        self._model = LineEdit(value=model or DEFAULT_MODEL, label="model")
        self._model.tooltip = "A token-diffusion checkpoint (bundled name or folder) or a local SD folder."
        self._layout: ComboBox = create_widget(annotation="napari.layers.Labels", label="layout (optional)",
                                               options={"nullable": True})
        self._layout.tooltip = "Paint the lesion region on a labels layer of the model's image size (e.g. 64x64)."
        self._attribute = LineEdit(value="", label="attribute (optional)")
        self._attribute.tooltip = "An attribute token of the model, e.g. melanoma; empty: none."
        self._guidance = CheckBox(value=True, text="layout guidance")
        self._n = SpinBox(value=4, min=1, max=256, label="pairs (N)")
        self._steps = SpinBox(value=DEFAULT_STEPS, min=1, max=1000, label="steps")
        self._refine = ComboBox(choices=REFINE_CHOICES, value="auto", label="mask read-out")
        self._refine.tooltip = "auto: A_CS if self-attention is local, else A_C; matrix / elementwise: A_CS; none: A_C."
        self._seed = SpinBox(value=0, min=0, max=2**31 - 1, label="seed")
        self._generate = PushButton(text="Generate")
        self.extend([self._model, self._layout, self._attribute, self._guidance, self._n, self._steps, self._refine,
                     self._seed, *self.job_controls(self._generate)])
        self.last_layers: tuple[Any, Any] | None = None
        self._generate.changed.connect(self._start)

    def options(self) -> dict[str, Any]:
        """Keyword arguments for `generate_lesion_pairs_job` from the current widget state."""
        model = str(self._model.value).strip()
        if not model:
            raise InvalidInputError("Give a model: a bundled name (e.g. token-diffusion-ph2) or a folder.")
        layer = self._layout.value
        attribute = str(self._attribute.value).strip() or None
        return {
            "n": int(self._n.value),
            "model": model,
            "layouts": None if layer is None else layout_from_layer(layer),
            "attribute": attribute,
            "guidance": bool(self._guidance.value),
            "steps": int(self._steps.value),
            "refine": str(self._refine.value),
            "seed": int(self._seed.value),
        }

    def _start(self) -> None:
        self.start_job(self._job, status="loading model...")

    def _job(self) -> JobSpec:
        from napari_medgen.pipelines.lesion_pairs import generate_lesion_pairs_job

        options = self.options()
        n = options.pop("n")
        return generate_lesion_pairs_job, (n,), options, partial(self._add_layers, seed=options["seed"])

    def _add_layers(self, result: LesionPairsResult, seed: int | None = None) -> None:
        seed = int(self._seed.value) if seed is None else seed
        images = np.stack([p.image for p in result.pairs]).astype(np.float32)
        masks = np.stack([p.mask for p in result.pairs]).astype(np.uint8)
        rgb = images.ndim == 4
        meta = dict(result.report)
        image_layer = self._viewer.add_image(images, name=f"lesion pair images (seed {seed})", rgb=rgb,
                                             contrast_limits=None if rgb else (0.0, 1.0), metadata=meta)
        mask_layer = self._viewer.add_labels(masks, name=f"lesion pair masks (seed {seed})", metadata=meta)
        self.last_layers = (image_layer, mask_layer)
        self._viewer.dims.set_point(0, 0)
        from napari_medgen.models.attention_masks import mask_iou

        ious = [mask_iou(p.mask, p.layout) for p in result.pairs if p.layout is not None]
        extra = f"; mean IoU with the layout {np.mean(ious):.2f}" if ious else ""
        self._status.value = f"added {len(result.pairs)} pairs: '{image_layer.name}' and '{mask_layer.name}'{extra}"
