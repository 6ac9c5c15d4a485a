"""Composition on a Stable Diffusion backbone: a tiny random-weight pipeline built from configs (no download) and
saved as a local diffusers folder, loaded the way a user's folder is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medgen.core.progress import run_job
from napari_medgen.pipelines.composition import METHODS, compose, place_object
from napari_medgen.pipelines.composition_backbones import EXCEPTIONAL_TOKEN_ID, load_backbone
from napari_medgen.pipelines.composition_solvers import denoise, invert, make_grid
from tests.tiny_sd import make_tiny_sd as tiny_sd_folder

FAST = {"steps": 10, "t_prime": 4, "tau": 2}


def make_tiny_sd(folder: Path) -> Path:
    """16x16 images, 8x8x4 latents, cross-attention in the outer blocks, 8-token prompts, a 100-step schedule."""
    return tiny_sd_folder(folder, train_timesteps=100)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "sd")


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    bg = rng.uniform(20, 200, (40, 50)).astype(np.float32)
    obj = rng.uniform(0, 255, (30, 30)).astype(np.float32)
    mask = np.zeros((30, 30), np.uint8)
    mask[10:20, 12:22] = 1
    return bg, obj, mask


def test_local_folder_loads_as_a_latent_backbone(tiny_sd: Path) -> None:
    bb = load_backbone(str(tiny_sd))
    assert bb.kind == "latent" and bb.working_size() == (16, 16) and bb.latent_factor() == 2
    assert bb.content_free(2).shape == (2, 8, 16)
    assert bb.scheduler_config()["beta_schedule"] == "scaled_linear"


def test_exceptional_prompt_is_the_encoder_without_positions_on_one_repeated_token(tiny_sd: Path) -> None:
    """Same token id everywhere and no positional embedding: computed from one token, equal to the full encoder run
    with the position table zeroed."""
    bb = load_backbone(str(tiny_sd))
    free = bb.content_free(1)
    import copy

    encoder = copy.deepcopy(bb.pipe.text_encoder)
    table = getattr(encoder, "text_model", encoder).embeddings.position_embedding
    with torch.no_grad():
        table.weight.zero_()
        ids = torch.full((1, 8), EXCEPTIONAL_TOKEN_ID, dtype=torch.long)
        full = encoder(ids)[0]
    torch.testing.assert_close(free, full, atol=1e-5, rtol=1e-5)
    assert torch.allclose(free[0, 0], free[0, -1])  # no position information left
    assert not torch.allclose(bb.prompt("abc"), free)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_deterministically_on_stable_diffusion(method: str, tiny_sd: Path) -> None:
    bg, obj, mask = _scene()
    kwargs = {"at": (25, 20), "method": method, "model": str(tiny_sd), "seed": 5, **FAST}
    a = compose(bg, obj, mask, **kwargs)
    b = compose(bg, obj, mask, **kwargs)
    assert np.array_equal(a.image, b.image)
    placed = place_object(bg, obj, mask > 0, at=(25, 20))
    assert np.array_equal(a.mask > 0, placed.object_mask)
    assert np.array_equal(a.image[~a.user_mask], bg[~a.user_mask])
    assert np.isfinite(a.image).all() and a.image.shape == bg.shape


def test_rgb_inputs_stay_rgb_and_a_prompt_changes_the_denoising(tiny_sd: Path) -> None:
    bg, obj, mask = _scene()
    rgb_bg = np.stack([bg, bg * 0.5, 255 - bg], -1)
    rgb_obj = np.stack([obj] * 3, -1)
    plain = compose(rgb_bg, rgb_obj, mask, at=(25, 20), model=str(tiny_sd), **FAST)
    assert plain.image.shape == rgb_bg.shape
    prompted = compose(rgb_bg, rgb_obj, mask, at=(25, 20), model=str(tiny_sd), prompt="a tumour", **FAST)
    assert not np.array_equal(plain.image, prompted.image)
    assert prompted.report["prompt"] == "a tumour"


def test_latent_inversion_round_trip_and_grid(tiny_sd: Path) -> None:
    bb = load_backbone(str(tiny_sd))
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32))
    with torch.no_grad():
        z0 = bb.encode(x)
    assert z0.shape == (1, 4, 8, 8)
    for solver in ("dpmpp", "ddim"):
        grid = make_grid(bb, solver, 10)
        latents = run_job(invert(bb, grid, z0, bb.content_free(1)))
        rec = run_job(denoise(bb, grid, latents[-1], bb.content_free(1), 10, 0))
        assert rec.shape == z0.shape and torch.isfinite(rec).all()
        # a random-weight U-Net is no smooth denoiser; the round trip still stays near the start
        assert float((rec - z0).abs().mean()) < float(z0.abs().mean())


def test_a_folder_that_is_not_a_pipeline_is_refused(tmp_path: Path) -> None:
    from napari_medgen.errors import CheckpointError

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    bg, obj, mask = _scene()
    with pytest.raises(CheckpointError, match="Stable Diffusion"):
        compose(bg, obj, mask, at=(25, 20), model=str(broken), **FAST)
