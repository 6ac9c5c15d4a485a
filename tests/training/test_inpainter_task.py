"""``medgen train inpainter``: a tiny end-to-end run with and without the atlas estimate; the export loads and
inpaints, the atlas model takes one more input and weighs one more estimate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy import ndimage

from napari_medgen.core.io import write_volume
from napari_medgen.hub import from_pretrained
from napari_medgen.models.inpainter import in_channels
from napari_medgen.pipelines.tumour_removal import inpaint
from napari_medgen.sample_data import make_phantom
from napari_medgen.training import train_from_config


@pytest.fixture(scope="module")
def brats_like_cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 64^3 phantom heads with BraTS labels (1 necrotic, 4 enhancing, 2 edema) in case folders."""
    root = tmp_path_factory.mktemp("inpainter_cases")
    for seed in range(4):
        image, labels = make_phantom(shape=(64, 64, 64), spacing=(1.0, 1.0, 1.0), seed=seed, tumour_radius_mm=6.0)
        arr = np.asarray(labels.array)
        brats = np.select([arr == 2, arr == 1], [1, 4], 0).astype(np.uint8)
        brats[ndimage.binary_dilation(arr > 0, iterations=2) & (arr == 0)] = 2
        case = root / f"case{seed}"
        case.mkdir()
        write_volume(image, case / "image.nii.gz")
        write_volume(image.as_labels(brats), case / "label.nii.gz")
    return root


def write_config(path: Path, root: Path, **model: Any) -> Path:
    config = {
        "seed": 0, "max_steps": 2, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 100, "log_every": 1,
        "val_every": 2, "out_dir": str(path.parent / "run"), "card": {"licence": "synthetic phantoms"},
        "data": {"root": str(root), "case_image": "image.nii.gz", "case_label": "label.nii.gz", "pool_size": 4,
                 "samples_per_epoch": 4, "val_fraction": 0.25, "test_fraction": 0.0, "eval_items": 2},
        "model": {"channels": [4, 8], "crop_size": 16, "work_mm": 3.0, **model},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.parametrize("atlas", [False, True])
def test_a_tiny_run_exports_an_inpainter_that_removes(brats_like_cases: Path, tmp_path: Path, atlas: bool) -> None:
    model_dir = train_from_config("inpainter", write_config(tmp_path / "c.yaml", brats_like_cases, atlas=atlas))
    lines = [json.loads(s) for s in (tmp_path / "run" / "loss_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert all(np.isfinite(v) for line in lines for v in line["losses"].values())
    pool = next((tmp_path / "run").glob("pool-train-*.npz"))
    with np.load(pool) as data:
        assert data["inputs"].shape[1] == in_channels(atlas)
    val = [json.loads(s) for s in (tmp_path / "run" / "val_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert ("val_atlas_psnr" in val[-1]) == atlas and np.isfinite(val[-1]["val_model_psnr"])
    model = from_pretrained(model_dir)
    assert model.config["atlas"] == atlas and model.n_estimates == 1 + atlas
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    assert set(config["extra"]["appearance"]) == {"image"}  # the sequence's statistics travel with the weights
    image, labels = make_phantom(shape=(64, 64, 64), spacing=(1.0, 1.0, 1.0), seed=9, tumour_radius_mm=6.0)
    result = inpaint(image, labels, model=model_dir)
    region = np.asarray(labels.array) > 0
    np.testing.assert_array_equal(np.asarray(result.image.array)[~region], np.asarray(image.array)[~region])
    assert np.isfinite(np.asarray(result.image.array)).all() and ("atlas_weight_mean" in result.report) == atlas
