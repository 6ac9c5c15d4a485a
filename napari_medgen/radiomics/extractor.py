"""Public API: pyradiomics-compatible feature extraction for one ROI or a batch of crops.

Both entry points run the same vectorised engine: one ROI is simply a batch of one. A batch is processed in
chunks (bounded memory) that run on a small thread pool, since the heavy numpy kernels release the GIL.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import InvalidInputError
from napari_medgen.radiomics import firstorder, shape, shape2d, texture
from napari_medgen.radiomics.neighbours import angles, build_lattice
from napari_medgen.radiomics.preprocess import PreparedROI, discretize_values, prepare
from napari_medgen.radiomics.settings import RadiomicsSettings

FEATURE_CLASSES = ("shape", "shape2D", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
DEFAULT_CLASSES = ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
# Chunk limits: padded lattice voxels and GLCM entries (crops x angles x Ng x Ng) held at once.
_MAX_LATTICE_VOXELS = 2**24
_MAX_GLCM_ENTRIES = 2**23
# Below this many crops per worker, threads cost more than they save.
_MIN_CROPS_PER_WORKER = 16


@lru_cache(maxsize=1)
def _blas_controller() -> Any:  # noqa: ANN401
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional: without it BLAS keeps its default threads
        return None
    return ThreadpoolController()


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Run with single-threaded BLAS: the engine's matrix products are many small ones (N x 3 by 3 x K, stacks
    of G x G), for which OpenBLAS' own threads only spin and contend with our chunk threads; measured on 2
    cores it halves the CPU time of the shape class. (The limit is process-wide while it lasts.)"""
    controller = _blas_controller()
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


def _classes(feature_classes: Iterable[str] | None) -> list[str]:
    if feature_classes is None:
        return list(DEFAULT_CLASSES)
    wanted = [str(c) for c in feature_classes]
    bad = [c for c in wanted if c not in FEATURE_CLASSES]
    if bad:
        raise InvalidInputError(f"Unknown radiomics feature class(es) {bad}; choose from {FEATURE_CLASSES}.")
    return wanted


def _check_shape2d(classes: list[str], settings: RadiomicsSettings) -> None:
    """shape2D measures single-slice ROIs, which pyradiomics only accepts with force2D (it skips the class
    otherwise; we say so instead of silently returning fewer features)."""
    if "shape2D" in classes and not settings.force2D:
        raise InvalidInputError("The shape2D feature class needs force2D=True (and force2Ddimension set to the "
                                "out-of-plane axis); set it, or request the 3D 'shape' class instead.")


def _feature_names(classes: list[str]) -> list[str]:
    names: list[str] = []
    for cls in classes:
        if cls == "shape":
            cls_names = shape.FEATURES
        elif cls == "shape2D":
            cls_names = shape2d.FEATURES
        elif cls == "firstorder":
            cls_names = firstorder.FEATURES
        else:
            cls_names = texture.feature_names(cls)
        names += [f"original_{cls}_{k}" for k in cls_names]
    return names


def feature_names(feature_classes: Iterable[str] | None = None) -> list[str]:
    """The ``original_<class>_<Feature>`` names these classes give, in the order the extractors return them."""
    return _feature_names(_classes(feature_classes))


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != d))) for d in range(mask.ndim)]
    return tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)


def _shape_batch(masks: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """Shape features of every crop (vectorised table-based marching cubes, see shape.py)."""
    return {k: np.asarray(v, dtype=np.float64) for k, v in shape.shape_features_batch(masks, spacing).items()}


def _intensity(masks: np.ndarray, values: np.ndarray, starts: np.ndarray, spacing: tuple[float, float, float],
               settings: RadiomicsSettings, classes: list[str]) -> dict[str, np.ndarray]:
    """First-order and texture features of crops whose ``masks`` each hold >= 1 voxel.

    ``values`` are the image values of the mask voxels in C order, crop k owning ``starts[k]:starts[k + 1]``.
    """
    tex = [c for c in classes if c in texture.CLASSES]
    levels = discretize_values(values, starts, settings)
    n_crops = len(masks)
    n_angles = len(angles(settings.distances, settings.force2D, settings.force2Ddimension))
    if "glcm" in tex and n_crops > 1 and n_crops * n_angles * int(levels.max()) ** 2 > _MAX_GLCM_ENTRIES:
        half = n_crops // 2  # many gray levels: two smaller batches keep the GLCM stack in memory bounds
        cut = starts[half]
        parts = [_intensity(masks[:half], values[:cut], starts[: half + 1], spacing, settings, classes),
                 _intensity(masks[half:], values[cut:], starts[half:] - cut, spacing, settings, classes)]
        return {k: np.concatenate([parts[0][k], parts[1][k]]) for k in parts[0]}
    out: dict[str, np.ndarray] = {}
    if "firstorder" in classes:
        crop = np.repeat(np.arange(n_crops), np.diff(starts))
        vals = firstorder.firstorder_batch(values, levels, crop, starts, float(np.prod(spacing)),
                                           settings.voxelArrayShift)
        out.update({f"original_firstorder_{k}": v for k, v in vals.items()})
    if tex:
        box = (slice(None), *_bbox(masks.any(axis=0)))  # cropping keeps the C order of the voxels
        lattice = build_lattice(masks[box], levels, max(int(d) for d in settings.distances))
        for cls, vals in texture.texture_batch(lattice, settings, tex, spacing).items():
            out.update({f"original_{cls}_{k}": v for k, v in vals.items()})
    return out


def _compute(masks: np.ndarray, values: np.ndarray, starts: np.ndarray, shape_masks: np.ndarray,
             spacing: tuple[float, float, float], settings: RadiomicsSettings,
             classes: list[str]) -> dict[str, np.ndarray]:
    """Features of N crops whose (resegmented) ``masks`` each hold >= 1 voxel; every value is an (N,) array."""
    out: dict[str, np.ndarray] = {}
    if "shape" in classes:
        out.update({f"original_shape_{k}": v for k, v in _shape_batch(shape_masks, spacing).items()})
    if "shape2D" in classes:
        vals = shape2d.shape2d_features_volume_batch(shape_masks, spacing, settings.force2Ddimension)
        out.update({f"original_shape2D_{k}": vals[k] for k in shape2d.FEATURES})
    if "firstorder" in classes or any(c in texture.CLASSES for c in classes):
        out.update(_intensity(masks, values, starts, spacing, settings, classes))
    return out


def compute_prepared(roi: PreparedROI, settings: RadiomicsSettings, classes: Iterable[str]) -> dict[str, float]:
    """Features of one already prepared ROI (a batch of one)."""
    values = roi.image[roi.mask].astype(np.float64, copy=False)
    starts = np.array([0, values.size], dtype=np.intp)
    vals = _compute(roi.mask[None], values, starts, roi.shape_mask[None], roi.spacing, settings, list(classes))
    return {k: float(v[0]) for k, v in vals.items()}


def extract_features(
    image: Volume,
    labels: LabelMap,
    label: int | None = None,
    settings: RadiomicsSettings | Mapping[str, Any] | None = None,
    feature_classes: Iterable[str] | None = None,
) -> dict[str, float]:
    """pyradiomics-named features (``original_<class>_<Feature>``) of one label of ``labels`` on ``image``.

    ``label`` defaults to ``settings.label`` (1). Raises `MedGenError` subclasses for unusable input.
    """
    cfg = RadiomicsSettings.from_any(settings)
    classes = _classes(feature_classes)
    _check_shape2d(classes, cfg)
    roi = prepare(image, labels, cfg.label if label is None else int(label), cfg)
    with _one_blas_thread():
        return compute_prepared(roi, cfg, classes)


def _resegment(values: np.ndarray, crop: np.ndarray, starts: np.ndarray, cfg: RadiomicsSettings) -> np.ndarray:
    """Per-voxel keep flags of ``resegmentRange`` with each crop's own max / mean / std (relative, sigma)."""
    rng = cfg.resegmentRange
    if len(rng) not in (1, 2):
        raise InvalidInputError(f"resegmentRange needs 1 or 2 values; got {rng}.")
    s0 = starts[:-1]
    lo = np.full(len(s0), float(rng[0]))
    hi = np.full(len(s0), float(rng[1])) if len(rng) == 2 else None
    if cfg.resegmentMode == "relative":
        vmax = np.maximum.reduceat(values, s0)
        lo = lo * vmax
        hi = hi * vmax if hi is not None else None
    elif cfg.resegmentMode == "sigma":
        count = np.diff(starts)
        mean = np.add.reduceat(values, s0) / count
        std = np.sqrt(np.add.reduceat((values - mean[crop]) ** 2, s0) / count)
        lo = mean + lo * std
        hi = mean + hi * std if hi is not None else None
    keep = values >= lo[crop]
    if hi is not None:
        keep &= values <= hi[crop]
    return keep


def _check_crops(imgs: np.ndarray, msk: np.ndarray, cfg: RadiomicsSettings
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, list[int]]]:
    """Which crops can be computed (and why the others cannot), with their (resegmented) masks and values.

    Returns the texture masks of all crops, the ``usable`` flags, the values of the usable crops' texture
    voxels (crop-major), their per-crop starts, and the problems found.
    """
    n = len(msk)
    counts = np.count_nonzero(msk.reshape(n, -1), axis=1)
    starts = np.zeros(n + 1, dtype=np.intp)
    np.cumsum(counts, out=starts[1:])
    values = imgs[msk].astype(np.float64, copy=False)
    crop = np.repeat(np.arange(n), counts)
    problems: dict[str, list[int]] = {"empty mask": np.flatnonzero(counts == 0).tolist()}
    usable = counts > 0
    if values.size and not np.isfinite(values).all():
        bad = np.zeros(n, dtype=bool)
        bad[crop[~np.isfinite(values)]] = True
        problems["NaN or Inf voxels inside the mask"] = np.flatnonzero(bad).tolist()
        usable &= ~bad
    z_extent = msk.reshape(n, msk.shape[1], -1).any(axis=2)  # (reductions over long or outer axes are fast)
    yx_extent = msk.any(axis=1)
    dims = sum(np.count_nonzero(e, axis=1) > 1 for e in (z_extent, yx_extent.any(axis=2), yx_extent.any(axis=1)))
    small = usable & (dims < cfg.minimumROIDimensions)
    problems[f"fewer than minimumROIDimensions={cfg.minimumROIDimensions} dimensions"] = np.flatnonzero(small).tolist()
    usable &= ~small
    if cfg.minimumROISize is not None:
        tiny = usable & (counts < cfg.minimumROISize)
        problems[f"fewer than minimumROISize={cfg.minimumROISize} voxels"] = np.flatnonzero(tiny).tolist()
        usable &= ~tiny
    tex_masks = msk
    keep = usable[crop]
    if cfg.resegmentRange is not None and usable.any():
        sub = np.flatnonzero(usable)
        sub_starts = np.concatenate([[0], np.cumsum(counts[sub])])
        kept = _resegment(values[keep], np.repeat(np.arange(len(sub)), counts[sub]), sub_starts, cfg)
        keep[keep] = kept
        tex_masks = msk.copy()
        tex_masks[msk] = keep
        gone = usable & (np.bincount(crop[keep], minlength=n) == 0)
        problems[f"resegmentRange {cfg.resegmentRange} removes every voxel"] = np.flatnonzero(gone).tolist()
        usable &= ~gone
        keep &= usable[crop]
    values = values[keep]
    counts_u = np.bincount(crop[keep], minlength=n)[usable]
    starts_u = np.zeros(len(counts_u) + 1, dtype=np.intp)
    np.cumsum(counts_u, out=starts_u[1:])
    return tex_masks, usable, values, starts_u, {k: v for k, v in problems.items() if v}


def _plan_chunks(n: int, crop_shape: tuple[int, ...], n_workers: int) -> list[np.ndarray]:
    """Split crop numbers 0..n-1 into chunks that bound memory and, for large batches, keep every worker busy."""
    if n == 0:
        return []
    per_crop = int(np.prod([s + 2 for s in crop_shape]))
    n_chunks = max(1, -(-n * per_crop // _MAX_LATTICE_VOXELS))
    if n_workers > 1 and n >= 2 * _MIN_CROPS_PER_WORKER:
        n_chunks = max(n_chunks, min(n_workers, n // _MIN_CROPS_PER_WORKER))
    return [c for c in np.array_split(np.arange(n), n_chunks) if c.size]


def extract_features_batch(
    images: np.ndarray,
    masks: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    settings: RadiomicsSettings | Mapping[str, Any] | None = None,
    feature_classes: Iterable[str] | None = None,
    workers: int | None = None,
) -> dict[str, np.ndarray]:
    """Features of N crops at once: ``images`` and ``masks`` are (N, z, y, x); spacing is (x, y, z).

    Each crop is discretised on its own (binWidth edges anchored at that crop's minimum, as pyradiomics would
    treat it alone). A crop that cannot be computed (empty mask, NaN inside the mask, too few dimensions or
    voxels, resegmented away) gets NaN for every feature and a `RuntimeWarning` naming it, instead of stopping
    the whole batch. Normalisation/resampling are not done here: crops must already be on their final grid.
    ``workers`` threads share the chunks (default: the CPU count, at most 4).
    """
    cfg = RadiomicsSettings.from_any(settings)
    imgs = np.asarray(images)
    msk = np.asarray(masks)
    if imgs.ndim != 4 or imgs.shape != msk.shape:
        raise InvalidInputError(
            f"images and masks must both be (N, z, y, x) with the same shape; got {imgs.shape} and {msk.shape}."
        )
    if cfg.normalize or cfg.resampledPixelSpacing is not None:
        raise InvalidInputError("extract_features_batch does not normalise or resample; prepare crops first.")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or min(sp) <= 0:
        raise InvalidInputError(f"spacing must be 3 positive values (x, y, z); got {spacing}.")
    classes = _classes(feature_classes)
    _check_shape2d(classes, cfg)
    msk = msk.astype(bool, copy=False)
    tex_masks, usable, values, starts, problems = _check_crops(imgs, msk, cfg)
    shape_masks = tex_masks if cfg.resegmentShape else msk
    names = _feature_names(classes)
    out = {k: np.full(len(msk), np.nan) for k in names}
    for why, idx in problems.items():
        warnings.warn(f"Radiomics features of crop(s) {idx} are NaN: {why}.", RuntimeWarning, stacklevel=2)

    todo = np.flatnonzero(usable)
    n_workers = max(1, int(workers)) if workers is not None else min(os.cpu_count() or 1, 4)
    chunks = _plan_chunks(len(todo), msk.shape[1:], n_workers)  # positions in ``todo``

    def run(part: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        sel = todo[part]
        lo, hi = starts[part[0]], starts[part[-1] + 1]
        return sel, _compute(tex_masks[sel], values[lo:hi], starts[part[0]:part[-1] + 2] - lo,
                             shape_masks[sel], sp, cfg, classes)

    with _one_blas_thread():
        if len(chunks) > 1 and n_workers > 1:
            with ThreadPoolExecutor(max_workers=n_workers) as pool:
                results = list(pool.map(run, chunks))
        else:
            results = [run(c) for c in chunks]
    for sel, vals in results:
        for k, v in vals.items():
            if k not in out:
                out[k] = np.full(len(msk), np.nan)
            out[k][sel] = v
    return out
