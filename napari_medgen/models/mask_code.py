"""Mask <-> network-channel encoding shared by the mask-guided image model and the paired guider.

SegGuidedDiff feeds the label image as one channel scaled by 1/255, which separates classes by a few
thousandths (classes blur together, see its issue #17). We give every foreground class its own
channel with three well separated states:

* ``+1`` inside the class, ``-1`` outside: the class is *constrained* (present where drawn, absent
  elsewhere);
* ``0`` everywhere: the class is *unconstrained* (dropped by mask ablation during training, or removed
  explicitly by the user at inference), so the model fills it in as it sees fit.

An unconstrained class is therefore distinguishable from a constrained-but-absent one, which a single
label channel cannot express.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from napari_medgen.errors import InvalidInputError


def check_class_values(values: Sequence[int]) -> list[int]:
    """Distinct positive label values (the background 0 has no channel)."""
    out = [int(v) for v in values]
    if not out or any(v <= 0 for v in out) or len(set(out)) != len(out):
        raise InvalidInputError(f"class_values must be distinct positive label values; got {list(values)}.")
    return out


def check_labels(labels: np.ndarray, class_values: Sequence[int], what: str = "labels") -> np.ndarray:
    """Integer labels whose values the model knows; a clear error names the unknown ones."""
    arr = np.asarray(labels)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InvalidInputError(
                f"The {what} hold non-integer values; a mask-guided model needs integer class labels "
                "(use a labels layer or a label-map file, not an image)."
            )
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise InvalidInputError(f"The {what} must be integer class labels; got dtype {arr.dtype}.")
    present = {int(v) for v in np.unique(arr)} - {0}
    unknown = sorted(present - {int(c) for c in class_values})
    if unknown:
        raise InvalidInputError(
            f"The {what} contain class values {unknown} that the model was not trained on; it knows "
            f"{sorted(int(c) for c in class_values)} (0 = background). Relabel them or drop them first."
        )
    return arr


def encode_mask(
    labels: torch.Tensor, class_values: Sequence[int], dropped: Iterable[int] | torch.Tensor = ()
) -> torch.Tensor:
    """(B, H, W) integer labels -> (B, K, H, W) float codes (+1 in, -1 out, 0 for dropped classes).

    ``dropped``: label values left unconstrained for every item, or a (B, K) boolean tensor per item
    (mask ablation during training).
    """
    if labels.ndim != 3:
        raise InvalidInputError(f"encode_mask needs (B, H, W) labels; got shape {tuple(labels.shape)}.")
    values = torch.as_tensor(list(class_values), device=labels.device)
    code = (labels[:, None] == values[None, :, None, None]).float() * 2.0 - 1.0
    if isinstance(dropped, torch.Tensor):
        if dropped.shape != (labels.shape[0], len(values)):
            raise InvalidInputError(f"dropped must be (B, K) = ({labels.shape[0]}, {len(values)}).")
        keep = (~dropped.bool()).float()
    else:
        drop_set = {int(d) for d in dropped}
        keep = torch.tensor([0.0 if int(v) in drop_set else 1.0 for v in class_values], device=labels.device)
        keep = keep[None].expand(labels.shape[0], -1)
    return code * keep[:, :, None, None]


def decode_mask(code: torch.Tensor, class_values: Sequence[int], smooth: int = 1) -> torch.Tensor:
    """(B, K, H, W) codes -> (B, H, W) int64 labels: the strongest channel where it is above 0.

    ``smooth`` > 1 averages each channel over a ``smooth`` x ``smooth`` window first (PIG binarises its
    guider output after an average pool, which removes isolated pixels).
    """
    x = code.float()
    if smooth > 1:
        x = torch.nn.functional.avg_pool2d(x, smooth, stride=1, padding=smooth // 2, count_include_pad=False)
        x = x[..., : code.shape[-2], : code.shape[-1]]
    best, index = x.max(dim=1)
    values = torch.as_tensor(list(class_values), device=code.device, dtype=torch.int64)
    return torch.where(best > 0, values[index], torch.zeros_like(index))


def ablation_drops(batch: int, num_classes: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, K) booleans: each class dropped independently with probability ``p`` (SegGuidedDiff's
    equal-weighted mask ablation), applied during training only."""
    if not 0.0 <= p <= 1.0:
        raise InvalidInputError(f"ablation probability must be in [0, 1]; got {p}.")
    return torch.rand(batch, num_classes, generator=generator) < p
