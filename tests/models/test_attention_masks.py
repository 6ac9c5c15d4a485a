"""The DiDGen attention losses and the mask read-out on synthetic attention maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medgen.errors import InvalidInputError
from napari_medgen.models.attention_masks import (
    attention_alignment_loss,
    check_layout,
    cross_attention_loss,
    extract_mask,
    mask_iou,
    otsu_threshold,
    refine_with_self_attention,
    self_attention_locality,
    self_attention_loss,
    token_map,
)


def square_mask(side: int = 16, lo: int = 4, hi: int = 10) -> torch.Tensor:
    m = torch.zeros(side, side)
    m[lo:hi, lo:hi] = 1
    return m


def local_self_attention(side: int, radius: float = 1.5) -> torch.Tensor:
    """Each position attends to its neighbourhood (Gaussian in distance): the 'local' case."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    pts = torch.stack([yy.flatten(), xx.flatten()], 1).float()
    return torch.softmax(-torch.cdist(pts, pts) ** 2 / (2 * radius ** 2), dim=-1)


def test_alignment_loss_is_zero_for_attention_shaped_like_the_mask_and_has_gradient() -> None:
    mask = square_mask()[None]
    m = mask.reshape(1, -1)
    perfect = torch.stack([torch.full_like(m, 0.1), m * 0.5, (1 - m) * 0.3, torch.zeros_like(m)], -1)
    assert float(attention_alignment_loss(perfect, mask, 1, 2)) < 1e-10
    wrong = perfect[..., [0, 2, 1, 3]].clone().requires_grad_(True)  # lesion and background swapped
    loss = attention_alignment_loss(wrong, mask, 1, 2)
    assert float(loss.detach()) == pytest.approx(1.0, abs=1e-6)  # 1/2 (1 + 1): every pixel off by one in both maps
    loss.backward()
    assert wrong.grad is not None and wrong.grad.abs().sum() > 0
    # a 64x64 mask is area-downsampled to the 16x16 attention grid
    big = torch.nn.functional.interpolate(mask[:, None], scale_factor=4)[:, 0]
    assert float(attention_alignment_loss(perfect, big, 1, 2)) < 1e-10


def test_cross_attention_loss_values() -> None:
    mask = square_mask()[None]
    inside = mask / mask.sum()
    assert float(cross_attention_loss(inside, mask)) == pytest.approx(1 - 1 / 36, abs=1e-6)
    ones_inside = mask.clone()
    assert float(cross_attention_loss(ones_inside, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(cross_attention_loss(1 - mask, mask)) == pytest.approx(2.0, abs=1e-6)
    uniform = torch.full_like(mask, 0.5)
    assert float(cross_attention_loss(uniform, mask)) == pytest.approx(1.0, abs=1e-6)


def test_self_attention_loss_local_vs_global() -> None:
    mask = square_mask()
    block = mask.reshape(-1)
    inside_only = (block[None, :] * block[:, None]) + (1 - block[:, None]) * (1 - block[None, :])
    inside_only = inside_only / inside_only.sum(-1, keepdim=True)
    assert float(self_attention_loss(inside_only[None], mask)) == pytest.approx(0.0, abs=1e-7)
    uniform = torch.full((1, 256, 256), 1 / 256)
    assert float(self_attention_loss(uniform, mask)) == pytest.approx(1 / 256, rel=1e-5)
    assert float(self_attention_loss(local_self_attention(16)[None], mask)) < float(self_attention_loss(uniform, mask))


def test_token_map_excludes_the_sink_and_sharpens() -> None:
    cross = torch.zeros(1, 16, 4)
    cross[..., 0] = 0.9  # the sink token takes most mass
    cross[0, :8, 1] = 0.08
    cross[0, 8:, 1] = 0.01
    cross[..., 2] = 0.1 - cross[..., 1]
    a = token_map(cross, 1, [1, 2, 3], shape=(4, 4), smooth=False)
    assert a.shape == (1, 4, 4)
    assert float(a[0, :2].min()) > 0.9 and float(a[0, 2:].max()) < 0.1
    with pytest.raises(InvalidInputError, match="not among"):
        token_map(cross, 0, [1, 2, 3], shape=(4, 4))


def test_refinement_both_readings_recover_a_region_from_noisy_cross_attention() -> None:
    side = 16
    mask = square_mask(side, 3, 11)
    rng = np.random.default_rng(0)
    noisy = mask * 0.6 + torch.from_numpy(rng.random((side, side)).astype(np.float32)) * 0.7
    blocks = mask.reshape(-1)
    same = (blocks[:, None] == blocks[None, :]).float() * local_self_attention(side, 2.0)
    same = same / same.sum(-1, keepdim=True)
    raw_iou = mask_iou(noisy.numpy() > otsu_threshold(noisy.numpy()), mask.numpy())
    for mode in ("matrix", "elementwise"):
        refined = refine_with_self_attention(noisy[None], same[None], tau=4, mode=mode)[0]
        iou = mask_iou(refined.numpy() > otsu_threshold(refined.numpy()), mask.numpy())
        assert iou > max(0.9, raw_iou), (mode, iou, raw_iou)
    with pytest.raises(InvalidInputError, match="power mode"):
        refine_with_self_attention(noisy[None], same[None], mode="cubed")


def test_locality_and_auto_fallback() -> None:
    side = 16
    uniform = torch.full((side * side, side * side), 1 / side ** 2)
    assert abs(self_attention_locality(uniform[None])) < 1e-5
    assert self_attention_locality(local_self_attention(side)[None]) > 0.7
    blob = square_mask(8, 2, 6)
    result = extract_mask(blob, uniform, (32, 32), refine="auto")
    assert result.used == "A_C" and result.locality == pytest.approx(0.0, abs=1e-5)
    target = square_mask(32, 8, 24).numpy()
    assert mask_iou(result.mask, target) > 0.8
    local = extract_mask(blob, local_self_attention(side), (32, 32), refine="auto")
    assert local.used == "A_CS (matrix)" and mask_iou(local.mask, target) > 0.7
    forced = extract_mask(blob, local_self_attention(side), (32, 32), refine="elementwise")
    assert forced.used == "A_CS (elementwise)"
    assert forced.mask.dtype == np.uint8 and set(np.unique(forced.mask)) <= {0, 1}
    with pytest.raises(InvalidInputError, match="needs the self-attention"):
        extract_mask(blob, None, (32, 32), refine="matrix")


def test_closing_fills_small_holes() -> None:
    blob = square_mask(32, 6, 26)
    blob[15, 15] = 0  # a one-pixel hole
    out = extract_mask(blob, None, (32, 32), refine="none", closing_radius=1)
    assert out.mask[15, 15] == 1


def test_otsu_splits_a_bimodal_sample() -> None:
    rng = np.random.default_rng(1)
    low, high = rng.normal(0.2, 0.03, 500), rng.normal(0.8, 0.03, 300)
    threshold = otsu_threshold(np.concatenate([low, high]))
    assert low.max() < threshold < high.min()


def test_check_layout_errors_and_no_mutation() -> None:
    good = np.zeros((32, 32), np.uint8)
    good[4:9, 4:9] = 7
    copy = good.copy()
    out = check_layout(good, (32, 32))
    assert out.max() == 1 and np.array_equal(good, copy)
    with pytest.raises(InvalidInputError, match="empty"):
        check_layout(np.zeros((32, 32)), (32, 32))
    with pytest.raises(InvalidInputError, match="whole image"):
        check_layout(np.ones((32, 32)), (32, 32))
    with pytest.raises(InvalidInputError, match="16x16 but the model makes 32x32"):
        check_layout(np.ones((16, 16)), (32, 32))
    with pytest.raises(InvalidInputError, match="2D"):
        check_layout(np.ones((2, 32, 32)), (32, 32))
