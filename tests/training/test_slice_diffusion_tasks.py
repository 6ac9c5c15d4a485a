"""`medgen train mask-diffusion | paired-guider` on tiny synthetic data: training, export, tissue masks,
skipped cases and config errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from napari_medgen.core.io import write_volume
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import ConfigError, InvalidInputError
from napari_medgen.models.mask_diffusion import MaskDiffusionUNet
from napari_medgen.models.paired_guider import PairedGuider
from napari_medgen.training import train_from_config
from napari_medgen.training.config import load_config
from napari_medgen.training.tasks.mask_diffusion import MaskDiffusionTask

SIZE = 16


@pytest.fixture(scope="module")
def png_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six BUSI-style 16x16 images (bright disc) with 0/255 masks."""
    root = tmp_path_factory.mktemp("slice_png")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(6):
        cy, cx, r = rng.integers(5, 11), rng.integers(5, 11), rng.integers(2, 5)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        image = rng.normal(60, 12, size=(SIZE, SIZE)) + 100 * disc
        write_volume(Volume(np.clip(image, 0, 255).astype(np.uint8)[None]), root / f"case{i}.png")
        write_volume(LabelMap((disc * 255).astype(np.uint8)[None]), root / f"case{i}_mask.png")
    return root


def _volume_case(folder: Path, seed: int, *, shift_labels: bool = False) -> dict[str, np.ndarray]:
    """A (4, 16, 16) scan with a brain mask and tumour labels 1/2 on slices 1-2 (slice 3 only brain)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    scan = Volume(rng.normal(100, 20, size=(4, SIZE, SIZE)).astype(np.float32), spacing=(1.0, 1.0, 2.0),
                  origin=(5.0, -3.0, 1.0))
    brain = np.zeros(scan.shape, np.uint8)
    brain[:, 2:14, 3:13] = 1
    brain[0] = 0  # slice 0: nothing at all
    seg = np.zeros(scan.shape, np.uint8)
    seg[1:3, 5:9, 5:9] = 1
    seg[2, 6:8, 9:12] = 2
    seg[1, 0, 0] = 2  # a label outside the brain mask stays a label
    write_volume(scan, folder / "flair.nii.gz")
    write_volume(scan.as_labels(brain), folder / "brain.nii.gz")
    labels = scan.as_labels(seg)
    if shift_labels:
        labels = LabelMap(seg, scan.spacing, (50.0, 0.0, 0.0), scan.direction)
    write_volume(labels, folder / "seg.nii.gz")
    return {"brain": brain, "seg": seg}


@pytest.fixture(scope="module")
def volume_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """BraTS-style case folders; case ``z_bad`` has labels off its image grid."""
    root = tmp_path_factory.mktemp("slice_vol")
    cases = {f"p{i}": _volume_case(root / f"p{i}", i) for i in range(3)}
    _volume_case(root / "z_bad", 9, shift_labels=True)
    return root, cases


def _config(path: Path, data: dict[str, Any], model: dict[str, Any] | None = None, **top: Any) -> Path:
    config: dict[str, Any] = {
        "seed": 3, "max_steps": 3, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 100,
        "out_dir": str(path.parent / f"run_{path.stem}"),
        "data": {"image_size": [SIZE, SIZE], "samples_per_epoch": 6, "val_fraction": 0.0, "test_fraction": 0.0,
                 **data},
        "model": {"block_out_channels": [8, 16], "norm_num_groups": 4, "num_train_timesteps": 50, **(model or {})},
        **top,
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _png_data(root: Path, **extra: Any) -> dict[str, Any]:
    return {"root": str(root), "class_values": [1], "class_names": ["lesion"], "label_mode": "binary", **extra}


def _vol_data(root: Path, **extra: Any) -> dict[str, Any]:
    return {"root": str(root), "case_image": "flair.nii.gz", "case_label": "seg.nii.gz",
            "tissue_label": "brain.nii.gz", "tissue_value": 5, "class_values": [1, 2, 5],
            "class_names": ["core", "edema", "brain"], **extra}


def _losses(out_dir: Path) -> list[float]:
    lines = (out_dir / "loss_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["losses"]["loss"] for line in lines]


# ---- training and export ---------------------------------------------------------------------------------
def test_mask_diffusion_with_ablation_trains_and_exports(tmp_path: Path, png_data: Path) -> None:
    config = _config(tmp_path / "md.yaml", _png_data(png_data, val_fraction=0.34),
                     {"ablation_p": 0.5, "lesion_weight": 2.0})
    model_dir = train_from_config("mask-diffusion", config)
    losses = _losses(tmp_path / "run_md")
    assert len(losses) == 3 and all(np.isfinite(losses))
    model = MaskDiffusionUNet.from_pretrained(model_dir)
    assert model.config["trained_with_ablation"] is True
    assert model.class_values == [1] and model.config["class_names"] == ["lesion"]
    assert model.image_size == (SIZE, SIZE) and model.config["num_train_timesteps"] == 50
    assert model.hub_extra["label_mode"] == "binary" and len(model.hub_extra["splits"]["val"]) == 2
    val = json.loads((tmp_path / "run_md" / "val_log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert {"val_mse", "val_mse_t10", "val_mse_t80"} <= set(val) and np.isfinite(val["val_mse"])
    card = (model_dir / "README.md").read_text(encoding="utf-8")
    assert "val_mse" in card and "6 cases" in card
    with torch.no_grad():
        out = model(torch.zeros(1, 1, SIZE, SIZE), 10, torch.zeros(1, 1, SIZE, SIZE))
    assert out.shape == (1, 1, SIZE, SIZE)


def test_without_ablation_the_model_is_marked_standard(tmp_path: Path, png_data: Path) -> None:
    config = _config(tmp_path / "std.yaml", _png_data(png_data), max_steps=1)
    model = MaskDiffusionUNet.from_pretrained(train_from_config("mask-diffusion", config))
    assert model.config["trained_with_ablation"] is False


def test_paired_guider_then_image_model_on_its_estimates(tmp_path: Path, png_data: Path) -> None:
    guider_cfg = _config(tmp_path / "guider.yaml", _png_data(png_data, val_fraction=0.34))
    guider_dir = train_from_config("paired-guider", guider_cfg)
    guider = PairedGuider.from_pretrained(guider_dir)
    assert guider.class_values == [1] and guider.image_size == (SIZE, SIZE)
    val = json.loads((tmp_path / "run_guider" / "val_log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert 0.0 <= val["val_mask_dice_t30"] <= 1.0
    assert all(np.isfinite(_losses(tmp_path / "run_guider")))

    image_cfg = _config(tmp_path / "pig.yaml", _png_data(png_data),
                        {"guider": str(guider_dir), "guider_fraction": 1.0})
    image_dir = train_from_config("mask-diffusion", image_cfg)
    image_model = MaskDiffusionUNet.from_pretrained(image_dir)
    assert all(np.isfinite(_losses(tmp_path / "run_pig")))
    from safetensors.torch import load_file

    assert not any(k.startswith("guider") for k in load_file(image_dir / "model.safetensors"))
    # the pair works together in the paired sampler
    from napari_medgen.pipelines.paired_generation import generate_pairs

    pairs = generate_pairs(2, guider=guider_dir, image_model=image_dir, steps=2).pairs
    assert len(pairs) == 2 and image_model.class_values == guider.class_values


def test_guider_with_another_contract_is_refused(tmp_path: Path, png_data: Path) -> None:
    guider_dir = PairedGuider(image_size=(32, 32), class_values=(1,), block_out_channels=(8, 16), norm_num_groups=4,
                              num_train_timesteps=50).save_pretrained(tmp_path / "big_guider")
    config = _config(tmp_path / "bad.yaml", _png_data(png_data), {"guider": str(guider_dir)}, max_steps=1)
    with pytest.raises(InvalidInputError, match="image_size"):
        train_from_config("mask-diffusion", config)


# ---- volumes: tissue masks and skipped cases -----------------------------------------------------------
def test_tissue_mask_fills_only_background(tmp_path: Path,
                                           volume_data: tuple[Path, dict[str, dict[str, np.ndarray]]]) -> None:
    root, cases = volume_data
    config = load_config(_config(tmp_path / "tissue.yaml", _vol_data(root)))
    task = MaskDiffusionTask(config)
    slices = task.slices("train")
    assert slices is not None and slices.skipped == ("z_bad",)
    assert slices.labels.shape[1:] == (SIZE, SIZE)
    expected = []
    for case_id in sorted(cases):
        seg, brain = cases[case_id]["seg"], cases[case_id]["brain"]
        merged = np.where((seg == 0) & (brain > 0), 5, seg)
        expected.extend(merged[z] for z in range(4) if merged[z].any())  # slice 0 is empty: left out
    assert len(slices.labels) == len(expected) == 9
    np.testing.assert_array_equal(slices.labels, np.stack(expected))
    assert slices.labels[0, 0, 0] == 2  # labels outside the tissue mask are kept
    # lesion slices are the focus (tissue alone is not)
    assert slices.focus.tolist() == [True, True, False] * 3
    assert task.focus_values() == [1, 2]
    assert slices.images.min() >= -1.0 and slices.images.max() <= 1.0


def test_case_off_the_grid_is_skipped_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                volume_data: tuple[Path, dict[str, dict[str, np.ndarray]]]) -> None:
    root, _ = volume_data
    config = _config(tmp_path / "vol.yaml", _vol_data(root), {"ablation_p": 0.5})
    with caplog.at_level(logging.WARNING):
        model_dir = train_from_config("mask-diffusion", config)
    assert any("z_bad" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    card = (model_dir / "README.md").read_text(encoding="utf-8")
    assert "z_bad" in card and "skipped" in card
    model = MaskDiffusionUNet.from_pretrained(model_dir)
    assert model.class_values == [1, 2, 5] and model.class_name(5) == "brain"
    assert model.hub_extra["tissue_value"] == 5 and model.hub_extra["tissue_label"] == "brain.nii.gz"


def test_labels_outside_class_values_are_refused(tmp_path: Path,
                                                 volume_data: tuple[Path, dict[str, dict[str, np.ndarray]]]) -> None:
    # the data hold label 2; a model told only about classes 1 and 5 must not learn it as background
    root, _ = volume_data
    data = _vol_data(root, class_values=[1, 5], class_names=None)
    task = MaskDiffusionTask(load_config(_config(tmp_path / "missing.yaml", data)))
    with pytest.raises(InvalidInputError, match=r"label values \[2\] are not in data.class_values"):
        task.slices("train")


# ---- config errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "model", "match"),
    [
        ({"tissue_value": 3}, {}, "tissue_value"),
        ({"label_mode": "ternary"}, {}, "label_mode"),
        ({"class_names": ["a", "b"]}, {}, "class_names"),
        ({"class_values": [0, 1]}, {}, "class_values"),
        ({"normalization": "minmax"}, {}, "normalization"),
        ({"image_size": [16]}, {}, "image_size"),
        ({}, {"ablation_p": 1.5}, "ablation_p"),
        ({}, {"lesion_weight": 0.0}, "lesion_weight"),
        ({}, {"guider_fraction": -0.5}, "guider_fraction"),
        ({}, {"dropout": 0.1}, "dropout"),
        ({"image_size": [18, 18]}, {"block_out_channels": [8, 16, 16]}, "divisible"),
        ({}, {"block_out_channels": [8, 18]}, "norm_num_groups"),
    ],
)
def test_config_errors(tmp_path: Path, png_data: Path, data: dict[str, Any], model: dict[str, Any],
                       match: str) -> None:
    base = _png_data(png_data, tissue_label="x_mask.png", tissue_value=1)
    config = _config(tmp_path / "cfg.yaml", {**base, **data}, model, max_steps=1)
    with pytest.raises(ConfigError, match=match):
        train_from_config("mask-diffusion", config)


def test_paired_guider_config_errors(tmp_path: Path, png_data: Path) -> None:
    config = _config(tmp_path / "g.yaml", _png_data(png_data), {"ablation_p": 0.5}, max_steps=1)
    with pytest.raises(ConfigError, match="ablation_p"):  # a mask-diffusion option, unknown to the guider
        train_from_config("paired-guider", config)
    config = _config(tmp_path / "g2.yaml", _png_data(png_data), {"block_out_channels": [8, 18]}, max_steps=1)
    with pytest.raises(ConfigError, match="norm_num_groups"):
        train_from_config("paired-guider", config)
