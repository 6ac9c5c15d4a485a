"""The augmentation pipeline behind `medgen batch`: case discovery, centres, requests, manifest, sharding,
cancellation (the CLI's end-to-end test is in tests/test_cli_tumor_synthesis.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_medgen.core import io
from napari_medgen.core.progress import CancelToken, run_job
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import CancelledError, InvalidInputError
from napari_medgen.pipelines.augmentation import (
    augment,
    augment_job,
    case_name,
    find_cases,
    random_request,
)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_find_cases_skips_label_files_hidden_files_and_the_output_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cases"
    for name in ("b.nii.gz", "a.nrrd", "a_seg.nii.gz", "b_label.nrrd", "brainmask.mha", "c_lesion.nii", ".x.nii",
                 "notes.txt"):
        _touch(folder / name)
    single = _touch(tmp_path / "single.mha")
    cases = find_cases([folder, single], tmp_path / "out")
    assert [name for name, _ in cases] == ["a", "b", "single"]
    with pytest.raises(InvalidInputError, match="No images"):  # files in the output folder are earlier outputs
        find_cases([folder], folder)
    assert case_name(Path("x/case.nii.gz")) == "case" and case_name(Path("scan.mha")) == "scan"


def test_find_cases_refuses_missing_empty_and_duplicate_inputs(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        find_cases([tmp_path / "missing.nii.gz"], tmp_path / "out")
    _touch(tmp_path / "only_mask.nii.gz")
    with pytest.raises(InvalidInputError, match="No images"):
        find_cases([tmp_path], tmp_path / "out")
    a, b = _touch(tmp_path / "x" / "case.nii.gz"), _touch(tmp_path / "y" / "case.nrrd")
    with pytest.raises(InvalidInputError, match="case"):
        find_cases([a, b], tmp_path / "out")


def test_random_requests_are_seeded_and_in_range() -> None:
    draws = [random_request(np.random.default_rng([3, 0, k]), (300.0, 600.0), (0.7, 0.9)) for k in range(20)]
    again = [random_request(np.random.default_rng([3, 0, k]), (300.0, 600.0), (0.7, 0.9)) for k in range(20)]
    assert draws == again
    assert all(300 <= d["VoxelVolume"] <= 600 and 0.7 <= d["Sphericity"] <= 0.9 for d in draws)


@pytest.mark.parametrize("options", [{"variants": 0}, {"seed": -1}, {"steps": 0}, {"margin_mm": float("nan")},
                                     {"volume_range": (600.0, 300.0)}, {"sphericity_range": (0.5, 1.5)}])
def test_bad_options_fail_before_any_output(tmp_path: Path, options: dict) -> None:
    image = _touch(tmp_path / "case.nii.gz")
    with pytest.raises(InvalidInputError):
        augment([image], tmp_path / "out", **{"variants": 1, **options})
    assert not (tmp_path / "out").exists()


def test_augment_writes_pairs_manifest_and_reports_each_pair(
    tmp_path: Path, brain_phantom: tuple[Volume, LabelMap], tiny_bridge: Path
) -> None:
    image, _ = brain_phantom
    path = io.write_volume(image, tmp_path / "cases" / "head.nii.gz")
    seen: list[str] = []
    options = {"variants": 2, "volume_range": (300.0, 600.0), "sphericity_range": (0.7, 0.9), "seed": 1,
               "model": tiny_bridge, "steps": 2, "device": "cpu"}
    result = augment([path], tmp_path / "out", on_written=lambda item, _: seen.append(item["image"]), **options)
    assert seen == ["head_synth0.nii.gz", "head_synth1.nii.gz"]
    assert result.steps == 2 and result.cases == ["head"] and result.manifest["complete"] is True
    on_disk = json.loads(result.manifest_path.read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(result.manifest))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["head_synth0.nii.gz", "head_synth0_mask.nii.gz", "head_synth1.nii.gz", "head_synth1_mask.nii.gz",
         "manifest-rank0.json"])
    # process 1 of 2 has no case here: it writes an empty, complete manifest of its own
    other = augment([path], tmp_path / "out", process_index=1, num_processes=2, **options)
    assert other.cases == [] and other.items == [] and other.manifest["complete"] is True


def test_cancel_leaves_whole_pairs_and_an_incomplete_manifest(
    tmp_path: Path, brain_phantom: tuple[Volume, LabelMap], tiny_bridge: Path
) -> None:
    image, _ = brain_phantom
    path = io.write_volume(image, tmp_path / "head.nii.gz")
    cancel = CancelToken()
    job = augment_job([path], tmp_path / "out", variants=3, model=tiny_bridge, steps=2, volume_range=(300.0, 600.0),
                      on_written=lambda item, _: cancel.cancel())
    with pytest.raises(CancelledError):
        run_job(job, None, cancel)
    manifest = json.loads((tmp_path / "out" / "manifest-rank0.json").read_text(encoding="utf-8"))
    assert manifest["complete"] is False and [i["variant"] for i in manifest["items"]] == [0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "head_synth0.nii.gz", "head_synth0_mask.nii.gz", "manifest-rank0.json"]


def test_a_scan_without_room_for_a_centre_names_the_file(
    tmp_path: Path, brain_phantom: tuple[Volume, LabelMap], tiny_bridge: Path
) -> None:
    image, _ = brain_phantom
    path = io.write_volume(image, tmp_path / "head.nii.gz")
    result = augment([path], tmp_path / "out", variants=1, model=tiny_bridge, steps=2, margin_mm=500.0)
    assert result.items == [] and result.manifest["complete"] is True
    [failure] = result.failures
    assert failure["case"] == "head" and failure["variant"] is None and failure["source"] == str(path)
    assert failure["error"].startswith("head.nii.gz: no voxel")
