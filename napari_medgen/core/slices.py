"""2D slices at a network's size and range, shared by slice-wise training and generation.

Why one place: a 2D diffusion model only works on slices resized and scaled exactly as in training; the generator
and the training dataset import these two functions so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def to_unit_range(normalized: np.ndarray) -> np.ndarray:
    """Normalised intensities ([0, 1] after percentile scaling) -> the network's [-1, 1] (clipped)."""
    return (np.clip(normalized, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


def resize_slices(images: np.ndarray | None, labels: np.ndarray | None, size: Sequence[int]) -> tuple[Any, Any]:
    """(N, H, W) images (bilinear) and labels (nearest) -> (N, *size); either may be None."""
    from scipy import ndimage

    shape = (images if images is not None else labels).shape
    factors = (1.0, size[0] / shape[1], size[1] / shape[2])
    out = None if images is None else ndimage.zoom(images, factors, order=1, grid_mode=True,
                                                   mode="nearest").astype(np.float32)
    lab = None if labels is None else ndimage.zoom(labels, factors, order=0, grid_mode=True, mode="nearest")
    return out, lab


__all__ = ["resize_slices", "to_unit_range"]
