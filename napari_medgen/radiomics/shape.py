"""3D shape features (pyradiomics definitions) of one boolean mask or of a batch of masks.

Mesh volume and surface area come from the marching-cubes tables of `marching_cubes`, which reproduce
pyradiomics' mesh. The diameters are the largest distances between mesh vertices (the voxel-face centres of the
ROI boundary), in 3D and within single axial / coronal / sagittal planes. Axis lengths come from the
eigenvalues of the voxel-centre covariance.

Diameters without the mesh: the vertex set ``V`` of a mask ``M`` has the same convex hull as ``M`` plus the six
half-voxel face offsets (a voxel extreme in some direction always has its face in that direction exposed), so a
farthest pair can always be found on voxels that end their line along every axis; we take those with an outside
neighbour along each axis (a cheap superset), minus those that are the midpoint of two mask voxels along a
diagonal unit step. These candidates are then pruned exactly with realised lower bounds (a centroid test, support
widths in a fixed set of directions, see `_keep`), and the few survivors are compared pairwise.

Everything runs for a whole batch at once, without a per-crop loop: full-grid steps are shifted slices of the
flattened zero-padded batch, per-crop (per-plane) bounds are segment reductions over candidates sorted by crop
(plane), and the pairs of every group are listed together by segment arithmetic (`_group_pairs`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator

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
# Point-set sizes for the final pairwise step: groups up to this many points are listed pair by pair together
# with all other groups (in blocks of about _PAIR_BLOCK pairs); larger ones go one by one through
# `_max_pairwise` (convex hull first above _HULL_ABOVE, matrix-product pairs in blocks of _PAIR_BLOCK).
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


# Unit steps other than along an axis, one of each +- pair (for the "midpoint of two mask voxels" test).
_DIAGONALS = tuple(d for d in itertools.product((-1, 0, 1), repeat=3)
                   if sum(map(abs, d)) >= 2 and d[next(i for i in range(3) if d[i])] > 0)
_DIRS_3D = _directions_3d(2)
_DIRS_2D = _directions_2d(16)
_DIRS_2D_COARSE = _directions_2d(8)


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
    padded = np.zeros((n, *(int(b[-1] - b[0]) + 3 for b in box)), dtype=bool)
    padded[:, 1:-1, 1:-1, 1:-1] = masks[(slice(None), *(slice(int(b[0]), int(b[-1]) + 1) for b in box))]
    volume, area = marching_cubes.mesh_volume_area_padded(padded, spacing_zyx, origins=lower)
    n_vox = np.count_nonzero(padded.reshape(n, -1), axis=1)
    out = {"MeshVolume": volume, "VoxelVolume": n_vox * float(np.prod(spacing_zyx)), "SurfaceArea": area}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["SurfaceVolumeRatio"] = np.where(volume > 0, area / volume, np.nan)
        out["Sphericity"] = np.where(area > 0, np.cbrt(36 * np.pi * volume**2) / area, np.nan)
    diam = _diameters_batch(padded, np.asarray(spacing_zyx))
    out["Maximum3DDiameter"] = diam[:, 0]
    for axis, name in enumerate(_PLANE_FEATURES):
        out[name] = diam[:, axis + 1]
    # (the padded batch is contiguous, and the centred covariance does not depend on the index origin)
    least, minor, major = _covariance_eigenvalues(padded, n_vox, spacing_zyx).T
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


def _exposed(flat: np.ndarray, step: int, scratch: np.ndarray) -> np.ndarray:
    """Mask voxels of a flattened zero-padded batch with an outside neighbour ``step`` away (either side): a
    superset of the first/last voxel of each line, the only ones that can be hull vertices. ``scratch`` is a
    bool buffer as long as ``flat`` (reused: fresh large arrays cost page faults)."""
    out = flat.copy()
    inner = np.logical_and(flat[:-2 * step], flat[2 * step:], out=scratch[:flat.size - 2 * step])
    np.greater(out[step:-step], inner, out=out[step:-step])  # a & ~b
    return out


def _not_interior(flat: np.ndarray, idx: np.ndarray, steps: Iterable[int]) -> np.ndarray:
    """The mask voxels ``idx`` (flat, >= 1 voxel from every crop border) that are not the midpoint of two mask
    voxels ``step`` away on either side: only those can be vertices of the convex hull."""
    for step in steps:
        idx = idx[~(flat[idx - step] & flat[idx + step])]
    return idx


def _keep(proj: np.ndarray, pad: np.ndarray | float, lo: np.ndarray, hi: np.ndarray, level: np.ndarray
          ) -> np.ndarray:
    """Points that can be an end of a pair at least ``level / cos`` apart (``level`` already times cos).

    For a pair (x, y) at distance D >= L and a direction u within angle t of x - y: u.x - u.y >= D cos t, and
    u.y >= lo(u), so u.x >= lo(u) + L cos t (and symmetrically against hi). ``pad`` is how far a point's
    vertices can reach beyond it along u (half-voxel faces); the slack absorbs rounding. ``lo``, ``hi`` and
    ``level`` are per point (rows of ``proj``).
    """
    reach = (np.maximum(proj - lo, hi - proj) + pad).max(1)
    return reach >= level - 1e-9 * np.maximum(level, 1.0)


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


def _segment_starts(keys: np.ndarray) -> np.ndarray:
    """First row of each run of equal values in sorted ``keys``."""
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.intp)


def _group_pairs(starts: np.ndarray, sizes: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
    """Every pair (i <= j) of rows within each group (groups: ``starts``, ``sizes``, all non-empty), listed by
    segment arithmetic on the row numbers, in blocks of whole groups of about ``_PAIR_BLOCK`` pairs.

    Yields (groups of the block, i, j, first pair of each group); a group's pairs are contiguous and start
    with (first row, first row), so per-group reductions over them never see an empty segment.
    """
    pairs = sizes * (sizes + 1) // 2
    cut = np.searchsorted(np.cumsum(pairs), np.arange(1, int(pairs.sum()) // _PAIR_BLOCK + 1) * _PAIR_BLOCK)
    for block in np.split(np.arange(len(starts)), np.unique(cut[cut < len(starts)] + 1)):
        if not block.size:
            continue
        rows = _ranges(starts[block], sizes[block])
        count = np.repeat(starts[block] + sizes[block], sizes[block]) - rows  # partners j >= i in the group
        first = np.cumsum(count) - count
        i = np.repeat(rows, count)
        j = np.arange(int(count.sum())) - np.repeat(first - rows, count)
        yield block, i, j, first[np.cumsum(sizes[block]) - sizes[block]]


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for every (s, n)."""
    offsets = np.cumsum(sizes) - sizes
    return np.arange(int(sizes.sum())) - np.repeat(offsets - starts, sizes)


def _group_max_distance(points: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest distance within each group of rows sharing a key (``keys`` sorted): (group keys, distances).

    Groups of up to ``_DIRECT_PAIRS_UP_TO`` points are done together (`_group_pairs`); larger groups go one by
    one through `_max_pairwise`.
    """
    starts = _segment_starts(keys)
    sizes = np.diff(np.r_[starts, len(keys)])
    best = np.zeros(len(starts))
    for g in np.flatnonzero(sizes > _DIRECT_PAIRS_UP_TO):
        best[g] = _max_pairwise(points[starts[g]:starts[g] + sizes[g]])
    small = np.flatnonzero(sizes <= _DIRECT_PAIRS_UP_TO)
    cols = [np.ascontiguousarray(points[:, a]) for a in range(points.shape[1])]
    for block, i, j, first in _group_pairs(starts[small], sizes[small]):
        best[small[block]] = np.sqrt(np.maximum.reduceat(_pair_distance(cols, i, j), first))
    return keys[starts], best


def _segment_support(keys: np.ndarray, proj: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-key max and min of ``proj`` rows (``keys`` sorted, in [0, size)); -inf / +inf where a key is absent."""
    hi = np.full((size, proj.shape[1]), -np.inf)
    lo = np.full((size, proj.shape[1]), np.inf)
    if len(keys):
        starts = _segment_starts(keys)
        hi[keys[starts]] = np.maximum.reduceat(proj, starts)
        lo[keys[starts]] = np.minimum.reduceat(proj, starts)
    return hi, lo


def _exposed_faces(padded: np.ndarray, vox: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Face centres (doubled index units, spatial columns) of batch voxels ``vox`` (rows: crop, z, y, x) along
    spatial ``axes`` whose neighbour is outside the mask, and the row of ``vox`` each comes from."""
    steps = np.concatenate([_FACE_STEPS[list(axes)], -_FACE_STEPS[list(axes)]])
    nb = vox[:, None, 1:] + steps[None]
    outside = ~padded[vox[:, None, 0], nb[..., 0], nb[..., 1], nb[..., 2]]
    owner = np.broadcast_to(np.arange(len(vox))[:, None], outside.shape)[outside]
    return (2 * vox[:, None, 1:] + steps[None])[outside], owner


def _diameters_batch(padded: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """(n, 4): maximum 3D diameter and maximum 2D diameters in planes perpendicular to z, y and x of every mask
    of a zero-padded (n, z, y, x) batch of non-empty masks, all crops at once.

    Candidates are found on the flattened batch (shifted slices and gathers, no per-crop work): voxels with an
    outside neighbour along at least two axes, then, per plane orientation and for 3D, only those that are not
    the midpoint of two mask voxels along any in-plane (any) unit direction.
    """
    n = padded.shape[0]
    flat = padded.reshape(-1)
    strides = [int(np.prod(padded.shape[a:])) for a in (2, 3)] + [1]
    scratch = np.empty_like(flat)
    ex = [_exposed(flat, s, scratch) for s in strides]
    two = np.logical_or(ex[0], ex[1], out=scratch)
    two &= ex[2]
    two |= ex[0] & ex[1]  # exposed along at least two axes
    idx = np.flatnonzero(two)
    flags = [e[idx] for e in ex]
    del ex
    out = np.empty((n, 4))
    steps = {d: int(np.dot(d, strides)) for d in _DIAGONALS}
    cand = _not_interior(flat, idx[flags[0] & flags[1] & flags[2]], steps.values())
    out[:, 0] = _diameters_3d(padded, cand, sp, n)
    for axis in range(3):
        b, c = (a for a in range(3) if a != axis)
        in_plane = [s for d, s in steps.items() if d[axis] == 0]
        cand = _not_interior(flat, idx[flags[b] & flags[c]], in_plane)
        out[:, axis + 1] = _plane_diameters(padded, cand, axis, sp, n)
    return out


def _segment_argmax(values: np.ndarray, seg: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Row of the (first) largest value of each segment (rows sorted by ``seg``, every segment non-empty)."""
    best = np.maximum.reduceat(values, starts)
    hit = np.flatnonzero(values == best[seg])
    return hit[_segment_starts(seg[hit])]


def _diameters_3d(padded: np.ndarray, idx: np.ndarray, sp: np.ndarray, n: int) -> np.ndarray:
    """Maximum 3D diameter per crop from the flat indices of its hull-vertex candidate voxels (crop-major).

    The vertices of a voxel are its exposed face centres, at most ``h`` = half the largest spacing from it,
    so a farthest vertex pair sits on a voxel pair at least ``D - 2h`` apart, with ``D`` >= any voxel-centre
    distance. Candidates are pruned against a realised voxel distance L (the farthest candidate from the
    farthest one from the centroid): first by their centroid distance (``d0(x) + max d0 >= L - 2h``), then
    with a direction set (`_keep`); the voxel pairs of the survivors are listed, those within ``2h`` of the
    crop's farthest voxel pair kept, and their face pairs measured.
    """
    cand = np.stack(np.unravel_index(idx, padded.shape), 1)
    crop = cand[:, 0]
    starts = np.searchsorted(crop, np.arange(n))  # every crop has candidates (its extreme voxels)
    pts = cand[:, 1:] * sp
    two_h = float(sp.max())
    centre = np.add.reduceat(pts, starts) / np.diff(np.r_[starts, len(crop)])[:, None]
    d0 = np.sqrt(((pts - centre[crop]) ** 2).sum(1))
    far = pts[_segment_argmax(d0, crop, starts)]
    lower = np.maximum.reduceat(np.sqrt(((pts - far[crop]) ** 2).sum(1)), starts)
    reach = d0 + (np.maximum.reduceat(d0, starts) + two_h)[crop]
    cand = cand[reach >= lower[crop] * (1 - 1e-9)]
    dirs, cos = _DIRS_3D
    crop = cand[:, 0]
    proj = (cand[:, 1:] * sp) @ dirs.T
    pad = 0.5 * np.abs(dirs * sp).max(1)
    hi, lo = _segment_support(crop, proj, n)
    hi += pad
    lo -= pad
    level = np.maximum((hi - lo).max(1), lower) * cos
    cand = cand[_keep(proj, pad, lo[crop], hi[crop], level[crop])]
    out = np.zeros(n)
    pts = cand[:, 1:] * sp
    starts = _segment_starts(cand[:, 0])
    sizes = np.diff(np.r_[starts, len(cand)])
    for g in np.flatnonzero(sizes > _DIRECT_PAIRS_UP_TO):  # near-spherical: many candidates, convex hull
        rows = cand[starts[g]:starts[g] + sizes[g]]
        out[rows[0, 0]] = _max_pairwise(_exposed_faces(padded, rows, (0, 1, 2))[0] * (0.5 * sp))
    small = np.flatnonzero(sizes <= _DIRECT_PAIRS_UP_TO)
    cols = [np.ascontiguousarray(pts[:, a]) for a in range(3)]
    for _, i, j, first in _group_pairs(starts[small], sizes[small]):
        dist = np.sqrt(_pair_distance(cols, i, j))
        best = np.maximum.reduceat(dist, first)
        need = np.repeat(best, np.diff(np.r_[first, len(dist)])) - two_h
        close = dist >= need - 1e-9 * np.maximum(need, 1.0)
        i, j = i[close], j[close]
        np.maximum.at(out, cand[i, 0], _face_pair_distance(padded, cand[i], cand[j], sp))
    return out


def _face_pair_distance(padded: np.ndarray, va: np.ndarray, vb: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Largest distance between an exposed face centre of voxel ``va[k]`` and one of ``vb[k]`` (rows: crop,
    z, y, x), for every k (all 6 x 6 face pairs, the covered faces masked out)."""
    steps = _FACE_STEPS
    open_a, open_b = ([~padded[v[:, None, 0], *(v[:, None, 1:] + steps).transpose(2, 0, 1)] for v in (va, vb)])
    d2 = np.zeros((len(va), 36))
    for a in range(3):
        offset = (steps[:, None, a] - steps[None, :, a]).ravel()  # face a of va minus face b of vb
        comp = (2 * (va[:, a + 1] - vb[:, a + 1]))[:, None] + offset[None, :]
        comp = comp * (0.5 * sp[a])
        d2 += comp * comp
    d2[~(open_a[:, :, None] & open_b[:, None, :]).reshape(len(va), 36)] = -1.0
    return np.sqrt(d2.max(1))


def _pair_distance(cols: list[np.ndarray], i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Squared distances between points ``i`` and ``j`` given as coordinate columns (fast 1D gathers)."""
    out = np.zeros(len(i))
    for col in cols:
        diff = col[i] - col[j]
        out += diff * diff
    return out


def _plane_diameters(padded: np.ndarray, idx: np.ndarray, axis: int, sp: np.ndarray, n: int) -> np.ndarray:
    """Per crop, the largest distance between vertices lying in one plane perpendicular to spatial ``axis``.

    Vertices lie in voxel-centre planes (faces along the two in-plane axes of the candidate voxels ``idx``,
    flat indices of the 2D hull-vertex candidates) or half-way between two slices (faces along ``axis``:
    where the slices differ; their in-plane positions are voxel centres). Planes are keyed
    ``crop * size + slice``, and pruned in two passes: a coarse direction set bounds every plane's diameter
    (a half-way plane's points are voxel centres of its two slices, so its widths are bounded by theirs)
    against a realised lower bound for the crop, so that only the few competitive planes are looked at with
    the fine set (voxel-centre plane ``s`` as group ``2 s``, half-way plane ``s + 1/2`` as ``2 s + 1``) and
    then point by point.
    """
    b, c = (a for a in range(3) if a != axis)
    size = padded.shape[axis + 1]
    vox = np.stack(np.unravel_index(idx, padded.shape), 1)
    key = vox[:, 0] * size + vox[:, axis + 1]
    if axis:
        order = np.argsort(key, kind="stable")
        vox, key = vox[order], key[order]
    spbc = sp[[b, c]]
    ij = vox[:, [b + 1, c + 1]]
    # coarse pass over every voxel-centre plane
    dirs, cos = _DIRS_2D_COARSE
    pad = 0.5 * np.abs(dirs * spbc).max(1)
    hc, lc = _segment_support(key, (ij * spbc) @ dirs.T, n * size)
    width = (hc - lc + 2 * pad).max(1)  # a realised width of each plane's vertices (-inf: no voxel)
    lower = width.reshape(n, size).max(1)
    need = np.repeat(lower, size) * (cos * (1 - 1e-9))
    rows = np.flatnonzero((width >= need)[key])
    bound = (np.maximum(hc[:-1], hc[1:]) - np.minimum(lc[:-1], lc[1:])).max(1)
    halves = np.flatnonzero(bound >= need[:-1])  # (a pair across two crops has two empty planes: -inf)
    moved = np.moveaxis(padded, axis + 1, 1)
    diff = moved[halves // size, halves % size] != moved[halves // size, halves % size + 1]
    between = np.stack(np.unravel_index(np.flatnonzero(diff), diff.shape), 1)  # (half, b, c)
    # fine pass over the points of the remaining planes, voxel-centre and half-way ones together
    keys = np.concatenate([2 * key[rows], 2 * halves[between[:, 0]] + 1])
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    ij = np.concatenate([ij[rows], between[:, 1:]])[order]
    src = np.concatenate([rows, np.full(len(between), -1)])[order]  # row of ``vox``, -1: half-way point
    dirs, cos = _DIRS_2D
    pad = np.where(src[:, None] >= 0, 0.5 * np.abs(dirs * spbc).max(1), 0.0)
    proj = (ij * spbc) @ dirs.T
    starts = _segment_starts(keys)
    group = np.cumsum(np.r_[False, keys[1:] != keys[:-1]])
    hi = np.maximum.reduceat(proj + pad, starts)
    lo = np.minimum.reduceat(proj - pad, starts)
    gcrop = keys[starts] // (2 * size)
    level = lower.copy()
    np.maximum.at(level, gcrop, (hi - lo).max(1))
    keep = _keep(proj, pad, lo[group], hi[group], level[gcrop[group]] * cos)
    keys, ij, src = keys[keep], ij[keep], src[keep]
    # vertices (doubled index units): the in-plane faces of the voxel points, the half-way points themselves
    at_vox = src >= 0
    faces, owner = _exposed_faces(padded, vox[src[at_vox]], (b, c))
    keys = np.concatenate([keys[at_vox][owner], keys[~at_vox]])
    pts = np.concatenate([faces[:, [b, c]], 2 * ij[~at_vox]])
    order = np.argsort(keys, kind="stable")
    gkeys, best = _group_max_distance(pts[order] * (0.5 * spbc), keys[order])
    out = np.zeros(n)
    np.maximum.at(out, gkeys // (2 * size), best)
    return out
