"""First-order (histogram) features of the voxel intensities inside the ROI, pyradiomics definitions.

Works on many crops at once: the ROI values of all crops are concatenated (crop k owns
``values[starts[k]:starts[k + 1]]``) and every statistic is a segment reduction (``np.add.reduceat``), so the
cost is a few passes over the voxels whatever the number of crops.
"""

from __future__ import annotations

import numpy as np

EPS = np.spacing(1)

FEATURES = (
    "Energy", "TotalEnergy", "Entropy", "Minimum", "10Percentile", "90Percentile", "Maximum", "Mean", "Median",
    "InterquartileRange", "Range", "MeanAbsoluteDeviation", "RobustMeanAbsoluteDeviation", "RootMeanSquared",
    "Skewness", "Kurtosis", "Variance", "Uniformity",
)
PERCENTILES = (10.0, 25.0, 50.0, 75.0, 90.0)
# Integer-valued intensities (CT, most MR) get exact order statistics from a histogram instead of a sort
# when the histogram (crops x intensity range) stays below this many bins.
_MAX_HISTOGRAM_BINS = 2**24


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Linear interpolation written exactly like numpy's percentile, so results agree to the last bit."""
    diff = b - a
    out = a + diff * t
    np.subtract(b, diff * (1 - t), out=out, where=t >= 0.5)
    return out


def _order_statistics_integer(values: np.ndarray, crop: np.ndarray, starts: np.ndarray,
                              ranks: np.ndarray) -> np.ndarray | None:
    """Values of rank ``ranks[k, q]`` (0-based, ascending) in crop k, by counting; None if not applicable."""
    n_crops = len(starts) - 1
    lows = np.minimum.reduceat(values, starts[:-1])
    highs = np.maximum.reduceat(values, starts[:-1])
    width = int(np.max(highs - lows)) + 1
    if n_crops * width > _MAX_HISTOGRAM_BINS or np.max(np.abs(values)) >= 2**52:
        return None
    if not np.array_equal(values, np.floor(values)):
        return None
    offset = (values - lows[crop]).astype(np.intp)
    hist = np.bincount(crop * width + offset, minlength=n_crops * width).reshape(n_crops, width)
    total = int(starts[-1]) + 1
    cum = np.cumsum(hist, axis=1) + np.arange(n_crops)[:, None] * total  # one increasing sequence
    pos = np.searchsorted(cum.ravel(), ranks + np.arange(n_crops)[:, None] * total, side="right")
    return lows[:, None] + (pos - np.arange(n_crops)[:, None] * width)


def segment_percentiles(values: np.ndarray, crop: np.ndarray, starts: np.ndarray,
                        q: tuple[float, ...] = PERCENTILES) -> np.ndarray:
    """(N, len(q)) percentiles of each crop's values, numpy's default ('linear') method."""
    counts = np.diff(starts)
    n_crops = counts.size
    quant = np.true_divide(np.asarray(q, dtype=np.float64), 100)
    virtual = (counts[:, None] - 1) * quant[None, :]
    below = np.floor(virtual).astype(np.intp)
    above = np.minimum(below + 1, counts[:, None] - 1)
    gamma = virtual - below
    fast = _order_statistics_integer(values, crop, starts, np.concatenate([below, above], axis=1))
    if fast is not None:
        lo, hi = fast[:, : len(q)], fast[:, len(q):]
        return _lerp(lo.astype(np.float64), hi.astype(np.float64), gamma)
    out = np.empty((n_crops, len(q)))
    for k in range(n_crops):
        seg = values[starts[k]:starts[k + 1]]
        kth = np.unique(np.concatenate([below[k], above[k]]))
        part = np.partition(seg, kth)
        out[k] = _lerp(part[below[k]], part[above[k]], gamma[k])
    return out


def firstorder_batch(values: np.ndarray, levels: np.ndarray, crop: np.ndarray, starts: np.ndarray,
                     voxel_volume: float, shift: float) -> dict[str, np.ndarray]:
    """Features (each an (N,) array) of ROI ``values`` (float) and their gray ``levels`` (ints >= 1).

    ``crop`` is the crop number of every value; ``shift`` (voxelArrayShift) is added before the energy terms
    so that negative CT values do not cancel out.
    """
    x = np.asarray(values, dtype=np.float64)
    s0 = starts[:-1]
    n_crops = len(s0)
    count = np.diff(starts).astype(np.float64)
    out: dict[str, np.ndarray] = {}

    shifted = x + shift
    energy = np.add.reduceat(shifted * shifted, s0)
    out["Energy"] = energy
    out["TotalEnergy"] = energy * voxel_volume
    out["RootMeanSquared"] = np.sqrt(energy / count)

    n_levels = int(levels.max())
    hist = np.bincount(crop * n_levels + (levels.astype(np.intp) - 1), minlength=n_crops * n_levels)
    p = hist.reshape(n_crops, n_levels) / count[:, None]
    out["Entropy"] = -np.sum(p * np.log2(p + EPS), axis=1)
    out["Uniformity"] = np.sum(p * p, axis=1)

    vmin = np.minimum.reduceat(x, s0)
    vmax = np.maximum.reduceat(x, s0)
    out["Minimum"], out["Maximum"], out["Range"] = vmin, vmax, vmax - vmin
    p10, p25, p50, p75, p90 = segment_percentiles(x, crop, starts).T
    out["10Percentile"], out["90Percentile"], out["Median"] = p10, p90, p50
    out["InterquartileRange"] = p75 - p25

    mean = np.add.reduceat(x, s0) / count
    out["Mean"] = mean
    dev = x - mean[crop]
    out["MeanAbsoluteDeviation"] = np.add.reduceat(np.abs(dev), s0) / count
    dev2 = dev * dev
    m2 = np.add.reduceat(dev2, s0) / count
    m3 = np.add.reduceat(dev2 * dev, s0) / count
    m4 = np.add.reduceat(dev2 * dev2, s0) / count
    out["Variance"] = m2
    flat = m2 == 0
    safe = np.where(flat, 1.0, m2)
    out["Skewness"] = np.where(flat, 0.0, m3 / safe**1.5)
    out["Kurtosis"] = np.where(flat, 0.0, m4 / safe**2)

    inside = (x >= p10[crop]) & (x <= p90[crop])
    n_in = np.add.reduceat(inside, s0, dtype=np.float64)
    robust_mean = np.add.reduceat(np.where(inside, x, 0.0), s0) / n_in
    out["RobustMeanAbsoluteDeviation"] = (
        np.add.reduceat(np.where(inside, np.abs(x - robust_mean[crop]), 0.0), s0) / n_in
    )
    return out
