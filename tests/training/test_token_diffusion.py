"""`medgen train token-diffusion` on tiny synthetic PH2- and BUSI-style folders: the region-aware loss, export,
attributes, config errors; plus the real PH2 / BUSI readers when ../shared/data is present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from napari_medgen.errors import ConfigError
from napari_medgen.models.token_diffusion import TokenDiffusionModel
from napari_medgen.training import train_from_config
from napari_medgen.training.config import load_config
from napari_medgen.training.lesion_token_dataset import find_cases, load_case
from napari_medgen.training.tasks.token_diffusion import TokenDiffusionTask

SIZE = 32
CLASSES = ("common_nevus", "atypical_nevus", "melanoma")


def _disc(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.integers(h // 3, 2 * h // 3), rng.integers(w // 3, 2 * w // 3), rng.integers(h // 8, h // 4)
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


@pytest.fixture(scope="module")
def ph2_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten 48x40 RGB 'dermoscopy' images (dark disc on pink) with 0/255 masks and a labels CSV."""
    root = tmp_path_factory.mktemp("ph2_like")
    (root / "images").mkdir()
    (root / "lesion_masks").mkdir()
    rng = np.random.default_rng(0)
    rows = ["image_id,clinical_diagnosis_code,clinical_diagnosis"]
    for i in range(10):
        disc = _disc(rng, 40, 48)
        image = np.stack([np.full((40, 48), 220.0), np.full((40, 48), 170.0), np.full((40, 48), 160.0)], -1)
        image[disc] = (90, 50, 40)
        image += rng.normal(0, 8, image.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"IMD{i:03d}.jpg")
        Image.fromarray((disc * 255).astype(np.uint8)).save(root / "lesion_masks" / f"IMD{i:03d}_lesion.png")
        rows.append(f"IMD{i:03d},{i % 3},{CLASSES[i % 3]}")
    (root / "ph2_labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def busi_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("busi_like")
    rng = np.random.default_rng(1)
    for folder in ("benign", "malignant", "normal"):
        (root / folder).mkdir()
        for i in range(3):
            disc = _disc(rng, 36, 36)
            image = rng.normal(90, 15, (36, 36)) - 60 * disc
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / folder / f"{folder} ({i}).png")
            if folder != "normal":
                Image.fromarray((disc * 255).astype(np.uint8)).save(root / folder / f"{folder} ({i})_mask.png")
    return root


def _config(tmp_path: Path, root: Path, layout: str = "ph2", **model: object) -> Path:
    config = {
        "seed": 0, "max_steps": 3, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 2, "log_every": 1,
        "out_dir": str(tmp_path / "run"),
        "data": {"root": str(root), "layout": layout, "image_size": [SIZE, SIZE],
                 "image_channels": 3 if layout == "ph2" else 1, "samples_per_epoch": 8, "max_val_images": 3},
        "model": {"block_out_channels": [16, 16, 16, 16], "cross_attention_dim": 16, "attention_heads": 2,
                  "num_train_timesteps": 100, **model},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _losses(run: Path) -> list[dict[str, float]]:
    return [json.loads(line)["losses"] for line in (run / "loss_log.jsonl").read_text(encoding="utf-8").splitlines()]


def test_train_exports_a_token_model_with_attention_metrics(tmp_path: Path, ph2_like: Path) -> None:
    model_dir = train_from_config("token-diffusion", _config(tmp_path, ph2_like))
    losses = _losses(tmp_path / "run")
    assert len(losses) == 3 and all(np.isfinite(v) for d in losses for v in d.values())
    for d in losses:
        assert d["loss"] == pytest.approx(d["l_rec"] + 0.1 * d["l_attn"], rel=1e-4)
    model = TokenDiffusionModel.from_pretrained(model_dir)
    assert model.attribute_tokens == ["<atypical_nevus>", "<common_nevus>", "<melanoma>"]
    assert model.config["background_token"] == "<skin>" and model.image_size == (SIZE, SIZE)
    assert model.hub_extra["layout"] == "ph2" and len(model.hub_extra["splits"]["test"]) == 2
    assert model.hub_extra["cross_scale"] == SIZE // 4
    val = json.loads((tmp_path / "run" / "val_log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert {"val_mse_t10", "val_attn_iou_t10", "val_attn_iou_t50"} <= set(val)
    assert 0.0 <= val["val_attn_iou_t10"] <= 1.0
    card = (model_dir / "README.md").read_text(encoding="utf-8")
    assert "10 ph2 image/mask pairs" in card


def test_alpha_zero_trains_without_the_attention_term(tmp_path: Path, busi_like: Path) -> None:
    model_dir = train_from_config("token-diffusion", _config(tmp_path, busi_like, "busi", alpha=0.0,
                                                             background_token="<tissue>", domain="ultrasound"))
    for d in _losses(tmp_path / "run"):
        assert d["loss"] == pytest.approx(d["l_rec"], rel=1e-6) and d["l_attn"] > 0
    model = TokenDiffusionModel.from_pretrained(model_dir)
    assert model.config["image_channels"] == 1 and model.attribute_tokens == ["<benign>", "<malignant>"]
    assert model.config["background_token"] == "<tissue>"


def test_attention_loss_has_gradient_into_the_unet(tmp_path: Path, ph2_like: Path) -> None:
    task = TokenDiffusionTask(load_config(_config(tmp_path, ph2_like)))
    models = task.build_models()
    dataset = task.build_dataset()
    items = [dataset.get_item(i, np.random.default_rng(i)) for i in range(2)]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    out = task.compute_loss("main", batch, models, 0)
    out["l_attn"].requires_grad_(False)
    torch.manual_seed(0)
    task.model_config.alpha = 1.0
    loss = task.compute_loss("main", batch, models, 0)["loss"]
    loss.backward()
    grads = [p.grad for n, p in models["model"].named_parameters() if "attn2.to_k" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_config_errors(tmp_path: Path, ph2_like: Path) -> None:
    with pytest.raises(ConfigError, match="layout"):
        TokenDiffusionTask(load_config(_config(tmp_path, ph2_like, "isic")))
    with pytest.raises(ConfigError, match="alpha"):
        TokenDiffusionTask(load_config(_config(tmp_path, ph2_like, alpha=-1)))
    task = TokenDiffusionTask(load_config(_config(tmp_path, tmp_path / "missing")))
    with pytest.raises(ConfigError, match="does not exist"):
        task.build_models()
    task = TokenDiffusionTask(load_config(_config(tmp_path, ph2_like, cross_scale=5)))
    with pytest.raises(ConfigError, match="cross_scale"):
        task.build_models()


@pytest.mark.realdata
def test_real_ph2_and_busi_readers(shared_data: Path) -> None:
    ph2 = find_cases(shared_data / "ph2", "ph2")
    assert len(ph2) >= 150 and {c.attribute for c in ph2} == set(CLASSES)
    image, mask = load_case(ph2[0], (64, 64), 3)
    assert image.shape == (3, 64, 64) and image.min() >= -1.0 and image.max() <= 1.0
    assert 0.02 < mask.mean() < 0.98
    busi = find_cases(shared_data / "busi", "busi")
    assert len(busi) >= 60 and {c.attribute for c in busi} == {"benign", "malignant"}
