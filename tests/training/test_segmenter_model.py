"""The Segmenter network: its preprocessing contract and whole-image prediction in 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medgen.core.volume import Volume
from napari_medgen.errors import InvalidInputError
from napari_medgen.models.segmenter import Segmenter, normalize_intensity


def test_normalizations() -> None:
    arr = np.linspace(-1000, 1000, 101, dtype=np.float32).reshape(1, 1, 101)
    assert normalize_intensity(arr, "percentile").min() == 0.0 and normalize_intensity(arr, "percentile").max() == 1.0
    z = normalize_intensity(arr, "zscore")
    assert abs(float(z.mean())) < 1e-5 and float(z.std()) == pytest.approx(1.0, rel=1e-4)
    ct = normalize_intensity(arr, "ct:40,400")
    assert ct[0, 0, 0] == 0.0 and ct[0, 0, -1] == 1.0
    assert np.array_equal(normalize_intensity(arr, "ct:brain"), normalize_intensity(arr, "ct:40,80"))
    assert not normalize_intensity(np.full((2, 2, 2), 7.0), "percentile").any()  # constant image -> zeros
    assert normalize_intensity(arr, "none") is not arr
    with pytest.raises(InvalidInputError, match="Unknown normalization"):
        Segmenter(normalization="magic")


def test_2d_prediction_on_any_image_size_and_with_resizing() -> None:
    torch.manual_seed(0)
    model = Segmenter(spatial_dims=2, num_classes=3, channels=[4, 8, 8], strides=[2, 2], input_size=[16, 16])
    volume = Volume(np.random.default_rng(0).normal(size=(3, 21, 13)).astype(np.float32), spacing=(0.5, 0.5, 2))
    labels = model.segment(volume)
    assert labels.shape == (3, 21, 13) and labels.same_grid(volume)
    assert set(np.unique(labels.array)) <= {0, 1, 2}
    assert model.predict_logits(volume.array[0]).shape == (3, 1, 21, 13)  # a bare 2D slice works too
    assert model.training  # predict restores the mode it found


def test_3d_prediction_uses_sliding_windows() -> None:
    torch.manual_seed(0)
    model = Segmenter(spatial_dims=3, channels=[4, 8], strides=[2], num_res_units=0, patch_size=[8, 8, 8])
    prediction = model.predict(np.random.default_rng(1).normal(size=(9, 12, 17)).astype(np.float32))
    assert prediction.shape == (9, 12, 17) and prediction.dtype == np.uint8


def test_invalid_architectures() -> None:
    with pytest.raises(InvalidInputError, match="divisible by 4"):
        Segmenter(channels=[4, 8, 8], strides=[2, 2], patch_size=[10, 12])
    with pytest.raises(InvalidInputError, match="strides one fewer"):
        Segmenter(channels=[4, 8], strides=[2, 2])
    with pytest.raises(InvalidInputError, match="num_classes"):
        Segmenter(num_classes=1)
    with pytest.raises(InvalidInputError, match="only for 2D"):
        Segmenter(spatial_dims=3, input_size=[16, 16])
