"""First-order (histogram) features of the voxel intensities inside the ROI, pyradiomics definitions."""

from __future__ import annotations

import numpy as np

EPS = np.spacing(1)

FEATURES = (
    "Energy", "TotalEnergy", "Entropy", "Minimum", "10Percentile", "90Percentile", "Maximum", "Mean", "Median",
    "InterquartileRange", "Range", "MeanAbsoluteDeviation", "RobustMeanAbsoluteDeviation", "RootMeanSquared",
    "Skewness", "Kurtosis", "Variance", "Uniformity",
)


def firstorder_features(values: np.ndarray, levels: np.ndarray, voxel_volume: float, shift: float) -> dict[str, float]:
    """Features of ROI ``values`` (float) and their discretised ``levels`` (ints >= 1).

    ``shift`` (voxelArrayShift) is added before the energy terms so negative CT values do not cancel out.
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    out: dict[str, float] = {}
    shifted_sq = (x + shift) ** 2
    out["Energy"] = float(shifted_sq.sum())
    out["TotalEnergy"] = out["Energy"] * voxel_volume
    out["RootMeanSquared"] = float(np.sqrt(shifted_sq.sum() / n))
    _, counts = np.unique(levels, return_counts=True)
    p = counts / n
    out["Entropy"] = float(-np.sum(p * np.log2(p + EPS)))
    out["Uniformity"] = float(np.sum(p * p))
    p10, p25, p50, p75, p90 = np.percentile(x, [10, 25, 50, 75, 90])
    out["Minimum"] = float(x.min())
    out["Maximum"] = float(x.max())
    out["10Percentile"] = float(p10)
    out["90Percentile"] = float(p90)
    out["Median"] = float(p50)
    out["InterquartileRange"] = float(p75 - p25)
    out["Range"] = out["Maximum"] - out["Minimum"]
    mean = float(x.mean())
    out["Mean"] = mean
    dev = x - mean
    out["MeanAbsoluteDeviation"] = float(np.abs(dev).mean())
    robust = x[(x >= p10) & (x <= p90)]
    out["RobustMeanAbsoluteDeviation"] = float(np.abs(robust - robust.mean()).mean())
    m2 = float(np.mean(dev**2))
    m3 = float(np.mean(dev**3))
    m4 = float(np.mean(dev**4))
    out["Variance"] = m2
    out["Skewness"] = 0.0 if m2 == 0 else m3 / m2**1.5
    out["Kurtosis"] = 0.0 if m2 == 0 else m4 / m2**2
    return out
