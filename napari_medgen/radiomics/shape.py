"""3D shape features (pyradiomics definitions) of one boolean mask or of a batch of masks.

Mesh volume and surface area come from the marching-cubes tables of `marching_cubes`, which reproduce
pyradiomics' mesh. The diameters are the largest distances between mesh vertices (the voxel-face centres of the
ROI boundary), in 3D and within single axial / coronal / sagittal planes. Axis lengths come from the
eigenvalues of the voxel-centre covariance.

Diameters without the mesh: the vertex set ``V`` of a mask ``M`` has the same convex hull as ``M`` plus the six
half-voxel face offsets (a voxel extreme in some direction always has its face in that direction exposed), so a
farthest pair can always be found on voxels that end their line along every axis; we take those with an outside
neighbour along each axis (a cheap superset). These candidates are then pruned exactly with support widths in a
fixed set of directions (see `_keep`), and the few survivors are compared pairwise.
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
# Mask voxels processed at once (bounds the memory of the per-cube configuration arrays).
_CHUNK_VOXELS = 1 << 23
# Point-set sizes for the final pairwise step: plain differences up to this many points, convex hull first above
# _HULL_ABOVE, matrix-product pairs in blocks of about _PAIR_BLOCK distances.
_DIRECT_PAIRS_UP_TO = 512
_HULL_ABOVE = 2000
_PAIR_BLOCK = 1 << 21
_FACE_STEPS = np.concatenate([np.eye(3, dtype=np.int64), -np.eye(3, dtype=np.int64)])


def _directions_3d(n: int) -> tuple[np.ndarray, float]:
    """Unit directions through the integer points of the cube surface ``max|v| = n`` (one of each +- pair) and
    a lower bound on cos(angle) from any unit vector to its nearest direction: the nearest surface point lies
    within sqrt(2)/2 of where the vector crosses the surface, at distance >= n from the origin."""
    grid = np.array(list(itertools.product(range(-n, n + 1), repeat=3)))
    grid = grid[np.abs(grid).max(1) == n]
    first = grid[np.arange(len(grid)), (grid != 0).argmax(1)]
    dirs = grid[first > 0].astype(np.float64)
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True), math.cos(math.asin(math.sqrt(0.5) / n))


def _directions_2d(k: int) -> tuple[np.ndarray, float]:
    """``k`` evenly spaced in-plane directions over a half turn; any direction is within pi/(2k) of one."""
    ang = np.arange(k) * math.pi / k
    return np.stack([np.cos(ang), np.sin(ang)], 1), math.cos(math.pi / (2 * k))


_DIRS_3D = (_directions_3d(2), _directions_3d(3))
_DIRS_2D, _COS_2D = _directions_2d(16)


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
    """Features of non-empty masks; everything but the diameters is vectorised over the batch."""
    box = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in (np.flatnonzero(np.any(masks, axis=tuple(
        a for a in range(4) if a != d))) for d in (1, 2, 3)))
    masks = np.ascontiguousarray(masks[(slice(None), *box)])
    lower = np.stack([np.any(masks, axis=tuple(a for a in (1, 2, 3) if a != d)).argmax(1) for d in (1, 2, 3)], 1)
    volume, area = marching_cubes.mesh_volume_area(masks, spacing_zyx, origins=lower)
    n_vox = np.count_nonzero(masks.reshape(len(masks), -1), axis=1)
    out = {"MeshVolume": volume, "VoxelVolume": n_vox * float(np.prod(spacing_zyx)), "SurfaceArea": area}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["SurfaceVolumeRatio"] = np.where(volume > 0, area / volume, np.nan)
        out["Sphericity"] = np.where(area > 0, np.cbrt(36 * np.pi * volume**2) / area, np.nan)
    diam = np.array([_diameters(m, spacing_zyx) for m in masks]).reshape(len(masks), 4)
    out["Maximum3DDiameter"] = diam[:, 0]
    for axis, name in enumerate(_PLANE_FEATURES):
        out[name] = diam[:, axis + 1]
    least, minor, major = _covariance_eigenvalues(masks, n_vox, spacing_zyx).T
    out["MajorAxisLength"] = 4 * np.sqrt(major)
    out["MinorAxisLength"] = 4 * np.sqrt(minor)
    out["LeastAxisLength"] = 4 * np.sqrt(least)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["Elongation"] = np.where(major > 0, np.sqrt(minor / major), np.nan)
        out["Flatness"] = np.where(major > 0, np.sqrt(least / major), np.nan)
    return out


def _covariance_eigenvalues(masks: np.ndarray, n_vox: np.ndarray, spacing_zyx: tuple[float, float, float]
                            ) -> np.ndarray:
    """Ascending eigenvalues of each mask's voxel-centre covariance (physical units, population normalised).

    First and second coordinate moments come from the mask's projections; the centred covariance numerator
    ``n * sum(x_i x_j) - sum(x_i) sum(x_j)`` is formed in exact integers, so a flat mask has exactly zero
    variance across its plane.
    """
    m = masks.view(np.uint8)
    idx = [np.arange(s, dtype=np.int64) for s in masks.shape[1:]]
    proj2 = {(0, 1): m.sum(axis=3, dtype=np.int64), (0, 2): m.sum(axis=2, dtype=np.int64),
             (1, 2): m.sum(axis=1, dtype=np.int64)}
    marg = [proj2[(0, 1)].sum(2), proj2[(0, 1)].sum(1), proj2[(0, 2)].sum(1)]
    first = np.stack([marg[a] @ idx[a] for a in range(3)], 1)
    second = np.zeros((len(masks), 3, 3), dtype=np.int64)
    for a in range(3):
        second[:, a, a] = marg[a] @ (idx[a] * idx[a])
    for (a, b), p in proj2.items():
        second[:, a, b] = second[:, b, a] = np.einsum("nij,i,j->n", p, idx[a], idx[b])
    n = n_vox.astype(object)[:, None, None]
    numer = n * second.astype(object) - first.astype(object)[:, :, None] * first.astype(object)[:, None, :]
    sp = np.asarray(spacing_zyx)
    cov = numer.astype(np.float64) / (n_vox.astype(np.float64) ** 2)[:, None, None] * np.outer(sp, sp)
    eig = np.linalg.eigvalsh(cov)
    return np.where((eig < 0) & (eig > -1e-10), 0.0, eig)  # pyradiomics' rounding of machine-error negatives


def _exposed(padded: np.ndarray, axis: int) -> np.ndarray:
    """Mask voxels with an outside neighbour along ``axis``: a superset of the first/last voxel of each line,
    the only ones that can be hull vertices."""
    lower = [slice(None)] * 3
    upper = [slice(None)] * 3
    lower[axis], upper[axis] = slice(0, -1), slice(1, None)
    out = np.zeros_like(padded)
    out[tuple(upper)] = ~padded[tuple(lower)]
    out[tuple(lower)] |= ~padded[tuple(upper)]
    return out & padded


def _keep(proj: np.ndarray, pad: np.ndarray | float, lo: np.ndarray, hi: np.ndarray, level: float) -> np.ndarray:
    """Points that can be an end of a pair at least ``level / cos`` apart (``level`` already times cos).

    For a pair (x, y) at distance D >= L and a direction u within angle t of x - y: u.x - u.y >= D cos t, and
    u.y >= lo(u), so u.x >= lo(u) + L cos t (and symmetrically against hi). ``pad`` is how far a point's
    vertices can reach beyond it along u (half-voxel faces); the slack absorbs rounding.
    """
    reach = (np.maximum(proj - lo, hi - proj) + pad).max(1)
    return reach >= level - 1e-9 * max(level, 1.0)


def _max_pairwise(points: np.ndarray) -> float:
    """Largest distance between rows of ``points``. Large sets (near-spherical ROIs keep many candidates) are
    first reduced to their convex-hull vertices; their pairs go through a matrix product, in blocks."""
    if len(points) < 2:
        return 0.0
    if len(points) > _HULL_ABOVE:
        from scipy.spatial import ConvexHull

        # joggled hull (QJ): also fine for flat point sets; extreme points of a half-voxel grid stay extreme
        points = points[ConvexHull(points, qhull_options="QJ").vertices]
    if len(points) <= _DIRECT_PAIRS_UP_TO:
        diff = points[:, None, :] - points[None, :, :]
        return float(np.sqrt((diff * diff).sum(-1).max()))
    pts = points - points.mean(0)  # centred: |x|^2 + |y|^2 - 2 x.y loses nothing noticeable
    sq = (pts * pts).sum(1)
    best = 0.0
    step = max(1, _PAIR_BLOCK // len(pts))
    for start in range(0, len(pts), step):
        d2 = sq[start:start + step, None] + sq[None, :] - 2.0 * (pts[start:start + step] @ pts.T)
        best = max(best, float(d2.max()))
    return math.sqrt(best)


def _diameters(mask: np.ndarray, spacing_zyx: tuple[float, float, float]) -> tuple[float, float, float, float]:
    """Maximum 3D diameter and the maximum 2D diameters in planes perpendicular to z, y and x."""
    padded = np.pad(mask, 1)
    sp = np.asarray(spacing_zyx)
    ex = [_exposed(padded, a) for a in range(3)]
    vox = np.argwhere((ex[0] & ex[1]) | (ex[0] & ex[2]) | (ex[1] & ex[2]))
    flags = [e[vox[:, 0], vox[:, 1], vox[:, 2]] for e in ex]
    # 3D: candidates are exposed along all three axes; their exposed faces are the vertices. A coarse then a
    # fine direction set: the survivors of the first pass still hold a farthest pair, so the second pass
    # only needs them.
    cand = vox[flags[0] & flags[1] & flags[2]]
    for dirs, cos in _DIRS_3D:
        proj = (cand * sp) @ dirs.T
        pad = 0.5 * np.abs(dirs * sp).max(1)
        lo, hi = proj.min(0) - pad, proj.max(0) + pad
        cand = cand[_keep(proj, pad, lo, hi, float((hi - lo).max()) * cos)]
    keep = cand
    out = [_max_pairwise(_exposed_faces(padded, keep, (0, 1, 2)) * (0.5 * sp))]
    for axis in range(3):
        b, c = (a for a in range(3) if a != axis)
        out.append(_plane_diameter(padded, vox[flags[b] & flags[c]], axis, sp))
    return out[0], out[1], out[2], out[3]


def _exposed_faces(padded: np.ndarray, vox: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Face centres (doubled index units) of ``vox`` along ``axes`` whose neighbour is outside the mask."""
    steps = np.concatenate([_FACE_STEPS[list(axes)], -_FACE_STEPS[list(axes)]])
    nb = vox[:, None, :] + steps[None]
    outside = ~padded[nb[..., 0], nb[..., 1], nb[..., 2]]
    return (2 * vox[:, None, :] + steps[None])[outside]


def _group_support(keys: np.ndarray, proj: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-key max and min of ``proj`` rows (keys in [0, size)); -inf / +inf where a key has no row."""
    hi = np.full((size, proj.shape[1]), -np.inf)
    lo = np.full((size, proj.shape[1]), np.inf)
    if len(keys):
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
        hi[sk[starts]] = np.maximum.reduceat(proj[order], starts)
        lo[sk[starts]] = np.minimum.reduceat(proj[order], starts)
    return hi, lo


def _plane_diameter(padded: np.ndarray, vox: np.ndarray, axis: int, sp: np.ndarray) -> float:
    """Largest distance between vertices lying in one plane perpendicular to ``axis``.

    Vertices lie in voxel-centre planes (faces along the two in-plane axes: candidates ``vox``, exposed along
    both) or half-way between two slices (faces along ``axis``: where the slices differ). A half-way plane's
    points are voxel centres of its two slices, so its widths are bounded by theirs and most of these planes
    are discarded before their points are gathered.
    """
    b, c = (a for a in range(3) if a != axis)
    size = padded.shape[axis]
    proj = (vox[:, [b, c]] * sp[[b, c]]) @ _DIRS_2D.T
    pad = 0.5 * np.abs(_DIRS_2D * sp[[b, c]]).max(1)
    hc, lc = _group_support(vox[:, axis], proj, size)  # voxel-centre supports per slice
    width = (hc - lc + 2 * pad).max(1)
    level = float(width.max()) * _COS_2D
    bound = (np.maximum(hc[:-1], hc[1:]) - np.minimum(lc[:-1], lc[1:])).max(1)
    halves = np.flatnonzero(bound >= level * (1 - 1e-9))
    lower = np.take(padded, halves, axis=axis)
    upper = np.take(padded, halves + 1, axis=axis)
    between = np.argwhere(np.moveaxis(lower != upper, axis, 0))  # (half index, in-plane b, in-plane c)
    hproj = (between[:, 1:] * sp[[b, c]]) @ _DIRS_2D.T
    hh, hl = _group_support(between[:, 0], hproj, len(halves))
    hwidth = (hh - hl).max(1)
    level = max(level, float(hwidth.max(initial=0.0)) * _COS_2D)
    best = 0.0
    for s in np.flatnonzero(width >= level * (1 - 1e-9)):
        rows = np.flatnonzero(vox[:, axis] == s)
        keep = vox[rows[_keep(proj[rows], pad, lc[s] - pad, hc[s] + pad, level)]]
        faces = _exposed_faces(padded, keep, (b, c))
        best = max(best, _max_pairwise(faces[:, [b, c]] * (0.5 * sp[[b, c]])))
    for h in np.flatnonzero(hwidth >= level * (1 - 1e-9)):
        rows = np.flatnonzero(between[:, 0] == h)
        keep = between[rows[_keep(hproj[rows], 0.0, hl[h], hh[h], level)], 1:]
        best = max(best, _max_pairwise(keep * sp[[b, c]]))
    return best
