"""2D shape features (pyradiomics ``shape2D`` definitions) of single-slice masks.

The perimeter mesh is the marching-squares contour of the zero-padded mask: its vertices are the midpoints of the
edges joining an ROI pixel to a background pixel, and every 2x2 square of pixels adds the segments of its corner
configuration. The mesh's signed area (sum of origin-based cross products over the closed contours) equals the
sum, over squares, of the part of each square enclosed by its segments, so both the area and the perimeter are
obtained from counts of square configurations:

- 1 corner inside: a corner triangle (area 1/8 of the square), one diagonal half-segment;
- 2 adjacent corners: half the square, one segment parallel to the pair;
- 2 opposite corners (saddle): pyradiomics keeps the two corners apart (two triangles, area 1/4) and has two
  diagonal segments;
- 3 corners: the square minus a corner triangle (7/8), one diagonal segment;
- 4 corners: the whole square, no segment.

The maximum diameter is the largest distance between mesh vertices; the axis lengths come from the eigenvalues
of the pixel-centre covariance (physical units, population normalised).
"""

from __future__ import annotations

import math

import numpy as np

from napari_medgen.errors import DimensionError, InvalidInputError
from napari_medgen.radiomics.settings import positive_spacing

# Features pyradiomics computes when the whole class is enabled (SphericalDisproportion is deprecated there).
FEATURES = (
    "MeshSurface", "PixelSurface", "Perimeter", "PerimeterSurfaceRatio", "Sphericity", "MaximumDiameter",
    "MajorAxisLength", "MinorAxisLength", "Elongation",
)
DEPRECATED_FEATURES = ("SphericalDisproportion",)
# Enclosed fraction of a square whose only inside corners are two opposite ones (pyradiomics separates them).
_SADDLE_AREA = 0.25
# Above this many mesh vertices, reduce them to their convex hull before the pairwise distances.
_HULL_ABOVE = 1500


def in_plane_axes(force2d_dimension: int) -> tuple[int, int]:
    """Array axes (of a (z, y, x) volume) spanning the slice plane when ``force2d_dimension`` is out of plane."""
    if force2d_dimension not in (0, 1, 2):
        raise InvalidInputError(f"force2Ddimension must be 0 (z), 1 (y) or 2 (x); got {force2d_dimension!r}.")
    a, b = (ax for ax in range(3) if ax != force2d_dimension)
    return a, b


def shape2d_features(mask: np.ndarray, pixel_spacing: tuple[float, float]) -> dict[str, float]:
    """All pyradiomics shape2D features (including the deprecated ones) of one boolean 2D mask.

    ``pixel_spacing`` is in array-axis order (row spacing, column spacing), in mm. An empty mask gives NaN.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise DimensionError(f"shape2d_features needs a 2D mask; got shape {arr.shape}.")
    return {k: float(v[0]) for k, v in shape2d_features_batch(arr[None], pixel_spacing).items()}


def shape2d_features_volume_batch(masks: np.ndarray, spacing_xyz: tuple[float, float, float],
                                  force2d_dimension: int = 0) -> dict[str, np.ndarray]:
    """shape2D features of an (N, z, y, x) batch of masks that each occupy one plane along ``force2d_dimension``.

    This is how pyradiomics measures a 3D image with ``force2D=True``: the out-of-plane axis must hold a single
    slice of the ROI. Spacing is (x, y, z) in mm, as SimpleITK gives it.
    """
    arr = np.asarray(masks)
    if arr.ndim != 4:
        raise DimensionError(f"shape2D needs an (N, z, y, x) batch of masks; got shape {arr.shape}.")
    spacing = positive_spacing(spacing_xyz, 3, "spacing (x, y, z)")
    a, b = in_plane_axes(force2d_dimension)
    arr = arr != 0 if arr.dtype != bool else arr
    extent = np.count_nonzero(arr.any(axis=tuple(ax + 1 for ax in (a, b))), axis=1)
    thick = np.flatnonzero(extent > 1)
    if thick.size:
        name = "zyx"[force2d_dimension]
        raise InvalidInputError(
            f"shape2D needs ROIs that lie in a single slice along force2Ddimension={force2d_dimension} ({name}); "
            f"mask(s) {thick[:10].tolist()} span up to {int(extent.max())} slices. Use the 3D 'shape' class, "
            "or pass one slice of the label map."
        )
    flat = arr.any(axis=force2d_dimension + 1)
    spacing_zyx = spacing[::-1]
    return shape2d_features_batch(flat, (float(spacing_zyx[a]), float(spacing_zyx[b])))


def shape2d_features_batch(masks: np.ndarray, pixel_spacing: tuple[float, float]) -> dict[str, np.ndarray]:
    """Features of an (N, rows, cols) batch of 2D masks: ``{name: (N,) float64}``, NaN rows for empty masks.

    Returns `FEATURES` plus `DEPRECATED_FEATURES`; ``pixel_spacing`` is (row spacing, column spacing) in mm.
    """
    arr = np.asarray(masks)
    if arr.ndim != 3:
        raise DimensionError(f"shape2d_features_batch needs an (N, rows, cols) batch; got shape {arr.shape}.")
    sp = positive_spacing(pixel_spacing, 2, "pixel_spacing (row, column)")
    arr = arr != 0 if arr.dtype != bool else arr
    n = len(arr)
    out = {k: np.full(n, np.nan) for k in FEATURES + DEPRECATED_FEATURES}
    counts = np.count_nonzero(arr.reshape(n, -1), axis=1) if n else np.zeros(0, np.int64)
    rows = np.flatnonzero(counts)
    if rows.size == 0:
        return out
    sub = arr[rows]
    box = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in (
        np.flatnonzero(sub.any(axis=(0, 2))), np.flatnonzero(sub.any(axis=(0, 1)))))
    padded = np.pad(sub[(slice(None), *box)], ((0, 0), (1, 1), (1, 1)))
    dy, dx = float(sp[0]), float(sp[1])
    area, perimeter = _mesh_area_perimeter(padded, dy, dx)
    out["MeshSurface"][rows] = area
    out["PixelSurface"][rows] = counts[rows] * (dy * dx)
    out["Perimeter"][rows] = perimeter
    with np.errstate(divide="ignore", invalid="ignore"):
        out["PerimeterSurfaceRatio"][rows] = perimeter / area
        out["Sphericity"][rows] = 2.0 * np.sqrt(np.pi * area) / perimeter
        out["SphericalDisproportion"][rows] = perimeter / (2.0 * np.sqrt(np.pi * area))
    out["MaximumDiameter"][rows] = [_max_diameter(p, dy, dx) for p in padded]
    minor, major = _covariance_eigenvalues(padded, counts[rows], dy, dx).T
    out["MajorAxisLength"][rows] = 4.0 * np.sqrt(major)
    out["MinorAxisLength"][rows] = 4.0 * np.sqrt(minor)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["Elongation"][rows] = np.where(major > 0, np.sqrt(minor / major), np.nan)  # one pixel: 0/0, as pyradiomics
    return out


def _mesh_area_perimeter(padded: np.ndarray, dy: float, dx: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching-squares mesh area and perimeter of each zero-padded (N, rows, cols) mask, from configuration counts."""
    p = padded.view(np.uint8)
    tl, tr, bl, br = p[:, :-1, :-1], p[:, :-1, 1:], p[:, 1:, :-1], p[:, 1:, 1:]
    inside = tl + tr + bl + br  # uint8, at most 4

    def count(sel: np.ndarray) -> np.ndarray:
        return np.count_nonzero(sel.reshape(len(p), -1), axis=1)

    one, three, four = count(inside == 1), count(inside == 3), count(inside == 4)
    two = inside == 2
    saddle = count(two & (tl == br))  # the two inside corners are opposite
    rows_pair = count(two & (tl == tr) & (tl != bl))  # top or bottom pair inside: segment along the columns
    cols_pair = count(two & (tl == bl) & (tl != tr))  # left or right pair inside: segment along the rows
    area = (one / 8.0 + (rows_pair + cols_pair) / 2.0 + saddle * _SADDLE_AREA + three * 7.0 / 8.0 + four) * (dy * dx)
    half_diag = 0.5 * math.hypot(dy, dx)
    perimeter = half_diag * (one + three + 2 * saddle) + dx * rows_pair + dy * cols_pair
    return area, perimeter


def _max_diameter(padded: np.ndarray, dy: float, dx: float) -> float:
    """Largest distance between mesh vertices: midpoints of the edges joining an ROI pixel to a background one."""
    r, c = np.nonzero(padded[:, :-1] != padded[:, 1:])
    pts = [np.stack([r, c + 0.5], 1)]
    r, c = np.nonzero(padded[:-1, :] != padded[1:, :])
    pts.append(np.stack([r + 0.5, c], 1))
    points = np.concatenate(pts) * np.array([dy, dx])
    if len(points) > _HULL_ABOVE:
        from scipy.spatial import ConvexHull

        points = points[ConvexHull(points).vertices]  # a farthest pair is always a pair of hull vertices
    best = 0.0
    step = 512
    for start in range(0, len(points), step):
        diff = points[start:start + step, None, :] - points[None, :, :]
        best = max(best, float((diff * diff).sum(-1).max()))
    return math.sqrt(best)


def _covariance_eigenvalues(padded: np.ndarray, n_pix: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Ascending eigenvalues (N, 2) of each mask's pixel-centre covariance in mm^2.

    The centred moments ``n * sum(u v) - sum(u) sum(v)`` and the determinant are formed in exact integers, and
    the smaller eigenvalue is taken as determinant / larger one: a mask whose pixel centres are collinear gets
    exactly 0 (pyradiomics' general eigen-solver returns rounding noise of about 1e-16 mm^2 there).
    """
    m = padded.view(np.uint8).astype(np.int64)
    r = np.arange(m.shape[1], dtype=np.int64)
    c = np.arange(m.shape[2], dtype=np.int64)
    row_marg, col_marg = m.sum(axis=2), m.sum(axis=1)
    s_r, s_c = (row_marg @ r).astype(object), (col_marg @ c).astype(object)
    s_rr, s_cc = (row_marg @ (r * r)).astype(object), (col_marg @ (c * c)).astype(object)
    s_rc = np.einsum("nij,i,j->n", m, r, c).astype(object)
    n = n_pix.astype(object)
    a, b, d = n * s_rr - s_r * s_r, n * s_rc - s_r * s_c, n * s_cc - s_c * s_c  # n^2 * (integer) covariance
    scale = 1.0 / n_pix.astype(np.float64) ** 2
    det = (a * d - b * b).astype(np.float64) * (scale * scale * (dy * dx) ** 2)
    a, b, d = (a.astype(np.float64) * scale * dy * dy, b.astype(np.float64) * scale * dy * dx,
               d.astype(np.float64) * scale * dx * dx)
    major = 0.5 * (a + d + np.hypot(a - d, 2.0 * b))
    with np.errstate(invalid="ignore", divide="ignore"):
        minor = np.where(major > 0, np.maximum(det, 0.0) / major, 0.0)
    return np.stack([minor, major], 1)
