"""npe2 reader/writer functions without a viewer: files <-> layer data tuples, geometry kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medgen.core.io import write_volume
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import GeometryMismatchError, MedGenError
from napari_medgen.layers import volume_to_layer_data
from napari_medgen.napari_io import (
    get_reader,
    looks_like_labels,
    read_layers,
    write_image,
    write_labels,
    write_layers_to_folder,
)


def _assert_geometry(path: Path, volume: Volume) -> sitk.Image:
    img = sitk.ReadImage(str(path))
    np.testing.assert_allclose(img.GetSpacing(), volume.spacing, atol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), volume.origin, atol=1e-6)
    np.testing.assert_allclose(img.GetDirection(), volume.direction, atol=1e-6)
    return img


@pytest.mark.parametrize("name", ["ct_seg.nii.gz", "brain_mask.nrrd", "Labels.mha", "case.seg.nrrd"])
def test_label_names_are_recognised(name: str) -> None:
    assert looks_like_labels(name)
    assert not looks_like_labels("flair.nii.gz")


def test_get_reader_declines_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "missing.nii.gz")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader([]) is None
    assert get_reader(12345) is None  # type: ignore[arg-type]


def test_reader_makes_image_and_labels_layers_in_physical_space(
    tmp_path: Path, oblique_volume: Volume, oblique_labels: LabelMap
) -> None:
    img_path = write_volume(oblique_volume, tmp_path / "t1.nii.gz")
    lab_path = write_volume(oblique_labels, tmp_path / "t1_seg.nii.gz")
    reader = get_reader([str(img_path), str(lab_path)])
    assert reader is not None
    (img, img_kw, img_type), (lab, lab_kw, lab_type) = reader([str(img_path), str(lab_path)])
    assert (img_type, lab_type) == ("image", "labels")
    assert img_kw["name"] == "t1" and lab_kw["name"] == "t1_seg"
    assert lab.dtype.kind in "iu"
    np.testing.assert_array_equal(lab, oblique_labels.array)
    np.testing.assert_allclose(img_kw["affine"], lab_kw["affine"], atol=1e-6)
    np.testing.assert_allclose(img_kw["scale"], oblique_volume.spacing_zyx, atol=1e-6)
    assert img_kw["colormap"] == "gray"
    assert img_kw["metadata"]["medgen"]["source_path"] == str(img_path)


def test_named_like_labels_but_fractional_stays_an_image(tmp_path: Path) -> None:
    prob = Volume(np.linspace(0, 1, 24, dtype=np.float32).reshape(2, 3, 4))
    path = write_volume(prob, tmp_path / "tumour_mask_prob.nii.gz")
    [(_, _, kind)] = read_layers(str(path))
    assert kind == "image"
    whole = Volume(np.ones((2, 3, 4), np.float32))
    path = write_volume(whole, tmp_path / "brainmask.nii.gz")
    [(data, _, kind)] = read_layers(str(path))
    assert kind == "labels" and data.dtype.kind in "iu"


def _brats_labels(dtype: type = np.uint8) -> LabelMap:
    data = np.zeros((6, 10, 12), dtype=dtype)
    for value in range(1, 5):
        data[1:5, 2 * value : 2 * value + 2, 2:10] = value
    return LabelMap(data, spacing=(1.0, 1.0, 2.0), origin=(5.0, -3.0, 1.0))


def test_label_map_named_like_a_scan_opens_as_labels_by_content(tmp_path: Path, monkeypatch) -> None:
    import napari_medgen.napari_io as nio

    said: list[str] = []
    monkeypatch.setattr(nio, "_notify", said.append)
    labels = _brats_labels()
    path = write_volume(labels, tmp_path / "OTMultiClass.nii.gz")  # no label/seg/mask in the name
    assert not looks_like_labels(path)
    [(data, kwargs, kind)] = read_layers(str(path))
    assert kind == "labels" and kwargs["name"] == "OTMultiClass"
    assert data.dtype.kind in "iu"
    np.testing.assert_array_equal(data, labels.array)
    assert len(said) == 1 and "opened as labels: integer values 0-4" in said[0]


def test_whole_number_float_label_map_opens_as_labels(tmp_path: Path, monkeypatch) -> None:
    import napari_medgen.napari_io as nio

    monkeypatch.setattr(nio, "_notify", lambda message: None)
    labels = _brats_labels()
    as_float = Volume(labels.array.astype(np.float32), labels.spacing, labels.origin)  # as BraTS stores it
    path = write_volume(as_float, tmp_path / "OTMultiClass.nii.gz")
    [(data, _, kind)] = read_layers(str(path))
    assert kind == "labels" and data.dtype.kind in "iu"
    np.testing.assert_array_equal(data, labels.array)


def test_float_images_and_scans_stay_images(tmp_path: Path, monkeypatch) -> None:
    import napari_medgen.napari_io as nio

    said: list[str] = []
    monkeypatch.setattr(nio, "_notify", said.append)
    steps = Volume((np.arange(6 * 10 * 12).reshape(6, 10, 12) % 8 * 0.5).astype(np.float32))  # 0, 0.5 ... 3.5
    rng = np.random.default_rng(0)
    ct = Volume(rng.integers(-1000, 2000, size=(6, 10, 12)).astype(np.int16))  # integer scan, many values
    no_background = Volume(_brats_labels().array + 1)  # integers 1-5 without 0
    for name, volume in [("steps", steps), ("ct", ct), ("flat", no_background)]:
        path = write_volume(volume, tmp_path / f"{name}.nii.gz")
        [(_, _, kind)] = read_layers(str(path))
        assert kind == "image", name
    assert said == []


def test_real_brats_files_open_by_content(shared_data: Path, monkeypatch) -> None:
    import napari_medgen.napari_io as nio

    monkeypatch.setattr(nio, "_notify", lambda message: None)
    case = shared_data / "brats2015_subset" / "brats_2013_pat0001_1"
    [(labels, _, kind)] = read_layers(str(case / "OTMultiClass.nii.gz"))
    assert kind == "labels" and set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    [(_, _, kind)] = read_layers(str(case / "Flair_subtrMeanDivStd.nii.gz"))
    assert kind == "image"
    [(_, _, kind)] = read_layers(str(shared_data / "pyradiomics" / "data" / "brain1_image.nrrd"))
    assert kind == "image"  # an int16 MR scan


def test_slicer_segmentation_is_read_as_labels(tmp_path: Path, oblique_labels: LabelMap) -> None:
    path = write_volume(oblique_labels, tmp_path / "lesion.seg.nrrd")
    [(data, kwargs, kind)] = read_layers(str(path))
    assert kind == "labels" and kwargs["name"] == "lesion"
    np.testing.assert_array_equal(data > 0, oblique_labels.array > 0)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_writers_reproduce_geometry_exactly(
    tmp_path: Path, ext: str, oblique_volume: Volume, oblique_labels: LabelMap
) -> None:
    data, meta, _ = volume_to_layer_data(oblique_volume)
    [written] = write_image(str(tmp_path / f"img{ext}"), data, meta)
    img = _assert_geometry(Path(written), oblique_volume)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), oblique_volume.array)

    data, meta, _ = volume_to_layer_data(oblique_labels)
    [written] = write_labels(str(tmp_path / f"lab{ext}"), data.astype(np.int64), meta)
    lab = _assert_geometry(Path(written), oblique_labels)
    assert lab.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(lab), oblique_labels.array)


def test_writer_refuses_sheared_layer_and_writes_nothing(tmp_path: Path, oblique_volume: Volume) -> None:
    data, meta, _ = volume_to_layer_data(oblique_volume)
    meta["shear"] = [0.3, 0.0, 0.0]
    target = tmp_path / "img.nii.gz"
    with pytest.raises(GeometryMismatchError):
        write_image(str(target), data, meta)
    assert list(tmp_path.iterdir()) == []


def test_folder_writer_saves_every_layer(
    tmp_path: Path, oblique_volume: Volume, oblique_labels: LabelMap
) -> None:
    img = volume_to_layer_data(oblique_volume, name="T1 post")
    lab = volume_to_layer_data(oblique_labels, name="T1 post")  # same name: must not overwrite
    written = write_layers_to_folder(str(tmp_path / "case"), [img, lab])
    assert [Path(p).name for p in written] == ["T1_post.nii.gz", "T1_post_2.nii.gz"]
    _assert_geometry(Path(written[1]), oblique_labels)


def test_folder_writer_checks_all_layers_before_writing(tmp_path: Path, oblique_volume: Volume) -> None:
    img = volume_to_layer_data(oblique_volume, name="ok")
    rgb = (np.zeros((4, 5, 3), np.uint8), {"rgb": True, "name": "photo"}, "image")
    with pytest.raises(MedGenError, match="RGB"):
        write_layers_to_folder(str(tmp_path / "case"), [img, rgb])
    assert not (tmp_path / "case").exists()
    (tmp_path / "file.nii.gz").write_bytes(b"")
    with pytest.raises(MedGenError, match="folder"):
        write_layers_to_folder(str(tmp_path / "file.nii.gz"), [img])
