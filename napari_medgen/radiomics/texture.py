"""Texture matrices (GLCM, GLRLM, GLSZM, GLDM, NGTDM) and their features for many crops at once.

Everything runs on a `VoxelLattice` (ROI voxels of N crops in one zero-padded flat array). The counts come
from the compiled loops of `kernels`, one pass over the ROI voxels for all crops together:

- GLCM, GLDM, NGTDM and GLRLM from `kernels.neighbour_counts` (the runs of length 1 follow by subtraction).
  As in pyradiomics, a GLRLM direction in which no line holds two ROI voxels (e.g. across a one-slice ROI) is
  dropped for that crop.
- GLSZM: 26-connected (8 in 2D) same-level zones from `kernels.zones` (flood fill); the features are sums
  over the zone list.

Feature formulas are applied to the batched matrices (N, angles, Ng, Ng) and friends. Gray levels absent
from a crop simply have empty rows/columns; the formulas where pyradiomics' deletion of those rows matters
(NGTDM pairwise sums, MCC) mask them explicitly. Per-angle features are averaged with ``nanmean`` over the
angles that have data, as pyradiomics does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np

from napari_medgen.radiomics import kernels
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
    """Raw texture counts of a lattice: one compiled pass over the ROI voxels per kind of count
    (`kernels`), then cut to gray levels 1..G and shaped as the feature formulas expect."""

    def __init__(self, lat: VoxelLattice, settings: RadiomicsSettings, classes: list[str]) -> None:
        self.n = lat.n_crops
        g = lat.n_levels
        self.g = g
        g1 = g + 1
        nvox = np.bincount(lat.crop * g1 + lat.levels, minlength=self.n * g1).reshape(self.n, g1)[:, 1:]
        self.nvox = nvox.astype(np.float64)
        self.present = nvox > 0
        self.n_voxels = np.diff(lat.starts).astype(np.float64)

        self.offs_all = angles(settings.distances, settings.force2D, settings.force2Ddimension)
        self.offs_unit = angles((1,), settings.force2D, settings.force2Ddimension)
        want = set(classes)
        use_all = bool(want & {"glcm", "gldm", "ngtdm"})
        use_unit = bool(want & {"glrlm"})
        all_pos = {tuple(o): a for a, o in enumerate(self.offs_all)} if use_all else {}
        unit_pos = {tuple(o): u for u, o in enumerate(self.offs_unit)} if use_unit else {}
        keys = list(all_pos) + [k for k in unit_pos if k not in all_pos]
        if keys:
            steps = lat.steps(np.array(keys, dtype=np.int64).reshape(-1, 3))
            cooc = np.array([all_pos.get(k, -1) for k in keys], dtype=np.int64)
            unit = np.array([unit_pos.get(k, -1) for k in keys], dtype=np.int64)
            glcm, gldm, s_i, runs, pairs = kernels.neighbour_counts(
                lat.store, lat.margin, lat.index, lat.levels, lat.crop, steps, cooc, unit, self.n, g1,
                int(settings.gldm_a), max(lat.shape[1:]), "glcm" in want, "gldm" in want, "ngtdm" in want,
                "glrlm" in want)
        if "glcm" in want:
            counts = glcm[:, :, 1:, 1:].astype(np.float64)
            self.glcm = counts + counts.transpose(0, 1, 3, 2) if settings.symmetricalGLCM else counts
        if "gldm" in want:
            self.gldm = gldm[:, 1:, 1:].astype(np.float64)
        if "ngtdm" in want:
            self.ngtdm_s = s_i[:, 1:]
        if "glrlm" in want:
            longest = int(np.flatnonzero(runs.any((0, 1, 2)))[-1]) if runs.any() else 1
            mat = runs[:, :, 1:, 1:longest + 1].astype(np.float64)
            # runs of length 1: the voxels of each level not in a longer run
            mat[..., 0] = nvox[:, None, :] - mat @ np.arange(1, longest + 1, dtype=np.float64)
            # pyradiomics drops a direction in which no line holds two ROI voxels (the ROI is flat across it)
            for k, a in zip(*np.nonzero(pairs == 0), strict=True):
                if not _line_has_two(lat.coords(int(k)), self.offs_unit[a]):
                    mat[k, a] = 0
            self.glrlm = mat
        if "glszm" in want:
            unit_steps = lat.steps(self.offs_unit)
            both = np.concatenate([unit_steps, -unit_steps])
            self.zone_crop, self.zone_level, self.zone_size = kernels.zones(
                lat.store, lat.margin, lat.index, lat.crop, both)
            self.zone_starts = np.searchsorted(self.zone_crop, np.arange(self.n + 1))


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
    """GLCM features per matrix of ``P`` (N, A, G, G) (compiled, `kernels.glcm_features`), averaged over the
    angles that have pairs."""
    n, a, g, _ = P.shape
    values, b = kernels.glcm_features(np.ascontiguousarray(P).reshape(n * a, g, g),
                                      np.repeat(ng.astype(np.float64), a), symmetric, EPS)
    f = {name: values[:, k] for k, name in enumerate(kernels.GLCM_KERNEL_FEATURES)}
    valid = ~np.isnan(f["JointAverage"])
    f["MCC"] = np.where(valid, _mcc(b, present, a, symmetric), np.nan)
    return {k: _nanmean(f[k].reshape(n, a), 1) for k in GLCM_FEATURES}


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
