"""Texture matrices (GLCM, GLRLM, GLSZM, GLDM, NGTDM) and their features, pyradiomics definitions.

Gray levels are the discretised values 1..Ng (0 = outside the ROI). Matrices are built with flat-index
neighbour lookups and ``np.bincount``; GLRLM run lengths use pointer jumping, GLSZM zones use
``scipy.ndimage.label`` per gray level. GLCM and GLRLM features are computed per angle and averaged
(or computed once on the summed matrix when ``weightingNorm`` is set), as pyradiomics does.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from napari_medgen.radiomics.neighbours import angles, flat_offsets
from napari_medgen.radiomics.settings import RadiomicsSettings

EPS = np.spacing(1)
CLASSES = ("glcm", "glrlm", "glszm", "gldm", "ngtdm")


# ---------------------------------------------------------------------------------------------- matrices
class _Grid:
    """Padded flat gray levels, ROI voxel indices and the angle offsets of one ROI."""

    def __init__(self, levels: np.ndarray, mask: np.ndarray, settings: RadiomicsSettings) -> None:
        self.offsets = angles(settings.distances, settings.force2D, settings.force2Ddimension)
        pad = int(np.abs(self.offsets).max())
        lv = np.where(mask, levels, 0).astype(np.int64)
        padded = np.pad(lv, pad)
        self.shape = padded.shape
        self.flat = padded.ravel()
        self.idx = np.flatnonzero(self.flat)
        self.steps = flat_offsets(self.offsets, self.shape)
        self.values = self.flat[self.idx]
        self.gray = np.unique(self.values)
        self.ng = int(self.gray.max())
        self.np_ = int(self.idx.size)


def glcm_matrices(grid: _Grid, symmetric: bool = True) -> np.ndarray:
    """Co-occurrence counts per angle, shape (A, Ng, Ng) indexed by gray level - 1."""
    ng = grid.ng
    mats = np.empty((len(grid.steps), ng, ng), dtype=np.float64)
    for a, step in enumerate(grid.steps):
        nb = grid.flat[grid.idx + step]
        ok = nb > 0
        codes = (grid.values[ok] - 1) * ng + (nb[ok] - 1)
        m = np.bincount(codes, minlength=ng * ng).reshape(ng, ng).astype(np.float64)
        mats[a] = m + m.T if symmetric else m
    return mats


def glrlm_matrices(grid: _Grid) -> np.ndarray:
    """Run-length counts per angle, shape (A, Ng, Rmax) indexed by (gray level - 1, run length - 1)."""
    n = grid.flat.size
    mats = []
    rmax = 1
    for step in grid.steps:
        nxt_val = grid.flat[grid.idx + step]
        prev_val = grid.flat[grid.idx - step]
        same_next = nxt_val == grid.values
        starts = prev_val != grid.values
        # pointer jumping over the "same level as next voxel" chain to get each voxel's remaining run length
        jump = np.full(n, -1, dtype=np.int64)
        cnt = np.zeros(n, dtype=np.int64)
        jump[grid.idx] = np.where(same_next, grid.idx + step, grid.idx)
        cnt[grid.idx] = same_next
        active = grid.idx[same_next]
        while active.size:
            j = jump[active]
            cnt[active] += cnt[j]
            jump[active] = jump[j]
            active = active[jump[active] != jump[jump[active]]]
        lengths = cnt[grid.idx[starts]] + 1
        lv = grid.values[starts]
        mats.append((lv, lengths))
        rmax = max(rmax, int(lengths.max()))
    out = np.zeros((len(mats), grid.ng, rmax), dtype=np.float64)
    for a, (lv, lengths) in enumerate(mats):
        np.add.at(out[a], (lv - 1, lengths - 1), 1.0)
    return out


def glszm_matrix(levels: np.ndarray, mask: np.ndarray, settings: RadiomicsSettings) -> np.ndarray:
    """Zone-size counts, shape (Ng, Smax): connected (26- or in-plane 8-connected) same-level zones."""
    from scipy import ndimage

    lv = np.where(mask, levels, 0)
    structure = np.ones((3, 3, 3), dtype=bool)
    if settings.force2D:
        structure[:] = False
        sl = [slice(None)] * 3
        sl[settings.force2Ddimension] = 1
        structure[tuple(sl)] = True
    gray = np.unique(lv[mask])
    ng = int(gray.max())
    zones_lv = []
    zones_size = []
    for g in gray:
        lab, nz = ndimage.label(lv == g, structure=structure)
        sizes = np.bincount(lab.ravel())[1:]
        zones_lv.append(np.full(nz, g))
        zones_size.append(sizes)
    zl = np.concatenate(zones_lv)
    zs = np.concatenate(zones_size)
    out = np.zeros((ng, int(zs.max())), dtype=np.float64)
    np.add.at(out, (zl - 1, zs - 1), 1.0)
    return out


def _neighbour_steps(grid: _Grid) -> np.ndarray:
    return np.concatenate([grid.steps, -grid.steps])


def gldm_matrix(grid: _Grid, alpha: float) -> np.ndarray:
    """Dependence counts, shape (Ng, Dmax): neighbours within ``alpha`` gray levels, plus the voxel itself."""
    dep = np.ones(grid.idx.size, dtype=np.int64)
    for step in _neighbour_steps(grid):
        nb = grid.flat[grid.idx + step]
        dep += (nb > 0) & (np.abs(nb - grid.values) <= alpha)
    out = np.zeros((grid.ng, int(dep.max())), dtype=np.float64)
    np.add.at(out, (grid.values - 1, dep - 1), 1.0)
    return out


def ngtdm_matrix(grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Per gray level (index = level - 1): n_i (ROI voxels) and s_i (sum |i - mean of ROI neighbours|).

    A voxel without any ROI neighbour counts in n_i but adds nothing to s_i.
    """
    total = np.zeros(grid.idx.size, dtype=np.float64)
    count = np.zeros(grid.idx.size, dtype=np.int64)
    for step in _neighbour_steps(grid):
        nb = grid.flat[grid.idx + step]
        ok = nb > 0
        total += np.where(ok, nb, 0)
        count += ok
    valid = count > 0
    diff = np.abs(grid.values[valid] - total[valid] / count[valid])
    n = np.bincount(grid.values - 1, minlength=grid.ng).astype(np.float64)
    s = np.bincount(grid.values[valid] - 1, weights=diff, minlength=grid.ng)
    return n, s


# ---------------------------------------------------------------------------------------------- features
def _glcm_features(P: np.ndarray, gray: np.ndarray, ng: int) -> dict[str, np.ndarray]:
    """GLCM features for a stack of matrices P (A, G, G) restricted to present gray levels ``gray``."""
    sums = P.sum(axis=(1, 2), keepdims=True)
    p = P / sums
    i = gray[:, None].astype(np.float64)
    j = gray[None, :].astype(np.float64)
    px = p.sum(2)  # (A, G)
    py = p.sum(1)
    ux = (px * gray).sum(1)
    uy = (py * gray).sum(1)
    sigx = np.sqrt((px * (gray[None, :] - ux[:, None]) ** 2).sum(1))
    sigy = np.sqrt((py * (gray[None, :] - uy[:, None]) ** 2).sum(1))
    ksum_idx = (i + j).astype(np.int64)
    kdiff_idx = np.abs(i - j).astype(np.int64)
    A = p.shape[0]
    pxpy_sum = np.zeros((A, 2 * ng + 1))
    pxpy_diff = np.zeros((A, ng))
    for a in range(A):
        pxpy_sum[a] = np.bincount(ksum_idx.ravel(), weights=p[a].ravel(), minlength=2 * ng + 1)
        pxpy_diff[a] = np.bincount(kdiff_idx.ravel(), weights=p[a].ravel(), minlength=ng)
    ksum = np.arange(2 * ng + 1, dtype=np.float64)
    kdiff = np.arange(ng, dtype=np.float64)
    f: dict[str, np.ndarray] = {}
    f["Autocorrelation"] = (p * i * j).sum((1, 2))
    f["JointAverage"] = ux
    uxe, uye = ux[:, None, None], uy[:, None, None]
    centred = i + j - uxe - uye
    f["ClusterProminence"] = (p * centred**4).sum((1, 2))
    f["ClusterShade"] = (p * centred**3).sum((1, 2))
    f["ClusterTendency"] = (p * centred**2).sum((1, 2))
    f["Contrast"] = (p * (i - j) ** 2).sum((1, 2))
    corm = (p * (i - uxe) * (j - uye)).sum((1, 2))
    denom = sigx * sigy
    with np.errstate(divide="ignore", invalid="ignore"):
        f["Correlation"] = np.where(denom == 0, 1.0, corm / np.where(denom == 0, 1, denom))
    da = (pxpy_diff * kdiff).sum(1)
    f["DifferenceAverage"] = da
    f["DifferenceEntropy"] = -(pxpy_diff * np.log2(pxpy_diff + EPS)).sum(1)
    f["DifferenceVariance"] = (pxpy_diff * (kdiff[None, :] - da[:, None]) ** 2).sum(1)
    f["JointEnergy"] = (p**2).sum((1, 2))
    hxy = -(p * np.log2(p + EPS)).sum((1, 2))
    f["JointEntropy"] = hxy
    hx = -(px * np.log2(px + EPS)).sum(1)
    hy = -(py * np.log2(py + EPS)).sum(1)
    pxy = px[:, :, None] * py[:, None, :]
    hxy1 = -(p * np.log2(pxy + EPS)).sum((1, 2))
    hxy2 = -(pxy * np.log2(pxy + EPS)).sum((1, 2))
    hmax = np.maximum(hx, hy)
    with np.errstate(divide="ignore", invalid="ignore"):
        f["Imc1"] = np.where(hmax == 0, 0.0, (hxy - hxy1) / np.where(hmax == 0, 1, hmax))
    imc2 = np.sqrt(np.clip(1 - np.exp(-2 * (hxy2 - hxy)), 0, None))
    f["Imc2"] = np.where(hxy > hxy2, 0.0, imc2)
    f["Idm"] = (pxpy_diff / (1 + kdiff**2)).sum(1)
    f["Idmn"] = (pxpy_diff / (1 + kdiff**2 / ng**2)).sum(1)
    f["Id"] = (pxpy_diff / (1 + kdiff)).sum(1)
    f["Idn"] = (pxpy_diff / (1 + kdiff / ng)).sum(1)
    f["InverseVariance"] = (pxpy_diff[:, 1:] / kdiff[1:] ** 2).sum(1)
    f["MaximumProbability"] = p.max((1, 2))
    f["SumAverage"] = (pxpy_sum * ksum).sum(1)
    f["SumEntropy"] = -(pxpy_sum * np.log2(pxpy_sum + EPS)).sum(1)
    f["SumSquares"] = (p * (i - uxe) ** 2).sum((1, 2))
    f["MCC"] = _mcc(p, px, py)
    return f


def _mcc(p: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Maximal correlation coefficient: sqrt of the second largest eigenvalue of Q."""
    out = np.ones(p.shape[0])
    if p.shape[1] < 2:
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.einsum("aik,ajk->aij", p / (px[:, :, None] + EPS), p / (py[:, None, :] + EPS))
    q = np.nan_to_num(q)
    for a in range(p.shape[0]):
        ev = np.sort(np.linalg.eigvals(q[a]).real)
        out[a] = np.sqrt(ev[-2]) if ev[-2] > 0 else 0.0
    return out


def _emphasis(P: np.ndarray, gray: np.ndarray, names: dict[str, str], n_norm: float) -> dict[str, float]:
    """Shared run/zone/dependence features of a (G, J) count matrix with row gray levels ``gray``.

    ``names`` maps generic keys to the class-specific feature names; ``n_norm`` is Np for *Percentage.
    """
    nr = P.sum()
    i = gray[:, None].astype(np.float64)
    j = np.arange(1, P.shape[1] + 1, dtype=np.float64)[None, :]
    pr = P / nr
    rows = P.sum(1)
    cols = P.sum(0)
    f: dict[str, float] = {}
    f["SE"] = float((P / j**2).sum() / nr)
    f["LE"] = float((P * j**2).sum() / nr)
    f["GLN"] = float((rows**2).sum() / nr)
    f["GLNN"] = float((rows**2).sum() / nr**2)
    f["SN"] = float((cols**2).sum() / nr)
    f["SNN"] = float((cols**2).sum() / nr**2)
    f["P"] = float(nr / n_norm)
    mu_i = float((pr * i).sum())
    f["GLV"] = float((pr * (i - mu_i) ** 2).sum())
    mu_j = float((pr * j).sum())
    f["SV"] = float((pr * (j - mu_j) ** 2).sum())
    f["E"] = float(-(pr * np.log2(pr + EPS)).sum())
    f["LGLE"] = float((P / i**2).sum() / nr)
    f["HGLE"] = float((P * i**2).sum() / nr)
    f["SLGLE"] = float((P / (i**2 * j**2)).sum() / nr)
    f["SHGLE"] = float((P * i**2 / j**2).sum() / nr)
    f["LLGLE"] = float((P * j**2 / i**2).sum() / nr)
    f["LHGLE"] = float((P * i**2 * j**2).sum() / nr)
    return {name: f[key] for key, name in names.items()}


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


def _ngtdm_features(n: np.ndarray, s: np.ndarray) -> dict[str, float]:
    levels = np.arange(1, n.size + 1, dtype=np.float64)
    keep = n > 0
    n, s, i = n[keep], s[keep], levels[keep]
    nvp = n.sum()
    p = n / nvp
    ngp = int(keep.sum())
    ps = p * s
    sum_ps = float(ps.sum())
    sum_s = float(s.sum())
    f: dict[str, float] = {}
    f["Coarseness"] = 1e6 if sum_ps == 0 else float(1.0 / (EPS + sum_ps))
    di = i[:, None] - i[None, :]
    pp = p[:, None] * p[None, :]
    if ngp > 1:
        f["Contrast"] = float((pp * di**2).sum() / (ngp * (ngp - 1)) * sum_s / nvp)
    else:
        f["Contrast"] = 0.0
    ip = i * p
    busy_den = float(np.abs(ip[:, None] - ip[None, :]).sum())
    f["Busyness"] = 0.0 if busy_den == 0 else sum_ps / busy_den
    f["Complexity"] = float((np.abs(di) * (ps[:, None] + ps[None, :]) / (p[:, None] + p[None, :])).sum() / nvp)
    f["Strength"] = 0.0 if sum_s == 0 else float(((p[:, None] + p[None, :]) * di**2).sum() / (EPS + sum_s))
    return f


def _average_angles(per_angle: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.nanmean(v)) for k, v in per_angle.items()}


def texture_features(
    levels: np.ndarray, mask: np.ndarray, settings: RadiomicsSettings, classes: Iterable[str]
) -> dict[str, dict[str, float]]:
    """Features of every requested texture class for discretised ``levels`` inside ``mask``."""
    classes = list(classes)
    grid = _Grid(levels, mask, settings)
    gray = grid.gray
    out: dict[str, dict[str, float]] = {}
    weighted = settings.weightingNorm is not None
    if "glcm" in classes:
        P = glcm_matrices(grid, settings.symmetricalGLCM)
        P = P[:, gray - 1][:, :, gray - 1]
        if weighted:
            P = P.sum(0, keepdims=True)
        P = P[P.sum((1, 2)) > 0]
        if P.shape[0] == 0:
            out["glcm"] = {}
        else:
            out["glcm"] = _average_angles(_glcm_features(P, gray, grid.ng))
    if "glrlm" in classes:
        R = glrlm_matrices(grid)[:, gray - 1]
        n_norm = grid.np_
        if weighted:
            n_norm = grid.np_ * R.shape[0]
            R = R.sum(0, keepdims=True)
        per = [_emphasis(R[a], gray, GLRLM_NAMES, n_norm) for a in range(R.shape[0]) if R[a].sum() > 0]
        out["glrlm"] = {k: float(np.nanmean([d[k] for d in per])) for k in per[0]}
    if "glszm" in classes:
        Z = glszm_matrix(levels, mask, settings)[gray - 1]
        out["glszm"] = _emphasis(Z, gray, GLSZM_NAMES, grid.np_)
    if "gldm" in classes:
        D = gldm_matrix(grid, settings.gldm_a)[gray - 1]
        out["gldm"] = _emphasis(D, gray, GLDM_NAMES, grid.np_)
    if "ngtdm" in classes:
        n, s = ngtdm_matrix(grid)
        out["ngtdm"] = _ngtdm_features(n, s)
    return out
