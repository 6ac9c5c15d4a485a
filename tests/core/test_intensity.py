"""Intensity normalisation: CT windows, MR percentiles, exact inverse, serialisation, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_medgen.core.intensity import (
    CT_WINDOW_PRESETS,
    IntensityNormalizer,
    ct_window,
    percentile_normalizer,
)
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import ConfigError, InvalidInputError


def test_presets_hold_the_standard_reading_windows() -> None:
    assert CT_WINDOW_PRESETS["brain"] == (40.0, 80.0)
    assert CT_WINDOW_PRESETS["soft_tissue"] == (40.0, 400.0)
    assert CT_WINDOW_PRESETS["lung"] == (-600.0, 1500.0)
    assert CT_WINDOW_PRESETS["bone"] == (400.0, 1800.0)
    assert {"subdural", "stroke", "liver", "mediastinum"} <= set(CT_WINDOW_PRESETS)
    for level, width in CT_WINDOW_PRESETS.values():
        assert width > 0 and -1024 <= level <= 3000


def test_ct_window_maps_window_ends_and_clips() -> None:
    hu = np.array([-1000.0, 0.0, 40.0, 80.0, 2000.0])
    norm = IntensityNormalizer.from_ct_preset("Brain")
    assert (norm.low, norm.high, norm.level, norm.width) == (0.0, 80.0, 40.0, 80.0)
    np.testing.assert_allclose(norm.forward(hu), [0.0, 0.0, 0.5, 1.0, 1.0])
    signed = ct_window(hu, "soft tissue", out_range=(-1, 1))
    np.testing.assert_allclose(signed, [-1.0, -0.2, 0.0, 0.2, 1.0], atol=1e-6)
    assert signed.dtype == np.float32
    np.testing.assert_allclose(ct_window(hu, (40.0, 80.0)), norm.forward(hu))


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInputError, match=r"Unknown CT window preset 'kidney'.*lung \(-600/1500\)"):
        IntensityNormalizer.from_ct_preset("kidney")


@settings(max_examples=60, deadline=None)
@given(
    st.floats(-2000, 2000),
    st.floats(1, 4000),
    st.sampled_from([(0.0, 1.0), (-1.0, 1.0)]),
    st.lists(st.floats(0, 1), min_size=1, max_size=20),
)
def test_inverse_undoes_forward_inside_the_window(
    level: float, width: float, out_range: tuple, fractions: list
) -> None:
    norm = IntensityNormalizer.from_window(level, width, out_range)
    values = norm.low + np.asarray(fractions) * width
    mapped = norm.forward(values)
    assert mapped.min() >= out_range[0] and mapped.max() <= out_range[1]
    np.testing.assert_allclose(norm.inverse(mapped), values, atol=1e-6 * (abs(level) + width))


def test_unclipped_mapping_is_linear_beyond_the_window() -> None:
    norm = IntensityNormalizer(0.0, 100.0, clip=False)
    np.testing.assert_allclose(norm.forward(np.array([-50.0, 150.0])), [-0.5, 1.5])
    np.testing.assert_allclose(norm.inverse(np.array([-0.5, 1.5])), [-50.0, 150.0])


def test_percentiles_are_taken_inside_the_mask() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((10, 20, 20), np.float32)
    brain = np.zeros(image.shape, bool)
    brain[2:8, 5:15, 5:15] = True
    image[brain] = rng.uniform(100.0, 300.0, brain.sum())
    image[0, 0, 0] = 1e5  # an outlier outside the brain
    norm = percentile_normalizer(image, brain)
    lo, hi = np.percentile(image[brain], [0.5, 99.5])
    assert (norm.low, norm.high) == pytest.approx((lo, hi))
    assert norm.kind == "percentile" and norm.name == "p0.5-p99.5"
    assert percentile_normalizer(image, "nonzero").high == pytest.approx(np.percentile(image[image != 0], 99.5))
    labels = LabelMap(brain.astype(np.uint8))
    assert percentile_normalizer(Volume(image), labels) == norm
    everything = percentile_normalizer(image, lower=0, upper=100, out_range=(-1, 1))
    assert (everything.low, everything.high, everything.out_min) == (0.0, 1e5, -1.0)
    out = norm.forward(Volume(image, spacing=(2.0, 1.0, 1.0)))
    assert isinstance(out, Volume) and out.spacing == (2.0, 1.0, 1.0) and out.array.dtype == np.float32
    assert out.array[brain].min() >= 0.0 and out.array[brain].max() <= 1.0


def test_dict_roundtrip_through_json() -> None:
    norm = percentile_normalizer(np.arange(100.0).reshape(1, 10, 10), out_range=(-1, 1))
    restored = IntensityNormalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert restored == norm
    preset = IntensityNormalizer.from_ct_preset("lung")
    assert IntensityNormalizer.from_dict(preset.to_dict()) == preset
    assert preset.to_dict()["name"] == "lung" and preset.to_dict()["kind"] == "window"


@pytest.mark.parametrize(
    "data,match",
    [
        ({"low": 0.0}, "missing keys"),
        ({"low": 0.0, "high": 1.0, "gamma": 2.0}, "unknown keys"),
        ({"low": 1.0, "high": 0.0}, "must exceed"),
        ({"low": "zero", "high": 1.0}, "number"),
        ({"low": 0.0, "high": 1.0, "kind": "zscore"}, "kind"),
        ({"low": 0.0, "high": 1.0, "clip": "yes"}, "clip"),
        ([0.0, 1.0], "mapping"),
    ],
)
def test_bad_configs_raise_config_error(data: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        IntensityNormalizer.from_dict(data)  # type: ignore[arg-type]


def test_invalid_input_is_rejected_clearly() -> None:
    norm = IntensityNormalizer.from_ct_preset("liver")
    with pytest.raises(InvalidInputError, match="NaN/Inf"):
        norm.forward(np.array([1.0, np.nan]))
    with pytest.raises(InvalidInputError, match="NaN/Inf"):
        norm.inverse(np.array([np.inf]))
    with pytest.raises(InvalidInputError, match="NaN/Inf"):
        percentile_normalizer(np.array([[[1.0, np.inf]]]))
    with pytest.raises(InvalidInputError, match="constant image"):
        percentile_normalizer(np.full((2, 2, 2), 5.0))
    with pytest.raises(InvalidInputError, match="no voxels"):
        percentile_normalizer(np.ones((2, 2, 2)), np.zeros((2, 2, 2)))
    with pytest.raises(InvalidInputError, match="mask shape"):
        percentile_normalizer(np.ones((2, 2, 2)), np.ones((3, 2, 2)))
    with pytest.raises(InvalidInputError, match="Percentiles"):
        percentile_normalizer(np.arange(8.0), lower=60, upper=40)
    with pytest.raises(InvalidInputError, match="width"):
        IntensityNormalizer.from_window(40, 0)
    with pytest.raises(InvalidInputError, match="out_range"):
        IntensityNormalizer.from_window(40, 80, out_range=(1, 0))
    with pytest.raises(InvalidInputError, match="Label maps"):
        norm.forward(LabelMap(np.zeros((1, 2, 2), np.uint8)))


def test_input_is_not_modified() -> None:
    hu = np.array([-100.0, 50.0, 500.0])
    before = hu.copy()
    IntensityNormalizer.from_ct_preset("mediastinum").forward(hu)
    np.testing.assert_array_equal(hu, before)
