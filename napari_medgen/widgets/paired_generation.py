"""Dock widget "Paired generation": N new (image, lesion mask) pairs from a diffusion guider (PIG).

A thin adapter over `napari_medgen.pipelines.paired_generation` (the same code as the CLI), run in a
napari thread worker over the pipeline's job generator (`JobWidget`: progress bar, Cancel, device; nothing
is added unless the run finishes). The steps box shows the pipeline's `default_steps` for the guider and
sampler (the CLI's default too) and follows them when either changes.

Output choice: the N pairs become ONE image layer and ONE labels layer, each a stack of shape
(N, H, W) named "paired images (seed S)" and "paired masks (seed S)". Item i of the image stack and item
i of the mask stack are one pair, so napari's slider steps through the pairs with each mask drawn over
its own image, and the layer list stays two entries long whatever N is (N separate layers would
bury the pairs in a long list and need toggling visibility to compare them). Saving either layer
gives one file holding all N items; slice ``i`` of both files is pair ``i``.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, LineEdit, PushButton, SpinBox

from napari_medgen.errors import InvalidInputError
from napari_medgen.widgets.job_widget import JobSpec, JobWidget

if TYPE_CHECKING:
    import napari

    from napari_medgen.core.volume import LabelMap, Volume
    from napari_medgen.pipelines.paired_generation import PairsResult

SAMPLER_CHOICES = ("ddim", "dpmpp", "ddpm")


def stack_pairs(pairs: list[tuple[Volume, LabelMap]]) -> tuple[Volume, LabelMap]:
    """The pairs as one (N, H, W) image volume and one (N, H, W) label map, item i = pair i."""
    from napari_medgen.core.volume import LabelMap, Volume

    if not pairs:
        raise InvalidInputError("No pairs were generated; ask for at least one.")
    first_image, first_mask = pairs[0]
    spacing = (float(first_image.spacing[0]), float(first_image.spacing[1]), 1.0)
    images = np.concatenate([np.asarray(image.array, dtype=np.float32) for image, _ in pairs], axis=0)
    masks = np.concatenate([np.asarray(mask.array) for _, mask in pairs], axis=0)
    meta = {k: v for k, v in first_image.metadata.items() if k != "index"}
    meta["pairs"] = len(pairs)
    return Volume(images, spacing=spacing, metadata=meta), LabelMap(masks, spacing=spacing, metadata=dict(meta))


class PairedGenerationWidget(JobWidget):
    """Generate N image + lesion-mask pairs that agree with each other."""

    def __init__(self, viewer: napari.viewer.Viewer, guider: str | None = None,
                 image_model: str | None = None) -> None:
        from napari_medgen.pipelines.paired_generation import DEFAULT_GUIDER, DEFAULT_SAMPLER, PARTNERS

        super().__init__(viewer)
        self._guider = LineEdit(value=guider or DEFAULT_GUIDER, label="guider")
        self._guider.tooltip = "A bundled paired-guider name or a checkpoint folder."
        self._image_model = LineEdit(value=image_model or "", label="image model (optional)")
        partners = ", ".join(f"{g} -> {m}" for g, m in PARTNERS.items()) or "none"
        self._image_model.tooltip = (
            "A mask-diffusion checkpoint trained on the same data as the guider. Empty: the bundled partner "
            f"of a bundled guider ({partners})."
        )
        self._n = SpinBox(value=4, min=1, max=512, label="pairs (N)")
        self._steps = SpinBox(value=1, min=1, max=1000, label="steps")
        self._steps.tooltip = "Sampling steps; set to the guider's and sampler's default when either changes."
        self._sampler = ComboBox(choices=SAMPLER_CHOICES, value=DEFAULT_SAMPLER, label="sampler")
        self._seed = SpinBox(value=0, min=0, max=2**31 - 1, label="seed")
        self._generate = PushButton(text="Generate")
        self.extend([self._guider, self._image_model, self._n, self._steps, self._sampler, self._seed,
                     *self.job_controls(self._generate)])
        self.last_layers: tuple[Any, Any] | None = None
        self._generate.changed.connect(self._start)
        self.follow_default(self._steps, self._default_steps, self._guider, self._sampler)

    def _default_steps(self) -> int:
        from napari_medgen.pipelines.paired_generation import default_steps

        return default_steps(str(self._guider.value).strip(), str(self._sampler.value))

    def options(self) -> dict[str, Any]:
        """Keyword arguments for `generate_pairs_job` from the current widget state."""
        guider = str(self._guider.value).strip()
        if not guider:
            raise InvalidInputError("Give a guider: a bundled name (e.g. busi-paired-guider) or a checkpoint folder.")
        image_model = str(self._image_model.value).strip()
        return {
            "n": int(self._n.value),
            "guider": guider,
            "image_model": image_model or None,
            "steps": int(self._steps.value),
            "sampler": str(self._sampler.value),
            "seed": int(self._seed.value),
        }

    def _start(self) -> None:
        self.start_job(self._job, status="loading models...")

    def _job(self) -> JobSpec:
        from napari_medgen.pipelines.paired_generation import generate_pairs_job

        options = self.options()
        n = options.pop("n")
        return generate_pairs_job, (n,), options, partial(self._add_layers, seed=options["seed"])

    def _add_layers(self, result: PairsResult, seed: int | None = None) -> None:
        """Add the pairs as two stacks named by ``seed`` (default: the seed box; the run passes its own)."""
        from napari_medgen.layers import volume_to_layer_data

        seed = int(self._seed.value) if seed is None else seed
        images, masks = stack_pairs(result.pairs)
        image_data, image_kwargs, _ = volume_to_layer_data(images, f"paired images (seed {seed})")
        image_kwargs["contrast_limits"] = (0.0, 1.0)  # the pipeline returns normalised [0, 1] intensities
        mask_data, mask_kwargs, _ = volume_to_layer_data(masks, f"paired masks (seed {seed})")
        image_layer = self._viewer.add_image(image_data, **image_kwargs)
        mask_layer = self._viewer.add_labels(mask_data, **mask_kwargs)
        self.last_layers = (image_layer, mask_layer)
        self.show_first_pair(image_layer)
        self._status.value = f"added {len(result.pairs)} pairs: '{image_layer.name}' and '{mask_layer.name}'"

    def show_first_pair(self, layer: Any) -> None:
        """Move the viewer's slider on the stack axis to pair 0 (napari opens a new stack at its middle item)."""
        dims = self._viewer.dims
        axis = dims.ndim - layer.ndim  # the layer's axis 0 in the viewer's (right-aligned) axes
        dims.set_point(axis, float(layer.data_to_world(np.zeros(layer.ndim))[0]))
