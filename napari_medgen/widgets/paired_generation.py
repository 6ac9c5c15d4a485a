"""Dock widget "Paired generation": N new (image, lesion mask) pairs from a diffusion guider (PIG).

A thin adapter over `napari_medgen.pipelines.paired_generation` (the same code as the CLI), run in a
napari thread worker over the pipeline's job generator (progress bar, Cancel; nothing is added unless
the run finishes).

Output choice: the N pairs become ONE image layer and ONE labels layer, each a stack of shape
(N, H, W) named "paired images (seed S)" and "paired masks (seed S)". Item i of the image stack and item
i of the mask stack are one pair, so napari's slider steps through the pairs with each mask drawn over
its own image, and the layer list stays two entries long whatever N is (N separate layers would
bury the pairs in a long list and need toggling visibility to compare them). Saving either layer
gives one file holding all N items; slice ``i`` of both files is pair ``i``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, LineEdit, ProgressBar, PushButton, SpinBox

from napari_medgen.errors import InvalidInputError, MedGenError

if TYPE_CHECKING:
    import napari

    from napari_medgen.core.volume import LabelMap, Volume

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


class PairedGenerationWidget(Container):
    """Generate N image + lesion-mask pairs that agree with each other."""

    def __init__(self, viewer: napari.viewer.Viewer, guider: str | None = None,
                 image_model: str | None = None) -> None:
        from napari_medgen.pipelines.paired_generation import DEFAULT_GUIDER, PARTNERS

        super().__init__(labels=True)
        self._viewer = viewer
        self._guider = LineEdit(value=guider or DEFAULT_GUIDER, label="guider")
        self._guider.tooltip = "A bundled paired-guider name or a checkpoint folder."
        self._image_model = LineEdit(value=image_model or "", label="image model (optional)")
        partners = ", ".join(f"{g} -> {m}" for g, m in PARTNERS.items()) or "none"
        self._image_model.tooltip = (
            "A mask-diffusion checkpoint trained on the same data as the guider. Empty: the bundled partner "
            f"of a bundled guider ({partners})."
        )
        self._n = SpinBox(value=4, min=1, max=512, label="pairs (N)")
        self._steps = SpinBox(value=50, min=1, max=1000, label="steps")
        self._sampler = ComboBox(choices=SAMPLER_CHOICES, value="ddim", label="sampler")
        self._seed = SpinBox(value=0, min=0, max=2**31 - 1, label="seed")
        self._generate = PushButton(text="Generate")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self._status = Label(value="")
        self._status.native.setWordWrap(True)
        self.extend([self._guider, self._image_model, self._n, self._steps, self._sampler, self._seed,
                     self._generate, self._cancel, self._progress, self._status])
        self.worker: Any = None
        self.last_layers: tuple[Any, Any] | None = None
        self._seed_used: int | None = None
        self._generate.changed.connect(self._start)
        self._cancel.changed.connect(self.cancel)

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
        from napari_medgen.pipelines.paired_generation import generate_pairs_job
        from napari_medgen.widgets.feedback import start_job_worker

        try:
            options = self.options()
        except MedGenError as error:
            self._report(error)
            return
        self._seed_used = options["seed"]
        self._generate.enabled = False
        self._cancel.enabled = True
        self._progress.value = 0
        self._status.value = "loading models..."
        n = options.pop("n")
        self.worker = start_job_worker(
            generate_pairs_job, n, **options, on_progress=self._on_progress, on_returned=self._add_layers,
            on_error=self._report, on_aborted=lambda: setattr(self._status, "value", "cancelled: nothing was added"),
            on_finished=self._on_finished,
        )

    def cancel(self) -> None:
        """Stop at the next sampling step; nothing is added."""
        if self.worker is not None:
            self._status.value = "cancelling..."
            self.worker.quit()

    def _on_progress(self, event: Any) -> None:
        from napari_medgen.widgets.feedback import show_progress

        show_progress(self._progress, self._status, event)

    def _add_layers(self, pairs: list[tuple[Volume, LabelMap]]) -> None:
        from napari_medgen.layers import volume_to_layer_data

        images, masks = stack_pairs(pairs)
        seed = self._seed_used
        image_data, image_kwargs, _ = volume_to_layer_data(images, f"paired images (seed {seed})")
        image_kwargs["contrast_limits"] = (0.0, 1.0)  # the pipeline returns normalised [0, 1] intensities
        mask_data, mask_kwargs, _ = volume_to_layer_data(masks, f"paired masks (seed {seed})")
        image_layer = self._viewer.add_image(image_data, **image_kwargs)
        mask_layer = self._viewer.add_labels(mask_data, **mask_kwargs)
        self.last_layers = (image_layer, mask_layer)
        self._progress.value = self._progress.max
        self._status.value = f"added {len(pairs)} pairs: '{image_layer.name}' and '{mask_layer.name}'"

    def _on_finished(self) -> None:
        self._generate.enabled = True
        self._cancel.enabled = False

    def _report(self, error: Exception) -> None:
        from napari_medgen.widgets.feedback import show_error

        show_error(self._status, error)
