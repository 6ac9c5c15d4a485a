"""Public API: pyradiomics-compatible feature extraction for one ROI or a batch of crops."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import InvalidInputError
from napari_medgen.radiomics import firstorder, shape, texture
from napari_medgen.radiomics.preprocess import PreparedROI, discretize, prepare
from napari_medgen.radiomics.settings import RadiomicsSettings

FEATURE_CLASSES = ("shape", "shape2D", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
DEFAULT_CLASSES = ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


def _classes(feature_classes: Iterable[str] | None, settings: RadiomicsSettings) -> list[str]:
    if feature_classes is None:
        return list(DEFAULT_CLASSES)
    wanted = [str(c) for c in feature_classes]
    bad = [c for c in wanted if c not in FEATURE_CLASSES]
    if bad:
        raise InvalidInputError(f"Unknown radiomics feature class(es) {bad}; choose from {FEATURE_CLASSES}.")
    return wanted


def compute_prepared(roi: PreparedROI, settings: RadiomicsSettings, classes: Iterable[str]) -> dict[str, float]:
    """Features of an already prepared ROI (shared by the single and batched entry points)."""
    out: dict[str, float] = {}
    classes = list(classes)
    levels = None
    tex = [c for c in classes if c in texture.CLASSES]
    if "firstorder" in classes or tex:
        levels = discretize(roi.image, roi.mask, settings)
    for cls in classes:
        if cls == "shape":
            vals = shape.shape_features(roi.shape_mask, roi.spacing)
        elif cls == "shape2D":
            raise InvalidInputError(
                "The shape2D feature class is not available yet; request 'shape' (3D shape) instead."
            )
        elif cls == "firstorder":
            vals = firstorder.firstorder_features(
                roi.image[roi.mask], levels[roi.mask], float(np.prod(roi.spacing)), settings.voxelArrayShift
            )
        else:
            continue
        out.update({f"original_{cls}_{k}": v for k, v in vals.items()})
    if tex:
        for cls, vals in texture.texture_features(levels, roi.mask, settings, tex).items():
            out.update({f"original_{cls}_{k}": v for k, v in vals.items()})
    return out


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
    roi = prepare(image, labels, cfg.label if label is None else int(label), cfg)
    return compute_prepared(roi, cfg, _classes(feature_classes, cfg))


def extract_features_batch(
    images: np.ndarray,
    masks: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    settings: RadiomicsSettings | Mapping[str, Any] | None = None,
    feature_classes: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """Features of N crops at once: ``images`` and ``masks`` are (N, z, y, x); spacing is (x, y, z).

    Each crop is discretised on its own (as pyradiomics would treat it). A crop whose mask is empty gets NaN
    for every feature instead of stopping the whole batch. Normalisation/resampling settings are not
    supported here (crops are assumed to be on their final grid).
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
    classes = _classes(feature_classes, cfg)
    rows: list[dict[str, float] | None] = []
    names: list[str] = []
    for img, m in zip(imgs, msk.astype(bool), strict=False):
        if not m.any():
            rows.append(None)
            continue
        vals = img[m]
        if vals.dtype.kind == "f" and not np.all(np.isfinite(vals)):
            raise InvalidInputError("A crop has NaN or Inf voxels inside its mask; clean the images first.")
        idx = np.nonzero(m)
        sl = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
        crop_m = m[sl]
        crop_i = np.asarray(img[sl], dtype=np.float64)
        seg = crop_m
        if cfg.resegmentRange is not None:
            from napari_medgen.radiomics.preprocess import resegment

            seg = np.zeros_like(crop_m)
            seg[crop_m] = resegment(crop_i[crop_m], cfg)
            if not seg.any():
                rows.append(None)
                continue
        feats = compute_prepared(PreparedROI(crop_i, seg, crop_m, sp), cfg, classes)  # type: ignore[arg-type]
        rows.append(feats)
        for k in feats:
            if k not in names:
                names.append(k)
    out = {k: np.full(len(rows), np.nan) for k in names}
    for n, feats in enumerate(rows):
        if feats is None:
            continue
        for k, v in feats.items():
            out[k][n] = v
    return out
