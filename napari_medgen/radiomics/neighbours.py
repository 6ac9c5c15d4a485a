"""Neighbour offsets and flat-index helpers shared by the texture matrices.

Arrays are zero-padded by the largest distance so that ``flat_index + offset`` of any ROI voxel is a valid
index that never wraps to another row; gray level 0 marks "outside the ROI".
"""

from __future__ import annotations

import itertools

import numpy as np


def angles(distances: tuple[int, ...], force2d: bool, force2d_dim: int = 0) -> np.ndarray:
    """Unique (dz, dy, dx) offsets, one per direction and distance (13 per distance in 3D, 4 in 2D).

    For distance d the offsets are those with infinity norm d; of each pair (o, -o) one is kept.
    """
    out = []
    for d in sorted({int(x) for x in distances}):
        rng = range(-d, d + 1)
        for off in itertools.product(rng, rng, rng):
            if max(abs(v) for v in off) != d:
                continue
            if force2d and off[force2d_dim] != 0:
                continue
            first = next(v for v in off if v != 0)
            if first > 0:
                out.append(off)
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def pad_levels(levels: np.ndarray, pad: int) -> np.ndarray:
    """Zero-pad gray levels (0 = outside ROI) so neighbour lookups stay in bounds."""
    return np.pad(levels, pad)


def flat_offsets(offsets: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Flat-index steps of (dz, dy, dx) offsets in a C-ordered array of ``shape``."""
    strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
    return offsets @ strides
