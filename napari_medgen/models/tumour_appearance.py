"""Data-fitted appearance model of glioma sub-regions: paints a tumour that looks like one (issue 13).

Why this exists. Synthesis used to paint a saturated, uniform blob; a glioma in T1c has a dark necrotic core, a
bright, irregular enhancing rim and oedema that still shows the anatomy below. This module is a classical
statistical texture model of those sub-regions, fitted on real BraTS label maps, with no network:

* per label (1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing) the intensity quantile function, a depth profile
  (mean intensity against normalised depth from the region's boundary: the rim brighter than the centre), and the
  spatial autocorrelation of the detrended values, summarised by a two-scale Gaussian-field model;
* `paint` draws a Gaussian random field with that correlation, adds the depth profile and maps the sum through the
  region's quantile function (histogram matching, so first-order statistics match what was fitted); oedema mixes in
  the underlying anatomy before the mapping; boundaries get a partial-volume blend of ``blend_mm``.

Every intensity is in *brain-normalised* units, ``(I - low) / (high - low)`` with ``(low, high)`` the 0.5 / 99.5
percentiles of the healthy brain (`napari_medgen.models.inpainter.brain_range`), so a model fitted on z-scored
scans applies to raw-intensity scans. Stats are plain dicts of lists and floats (JSON-ready, string label keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.special import ndtr

from napari_medgen.core.inpainting import default_brain_mask
from napari_medgen.errors import InvalidInputError

#: BraTS labels the default model paints (3, non-enhancing, is fitted too when the data has it)
DEFAULT_LABELS: dict[int, str] = {1: "necrotic core", 2: "edema", 4: "enhancing tumour"}
#: every BraTS label this module knows a name for
LABEL_NAMES: dict[int, str] = {1: "necrotic core", 2: "edema", 3: "non-enhancing tumour", 4: "enhancing tumour"}
#: quantile levels of the stored intensity quantile function
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 33)
#: bins of the depth profile over normalised depth [0, 1] (0 = region boundary, 1 = deepest voxel)
PROFILE_BINS = 5
#: autocorrelation lags (voxels along each axis) measured for the correlation fit
MAX_LAG = 8
#: fine (nugget) scale of the field: sigma of the Gaussian smoothing of the white noise, mm
FINE_SIGMA_MM = 0.5
#: painting smoothness: the field's coarse scale is at least this (mm) and its fine (nugget) share is scaled by
#: `NUGGET_SCALE`. The fitted nugget holds the scans' voxel noise and partial volume; painted through a heavy-tailed
#: quantile map it turned into salt-and-pepper speckle that real tumours do not show (their variance is mostly smooth
#: structure), see docs/tumour_synthesis.md
MIN_FIELD_SIGMA_MM = 2.0
NUGGET_SCALE = 0.3
#: fraction of the oedema texture that is the underlying anatomy (before the quantile mapping)
EDEMA_ANATOMY_WEIGHT = 0.6
#: a region needs at least this many voxels to be measured
MIN_VOXELS = 20
STATS_VERSION = 1


# --------------------------------------------------------------------------- validation helpers


def _spacing(spacing_zyx: Sequence[float]) -> np.ndarray:
    sp = np.asarray(spacing_zyx, dtype=float).ravel()
    if sp.size != 3 or not np.all(np.isfinite(sp)) or sp.min() <= 0:
        raise InvalidInputError(f"spacing_zyx must be 3 positive numbers (mm, z y x); got {spacing_zyx!r}.")
    return sp


def _check_pair(image: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != 3:
        raise InvalidInputError(f"{what} must be a 3D (z, y, x) array; got shape {image.shape}.")
    if labels.shape != image.shape:
        raise InvalidInputError(f"labels {labels.shape} and {what} {image.shape} must have the same shape (same grid); "
                                "resample the label map onto the image first.")
    if labels.dtype.kind not in "biu":
        if labels.dtype.kind != "f" or not np.array_equal(labels, np.round(labels)):
            raise InvalidInputError("labels must hold integer labels (0 = background).")
        labels = labels.astype(np.int32)
    if labels.size and labels.min() < 0:
        raise InvalidInputError("labels must be >= 0 (0 = background).")
    if not np.any(labels > 0):
        raise InvalidInputError("labels has no labelled voxel (all 0); draw or load a tumour first.")
    image = image.astype(np.float32, copy=False)
    if not np.all(np.isfinite(image)):
        raise InvalidInputError(f"{what} holds NaN or infinite values; fill them first.")
    return image, labels


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _box(mask: np.ndarray, margin: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels per axis, clipped to the array."""
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


# --------------------------------------------------------------------------- fitting


def _depth(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Normalised depth in [0, 1] from the region's boundary (distance / the 99th percentile distance)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    inside = dist[mask]
    scale = float(np.percentile(inside, 99)) if inside.size else 1.0
    return np.clip(dist / max(scale, 1e-6), 0.0, 1.0).astype(np.float32)


def _profile(depth: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean of ``values`` minus their overall mean in each of `PROFILE_BINS` depth bins (empty bins: neighbours)."""
    edges = np.linspace(0.0, 1.0, PROFILE_BINS + 1)
    which = np.clip(np.digitize(depth, edges[1:-1]), 0, PROFILE_BINS - 1)
    sums = np.bincount(which, weights=values, minlength=PROFILE_BINS)
    counts = np.bincount(which, minlength=PROFILE_BINS)
    mean = float(values.mean())
    prof = np.full(PROFILE_BINS, np.nan)
    ok = counts > 0
    prof[ok] = sums[ok] / counts[ok] - mean
    centres = (edges[:-1] + edges[1:]) / 2
    return np.interp(centres, centres[ok], prof[ok])


def _profile_at(profile: Sequence[float], depth: np.ndarray) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, PROFILE_BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    return np.interp(depth, centres, np.asarray(profile, dtype=float)).astype(np.float32)


def _autocorr(resid: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Autocorrelation of ``resid`` (zero outside the mask) at lags 1..`MAX_LAG` voxels along each axis, over
    pairs of voxels both inside the mask; returns (axes, steps in voxels, correlations)."""
    var = float(np.mean(resid[mask] ** 2))
    axes, steps, corrs = [], [], []
    for step in range(1, MAX_LAG + 1):
        for axis in range(3):
            if mask.shape[axis] <= step:
                continue
            a = [slice(None)] * 3
            b = [slice(None)] * 3
            a[axis], b[axis] = slice(0, -step), slice(step, None)
            both = mask[tuple(a)] & mask[tuple(b)]
            n = int(both.sum())
            if n < MIN_VOXELS:
                continue
            axes.append(axis)
            steps.append(step)
            corrs.append(float(np.sum(resid[tuple(a)][both] * resid[tuple(b)][both]) / n / max(var, 1e-12)))
    return np.asarray(axes, dtype=int), np.asarray(steps, dtype=int), np.asarray(corrs)


def _kernel_corr(sigma_vox: float, steps: np.ndarray) -> np.ndarray:
    """Correlation at ``steps`` voxels of white noise smoothed by scipy's discrete Gaussian (truncate 4): what
    `_field` actually draws, so the fit is exact on coarse grids where the continuous formula is not."""
    radius = int(4.0 * sigma_vox + 0.5)
    x = np.arange(-radius, radius + 1, dtype=float)
    k = np.exp(-0.5 * (x / max(sigma_vox, 1e-6)) ** 2)
    full = np.correlate(k, k, mode="full")  # index 2 * radius is lag 0
    lag = 2 * radius + np.asarray(steps)
    out = np.zeros(lag.shape)
    ok = lag < full.size
    out[ok] = full[lag[ok]] / full[2 * radius]
    return out


def _model_corr(lag: np.ndarray, sigma_mm: float, nugget: float) -> np.ndarray:
    """Continuous correlation of the two-scale field ``sqrt(1-w) G(sigma) + sqrt(w) G(FINE_SIGMA_MM)`` at ``lag``
    mm (Gaussian-smoothed white noise with sigma s has correlation exp(-r^2 / (4 s^2))); for the 1/e length."""
    return ((1 - nugget) * np.exp(-lag ** 2 / (4 * sigma_mm ** 2))
            + nugget * np.exp(-lag ** 2 / (4 * FINE_SIGMA_MM ** 2)))


def _fit_field(axes: np.ndarray, steps: np.ndarray, corrs: np.ndarray, spacing: np.ndarray) -> tuple[float, float]:
    """(sigma_mm, nugget) of the two-scale field whose discrete correlation is closest (least squares) to the
    measured autocorrelation."""
    if steps.size == 0:
        return 1.0, 0.5
    fine = np.empty(steps.size)
    for axis in range(3):
        sel = axes == axis
        fine[sel] = _kernel_corr(FINE_SIGMA_MM / spacing[axis], steps[sel])
    best = (np.inf, 1.0, 0.5)
    nuggets = np.linspace(0.0, 1.0, 41)[:, None]
    for sigma in np.geomspace(0.5, 16.0, 48):
        coarse = np.empty(steps.size)
        for axis in range(3):
            sel = axes == axis
            coarse[sel] = _kernel_corr(sigma / spacing[axis], steps[sel])
        err = np.sum(((1 - nuggets) * coarse + nuggets * fine - corrs) ** 2, axis=1)
        i = int(np.argmin(err))
        if err[i] < best[0]:
            best = (float(err[i]), float(sigma), float(nuggets[i, 0]))
    return best[1], best[2]


def _region_stats(norm: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> dict[str, Any]:
    values = norm[mask].astype(np.float64)
    depth = _depth(mask, spacing)
    prof = _profile(depth[mask], values)
    resid_vals = values - values.mean() - _profile_at(prof, depth[mask])
    resid = np.zeros(mask.shape, dtype=np.float64)
    resid[mask] = resid_vals
    axes, steps, corrs = _autocorr(resid, mask)
    sigma, nugget = _fit_field(axes, steps, corrs, spacing)
    lags = steps * spacing[axes]
    # 1/e length of the fitted correlation (numerically, on a fine grid of lags)
    grid = np.linspace(0.0, 64.0, 6401)
    below = np.flatnonzero(_model_corr(grid, sigma, nugget) < np.exp(-1))
    corr_len = float(grid[below[0]]) if below.size else 64.0
    return {
        "voxels": int(mask.sum()),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "residual_std": float(resid_vals.std()),
        "quantile_levels": [float(q) for q in QUANTILE_LEVELS],
        "quantiles": [float(v) for v in np.quantile(values, QUANTILE_LEVELS)],
        "profile": [float(v) for v in prof],
        "corr_length_mm": corr_len,
        "field_sigma_mm": sigma,
        "nugget": nugget,
        "autocorr_lags_mm": [float(v) for v in lags],
        "autocorr": [float(v) for v in corrs],
    }


def fit_region_stats(norm: np.ndarray, labels: np.ndarray, spacing_zyx: Sequence[float]) -> dict[str, Any]:
    """Appearance statistics of each BraTS sub-region of one tumour (JSON-ready dict).

    ``norm`` is the image in brain-normalised units; ``labels`` the BraTS label map on the same grid (1 necrosis,
    2 oedema, 3 non-enhancing, 4 enhancing; other values are ignored). Regions under `MIN_VOXELS` are skipped.
    Why: this is all `paint` needs to reproduce a sub-region's histogram, rim/centre profile and grain.
    """
    norm, labels = _check_pair(norm, labels, "norm")
    spacing = _spacing(spacing_zyx)
    out: dict[str, Any] = {"version": STATS_VERSION, "units": "brain-normalised", "labels": {}}
    for label, name in LABEL_NAMES.items():
        mask = labels == label
        if int(mask.sum()) < MIN_VOXELS:
            continue
        box = _box(mask, np.array([MAX_LAG + 1] * 3))
        stats = _region_stats(norm[box], mask[box], spacing)
        out["labels"][str(label)] = {"name": name, **stats}
    out["brain"] = _brain_stats(norm, labels)
    if not out["labels"]:
        raise InvalidInputError(f"labels holds none of the BraTS labels {sorted(LABEL_NAMES)} with at least "
                                f"{MIN_VOXELS} voxels; nothing to measure.")
    return out


def _brain_stats(image: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Median and interquartile range of the healthy brain (outside the labels): the anchor of `paint`'s
    ``relative_to_brain`` mode."""
    brain = default_brain_mask(image, labels > 0) & (labels == 0)
    values = image[brain] if brain.sum() >= 100 else image[labels == 0]
    q25, q50, q75 = (float(v) for v in np.percentile(values, [25, 50, 75]))
    return {"median": q50, "iqr": max(q75 - q25, 1e-6)}


def measure(norm: np.ndarray, labels: np.ndarray, spacing_zyx: Sequence[float]) -> dict[str, Any]:
    """The appearance of one reference tumour (`fit_region_stats`): "texture from a reference tumour"."""
    return fit_region_stats(norm, labels, spacing_zyx)


_SCALARS = ("mean", "std", "residual_std", "corr_length_mm", "field_sigma_mm", "nugget")


def fit_appearance(cases: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]]) -> dict[str, Any]:
    """Default appearance: per label, the element-wise median over cases of each case's stats, plus the
    [min, max] over cases (``range``) for radiomics-envelope checks.

    ``cases`` are ``(norm, labels, spacing_zyx)`` triples. The median of monotone quantile functions is monotone,
    so the result is a valid quantile function; medians (not pooling) keep one large tumour from dominating.
    """
    if not cases:
        raise InvalidInputError("fit_appearance needs at least one (norm, labels, spacing) case.")
    per_case = [fit_region_stats(n, lab, sp) for n, lab, sp in cases]
    out: dict[str, Any] = {"version": STATS_VERSION, "units": "brain-normalised", "cases": len(per_case),
                           "labels": {}}
    keys = sorted({k for s in per_case for k in s["labels"]}, key=int)
    for key in keys:
        items = [s["labels"][key] for s in per_case if key in s["labels"]]
        entry: dict[str, Any] = {"name": items[0]["name"], "cases": len(items),
                                 "voxels": int(np.median([it["voxels"] for it in items])),
                                 "quantile_levels": items[0]["quantile_levels"]}
        for field in ("quantiles", "profile"):
            arr = np.asarray([it[field] for it in items], dtype=float)
            entry[field] = [float(v) for v in np.median(arr, axis=0)]
        for field in _SCALARS:
            entry[field] = float(np.median([it[field] for it in items]))
        rng: dict[str, Any] = {}
        for field in ("quantiles", "profile"):
            arr = np.asarray([it[field] for it in items], dtype=float)
            rng[field] = [[float(a), float(b)] for a, b in zip(arr.min(axis=0), arr.max(axis=0), strict=True)]
        for field in _SCALARS:
            vals = [it[field] for it in items]
            rng[field] = [float(min(vals)), float(max(vals))]
        entry["range"] = rng
        out["labels"][key] = entry
    out["brain"] = {k: float(np.median([s["brain"][k] for s in per_case])) for k in ("median", "iqr")}
    return out


# --------------------------------------------------------------------------- painting


def _label_stats(stats: Mapping[str, Any], label: int) -> Mapping[str, Any] | None:
    table = stats.get("labels", stats) if isinstance(stats, Mapping) else None
    if not isinstance(table, Mapping):
        raise InvalidInputError("stats must be a dict from fit_region_stats / fit_appearance / measure.")
    entry = table.get(str(label), table.get(label))  # type: ignore[call-overload]
    return entry


def _field(shape: tuple[int, ...], spacing: np.ndarray, sigma_mm: float, nugget: float,
           rng: np.random.Generator) -> np.ndarray:
    """Two-scale Gaussian random field (unit variance before masking) with the fitted correlation."""
    coarse = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_mm / spacing)
    fine = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), FINE_SIGMA_MM / spacing)
    coarse /= max(float(coarse.std()), 1e-12)
    fine /= max(float(fine.std()), 1e-12)
    return (np.sqrt(1.0 - nugget) * coarse + np.sqrt(nugget) * fine).astype(np.float32)


def _quantile_map(u: np.ndarray, mask: np.ndarray, entry: Mapping[str, Any]) -> np.ndarray:
    """Map ``u`` through (empirical CDF of ``u`` inside ``mask``) then the region's quantile function, so the
    values inside the mask follow the fitted histogram; outside the mask the same monotone map applies (clamped)."""
    levels = np.asarray(entry.get("quantile_levels", QUANTILE_LEVELS), dtype=float)
    quant = np.asarray(entry["quantiles"], dtype=float)
    inside = np.sort(u[mask].astype(np.float64))
    n = inside.size
    # the ECDF of u at each quantile level, then linear between them: a monotone map u -> intensity
    pos = levels * (n - 1)
    knots = np.interp(pos, np.arange(n), inside)
    knots, first = np.unique(knots, return_index=True)
    vals = quant[first]
    if knots.size == 1:
        return np.full(u.shape, float(np.median(quant)), dtype=np.float32)
    return np.interp(u, knots, vals).astype(np.float32)


def blend_band(labels: np.ndarray, spacing_zyx: Sequence[float], blend_mm: float = 1.0) -> np.ndarray:
    """Voxels `paint` may change: the labelled voxels and every voxel within ``blend_mm`` of them (Euclidean, in mm:
    the partial-volume blend's reach). Everything else is returned bit-identical, so "nothing farther than blend_mm
    from the tumour changes" holds in every direction, diagonals included."""
    labels = np.asarray(labels)
    spacing = _spacing(spacing_zyx)
    radius = _blend_radius(spacing, blend_mm)
    region = labels > 0
    if not radius.any() or not region.any():
        return region
    box = _box(region, radius + 1)
    band = region.copy()
    band[box] = ndimage.distance_transform_edt(~region[box], sampling=spacing) <= blend_mm
    return band


def _blend_radius(spacing: np.ndarray, blend_mm: float) -> np.ndarray:
    """Voxel radius of the blend kernel per axis (sigma = blend_mm / 2, truncated at 2 sigma as scipy does)."""
    if blend_mm <= 0:
        return np.zeros(3, dtype=int)
    sigma = blend_mm / 2.0 / spacing
    return np.array([int(2.0 * s + 0.5) for s in sigma], dtype=int)


def paint(norm_background: np.ndarray, labels: np.ndarray, stats: Mapping[str, Any],
          spacing_zyx: Sequence[float], rng: np.random.Generator | int | None, *,
          blend_mm: float = 1.0, edema_anatomy: float = EDEMA_ANATOMY_WEIGHT,
          relative_to_brain: bool = False) -> np.ndarray:
    """A new brain-normalised image with a synthetic tumour painted on ``norm_background`` where ``labels`` > 0.

    Per label: Gaussian random field with the region's correlation, plus its depth profile, mapped through its
    quantile function (the painted histogram is the fitted one). Oedema (label 2) mixes in the standardised
    background (weight ``edema_anatomy``) before the mapping, so the anatomy shows through with oedema's statistics.
    Boundaries between sub-regions and with the brain are partial-volume blended over ``blend_mm``; voxels outside
    `blend_band` are bit-identical to ``norm_background``. Same seed, same output.

    ``relative_to_brain``: brain-normalised units still differ between scans (the 99.5th percentile of a T1c is
    set by vessels); this maps the fitted intensities linearly so that the fitted healthy brain's median / IQR
    (``stats["brain"]``) land on this background's, i.e. the tumour keeps its contrast to the brain around it.
    """
    background, labels = _check_pair(norm_background, labels, "norm_background")
    spacing = _spacing(spacing_zyx)
    if not np.isfinite(blend_mm) or blend_mm < 0:
        raise InvalidInputError(f"blend_mm must be >= 0; got {blend_mm}.")
    if not 0.0 <= edema_anatomy < 1.0:
        raise InvalidInputError(f"edema_anatomy must be in [0, 1); got {edema_anatomy}.")
    present = [int(v) for v in np.unique(labels) if v != 0]
    entries: dict[int, Mapping[str, Any]] = {}
    for label in present:
        entry = _label_stats(stats, label)
        if entry is None:
            have = sorted(int(k) for k in stats.get("labels", {}))
            raise InvalidInputError(f"label {label} has no appearance stats (the stats cover labels {have}); relabel "
                                    "it or measure a reference tumour that has it.")
        if "quantiles" not in entry or len(entry["quantiles"]) < 2:
            raise InvalidInputError(f"the stats of label {label} have no intensity quantiles.")
        entries[label] = entry
    if relative_to_brain:
        if "brain" not in stats:
            raise InvalidInputError("relative_to_brain needs stats with a 'brain' entry (fit_region_stats / "
                                    "fit_appearance / measure write one).")
        target = _brain_stats(background, labels)
        src = stats["brain"]
        gain = target["iqr"] / float(src["iqr"])
        entries = {k: {**e, "quantiles": [target["median"] + (q - float(src["median"])) * gain for q in e["quantiles"]],
                       "profile": [p * gain for p in e.get("profile", [0.0] * PROFILE_BINS)],
                       "residual_std": float(e.get("residual_std", e.get("std", 0.1))) * gain}
                   for k, e in entries.items()}
    rng = _rng(rng)
    radius = _blend_radius(spacing, blend_mm)
    box = _box(labels > 0, radius + 2)
    lab = labels[box]
    bg = background[box]
    any_label = lab > 0
    # the anatomy under the oedema, standardised inside it
    textures: dict[int, np.ndarray] = {}
    for label in present:
        entry = entries[label]
        mask = lab == label
        sigma_mm = max(float(entry.get("field_sigma_mm", 1.0)), MIN_FIELD_SIGMA_MM)
        field = _field(lab.shape, spacing, sigma_mm, NUGGET_SCALE * float(entry.get("nugget", 0.5)), rng)
        field = (field - field[mask].mean()) / max(float(field[mask].std()), 1e-6)
        if label == 2 and edema_anatomy > 0:
            anat = bg - bg[mask].mean()
            anat /= max(float(anat[mask].std()), 1e-6)
            field = edema_anatomy * anat + np.sqrt(1.0 - edema_anatomy ** 2) * field
            field /= max(float(field[mask].std()), 1e-6)
        depth = _depth(mask, spacing)
        prof = _profile_at(entry.get("profile", [0.0] * PROFILE_BINS), depth)
        resid_std = float(entry.get("residual_std", entry.get("std", 0.1)))
        u = prof + resid_std * field
        textures[label] = _quantile_map(u, mask, entry)
    out = background.copy()
    if blend_mm > 0 and radius.any():
        sigma = blend_mm / 2.0 / spacing
        weight_bg = ndimage.gaussian_filter((~any_label).astype(np.float32), sigma, truncate=2.0)
        acc = weight_bg * bg
        for label, tex in textures.items():
            w = ndimage.gaussian_filter((lab == label).astype(np.float32), sigma, truncate=2.0)
            acc += w * tex
        band = blend_band(lab, spacing, blend_mm)
        crop = out[box]
        crop[band] = acc[band]
    else:
        crop = out[box]
        for label, tex in textures.items():
            crop[lab == label] = tex[lab == label]
    return out


# --------------------------------------------------------------------------- shapes


def grow_edema(core: np.ndarray, spacing_zyx: Sequence[float], rng: np.random.Generator | int | None, *,
               thickness_mm: tuple[float, float] = (4.0, 12.0), brain: np.ndarray | None = None) -> np.ndarray:
    """An irregular oedema shell around a tumour ``core`` (bool mask of the shell, core excluded).

    Why: shapes from the two-region model carry no oedema label, but a glioma in T1c/FLAIR sits in oedema. The
    shell is ``0 < distance(core) <= t(x)`` with ``t`` a smooth random field spanning ``thickness_mm``, kept
    inside ``brain`` and connected to the core.
    """
    core = np.asarray(core, dtype=bool)
    if core.ndim != 3:
        raise InvalidInputError(f"core must be a 3D (z, y, x) mask; got shape {core.shape}.")
    if not core.any():
        raise InvalidInputError("core is empty; there is no tumour to grow oedema around.")
    if brain is not None:
        brain = np.asarray(brain, dtype=bool)
        if brain.shape != core.shape:
            raise InvalidInputError(f"brain {brain.shape} and core {core.shape} must have the same shape.")
    lo_mm, hi_mm = (float(t) for t in thickness_mm)
    if not 0 <= lo_mm <= hi_mm or hi_mm <= 0:
        raise InvalidInputError(f"thickness_mm must be (min, max) with 0 <= min <= max, max > 0; got {thickness_mm}.")
    spacing = _spacing(spacing_zyx)
    rng = _rng(rng)
    margin = np.ceil(hi_mm / spacing).astype(int) + 2
    box = _box(core, margin)
    c = core[box]
    dist = ndimage.distance_transform_edt(~c, sampling=spacing)
    corr_mm = max(hi_mm, 4.0)
    noise = ndimage.gaussian_filter(rng.standard_normal(c.shape).astype(np.float32), corr_mm / 2.0 / spacing)
    noise /= max(float(noise.std()), 1e-12)
    thick = lo_mm + (hi_mm - lo_mm) * ndtr(noise)
    shell = (dist > 0) & (dist <= thick)
    if brain is not None:
        shell &= brain[box]
    # keep the parts touching the core
    grown, _ = ndimage.label(shell | c)
    keep = np.unique(grown[c])
    shell &= np.isin(grown, keep[keep > 0])
    out = np.zeros(core.shape, dtype=bool)
    out[box] = shell
    return out
