"""The shape GAN networks, its shape proxies, the augmented shape bank and a few trainer steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from napari_medgen.errors import ConfigError, InvalidInputError
from napari_medgen.hub import from_pretrained
from napari_medgen.models.shape_gan import (
    ShapeDiscriminator,
    ShapeGenerator,
    shape_statistics,
    upsample_probabilities,
)
from napari_medgen.training.config import load_config
from napari_medgen.training.launch import train_from_config
from napari_medgen.training.tasks import get_task
from napari_medgen.training.tasks.shape_gan import (
    ShapeGanDataConfig,
    build_shape_bank,
    centred_overlap,
    clean_mask,
    reconstruct_masks,
)

TINY_MODEL = {
    "channels": [16, 16, 8], "z_dim": 8, "token_dim": 16, "heads": 2, "self_attention_sizes": [4],
    "cross_attention_sizes": [4, 8], "disc_channels": [8, 8, 8], "eval_samples": 4,
}


def _ellipsoid(shape: tuple[int, int, int], radii_zyx: tuple[float, float, float], centre=None) -> np.ndarray:
    centre = np.asarray(centre if centre is not None else [(s - 1) / 2 for s in shape])
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    return (((grid - centre) / np.asarray(radii_zyx)) ** 2).sum(-1) <= 1.0


def _write_labels(folder: Path) -> None:
    """Three synthetic tumours on anisotropic grids; label 1 = core inside label 4 = rest (BraTS-like)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, radii in enumerate([(3.0, 8.0, 6.0), (4.0, 6.0, 9.0), (2.5, 7.0, 7.0)]):
        outer = _ellipsoid((14, 30, 30), radii)
        inner = _ellipsoid((14, 30, 30), tuple(r * 0.5 for r in radii))
        arr = np.where(inner, 1, np.where(outer, 4, 0)).astype(np.uint8)
        image = sitk.GetImageFromArray(arr)
        image.SetSpacing((1.0, 1.2, 2.5))
        image.SetOrigin((10.0 * i, -5.0, 3.0))
        sitk.WriteImage(image, str(folder / f"case{i}_label.nii.gz"))


def _config(tmp_path: Path, regions: str = "lesion", **extra) -> dict:
    data = {
        "sources": [{"glob": str(tmp_path / "labels" / "*_label.nii.gz"), "labels": [1, 4]}],
        "regions": regions, "base_size": 16, "base_spacing_mm": 3.0, "augmentations_per_tumour": 3,
        "min_volume_mm3": 50.0, "samples_per_epoch": 4, "deform_mm": 1.0,
    }
    return {
        "max_steps": 2, "batch_size": 2, "lr": 1e-3, "ema_decay": 0.9, "checkpoint_every": 1, "log_every": 1,
        "out_dir": str(tmp_path / f"run-{regions}"), "data": data, "model": dict(TINY_MODEL), **extra,
    }


def test_generator_shapes_nesting_and_validation() -> None:
    torch.manual_seed(0)
    gen = ShapeGenerator(num_features=6, out_channels=2, base_size=16, z_dim=8, token_dim=16, channels=[16, 16, 8],
                         heads=2, self_attention_sizes=[4], cross_attention_sizes=[4, 8])
    logits = gen(torch.randn(3, 8), torch.randn(3, 6))
    assert logits.shape == (3, 2, 16, 16, 16)
    probs = ShapeGenerator.probabilities(logits)
    assert probs.min() >= 0 and probs.max() <= 1
    assert torch.all(probs[:, 0] <= probs[:, 1] + 1e-7)  # necrotic core never leaves the tumour core
    up = upsample_probabilities(probs, 32)
    assert up.shape == (3, 2, 32, 32, 32) and torch.all(up[:, 0] <= up[:, 1])
    disc = ShapeDiscriminator(num_features=6, in_channels=2, channels=[8, 8, 8])
    assert disc(probs, torch.randn(3, 6)).shape == (3,)
    with pytest.raises(InvalidInputError, match="features must be"):
        gen(torch.randn(3, 8), torch.randn(3, 5))
    with pytest.raises(InvalidInputError, match="base_size"):
        ShapeGenerator(num_features=2, base_size=18, channels=[8, 8, 8])


def test_shape_statistics_track_volume_sphericity_and_elongation() -> None:
    sphere = torch.as_tensor(_ellipsoid((32, 32, 32), (10, 10, 10)), dtype=torch.float32)[None]
    rod = torch.as_tensor(_ellipsoid((32, 32, 32), (4, 4, 14)), dtype=torch.float32)[None]
    stats = shape_statistics(torch.cat([sphere, rod]), voxel_mm=2.0)
    assert math.exp(stats[0, 0]) == pytest.approx(sphere.sum().item() * 8, rel=1e-3)
    assert stats[0, 1] > stats[1, 1]  # the sphere is rounder
    assert stats[0, 2] == pytest.approx(1 / 3, abs=0.02) and stats[1, 2] > 0.6  # tr(C^2)/tr(C)^2
    assert stats[0, 3] == pytest.approx(1.0, abs=0.05) and stats[1, 3] < 0.2  # 27 det / tr^3
    soft = sphere.clone().requires_grad_(True)
    shape_statistics(soft, 2.0).sum().backward()
    assert torch.isfinite(soft.grad).all()


def test_clean_mask_keeps_one_solid_component() -> None:
    mask = _ellipsoid((20, 20, 20), (6, 6, 6))
    mask[10, 10, 10] = False  # an internal hole
    mask[0, 0, 0] = True  # a speck
    cleaned = clean_mask(mask)
    assert cleaned[10, 10, 10] and not cleaned[0, 0, 0]
    assert not mask[10, 10, 10]  # the input is not modified


def test_centred_overlap_ignores_translation() -> None:
    blob = torch.as_tensor(_ellipsoid((16, 16, 16), (3, 3, 5), centre=(6, 6, 6)), dtype=torch.float32)
    moved = torch.roll(blob, shifts=(3, 2, 1), dims=(0, 1, 2))
    turned = blob.permute(2, 1, 0)  # same shape, other orientation
    scores = centred_overlap(torch.stack([blob, blob]), torch.stack([moved, turned]))
    assert scores[0] == pytest.approx(1.0) and scores[1] < 0.8


def test_shape_bank_is_cached_and_true_to_its_samples(tmp_path: Path) -> None:
    _write_labels(tmp_path / "labels")
    data = ShapeGanDataConfig(**_config(tmp_path)["data"])
    bank = build_shape_bank(data, tmp_path / "cache")
    assert bank["masks"].shape == (9, 1, 16, 16, 16) and bank["masks"].dtype == np.uint8
    names = [str(n) for n in bank["names"]]
    volume = bank["features"][:, names.index("lesion/original_shape_VoxelVolume")]
    occupancy = bank["masks"][:, 0].astype(np.float64).sum(axis=(1, 2, 3)) / 255.0 * 27.0
    assert np.corrcoef(occupancy, volume)[0, 1] > 0.95  # the target is the sample the features describe
    # features are measured on the mask the inference path makes from the target (1.5 mm grid here)
    rebuilt = [reconstruct_masks(m / 255.0, 2)[-1].sum() * 1.5**3 for m in bank["masks"]]
    np.testing.assert_allclose(rebuilt, volume)
    assert np.ptp(volume) > 0  # augmentation changes the shapes
    cached = list((tmp_path / "cache").glob("shape_bank_*.npz"))
    assert len(cached) == 1
    again = build_shape_bank(data, tmp_path / "cache")
    np.testing.assert_array_equal(again["masks"], bank["masks"])


def test_data_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sources is empty"):
        ShapeGanDataConfig()
    with pytest.raises(ConfigError, match="regions"):
        ShapeGanDataConfig(sources=[{"glob": "x"}], regions="liver")
    data = ShapeGanDataConfig(sources=[{"glob": str(tmp_path / "none*.nii.gz")}])
    with pytest.raises(ConfigError, match="matches no file"):
        build_shape_bank(data)


def test_held_out_cases_match_file_or_folder_names(tmp_path: Path) -> None:
    """BRATS-style layouts name the case by its folder (every file is OTMultiClass.nii.gz), KiTS by file."""
    from napari_medgen.training.tasks.shape_gan import _source_files

    for case in ("brats_pat0001", "brats_pat0005"):
        (tmp_path / case).mkdir()
        (tmp_path / case / "OTMultiClass.nii.gz").write_bytes(b"")
    (tmp_path / "case_00004_segmentation.nii.gz").write_bytes(b"")
    (tmp_path / "case_00003_segmentation.nii.gz").write_bytes(b"")
    data = ShapeGanDataConfig(sources=[{"glob": str(tmp_path / "*" / "OTMultiClass.nii.gz")},
                                       {"glob": str(tmp_path / "case_*_segmentation.nii.gz"), "labels": [2]}],
                              exclude=["pat0005", "case_00004"])
    kept = [Path(path).relative_to(tmp_path).as_posix() for path, _ in _source_files(data)]
    assert kept == ["brats_pat0001/OTMultiClass.nii.gz", "case_00003_segmentation.nii.gz"]
    with pytest.raises(ConfigError, match="Every file"):
        _source_files(ShapeGanDataConfig(sources=data.sources, exclude=["pat", "case"]))


def test_training_steps_export_and_hub_round_trip(tmp_path: Path) -> None:
    _write_labels(tmp_path / "labels")
    cfg = _config(tmp_path, regions="brats")
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(json.dumps(cfg), encoding="utf-8")  # JSON is valid YAML
    assert get_task("shape-gan").__name__ == "ShapeGanTask"
    out = train_from_config("shape-gan", config_file)
    log_file = Path(cfg["out_dir"]) / "loss_log.jsonl"
    log = [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert {"generator/consistency", "discriminator/hinge"} <= set(log[-1]["losses"])
    model = from_pretrained(out, expected_type="shape-gan")
    extra = model.hub_extra
    assert extra["regions"] == ["necrotic_core", "tumour_core"] and model.config["out_channels"] == 2
    assert len(extra["normalizer"]["names"]) == model.config["num_features"] == 22
    assert set(extra["controls"]) >= {"VoxelVolume", "Sphericity"}
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "## Training data" in card and "3 real tumour components" in card
    probs = model.sample(torch.zeros(1, 22), generator=torch.Generator().manual_seed(0))
    assert probs.shape == (1, 2, 16, 16, 16) and torch.all(probs[:, 0] <= probs[:, 1])
    # the config is checked key by key
    with pytest.raises(ConfigError, match="Unknown config key"):
        get_task("shape-gan")(load_config(config_file, {"model.chanels": [8]}))
