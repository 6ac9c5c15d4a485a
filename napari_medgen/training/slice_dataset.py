"""2D training slices for the slice-wise diffusion models, from 2D image files or slices of volumes.

Every case (a `CasePair` from `find_pairs`) is read once, normalised per case with the model's
intensity normalisation and mapped to [-1, 1]; each slice along ``axis`` is resized to the model's
``image_size`` (bilinear image, nearest labels). An optional *tissue* label file (e.g. BraTS'
``brainmask``) fills its voxels with ``tissue_value`` where the lesion labels are background, so the
model can also be told where the organ is. Items oversample slices that contain a *focus* class
(lesions are rare among the slices of a volume).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_medgen.core.slices import resize_slices, to_unit_range
from napari_medgen.errors import GeometryMismatchError, InvalidInputError
from napari_medgen.training.datasets import CasePair

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceSet:
    """All eligible slices of some cases, already at the model size."""

    images: np.ndarray  # (N, H, W) float32 in [-1, 1]
    labels: np.ndarray  # (N, H, W) int64
    case_ids: tuple[str, ...]  # per slice
    focus: np.ndarray  # (N,) bool: slice holds a focus class
    skipped: tuple[str, ...] = ()  # cases left out because their labels do not lie on the image grid


def load_slices(
    pairs: Sequence[CasePair],
    *,
    image_size: Sequence[int],
    normalize: Callable[[np.ndarray], np.ndarray],
    relabel: Callable[[np.ndarray], np.ndarray],
    axis: int = 0,
    tissue_pattern: str | None = None,
    tissue_value: int = 0,
    focus_values: Sequence[int] = (),
    include_empty: bool = False,
) -> SliceSet:
    """Read, normalise and resize every slice of ``pairs`` that has labels (or all with ``include_empty``)."""
    from napari_medgen.core.io import read_labels, read_volume
    from napari_medgen.training.datasets import load_case

    if axis not in (0, 1, 2):
        raise InvalidInputError(f"axis must be 0, 1 or 2 (z, y, x); got {axis}.")
    images, labels, ids, focus = [], [], [], []
    skipped: list[str] = []
    for pair in pairs:
        try:
            case = load_case(pair, relabel=relabel)
        except GeometryMismatchError as error:  # one broken annotation must not stop a training run
            _LOG.warning("Skipping case %r: %s", pair.case_id, error)
            skipped.append(pair.case_id)
            continue
        img, lab = case.image, case.labels
        if tissue_pattern:
            matches = sorted(Path(pair.image).parent.glob(tissue_pattern))
            if not matches:
                raise InvalidInputError(
                    f"Case {pair.case_id!r}: no tissue label matching {tissue_pattern!r} beside {pair.image.name}."
                )
            tissue = read_labels(matches[0], reference=read_volume(pair.image)).array
            lab = np.where((lab == 0) & (tissue > 0), int(tissue_value), lab)
        norm = to_unit_range(normalize(img))
        norm, lab = np.moveaxis(norm, axis, 0), np.moveaxis(lab, axis, 0)
        keep = np.ones(norm.shape[0], bool) if include_empty else lab.reshape(len(lab), -1).max(1) > 0
        if not keep.any():
            continue
        small_img, small_lab = resize_slices(norm[keep], lab[keep], image_size)
        images.append(small_img)
        labels.append(small_lab.astype(np.int64))
        ids.extend([pair.case_id] * len(small_img))
        has_focus = np.isin(small_lab, list(focus_values)).reshape(len(small_lab), -1).any(1)
        focus.append(has_focus)
    if not images:
        raise InvalidInputError("No slice with labels was found in these cases; check the data folder and label files.")
    return SliceSet(np.concatenate(images), np.concatenate(labels), tuple(ids), np.concatenate(focus),
                    tuple(skipped))


class SliceDataset:
    """Random slices of a `SliceSet` with focus oversampling and optional left-right flips."""

    def __init__(self, slices: SliceSet, *, samples_per_epoch: int, focus_fraction: float = 0.5,
                 flip: bool = True) -> None:
        if samples_per_epoch < 1:
            raise InvalidInputError(f"samples_per_epoch must be >= 1; got {samples_per_epoch}.")
        if not 0.0 <= focus_fraction <= 1.0:
            raise InvalidInputError(f"focus_fraction must be in [0, 1]; got {focus_fraction}.")
        self.slices = slices
        self.samples_per_epoch = int(samples_per_epoch)
        self.focus_fraction = float(focus_fraction)
        self.flip = bool(flip)
        self._focus_rows = np.flatnonzero(slices.focus)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """``{"image": (1, H, W) float32 in [-1, 1], "label": (H, W) int64}``."""
        import torch

        if len(self._focus_rows) and rng.random() < self.focus_fraction:
            row = int(self._focus_rows[rng.integers(len(self._focus_rows))])
        else:
            row = int(rng.integers(len(self.slices.images)))
        image, label = self.slices.images[row], self.slices.labels[row]
        if self.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)[None]),
            "label": torch.from_numpy(np.ascontiguousarray(label)),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get_item(index, np.random.default_rng(index))
