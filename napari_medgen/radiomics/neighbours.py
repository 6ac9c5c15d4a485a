"""Neighbour offsets and the padded voxel lattice that every texture matrix of a batch of crops is built on.

N crops are laid out in one C-ordered array of shape (N, Z + 2p, Y + 2p, X + 2p), p being the largest
neighbour offset. Its zero border marks "outside the ROI" (gray level 0) and keeps ``flat_index + step`` of
any ROI voxel inside its own crop, so the compiled loops of `kernels` read every neighbour of every ROI
voxel of every crop with one addition and no bounds checks, and a crop never sees its neighbour's voxels.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

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


def flat_offsets(offsets: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Flat-index steps of (dz, dy, dx) offsets in a C-ordered array whose last three dims are ``shape``."""
    shape = tuple(shape)[-3:]
    strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
    return np.asarray(offsets, dtype=np.int64) @ strides


def level_dtype(n_levels: int) -> np.dtype:
    """Smallest unsigned dtype holding gray levels 0..n_levels (small dtypes make the gathers cheap)."""
    if n_levels < 2**8 - 1:
        return np.dtype(np.uint8)
    if n_levels < 2**16 - 1:
        return np.dtype(np.uint16)
    return np.dtype(np.int64)


@dataclass(frozen=True)
class VoxelLattice:
    """ROI voxels of N crops and their gray levels, in one zero-padded flat array.

    ``index``, ``levels`` and ``crop`` are per ROI voxel, in ascending flat order (hence crop-major, and the
    same order as ``images[masks]``); crop k owns entries ``starts[k]:starts[k + 1]``. ``store`` is the flat
    lattice with ``margin`` extra zeros on both sides: the neighbour at ``step`` of ROI voxel v is
    ``store[index[v] + margin + step]``, never out of bounds and never in another crop.
    """

    index: np.ndarray  # flat index of every ROI voxel (intp, ascending)
    levels: np.ndarray  # gray level (1..n_levels) of every ROI voxel, dtype of ``store``
    crop: np.ndarray  # crop number of every ROI voxel (intp)
    starts: np.ndarray  # (N + 1,) first ROI voxel of each crop, then the total
    shape: tuple[int, int, int, int]  # padded (N, Z, Y, X)
    n_levels: int  # largest gray level of the batch
    store: np.ndarray  # gray level of every padded voxel (0 outside the ROI), with ``margin`` zeros around
    margin: int

    @property
    def n_crops(self) -> int:
        return self.shape[0]

    def steps(self, offsets: np.ndarray) -> np.ndarray:
        return flat_offsets(offsets, self.shape)

    def coords(self, k: int) -> np.ndarray:
        """(n, 3) padded (z, y, x) coordinates of the ROI voxels of crop ``k``."""
        sl = self.index[self.starts[k]:self.starts[k + 1]]
        return np.stack(np.unravel_index(sl, self.shape)[1:], axis=1)


def build_lattice(masks: np.ndarray, levels: np.ndarray, pad: int) -> VoxelLattice:
    """Lay out ``masks`` (N, Z, Y, X) bool, each with >= 1 voxel, whose voxels have gray levels ``levels``.

    ``levels`` lists the gray level (>= 1) of every mask voxel in C order (the order of ``array[masks]``).
    """
    n, z, y, x = masks.shape
    pad = max(int(pad), 1)
    shape = (n, z + 2 * pad, y + 2 * pad, x + 2 * pad)
    padded = np.zeros(shape, dtype=bool)
    padded[:, pad:pad + z, pad:pad + y, pad:pad + x] = masks
    index = np.flatnonzero(padded)
    del padded
    n_levels = int(levels.max())
    dtype = level_dtype(n_levels)
    lv = levels.astype(dtype, copy=False)
    size = int(np.prod(shape))
    margin = pad * (shape[2] * shape[3] + shape[3] + 1)  # the largest neighbour step
    store = np.zeros(size + 2 * margin, dtype=dtype)
    store[index + margin] = lv
    counts = np.count_nonzero(masks.reshape(n, -1), axis=1)
    starts = np.zeros(n + 1, dtype=np.intp)
    np.cumsum(counts, out=starts[1:])
    crop = np.repeat(np.arange(n, dtype=np.intp), counts)
    return VoxelLattice(index, lv, crop, starts, shape, n_levels, store, margin)
