"""Attention capture on diffusers and MONAI networks: shapes per layer and step, unchanged outputs, gradients,
restoration of the original processors, and clear errors for networks without attention."""

from __future__ import annotations

import pytest
import torch

from napari_medgen.errors import InvalidInputError
from napari_medgen.models.attention_capture import (
    AttentionStore,
    attention_layer_names,
    capture_attention,
    check_scales,
    has_cross_attention,
)
from napari_medgen.models.token_diffusion import TokenDiffusionModel


def tiny_token_model(seed: int = 0) -> TokenDiffusionModel:
    torch.manual_seed(seed)
    return TokenDiffusionModel(image_size=(32, 32), image_channels=3, attribute_tokens=["mel"],
                               block_out_channels=(16, 16, 16, 16), cross_attention_dim=16, attention_heads=2).eval()


def test_capture_shapes_per_layer_and_step() -> None:
    model = tiny_token_model()
    x, ids = torch.randn(2, 3, 32, 32), model.token_ids(["mel", None])
    store = AttentionStore((32, 32), cross_scales=(8,), self_scales=(16,), history=True)
    with torch.no_grad(), capture_attention(model, store):
        for t in (900, 500, 10):
            store.new_step()
            model(x, t, ids)
        store.finish()
    assert len(store.steps) == 3
    for step in store.steps:
        assert step["cross"] and step["self"]
        assert all(v.shape == (2, 64, 4) for v in step["cross"].values())  # 8x8 positions x 4 context tokens
        assert all(v.shape == (2, 256, 256) for v in step["self"].values())  # 16x16 self-attention
        assert all(torch.allclose(v.sum(-1), torch.ones(())) for v in step["cross"].values())
    kinds = {kind for kind, _ in store.layers_seen.values()}
    assert kinds == {"cross", "self"}
    assert {s for _, s in store.layers_seen.values()} == {16, 8, 4}  # level 0 (32) has none
    assert set(model.attention_scales()["cross"]) == {16, 8, 4}


def test_capture_does_not_change_outputs_and_restores_processors() -> None:
    model = tiny_token_model()
    before = {name: type(m.processor) for name, m in model.named_modules() if hasattr(m, "processor")}
    x, ids, t = torch.randn(2, 3, 32, 32), model.token_ids([None, None]), torch.tensor([700, 20])
    with torch.no_grad():
        plain = model(x, t, ids)
        everything = AttentionStore((32, 32), cross_scales=(16, 8, 4), self_scales=(16, 8, 4))
        with capture_attention(model, everything):
            explicit = model(x, t, ids)
        with capture_attention(model, AttentionStore((32, 32), cross_scales=(), self_scales=())):
            fused = model(x, t, ids)
    assert torch.allclose(plain, explicit, atol=1e-5) and torch.allclose(plain, fused, atol=1e-5)
    after = {name: type(m.processor) for name, m in model.named_modules() if hasattr(m, "processor")}
    assert before == after
    with pytest.raises(RuntimeError), capture_attention(model, AttentionStore((32, 32))):
        raise RuntimeError("boom")
    assert {name: type(m.processor) for name, m in model.named_modules() if hasattr(m, "processor")} == before


def test_captured_maps_carry_gradients_only_when_asked() -> None:
    model = tiny_token_model()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    store = AttentionStore((32, 32), cross_scales=(8,), self_scales=(), keep_grad=True)
    with capture_attention(model, store):
        model(x, 500, model.token_ids([None]))
    store.cross_map(8)[..., 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    detached = AttentionStore((32, 32), cross_scales=(8,), self_scales=())
    with capture_attention(model, detached):
        model(x, 500, model.token_ids([None]))
    assert not detached.cross_map(8).requires_grad


def test_missing_scale_and_missing_attention_are_clear_errors() -> None:
    model = tiny_token_model()
    store = AttentionStore((32, 32), cross_scales=(8,), self_scales=())
    with torch.no_grad(), capture_attention(model, store):
        model(torch.randn(1, 3, 32, 32), 10, model.token_ids([None]))
    with pytest.raises(InvalidInputError, match="scale 2"):
        store.cross_map(2)
    with pytest.raises(InvalidInputError, match="not at"):
        check_scales(store, (2,), "cross")
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3))
    assert attention_layer_names(plain) == []
    with pytest.raises(InvalidInputError, match="no attention layers"), capture_attention(plain, store):
        pass


def test_has_cross_attention() -> None:
    from diffusers import UNet2DModel

    assert has_cross_attention(tiny_token_model())
    unconditional = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4)
    assert not has_cross_attention(unconditional)


def test_monai_blocks_are_captured_with_gradients() -> None:
    from monai.networks.blocks.crossattention import CrossAttentionBlock
    from monai.networks.blocks.selfattention import SABlock

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self_attn = SABlock(hidden_size=16, num_heads=2, save_attn=True)
            self.cross_attn = CrossAttentionBlock(hidden_size=16, num_heads=2, context_input_size=8, save_attn=True)

        def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            return self.cross_attn(self.self_attn(x), context=context)

    net = Net()
    x = torch.randn(2, 64, 16, requires_grad=True)  # an 8x8 grid of 16 channels
    context = torch.randn(2, 3, 8)
    store = AttentionStore((8, 8), cross_scales=(8,), self_scales=(8,), keep_grad=True)
    with capture_attention(net, store):
        net(x, context)
    cross, self_map = store.cross_map(8), store.self_map(8)
    assert cross.shape == (2, 64, 3) and self_map.shape == (2, 64, 64)
    assert torch.allclose(cross, net.cross_attn.att_mat.mean(1), atol=1e-5)
    assert torch.allclose(self_map, net.self_attn.att_mat.mean(1), atol=1e-5)
    cross[..., 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert has_cross_attention(net)
    assert not net.cross_attn._forward_hooks  # hooks removed
