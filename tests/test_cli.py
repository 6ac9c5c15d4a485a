"""The `medgen` command: info, convert (geometry-true), demo, and clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from napari_medgen.cli import app
from napari_medgen.core import io
from napari_medgen.core.volume import LabelMap, Volume

runner = CliRunner()


def test_info_json_lists_versions_device_and_models() -> None:
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["packages"]["torch"].startswith("2.")
    assert data["device"]
    assert "segmenter" in data["trainable_models"]
    assert isinstance(data["bundled_models"], list)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ""])
def test_convert_chain_keeps_voxels_and_geometry(tmp_path: Path, oblique_volume: Volume, ext: str) -> None:
    src = io.write_volume(oblique_volume, tmp_path / "src.nrrd")
    dst = tmp_path / f"converted{ext or '_dicom'}"
    back = tmp_path / "back.nii.gz"
    data = oblique_volume
    if ext == "":  # DICOM stores integers exactly and has only right-handed grids (see core/io.py)
        right_handed = (oblique_volume.direction_matrix @ np.diag([1.0, 1.0, -1.0])).reshape(-1)
        data = oblique_volume.with_array(
            np.round(oblique_volume.array).astype(np.int16), direction=tuple(right_handed)
        )
        src = io.write_volume(data, tmp_path / "src_int.nrrd")
    for a, b in ((src, dst), (dst, back)):
        result = runner.invoke(app, ["convert", str(a), str(b)])
        assert result.exit_code == 0, result.output
    out = io.read_volume(back)
    np.testing.assert_array_equal(out.array, data.array)
    assert out.same_grid(data, 1e-6)


def test_convert_labels_to_seg_nrrd(tmp_path: Path, oblique_labels: LabelMap) -> None:
    src = io.write_volume(oblique_labels, tmp_path / "labels.nii.gz")
    result = runner.invoke(app, ["convert", str(src), str(tmp_path / "labels.seg.nrrd"), "--labels"])
    assert result.exit_code == 0, result.output
    back = io.read_labels(tmp_path / "labels.seg.nrrd")
    np.testing.assert_array_equal(back.array, oblique_labels.array)
    assert back.same_grid(oblique_labels)


def test_bad_input_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not an image")
    result = runner.invoke(app, ["convert", str(bogus), str(tmp_path / "out.nii.gz")])
    assert result.exit_code == 2
    assert "error:" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.nii.gz").exists()


@pytest.mark.slow
def test_demo_writes_outputs_and_exact_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["all_round_trips_exact"] is True
    for name in report["outputs"]:
        assert (out / name).is_file(), name
    brain = io.read_volume(out / "mni152_t1.nii.gz")
    assert brain.shape == (189, 233, 197)
    assert brain.spacing == (1.0, 1.0, 1.0)
    # seg2img output lies on its labels' grid (a slab of the brain grid), and the paired sampler made its pairs
    assert report["slice_diffusion"]["seg2img"]["grid_identical"] is True
    labels, synthetic = io.read_labels(out / "seg2img_labels.nii.gz"), io.read_volume(out / "seg2img_flair.nii.gz")
    assert synthetic.same_grid(labels) and synthetic.spacing == brain.spacing
    assert set(np.unique(labels.array)) <= {0, 1, 2, 4, 5} and {2, 4, 5} <= set(np.unique(labels.array))
    assert report["slice_diffusion"]["paired"]["n"] == 8
    # the brain editor turned the shape-GAN tumour into a glioma (necrotic core, enhancing rim, edema) and removed
    # it again, on the brain's grid, leaving every voxel beyond the blend band untouched
    synth = report["tumour_synthesis"]
    assert synth["grid_identical"] is True and synth["voxels_changed_beyond_blend_band"] == 0
    image, mask = io.read_volume(out / "mni152_synth.nii.gz"), io.read_labels(out / "mni152_synth_mask.nii.gz")
    assert image.same_grid(brain) and mask.same_grid(brain) and image.array.dtype == brain.array.dtype
    assert set(np.unique(mask.array)) == {0, 1, 2, 4}
    core = synth["subregions_cm3"]["necrotic_core"] + synth["subregions_cm3"]["enhancing_tumour"]
    assert abs(core - 8.0) < 0.2 * 8.0
    contrast = synth["subregion_contrast"]
    assert contrast["enhancing_tumour"] > contrast["edema"] and contrast["enhancing_tumour"] > contrast["necrotic_core"]
    assert not np.array_equal(image.array, brain.array)
    removed = io.read_volume(out / "mni152_removed.nii.gz")
    assert removed.same_grid(brain) and not np.array_equal(removed.array, image.array)


def _phantom_files(tmp_path: Path) -> tuple[Path, Path]:
    from napari_medgen.sample_data import make_phantom

    image, labels = make_phantom(shape=(24, 32, 32), spacing=(3.0, 3.0, 4.0), seed=2)
    return (io.write_volume(image, tmp_path / "case1_image.nrrd"),
            io.write_volume(labels, tmp_path / "case1_label.nrrd"))


def test_radiomics_single_pair_to_stdout_matches_engine(tmp_path: Path) -> None:
    from napari_medgen.radiomics import extract_features

    image_path, label_path = _phantom_files(tmp_path)
    result = runner.invoke(app, ["radiomics", str(image_path), str(label_path), "--label", "2"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    expected = extract_features(io.read_volume(image_path), io.read_labels(label_path), 2)
    assert row["Label"] == 2
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, rel=1e-12) or (row[name] is None and np.isnan(value))


def test_radiomics_folder_batch_with_params_file(tmp_path: Path) -> None:
    import csv

    _phantom_files(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("setting:\n  binWidth: 10\n  label: 1\nfeatureClass:\n  shape: [VoxelVolume, Sphericity]\n"
                      "  glcm: []\n")
    out = tmp_path / "features.csv"
    result = runner.invoke(app, ["radiomics", str(tmp_path), "--params", str(params), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with out.open() as handle:
        [row] = list(csv.DictReader(handle))
    assert row["Case"] == "case1"
    shape_cols = [c for c in row if c.startswith("original_shape_")]
    assert sorted(shape_cols) == ["original_shape_Sphericity", "original_shape_VoxelVolume"]
    assert any(c.startswith("original_glcm_") for c in row)
    assert not any(c.startswith("original_firstorder_") for c in row)


def test_radiomics_refuses_filtered_image_types(tmp_path: Path) -> None:
    image_path, label_path = _phantom_files(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("imageType:\n  Original: {}\n  Wavelet: {}\n")
    result = runner.invoke(app, ["radiomics", str(image_path), str(label_path), "--params", str(params)])
    assert result.exit_code == 2
    assert "Wavelet" in result.output


# ---- device: every model command checks it first, before reading any file --------------------------------
_MODEL_COMMANDS = {  # inputs need not exist: the device is checked before anything is read
    "shape": ["shape", "--out", "{out}/mask.nii.gz"],
    "synth": ["synth", "{out}/missing.nii.gz", "--out", "{out}/synth.nii.gz", "--mask-out", "{out}/mask.nii.gz",
              "--center-mm", "0,0,0"],
    "remove": ["remove", "{out}/missing.nii.gz", "{out}/missing_seg.nii.gz", "--out", "{out}/removed.nii.gz"],
    "batch": ["batch", "{out}/missing.nii.gz", "--out-dir", "{out}/aug", "--variants", "1"],
    "seg2img": ["seg2img", "{out}/missing_labels.nii.gz", "--out", "{out}/image.nii.gz"],
    "paired": ["paired", "--n", "1", "--out", "{out}/pairs"],
}


def _cuda_missing() -> bool:
    import torch

    return not torch.cuda.is_available()


@pytest.mark.skipif(not _cuda_missing(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("how", ["option", "env"])
@pytest.mark.parametrize("command", sorted(_MODEL_COMMANDS))
def test_unavailable_device_is_one_line_naming_it_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, how: str
) -> None:
    import time

    args = [a.format(out=tmp_path) for a in _MODEL_COMMANDS[command]]
    if how == "option":
        monkeypatch.delenv("MEDGEN_DEVICE", raising=False)
        args += ["--device", "cuda"]
    else:
        monkeypatch.setenv("MEDGEN_DEVICE", "cuda")
    start = time.perf_counter()
    result = runner.invoke(app, args)
    assert time.perf_counter() - start < 10
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "'cuda'" in lines[0], result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device", ["cuda:99", "tpu"])
def test_unknown_or_missing_device_index_fails_cleanly(tmp_path: Path, device: str) -> None:
    result = runner.invoke(app, ["shape", "--out", str(tmp_path / "mask.nii.gz"), "--device", device])
    assert result.exit_code == 2
    assert device in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_every_model_command_offers_device() -> None:
    for command in ("shape", "synth", "remove", "batch", "seg2img", "paired"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "--device" in result.output, command


def test_cli_is_a_package_of_small_modules() -> None:
    import napari_medgen.cli as cli

    folder = Path(cli.__file__).parent
    assert cli.__file__.endswith("__init__.py")
    for module in folder.glob("*.py"):
        assert len(module.read_text(encoding="utf-8").splitlines()) <= 700, module.name
