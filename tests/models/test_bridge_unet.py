"""`BridgeUNet`: architecture contract, the removal (self-attention) path, checkpoints with the VQ-GAN inside,
and the sampler glue of `sample_job` (the scheduler itself: tests/schedulers/test_brownian_bridge.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from napari_medgen.errors import CheckpointError, DimensionError, InvalidInputError
from napari_medgen.hub import from_pretrained
from napari_medgen.models.bridge_unet import BridgeUNet, latent_mask
from napari_medgen.models.vqgan import VQGAN

NAMES = ["firstorder_Mean", "glcm_Contrast", "glszm_ZoneEntropy"]
ARCH: dict[str, Any] = {"channels": (8, 16, 16), "attention_levels": (False, True, True), "num_head_channels": 8,
                        "norm_num_groups": 4, "num_train_timesteps": 20}
LATENT_MEAN, LATENT_STD = [0.25, -0.5], [2.0, 0.5]


def tiny_vqgan() -> VQGAN:
    torch.manual_seed(1)
    vqgan = VQGAN(channels=[8], num_res_channels=8, num_embeddings=16, embedding_dim=2,
                  normalization="percentile_foreground", patch_size=[16, 16, 16])
    vqgan.hub_extra = {"latent_mean": list(LATENT_MEAN), "latent_std": list(LATENT_STD)}
    return vqgan.eval()


def spec(vqgan: VQGAN | None = None) -> dict[str, Any]:
    return BridgeUNet.vqgan_spec(vqgan or tiny_vqgan())


def wake_zero_layers(module: torch.nn.Module, seed: int = 0) -> None:
    """MONAI zero-initialises every residual branch's last conv and the output conv, so an untrained U-Net
    returns 0 whatever its inputs; random weights there make every input path observable in the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.ndim > 1 and not parameter.any():
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=gen))


def tiny_bridge(**overrides: Any) -> BridgeUNet:
    vqgan = tiny_vqgan()
    torch.manual_seed(0)
    settings = {**ARCH, **overrides}
    bridge = BridgeUNet(vqgan=spec(vqgan), feature_names=NAMES, **settings)
    bridge.vqgan.load_state_dict(vqgan.state_dict())
    wake_zero_layers(bridge.unet)
    return bridge.eval()


def latents(batch: int = 2, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(x_t, y, latent mask, timesteps, features) for a batch of ``size``^3 latents."""
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randn(batch, 2, size, size, size, generator=gen)
    y = torch.randn(batch, 2, size, size, size, generator=gen)
    mask = torch.zeros(batch, 1, size, size, size)
    mask[..., 2:6, 2:6, 2:6] = 1.0
    mask[..., 2:6, 2:6, 6] = 0.5
    t = torch.tensor([3, 17][:batch])
    features = torch.randn(batch, len(NAMES), generator=gen)
    return x_t, y, mask, t, features


# ---- construction -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attention_levels": (False, False, True)}, "two or more levels"),
        ({"channels": (8, 16, 32)}, "same width"),
        ({"channels": (8, 16), "attention_levels": (True, True)}, "same width"),
        ({"num_head_channels": 6}, "num_head_channels 6 must divide the attention width 16"),
        ({"norm_num_groups": 3}, "norm_num_groups 3 must divide"),
        ({"attention_levels": (False, True)}, "one entry per level"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
    ],
)
def test_architecture_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        BridgeUNet(vqgan=spec(), feature_names=NAMES, **{**ARCH, **overrides})


@pytest.mark.parametrize("names", [[], ["a", "b", "a"]])
def test_feature_names_must_be_distinct_and_present(names: list[str]) -> None:
    with pytest.raises(InvalidInputError, match="feature_names"):
        BridgeUNet(vqgan=spec(), feature_names=names, **ARCH)


@pytest.mark.parametrize(
    "bad",
    [
        {},
        "vqgan-brain",  # a name instead of the spec
        {"config": tiny_vqgan().config, "latent_mean": [0.0, 0.0]},  # no latent_std
        {"config": {**tiny_vqgan().config, "no_such_argument": 1}, "latent_mean": [0, 0], "latent_std": [1, 1]},
        {"config": tiny_vqgan().config, "latent_mean": [0.0], "latent_std": [1.0]},  # 1 channel stats for 2
    ],
)
def test_bad_vqgan_spec_is_a_checkpoint_error(bad: Any) -> None:
    with pytest.raises(CheckpointError):
        BridgeUNet(vqgan=bad, feature_names=NAMES, **ARCH)


def test_vqgan_spec_needs_a_vqgan_with_latent_statistics() -> None:
    with pytest.raises(CheckpointError, match="needs a 'vqgan' checkpoint"):
        BridgeUNet.vqgan_spec(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    bare = tiny_vqgan()
    bare.hub_extra = {}
    with pytest.raises(CheckpointError, match="no latent statistics"):
        BridgeUNet.vqgan_spec(bare)
    got = spec()
    assert got["latent_mean"] == LATENT_MEAN and got["latent_std"] == LATENT_STD
    assert got["config"] == tiny_vqgan().config


def test_contract_properties() -> None:
    bridge = tiny_bridge()
    assert bridge.latent_channels == 2 and bridge.vqgan.downsample_factor == 2
    assert bridge.size_multiple == 2 * 4  # VQ-GAN factor x two U-Net halvings
    assert bridge.normalization == "percentile_foreground"
    assert bridge.feature_names == NAMES
    assert bridge.scheduler().num_train_timesteps == 20 and bridge.scheduler(eta=0.0).eta == 0.0


# ---- forward -------------------------------------------------------------------------------------------
def test_forward_shapes_and_shape_errors() -> None:
    bridge = tiny_bridge()
    x_t, y, mask, t, features = latents()
    with torch.no_grad():
        assert bridge(x_t, y, mask, t, features).shape == x_t.shape
        assert bridge(x_t, y, mask, t, None).shape == x_t.shape
        assert bridge(x_t[:1, :, :4, :4, :4], y[:1, :, :4, :4, :4], mask[:1, :, :4, :4, :4], t[:1],
                      features[:1]).shape == (1, 2, 4, 4, 4)
    with pytest.raises(DimensionError, match="x_t and y must both be latents"):
        bridge(x_t[:, :1], y[:, :1], mask, t, features)
    with pytest.raises(DimensionError, match="x_t and y"):
        bridge(x_t, y[:, :, :4], mask, t, features)
    with pytest.raises(DimensionError, match="latent mask"):
        bridge(x_t, y, mask[:, :, :4], t, features)
    with pytest.raises(DimensionError, match="multiples of 4"):
        bridge(x_t[..., :6], y[..., :6], mask[..., :6], t, features)
    with pytest.raises(DimensionError, match="texture features"):
        bridge(x_t, y, mask, t, features[:, :2])
    with pytest.raises(DimensionError, match="2 feature vectors for a batch of 1"):
        bridge(x_t[:1], y[:1], mask[:1], t[:1], features)


def test_removal_path_differs_from_synthesis_with_the_same_weights() -> None:
    bridge = tiny_bridge()
    x_t, y, mask, t, features = latents()
    with torch.no_grad():
        synthesis = bridge(x_t, y, mask, t, features)
        removal = bridge(x_t, y, mask, t, None)
        other_texture = bridge(x_t, y, mask, t, features + 1.0)
    assert torch.isfinite(removal).all() and torch.isfinite(synthesis).all()
    assert not torch.allclose(synthesis, removal, atol=1e-4)
    assert not torch.allclose(synthesis, other_texture, atol=1e-4)  # the tokens reach the output


def test_removal_self_attends_with_the_same_projections_and_ignores_the_tokenizer() -> None:
    """Seed 003 eq. 8: without features every cross-attention block gets context None, and then computes
    attention with its own W_K / W_V applied to the image tokens -- exactly attn2(x, context=x)."""
    bridge = tiny_bridge()
    x_t, y, mask, t, features = latents()
    blocks = {name: module for name, module in bridge.unet.named_modules() if name.endswith("attn2")}
    assert len(blocks) == 7  # 2 down + middle + 4 up attention blocks
    calls: list[tuple[str, torch.Tensor, Any, torch.Tensor]] = []

    def recorder(name: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            calls.append((name, args[0].detach().clone(), kwargs.get("context"), output.detach().clone()))
        return hook

    handles = [m.register_forward_hook(recorder(n), with_kwargs=True) for n, m in blocks.items()]
    try:
        with torch.no_grad():
            removal = bridge(x_t, y, mask, t, None)
            removal_calls = list(calls)
            calls.clear()
            synthesis = bridge(x_t, y, mask, t, features)
    finally:
        for handle in handles:
            handle.remove()
    assert {c[0] for c in removal_calls} == set(blocks) and all(c[2] is None for c in removal_calls)
    tokens = bridge.tokens(features)
    assert {c[0] for c in calls} == set(blocks)
    assert all(torch.equal(c[2], tokens) for c in calls) and tokens.shape == (2, len(NAMES), 16)
    with torch.no_grad():
        for name, x, _, output in removal_calls:  # the same to_q / to_k / to_v, keys and values from x itself
            assert torch.allclose(blocks[name](x, context=x), output, atol=1e-5), name
            assert not torch.allclose(blocks[name](x, context=tokens), output, atol=1e-3), name

    with torch.no_grad():  # new tokenizer weights: the removal output cannot change, the synthesis one must
        for parameter in bridge.tokenizer.parameters():
            parameter.add_(torch.randn_like(parameter))
        assert torch.equal(bridge(x_t, y, mask, t, None), removal)
        assert not torch.allclose(bridge(x_t, y, mask, t, features), synthesis, atol=1e-4)
        # ... while the image tokens do matter on the removal path
        assert not torch.allclose(bridge(x_t + 0.5, y, mask, t, None), removal, atol=1e-4)


# ---- VQ-GAN inside: encode / decode, region, train mode, checkpoints -----------------------------------
def test_encode_decode_use_the_vqgan_latent_statistics() -> None:
    bridge = tiny_bridge()
    vqgan = tiny_vqgan()
    images = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    z = bridge.encode(images)
    assert z.shape == (2, 2, 8, 8, 8)
    mean, std = torch.tensor(LATENT_MEAN).view(1, 2, 1, 1, 1), torch.tensor(LATENT_STD).view(1, 2, 1, 1, 1)
    with torch.no_grad():
        raw = vqgan.encode(images)
    assert torch.allclose(z, (raw - mean) / std, atol=1e-6)
    decoded = bridge.decode(z)
    assert decoded.shape == images.shape and decoded.min() >= -1.0 and decoded.max() <= 1.0
    with torch.no_grad():
        assert torch.allclose(decoded, vqgan.decode(raw).clamp(-1, 1), atol=1e-5)


def test_region_latent_is_the_fraction_of_edited_voxels() -> None:
    bridge = tiny_bridge()
    mask = torch.zeros(1, 1, 16, 16, 16)
    mask[..., 0:2, 0:2, 0:2] = 1.0  # a full latent voxel
    mask[..., 4:6, 4:6, 4] = 1.0  # half of one
    mask[..., 8, 8, 8] = 1.0  # one eighth of one
    region = bridge.region_latent(mask)
    assert region.shape == (1, 1, 8, 8, 8) and region.dtype == torch.float32
    assert float(region[0, 0, 0, 0, 0]) == 1.0
    assert float(region[0, 0, 2, 2, 2]) == 0.5
    assert float(region[0, 0, 4, 4, 4]) == 0.125
    assert float(region.sum()) == pytest.approx(float(mask.sum()) / 8)
    boolean = latent_mask(mask.bool(), 1)
    assert boolean.dtype == torch.float32 and torch.equal(boolean, mask)
    with pytest.raises(DimensionError, match=r"\(batch, 1, z, y, x\)"):
        latent_mask(mask[0], 2)
    with pytest.raises(DimensionError):
        latent_mask(mask.expand(1, 2, 16, 16, 16), 2)


def test_train_mode_keeps_the_vqgan_frozen_in_eval() -> None:
    bridge = tiny_bridge()
    bridge.train()
    assert bridge.training and bridge.unet.training and bridge.tokenizer.training
    assert not bridge.vqgan.training and not any(m.training for m in bridge.vqgan.modules())
    assert not any(p.requires_grad for p in bridge.vqgan.parameters())
    assert all(p.requires_grad for p in bridge.unet.parameters())
    codebook = bridge.vqgan.codebook.detach().clone()
    bridge.encode(torch.rand(1, 1, 16, 16, 16) * 2 - 1)  # an EMA quantiser in train mode would move its codes
    assert torch.equal(bridge.vqgan.codebook, codebook)
    bridge.eval()
    assert not bridge.training and not bridge.unet.training


def test_checkpoint_round_trip_keeps_the_vqgan_inside(tmp_path: Path) -> None:
    bridge = tiny_bridge()
    vqgan = tiny_vqgan()
    extra = {"spacing_mm": [1.0, 1.0, 1.0], "fill_value": 0.0}
    folder = bridge.save_pretrained(tmp_path / "bridge", extra=extra, card={"title": "test"})
    loaded = BridgeUNet.from_pretrained(folder)
    assert isinstance(loaded, BridgeUNet) and not loaded.training and loaded.hub_extra == extra
    assert loaded.config == bridge.config and loaded.config["vqgan"]["latent_std"] == LATENT_STD
    assert set(vqgan.state_dict()) == {k.removeprefix("vqgan.") for k in loaded.state_dict() if k.startswith("vqgan.")}
    for key, value in vqgan.state_dict().items():
        assert torch.equal(loaded.vqgan.state_dict()[key], value), key
    x_t, y, mask, t, features = latents()
    with torch.no_grad():
        assert torch.equal(loaded(x_t, y, mask, t, features), bridge(x_t, y, mask, t, features))
        assert torch.equal(loaded(x_t, y, mask, t, None), bridge(x_t, y, mask, t, None))
    images = torch.rand(1, 1, 16, 16, 16) * 2 - 1
    assert torch.equal(loaded.encode(images), bridge.encode(images))
    with pytest.raises(CheckpointError, match="'bridge-unet' model"):
        from_pretrained(folder, expected_type="vqgan")


# ---- sampling -----------------------------------------------------------------------------------------
def test_sample_job_reports_every_step_and_is_deterministic_per_seed() -> None:
    bridge = tiny_bridge()
    _, y, mask, _, features = latents(batch=1)

    def run(seed: int, feats: torch.Tensor | None = features) -> tuple[list[int], torch.Tensor]:
        job = bridge.sample_job(y, mask, feats, steps=4, generator=torch.Generator().manual_seed(seed))
        done = []
        while True:
            try:
                done.append(next(job))
            except StopIteration as stop:
                return done, stop.value

    done, first = run(7)
    assert done == [1, 2, 3, 4] and first.shape == y.shape and torch.isfinite(first).all()
    assert torch.equal(run(7)[1], first)
    assert not torch.equal(run(8)[1], first)
    removal = run(7, None)[1]
    assert not torch.equal(removal, first)
    sampled = bridge.sample(y, mask, features, steps=4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(sampled, first)
    y_before = y.clone()
    bridge.sample(y, mask, None, steps=3, eta=0.0)
    assert torch.equal(y, y_before)  # the condition latent is not sampled in place


def test_sampler_glue_recovers_x0_from_an_oracle_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """A network that returns the exact ``grad`` objective (x_t - x0) for a known x0: with eta = 0 every
    intermediate state is on the bridge mean and the result is x0 -- if the glue passes the right
    (x_t, y, mask, timestep, features) in the right order."""
    bridge = tiny_bridge()
    assert bridge.config["objective"] == "grad"
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 2, 8, 8, 8, generator=gen)
    y = torch.randn(2, 2, 8, 8, 8, generator=gen) + 2.0
    mask = torch.rand(2, 1, 8, 8, 8, generator=gen)
    features = torch.randn(2, len(NAMES), generator=gen)
    scheduler = bridge.scheduler()
    steps = 5
    scheduler.set_timesteps(steps)
    seen: list[int] = []

    def oracle(self: BridgeUNet, x_t: torch.Tensor, y_in: torch.Tensor, mask_in: torch.Tensor,
               timesteps: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
        assert y_in is y and mask_in is mask and feats is features
        assert timesteps.shape == (2,) and timesteps.dtype == torch.int64 and len(set(timesteps.tolist())) == 1
        t = int(timesteps[0])
        m = float(scheduler.m_t[t])
        mean = (1 - m) * x0 + m * y
        assert float((x_t - mean).abs().max()) < 0.005 * float((y - x0).abs().max()), t  # x_t on the mean
        seen.append(t)
        return x_t - x0

    monkeypatch.setattr(BridgeUNet, "forward", oracle)
    result = bridge.sample(y, mask, features, steps=steps, eta=0.0)
    assert seen == scheduler.timesteps.tolist() and seen[0] == 19 and seen[-1] == 0
    assert torch.allclose(result, x0, atol=1e-5)
