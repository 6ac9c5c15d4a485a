"""Bad input gives a MedGenError that says what to do; settings parse like pyradiomics params."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import ConfigError, GeometryMismatchError, InvalidInputError, MedGenError
from napari_medgen.radiomics import RadiomicsSettings, extract_features, extract_features_batch
from napari_medgen.radiomics.preprocess import bin_edges, discretize, discretize_values


def _pair(mask: np.ndarray, image: np.ndarray | None = None) -> tuple[Volume, LabelMap]:
    rng = np.random.default_rng(0)
    img = rng.normal(50, 10, size=mask.shape) if image is None else image
    return Volume(img, spacing=(1.0, 1.0, 2.0)), LabelMap(mask.astype(np.uint8), spacing=(1.0, 1.0, 2.0))


def test_empty_and_absent_label() -> None:
    image, labels = _pair(np.zeros((6, 6, 6)))
    with pytest.raises(InvalidInputError, match="not present"):
        extract_features(image, labels)
    m = np.zeros((6, 6, 6))
    m[2:4, 2:4, 2:4] = 1
    image, labels = _pair(m)
    with pytest.raises(InvalidInputError, match="labels present: 1\\)"):
        extract_features(image, labels, label=3)


def test_one_voxel_mask_is_rejected_by_minimum_dimensions() -> None:
    m = np.zeros((5, 5, 5))
    m[2, 2, 2] = 1
    image, labels = _pair(m)
    with pytest.raises(InvalidInputError, match="minimumROIDimensions"):
        extract_features(image, labels)
    feats = extract_features(image, labels, settings={"minimumROIDimensions": 0}, feature_classes=["firstorder"])
    assert feats["original_firstorder_Variance"] == 0.0
    assert feats["original_firstorder_Mean"] == pytest.approx(image.array[2, 2, 2])


def test_nan_inside_roi_and_geometry_mismatch() -> None:
    m = np.zeros((6, 6, 6))
    m[1:5, 1:5, 1:5] = 1
    img = np.ones((6, 6, 6))
    img[2, 2, 2] = np.nan
    image, labels = _pair(m, img)
    with pytest.raises(InvalidInputError, match="NaN"):
        extract_features(image, labels)
    img[2, 2, 2] = np.inf
    with pytest.raises(MedGenError):
        extract_features(Volume(img, spacing=(1.0, 1.0, 2.0)), labels)
    other = LabelMap(m.astype(np.uint8), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(GeometryMismatchError):
        extract_features(Volume(np.ones((6, 6, 6)), spacing=(1.0, 1.0, 2.0)), other)


def test_settings_validation_and_baseline_string() -> None:
    with pytest.raises(ConfigError):
        RadiomicsSettings(binWidth=0)
    with pytest.raises(ConfigError):
        RadiomicsSettings.from_any({"weightingNorm": "bogus"})
    s = RadiomicsSettings.from_baseline_string("{'binCount': 64, 'distances': [1, 2], 'label': 2}")
    assert s.binCount == 64 and s.distances == (1, 2) and s.label == 2
    with pytest.raises(ConfigError):
        RadiomicsSettings.from_baseline_string("not a dict")


def test_bin_width_edges_anchor_at_multiples() -> None:
    vals = np.array([-37.0, -12.0, 0.0, 24.9, 25.0])
    edges = bin_edges(vals, RadiomicsSettings(binWidth=25))
    assert edges[0] == -50 and np.allclose(np.diff(edges), 25)
    lv = discretize(vals.reshape(1, 1, -1), np.ones((1, 1, 5), bool), RadiomicsSettings(binWidth=25))
    assert lv.ravel().tolist() == [1, 2, 3, 3, 4]


def test_inputs_not_mutated_and_batch_shape_errors() -> None:
    m = np.zeros((8, 8, 8))
    m[2:6, 2:6, 2:6] = 1
    image, labels = _pair(m)
    before = image.array.copy()
    feats = extract_features(image, labels)
    assert np.array_equal(image.array, before)
    assert len(feats) == 107 and all(k.startswith("original_") for k in feats)
    with pytest.raises(InvalidInputError):
        extract_features_batch(np.zeros((2, 4, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(InvalidInputError, match="Unknown radiomics feature class"):
        extract_features(image, labels, feature_classes=["wavelet"])


@pytest.mark.parametrize("settings", [RadiomicsSettings(binWidth=0.1), RadiomicsSettings(binWidth=25),
                                      RadiomicsSettings(binWidth=0.3), RadiomicsSettings(binCount=7)])
def test_batched_discretisation_equals_per_crop_digitize(settings: RadiomicsSettings) -> None:
    """Values sitting exactly on bin edges (where float rounding bites) land where np.digitize puts them."""
    rng = np.random.default_rng(5)
    counts = rng.integers(1, 40, size=25)
    starts = np.concatenate([[0], np.cumsum(counts)])
    width = settings.binWidth if settings.binCount is None else 1.0
    values = rng.integers(-30, 30, size=starts[-1]) * float(width)  # on the edges
    values[::3] += rng.normal(0, 0.01, size=values[::3].shape)
    got = discretize_values(values, starts, settings)
    ref = np.concatenate([np.digitize(values[a:b], bin_edges(values[a:b], settings))
                          for a, b in zip(starts[:-1], starts[1:], strict=True)])
    assert np.array_equal(got, ref)
    assert got.min() >= 1
