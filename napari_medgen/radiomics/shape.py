"""3D shape features (pyradiomics definitions) of one boolean mask or of a batch of masks.

Mesh volume and surface area come from the marching-cubes tables of `marching_cubes`, which reproduce
pyradiomics' mesh. The diameters are the largest distances between mesh vertices (the voxel-face centres of the
ROI boundary), in 3D and within single axial / coronal / sagittal planes (`kernels.diameters`: row and line
extremes, convex hulls of the planes, exact pruning in 3D). Axis lengths come from the eigenvalues of the
voxel-centre covariance.

A batch is measured at once: the masks are cut to the union of their bounding boxes and zero-padded, and each
compiled pass (configurations, coordinate moments, diameters) runs over every crop in one call.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from napari_medgen.errors import DimensionError
from napari_medgen.radiomics import marching_cubes
from napari_medgen.radiomics.settings import positive_spacing

FEATURES = (
    "MeshVolume", "VoxelVolume", "SurfaceArea", "SurfaceVolumeRatio", "Sphericity", "Maximum3DDiameter",
    "Maximum2DDiameterSlice", "Maximum2DDiameterColumn", "Maximum2DDiameterRow", "MajorAxisLength",
    "MinorAxisLength", "LeastAxisLength", "Elongation", "Flatness",
)
# Plane feature per array axis the plane is perpendicular to (z: axial "slice", y: "column", x: "row").
_PLANE_FEATURES = ("Maximum2DDiameterSlice", "Maximum2DDiameterColumn", "Maximum2DDiameterRow")
# Mask voxels processed at once (bounds the memory of the padded batch).
_CHUNK_VOXELS = 1 << 23


def _directions_3d(n: int) -> tuple[np.ndarray, float]:
    """Unit directions through the integer points of the cube surface ``max|v| = n`` (one of each +- pair) and
    a lower bound on cos(angle) from any unit vector to its nearest direction: the nearest surface point lies
    within sqrt(2)/2 of where the vector crosses the surface, at distance >= n from the origin."""
    grid = np.array(list(itertools.product(range(-n, n + 1), repeat=3)))
    grid = grid[np.abs(grid).max(1) == n]
    first = grid[np.arange(len(grid)), (grid != 0).argmax(1)]
    dirs = grid[first > 0].astype(np.float64)
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True), math.cos(math.asin(math.sqrt(0.5) / n))


# Pruning directions of the 3D diameter (see `kernels.diameters`).
_DIRS_3D = _directions_3d(3)


def shape_features(mask: np.ndarray, spacing_xyz: tuple[float, float, float]) -> dict[str, float]:
    """All non-deprecated pyradiomics 3D shape features of a boolean (z, y, x) mask (NaN when it is empty)."""
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise DimensionError(f"shape_features needs a 3D (z, y, x) mask; got shape {arr.shape}.")
    return {k: float(v[0]) for k, v in shape_features_batch(arr[None], spacing_xyz).items()}


def shape_features_batch(masks: np.ndarray, spacing_xyz: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """Shape features of every mask of an (N, z, y, x) batch: ``{feature name: (N,) float64}``.

    Names are those of `FEATURES` (pyradiomics' ``original_shape_<name>`` without the prefix). Each mask is
    measured as pyradiomics would measure it on its own bounding-box crop; empty masks give a row of NaN.
    """
    arr = np.asarray(masks)
    if arr.ndim != 4:
        raise DimensionError(f"shape_features_batch needs an (N, z, y, x) batch of masks; got shape {arr.shape}.")
    spacing = positive_spacing(spacing_xyz, 3, "spacing (x, y, z)")
    spacing_zyx = tuple(float(s) for s in spacing[::-1])
    if arr.dtype != bool:
        arr = arr != 0
    n = arr.shape[0]
    out = {k: np.full(n, np.nan) for k in FEATURES}
    counts = np.count_nonzero(arr.reshape(n, -1), axis=1) if n else np.zeros(0, np.int64)
    rows = np.flatnonzero(counts)
    per_chunk = max(1, _CHUNK_VOXELS // max(1, int(np.prod(arr.shape[1:]))))
    for start in range(0, len(rows), per_chunk):
        idx = rows[start:start + per_chunk]
        for k, v in _chunk_features(arr[idx], spacing_zyx).items():
            out[k][idx] = v
    return out


def _chunk_features(masks: np.ndarray, spacing_zyx: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """Features of non-empty masks, vectorised over the batch (diameters included)."""
    n = len(masks)
    z_any = masks.reshape(n, masks.shape[1], -1).any(axis=2)  # reductions over long or outer axes are fast
    yx_any = masks.any(axis=1)
    extents = [z_any, yx_any.any(axis=2), yx_any.any(axis=1)]  # per crop and axis: which indices hold voxels
    box = [np.flatnonzero(e.any(axis=0)) for e in extents]
    lower = np.stack([e.argmax(1) - b[0] for e, b in zip(extents, box, strict=True)], 1)
    width = np.array([int(b[-1] - b[0]) + 1 for b in box])
    # per crop, its first / last voxel along each axis in the padded batch below (inclusive)
    first = lower + 1
    last = width - np.stack([e[:, b[0]:b[-1] + 1][:, ::-1].argmax(1) for e, b in zip(extents, box, strict=True)], 1)
    padded = np.zeros((n, *(int(b[-1] - b[0]) + 3 for b in box)), dtype=bool)
    padded[:, 1:-1, 1:-1, 1:-1] = masks[(slice(None), *(slice(int(b[0]), int(b[-1]) + 1) for b in box))]
    volume, area = marching_cubes.mesh_volume_area_padded(padded, spacing_zyx, origins=lower)
    n_vox = np.count_nonzero(padded.reshape(n, -1), axis=1)
    out = {"MeshVolume": volume, "VoxelVolume": n_vox * float(np.prod(spacing_zyx)), "SurfaceArea": area}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["SurfaceVolumeRatio"] = np.where(volume > 0, area / volume, np.nan)
        out["Sphericity"] = np.where(area > 0, np.cbrt(36 * np.pi * volume**2) / area, np.nan)
    diam = _diameters_batch(padded, first, last, np.asarray(spacing_zyx))
    out["Maximum3DDiameter"] = diam[:, 0]
    for axis, name in enumerate(_PLANE_FEATURES):
        out[name] = diam[:, axis + 1]
    # (the padded batch is contiguous, and the centred covariance does not depend on the index origin)
    least, minor, major = _covariance_eigenvalues(padded, spacing_zyx).T
    out["MajorAxisLength"] = 4 * np.sqrt(major)
    out["MinorAxisLength"] = 4 * np.sqrt(minor)
    out["LeastAxisLength"] = 4 * np.sqrt(least)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["Elongation"] = np.where(major > 0, np.sqrt(minor / major), np.nan)
        out["Flatness"] = np.where(major > 0, np.sqrt(least / major), np.nan)
    return out


def _covariance_eigenvalues(masks: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Ascending eigenvalues of each mask's voxel-centre covariance (physical units, population normalised).

    The index moments are exact integers (`kernels.coordinate_moments`), and so is the centred covariance
    numerator ``n * sum(x_i x_j) - sum(x_i) sum(x_j)`` (formed in Python integers), so a flat mask has exactly
    zero variance across its plane.
    """
    from napari_medgen.radiomics import kernels

    n_vox, first, second = kernels.coordinate_moments(np.ascontiguousarray(masks).view(np.uint8))
    n = n_vox.astype(object)[:, None, None]
    numer = n * second.astype(object) - first.astype(object)[:, :, None] * first.astype(object)[:, None, :]
    sp = np.asarray(spacing_zyx)
    cov = numer.astype(np.float64) / (n_vox.astype(np.float64) ** 2)[:, None, None] * np.outer(sp, sp)
    eig = np.linalg.eigvalsh(cov)
    return np.where((eig < 0) & (eig > -1e-10), 0.0, eig)  # pyradiomics' rounding of machine-error negatives


def _diameters_batch(padded: np.ndarray, first: np.ndarray, last: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """(n, 4): maximum 3D diameter and maximum 2D diameters in planes perpendicular to z, y and x of every mask
    of a zero-padded (n, z, y, x) batch of non-empty masks (voxels of crop k within ``first[k]..last[k]``)."""
    from napari_medgen.radiomics import kernels

    dirs, cos = _DIRS_3D
    return kernels.diameters(padded.view(np.uint8), first, last, np.asarray(sp, dtype=np.float64), dirs, cos)
