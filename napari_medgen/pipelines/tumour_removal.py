"""Tumour removal as healthy-tissue inpainting (the BraTS inpainting task), with the learned inpainter or a
classical fill.

``inpaint(volume, region)`` replaces the voxels of ``region`` with healthy-looking tissue and leaves every other
voxel bit-identical. It accepts the challenge's own input (the *voided* scan, region set to 0, plus the mask) as
well as a scan that still shows the tumour: **nothing under the region is read** by any method, so both give the
identical result. Intensities are normalised from the healthy brain around the region
(`models.inpainter.brain_range`), so raw scanner units (int16 BraTS 2023) and z-scored scans (BRATS 2013) both
work, and the result comes back in the scan's units and dtype.

Methods (``method``): ``"model"`` (default: the `Inpainter` network over the harmonic, mirror-harmonic and, for
atlas models, atlas-guided estimates, `models.inpainter`), and the classical fills it is measured against
(`core.inpainting`, `core.atlas`): ``"harmonic"`` (brain-aware), ``"atlas-harmonic"`` (the MNI152 atlas registered
to the scan, blended in the gradient domain), ``"mirror-harmonic"``, ``"mirror"``, ``"mean"``. The atlas needs the
scan's true orientation (its direction matrix), which every reader here keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medgen.core.progress import Job, ProgressEvent, run_job
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import DimensionError, InvalidInputError

DEFAULT_MODEL = "inpainter-brain"
METHODS = ("model", "harmonic", "atlas-harmonic", "mirror-harmonic", "mirror", "mean")
_STAGES = 3


@dataclass(frozen=True)
class InpaintResult:
    """The scan with the region inpainted (same grid, units and dtype) and a JSON-ready report."""

    image: Volume
    report: dict[str, Any] = field(default_factory=dict)


def check_region(volume: Volume, region: LabelMap | np.ndarray, what: str = "region") -> np.ndarray:
    """The region as a boolean array on the scan's grid; clear errors for anything else."""
    if not isinstance(volume, Volume) or isinstance(volume, LabelMap):
        raise InvalidInputError(f"The image must be a Volume (a scan); got {type(volume).__name__}.")
    arr = np.asarray(volume.array)
    if arr.ndim != 3 or min(arr.shape) < 2:
        raise DimensionError(f"Inpainting needs a 3D scan; got an array of shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InvalidInputError(f"The image must hold real numbers; got dtype {arr.dtype}.")
    if isinstance(region, LabelMap):
        volume.require_same_grid(region, what)
        mask = np.asarray(region.array) != 0
    else:
        mask = np.asarray(region)
        if mask.shape != arr.shape:
            raise InvalidInputError(f"The {what} has shape {mask.shape}; the scan has {arr.shape}. Give a mask on "
                                    "the scan's grid.")
        mask = mask.astype(bool)
    if not mask.any():
        raise InvalidInputError(f"The {what} is empty: draw or load the tumour region first.")
    if mask.all():
        raise InvalidInputError(f"The {what} covers the whole scan: there is no healthy tissue to inpaint from.")
    outside = arr[~mask]
    if not np.all(np.isfinite(outside)):
        count = int(np.count_nonzero(~np.isfinite(outside)))
        raise InvalidInputError(f"The scan has {count} NaN/Inf voxels outside the {what}; replace them before "
                                "inpainting.")
    return mask


def to_scan_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float values in the scan's dtype (integers rounded and clipped to the type's range)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _classical(method: str, norm: np.ndarray, region: np.ndarray, volume: Volume,
               brain: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """(fill, report entries) of one classical method on the normalised scan."""
    from napari_medgen.core import inpainting

    spacing = tuple(float(s) for s in volume.spacing_zyx)
    if method == "harmonic":
        return inpainting.harmonic_fill(norm, region, spacing_zyx=spacing, brain=brain, brain_aware=True), {}
    if method == "atlas-harmonic":
        from napari_medgen.core.atlas import atlas_harmonic_fill

        fill, fit = atlas_harmonic_fill(norm, region, spacing_zyx=spacing, brain=brain, origin=volume.origin,
                                        direction=volume.direction)
        return fill, {"atlas_used": fit.used, "atlas_r2": None if np.isnan(fit.r2) else float(fit.r2),
                      "atlas_note": fit.reason}
    fill = {"mirror-harmonic": inpainting.mirror_harmonic_fill, "mirror": inpainting.mirror_fill,
            "mean": inpainting.mean_fill}[method]
    return fill(norm, region, spacing_zyx=spacing, brain=brain), {}


def inpaint_job(
    volume: Volume,
    region: LabelMap | np.ndarray,
    *,
    method: str = "model",
    model: str | Path = DEFAULT_MODEL,
    device: Any = None,
) -> Job[InpaintResult]:
    """Job form of `inpaint`: one event per stage (estimates, network, result)."""
    from napari_medgen.models.inpainter import combine, healthy_brain, prepare

    if method not in METHODS:
        raise InvalidInputError(f"Unknown inpainting method {method!r}; choose one of {', '.join(METHODS)}.")
    mask = check_region(volume, region)
    net = None
    if method == "model":
        from napari_medgen.hub import load_cached

        yield ProgressEvent(0, 1, "loading model", str(model))
        net = load_cached(model, expected_type="inpainter", device=device)
    yield ProgressEvent(0, _STAGES, "removing tumour", "classical estimates")
    arr = np.asarray(volume.array)
    spacing = tuple(float(s) for s in volume.spacing_zyx)
    known, low, high, brain = healthy_brain(arr, mask)
    report: dict[str, Any] = {"operation": "inpaint", "method": method, "region_voxels": int(mask.sum()),
                              "region_cm3": float(mask.sum() * np.prod(spacing) / 1000.0)}
    if net is None:
        norm = (known - low) / (high - low)
        filled, notes = _classical(method, norm, mask, volume, brain)
        report.update(notes)
        yield ProgressEvent(2, _STAGES, "removing tumour", method)
    else:
        inputs = prepare(known, mask, spacing, work_mm=float(net.config["work_mm"]), crop=int(net.config["crop_size"]),
                         brain=brain, atlas=bool(net.config.get("atlas", False)), origin=volume.origin,
                         direction=volume.direction)
        yield ProgressEvent(1, _STAGES, "removing tumour", "inpainting network")
        weight, residual = net.predict(inputs)
        filled = combine(inputs, weight, residual)
        report.update({"model": str(model), "work_mm": float(inputs.grid_mm),
                       "mirror_weight_mean": float(weight[0].mean())})
        if inputs.atlas is not None:
            report.update({"atlas_weight_mean": float(weight[1].mean()), "atlas_used": not inputs.atlas_note,
                           "atlas_note": inputs.atlas_note,
                           "atlas_r2": None if inputs.atlas_r2 is None else float(inputs.atlas_r2)})
        yield ProgressEvent(2, _STAGES, "removing tumour", "combining")
    out = arr.copy()
    out[mask] = to_scan_dtype(filled[mask].astype(np.float64) * (high - low) + low, arr.dtype)
    report["normalisation"] = {"low": float(low), "high": float(high)}
    metadata = {**dict(volume.metadata), "generated_by": f"napari-medgen inpaint ({method})"}
    yield ProgressEvent(_STAGES, _STAGES, "removing tumour", "done")
    return InpaintResult(volume.with_array(out, metadata=metadata), report)


def inpaint(volume: Volume, region: LabelMap | np.ndarray, **options: Any) -> InpaintResult:
    """``volume`` with ``region`` replaced by healthy-looking tissue; see `inpaint_job` and the module docstring."""
    return run_job(inpaint_job(volume, region, **options))


__all__ = ["DEFAULT_MODEL", "METHODS", "InpaintResult", "check_region", "inpaint", "inpaint_job", "to_scan_dtype"]
