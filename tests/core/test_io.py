"""File IO: every format round-trips voxels and geometry; errors are clear; writes are atomic."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medgen.core import io
from napari_medgen.core.geometry import right_handed
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import (
    CorruptFileError,
    DimensionError,
    GeometryMismatchError,
    InvalidInputError,
    MedGenError,
    UnsupportedFormatError,
)

FILE_FORMATS = [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"]
ALL_3D = [*FILE_FORMATS, "dicom"]


def _dest(tmp_path: Path, fmt: str, stem: str = "vol") -> Path:
    return tmp_path / (f"{stem}_dicom" if fmt == "dicom" else f"{stem}{fmt}")


def assert_same_volume(actual: Volume, expected: Volume, *, tol: float = 1e-6, exact: bool = True) -> None:
    assert actual.shape == expected.shape
    if exact:
        np.testing.assert_array_equal(actual.array, expected.array)
    np.testing.assert_allclose(actual.spacing, expected.spacing, rtol=0, atol=tol)
    np.testing.assert_allclose(actual.origin, expected.origin, rtol=0, atol=tol)
    np.testing.assert_allclose(actual.direction, expected.direction, rtol=0, atol=tol)


def _dicom_slope(folder: Path) -> float:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(sorted(folder.iterdir())[0]))
    reader.ReadImageInformation()
    return float(reader.GetMetaData("0028|1053"))


def _no_leftovers(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if "medgen-tmp" in name]


# ---- synthetic round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FILE_FORMATS)
def test_oblique_flipped_float_volume_roundtrips_exactly(tmp_path: Path, oblique_volume: Volume, fmt: str) -> None:
    path = io.write_volume(oblique_volume, _dest(tmp_path, fmt))
    back = io.read_volume(path)
    assert back.array.dtype == oblique_volume.array.dtype
    assert_same_volume(back, oblique_volume)
    assert back.metadata["source_path"] == str(path)
    assert _no_leftovers(tmp_path) == []


def test_oblique_flipped_integer_volume_through_dicom_is_exact_on_right_handed_grid(
    tmp_path: Path, oblique_volume: Volume
) -> None:
    vol = oblique_volume.with_array(np.round(oblique_volume.array * 10).astype(np.int16))
    back = io.read_volume(io.write_volume(vol, tmp_path / "series"))
    assert back.array.dtype == np.int16
    assert np.linalg.det(back.direction_matrix) == pytest.approx(1.0)
    # DICOM cannot hold a left-handed grid: the same voxels come back with the slice axis reversed.
    assert_same_volume(back, right_handed(vol))


def test_oblique_float_volume_through_dicom_is_quantised_within_documented_bound(
    tmp_path: Path, oblique_volume: Volume
) -> None:
    with pytest.warns(UserWarning, match="quantised to 16 bits"):
        folder = io.write_volume(oblique_volume, tmp_path / "series")
    back = io.read_volume(folder)
    expected = right_handed(oblique_volume)
    assert_same_volume(back, expected, exact=False)
    slope = _dicom_slope(folder)
    data_range = float(np.ptp(oblique_volume.array))
    assert slope <= data_range / 65000 * (1 + 1e-6)
    error = np.abs(back.array.astype(np.float64) - expected.array.astype(np.float64))
    assert error.max() <= slope / 2 + 1e-9
    assert error.max() > 0  # really quantised: the docstring's claim is not vacuous


def test_whole_number_floats_through_dicom_are_exact_without_warning(tmp_path: Path) -> None:
    arr = np.arange(-500, 500, dtype=np.float32).reshape(10, 10, 10) * 80.0  # exceeds int16: stored as int32
    vol = Volume(arr, spacing=(0.5, 0.6, 2.0), origin=(1.0, 2.0, 3.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = io.read_volume(io.write_volume(vol, tmp_path / "series"))
    assert back.array.dtype == np.int32
    assert_same_volume(back, vol)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64])
def test_integer_types_through_dicom_are_exact(tmp_path: Path, dtype: type) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    lo, hi = max(info.min, -(2**31)), min(info.max, 2**31 - 1)
    arr = rng.integers(lo, hi, size=(4, 5, 6), endpoint=True).astype(dtype)
    arr.flat[0], arr.flat[1] = lo, hi
    vol = Volume(arr, spacing=(0.3, 0.4, 1.5), origin=(-3.0, 4.0, 100.0), metadata={"Modality": "MR"})
    back = io.read_volume(io.write_volume(vol, tmp_path / "series"))
    np.testing.assert_array_equal(back.array, arr)
    if dtype != np.int64:
        assert back.array.dtype == dtype
    assert back.metadata["Modality"] == "MR"
    assert_same_volume(back, vol)


def test_compress_flag_reaches_the_writer(tmp_path: Path) -> None:
    vol = Volume(np.zeros((4, 4, 4), np.int16))
    assert b"encoding: gzip" in io.write_volume(vol, tmp_path / "c.nrrd").read_bytes()[:400]
    assert b"encoding: raw" in io.write_volume(vol, tmp_path / "u.nrrd", compress=False).read_bytes()[:400]
    assert (tmp_path / "c.zraw").exists() is False
    io.write_volume(vol, tmp_path / "c.mhd")
    assert (tmp_path / "c.zraw").exists()  # detached MetaImage data travels with its header


def test_single_slice_dicom_keeps_slice_spacing(tmp_path: Path) -> None:
    vol = Volume(np.arange(12, dtype=np.int16).reshape(1, 3, 4), spacing=(0.5, 0.7, 3.3))
    assert_same_volume(io.read_volume(io.write_volume(vol, tmp_path / "one")), vol)


def test_dicom_metadata_is_privacy_minimal(tmp_path: Path) -> None:
    vol = Volume(np.zeros((2, 3, 4), np.int16), metadata={"Modality": "CT", "PatientName": "Doe^John"})
    back = io.read_volume(io.write_volume(vol, tmp_path / "series"))
    assert back.metadata["Modality"] == "CT"
    assert back.metadata["SeriesInstanceUID"].startswith("2.25.")
    assert set(back.metadata) <= {"Modality", "SeriesInstanceUID", "dicom_file_count", "source_path", "format"}


@pytest.mark.parametrize("fmt", [*ALL_3D, ".seg.nrrd"])
def test_label_map_roundtrips_in_every_format(tmp_path: Path, oblique_labels: LabelMap, fmt: str) -> None:
    path = io.write_volume(oblique_labels, _dest(tmp_path, fmt, "labels"))
    back = io.read_labels(path)
    assert isinstance(back, LabelMap)
    expected = right_handed(oblique_labels) if fmt == "dicom" else oblique_labels
    assert_same_volume(back, expected)
    assert back.labels() == [1, 2]


def test_seg_nrrd_carries_slicer_segment_fields_and_names(tmp_path: Path, oblique_labels: LabelMap) -> None:
    named = oblique_labels.with_array(oblique_labels.array, metadata={"segment_names": '{"1": "tumour"}'})
    path = io.write_volume(named, tmp_path / "seg.seg.nrrd")
    header = path.read_bytes().split(b"\n\n", 1)[0].decode()
    assert "Segment0_LabelValue:=1" in header and "Segment1_LabelValue:=2" in header
    assert "Segment0_Name:=tumour" in header and "Segment1_Name:=Segment_2" in header
    assert "Segment0_Extent:=4 8 3 7 2 4" in header  # x0 x1 y0 y1 z0 z1 of label 1
    back = io.read_labels(path)
    assert json.loads(back.metadata["segment_names"]) == {"1": "tumour", "2": "Segment_2"}
    assert io.detect_format(path) == "seg.nrrd"


def _write_layered_seg_nrrd(path: Path, overlap: bool = False, with_segments: bool = True) -> np.ndarray:
    layers = np.zeros((6, 5, 4, 2), np.uint8)  # z, y, x, layer (layer is NRRD's fastest axis)
    layers[1:3, 1:3, 1:3, 0] = 1
    layers[0, 0, 0, 0] = 2
    layers[3:5, 2:4, 0:2, 1] = 1
    if overlap:
        layers[1, 1, 1, 1] = 1
    segments = (
        "Segment0_ID:=a\nSegment0_Name:=Tumor\nSegment0_LabelValue:=1\nSegment0_Layer:=0\n"
        "Segment1_ID:=b\nSegment1_Name:=Edema\nSegment1_LabelValue:=1\nSegment1_Layer:=1\n"
        "Segment2_ID:=c\nSegment2_Name:=Core\nSegment2_LabelValue:=2\nSegment2_Layer:=0\n"
    )
    header = (
        "NRRD0004\ntype: unsigned char\ndimension: 4\nspace: left-posterior-superior\nsizes: 2 4 5 6\n"
        "space directions: none (1,0,0) (0,2,0) (0,0,3)\nkinds: list domain domain domain\nencoding: raw\n"
        "space origin: (10,20,30)\n" + (segments if with_segments else "") + "\n"
    )
    path.write_bytes(header.encode() + layers.tobytes())
    return layers


def test_multilayer_seg_nrrd_is_flattened_with_names(tmp_path: Path) -> None:
    layers = _write_layered_seg_nrrd(tmp_path / "layers.seg.nrrd")
    labels = io.read_labels(tmp_path / "layers.seg.nrrd")
    expected = np.zeros((6, 5, 4), np.uint8)
    expected[layers[..., 0] == 1] = 1
    expected[layers[..., 1] == 1] = 2
    expected[layers[..., 0] == 2] = 3
    np.testing.assert_array_equal(labels.array, expected)
    assert labels.spacing == (1.0, 2.0, 3.0) and labels.origin == (10.0, 20.0, 30.0)
    assert json.loads(labels.metadata["segment_names"]) == {"1": "Tumor", "2": "Edema", "3": "Core"}
    layer1 = io.read_labels(tmp_path / "layers.seg.nrrd", channel=1)
    np.testing.assert_array_equal(layer1.array, layers[..., 1])


def test_overlapping_segments_and_anonymous_layers_give_clear_errors(tmp_path: Path) -> None:
    _write_layered_seg_nrrd(tmp_path / "overlap.seg.nrrd", overlap=True)
    with pytest.raises(InvalidInputError, match="overlap.*channel="):
        io.read_labels(tmp_path / "overlap.seg.nrrd")
    _write_layered_seg_nrrd(tmp_path / "anon.nrrd", with_segments=False)
    with pytest.raises(DimensionError, match="channel="):
        io.read_volume(tmp_path / "anon.nrrd")


# ---- 2D slices ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ext,dtype", [(".png", np.uint8), (".png", np.uint16), (".bmp", np.uint8), (".tif", np.float32)]
)
def test_2d_slices_roundtrip(tmp_path: Path, ext: str, dtype: type) -> None:
    rng = np.random.default_rng(2)
    arr = (rng.random((1, 9, 14)) * 200).astype(dtype)
    vol = Volume(arr, spacing=(0.5, 0.25, 1.0))
    back = io.read_volume(io.write_volume(vol, tmp_path / f"slice{ext}"))
    assert back.shape == (1, 9, 14) and back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, arr)
    if ext != ".bmp":  # BMP stores resolution in whole pixels per metre
        np.testing.assert_allclose(back.spacing[:2], (0.5, 0.25), rtol=1e-3)


def test_rgb_slice_is_read_as_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    rgb[0, 0] = (255, 255, 255)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.png"))
    vol = io.read_volume(tmp_path / "rgb.png")
    assert vol.shape == (1, 4, 5) and vol.array.dtype == np.uint8
    assert vol.array[0, 1, 1] == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    assert vol.array[0, 0, 0] == 255
    assert io.read_volume(tmp_path / "rgb.png", channel=2).array[0, 1, 1] == 50


def test_2d_writers_refuse_what_they_cannot_store(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="uint8"):
        io.write_volume(Volume(np.full((1, 4, 4), 0.5, np.float32)), tmp_path / "a.png")
    with pytest.raises(DimensionError, match="slices"):
        io.write_volume(Volume(np.zeros((3, 4, 4), np.uint8)), tmp_path / "b.png")
    # whole-number data that fits is converted losslessly
    back = io.read_volume(io.write_volume(Volume(np.full((1, 2, 2), 7, np.int64)), tmp_path / "c.png"))
    np.testing.assert_array_equal(back.array, 7)
    assert sorted(os.listdir(tmp_path)) == ["c.png"]


# ---- errors -------------------------------------------------------------------------------------------------
def test_missing_and_unknown_paths(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match="no such file"):
        io.read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedFormatError, match="Supported"):
        io.read_volume(tmp_path / "notes.txt")
    with pytest.raises(UnsupportedFormatError, match="unknown extension"):
        io.write_volume(Volume(np.zeros((2, 2, 2))), tmp_path / "out.xyz")
    with pytest.raises(UnsupportedFormatError, match="series folder"):
        io.write_volume(Volume(np.zeros((2, 2, 2), np.int16)), tmp_path / "out.dcm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnsupportedFormatError, match="No DICOM series"):
        io.read_volume(tmp_path / "empty")


@pytest.mark.parametrize("name", ["text.nrrd", "text.nii.gz", "text.mha", "text.png"])
def test_text_file_with_image_extension_is_corrupt(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("this is not an image\n" * 20)
    with pytest.raises(CorruptFileError, match="re-export"):
        io.read_volume(tmp_path / name)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file_is_corrupt(tmp_path: Path, ext: str) -> None:
    rng = np.random.default_rng(3)
    path = io.write_volume(Volume(rng.normal(size=(16, 20, 24)).astype(np.float32)), tmp_path / f"t{ext}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CorruptFileError):
        io.read_volume(path)


def test_4d_and_vector_images_need_a_channel(tmp_path: Path) -> None:
    frames = [sitk.GetImageFromArray(np.full((2, 3, 4), float(t), np.float32)) for t in range(3)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "four.nii.gz"))
    with pytest.raises(DimensionError, match=r"channel=k \(0\.\.2\)"):
        io.read_volume(tmp_path / "four.nii.gz")
    np.testing.assert_array_equal(io.read_volume(tmp_path / "four.nii.gz", channel=2).array, 2.0)
    with pytest.raises(InvalidInputError, match="out of range"):
        io.read_volume(tmp_path / "four.nii.gz", channel=5)
    vec = sitk.GetImageFromArray(np.stack([np.zeros((2, 3, 4)), np.ones((2, 3, 4))], axis=-1), isVector=True)
    sitk.WriteImage(vec, str(tmp_path / "vector.mha"))
    with pytest.raises(DimensionError, match="channel="):
        io.read_volume(tmp_path / "vector.mha")
    np.testing.assert_array_equal(io.read_volume(tmp_path / "vector.mha", channel=1).array, 1.0)


def test_read_labels_checks_values_and_grid(tmp_path: Path, oblique_volume: Volume) -> None:
    io.write_volume(oblique_volume, tmp_path / "image.nrrd")
    with pytest.raises(InvalidInputError, match="non-integer"):
        io.read_labels(tmp_path / "image.nrrd")
    io.write_volume(Volume(np.full((2, 2, 2), -1, np.int16)), tmp_path / "neg.nrrd")
    with pytest.raises(InvalidInputError, match="negative"):
        io.read_labels(tmp_path / "neg.nrrd")
    labels = oblique_volume.as_labels(np.ones(oblique_volume.shape, np.uint8))
    shifted = labels.with_array(labels.array, origin=(0.0, 0.0, 0.0))
    io.write_volume(shifted, tmp_path / "shifted.nii.gz")
    with pytest.raises(GeometryMismatchError, match="resample"):
        io.read_labels(tmp_path / "shifted.nii.gz", reference=oblique_volume)
    # NIfTI stores geometry as float32: tiny differences are snapped onto the reference grid
    io.write_volume(labels, tmp_path / "labels.nii.gz")
    snapped = io.read_labels(tmp_path / "labels.nii.gz", reference=oblique_volume)
    assert snapped.same_grid(oblique_volume, tol=0.0)


def test_float_labels_with_whole_values_become_integers(tmp_path: Path) -> None:
    io.write_volume(Volume(np.array([[[0.0, 1.0], [4.0, 2.0]]], np.float32)), tmp_path / "f.nii.gz")
    labels = io.read_labels(tmp_path / "f.nii.gz")
    assert labels.array.dtype == np.uint8 and labels.labels() == [1, 2, 4]


def _two_series_folder(tmp_path: Path) -> tuple[Path, Volume, Volume]:
    big = Volume(np.full((5, 3, 4), 7, np.int16), metadata={"Modality": "CT"})
    small = Volume(np.full((2, 3, 4), 9, np.int16), origin=(50.0, 0.0, 0.0), metadata={"Modality": "MR"})
    io.write_volume(big, tmp_path / "big")
    io.write_volume(small, tmp_path / "small")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for sub in ("big", "small"):
        for f in (tmp_path / sub).iterdir():
            os.replace(f, mixed / f"{sub}_{f.name}")
    return mixed, big, small


def test_dicom_folder_with_several_series(tmp_path: Path) -> None:
    folder, big, small = _two_series_folder(tmp_path)
    chosen = io.read_volume(folder)
    assert chosen.shape == big.shape and chosen.metadata["Modality"] == "CT"
    assert "2 series" in chosen.metadata["dicom_series_note"]
    other_uid = next(
        uid
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        if uid != chosen.metadata["SeriesInstanceUID"]
    )
    other = io.read_volume(folder, series_uid=other_uid)
    assert_same_volume(other, small)
    with pytest.raises(InvalidInputError, match="holds"):
        io.read_volume(folder, series_uid="1.2.3")
    io.write_volume(big, tmp_path / "x.nrrd")
    with pytest.raises(InvalidInputError, match="only applies to DICOM"):
        io.read_volume(tmp_path / "x.nrrd", series_uid="1")


def test_uneven_dicom_slices_warn(tmp_path: Path) -> None:
    folder = io.write_volume(Volume(np.zeros((4, 2, 2), np.int16), metadata={"Modality": "CT"}), tmp_path / "s")
    os.remove(sorted(folder.iterdir())[1])  # a missing slice
    with pytest.warns(UserWarning, match="unevenly spaced"):
        io.read_volume(folder)


# ---- atomic writes -----------------------------------------------------------------------------------------
def _failing_execute(monkeypatch: pytest.MonkeyPatch, fail_on_call: int) -> None:
    original = sitk.ImageFileWriter.Execute
    calls = {"n": 0}

    def execute(self: sitk.ImageFileWriter, *args: object) -> None:
        calls["n"] += 1
        original(self, *args)  # the bytes hit the disk ...
        if calls["n"] >= fail_on_call:
            raise RuntimeError("disk full (simulated)")  # ... then the writer dies

    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", execute)


@pytest.mark.parametrize("fmt", [".nii.gz", ".mhd", ".nhdr", ".seg.nrrd", "dicom"])
def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    vol = LabelMap(np.ones((4, 3, 2), np.uint8))
    _failing_execute(monkeypatch, fail_on_call=3 if fmt == "dicom" else 1)
    with pytest.raises(RuntimeError, match="simulated"):
        io.write_volume(vol, _dest(tmp_path / "new" / "deeper", fmt))
    assert os.listdir(tmp_path) == []  # not even the parent folders it had created


@pytest.mark.parametrize("fmt", [".nii.gz", "dicom"])
def test_failed_overwrite_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    old = Volume(np.full((3, 3, 3), 5, np.int16))
    dest = io.write_volume(old, _dest(tmp_path, fmt))
    before = sorted(os.listdir(tmp_path))
    _failing_execute(monkeypatch, fail_on_call=2 if fmt == "dicom" else 1)
    with pytest.raises(RuntimeError):
        io.write_volume(Volume(np.zeros((3, 3, 3), np.int16)), dest)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before
    np.testing.assert_array_equal(io.read_volume(dest).array, 5)


def test_dicom_overwrite_replaces_series_but_never_a_foreign_folder(tmp_path: Path) -> None:
    dest = io.write_volume(Volume(np.full((5, 2, 2), 1, np.int16)), tmp_path / "series")
    io.write_volume(Volume(np.full((2, 2, 2), 3, np.int16)), dest)
    assert len(os.listdir(dest)) == 2 and io.read_volume(dest).shape == (2, 2, 2)
    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(InvalidInputError, match="not a folder of DICOM files"):
        io.write_volume(Volume(np.zeros((2, 2, 2), np.int16)), foreign)
    assert (foreign / "thesis.txt").read_text(encoding="utf-8") == "precious"
    assert _no_leftovers(tmp_path) == []


def test_write_outputs_writes_all_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image, labels = Volume(np.full((3, 3, 3), 7, np.int16)), LabelMap(np.ones((3, 3, 3), np.uint8))
    old = tmp_path / "image.nii.gz"
    old.write_bytes(b"an earlier result")
    outputs = [(image, old), (labels, tmp_path / "new" / "mask.seg.nrrd"), ("{}\n", tmp_path / "report.json")]
    real = io.write_volume

    def failing(volume: Volume, path: Path, **kwargs: object) -> Path:
        if Path(path).name == "mask.seg.nrrd":
            raise OSError("disk full (simulated)")
        return real(volume, path, **kwargs)

    monkeypatch.setattr(io, "write_volume", failing)
    with pytest.raises(MedGenError, match="none was written"):
        io.write_outputs(outputs)
    assert sorted(os.listdir(tmp_path)) == ["image.nii.gz"] and old.read_bytes() == b"an earlier result"
    monkeypatch.undo()
    written = io.write_outputs(outputs)
    assert [p.name for p in written] == ["image.nii.gz", "mask.seg.nrrd", "report.json"]
    np.testing.assert_array_equal(io.read_volume(old).array, 7)
    assert io.read_labels(tmp_path / "new" / "mask.seg.nrrd").array.sum() == 27
    assert (tmp_path / "report.json").read_text(encoding="utf-8") == "{}\n"
    assert _no_leftovers(tmp_path) == [] and _no_leftovers(tmp_path / "new") == []


def test_staged_outputs_swaps_a_folder_in_whole(tmp_path: Path) -> None:
    from napari_medgen.core.atomic import staged_outputs

    dest = tmp_path / "pairs"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_outputs([dest]) as (staged,):
        staged.mkdir()
        (staged / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert os.listdir(dest) == ["old.txt"] and _no_leftovers(tmp_path) == []
    with staged_outputs([dest]) as (staged,):
        staged.mkdir()
        (staged / "new.txt").write_text("new")
    assert os.listdir(dest) == ["new.txt"] and _no_leftovers(tmp_path) == []


@pytest.mark.parametrize(("name", "is_labels"), [
    ("case_seg.nii.gz", True), ("case.seg.nrrd", True), ("brainmask.mha", True), ("Labels/x.nii", False),
    ("case_lesion.png", True), ("case-gt_2.nrrd", True), ("case_label.nrrd", True), ("case.nii.gz", False),
    ("t1c.nrrd", False), ("image_0000.nii.gz", False),
])
def test_one_naming_rule_for_label_files(name: str, is_labels: bool) -> None:
    from napari_medgen.core.naming import label_base, looks_like_labels, split_name, stem

    assert looks_like_labels(name) is is_labels
    assert split_name("x/case.seg.nrrd") == ("case", ".seg.nrrd") and split_name("notes.txt") is None
    assert stem("a/b.nii.gz") == "b" and stem("c.txt") == "c"
    assert label_base("X_mask_1") == "X" and label_base("X") is None


# ---- small helpers -----------------------------------------------------------------------------------------
def test_detect_format_is_quick_and_never_raises(tmp_path: Path) -> None:
    io.write_volume(Volume(np.zeros((2, 2, 2), np.int16)), tmp_path / "series")
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "seg.seg.nrrd").write_bytes(b"x")
    (tmp_path / "IMG.JPG").write_bytes(b"x")
    (tmp_path / "noext").write_bytes(b"\0" * 128 + b"DICM")
    (tmp_path / "other").mkdir()
    assert io.detect_format(tmp_path / "a.nii.gz") == "nifti"
    assert io.detect_format(tmp_path / "seg.seg.nrrd") == "seg.nrrd"
    assert io.detect_format(tmp_path / "IMG.JPG") == "image2d"
    assert io.detect_format(tmp_path / "series") == "dicom"
    assert io.detect_format(tmp_path / "noext") == "dicom"
    assert io.detect_format(tmp_path / "other") is None
    assert io.detect_format(tmp_path / "missing.nii") is None
    assert io.detect_format("") is None
    assert io.detect_format(None) is None  # type: ignore[arg-type]
    assert ".nii.gz" in io.SUPPORTED_EXTENSIONS and ".seg.nrrd" in io.SUPPORTED_EXTENSIONS


def test_sitk_bridge_keeps_geometry(oblique_volume: Volume) -> None:
    image = io.to_sitk(oblique_volume)
    assert image.GetSize() == oblique_volume.size_xyz and image.GetDirection() == oblique_volume.direction
    assert_same_volume(io.from_sitk(image), oblique_volume)
    assert isinstance(io.from_sitk(image, labels=False), Volume)
    flat = sitk.GetImageFromArray(np.arange(6, dtype=np.uint8).reshape(2, 3))
    flat.SetSpacing((0.5, 0.25))
    as_volume = io.from_sitk(flat, labels=True)
    assert isinstance(as_volume, LabelMap) and as_volume.shape == (1, 2, 3) and as_volume.spacing == (0.5, 0.25, 1.0)
    assert io.to_sitk(Volume(np.zeros((1, 2, 2), bool))).GetPixelID() == sitk.sitkUInt8


def test_convert_keeps_type_and_makes_segmentations(tmp_path: Path, oblique_labels: LabelMap) -> None:
    io.write_volume(oblique_labels, tmp_path / "labels.nii.gz")
    out = io.convert(tmp_path / "labels.nii.gz", tmp_path / "labels.mha")
    back = io.read_volume(out)
    assert back.array.dtype == np.uint8
    assert_same_volume(back, oblique_labels, tol=1e-6)
    seg = io.convert(tmp_path / "labels.nii.gz", tmp_path / "labels.seg.nrrd")
    assert io.read_labels(seg).labels() == [1, 2]


def test_inputs_are_not_modified(tmp_path: Path, oblique_volume: Volume) -> None:
    before = oblique_volume.array.copy()
    io.write_volume(oblique_volume, tmp_path / "v.nrrd")
    with pytest.warns(UserWarning):
        io.write_volume(oblique_volume, tmp_path / "series")
    np.testing.assert_array_equal(oblique_volume.array, before)
    assert np.linalg.det(oblique_volume.direction_matrix) < 0


# ---- real data ---------------------------------------------------------------------------------------------
def _roundtrip(volume: Volume, tmp_path: Path, fmt: str, labels: bool = False) -> Volume:
    path = io.write_volume(volume, _dest(tmp_path, fmt, "labels" if labels else "image"))
    return io.read_labels(path) if labels else io.read_volume(path)


@pytest.mark.realdata
@pytest.mark.parametrize("fmt", ALL_3D)
def test_real_pyradiomics_brain_full_size_every_format(shared_data: Path, tmp_path: Path, fmt: str) -> None:
    image = io.read_volume(shared_data / "pyradiomics/data/brain1_image.nrrd")
    labels = io.read_labels(shared_data / "pyradiomics/data/brain1_label.nrrd", reference=image)
    assert image.shape == (25, 256, 256) and image.array.dtype == np.int16 and labels.labels() == [1]
    back = _roundtrip(image, tmp_path, fmt)
    back_labels = _roundtrip(labels, tmp_path, fmt, labels=True)
    # brain1's direction has det -1: DICOM returns the equivalent right-handed grid
    expect, expect_labels = (right_handed(image), right_handed(labels)) if fmt == "dicom" else (image, labels)
    assert back.array.dtype == np.int16
    assert_same_volume(back, expect)
    assert_same_volume(back_labels, expect_labels)


@pytest.mark.realdata
def test_real_pyradiomics_label_as_seg_nrrd(shared_data: Path, tmp_path: Path) -> None:
    labels = io.read_labels(shared_data / "pyradiomics/data/brain1_label.nrrd")
    back = io.read_labels(io.write_volume(labels, tmp_path / "brain1.seg.nrrd"))
    assert_same_volume(back, labels)


@pytest.fixture(scope="module")
def brats_crop(shared_data: Path) -> tuple[Volume, LabelMap]:
    from napari_medgen.core.geometry import crop_around, index_to_physical

    case = shared_data / "brats2015_subset/brats_2013_pat0001_1"
    flair = io.read_volume(case / "Flair_subtrMeanDivStd.nii.gz")
    seg = io.read_labels(case / "OTMultiClass.nii.gz", reference=flair)
    assert flair.shape == (155, 240, 240) and flair.array.dtype == np.float32
    centre = index_to_physical(flair, np.argwhere(seg.array > 0).mean(axis=0))
    return crop_around(flair, centre, (24, 40, 40)).volume, crop_around(seg, centre, (24, 40, 40)).volume


@pytest.mark.realdata
@pytest.mark.parametrize("fmt", FILE_FORMATS)
def test_real_brats_float_crop_every_file_format(brats_crop: tuple[Volume, LabelMap], tmp_path: Path, fmt: str) -> None:
    flair, seg = brats_crop
    assert len(seg.labels()) >= 2
    assert_same_volume(_roundtrip(flair, tmp_path, fmt), flair)
    assert_same_volume(_roundtrip(seg, tmp_path, fmt, labels=True), seg)


@pytest.mark.realdata
def test_real_brats_through_dicom(brats_crop: tuple[Volume, LabelMap], tmp_path: Path) -> None:
    flair, seg = brats_crop
    with pytest.warns(UserWarning, match="quantised"):
        folder = io.write_volume(flair, tmp_path / "flair")
    back = io.read_volume(folder)
    assert_same_volume(back, flair, exact=False)
    assert np.abs(back.array - flair.array).max() <= _dicom_slope(folder) / 2 + 1e-9
    labels_back = io.read_labels(io.write_volume(seg, tmp_path / "seg"), reference=flair)
    assert_same_volume(labels_back, seg)


@pytest.mark.realdata
def test_real_brats_full_size_nifti_rewrite(shared_data: Path, tmp_path: Path) -> None:
    seg = io.read_labels(shared_data / "brats2015_subset/brats_2013_pat0001_1/OTMultiClass.nii.gz")
    assert seg.shape == (155, 240, 240) and set(seg.labels()) <= {1, 2, 3, 4}
    assert_same_volume(io.read_labels(io.write_volume(seg, tmp_path / "seg.nii.gz")), seg)


@pytest.mark.realdata
@pytest.mark.parametrize("fmt", ALL_3D)
def test_real_totalsegmentator_dicom_series_full_size_every_format(shared_data: Path, tmp_path: Path, fmt: str) -> None:
    ct = io.read_volume(shared_data / "totalsegmentator/example_ct_dicom")
    assert ct.shape == (20, 512, 512) and ct.array.dtype == np.int16
    assert ct.metadata["Modality"] == "CT" and ct.metadata["format"] == "dicom"
    np.testing.assert_allclose(ct.spacing, (0.9765625, 0.9765625, 2.0))
    back = _roundtrip(ct, tmp_path, fmt)
    assert back.array.dtype == np.int16
    assert_same_volume(back, ct)
    if fmt == "dicom":
        assert back.metadata["Modality"] == "CT"


@pytest.mark.realdata
def test_real_single_dicom_files(shared_data: Path) -> None:
    ct = io.read_volume(shared_data / "pypi_packaged/pydicom/CT_small.dcm")
    assert ct.shape == (1, 128, 128) and ct.metadata["Modality"] == "CT"
    assert not any("Patient" in key or key.startswith("0010|") for key in ct.metadata)
    monai_ct = shared_data / "monai/tests/testing_data/CT_DICOM"
    assert io.detect_format(monai_ct) == "dicom"
    with pytest.warns(UserWarning, match="unevenly spaced"):  # 4 slices picked from a longer series
        assert io.read_volume(monai_ct).shape[0] == len(os.listdir(monai_ct))


@pytest.mark.realdata
def test_real_png_slices(shared_data: Path, tmp_path: Path) -> None:
    image = io.read_volume(shared_data / "busi/benign/benign (1).png")
    mask = io.read_labels(shared_data / "busi/benign/benign (1)_mask.png")
    assert image.shape == mask.shape and image.shape[0] == 1
    assert set(np.unique(mask.array)) <= {0, 255}
    back = io.read_volume(io.write_volume(image, tmp_path / "slice.png"))
    np.testing.assert_array_equal(back.array, image.array)
