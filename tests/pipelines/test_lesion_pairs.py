"""Lesion pairs with layout guidance on tiny random-weight models (our token model and a Stable Diffusion pipeline
built from configs): the latent gradient step, that guidance moves attention into the mask, determinism, the
SD folder path, and clear errors for bad layouts and for networks without cross-attention."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medgen.errors import CheckpointError, InvalidInputError
from napari_medgen.models.attention_capture import AttentionStore, capture_attention
from napari_medgen.models.attention_masks import resize_mask, token_map
from napari_medgen.models.token_diffusion import TokenDiffusionModel
from napari_medgen.pipelines.lesion_pairs import (
    _guidance_loss,
    generate_lesion_pairs,
    guidance_step,
    load_generator,
    load_stable_diffusion,
)
from tests.tiny_sd import make_tiny_sd as tiny_sd_folder


def tiny_token_model(seed: int = 0) -> TokenDiffusionModel:
    torch.manual_seed(seed)
    return TokenDiffusionModel(image_size=(32, 32), image_channels=3, attribute_tokens=["mel"],
                               block_out_channels=(16, 16, 16, 16), cross_attention_dim=16, attention_heads=2).eval()


def make_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """32x32 images, 16x16x4 latents, cross-attention in every block, placeholder tokens <lesion> and <skin>."""
    return tiny_sd_folder(folder / "sd", seed=seed, latent_size=16, unet_channels=(32, 32, 32),
                          cross_attention_everywhere=True, width=32, max_length=16, extra_tokens=("<lesion>", "<skin>"),
                          set_alpha_to_one=False)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture
def layout() -> np.ndarray:
    m = np.zeros((32, 32), np.uint8)
    m[4:16, 4:16] = 1
    return m


def _mass(gen: object, z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    cross_scale = gen.scales[0]
    store = AttentionStore(tuple(gen.latent_size), cross_scales=(cross_scale,), self_scales=())
    with torch.no_grad(), capture_attention(gen.net, store):
        gen.eps(z, t)
    a = token_map(store.cross_map(cross_scale), gen.lesion_position, gen.text_positions)
    m = resize_mask(mask, tuple(a.shape[-2:]))
    return (a * m).sum((1, 2)) / a.sum((1, 2))


def test_guidance_step_lowers_the_loss_and_moves_attention_into_the_mask(layout: np.ndarray) -> None:
    gen = load_generator(tiny_token_model())
    mask = torch.from_numpy(np.stack([layout, layout[::-1].copy()])).float()
    z, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)), torch.tensor(900)
    z_new, before = guidance_step(gen, z, t, mask, scale=20.0)
    assert z_new.shape == z.shape and not z_new.requires_grad and float((z_new - z).abs().max()) > 0
    store = AttentionStore((32, 32), cross_scales=gen.scales[:1], self_scales=gen.scales[1:], keep_grad=False)
    with torch.no_grad(), capture_attention(gen.net, store):
        gen.eps(z_new, t)
    after = float(_guidance_loss(gen, store, mask)) / 2
    assert after < before
    assert bool((_mass(gen, z_new, t, mask) > _mass(gen, z, t, mask) + 0.02).all())
    # the update is eta * gradient: half the step size, (about) half the move
    z_half, _ = guidance_step(gen, z, t, mask, scale=10.0)
    assert torch.allclose(z_half - z, (z_new - z) / 2, atol=1e-5)


def test_pairs_shapes_determinism_and_no_mutation(layout: np.ndarray) -> None:
    model = tiny_token_model()
    original = layout.copy()
    a = generate_lesion_pairs(3, layouts=layout, model=model, steps=4, seed=5, batch_size=2, attribute="mel")
    b = generate_lesion_pairs(3, layouts=layout, model=model, steps=4, seed=5, batch_size=3, attribute="mel")
    assert np.array_equal(layout, original)
    assert len(a.pairs) == 3 and a.report["guidance"] is True and a.report["steps"] == 4
    for p, q in zip(a.pairs, b.pairs, strict=True):
        assert p.image.shape == (32, 32, 3) and p.image.dtype == np.float32
        assert p.image.min() >= 0.0 and p.image.max() <= 1.0
        assert p.mask.shape == (32, 32) and set(np.unique(p.mask)) <= {0, 1}
        assert p.used in ("A_C", "A_CS (matrix)") and 0 <= p.mass_in_layout <= 1
        assert np.array_equal(p.layout, layout)
        np.testing.assert_allclose(p.image, q.image, atol=1e-5)  # batch size does not change a pair
    c = generate_lesion_pairs(1, model=model, steps=4, seed=6)
    assert c.report["guidance"] is False and c.pairs[0].layout is None and c.pairs[0].mass_in_layout is None


def test_guidance_raises_attention_mass_in_the_layout(layout: np.ndarray) -> None:
    model = tiny_token_model()
    free = generate_lesion_pairs(2, layouts=layout, model=model, steps=6, seed=1, guidance=False)
    guided = generate_lesion_pairs(2, layouts=layout, model=model, steps=6, seed=1, guidance=True,
                                   guidance_fraction=1.0)
    assert np.mean([p.mass_in_layout for p in guided.pairs]) > np.mean([p.mass_in_layout for p in free.pairs])


def test_bad_layouts_and_models_give_clear_errors(layout: np.ndarray, tiny_seg2img: Path) -> None:
    model = tiny_token_model()
    with pytest.raises(InvalidInputError, match="empty"):
        generate_lesion_pairs(1, layouts=np.zeros((32, 32)), model=model, steps=2)
    with pytest.raises(InvalidInputError, match="whole image"):
        generate_lesion_pairs(1, layouts=np.ones((32, 32)), model=model, steps=2)
    with pytest.raises(InvalidInputError, match="64x64 but the model makes 32x32"):
        generate_lesion_pairs(1, layouts=np.pad(layout, 16), model=model, steps=2)
    with pytest.raises(InvalidInputError, match="Unknown attribute"):
        generate_lesion_pairs(1, layouts=layout, model=model, steps=2, attribute="basalioma")
    with pytest.raises(InvalidInputError, match="refine"):
        generate_lesion_pairs(1, model=model, steps=2, refine="magic")
    with pytest.raises(InvalidInputError, match="n must"):
        generate_lesion_pairs(0, model=model, steps=2)
    from napari_medgen.models.mask_diffusion import MaskDiffusionUNet

    no_tokens = MaskDiffusionUNet(image_size=(16, 16), block_out_channels=(8, 8), norm_num_groups=4)
    with pytest.raises(InvalidInputError, match="no cross-attention"):
        generate_lesion_pairs(1, layouts=layout, model=no_tokens, steps=2)
    with pytest.raises(InvalidInputError, match="without token cross-attention"):
        generate_lesion_pairs(1, layouts=layout, model=str(tiny_seg2img), steps=2)


def test_stable_diffusion_folder_with_layout_guidance(tiny_sd: Path) -> None:
    big = np.zeros((32, 32), np.uint8)
    big[6:22, 8:24] = 1
    result = generate_lesion_pairs(2, layouts=big, model=str(tiny_sd), steps=4, seed=0, cfg=3.0)
    again = generate_lesion_pairs(2, layouts=big, model=str(tiny_sd), steps=4, seed=0, cfg=3.0)
    assert result.report["kind"] == "stable-diffusion" and result.report["eta"] == 0.0
    assert result.report["cross_scale"] == 4 and result.report["self_scale"] == 8
    for p, q in zip(result.pairs, again.pairs, strict=True):
        assert p.image.shape == (32, 32, 3) and p.mask.shape == (32, 32)
        np.testing.assert_allclose(p.image, q.image, atol=1e-5)
    pipe = load_stable_diffusion(tiny_sd)
    gen = load_generator(pipe)
    mask = resize_mask(torch.from_numpy(big).float(), (16, 16))
    z, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor(800)
    z_new, _ = guidance_step(gen, z, t, mask, scale=20.0)
    assert float(_mass(gen, z_new, t, mask)[0]) > float(_mass(gen, z, t, mask)[0])
    with pytest.raises(InvalidInputError, match="does not contain"):
        load_generator(pipe, prompt="a photo of skin")
    with pytest.raises(CheckpointError, match="not a Stable Diffusion folder"):
        load_stable_diffusion(tiny_sd.parent)


@pytest.mark.realdata
def test_bundled_ph2_model_attention_follows_held_out_lesions(shared_data: Path) -> None:
    """The bundled model's <lesion> attention on noised *held-out* PH2 images matches their masks (val metric)."""
    from napari_medgen.hub import load_cached
    from napari_medgen.models.attention_masks import extract_mask, mask_iou
    from napari_medgen.training.lesion_token_dataset import find_cases, load_case

    model = load_cached("token-diffusion-ph2", expected_type="token-diffusion", device="cpu")
    test_ids = set(model.hub_extra["splits"]["test"])
    cases = [c for c in find_cases(shared_data / "ph2", "ph2") if c.case_id in test_ids][:8]
    loaded = [load_case(c, model.image_size, 3) for c in cases]
    x0 = torch.from_numpy(np.stack([i for i, _ in loaded]))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((len(cases),), 100)
    store = AttentionStore(model.image_size, cross_scales=(16,), self_scales=())
    with torch.no_grad(), capture_attention(model, store):
        model(model.training_scheduler().add_noise(x0, noise, t), t, model.token_ids([None] * len(cases)))
    lesion = store.cross_map(16)[..., 1].reshape(len(cases), 16, 16)
    ious = [mask_iou(extract_mask(lesion[i], None, model.image_size, refine="none").mask, m)
            for i, (_, m) in enumerate(loaded)]
    assert np.mean(ious) > 0.6, ious
    pairs = generate_lesion_pairs(1, layouts=loaded[0][1], model="token-diffusion-ph2", steps=4, seed=0)
    assert pairs.pairs[0].image.shape == (64, 64, 3)
