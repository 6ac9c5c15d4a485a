"""Region-aware fine-tuning of a local Stable Diffusion folder (a tiny random-weight pipeline built from configs):
placeholder tokens, the attention-alignment loss going down, an all-or-nothing output folder, input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_medgen.errors import CheckpointError, InvalidInputError
from napari_medgen.training.sd_region_finetune import finetune_stable_diffusion
from tests.pipelines.test_lesion_pairs import make_tiny_sd


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sd(tmp_path_factory.mktemp("tiny_sd_ft"))


def _pairs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    images, masks = [], []
    for lo, hi in ((4, 20), (12, 28)):
        m = np.zeros((32, 32), np.uint8)
        m[lo:hi, lo:hi] = 1
        image = np.where(m[..., None] > 0, 0.2, 0.8) + rng.normal(0, 0.05, (32, 32, 3))
        images.append(np.clip(image, 0, 1).astype(np.float32))
        masks.append(m)
    return images, masks


def test_finetune_lowers_the_attention_loss_and_writes_a_loadable_pipeline(tiny_sd: Path, tmp_path: Path) -> None:
    from napari_medgen.pipelines.lesion_pairs import generate_lesion_pairs

    images, masks = _pairs()
    before = [m.copy() for m in masks]
    out = tmp_path / "tuned"
    result = finetune_stable_diffusion(tiny_sd, images, masks, out, steps=24, lr=1e-3, batch_size=2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(masks, before, strict=True))
    losses = result["losses"]
    assert len(losses) == 24 and all(np.isfinite(d["l_rec"]) and np.isfinite(d["l_attn"]) for d in losses)
    first = np.mean([d["l_attn"] for d in losses[:4]])
    last = np.mean([d["l_attn"] for d in losses[-4:]])
    assert last < first
    assert result["cross_scale"] == 4 and result["lesion_position"] < result["background_position"]
    assert (out / "model_index.json").is_file() and not list(tmp_path.glob(".*"))
    pairs = generate_lesion_pairs(1, layouts=masks[0], model=str(out), steps=3)
    assert pairs.pairs[0].mask.shape == (32, 32)


def test_finetune_input_errors(tiny_sd: Path, tmp_path: Path) -> None:
    images, masks = _pairs()
    with pytest.raises(InvalidInputError, match="one mask per image"):
        finetune_stable_diffusion(tiny_sd, images, masks[:1], tmp_path / "a", steps=1)
    with pytest.raises(InvalidInputError, match="32x32"):
        finetune_stable_diffusion(tiny_sd, [np.zeros((16, 16, 3))], [np.zeros((16, 16))], tmp_path / "b", steps=1)
    with pytest.raises(CheckpointError, match="not a Stable Diffusion folder"):
        finetune_stable_diffusion(tmp_path, images, masks, tmp_path / "c", steps=1)
    assert not (tmp_path / "b").exists()
