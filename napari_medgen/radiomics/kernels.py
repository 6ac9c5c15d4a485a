"""Compiled (numba) loops of the radiomics engine: the work that needs neighbours, per voxel or per matrix.

Each texture kernel visits every ROI voxel of a `VoxelLattice` once and reads its neighbours straight from the
padded flat lattice (level 0 = outside the ROI), so one pass replaces the per-direction gathers, temporary
arrays and ``bincount`` calls a vectorised numpy version needs. The shape kernels make one pass over a
zero-padded batch of masks. All release the GIL, so the extractor's chunk threads run them in parallel;
``cache=True`` keeps the machine code on disk, so only the first use on a machine compiles (a few seconds).

Semantics follow pyradiomics (the feature formulas built on these counts are in ``texture.py`` and
``shape.py``; tests compare every feature with pyradiomics' baseline values):

- `neighbour_counts`: GLCM co-occurrences, GLDM dependence histogram, NGTDM sums s_i and GLRLM runs of
  length >= 2 (plus which directions have ROI pairs), all in one pass.
- `zones`: GLSZM zones (connected same-level voxels over the given neighbour steps), by flood fill.
- `glcm_features`: the GLCM features of every matrix (all but the MCC, which needs eigenvalues).
- `cube_histogram`, `coordinate_moments`: marching-cube configuration counts (mesh volume and area) and exact
  integer coordinate moments (axis lengths) of every mask.
- `diameters`: the maximum 3D diameter and the maximum 2D diameters in axial / coronal / sagittal planes.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def neighbour_counts(store: np.ndarray, margin: int, index: np.ndarray, levels: np.ndarray, crop: np.ndarray,
                     steps: np.ndarray, cooc: np.ndarray, unit: np.ndarray, n_crops: int, g1: int, alpha: int,
                     longest: int, do_glcm: bool, do_gldm: bool, do_ngtdm: bool, do_runs: bool
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every neighbour count of the texture classes in one pass over the ROI voxels.

    ``steps`` are flat direction steps; ``cooc[d]`` / ``unit[d]`` give direction d's position among the
    GLCM/GLDM/NGTDM directions (all distances) / the GLRLM directions (distance 1), or -1. Returns:

    - GLCM counts (N, A, g1, g1): row = level, column = forward neighbour level (0 = outside);
    - GLDM histogram (N, g1, 2A + 2): dependence 1..2A+1 = 1 + neighbours within ``alpha`` of the level;
    - NGTDM s_i (N, g1): sum of |level - mean level of the ROI neighbours| (0 without ROI neighbours);
    - GLRLM runs of length >= 2 (N, U, g1, longest + 1), counted at their first voxel (its backward
      neighbour has another level) by walking forward; runs of length 1 follow by subtraction (`texture`);
    - ROI neighbour pairs per crop and GLRLM direction (N, U), for pyradiomics' dropping of empty directions.

    Arrays not asked for are empty.
    """
    n_dirs = steps.size
    n_cooc = 0
    n_unit = 0
    for d in range(n_dirs):
        n_cooc += cooc[d] >= 0
        n_unit += unit[d] >= 0
    glcm = np.zeros((n_crops if do_glcm else 0, n_cooc, g1, g1), np.int32)
    gldm = np.zeros((n_crops if do_gldm else 0, g1, 2 * n_cooc + 2), np.int32)
    s_i = np.zeros((n_crops if do_ngtdm else 0, g1), np.float64)
    runs = np.zeros((n_crops if do_runs else 0, n_unit, g1, longest + 1), np.int32)
    pairs = np.zeros((n_crops if do_runs else 0, n_unit), np.int64)
    for v in range(index.size):
        p = index[v] + margin
        lv = np.int64(levels[v])
        c = crop[v]
        dep = 1
        total = 0
        count = 0
        for d in range(n_dirs):  # branch-free where possible: outside neighbours have level 0
            s = steps[d]
            fwd = np.int64(store[p + s])
            bwd = np.int64(store[p - s])
            a = cooc[d]
            if a >= 0:
                if do_glcm:
                    glcm[c, a, lv, fwd] += 1
                if do_gldm:
                    if alpha == 0:  # (levels are >= 1, so equal means inside the ROI)
                        dep += (fwd == lv) + (bwd == lv)
                    else:
                        dep += (fwd > 0) & (abs(fwd - lv) <= alpha)
                        dep += (bwd > 0) & (abs(bwd - lv) <= alpha)
                if do_ngtdm:
                    total += fwd + bwd
                    count += (fwd > 0) + (bwd > 0)
            u = unit[d]
            if do_runs and u >= 0:
                pairs[c, u] += fwd > 0
                if fwd == lv and bwd != lv:  # first voxel of a run of length >= 2
                    q = p + 2 * s
                    length = 2
                    while store[q] == lv:
                        length += 1
                        q += s
                    runs[c, u, lv, length] += 1
        if do_gldm:
            gldm[c, lv, dep] += 1
        if do_ngtdm and count > 0:
            s_i[c, lv] += abs(total / count - lv)
    return glcm, gldm, s_i, runs, pairs


@njit(cache=True, nogil=True)
def zones(store: np.ndarray, margin: int, index: np.ndarray, crop: np.ndarray,
          steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zones as (crop, level, size) arrays in the order of their first voxel (hence crop-major).

    ``steps`` are the flat neighbour steps of both signs; the flood fill works on a copy of the lattice
    whose visited voxels are set to 0, so every voxel is pushed once.
    """
    work = store.copy()
    n_vox = index.size
    stack = np.empty(n_vox, np.int64)
    zone_crop = np.empty(n_vox, np.int64)
    zone_level = np.empty(n_vox, np.int64)
    zone_size = np.empty(n_vox, np.int64)
    n_zones = 0
    for v in range(n_vox):
        p = index[v] + margin
        lv = work[p]
        if lv == 0:
            continue
        work[p] = 0
        stack[0] = p
        top = 1
        size = 0
        while top > 0:
            top -= 1
            q = stack[top]
            size += 1
            for s in steps:
                r = q + s
                if work[r] == lv:
                    work[r] = 0
                    stack[top] = r
                    top += 1
        zone_crop[n_zones] = crop[v]
        zone_level[n_zones] = lv
        zone_size[n_zones] = size
        n_zones += 1
    return zone_crop[:n_zones], zone_level[:n_zones], zone_size[:n_zones]


@njit(cache=True, nogil=True)
def cube_histogram(padded: np.ndarray, linear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes configuration histogram (N, 256) of a zero-padded (N, Z, Y, X) uint8 batch, and per crop
    the sum over surface cubes of (i, j, k) . ``linear[config]`` (exact integers).

    Cube (i, j, k) has corner bit 0 on voxel (i, j, k); bits 1, 2, 4 step along z, y, x (bit = z + 2 y + 4 x
    of the corner offset). All-outside and all-inside cubes are skipped.
    """
    n, nz, ny, nx = padded.shape
    hist = np.zeros((n, 256), np.int64)
    pos = np.zeros(n, np.int64)
    for c in range(n):
        for i in range(nz - 1):
            for j in range(ny - 1):
                a = padded[c, i, j]
                b = padded[c, i + 1, j]
                d = padded[c, i, j + 1]
                e = padded[c, i + 1, j + 1]
                low = a[0] | (b[0] << 1) | (d[0] << 2) | (e[0] << 3)  # corners at x = k
                for k in range(nx - 1):
                    high = a[k + 1] | (b[k + 1] << 1) | (d[k + 1] << 2) | (e[k + 1] << 3)
                    config = np.int64(low | (high << 4))
                    low = high
                    if config == 0 or config == 255:
                        continue
                    hist[c, config] += 1
                    pos[c] += i * linear[config, 0] + j * linear[config, 1] + k * linear[config, 2]
    return hist, pos


@njit(cache=True, nogil=True)
def coordinate_moments(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per mask of an (N, Z, Y, X) uint8 batch: voxel count, sums of the (z, y, x) indices (N, 3) and of their
    products (N, 3, 3), as exact integers (for the covariance of the voxel centres)."""
    n, nz, ny, nx = masks.shape
    count = np.zeros(n, np.int64)
    first = np.zeros((n, 3), np.int64)
    second = np.zeros((n, 3, 3), np.int64)
    for c in range(n):
        for i in range(nz):
            for j in range(ny):
                row = masks[c, i, j]
                m = 0
                sx = 0
                sxx = 0
                for k in range(nx):
                    if row[k]:
                        m += 1
                        sx += k
                        sxx += k * k
                if m == 0:
                    continue
                count[c] += m
                first[c, 0] += i * m
                first[c, 1] += j * m
                first[c, 2] += sx
                second[c, 0, 0] += i * i * m
                second[c, 1, 1] += j * j * m
                second[c, 2, 2] += sxx
                second[c, 0, 1] += i * j * m
                second[c, 0, 2] += i * sx
                second[c, 1, 2] += j * sx
        second[c, 1, 0] = second[c, 0, 1]
        second[c, 2, 0] = second[c, 0, 2]
        second[c, 2, 1] = second[c, 1, 2]
    return count, first, second


@njit(cache=True, nogil=True)
def _rows_box2(lo: np.ndarray, hi: np.ndarray, r0: int, r1: int, s_row: float, s_col: float) -> float:
    """Squared physical diagonal of the bounding box of one plane's vertices (-1: none): a bound on its
    diameter. ``lo`` / ``hi`` hold each row's leftmost / rightmost vertex (doubled units; ``hi < 0``: none),
    rows ``r0 <= r < r1``."""
    first = -1
    last = -1
    c0 = 1 << 30
    c1 = -1
    for r in range(r0, r1):
        if hi[r] < 0:
            continue
        if first < 0:
            first = r
        last = r
        c0 = min(c0, lo[r])
        c1 = max(c1, hi[r])
    if first < 0:
        return -1.0
    return ((last - first) * 0.5 * s_row) ** 2 + ((c1 - c0) * 0.5 * s_col) ** 2


@njit(cache=True, nogil=True)
def _rows_diameter2(lo: np.ndarray, hi: np.ndarray, r0: int, r1: int, s_row: float, s_col: float, best2: float,
                    pr: np.ndarray, pc: np.ndarray, hull: np.ndarray) -> float:
    """Largest squared physical distance between the vertices of one plane, or ``best2`` if that is larger.

    Only the row extremes (``lo`` / ``hi`` as in `_rows_box2`) can be hull vertices: the convex hull (monotone
    chain over them, already sorted by row then column) is built and its vertices are compared pairwise.
    Hulls are taken in index units: per-axis scaling keeps convexity.
    """
    m = 0
    for r in range(r0, r1):
        if hi[r] < 0:
            continue
        pr[m] = r
        pc[m] = lo[r]
        m += 1
        if hi[r] != lo[r]:
            pr[m] = r
            pc[m] = hi[r]
            m += 1
    if m < 2:
        return best2
    h = 0
    for i in range(m):  # lower chain
        while h >= 2 and ((pr[hull[h - 1]] - pr[hull[h - 2]]) * (pc[i] - pc[hull[h - 2]])
                          - (pc[hull[h - 1]] - pc[hull[h - 2]]) * (pr[i] - pr[hull[h - 2]])) <= 0:
            h -= 1
        hull[h] = i
        h += 1
    floor = h + 1
    for i in range(m - 2, -1, -1):  # upper chain
        while h >= floor and ((pr[hull[h - 1]] - pr[hull[h - 2]]) * (pc[i] - pc[hull[h - 2]])
                              - (pc[hull[h - 1]] - pc[hull[h - 2]]) * (pr[i] - pr[hull[h - 2]])) <= 0:
            h -= 1
        hull[h] = i
        h += 1
    h -= 1  # the first point closes the chain
    for i in range(h):
        for j in range(i + 1, h):
            dr = (pr[hull[i]] - pr[hull[j]]) * 0.5 * s_row
            dc = (pc[hull[i]] - pc[hull[j]]) * 0.5 * s_col
            best2 = max(best2, dr * dr + dc * dc)
    return best2


@njit(cache=True, nogil=True)
def _face(lo: np.ndarray, hi: np.ndarray, z: int, y: int, x: int) -> None:
    """Record a face-centre vertex (doubled units) in its z-, y- and x-plane (rows: the first remaining axis)
    and on its z-line (table 3, indexed by y and x)."""
    lo[0, z, y] = min(lo[0, z, y], x)
    hi[0, z, y] = max(hi[0, z, y], x)
    lo[1, y, z] = min(lo[1, y, z], x)
    hi[1, y, z] = max(hi[1, y, z], x)
    lo[2, x, z] = min(lo[2, x, z], y)
    hi[2, x, z] = max(hi[2, x, z], y)
    lo[3, y, x] = min(lo[3, y, x], z)
    hi[3, y, x] = max(hi[3, y, x], z)


@njit(cache=True, nogil=True)
def _diameter3d(pts: np.ndarray, m: int, dirs: np.ndarray, cos_bound: float, keep: np.ndarray) -> float:
    """Largest distance between the first ``m`` rows of ``pts`` (physical z, y, x).

    A realised lower bound L (the farthest point from the point farthest from the centroid) prunes exactly,
    twice. A point of a pair at least L apart lies at least L - max d0 from the centroid (d0: distance to the
    centroid). Among those, the farthest pair (x, y) is within the angle of the nearest of ``dirs`` (cos >=
    ``cos_bound``), so u.x - min u.p >= L cos_bound (L raised to the widest projection first); points that
    reach that far along no direction are dropped and the rest compared pairwise.
    """
    if m < 2:
        return 0.0
    cz = 0.0
    cy = 0.0
    cx = 0.0
    for i in range(m):
        cz += pts[i, 0]
        cy += pts[i, 1]
        cx += pts[i, 2]
    cz /= m
    cy /= m
    cx /= m
    d0 = np.empty(m)
    far = 0
    for i in range(m):
        d0[i] = np.sqrt((pts[i, 0] - cz) ** 2 + (pts[i, 1] - cy) ** 2 + (pts[i, 2] - cx) ** 2)
        if d0[i] > d0[far]:
            far = i
    bound2 = 0.0
    for i in range(m):
        d = (pts[i, 0] - pts[far, 0]) ** 2 + (pts[i, 1] - pts[far, 1]) ** 2 + (pts[i, 2] - pts[far, 2]) ** 2
        bound2 = max(bound2, d)
    bound = np.sqrt(bound2)
    reach = bound - d0[far]
    reach -= 1e-9 * max(abs(reach), 1.0)
    n_near = 0
    for i in range(m):
        if d0[i] >= reach:
            keep[n_near] = i
            n_near += 1
    k_dirs = dirs.shape[0]
    proj = np.empty((n_near, k_dirs))
    lo_u = np.full(k_dirs, np.inf)
    hi_u = np.full(k_dirs, -np.inf)
    for a in range(n_near):
        i = keep[a]
        for u in range(k_dirs):
            t = dirs[u, 0] * pts[i, 0] + dirs[u, 1] * pts[i, 1] + dirs[u, 2] * pts[i, 2]
            proj[a, u] = t
            lo_u[u] = min(lo_u[u], t)
            hi_u[u] = max(hi_u[u], t)
    for u in range(k_dirs):
        bound = max(bound, hi_u[u] - lo_u[u])
    level = bound * cos_bound
    level -= 1e-9 * max(level, 1.0)
    n_keep = 0
    for a in range(n_near):
        for u in range(k_dirs):
            if proj[a, u] - lo_u[u] >= level or hi_u[u] - proj[a, u] >= level:
                keep[n_keep] = keep[a]
                n_keep += 1
                break
    best2 = 0.0
    for a in range(n_keep):
        i = keep[a]
        for b in range(a + 1, n_keep):
            j = keep[b]
            d = (pts[i, 0] - pts[j, 0]) ** 2 + (pts[i, 1] - pts[j, 1]) ** 2 + (pts[i, 2] - pts[j, 2]) ** 2
            best2 = max(best2, d)
    return np.sqrt(best2)


@njit(cache=True, nogil=True)
def diameters(padded: np.ndarray, first: np.ndarray, last: np.ndarray, spacing_zyx: np.ndarray, dirs: np.ndarray,
              cos_bound: float) -> np.ndarray:
    """Maximum 3D diameter and maximum 2D diameters in planes perpendicular to z, y and x, (N, 4), of every mask
    of a zero-padded (N, Z, Y, X) uint8 batch: largest distances between mesh vertices (all, or within one plane).

    ``first`` / ``last`` (N, 3) bound each crop's voxels (inclusive, padded indices). The vertices are the
    centres of the exposed voxel faces (doubled index units). Each lies in one plane of every orientation: a
    face across z at (2i + 1, 2j, 2k) in the half-way z-plane 2i + 1, the voxel-centre y-plane 2j and x-plane
    2k. One pass over the crop's box records every plane's row extremes and every z-line's extremes. Only a
    vertex extreme on its x-, y- and z-line can be a hull vertex: those go to `_diameter3d` (``dirs``,
    ``cos_bound``: its pruning directions). Planes are measured by `_rows_diameter2` in order of their bounding
    boxes, widest first, until no box can beat the best distance.
    """
    n = padded.shape[0]
    big = 2 * max(padded.shape[1], padded.shape[2], padded.shape[3]) + 2
    out = np.zeros((n, 4))
    lo = np.full((4, big, big), 1 << 30, np.int32)  # (axis, plane, row) -> leftmost column; 3: z-lines
    hi = np.full((4, big, big), -1, np.int32)
    pr = np.empty(2 * big, np.int64)
    pc = np.empty(2 * big, np.int64)
    hull = np.empty(2 * big + 2, np.int64)
    box2 = np.empty(big)
    pts = np.empty((2 * big * big, 3))
    keep = np.empty(2 * big * big, np.int64)
    for c in range(n):
        v = padded[c]
        for i in range(first[c, 0], last[c, 0] + 1):
            for j in range(first[c, 1], last[c, 1] + 1):
                for k in range(first[c, 2], last[c, 2] + 1):
                    if not v[i, j, k]:
                        continue
                    if not v[i - 1, j, k]:
                        _face(lo, hi, 2 * i - 1, 2 * j, 2 * k)
                    if not v[i + 1, j, k]:
                        _face(lo, hi, 2 * i + 1, 2 * j, 2 * k)
                    if not v[i, j - 1, k]:
                        _face(lo, hi, 2 * i, 2 * j - 1, 2 * k)
                    if not v[i, j + 1, k]:
                        _face(lo, hi, 2 * i, 2 * j + 1, 2 * k)
                    if not v[i, j, k - 1]:
                        _face(lo, hi, 2 * i, 2 * j, 2 * k - 1)
                    if not v[i, j, k + 1]:
                        _face(lo, hi, 2 * i, 2 * j, 2 * k + 1)
        z0, z1 = 2 * first[c, 0] - 1, 2 * last[c, 0] + 2  # doubled ranges holding every vertex
        y0, y1 = 2 * first[c, 1] - 1, 2 * last[c, 1] + 2
        x0, x1 = 2 * first[c, 2] - 1, 2 * last[c, 2] + 2
        m = 0
        for z in range(z0, z1):
            for y in range(y0, y1):
                if hi[0, z, y] < 0:
                    continue
                for t in range(2):
                    x = lo[0, z, y] if t == 0 else hi[0, z, y]
                    if t == 1 and x == lo[0, z, y]:
                        break
                    if (y == lo[2, x, z] or y == hi[2, x, z]) and (z == lo[3, y, x] or z == hi[3, y, x]):
                        pts[m, 0] = z * 0.5 * spacing_zyx[0]
                        pts[m, 1] = y * 0.5 * spacing_zyx[1]
                        pts[m, 2] = x * 0.5 * spacing_zyx[2]
                        m += 1
        out[c, 0] = _diameter3d(pts, m, dirs, cos_bound, keep)
        for y in range(y0, y1):
            lo[3, y, x0:x1] = 1 << 30
            hi[3, y, x0:x1] = -1
        for a in range(3):
            r = 1 if a == 0 else 0  # the row axis of this orientation
            s_row = spacing_zyx[r]
            s_col = spacing_zyx[1] if a == 2 else spacing_zyx[2]
            r0 = 2 * first[c, r] - 1
            r1 = 2 * last[c, r] + 2
            p0 = 2 * first[c, a] - 1
            p1 = 2 * last[c, a] + 2
            for plane in range(p0, p1):
                box2[plane - p0] = _rows_box2(lo[a, plane], hi[a, plane], r0, r1, s_row, s_col)
            best2 = 0.0
            while True:  # widest plane first: the rest are mostly ruled out by their box
                q = np.argmax(box2[:p1 - p0])
                if box2[q] <= best2:
                    break
                box2[q] = -1.0
                plane = p0 + q
                best2 = _rows_diameter2(lo[a, plane], hi[a, plane], r0, r1, s_row, s_col, best2, pr, pc, hull)
            for plane in range(p0, p1):
                lo[a, plane, r0:r1] = 1 << 30
                hi[a, plane, r0:r1] = -1
            out[c, a + 1] = np.sqrt(best2)
    return out


#: GLCM features computed by `glcm_features`, in its column order (MCC is added by the caller from ``b``)
GLCM_KERNEL_FEATURES = (
    "Autocorrelation", "JointAverage", "ClusterProminence", "ClusterShade", "ClusterTendency", "Contrast",
    "Correlation", "DifferenceAverage", "DifferenceEntropy", "DifferenceVariance", "JointEnergy", "JointEntropy",
    "Imc1", "Imc2", "Idm", "Idmn", "Id", "Idn", "InverseVariance", "MaximumProbability", "SumEntropy",
    "SumSquares", "SumAverage",
)


@njit(cache=True, nogil=True)
def glcm_features(counts: np.ndarray, ng: np.ndarray, symmetric: bool, eps: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """pyradiomics' GLCM features of every (G, G) count matrix of ``counts`` (M, G, G), in the column order of
    `GLCM_KERNEL_FEATURES` (NaN rows for empty matrices), and B = D_x^-1/2 P D_y^-1/2 for the MCC.

    ``ng`` is each matrix's Ng (the largest gray level of its crop). Terms of absent gray levels are exactly
    zero (0 * log(eps)), so the entropy sums only visit present rows and columns. For a symmetric GLCM the
    column marginal is the row marginal itself, as in pyradiomics.
    """
    m_count, g, _ = counts.shape
    out = np.full((m_count, len(GLCM_KERNEL_FEATURES)), np.nan)
    b = np.zeros((m_count, g, g))
    px = np.empty(g)
    py = np.empty(g)
    pj = np.empty(g)
    psum = np.empty(2 * g - 1)
    pdiff = np.empty(g)
    rows = np.empty(g, np.int64)
    cols = np.empty(g, np.int64)
    for m in range(m_count):
        p = counts[m]
        total = 0.0
        for i in range(g):
            for j in range(g):
                total += p[i, j]
        if total <= 0:
            continue
        psum[:] = 0.0
        pdiff[:] = 0.0
        energy = 0.0
        hxy = 0.0
        auto = 0.0
        pmax = 0.0
        for i in range(g):
            row = 0.0
            rj = 0.0
            for j in range(g):
                v = p[i, j] / total
                row += v
                rj += v * (j + 1)
                psum[i + j] += v
                pdiff[abs(i - j)] += v
                energy += v * v
                pmax = max(pmax, v)
                if v > 0:
                    hxy -= v * np.log2(v + eps)
            px[i] = row
            pj[i] = rj
            auto += rj * (i + 1)
        if symmetric:
            py[:] = px
        else:
            for j in range(g):
                col = 0.0
                for i in range(g):
                    col += p[i, j] / total
                py[j] = col
        ux = 0.0
        uy = 0.0
        for i in range(g):
            ux += px[i] * (i + 1)
            uy += py[i] * (i + 1)
        if symmetric:
            uy = ux
        nr = 0
        nc = 0
        hx = 0.0
        hy = 0.0
        varx = 0.0
        vary = 0.0
        corm = 0.0
        for i in range(g):
            if px[i] > 0:
                rows[nr] = i
                nr += 1
                hx -= px[i] * np.log2(px[i] + eps)
            if py[i] > 0:
                cols[nc] = i
                nc += 1
                hy -= py[i] * np.log2(py[i] + eps)
            dx = i + 1 - ux
            dy = i + 1 - uy
            varx += px[i] * dx * dx
            vary += py[i] * dy * dy
            corm += dx * (pj[i] - uy * px[i])
        if symmetric:
            hy = hx
        hxy1 = 0.0
        hxy2 = 0.0
        for a in range(nr):
            i = rows[a]
            for c in range(nc):
                j = cols[c]
                outer = px[i] * py[j]
                log_outer = np.log2(outer + eps)
                v = p[i, j] / total
                hxy1 -= v * log_outer
                hxy2 -= outer * log_outer
                b[m, i, j] = v / np.sqrt(outer + eps)
        mean_sum = ux + uy
        prominence = 0.0
        shade = 0.0
        tendency = 0.0
        sum_entropy = 0.0
        sum_average = 0.0
        for k in range(2 * g - 1):
            v = psum[k]
            c = k + 2 - mean_sum
            c2 = c * c
            prominence += v * c2 * c2
            shade += v * c2 * c
            tendency += v * c2
            sum_entropy -= v * np.log2(v + eps)
            sum_average += v * (k + 2)
        contrast = 0.0
        diff_average = 0.0
        diff_entropy = 0.0
        idm = 0.0
        idmn = 0.0
        id_ = 0.0
        idn = 0.0
        inverse_variance = 0.0
        ngm = ng[m]
        for k in range(g):
            v = pdiff[k]
            contrast += v * k * k
            diff_average += v * k
            diff_entropy -= v * np.log2(v + eps)
            idm += v / (1 + k * k)
            idmn += v / (1 + k * k / (ngm * ngm))
            id_ += v / (1 + k)
            idn += v / (1 + k / ngm)
            if k > 0:
                inverse_variance += v / (k * k)
        diff_variance = 0.0
        for k in range(g):
            diff_variance += pdiff[k] * (k - diff_average) ** 2
        sig = np.sqrt(varx) * (np.sqrt(varx) if symmetric else np.sqrt(vary))
        top = max(hx, hy)
        f = out[m]
        f[0] = auto
        f[1] = ux
        f[2] = prominence
        f[3] = shade
        f[4] = tendency
        f[5] = contrast
        f[6] = 1.0 if sig == 0 else corm / (sig + eps)
        f[7] = diff_average
        f[8] = diff_entropy
        f[9] = diff_variance
        f[10] = energy
        f[11] = hxy
        f[12] = (hxy - hxy1) / top if top != 0 else 0.0
        f[13] = 0.0 if hxy2 == hxy else np.sqrt(1 - np.exp(-2 * (hxy2 - hxy)))
        f[14] = idm
        f[15] = idmn
        f[16] = id_
        f[17] = idn
        f[18] = inverse_variance
        f[19] = pmax
        f[20] = sum_entropy
        f[21] = varx
        f[22] = sum_average
    return out, b

