"""`medgen synth`, `medgen remove` and `medgen batch` on the tiny texture bridge: geometry, locality, labels,
determinism, errors without output files."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import accelerate
import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from napari_medgen.cli import app
from napari_medgen.core import io
from napari_medgen.core.geometry import index_to_physical
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.pipelines.augmentation import centre_candidates

runner = CliRunner()
FAST = ["--steps", "2", "--quiet"]
BLEND_MM = 2.0  # the backend's default feathering band outside the edited region


def _text(result: object) -> str:
    """The output with rich's line wrapping undone (the test terminal is 80 columns wide)."""
    return " ".join(result.output.split())


def _invoke(*args: str | Path) -> object:
    return runner.invoke(app, [str(a) for a in args])


def _files(folder: Path) -> set[str]:
    """Every entry of ``folder`` (hidden staging folders included), recursively."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def phantom_files(tmp_path: Path, brain_phantom: tuple[Volume, LabelMap]) -> tuple[Path, Path]:
    image, labels = brain_phantom
    return io.write_volume(image, tmp_path / "head.nii.gz"), io.write_volume(labels, tmp_path / "head_seg.nii.gz")


def _ball(volume: Volume, centre_zyx: tuple[int, int, int], radius: float) -> np.ndarray:
    zz, yy, xx = np.indices(volume.shape)
    cz, cy, cx = centre_zyx
    return (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


# ---- synth ------------------------------------------------------------------------------------------------
def test_synth_on_grid_shape_keeps_geometry_and_edits_only_near_the_mask(
    tmp_path: Path, phantom_files: tuple[Path, Path], brain_phantom: tuple[Volume, LabelMap], tiny_bridge: Path
) -> None:
    image, _ = brain_phantom
    region = _ball(image, (24, 20, 30), 4.0)
    shape_file = io.write_volume(image.as_labels(region.astype(np.uint8) * 3), tmp_path / "shape.nii.gz")
    out, mask_out, report = tmp_path / "out.nii.gz", tmp_path / "out_mask.nrrd", tmp_path / "report.json"
    result = _invoke("synth", phantom_files[0], "--shape", shape_file, "--out", out, "--mask-out", mask_out,
                     "--report", report, "--model", tiny_bridge, "--label-value", "5", *FAST)
    assert result.exit_code == 0, _text(result)
    assert "new tumour of" in _text(result)

    source = io.read_volume(phantom_files[0])
    edited, mask = io.read_volume(out), io.read_labels(mask_out)
    for written in (edited, mask):
        assert written.shape == source.shape
        assert written.same_grid(source, 1e-5)
    assert edited.array.dtype == source.array.dtype
    np.testing.assert_array_equal(mask.array, region.astype(np.uint8) * 5)
    changed = edited.array != source.array
    assert changed[region].mean() > 0.5  # the tumour was painted in
    distance = ndimage.distance_transform_edt(~region, sampling=source.spacing_zyx)
    assert distance[changed].max() <= BLEND_MM + 1e-6  # every other voxel is bit-identical
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["operation"] == "synthesize" and data["shape_from"] == "mask on the scan's grid"
    assert data["steps"] == 2 and data["region_voxels"] == int(region.sum())


def test_synth_center_and_set_use_the_shape_generator(
    tmp_path: Path, phantom_files: tuple[Path, Path], brain_phantom: tuple[Volume, LabelMap], tiny_bridge: Path
) -> None:
    image, _ = brain_phantom
    centre = index_to_physical(image, np.array([24.0, 24.0, 20.0]))
    out, mask_out, report = tmp_path / "synth.nii.gz", tmp_path / "synth_mask.nii.gz", tmp_path / "r.json"
    result = _invoke("synth", phantom_files[0], "--center-mm", ",".join(f"{v:.3f}" for v in centre),
                     "--set", "VoxelVolume=500", "--set", "Sphericity=0.8", "--texture", "firstorder_Mean=0.2",
                     "--out", out, "--mask-out", mask_out, "--report", report, "--model", tiny_bridge, "--seed", "3",
                     *FAST)
    assert result.exit_code == 0, _text(result)
    mask = io.read_labels(mask_out)
    assert mask.same_grid(image, 1e-5)
    voxels = np.argwhere(mask.array > 0)
    assert 250 < len(voxels) < 1000  # ~500 mm3 at 1 mm
    np.testing.assert_allclose(index_to_physical(image, voxels.mean(axis=0)), centre, atol=2.5)
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["shape_from"] == "shape generator"
    assert data["shape_request"] == {"VoxelVolume": 500.0, "Sphericity": 0.8}
    assert data["texture_requested"]["original_firstorder_Mean"] == 0.2


# ---- remove -----------------------------------------------------------------------------------------------
def test_remove_every_label_or_one(tmp_path: Path, phantom_files: tuple[Path, Path], tiny_bridge: Path) -> None:
    image_file, labels_file = phantom_files
    source = io.read_volume(image_file)
    out_all, left_all = tmp_path / "all.nii.gz", tmp_path / "all_left.nii.gz"
    result = _invoke("remove", image_file, labels_file, "--out", out_all, "--mask-out", left_all,
                     "--model", tiny_bridge, *FAST)
    assert result.exit_code == 0, _text(result)
    assert "labels left: none" in _text(result)
    remaining = io.read_labels(left_all)
    assert remaining.same_grid(source, 1e-5) and not remaining.array.any()
    edited = io.read_volume(out_all)
    assert edited.same_grid(source, 1e-5)
    assert not np.array_equal(edited.array, source.array)

    out_core, left_core = tmp_path / "core.nii.gz", tmp_path / "core_left.nii.gz"
    result = _invoke("remove", image_file, labels_file, "--label", "2", "--out", out_core, "--mask-out", left_core,
                     "--model", tiny_bridge, *FAST)
    assert result.exit_code == 0, _text(result)
    original = io.read_labels(labels_file).array
    np.testing.assert_array_equal(io.read_labels(left_core).array, np.where(original == 2, 0, original))
    assert 1 in io.read_labels(left_core).labels()


# ---- errors: exit code 2, a message, no files ---------------------------------------------------------------
def test_synth_without_centre_fails_cleanly(tmp_path: Path, phantom_files: tuple[Path, Path],
                                           tiny_bridge: Path) -> None:
    before = _files(tmp_path)
    result = _invoke("synth", phantom_files[0], "--set", "VoxelVolume=500", "--out", tmp_path / "o.nii.gz",
                     "--mask-out", tmp_path / "m.nii.gz", "--model", tiny_bridge, *FAST)
    assert result.exit_code == 2
    assert "--center-mm" in _text(result)
    assert _files(tmp_path) == before


def test_remove_absent_label_fails_cleanly(tmp_path: Path, phantom_files: tuple[Path, Path],
                                          tiny_bridge: Path) -> None:
    before = _files(tmp_path)
    result = _invoke("remove", *phantom_files, "--label", "7", "--out", tmp_path / "o.nii.gz",
                     "--mask-out", tmp_path / "m.nii.gz", "--model", tiny_bridge, *FAST)
    assert result.exit_code == 2
    assert "Label 7 does not occur" in _text(result)
    assert _files(tmp_path) == before


def test_synth_refuses_2d_image(tmp_path: Path, tiny_bridge: Path) -> None:
    rng = np.random.default_rng(0)
    flat = io.write_volume(Volume(rng.integers(0, 255, (1, 40, 40)).astype(np.uint8)), tmp_path / "slice.png")
    before = _files(tmp_path)
    result = _invoke("synth", flat, "--center-mm", "20,20,0", "--out", tmp_path / "o.nii.gz",
                     "--mask-out", tmp_path / "m.nii.gz", "--model", tiny_bridge, *FAST)
    assert result.exit_code == 2
    assert "needs a 3D scan" in _text(result)
    assert _files(tmp_path) == before


def test_wrong_checkpoint_type_fails_cleanly(tmp_path: Path, phantom_files: tuple[Path, Path],
                                            tiny_seg2img: Path) -> None:
    before = _files(tmp_path)
    result = _invoke("remove", *phantom_files, "--out", tmp_path / "o.nii.gz", "--model", tiny_seg2img, *FAST)
    assert result.exit_code == 2
    assert "'bridge-unet'" in _text(result)
    result = _invoke("batch", phantom_files[0], "--out-dir", tmp_path / "aug", "--variants", "1",
                     "--model", tiny_seg2img, *FAST)
    assert result.exit_code == 2
    assert "'bridge-unet'" in _text(result)
    assert _files(tmp_path) == before


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_second_write_leaves_no_new_file(tmp_path: Path, phantom_files: tuple[Path, Path], tiny_bridge: Path,
                                                monkeypatch: pytest.MonkeyPatch, failure: BaseException) -> None:
    write = io.write_volume

    def failing(volume: Volume, path: Path, **kwargs: object) -> Path:
        if Path(path).name == "left.nii.gz":
            raise failure
        return write(volume, path, **kwargs)

    monkeypatch.setattr(io, "write_volume", failing)
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"an earlier result")
    before = _files(tmp_path)
    result = _invoke("remove", *phantom_files, "--out", out, "--mask-out", tmp_path / "left.nii.gz",
                     "--model", tiny_bridge, *FAST)
    assert result.exit_code != 0
    if isinstance(failure, OSError):
        assert result.exit_code == 2 and "none was written" in _text(result)
    assert _files(tmp_path) == before  # no new file, no staging folder left
    assert out.read_bytes() == b"an earlier result"


# ---- batch ------------------------------------------------------------------------------------------------
def test_centre_candidates_stay_inside_the_foreground() -> None:
    arr = np.zeros((40, 40, 40), dtype=np.float32)
    arr[5:35, 8:32, 10:30] = 100.0
    volume = Volume(arr, spacing=(1.0, 1.0, 2.0))  # x, y, z: z voxels are 2 mm
    candidates = centre_candidates(volume, 8.0)
    assert len(candidates) > 0
    distance = ndimage.distance_transform_edt(arr > 0, sampling=volume.spacing_zyx)
    assert distance[tuple(candidates.T)].min() >= 8.0
    assert arr[tuple(candidates.T)].min() == 100.0
    assert len(centre_candidates(volume, 30.0)) == 0


def test_batch_writes_variants_and_manifest_deterministically(
    tmp_path: Path, brain_phantom: tuple[Volume, LabelMap], tiny_bridge: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image, labels = brain_phantom
    cases = tmp_path / "cases"
    io.write_volume(image, cases / "case_a.nii.gz")
    io.write_volume(image.with_array(image.array[:, :, ::-1].copy()), cases / "case_b.nii.gz")
    io.write_volume(labels, cases / "case_a_seg.nii.gz")  # a segmentation: skipped
    options = ["--variants", "2", "--volume-range", "300,600", "--sphericity-range", "0.7,0.9", "--seed", "5",
               "--model", str(tiny_bridge), *FAST]
    first = tmp_path / "aug1"
    result = _invoke("batch", cases, "--out-dir", first, *options)
    assert result.exit_code == 0, _text(result)
    pairs = [(f"case_{c}_synth{k}.nii.gz", f"case_{c}_synth{k}_mask.nii.gz") for c in "ab" for k in range(2)]
    assert _files(first) == {name for pair in pairs for name in pair} | {"manifest-rank0.json"}
    for image_name, mask_name in pairs:
        synthesized, mask = io.read_volume(first / image_name), io.read_labels(first / mask_name)
        assert synthesized.same_grid(image, 1e-5) and mask.same_grid(image, 1e-5)
        region = mask.array > 0
        assert 27 <= region.sum() < 1500
        source = io.read_volume(cases / f"{image_name[:6]}.nii.gz").array
        assert (synthesized.array[region] != source[region]).mean() > 0.5
    manifest = json.loads((first / "manifest-rank0.json").read_text(encoding="utf-8"))
    assert manifest["complete"] is True and manifest["num_processes"] == 1
    assert [(item["image"], item["mask"]) for item in manifest["items"]] == pairs
    requests = [item["shape_request"] for item in manifest["items"]]
    assert all(300 <= r["VoxelVolume"] <= 600 and 0.7 <= r["Sphericity"] <= 0.9 for r in requests)
    assert len({tuple(item["center_mm"]) for item in manifest["items"]}) == 4  # every variant gets its own centre

    # the second of two processes (`accelerate launch`) takes case 1 only, with byte-identical results
    monkeypatch.setattr(accelerate, "PartialState", lambda **_: SimpleNamespace(process_index=1, num_processes=2))
    second = tmp_path / "aug2"
    result = _invoke("batch", cases / "case_a.nii.gz", cases / "case_b.nii.gz", "--out-dir", second, *options)
    assert result.exit_code == 0, _text(result)
    assert _files(second) == {name for pair in pairs[2:] for name in pair} | {"manifest-rank1.json"}
    for image_name, mask_name in pairs[2:]:
        assert (second / image_name).read_bytes() == (first / image_name).read_bytes()
        assert (second / mask_name).read_bytes() == (first / mask_name).read_bytes()
    manifest = json.loads((second / "manifest-rank1.json").read_text(encoding="utf-8"))
    assert manifest["cases"] == ["case_b"] and manifest["process_index"] == 1 and manifest["complete"] is True


# ---- the brain editor (tiny untrained checkpoint: learned inpainting + glioma appearance) --------------------
@pytest.fixture
def brats_files(tmp_path: Path) -> tuple[Path, Path]:
    from tests.conftest import brats_phantom

    image, labels = brats_phantom()
    return io.write_volume(image, tmp_path / "brain.nii.gz"), io.write_volume(labels, tmp_path / "brain_seg.nii.gz")


def test_editor_synth_writes_brats_labels_on_the_scan_grid(tmp_path: Path, brats_files: tuple[Path, Path],
                                                           tiny_editor: Path) -> None:
    source = io.read_volume(brats_files[0])
    centre = index_to_physical(source, np.array([24.0, 24.0, 24.0]))
    out, mask_out, report = tmp_path / "glioma.nii.gz", tmp_path / "glioma_seg.nii.gz", tmp_path / "r.json"
    result = _invoke("synth", brats_files[0], "--center-mm", ",".join(f"{v:.3f}" for v in centre),
                     "--set", "VoxelVolume=2500", "--edema-mm", "2,4", "--texture", "enhancing/mean=0.9",
                     "--sequence", "T1c", "--out", out, "--mask-out", mask_out, "--report", report,
                     "--model", tiny_editor, "--seed", "3", "--quiet")
    assert result.exit_code == 0, _text(result)
    text = _text(result)
    assert "necrotic core (1)" in text and "enhancing (4)" in text and "edema (2)" in text and "cm3" in text
    edited, mask = io.read_volume(out), io.read_labels(mask_out)
    for written in (edited, mask):
        assert written.shape == source.shape and written.same_grid(source, 1e-5)
    assert edited.array.dtype == source.array.dtype
    values = set(np.unique(mask.array).tolist())
    assert values <= {0, 1, 2, 4} and {1, 2, 4} <= values
    assert not np.array_equal(edited.array[mask.array > 0], source.array[mask.array > 0])
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["operation"] == "synthesize" and data["sequence"] == "T1c" and data["edema_mm"] == [2.0, 4.0]
    assert data["texture_controls"] == {"enhancing/mean": 0.9}


def test_editor_synth_splits_a_one_label_shape_without_edema(tmp_path: Path, brats_files: tuple[Path, Path],
                                                             tiny_editor: Path) -> None:
    labels = io.read_labels(brats_files[1])
    core = np.isin(labels.array, (1, 4)).astype(np.uint8)
    shape_file = io.write_volume(labels.with_array(core), tmp_path / "core.nii.gz")
    mask_out = tmp_path / "m.nii.gz"
    result = _invoke("synth", brats_files[0], "--shape", shape_file, "--no-edema", "--necrotic-fraction", "0.3",
                     "--out", tmp_path / "o.nii.gz", "--mask-out", mask_out, "--model", tiny_editor, "--quiet")
    assert result.exit_code == 0, _text(result)
    written = io.read_labels(mask_out).array
    assert set(np.unique(written).tolist()) == {0, 1, 4}
    np.testing.assert_array_equal(written > 0, core > 0)


def test_editor_remove_inpaints_without_steps(tmp_path: Path, brats_files: tuple[Path, Path],
                                             tiny_editor: Path) -> None:
    source = io.read_volume(brats_files[0])
    out, left = tmp_path / "removed.nii.gz", tmp_path / "left.nii.gz"
    result = _invoke("remove", *brats_files, "--out", out, "--mask-out", left, "--model", tiny_editor, "--quiet")
    assert result.exit_code == 0, _text(result)
    text = _text(result)
    assert "labels left: none" in text and "necrotic core (1)" in text and "edema (2)" in text
    edited = io.read_volume(out)
    assert edited.same_grid(source, 1e-5) and edited.array.dtype == source.array.dtype
    assert not io.read_labels(left).array.any()
    tumour = io.read_labels(brats_files[1]).array > 0
    assert not np.array_equal(edited.array[tumour], source.array[tumour])


@pytest.mark.parametrize("command", ["synth", "remove"])
def test_editor_refuses_bridge_options_in_one_line(tmp_path: Path, brats_files: tuple[Path, Path],
                                                   tiny_editor: Path, command: str) -> None:
    before = _files(tmp_path)
    args = (["synth", brats_files[0], "--shape", brats_files[1], "--mask-out", tmp_path / "m.nii.gz"]
            if command == "synth" else ["remove", *brats_files])
    result = _invoke(*args, "--out", tmp_path / "o.nii.gz", "--model", tiny_editor, "--steps", "5", "--quiet")
    assert result.exit_code == 2
    assert "steps appl" in _text(result) and "texture bridge" in _text(result)
    assert len(result.output.strip().splitlines()) == 1
    assert _files(tmp_path) == before


def test_editor_options_are_refused_with_a_bridge(tmp_path: Path, phantom_files: tuple[Path, Path],
                                                  tiny_bridge: Path) -> None:
    result = _invoke("synth", phantom_files[0], "--shape", phantom_files[1], "--no-edema", "--sequence", "T1c",
                     "--out", tmp_path / "o.nii.gz", "--mask-out", tmp_path / "m.nii.gz", "--model", tiny_bridge,
                     *FAST)
    assert result.exit_code == 2
    assert "--sequence, --edema-mm/--no-edema apply to the brain editor" in _text(result)
    result = _invoke("synth", phantom_files[0], "--edema-mm", "4", "--shape", phantom_files[1],
                     "--out", tmp_path / "o.nii.gz", "--mask-out", tmp_path / "m.nii.gz", "--model", tiny_bridge)
    assert result.exit_code == 2 and "--edema-mm needs 2 comma-separated numbers" in _text(result)
