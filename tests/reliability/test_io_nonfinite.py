"""IO / values: NaN and Inf voxels of float NIfTI files survive reading (ITK's NIfTI reader alone returns them as
0), so the guards of generation, inpainting and radiomics refuse them and `convert` keeps them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from napari_medgen.cli import app
from napari_medgen.core import io
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import InvalidInputError

runner = CliRunner()
NAN_AT, POSINF_AT, NEGINF_AT = (3, 2, 1), (2, 2, 2), (0, 0, 0)


def _text(result: object) -> str:
    return " ".join(result.output.split())


def _write_nifti(arr: np.ndarray, path: Path, grid: Volume | None = None) -> Path:
    """A NIfTI file written by ITK (which stores NaN / Inf correctly; only its reader loses them), on ``grid``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    if grid is not None:
        image.SetSpacing(grid.spacing)
        image.SetOrigin(grid.origin)
        image.SetDirection(tuple(float(v) for v in np.asarray(grid.direction).reshape(-1)))
    sitk.WriteImage(image, str(path))
    return path


def _nonfinite_array(dtype: str = "float32") -> np.ndarray:
    arr = np.arange(4 * 5 * 6, dtype=dtype).reshape(4, 5, 6)
    arr[NAN_AT], arr[POSINF_AT], arr[NEGINF_AT] = np.nan, np.inf, -np.inf
    return arr


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_read_volume_keeps_nan_and_inf(tmp_path: Path, ext: str, dtype: str) -> None:
    arr = _nonfinite_array(dtype)
    path = _write_nifti(arr, tmp_path / f"scan{ext}")
    out = np.asarray(io.read_volume(path).array)
    assert np.isnan(out[NAN_AT]) and out[POSINF_AT] == np.inf and out[NEGINF_AT] == -np.inf
    assert np.count_nonzero(~np.isfinite(out)) == 3
    finite = np.isfinite(arr)
    np.testing.assert_array_equal(out[finite], arr[finite])


def test_nibabel_written_file_with_scaling_and_big_endian(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    arr = _nonfinite_array()  # (z, y, x); nibabel takes (x, y, z)
    header = nib.Nifti1Header(endianness=">")
    image = nib.Nifti1Image(arr.transpose(2, 1, 0).astype(">f4"), np.eye(4), header=header)
    path = tmp_path / "big_endian.nii.gz"
    nib.save(image, path)
    out = np.asarray(io.read_volume(path).array)
    assert np.isnan(out[NAN_AT]) and out[POSINF_AT] == np.inf and out[NEGINF_AT] == -np.inf
    assert np.count_nonzero(~np.isfinite(out)) == 3


def test_finite_and_integer_files_unchanged(tmp_path: Path) -> None:
    arr = np.arange(120, dtype=np.float32).reshape(4, 5, 6)
    np.testing.assert_array_equal(io.read_volume(_write_nifti(arr, tmp_path / "f.nii.gz")).array, arr)
    ints = arr.astype(np.int16)
    np.testing.assert_array_equal(io.read_volume(_write_nifti(ints, tmp_path / "i.nii.gz")).array, ints)


def test_convert_to_nrrd_keeps_nan(tmp_path: Path) -> None:
    src = _write_nifti(_nonfinite_array(), tmp_path / "scan.nii.gz")
    dst = tmp_path / "scan.nrrd"
    result = runner.invoke(app, ["convert", str(src), str(dst)])
    assert result.exit_code == 0, _text(result)
    back = np.asarray(io.read_volume(dst).array)
    assert np.isnan(back[NAN_AT]) and back[POSINF_AT] == np.inf and back[NEGINF_AT] == -np.inf


@pytest.fixture
def nan_phantom(tmp_path: Path, brain_phantom: tuple[Volume, LabelMap]) -> tuple[Path, Path, tuple[int, ...]]:
    """The phantom head as a float32 NIfTI with one NaN and one Inf voxel inside its tumour, and its labels."""
    image, labels = brain_phantom
    arr = np.asarray(image.array, dtype=np.float32).copy()
    inside = [tuple(int(v) for v in p) for p in np.argwhere(np.asarray(labels.array) > 0)[:2]]
    arr[inside[0]], arr[inside[1]] = np.nan, np.inf
    path = _write_nifti(arr, tmp_path / "head_nan.nii.gz", image)
    seg = io.write_volume(labels.with_array(np.asarray(labels.array)), tmp_path / "head_seg.nii.gz")
    return path, seg, inside[0]


def test_radiomics_refuses_nan_inside_roi(tmp_path: Path, nan_phantom: tuple[Path, Path, tuple[int, ...]]) -> None:
    image, seg, _ = nan_phantom
    out = tmp_path / "features.json"
    result = runner.invoke(app, ["radiomics", str(image), str(seg), "--out", str(out)])
    assert result.exit_code == 2, _text(result)
    assert "NaN" in _text(result)
    assert not out.exists()


def test_synth_refuses_nan_scan(tmp_path: Path, nan_phantom: tuple[Path, Path, tuple[int, ...]],
                                tiny_bridge: Path) -> None:
    image, seg, _ = nan_phantom
    out, mask_out = tmp_path / "synth.nii.gz", tmp_path / "synth_mask.nii.gz"
    result = runner.invoke(app, ["synth", str(image), "--shape", str(seg), "--out", str(out), "--mask-out",
                                 str(mask_out), "--model", str(tiny_bridge), "--steps", "2", "--quiet"])
    assert result.exit_code == 2, _text(result)
    assert "NaN/Inf" in _text(result)
    assert not out.exists() and not mask_out.exists()


def test_inpaint_refuses_nan_outside_region(tmp_path: Path, brain_phantom: tuple[Volume, LabelMap]) -> None:
    from napari_medgen.pipelines import tumour_removal

    image, labels = brain_phantom
    arr = np.asarray(image.array, dtype=np.float32).copy()
    arr[1, 1, 1] = np.nan  # outside the tumour: the inpainting would read it
    path = _write_nifti(arr, tmp_path / "head_nan.nii.gz", image)
    volume = io.read_volume(path)
    assert np.isnan(np.asarray(volume.array)[1, 1, 1])
    with pytest.raises(InvalidInputError, match="NaN/Inf"):
        tumour_removal.inpaint(volume, np.asarray(labels.array) > 0, method="mean")
