"""Mask codes: +1 inside / -1 outside / 0 unconstrained, decoding, ablation drops, label checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medgen.errors import InvalidInputError
from napari_medgen.models.mask_code import (
    ablation_drops,
    check_class_values,
    check_labels,
    decode_mask,
    encode_mask,
)

VALUES = [1, 2, 5]


def _labels() -> torch.Tensor:
    lab = torch.zeros((2, 6, 7), dtype=torch.int64)
    lab[0, 1:3, 1:4] = 1
    lab[0, 4, 5] = 5
    lab[1, 2:5, 2:6] = 2
    lab[1, 0, 0] = 1
    return lab


def test_encode_values_per_state() -> None:
    lab = _labels()
    code = encode_mask(lab, VALUES)
    assert code.shape == (2, 3, 6, 7) and code.dtype == torch.float32
    for k, v in enumerate(VALUES):
        inside = lab == v
        assert torch.all(code[:, k][inside] == 1.0)
        assert torch.all(code[:, k][~inside] == -1.0)
    # background pixels are -1 in every channel
    assert torch.all(code.permute(0, 2, 3, 1)[lab == 0] == -1.0)


def test_dropped_classes_are_all_zero_and_others_untouched() -> None:
    lab = _labels()
    full = encode_mask(lab, VALUES)
    code = encode_mask(lab, VALUES, dropped=[2])
    assert torch.all(code[:, 1] == 0.0)
    assert torch.equal(code[:, 0], full[:, 0]) and torch.equal(code[:, 2], full[:, 2])
    # a dropped class that is absent from the image is still all zero (unconstrained != absent)
    code5 = encode_mask(torch.zeros((1, 4, 4), dtype=torch.int64), VALUES, dropped=[5])
    assert torch.all(code5[:, 2] == 0.0) and torch.all(code5[:, :2] == -1.0)


def test_per_item_drops() -> None:
    lab = _labels()
    full = encode_mask(lab, VALUES)
    drops = torch.tensor([[True, False, False], [False, False, True]])
    code = encode_mask(lab, VALUES, dropped=drops)
    assert torch.all(code[0, 0] == 0) and torch.equal(code[0, 1:], full[0, 1:])
    assert torch.all(code[1, 2] == 0) and torch.equal(code[1, :2], full[1, :2])
    with pytest.raises(InvalidInputError, match=r"\(B, K\)"):
        encode_mask(lab, VALUES, dropped=torch.zeros((2, 2), dtype=torch.bool))
    with pytest.raises(InvalidInputError, match="B, H, W"):
        encode_mask(lab[0], VALUES)


def test_decode_inverts_encode() -> None:
    lab = _labels()
    assert torch.equal(decode_mask(encode_mask(lab, VALUES), VALUES), lab)
    # a noisy version of the code still decodes to the same labels (strongest channel above 0)
    noisy = encode_mask(lab, VALUES) + 0.3 * torch.randn((2, 3, 6, 7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(decode_mask(noisy, VALUES), lab)
    # a dropped (zero) channel never wins
    assert not torch.any(decode_mask(encode_mask(lab, VALUES, [2]), VALUES) == 2)


def test_decode_smoothing_removes_isolated_pixel_keeps_blob() -> None:
    lab = torch.zeros((1, 12, 12), dtype=torch.int64)
    lab[0, 3:9, 3:9] = 1
    lab[0, 10, 1] = 1  # isolated pixel
    code = encode_mask(lab, [1])
    assert decode_mask(code, [1], smooth=1)[0, 10, 1] == 1
    smoothed = decode_mask(code, [1], smooth=3)
    assert smoothed.shape == lab.shape
    assert smoothed[0, 10, 1] == 0
    assert torch.all(smoothed[0, 4:8, 4:8] == 1)  # interior of the blob survives


def test_ablation_drop_rate_and_seeding() -> None:
    g = torch.Generator().manual_seed(3)
    drops = ablation_drops(4000, 5, 0.3, generator=g)
    assert drops.shape == (4000, 5) and drops.dtype == torch.bool
    assert abs(drops.float().mean().item() - 0.3) < 0.015
    assert torch.all((drops.float().mean(0) - 0.3).abs() < 0.04)  # every class is dropped at ~p
    again = ablation_drops(4000, 5, 0.3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(drops, again)
    assert not ablation_drops(100, 3, 0.0).any()
    assert ablation_drops(100, 3, 1.0).all()
    for bad in (-0.1, 1.5):
        with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
            ablation_drops(2, 2, bad)


def test_check_labels_accepts_bool_and_integral_floats() -> None:
    out = check_labels(np.array([[True, False]]), [1])
    assert out.dtype.kind == "i" and out.tolist() == [[1, 0]]
    out = check_labels(np.array([[0.0, 2.0, 5.0]]), VALUES)
    assert out.dtype.kind == "i" and out.tolist() == [[0, 2, 5]]
    uint = np.array([[0, 1]], dtype=np.uint8)
    assert check_labels(uint, VALUES) is not None
    assert uint.tolist() == [[0, 1]]


def test_check_labels_errors() -> None:
    with pytest.raises(InvalidInputError, match="non-integer"):
        check_labels(np.array([0.0, 1.5]), VALUES)
    with pytest.raises(InvalidInputError, match="non-integer"):
        check_labels(np.array([0.0, np.nan]), VALUES)
    with pytest.raises(InvalidInputError, match=r"\[3, 7\]"):
        check_labels(np.array([0, 1, 3, 7]), VALUES, "my labels")
    with pytest.raises(InvalidInputError, match="integer class labels"):
        check_labels(np.array(["a"]), VALUES)


def test_check_class_values() -> None:
    assert check_class_values((1, 2)) == [1, 2]
    for bad in ((), (0, 1), (1, 1), (-2,)):
        with pytest.raises(InvalidInputError):
            check_class_values(bad)
