"""Texture features as the texture generator sees them: computed on the network's [-1, 1] intensities.

Seed 003 conditions its texture generator on first-order + GLCM + GLRLM + GLSZM features of the tumour.
Scanner units differ between sources (z-scored BRATS, raw BraTS, the MNI template), so the bridge model's
features are computed after the same per-scan normalisation its VQ-GAN uses; then a texture requested or
copied from one scan means the same appearance in another. A fixed bin width over the network range
(``TEXTURE_SETTINGS``: 32 bins across [-1, 1]) keeps grey-level features comparable between tumours,
which a per-crop bin count would not.

The edited region is one lesion (every non-zero label of the mask); sub-regions are not separate here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from napari_medgen.errors import InvalidInputError
from napari_medgen.radiomics.conditioning import FEATURE_SETS

TEXTURE_CLASSES: tuple[str, ...] = FEATURE_SETS["texture"]
#: 2 / 32: 32 grey levels across the network's [-1, 1] range
TEXTURE_SETTINGS: dict[str, Any] = {"binWidth": 0.0625}
MIN_TEXTURE_VOXELS = 27


def texture_feature_names() -> list[str]:
    """The names, in the order the bridge model's tokens use (``original_<class>_<Feature>``)."""
    from napari_medgen.radiomics.extractor import feature_names

    return feature_names(TEXTURE_CLASSES)


def texture_features(
    images: np.ndarray,
    masks: np.ndarray,
    spacing_xyz: tuple[float, float, float] = (1.0, 1.0, 1.0),
    settings: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """``(N, F)`` texture features of N normalised crops ``(N, z, y, x)`` inside their masks.

    A mask with fewer than `MIN_TEXTURE_VOXELS` voxels raises `InvalidInputError`: its texture statistics
    would be noise. Rows that radiomics cannot compute come back as NaN (the caller decides).
    """
    import warnings

    from napari_medgen.radiomics.extractor import extract_features_batch

    imgs = np.asarray(images, dtype=np.float64)
    msk = np.asarray(masks).astype(bool)
    if imgs.ndim != 4 or imgs.shape != msk.shape:
        raise InvalidInputError(f"images and masks must both be (N, z, y, x); got {imgs.shape} and {msk.shape}.")
    small = [i for i, m in enumerate(msk) if int(m.sum()) < MIN_TEXTURE_VOXELS]
    if small:
        raise InvalidInputError(
            f"Region(s) {small[:5]} have fewer than {MIN_TEXTURE_VOXELS} voxels; texture features of so few "
            "voxels are meaningless. Use a larger mask."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        values = extract_features_batch(imgs, msk, spacing_xyz, dict(settings or TEXTURE_SETTINGS),
                                        TEXTURE_CLASSES, workers=1)
    return np.stack([np.asarray(values[name], dtype=np.float64) for name in texture_feature_names()], axis=1)


__all__ = ["MIN_TEXTURE_VOXELS", "TEXTURE_CLASSES", "TEXTURE_SETTINGS", "texture_feature_names", "texture_features"]
