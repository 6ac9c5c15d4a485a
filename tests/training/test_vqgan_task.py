"""``medgen train vqgan``: ROI-weighted loss, delayed discriminator, codebook re-seeding, export with latent stats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from napari_medgen.core.io import write_volume
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import ConfigError, InvalidInputError
from napari_medgen.models.vqgan import VQGAN
from napari_medgen.training import train_from_config
from napari_medgen.training.tasks.vqgan import reset_dead_codes, roi_weighted_l1


@pytest.fixture(scope="module")
def brats_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five BRATS-style case folders: a 24^3 'FLAIR' (bright textured sphere in a smooth head) + OTMultiClass."""
    root = tmp_path_factory.mktemp("brats_like")
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:24, :24, :24]
    for i in range(5):
        head = (zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 < 11**2
        c = rng.integers(8, 16, size=3)
        tumour = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < rng.integers(3, 6) ** 2
        image = np.where(head, 1.0 + 0.1 * rng.normal(size=head.shape), -2.0)
        image = np.where(tumour, 3.0 + 0.5 * rng.normal(size=head.shape), image).astype(np.float32)
        labels = np.where(tumour, 2, 0).astype(np.uint8)
        labels[tuple(c)] = 4
        case = root / f"pat{i:02d}"
        case.mkdir()
        write_volume(Volume(image, spacing=(1.0, 1.0, 1.0)), case / f"Flair_pat{i}.nii.gz")
        write_volume(LabelMap(labels, spacing=(1.0, 1.0, 1.0)), case / "OTMultiClass.nii.gz")
    return root


def write_config(path: Path, root: Path, **overrides: Any) -> Path:
    config: dict[str, Any] = {
        "seed": 3,
        "max_steps": 4,
        "batch_size": 2,
        "lr": 1e-3,
        "checkpoint_every": 100,
        "log_every": 1,
        "out_dir": str(path.parent / "run"),
        "card": {"licence": "synthetic test data"},
        "data": {"root": str(root), "case_image": "Flair*.nii.gz", "case_label": "OTMultiClass.nii.gz",
                 "patch_size": [16, 16, 16], "samples_per_epoch": 8, "val_fraction": 0.2, "test_fraction": 0.2,
                 "eval_patches": 4, "latent_stats_patches": 4},
        "model": {"channels": [8], "num_res_channels": 8, "num_embeddings": 16, "embedding_dim": 3,
                  "disc_channels": 4, "disc_layers": 1, "adversarial_start": 2, "adversarial_weight": 0.1,
                  "codebook_reset_every": 2},
    }
    for key, value in overrides.items():
        if key in ("data", "model"):
            config[key].update(value)
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_roi_weighting_counts_tumour_errors_more() -> None:
    target = torch.zeros(1, 1, 4, 4, 4)
    roi = torch.zeros(1, 1, 4, 4, 4, dtype=torch.int64)
    roi[..., :2, :2, :2] = 2  # 8 of 64 voxels
    inside, outside = target.clone(), target.clone()
    inside[..., 0, 0, 0] = 1.0  # one wrong voxel inside the ROI ...
    outside[..., 3, 3, 3] = 1.0  # ... or one equally wrong voxel outside it
    total_in, l1_in, roi_in = roi_weighted_l1(inside, target, roi, roi_weight=10.0)
    total_out, l1_out, roi_out = roi_weighted_l1(outside, target, roi, roi_weight=10.0)
    assert float(l1_in) == float(l1_out) == pytest.approx(1 / 64)
    assert float(roi_in) == pytest.approx(1 / 8) and float(roi_out) == 0.0
    assert float(total_in) == pytest.approx(1 / 64 + 10 / 8) and float(total_out) == pytest.approx(1 / 64)
    # no ROI in the batch: plain L1, no division by zero
    total, l1, roi_l1 = roi_weighted_l1(inside, target, torch.zeros_like(roi), roi_weight=10.0)
    assert float(roi_l1) == 0.0 and float(total) == float(l1)
    with pytest.raises(InvalidInputError, match="share batch and spatial sizes"):
        roi_weighted_l1(inside, target, roi[..., :2], 1.0)


def test_dead_codes_are_reseeded_from_encoder_outputs() -> None:
    torch.manual_seed(0)
    model = VQGAN(channels=[4], num_res_channels=4, num_embeddings=8, embedding_dim=2)
    quantizer = model.net.quantizer.quantizer
    quantizer.ema_cluster_size.data[:] = torch.tensor([50.0, 40.0, 0.0, 0.0, 30.0, 0.01, 45.0, 35.0])
    kept = model.codebook[[0, 1, 4, 6, 7]].clone()
    x = torch.rand(1, 1, 8, 8, 8) * 2 - 1
    assert reset_dead_codes(model, x, dead_fraction=0.01) == 3
    assert torch.equal(model.codebook[[0, 1, 4, 6, 7]], kept)
    encodings = model.encode_continuous(x).detach().permute(0, 2, 3, 4, 1).reshape(-1, 2)
    for code in (2, 3, 5):  # each re-seeded code now sits on (within the jitter of) a real encoder output
        assert float(torch.cdist(model.codebook[code][None].detach(), encodings).min()) < 0.01
        assert torch.equal(quantizer.ema_w[code], model.codebook[code])
    assert float(quantizer.ema_cluster_size[2]) == 1.0


def test_training_with_delayed_discriminator_exports_latent_statistics(tmp_path: Path, brats_like: Path) -> None:
    config = write_config(tmp_path / "vq.yaml", brats_like, grad_accum=2)
    model_dir = train_from_config("vqgan", config)
    lines = [json.loads(s) for s in (tmp_path / "run" / "loss_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    for line in lines:
        losses = line["losses"]
        started = line["step"] > 2  # step indices 2 and 3 are at/after adversarial_start = 2
        assert ("discriminator/loss" in losses) == started
        assert ("generator/adversarial" in losses) == started
        assert {"generator/l1", "generator/roi_l1", "generator/quantization", "generator/perplexity"} <= set(losses)
        assert ("generator/codes_reset" in losses) == (line["step"] == 3)  # step index 2
    assert lines[2]["losses"]["generator/codes_reset"] > 0  # most of a fresh codebook is unused

    model = VQGAN.from_pretrained(model_dir)
    extra = model.hub_extra
    assert len(extra["latent_mean"]) == len(extra["latent_std"]) == 3
    assert all(s > 0 for s in extra["latent_std"]) and 0 < extra["codebook_usage"] <= 1
    assert extra["normalization"] == "percentile" and extra["patch_size"] == [16, 16, 16]
    assert len(extra["splits"]["val"]) == 1 and len(extra["splits"]["test"]) == 1
    assert model.config["patch_size"] == [16, 16, 16] and model.downsample_factor == 2
    z = model.encode(torch.zeros(1, 1, 16, 16, 16))
    assert torch.allclose(model.denormalize_latent(model.normalize_latent(z)), z, atol=1e-5)
    card = (model_dir / "README.md").read_text(encoding="utf-8")
    for word in ("val_psnr", "val_tumour_psnr", "val_l1", "codebook_usage", "synthetic test data", "Flair"):
        assert word in card, word


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": {"adversarial_criterion": "wasserstein"}}, "adversarial_criterion"),
        ({"data": {"normalization": "zscore"}}, "unbounded"),
        ({"data": {"patch_size": [16, 16, 15]}}, "multiple of the downsample factor"),
        ({"model": {"downsample_parameters": [[2, 4, 1, 1], [2, 4, 1, 1]]}}, "one per level"),
        ({"model": {"disc_layer": 2}}, "disc_layer"),
    ],
)
def test_config_errors(tmp_path: Path, brats_like: Path, overrides: dict[str, Any], message: str) -> None:
    config = write_config(tmp_path / "bad.yaml", brats_like, **overrides)
    with pytest.raises(ConfigError, match=message):
        train_from_config("vqgan", config)
    assert not (tmp_path / "run").exists()  # refused before any folder was made
