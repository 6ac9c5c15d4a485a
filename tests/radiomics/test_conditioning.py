"""Conditioning vectors per sub-region and the reversible feature normaliser."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import InvalidInputError
from napari_medgen.radiomics.conditioning import (
    FeatureNormalizer,
    Region,
    conditioning_features,
    feature_unit,
)


def _brats_like() -> tuple[Volume, LabelMap]:
    z, y, x = np.mgrid[0:24, 0:24, 0:24]
    r = np.sqrt((z - 12) ** 2 + (y - 12) ** 2 + (x - 12) ** 2)
    lab = np.zeros((24, 24, 24), np.uint8)
    lab[r < 8] = 2  # oedema
    lab[r < 6] = 4  # enhancing
    lab[r < 3] = 1  # necrosis
    rng = np.random.default_rng(1)
    img = (100 + 40 * (lab == 4) - 30 * (lab == 1) + rng.normal(0, 5, lab.shape)).astype(np.float32)
    vol = Volume(img, spacing=(1.0, 1.0, 1.5))
    return vol, vol.as_labels(lab)


def test_shape_set_per_region_in_real_units() -> None:
    image, labels = _brats_like()
    feats = conditioning_features(None, labels, "shape", "brats")
    core = feats["tumour_core/original_shape_VoxelVolume"]
    necrosis = feats["necrotic_core/original_shape_VoxelVolume"]
    assert core == pytest.approx(np.isin(labels.array, (1, 3, 4)).sum() * 1.5)
    assert necrosis == pytest.approx((labels.array == 1).sum() * 1.5)
    assert 0.5 < feats["tumour_core/original_shape_Sphericity"] <= 1.0
    assert feature_unit("tumour_core/original_shape_VoxelVolume") == "mm3"
    assert list(feats)[0].startswith("necrotic_core/")


def test_texture_set_and_absent_region_gives_zeros() -> None:
    image, labels = _brats_like()
    no_necrosis = labels.with_array(np.where(labels.array == 1, 4, labels.array))
    feats = conditioning_features(image, no_necrosis, "texture", "brats")
    assert any("glszm" in k for k in feats) and any("firstorder" in k for k in feats)
    assert not any("gldm" in k for k in feats)
    assert all(v == 0.0 for k, v in feats.items() if k.startswith("necrotic_core/"))
    assert feats["tumour_core/original_firstorder_Mean"] > 100


def test_bad_requests() -> None:
    image, labels = _brats_like()
    with pytest.raises(InvalidInputError, match="feature set"):
        conditioning_features(image, labels, "colour")
    with pytest.raises(InvalidInputError, match="need the image"):
        conditioning_features(None, labels, "texture")
    with pytest.raises(InvalidInputError, match="None of the regions"):
        conditioning_features(None, labels, "shape", [Region("x", (9,))])
    with pytest.raises(InvalidInputError, match="empty"):
        conditioning_features(None, labels.with_array(np.zeros(labels.shape, np.uint8)), "shape")


def test_normalizer_logs_heavy_tails_and_inverts() -> None:
    rng = np.random.default_rng(0)
    volume = rng.lognormal(8, 1.0, 200)  # heavy-tailed, mm3
    sphericity = rng.uniform(0.5, 0.95, 200)
    data = np.stack([volume, sphericity], axis=1)
    norm = FeatureNormalizer.fit(["vol", "sph"], data)
    assert norm.log == (True, False)
    z = norm.transform(data)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-9)
    np.testing.assert_allclose(norm.inverse(z), data, rtol=1e-9)
    again = FeatureNormalizer.from_dict(norm.to_dict())
    assert again == norm
    assert again.inverse_dict(norm.transform({"vol": 5000.0, "sph": 0.8}))["vol"] == pytest.approx(5000.0)
    with pytest.raises(InvalidInputError, match="Unknown feature"):
        norm.transform({"vol": 1.0, "sph": 0.5, "colour": 2.0})
    with pytest.raises(InvalidInputError, match="Missing"):
        norm.transform({"vol": 1.0})
    with pytest.raises(InvalidInputError, match="negative"):
        norm.transform({"vol": -5.0, "sph": 0.5})
    with pytest.raises(InvalidInputError, match="NaN"):
        FeatureNormalizer.fit(["a", "b"], np.array([[1.0, np.nan], [2.0, 3.0]]))
