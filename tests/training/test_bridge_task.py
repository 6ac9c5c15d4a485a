"""``medgen train bridge``: synthesis / removal items, config errors, and a tiny end-to-end run with export."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from napari_medgen.core.io import write_volume
from napari_medgen.errors import ConfigError, InvalidInputError
from napari_medgen.hub import from_pretrained, read_checkpoint_config
from napari_medgen.models.bridge_unet import BridgeUNet
from napari_medgen.models.vqgan import VQGAN, normalize_to_network
from napari_medgen.radiomics.texture_condition import texture_feature_names
from napari_medgen.sample_data import make_phantom
from napari_medgen.training import train_from_config
from napari_medgen.training.bridge_dataset import FILL_VALUE, BridgePatches
from napari_medgen.training.datasets import binary_relabel, find_pairs, load_case

NORMALIZATION = "percentile_foreground"


@pytest.fixture(scope="module")
def phantom_cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four case folders (image.nii.gz + label.nii.gz): 32x48x48 1 mm phantom heads, tumours in other places."""
    root = tmp_path_factory.mktemp("bridge_cases")
    for seed in range(4):
        image, labels = make_phantom(shape=(32, 48, 48), spacing=(1.0, 1.0, 1.0), seed=seed)
        case = root / f"case{seed}"
        case.mkdir()
        write_volume(image, case / "image.nii.gz")
        write_volume(labels, case / "label.nii.gz")
    return root


@pytest.fixture(scope="module")
def vqgan_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = VQGAN(channels=[8], num_res_channels=8, num_embeddings=16, embedding_dim=2,
                  normalization=NORMALIZATION, patch_size=[16, 16, 16])
    return model.save_pretrained(tmp_path_factory.mktemp("vqgan") / "model",
                                 extra={"latent_mean": [0.0, 0.0], "latent_std": [1.0, 1.0]})


@pytest.fixture(scope="module")
def patches(phantom_cases: Path) -> BridgePatches:
    pairs = find_pairs(phantom_cases, case_image="image.nii.gz", case_label="label.nii.gz")
    return BridgePatches(pairs, patch_size=[16, 16, 16], normalize=partial(normalize_to_network, spec=NORMALIZATION),
                         samples_per_epoch=8, removal_fraction=0.5, pool_size=8, min_region_voxels=64, seed=0)


def write_config(path: Path, root: Path, vqgan: Path | str, **overrides: Any) -> Path:
    config: dict[str, Any] = {
        "seed": 0,
        "max_steps": 4,
        "batch_size": 2,
        "lr": 1e-3,
        "checkpoint_every": 100,
        "log_every": 1,
        "out_dir": str(path.parent / "run"),
        "card": {"licence": "synthetic phantoms"},
        "data": {"root": str(root), "case_image": "image.nii.gz", "case_label": "label.nii.gz",
                 "patch_size": [16, 16, 16], "pool_size": 8, "samples_per_epoch": 8, "val_fraction": 0.25,
                 "test_fraction": 0.0, "eval_items": 2, "eval_steps": 2},
        "model": {"vqgan": str(vqgan), "channels": [8, 16, 16], "attention_levels": [False, True, True],
                  "num_head_channels": 8, "norm_num_groups": 4, "num_train_timesteps": 50},
    }
    for key, value in overrides.items():
        if key in ("data", "model"):
            config[key].update(value)
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


# ---- items ----------------------------------------------------------------------------------------------
def _locate(patch: np.ndarray, cases: list[np.ndarray]) -> tuple[int, tuple[slice, ...], tuple[int, ...]]:
    """Where ``patch`` (possibly flipped) was cut from: (case, window, flipped axes); exact float matches."""
    for axes in [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]:
        unflipped = np.flip(patch, axis=axes) if axes else patch
        for index, image in enumerate(cases):
            for start in np.argwhere(image == unflipped[0, 0, 0]):
                window = tuple(slice(int(s), int(s) + n) for s, n in zip(start, patch.shape, strict=True))
                if all(w.stop <= d for w, d in zip(window, image.shape, strict=True)) and np.array_equal(
                        image[window], unflipped):
                    return index, window, axes
    raise AssertionError("the patch is not a crop of any training case")


def _items(patches: BridgePatches, synthesis: bool, count: int) -> list[dict[str, Any]]:
    found = []
    for seed in range(200):
        item = patches.get_item(seed, np.random.default_rng(seed))
        if bool(item["synthesis"]) == synthesis:
            found.append(item)
        if len(found) == count:
            return found
    raise AssertionError(f"fewer than {count} {'synthesis' if synthesis else 'removal'} items in 200 draws")


def test_synthesis_items_fill_the_tumour_inside_the_patch(patches: BridgePatches) -> None:
    cases = [load_case(p, normalize=patches.normalize, relabel=binary_relabel) for p in patches.pairs]
    for item in _items(patches, synthesis=True, count=4):
        image, condition = item["image"][0].numpy(), item["condition"][0].numpy()
        mask = item["mask"][0].numpy() > 0
        assert item["image"].shape == item["condition"].shape == item["mask"].shape == (1, 16, 16, 16)
        assert mask.sum() >= 64
        assert (condition[mask] == FILL_VALUE).all()  # the region is filled ...
        np.testing.assert_array_equal(condition[~mask], image[~mask])  # ... and nothing else
        case, window, axes = _locate(image, [c.image for c in cases])
        tumour = cases[case].labels[window] > 0
        np.testing.assert_array_equal(mask, np.flip(tumour, axis=axes) if axes else tumour)  # the whole tumour part
        features = item["features"].numpy()
        assert features.shape == (74,) and np.isfinite(features).all() and np.abs(features).sum() > 0
        assert any(np.allclose(features, row) for row in patches.normalizer.transform(patches.pool_features))


def test_removal_items_paste_a_tumour_region_into_healthy_tissue(patches: BridgePatches) -> None:
    cases = [load_case(p, normalize=patches.normalize, relabel=binary_relabel) for p in patches.pairs]
    for item in _items(patches, synthesis=False, count=4):
        image, condition = item["image"][0].numpy(), item["condition"][0].numpy()
        mask = item["mask"][0].numpy() > 0
        assert not item["features"].any() and item["features"].shape == (74,)  # no texture: the removal path
        assert mask.any() and (image[mask] > image.min()).all()  # inside the patch's foreground
        assert (condition[mask] == FILL_VALUE).all()
        np.testing.assert_array_equal(condition[~mask], image[~mask])
        case, window, _ = _locate(image, [c.image for c in cases])
        assert not cases[case].labels[window].any()  # healthy tissue: not one tumour voxel in the patch


def test_items_are_deterministic_per_rng_and_the_pool_is_finite(patches: BridgePatches) -> None:
    first = patches.get_item(0, np.random.default_rng(11))
    again = patches.get_item(5, np.random.default_rng(11))  # the index does not matter, the rng does
    for key in ("image", "condition", "mask", "features", "synthesis"):
        assert torch.equal(first[key], again[key]), key
    others = [patches.get_item(0, np.random.default_rng(s)) for s in range(12, 16)]
    assert any(not torch.equal(first["image"], o["image"]) for o in others)
    assert torch.equal(patches[3]["image"], patches[3]["image"])
    assert patches.pool_features.shape == (len(patches.pool_masks), 74) and len(patches.pool_masks) >= 2
    assert np.isfinite(patches.pool_features).all()
    assert (patches.pool_masks.sum(axis=(1, 2, 3)) >= 64).all()
    assert list(patches.normalizer.names) == texture_feature_names()


def test_dataset_errors(phantom_cases: Path) -> None:
    pairs = find_pairs(phantom_cases, case_image="image.nii.gz", case_label="label.nii.gz")
    normalize = partial(normalize_to_network, spec=NORMALIZATION)
    with pytest.raises(InvalidInputError, match="no cases"):
        BridgePatches([], patch_size=[16, 16, 16], normalize=normalize, samples_per_epoch=1)
    with pytest.raises(InvalidInputError, match="lower data.min_region_voxels"):
        BridgePatches(pairs[:1], patch_size=[16, 16, 16], normalize=normalize, samples_per_epoch=1, pool_size=2,
                      min_region_voxels=5000)


# ---- the task --------------------------------------------------------------------------------------------
def test_training_exports_a_self_contained_bridge(tmp_path: Path, phantom_cases: Path, vqgan_checkpoint: Path) -> None:
    config = write_config(tmp_path / "bridge.yaml", phantom_cases, vqgan_checkpoint)
    model_dir = train_from_config("bridge", config)
    lines = [json.loads(s) for s in (tmp_path / "run" / "loss_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert all(np.isfinite(v) for line in lines for v in line["losses"].values())

    bridge = from_pretrained(model_dir, expected_type="bridge-unet")
    assert isinstance(bridge, BridgeUNet) and bridge.feature_names == texture_feature_names()
    source = VQGAN.from_pretrained(vqgan_checkpoint)
    for key, value in source.state_dict().items():  # the frozen VQ-GAN travelled unchanged
        assert torch.equal(bridge.vqgan.state_dict()[key], value), key
    extra = read_checkpoint_config(model_dir)["extra"]
    names = texture_feature_names()
    assert {"feature_normalizer", "default_features", "feature_ranges", "spacing_mm"} <= set(extra)
    assert extra["spacing_mm"] == [1.0, 1.0, 1.0] and extra["patch_size"] == [16, 16, 16]
    assert extra["fill_value"] == FILL_VALUE and extra["vqgan_source"] == str(vqgan_checkpoint)
    assert list(extra["default_features"]) == names and list(extra["feature_ranges"]) == names
    assert all(lo <= hi for lo, hi in extra["feature_ranges"].values())
    assert len(extra["splits"]["val"]) == 1 and len(extra["splits"]["train"]) == 3
    card = (model_dir / "README.md").read_text(encoding="utf-8")
    for word in ("val_synthesis_psnr", "val_removal_psnr", "meanfill", "synthetic phantoms", "image.nii.gz"):
        assert word in card, word
    metrics = [json.loads(s) for s in (tmp_path / "run" / "val_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert metrics[-1]["step"] == 4
    values = {k: v for k, v in metrics[-1].items() if k != "step"}
    assert set(values) == {"val_synthesis_psnr", "val_synthesis_meanfill_psnr", "val_removal_psnr",
                           "val_removal_meanfill_psnr"}
    assert all(np.isfinite(v) for v in values.values())
    # the exported checkpoint runs: one synthesis and one removal sample at the patch size
    y = bridge.encode(torch.zeros(1, 1, 16, 16, 16))
    mask = bridge.region_latent(torch.ones(1, 1, 16, 16, 16))
    feats = torch.zeros(1, len(names))
    assert bridge.sample(y, mask, feats, steps=2).shape == y.shape == bridge.sample(y, mask, None, steps=2).shape


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": {"vqgan": ""}}, "model.vqgan must name the VQ-GAN checkpoint"),
        ({"data": {"patch_size": [16, 16, 20]}}, r"data.patch_size \[16, 16, 20\] must be multiples of 8"),
        ({"model": {"attention_levels": [False, False, True]}}, "two or more levels"),
        ({"model": {"num_head_channels": 6}}, "num_head_channels"),
        ({"model": {"objective": "velocity"}}, "model.objective"),
        ({"data": {"removal_fraction": 1.5}}, "removal_fraction"),
    ],
)
def test_config_errors(tmp_path: Path, phantom_cases: Path, vqgan_checkpoint: Path, overrides: dict[str, Any],
                       message: str) -> None:
    config = write_config(tmp_path / "bad.yaml", phantom_cases, vqgan_checkpoint, **overrides)
    with pytest.raises(ConfigError, match=message):
        train_from_config("bridge", config)
    assert not (tmp_path / "run").exists()  # refused before any folder was made


def test_missing_model_vqgan_and_a_wrong_checkpoint_are_config_errors(tmp_path: Path, phantom_cases: Path,
                                                                      tiny_seg2img: Path) -> None:
    config = write_config(tmp_path / "bad.yaml", phantom_cases, "")
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    del raw["model"]["vqgan"]
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ConfigError, match="model.vqgan"):
        train_from_config("bridge", config)
    wrong = write_config(tmp_path / "wrong.yaml", phantom_cases, tiny_seg2img)
    with pytest.raises(ConfigError, match="model.vqgan: .*'vqgan'"):
        train_from_config("bridge", wrong)
    assert not (tmp_path / "run").exists()
