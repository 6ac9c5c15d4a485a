"""Texture matrices (GLCM, GLRLM, GLSZM, GLDM, NGTDM) and their features for many crops at once.

Everything runs on a `VoxelLattice` (ROI voxels of N crops in one zero-padded flat array), one neighbour
direction at a time, for all crops together; each direction costs a few gathers over the ROI voxels:

- GLCM: one ``np.bincount`` per direction over (crop, i, j) codes.
- GLDM / NGTDM: per-voxel neighbour counts and sums accumulated from the forward/backward gathers.
- GLRLM: runs of length 1 are counted by subtraction (voxels minus same-level links); the runs that start a
  link chain are followed voxel by voxel, so the work is the number of voxels in runs longer than one.
  As in pyradiomics, a direction in which no line holds two ROI voxels (e.g. across a one-slice ROI) is
  dropped for that crop.
- GLSZM: 26-connected (8 in 2D) same-level zones are the connected components of the same-level links,
  found with a vectorised union-find over the whole batch; the features are sums over the zone list.

Feature formulas are applied to the batched matrices (N, angles, Ng, Ng) and friends. Gray levels absent
from a crop simply have empty rows/columns; the formulas where pyradiomics' deletion of those rows matters
(NGTDM pairwise sums, MCC) mask them explicitly. Per-angle features are averaged with ``nanmean`` over the
angles that have data, as pyradiomics does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np

from napari_medgen.radiomics.neighbours import VoxelLattice, angles
from napari_medgen.radiomics.settings import RadiomicsSettings

EPS = np.spacing(1)
CLASSES = ("glcm", "glrlm", "glszm", "gldm", "ngtdm")

GLCM_FEATURES = (
    "Autocorrelation", "JointAverage", "ClusterProminence", "ClusterShade", "ClusterTendency", "Contrast",
    "Correlation", "DifferenceAverage", "DifferenceEntropy", "DifferenceVariance", "JointEnergy", "JointEntropy",
    "Imc1", "Imc2", "Idm", "MCC", "Idmn", "Id", "Idn", "InverseVariance", "MaximumProbability", "SumEntropy",
    "SumSquares", "SumAverage",
)
GLRLM_NAMES = {
    "SE": "ShortRunEmphasis", "LE": "LongRunEmphasis", "GLN": "GrayLevelNonUniformity",
    "GLNN": "GrayLevelNonUniformityNormalized", "SN": "RunLengthNonUniformity",
    "SNN": "RunLengthNonUniformityNormalized", "P": "RunPercentage", "GLV": "GrayLevelVariance",
    "SV": "RunVariance", "E": "RunEntropy", "LGLE": "LowGrayLevelRunEmphasis", "HGLE": "HighGrayLevelRunEmphasis",
    "SLGLE": "ShortRunLowGrayLevelEmphasis", "SHGLE": "ShortRunHighGrayLevelEmphasis",
    "LLGLE": "LongRunLowGrayLevelEmphasis", "LHGLE": "LongRunHighGrayLevelEmphasis",
}
GLSZM_NAMES = {
    "SE": "SmallAreaEmphasis", "LE": "LargeAreaEmphasis", "GLN": "GrayLevelNonUniformity",
    "GLNN": "GrayLevelNonUniformityNormalized", "SN": "SizeZoneNonUniformity",
    "SNN": "SizeZoneNonUniformityNormalized", "P": "ZonePercentage", "GLV": "GrayLevelVariance",
    "SV": "ZoneVariance", "E": "ZoneEntropy", "LGLE": "LowGrayLevelZoneEmphasis", "HGLE": "HighGrayLevelZoneEmphasis",
    "SLGLE": "SmallAreaLowGrayLevelEmphasis", "SHGLE": "SmallAreaHighGrayLevelEmphasis",
    "LLGLE": "LargeAreaLowGrayLevelEmphasis", "LHGLE": "LargeAreaHighGrayLevelEmphasis",
}
GLDM_NAMES = {
    "SE": "SmallDependenceEmphasis", "LE": "LargeDependenceEmphasis", "GLN": "GrayLevelNonUniformity",
    "SN": "DependenceNonUniformity", "SNN": "DependenceNonUniformityNormalized", "GLV": "GrayLevelVariance",
    "SV": "DependenceVariance", "E": "DependenceEntropy", "LGLE": "LowGrayLevelEmphasis",
    "HGLE": "HighGrayLevelEmphasis", "SLGLE": "SmallDependenceLowGrayLevelEmphasis",
    "SHGLE": "SmallDependenceHighGrayLevelEmphasis", "LLGLE": "LargeDependenceLowGrayLevelEmphasis",
    "LHGLE": "LargeDependenceHighGrayLevelEmphasis",
}
NGTDM_FEATURES = ("Coarseness", "Contrast", "Busyness", "Complexity", "Strength")


def feature_names(cls: str) -> tuple[str, ...]:
    """Feature names of a texture class, in pyradiomics' order."""
    return {
        "glcm": GLCM_FEATURES, "glrlm": tuple(GLRLM_NAMES.values()), "glszm": tuple(GLSZM_NAMES.values()),
        "gldm": tuple(GLDM_NAMES.values()), "ngtdm": NGTDM_FEATURES,
    }[cls]


# ------------------------------------------------------------------------------------------------ helpers
def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """nanmean that quietly gives NaN when every entry is NaN (an ROI with no pair in any direction)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def _safe_div(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
    ok = den != 0
    return np.where(ok, num / np.where(ok, den, 1), fill)


def _angle_weights(offsets: np.ndarray, norm: str, spacing_zyx: np.ndarray, glcm: bool) -> np.ndarray:
    """Per-direction weights of pyradiomics' ``weightingNorm`` (GLCM uses exp(-d^2), GLRLM the distance d)."""
    scaled = np.abs(offsets) * spacing_zyx[None, :]
    if norm == "infinity":
        dist = scaled.max(1)
    elif norm == "euclidean":
        dist = np.sqrt((scaled**2).sum(1))
    elif norm == "manhattan":
        dist = scaled.sum(1)
    else:  # no_weighting
        return np.ones(len(offsets))
    return np.exp(-(dist**2)) if glcm else dist


def _components(parent: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Union-find over links ``src[k] -- dst[k]``: returns every node's root (the smallest node of its component).

    ``parent`` is the starting forest, of depth <= 1 with roots smaller than their nodes (e.g. ``arange``); it
    may be overwritten. Each round hooks the larger root of every still-split link onto the smaller one (when
    several links hook the same root, any one wins and the others wait for the next round), then compresses
    paths by pointer jumping.
    """
    while src.size:
        ps = parent[src]
        pd = parent[dst]
        split = ps != pd
        if not split.any():
            break
        src, dst, ps, pd = src[split], dst[split], ps[split], pd[split]
        parent[np.maximum(ps, pd)] = np.minimum(ps, pd)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


def _pair_counts(group: np.ndarray, value: np.ndarray, n_groups: int, small: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (group, value) combinations as (group, count) arrays; ``value`` are ints >= 1.

    Small values go through a dense ``bincount``; the few large ones (big zones) through ``np.unique``.
    """
    little = value <= small
    dense = np.bincount(group[little] * small + (value[little] - 1), minlength=n_groups * small)
    nz = np.flatnonzero(dense)
    groups = [nz // small]
    counts = [dense[nz]]
    if not little.all():
        big_g, big_v = group[~little], value[~little]
        keys, cnt = np.unique(big_g * (int(big_v.max()) + 1) + big_v, return_counts=True)
        groups.append(keys // (int(big_v.max()) + 1))
        counts.append(cnt)
    return np.concatenate(groups), np.concatenate(counts).astype(np.float64)


# ----------------------------------------------------------------------------------------------- matrices
class _Matrices:
    """Raw texture counts of a lattice, built in one sweep over the neighbour directions.

    Per direction the forward and backward neighbour levels of every ROI voxel are gathered once (into
    reused buffers: fresh large arrays cost page faults) and shared by all requested classes.
    """

    def __init__(self, lat: VoxelLattice, settings: RadiomicsSettings, classes: list[str]) -> None:
        self.n = lat.n_crops
        g = lat.n_levels
        self.g = g
        g1 = g + 1
        n_vox = lat.index.size
        lv = lat.levels
        lvi = lv.astype(np.intp)
        cl = lat.crop * g1
        cl += lvi  # (crop, level) code of every ROI voxel
        nvox = np.bincount(cl, minlength=self.n * g1).reshape(self.n, g1)[:, 1:]
        self.nvox = nvox.astype(np.float64)
        self.present = nvox > 0

        offs_all = angles(settings.distances, settings.force2D, settings.force2Ddimension)
        offs_unit = angles((1,), settings.force2D, settings.force2Ddimension)
        self.offs_all, self.offs_unit = offs_all, offs_unit
        want = set(classes)
        use_all = bool(want & {"glcm", "gldm", "ngtdm"})
        use_unit = bool(want & {"glrlm", "glszm"})
        all_pos = {tuple(o): a for a, o in enumerate(offs_all)} if use_all else {}
        unit_pos = {tuple(o): a for a, o in enumerate(offs_unit)} if use_unit else {}
        keys = list(all_pos) + [k for k in unit_pos if k not in all_pos]
        steps = lat.steps(np.array(keys, dtype=np.int64).reshape(-1, 3))
        n_all, n_unit = len(offs_all), len(offs_unit)
        alpha = settings.gldm_a
        glcm_unit = "glcm" in want and all(k in all_pos for k in unit_pos)
        # GLDM with alpha 0 on the 26-neighbourhood counts exactly the "same level" links GLSZM/GLRLM need;
        # when NGTDM gathers the backward neighbours anyway, comparing them is cheaper still
        gldm_links = ("gldm" in want and use_unit and alpha == 0 and set(all_pos) == set(unit_pos)
                      and "ngtdm" not in want)
        gldm_same = "gldm" in want and alpha == 0 and not gldm_links

        # one 8-byte scratch per voxel, reused in turn for the GLCM codes, GLDM codes and NGTDM means (fresh
        # large arrays cost page faults)
        wide = np.empty(n_vox, dtype=np.intp)
        if "glcm" in want:
            self.glcm = np.empty((self.n, n_all, g, g))  # (i, j) counts, symmetrised if asked
            code = wide
            cl1 = cl * g1
        if "gldm" in want and not gldm_links:
            dep = np.ones(n_vox, dtype=np.uint8 if 2 * n_all < 255 else np.uint16)
        if "ngtdm" in want:
            nsum = np.zeros(n_vox, dtype=np.uint16 if 2 * n_all * g < 2**16 else np.int64)
            ncnt = np.zeros(n_vox, dtype=np.uint8 if 2 * n_all < 255 else np.uint16)
        if use_unit:
            rank_of = lat.ranker()
            is_dst = np.zeros(n_vox, dtype=bool)
            self.link_src: list[np.ndarray] = []
            self.link_dst: list[np.ndarray] = []
            run_hists: list[tuple[int, int, np.ndarray]] = []
            runs_total = np.zeros((self.n, n_unit, g))
            pairs_unit = np.zeros((self.n, n_unit), dtype=bool)

        index = lat.index
        fwd = np.empty_like(lv)
        bwd = np.empty_like(lv)
        same = np.empty(n_vox, dtype=bool)
        flag = np.empty(n_vox, dtype=bool)
        for key, step in zip(keys, steps, strict=True):
            np.take(lat.shifted(step), index, out=fwd, mode="clip")
            in_all, in_unit = key in all_pos, key in unit_pos
            if in_all and ("ngtdm" in want or "gldm" in want and not gldm_links):
                np.take(lat.shifted(-step), index, out=bwd, mode="clip")
            if in_all:
                a = all_pos[key]
                if "glcm" in want:
                    np.add(cl1, fwd, out=code)
                    counts = np.bincount(code, minlength=self.n * g1 * g1).reshape(self.n, g1, g1)
                    if settings.symmetricalGLCM:
                        np.add(counts[:, 1:, 1:], counts[:, 1:, 1:].transpose(0, 2, 1), out=self.glcm[:, a])
                    else:
                        self.glcm[:, a] = counts[:, 1:, 1:]
                if gldm_same:
                    np.equal(fwd, lv, out=same)
                    dep += same
                    np.equal(bwd, lv, out=flag)
                    dep += flag
                elif "gldm" in want and not gldm_links:
                    for nb in (fwd, bwd):
                        near = np.abs(nb.astype(np.int64) - lvi) <= alpha
                        near &= nb > 0
                        dep += near
                if "ngtdm" in want:
                    nsum += fwd
                    nsum += bwd
                    np.greater(fwd, 0, out=flag)
                    ncnt += flag
                    np.greater(bwd, 0, out=flag)
                    ncnt += flag
            if in_unit:
                u = unit_pos[key]
                if not (gldm_same and in_all):
                    np.equal(fwd, lv, out=same)
                src = np.flatnonzero(same)
                # the next voxel in flat order is the next ROI voxel: its rank is one more
                dst = src + 1 if step == 1 else rank_of(index[src] + step)
                self.link_src.append(src)
                self.link_dst.append(dst)
                if "glrlm" in want:
                    if glcm_unit:  # this direction's GLCM diagonal counts the same-level pairs
                        pairs = self.glcm[:, all_pos[key]]
                        same_pairs = np.diagonal(pairs, axis1=1, axis2=2) / (2 if settings.symmetricalGLCM else 1)
                        pairs_unit[:, u] = pairs.any((1, 2))
                    else:
                        same_pairs = np.bincount(cl[src], minlength=self.n * g1).reshape(self.n, g1)[:, 1:]
                        pairs_unit[:, u] = np.logical_or.reduceat(fwd, lat.starts[:-1])
                    # every voxel starts a run unless its backward neighbour continues it
                    runs_total[:, u] = nvox - same_pairs
                    is_dst[dst] = True
                    starts = src[~is_dst[src]]  # continue forward but not backward: first voxel of a run >= 2
                    is_dst[dst] = False
                    self._follow(lat, starts, cl[starts], int(step), u, run_hists)

        if "gldm" in want:
            n_dep = 2 * n_all + 1
            if gldm_links:
                ends = np.concatenate(self.link_src + self.link_dst)
                dep = np.bincount(ends, minlength=n_vox) + 1
            code_dep = np.multiply(cl, n_dep + 1, out=wide)
            code_dep += dep  # dependence 1..n_dep
            hist = np.bincount(code_dep, minlength=self.n * g1 * (n_dep + 1))
            self.gldm = hist.reshape(self.n, g1, n_dep + 1)[:, 1:, 1:].astype(np.float64)
        if "ngtdm" in want:
            # |level - mean of the ROI neighbours|; a voxel without ROI neighbours adds 0 (its "mean" is itself)
            mean = wide.view(np.float64)
            np.copyto(mean, lv)
            np.divide(nsum, ncnt, out=mean, where=ncnt > 0)
            mean -= lvi
            np.abs(mean, out=mean)
            s = np.bincount(cl, weights=mean, minlength=self.n * g1).reshape(self.n, g1)[:, 1:]
            self.ngtdm_s = s
        if "glrlm" in want:
            self._finish_runs(lat, run_hists, runs_total, pairs_unit, g1)
        if "glszm" in want:
            self._zones(lat, lvi)

    # -- GLRLM
    def _follow(self, lat: VoxelLattice, first: np.ndarray, code: np.ndarray, step: int, u: int,
                run_hists: list) -> None:
        """Runs along ``step`` starting at ROI voxels ``first`` (all >= 2 voxels long, (crop, level) codes
        ``code``): per run length, the (crop, level) histogram of the runs of that length."""
        level = lat.levels[first]
        ahead = lat.shifted(step)
        pos = lat.index[first] + step  # second voxel of each run
        length = 2
        n_codes = self.n * (self.g + 1)
        while pos.size:
            keep = ahead[pos] == level
            n_keep = int(np.count_nonzero(keep))
            if n_keep < pos.size:
                run_hists.append((u, length, np.bincount(code[~keep], minlength=n_codes)))
                pos, level, code = pos[keep], level[keep], code[keep]
            pos += step
            length += 1

    def _finish_runs(self, lat: VoxelLattice, run_hists: list, runs_total: np.ndarray, pairs_unit: np.ndarray,
                     g1: int) -> None:
        n_unit = len(self.offs_unit)
        g = self.g
        r_max = max((n for _, n, _ in run_hists), default=1)
        mat = np.zeros((self.n, n_unit, g, r_max))
        for u, length, hist in run_hists:
            mat[:, u, :, length - 1] = hist.reshape(self.n, g1)[:, 1:]
        mat[..., 0] = runs_total - mat.sum(-1)  # the remaining runs have length 1
        # pyradiomics drops a direction in which no line holds two ROI voxels (the ROI is flat across it)
        for k, a in zip(*np.nonzero(~pairs_unit), strict=True):
            if not _line_has_two(lat.coords(int(k)), self.offs_unit[a]):
                mat[k, a] = 0
        self.glrlm = mat

    # -- GLSZM
    def _zones(self, lat: VoxelLattice, lvi: np.ndarray) -> None:
        """26-connected (8 in 2D) same-level zones of every crop: their crop, level and size.

        The zones are the connected components of the same-level links; scipy's compiled graph traversal
        finds them in one pass over the links (faster than our vectorised union-find, `_components`, which
        remains the fallback). Crop and level are constant within a zone, so any member gives them.
        """
        n_vox = lvi.size
        dtype = np.int32 if n_vox < 2**31 else np.int64
        src = np.concatenate(self.link_src).astype(dtype) if self.link_src else np.zeros(0, dtype)
        dst = np.concatenate(self.link_dst).astype(dtype) if self.link_dst else np.zeros(0, dtype)
        try:
            from scipy.sparse import csr_matrix
            from scipy.sparse.csgraph import connected_components
        except ImportError:  # pragma: no cover - scipy is a dependency
            parent = _components(np.arange(n_vox, dtype=dtype), src, dst)
            label = np.unique(parent, return_inverse=True)[1]
        else:
            graph = csr_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n_vox, n_vox))
            label = connected_components(graph, directed=True, connection="weak")[1]
        n_zones = int(label.max()) + 1 if n_vox else 0
        zone_crop = np.empty(n_zones, dtype=lat.crop.dtype)
        zone_crop[label] = lat.crop
        zone_level = np.empty(n_zones, dtype=lvi.dtype)
        zone_level[label] = lvi
        sizes = np.bincount(label, minlength=n_zones)
        if np.any(zone_crop[1:] < zone_crop[:-1]):  # keep zones crop-major whatever the labelling order
            order = np.argsort(zone_crop, kind="stable")
            zone_crop, zone_level, sizes = zone_crop[order], zone_level[order], sizes[order]
        self.zone_crop = zone_crop
        self.zone_level = zone_level
        self.zone_size = sizes
        self.zone_starts = np.searchsorted(self.zone_crop, np.arange(self.n + 1))
        self.n_voxels = np.diff(lat.starts).astype(np.float64)


def _line_has_two(coords: np.ndarray, offset: np.ndarray) -> bool:
    """True when some line along ``offset`` (unit steps) holds >= 2 of the voxels at ``coords``."""
    moving = np.flatnonzero(offset)
    if len(coords) < 2:
        return False
    t = coords[:, moving[0]] * offset[moving[0]]
    origin = coords - t[:, None] * offset[None, :]
    return len(np.unique(origin, axis=0)) < len(coords)


# ---------------------------------------------------------------------------------------------- features
def _glcm_features(P: np.ndarray, present: np.ndarray, ng: np.ndarray, symmetric: bool) -> dict[str, np.ndarray]:
    """GLCM features per matrix of ``P`` (N, A, G, G), averaged over the angles that have pairs."""
    n, a, g, _ = P.shape
    m = n * a
    p = P.reshape(m, g, g)
    sums = p.sum((1, 2))
    valid = sums > 0
    p /= np.where(valid, sums, 1)[:, None, None]
    ivec = np.arange(1, g + 1, dtype=np.float64)
    px = p.sum(2)
    py = px if symmetric else p.sum(1)
    ux = px @ ivec
    uy = ux if symmetric else py @ ivec
    pj = p @ ivec  # sum_j p(i, j) j
    ngm = np.repeat(ng.astype(np.float64), a)

    # p_{x+y}(k), k = 2..2G and p_{x-y}(k), k = 0..G-1: one matrix product with a 0/1 "which k" table
    ii, jj = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    table = np.zeros((g * g, 3 * g - 1))
    table[np.arange(g * g), (ii + jj).ravel()] = 1
    table[np.arange(g * g), 2 * g - 1 + np.abs(ii - jj).ravel()] = 1
    pf = p.reshape(m, g * g)
    marginals = pf @ table
    psum, pdiff = marginals[:, : 2 * g - 1], marginals[:, 2 * g - 1:]
    kv_sum = np.arange(2, 2 * g + 1, dtype=np.float64)
    kv_diff = np.arange(g, dtype=np.float64)

    f: dict[str, np.ndarray] = {}
    f["Autocorrelation"] = pj @ ivec
    f["JointAverage"] = ux
    centred = kv_sum[None, :] - (ux + uy)[:, None]
    c2 = centred * centred
    f["ClusterProminence"] = (psum * c2 * c2).sum(1)
    f["ClusterShade"] = (psum * c2 * centred).sum(1)
    f["ClusterTendency"] = (psum * c2).sum(1)
    f["Contrast"] = pdiff @ kv_diff**2
    dx = ivec[None, :] - ux[:, None]
    dy = ivec[None, :] - uy[:, None]
    varx = (px * dx * dx).sum(1)
    sig = np.sqrt(varx) * (np.sqrt(varx) if symmetric else np.sqrt((py * dy * dy).sum(1)))
    corm = (dx * (pj - uy[:, None] * px)).sum(1)
    f["Correlation"] = np.where(sig == 0, 1.0, corm / (sig + EPS))
    da = pdiff @ kv_diff
    f["DifferenceAverage"] = da
    f["DifferenceEntropy"] = -(pdiff * np.log2(pdiff + EPS)).sum(1)
    f["DifferenceVariance"] = (pdiff * (kv_diff[None, :] - da[:, None]) ** 2).sum(1)
    f["JointEnergy"] = np.einsum("ij,ij->i", pf, pf)
    work = np.add(p, EPS)  # two (M, G, G) scratch arrays, reused for every elementwise log / root below
    np.log2(work, out=work)
    hxy = -np.einsum("mij,mij->m", p, work)
    f["JointEntropy"] = hxy
    hx = -(px * np.log2(px + EPS)).sum(1)
    hy = hx if symmetric else -(py * np.log2(py + EPS)).sum(1)
    outer = np.multiply(px[:, :, None], py[:, None, :], out=work)
    log_outer = np.add(outer, EPS)
    np.log2(log_outer, out=log_outer)
    hxy1 = -np.einsum("mij,mij->m", p, log_outer)
    hxy2 = -np.einsum("mij,mij->m", outer, log_outer)
    f["Imc1"] = _safe_div(hxy - hxy1, np.fmax(hx, hy), 0.0)
    with np.errstate(invalid="ignore"):
        imc2 = np.sqrt(1 - np.exp(-2 * (hxy2 - hxy)))  # NaN when rounding makes HXY > HXY2, as pyradiomics
    f["Imc2"] = np.where(hxy2 == hxy, 0.0, imc2)
    f["Idm"] = pdiff @ (1 / (1 + kv_diff**2))
    b = np.add(outer, EPS, out=log_outer)
    np.sqrt(b, out=b)
    np.divide(p, b, out=b)  # B = D_x^-1/2 P D_y^-1/2
    f["MCC"] = _mcc(b, present, a, symmetric)
    f["Idmn"] = (pdiff / (1 + kv_diff[None, :] ** 2 / ngm[:, None] ** 2)).sum(1)
    f["Id"] = pdiff @ (1 / (1 + kv_diff))
    f["Idn"] = (pdiff / (1 + kv_diff[None, :] / ngm[:, None])).sum(1)
    f["InverseVariance"] = pdiff[:, 1:] @ (1 / kv_diff[1:] ** 2)
    f["MaximumProbability"] = pf.max(1)
    f["SumEntropy"] = -(psum * np.log2(psum + EPS)).sum(1)
    f["SumSquares"] = varx
    f["SumAverage"] = psum @ kv_sum
    return {k: _nanmean(np.where(valid, v, np.nan).reshape(n, a), 1) for k, v in f.items()}


def _mcc(b: np.ndarray, present: np.ndarray, n_angles: int, symmetric: bool) -> np.ndarray:
    """Maximal correlation coefficient: sqrt of the second largest eigenvalue of Q = D_x^-1 P D_y^-1 P^T.

    Q is similar to S = B B^T with B = D_x^-1/2 P D_y^-1/2 (``b``, (N * A, G, G)); a symmetric solver finds its
    eigenvalues several times faster than a general one, and for a symmetric GLCM S = B^2, so the eigenvalues
    of B itself suffice. Each crop's matrices are cut down to its present gray levels (the absent ones only add
    zero eigenvalues), grouped by size. An ROI with fewer than two gray levels gets 1, as in pyradiomics.
    """
    out = np.ones(b.shape[0])
    n_present = present.sum(1)
    angle = np.arange(n_angles)
    for size in np.unique(n_present):
        if size < 2:
            continue
        crops = np.flatnonzero(n_present == size)
        levels = np.nonzero(present[crops])[1].reshape(len(crops), size)
        rows = (crops[:, None] * n_angles + angle[None, :]).ravel()
        lv = np.repeat(levels, n_angles, axis=0)
        sub = b[rows[:, None, None], lv[:, :, None], lv[:, None, :]]
        if symmetric:
            ev = np.sort(np.linalg.eigvalsh(sub) ** 2, axis=1)
        else:
            ev = np.linalg.eigvalsh(sub @ sub.transpose(0, 2, 1))
        out[rows] = np.sqrt(np.clip(ev[:, -2], 0, None))
    return out


def _matrix_features(P: np.ndarray, n_norm: np.ndarray, names: dict[str, str]) -> dict[str, np.ndarray]:
    """Run-length / dependence features of count matrices P (..., G, J), rows = gray level, cols = length."""
    g, jn = P.shape[-2:]
    nr = P.sum((-2, -1))
    nr_safe = np.where(nr > 0, nr, np.nan)
    ivec = np.arange(1, g + 1, dtype=np.float64)
    jvec = np.arange(1, jn + 1, dtype=np.float64)
    pr = P.sum(-2)  # (..., J)
    pg = P.sum(-1)  # (..., G)
    i2, j2 = ivec**2, jvec**2
    pj = P @ np.stack([1 / j2, j2], axis=1)  # (..., G, 2): sums over lengths weighted by 1/j^2 and j^2
    f: dict[str, np.ndarray] = {}
    f["SE"] = (pr / j2).sum(-1) / nr_safe
    f["LE"] = (pr * j2).sum(-1) / nr_safe
    f["GLN"] = (pg**2).sum(-1) / nr_safe
    f["GLNN"] = (pg**2).sum(-1) / nr_safe**2
    f["SN"] = (pr**2).sum(-1) / nr_safe
    f["SNN"] = (pr**2).sum(-1) / nr_safe**2
    f["P"] = nr_safe / n_norm
    pgn = pg / nr_safe[..., None]
    mu_i = (pgn * ivec).sum(-1)
    f["GLV"] = (pgn * (ivec - mu_i[..., None]) ** 2).sum(-1)
    prn = pr / nr_safe[..., None]
    mu_j = (prn * jvec).sum(-1)
    f["SV"] = (prn * (jvec - mu_j[..., None]) ** 2).sum(-1)
    pn = P / nr_safe[..., None, None]
    f["E"] = -(pn * np.log2(pn + EPS)).sum((-2, -1))
    f["LGLE"] = (pg / i2).sum(-1) / nr_safe
    f["HGLE"] = (pg * i2).sum(-1) / nr_safe
    f["SLGLE"] = (pj[..., 0] / i2).sum(-1) / nr_safe
    f["SHGLE"] = (pj[..., 0] * i2).sum(-1) / nr_safe
    f["LLGLE"] = (pj[..., 1] / i2).sum(-1) / nr_safe
    f["LHGLE"] = (pj[..., 1] * i2).sum(-1) / nr_safe
    return {name: f[key] for key, name in names.items()}


def _glrlm_features(R: np.ndarray) -> dict[str, np.ndarray]:
    """GLRLM features of R (N, A, G, Rmax), averaged over the directions that have runs."""
    rlen = np.arange(1, R.shape[-1] + 1, dtype=np.float64)
    n_p = R.sum(-2) @ rlen  # voxels counted in each direction (RunPercentage denominator)
    per_angle = _matrix_features(R, np.where(n_p > 0, n_p, np.nan), GLRLM_NAMES)
    return {k: _nanmean(v, 1) for k, v in per_angle.items()}


def _glszm_features(m: _Matrices) -> dict[str, np.ndarray]:
    """GLSZM features straight from the zone list (crop, level, size): sums over zones are segment sums."""
    zs = m.zone_starts[:-1]
    size = m.zone_size.astype(np.float64)
    level = m.zone_level.astype(np.float64)
    nz = np.diff(m.zone_starts).astype(np.float64)

    def zsum(w: np.ndarray) -> np.ndarray:
        return np.add.reduceat(w, zs)

    s2, i2 = size**2, level**2
    f: dict[str, np.ndarray] = {}
    f["SE"] = zsum(1 / s2) / nz
    f["LE"] = zsum(s2) / nz
    g = m.g
    pg = np.bincount(m.zone_crop * g + (m.zone_level - 1), minlength=m.n * g).reshape(m.n, g).astype(np.float64)
    f["GLN"] = (pg**2).sum(1) / nz
    f["GLNN"] = (pg**2).sum(1) / nz**2
    crop_s, count_s = _pair_counts(m.zone_crop, m.zone_size, m.n)
    sq_s = np.bincount(crop_s, weights=count_s**2, minlength=m.n)
    f["SN"] = sq_s / nz
    f["SNN"] = sq_s / nz**2
    f["P"] = nz / m.n_voxels
    mu_i = zsum(level) / nz
    f["GLV"] = zsum((level - np.repeat(mu_i, np.diff(m.zone_starts))) ** 2) / nz
    mu_s = zsum(size) / nz
    f["SV"] = zsum((size - np.repeat(mu_s, np.diff(m.zone_starts))) ** 2) / nz
    crop_gs, count_gs = _pair_counts(m.zone_crop * g + (m.zone_level - 1), m.zone_size, m.n * g)
    pz = count_gs / nz[crop_gs // g]
    f["E"] = -np.bincount(crop_gs // g, weights=pz * np.log2(pz + EPS), minlength=m.n)
    f["LGLE"] = zsum(1 / i2) / nz
    f["HGLE"] = zsum(i2) / nz
    f["SLGLE"] = zsum(1 / (i2 * s2)) / nz
    f["SHGLE"] = zsum(i2 / s2) / nz
    f["LLGLE"] = zsum(s2 / i2) / nz
    f["LHGLE"] = zsum(i2 * s2) / nz
    return {name: f[key] for key, name in GLSZM_NAMES.items()}


def _ngtdm_features(n_i: np.ndarray, s_i: np.ndarray, present: np.ndarray) -> dict[str, np.ndarray]:
    """NGTDM features of n_i, s_i (N, G); absent gray levels are left out of every pairwise sum."""
    g = n_i.shape[1]
    ivec = np.arange(1, g + 1, dtype=np.float64)
    nvp = n_i.sum(1)
    p = n_i / nvp[:, None]
    ngp = present.sum(1).astype(np.float64)
    both = present[:, :, None] & present[:, None, :]
    ps = p * s_i
    sum_ps = ps.sum(1)
    sum_s = s_i.sum(1)
    di = ivec[:, None] - ivec[None, :]
    f: dict[str, np.ndarray] = {}
    f["Coarseness"] = np.where(sum_ps == 0, 1e6, 1 / np.where(sum_ps == 0, 1, sum_ps))
    pp = p[:, :, None] * p[:, None, :]
    div = ngp * (ngp - 1)
    contrast = (pp * di**2).sum((1, 2)) * sum_s / nvp
    f["Contrast"] = _safe_div(contrast, div, 0.0)
    ip = ivec * p
    absdiff = np.where(both, np.abs(ip[:, :, None] - ip[:, None, :]), 0).sum((1, 2))
    f["Busyness"] = _safe_div(sum_ps, absdiff, 0.0)
    psum = p[:, :, None] + p[:, None, :]
    num = np.where(both, ps[:, :, None] + ps[:, None, :], 0)
    f["Complexity"] = (np.abs(di) * num / np.where(psum == 0, 1, psum)).sum((1, 2)) / nvp
    strength = np.where(both, psum * di**2, 0).sum((1, 2))
    f["Strength"] = _safe_div(strength, sum_s, 0.0)
    return f


def texture_batch(lat: VoxelLattice, settings: RadiomicsSettings, classes: Iterable[str],
                  spacing_xyz: tuple[float, float, float]) -> dict[str, dict[str, np.ndarray]]:
    """Features of every requested texture class, each an (N,) array over the crops of ``lat``."""
    want = [c for c in classes if c in CLASSES]
    if not want:
        return {}
    m = _Matrices(lat, settings, want)
    spacing_zyx = np.asarray(spacing_xyz, dtype=np.float64)[::-1]
    norm = settings.weightingNorm
    ng = m.g - np.argmax(m.present[:, ::-1], axis=1)  # largest gray level present in each crop
    out: dict[str, dict[str, np.ndarray]] = {}
    if "glcm" in want:
        P = m.glcm
        if norm is not None:
            w = _angle_weights(m.offs_all, norm, spacing_zyx, glcm=True)
            P = np.einsum("nagh,a->ngh", P, w)[:, None]
        out["glcm"] = _glcm_features(P, m.present, ng, settings.symmetricalGLCM)
    if "glrlm" in want:
        R = m.glrlm
        if norm is not None:
            w = _angle_weights(m.offs_unit, norm, spacing_zyx, glcm=False)
            R = np.einsum("nagr,a->ngr", R, w)[:, None]
        out["glrlm"] = _glrlm_features(R)
    if "glszm" in want:
        out["glszm"] = _glszm_features(m)
    if "gldm" in want:
        out["gldm"] = _matrix_features(m.gldm, np.diff(lat.starts).astype(np.float64), GLDM_NAMES)
    if "ngtdm" in want:
        out["ngtdm"] = _ngtdm_features(m.nvox, m.ngtdm_s, m.present)
    return out
