"""Folder pairing conventions, case-wise splits and the lazy patch dataset, on files made in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_medgen.core.io import write_volume
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import GeometryMismatchError, InvalidInputError
from napari_medgen.training.datasets import (
    CasePair,
    MulticlassRelabel,
    PatchDataset,
    binary_relabel,
    find_pairs,
    load_case,
    split_cases,
)


def volume(shape: tuple[int, ...] = (4, 6, 8), value: float = 10.0, spacing=(1.0, 1.0, 1.0)) -> Volume:
    arr = np.full(shape, value, dtype=np.float32)
    arr[..., 0] = 0.0
    return Volume(arr, spacing=spacing)


def labels(shape: tuple[int, ...] = (4, 6, 8), spacing=(1.0, 1.0, 1.0), value: int = 1) -> LabelMap:
    arr = np.zeros(shape, dtype=np.uint8)
    arr[1, 2:4, 3:5] = value
    return LabelMap(arr, spacing=spacing)


def png(path: Path, mask: bool = False, size: tuple[int, int] = (12, 10)) -> None:
    arr = np.zeros((1, *size), dtype=np.uint8)
    arr[0, 3:6, 2:5] = 255 if mask else 200
    if not mask:
        arr[0, 0, :] = 50
    write_volume(Volume(arr), path)


def ids(pairs: list[CasePair]) -> list[str]:
    return [p.case_id for p in pairs]


# ---- pairing conventions ---------------------------------------------------------------------------
def test_images_and_labels_folders(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_volume(volume(), tmp_path / "images" / f"{name}.nii.gz")
        write_volume(labels(), tmp_path / "labels" / f"{name}.nii.gz")
    (tmp_path / "README.md").write_text("notes are ignored")
    pairs = find_pairs(tmp_path)
    assert ids(pairs) == ["images/a", "images/b"]
    assert pairs[0].image == tmp_path / "images" / "a.nii.gz"
    assert pairs[0].labels == (tmp_path / "labels" / "a.nii.gz",)


def test_nnunet_layout(tmp_path: Path) -> None:
    write_volume(volume(), tmp_path / "imagesTr" / "case_001_0000.nii.gz")
    write_volume(labels(), tmp_path / "labelsTr" / "case_001.nii.gz")
    assert ids(find_pairs(tmp_path)) == ["imagesTr/case_001"]


def test_suffixes_in_one_folder(tmp_path: Path) -> None:
    write_volume(volume(), tmp_path / "brain1_image.nrrd")
    write_volume(labels(), tmp_path / "brain1_label.nrrd")
    write_volume(volume(), tmp_path / "lung.mha")
    write_volume(labels(), tmp_path / "lung_seg.mha")
    write_volume(volume(), tmp_path / "phantom.nrrd")
    write_volume(labels(), tmp_path / "phantom-label.nrrd")
    pairs = find_pairs(tmp_path)
    assert ids(pairs) == ["brain1", "lung", "phantom"]
    assert pairs[0].labels[0].name == "brain1_label.nrrd"


def test_busi_style_png_with_extra_masks_merged(tmp_path: Path) -> None:
    folder = tmp_path / "benign"
    png(folder / "benign (4).png")
    png(folder / "benign (4)_mask.png", mask=True)
    extra = np.zeros((1, 12, 10), dtype=np.uint8)
    extra[0, 8:10, 6:8] = 255
    write_volume(Volume(extra), folder / "benign (4)_mask_1.png")
    png(folder / "benign (5).png")
    png(folder / "benign (5)_mask.png", mask=True)
    pairs = find_pairs(tmp_path)
    assert ids(pairs) == ["benign/benign (4)", "benign/benign (5)"]
    assert len(pairs[0].labels) == 2
    case = load_case(pairs[0], relabel=binary_relabel)
    assert case.image.shape == (1, 12, 10)
    assert case.labels.sum() == 9 + 4  # both masks, binarised


def test_sibling_mask_folders(tmp_path: Path) -> None:
    png(tmp_path / "train" / "1.png")
    png(tmp_path / "train_masks" / "1_mask.png", mask=True)
    png(tmp_path / "images" / "IMD002.png")
    png(tmp_path / "lesion_masks" / "IMD002_lesion.png", mask=True)
    assert ids(find_pairs(tmp_path)) == ["images/IMD002", "train/1"]


def test_case_folders_with_patterns(tmp_path: Path) -> None:
    for case in ("pat1", "pat2"):
        write_volume(volume(), tmp_path / case / "Flair.nii.gz")
        write_volume(volume(), tmp_path / case / "T1c.nii.gz")
        write_volume(labels(value=4), tmp_path / case / "OTMultiClass.nii.gz")
    with pytest.raises(InvalidInputError, match="case_image"):
        find_pairs(tmp_path)  # by names alone the modalities have no partner
    pairs = find_pairs(tmp_path, case_image="Flair*.nii.gz", case_label="OTMultiClass.nii.gz")
    assert ids(pairs) == ["pat1", "pat2"]
    assert pairs[1].image.name == "Flair.nii.gz"
    with pytest.raises(InvalidInputError, match="both"):
        find_pairs(tmp_path, case_image="Flair*.nii.gz")


def test_empty_and_unsupported_folders(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        find_pairs(tmp_path / "missing")
    with pytest.raises(InvalidInputError, match="contains no image files"):
        find_pairs(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="contains no image files"):
        find_pairs(tmp_path)


def test_unpaired_files_are_named(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    png(tmp_path / "a_mask.png", mask=True)
    png(tmp_path / "lonely.png")
    png(tmp_path / "orphan_mask.png", mask=True)
    with pytest.raises(InvalidInputError, match=r"lonely\.png has no label.*orphan_mask\.png has no image"):
        find_pairs(tmp_path)
    assert ids(find_pairs(tmp_path, allow_unpaired=True)) == ["a"]
    (tmp_path / "a.png").unlink()
    (tmp_path / "lonely.png").unlink()
    with pytest.raises(InvalidInputError, match="No image/label pairs"):
        find_pairs(tmp_path, allow_unpaired=True)


def test_geometry_mismatch_names_the_case(tmp_path: Path) -> None:
    write_volume(volume(), tmp_path / "x_image.nii.gz")
    write_volume(labels(spacing=(1.0, 1.0, 2.0)), tmp_path / "x_label.nii.gz")
    (pair,) = find_pairs(tmp_path)
    with pytest.raises(GeometryMismatchError, match="Case 'x'"):
        load_case(pair)


def test_multiclass_labels_must_fit() -> None:
    assert MulticlassRelabel(5)(np.array([0, 4])).tolist() == [0, 4]
    with pytest.raises(InvalidInputError, match="num_classes=3"):
        MulticlassRelabel(3)(np.array([0, 4]))


# ---- splits -------------------------------------------------------------------------------------
def test_splits_are_deterministic_disjoint_and_order_independent() -> None:
    cases = [f"case{i:02d}" for i in range(20)]
    a = split_cases(cases, val_fraction=0.2, test_fraction=0.1, seed=1)
    b = split_cases(list(reversed(cases)), val_fraction=0.2, test_fraction=0.1, seed=1)
    assert a == b
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (14, 4, 2)
    assert sorted(a["train"] + a["val"] + a["test"]) == cases
    assert split_cases(cases, val_fraction=0.2, test_fraction=0.1, seed=2) != a
    # adding a case never moves the existing ones between val and test
    grown = split_cases([*cases, "case99"], val_fraction=0.2, test_fraction=0.1, seed=1)
    assert set(a["val"]) - set(grown["val"]) <= set(grown["train"]) | set(grown["test"])


def test_small_datasets_keep_training_data() -> None:
    assert split_cases(["a"], val_fraction=0.1, test_fraction=0.1) == {"train": ["a"], "val": [], "test": []}
    three = split_cases(["a", "b", "c"], val_fraction=0.1, test_fraction=0.1)
    assert [len(three[k]) for k in ("train", "val", "test")] == [1, 1, 1]
    with pytest.raises(InvalidInputError):
        split_cases(["a", "b"], val_fraction=0.6, test_fraction=0.5)


def test_group_by_keeps_slices_of_a_patient_together() -> None:
    cases = [f"pat{p}_{s}" for p in range(6) for s in range(5)]
    split = split_cases(cases, val_fraction=0.2, test_fraction=0.2, seed=0, group_by=r"^(pat\d+)_")
    patients = {name: {c.split("_")[0] for c in split[name]} for name in split}
    assert patients["train"].isdisjoint(patients["val"]) and patients["train"].isdisjoint(patients["test"])
    assert patients["val"].isdisjoint(patients["test"])
    assert all(len(split[name]) % 5 == 0 for name in split)
    with pytest.raises(InvalidInputError, match="regular expression"):
        split_cases(cases, group_by="(")


# ---- patch dataset ------------------------------------------------------------------------------
def test_patches_2d_from_png_with_padding_and_foreground(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    png(tmp_path / "a_mask.png", mask=True)
    dataset = PatchDataset(find_pairs(tmp_path), spatial_dims=2, patch_size=(16, 8), samples_per_epoch=5,
                           relabel=binary_relabel, foreground_fraction=1.0)
    assert len(dataset) == 5
    item = dataset.get_item(3, np.random.default_rng(0))
    assert item["image"].shape == (1, 16, 8) and item["image"].dtype.is_floating_point
    assert item["label"].shape == (1, 16, 8)
    assert int(item["label"].sum()) == 9  # the whole 3x3 lesion is inside the foreground-centred patch
    again = dataset.get_item(3, np.random.default_rng(0))
    assert all((item[k] == again[k]).all() for k in ("image", "label"))


def test_patches_3d_and_2d_slices_of_volumes(tmp_path: Path) -> None:
    write_volume(volume((6, 10, 12)), tmp_path / "v_image.nii.gz")
    write_volume(labels((6, 10, 12)), tmp_path / "v_label.nii.gz")
    pairs = find_pairs(tmp_path)
    three_d = PatchDataset(pairs, spatial_dims=3, patch_size=(4, 8, 8), samples_per_epoch=2,
                           normalize=lambda a: a / 10.0, foreground_fraction=0.0)
    item = three_d.get_item(0, np.random.default_rng(5))
    assert item["image"].shape == (1, 4, 8, 8)
    assert float(item["image"].max()) <= 1.0
    slices = PatchDataset(pairs, spatial_dims=2, patch_size=(8, 8), samples_per_epoch=2, foreground_fraction=1.0)
    item = slices.get_item(1, np.random.default_rng(1))
    assert item["image"].shape == (1, 8, 8) and int(item["label"].sum()) == 4


def test_resize_applies_to_image_and_labels(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    png(tmp_path / "a_mask.png", mask=True)
    case = load_case(find_pairs(tmp_path)[0], relabel=binary_relabel, resize_yx=(24, 20))
    assert case.image.shape == (1, 24, 20) and case.labels.shape == (1, 24, 20)
    assert set(np.unique(case.labels)) == {0, 1}


def test_loading_is_lazy_and_validated(tmp_path: Path) -> None:
    missing = CasePair("ghost", tmp_path / "ghost.nii.gz", (tmp_path / "ghost_seg.nii.gz",))
    dataset = PatchDataset([missing], spatial_dims=3, patch_size=(2, 2, 2), samples_per_epoch=1)
    with pytest.raises(Exception, match="ghost"):
        dataset.get_item(0, np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="no cases"):
        PatchDataset([], spatial_dims=2, patch_size=(2, 2), samples_per_epoch=1)
    with pytest.raises(InvalidInputError, match="patch_size needs 3"):
        PatchDataset([missing], spatial_dims=3, patch_size=(2, 2), samples_per_epoch=1)


# ---- real data layouts ----------------------------------------------------------------------------
@pytest.mark.realdata
def test_real_dataset_layouts(shared_data: Path) -> None:
    busi = find_pairs(shared_data / "busi")
    assert len(busi) == 99  # 44 benign + 40 malignant + 15 normal
    assert any(len(p.labels) > 1 for p in busi)  # BUSI's extra *_mask_1.png files are merged
    radiomics = find_pairs(shared_data / "pyradiomics" / "data")
    assert ids(radiomics) == ["brain1", "brain2", "breast1", "lung1", "lung2", "prostate_phantom_subvolume"]
    assert len(find_pairs(shared_data / "brain_mri_2d_ruslan_kl")) == 110  # train/ + train_masks/ ...
    assert len(find_pairs(shared_data / "ph2")) == 180  # images/ + lesion_masks/X_lesion.png
    brats = find_pairs(shared_data / "brats2015_subset", case_image="Flair*.nii.gz", case_label="OTMultiClass.nii.gz")
    assert len(brats) == 5
