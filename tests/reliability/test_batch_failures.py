"""Operations: one bad case does not abort `medgen batch`. The bad case is listed (one line each, and in the
manifest's "failed"), the other cases are still made, the exit code is 1; cancelling still stops the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from napari_medgen.cli import app
from napari_medgen.core import io
from napari_medgen.core.progress import CancelToken, run_job
from napari_medgen.errors import CancelledError
from napari_medgen.pipelines import augmentation
from tests.conftest import brats_phantom

runner = CliRunner()
OPTIONS = ["--variants", "1", "--volume-range", "2000,3000", "--margin-mm", "5", "--seed", "1", "--quiet"]


@pytest.fixture
def cases(tmp_path: Path) -> Path:
    """case_a (good), case_b (a few random bytes named .nii.gz), case_c (good)."""
    image, _ = brats_phantom()
    folder = tmp_path / "cases"
    io.write_volume(image, folder / "case_a.nii.gz")
    (folder / "case_b.nii.gz").write_bytes(np.random.default_rng(0).bytes(13))
    io.write_volume(image.with_array(image.array[:, :, ::-1].copy()), folder / "case_c.nii.gz")
    return folder


def test_a_corrupt_case_is_reported_and_the_others_are_made(cases: Path, tmp_path: Path, tiny_editor: Path) -> None:
    out = tmp_path / "aug"
    result = runner.invoke(app, ["batch", str(cases), "--out-dir", str(out), "--model", str(tiny_editor), *OPTIONS])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "case_a_synth0.nii.gz", "case_a_synth0_mask.nii.gz", "case_c_synth0.nii.gz", "case_c_synth0_mask.nii.gz",
        "manifest-rank0.json"]
    manifest = json.loads((out / "manifest-rank0.json").read_text(encoding="utf-8"))
    assert manifest["complete"] is True
    assert [item["case"] for item in manifest["items"]] == ["case_a", "case_c"]
    [failure] = manifest["failed"]
    assert failure["case"] == "case_b" and failure["variant"] is None
    assert failure["source"] == str(cases / "case_b.nii.gz")
    assert failure["error"].startswith("case_b.nii.gz: Could not decode")
    failed_lines = [line for line in result.output.splitlines() if line.startswith("failed:")]
    assert len(failed_lines) == 1 and "case_b.nii.gz: Could not decode" in failed_lines[0]
    assert "1 failure(s) in 1 case(s)" in result.output.splitlines()[-1]


def test_a_good_batch_exits_0_with_an_empty_failed_list(tmp_path: Path, tiny_editor: Path) -> None:
    image, _ = brats_phantom()
    path = io.write_volume(image, tmp_path / "good.nii.gz")
    out = tmp_path / "aug"
    result = runner.invoke(app, ["batch", str(path), "--out-dir", str(out), "--model", str(tiny_editor), *OPTIONS])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest-rank0.json").read_text(encoding="utf-8"))
    assert manifest["failed"] == [] and manifest["complete"] is True and len(manifest["items"]) == 1


def test_a_failing_variant_is_recorded_with_its_number(
    tmp_path: Path, tiny_editor: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from napari_medgen.pipelines import tumor_synthesis

    image, _ = brats_phantom()
    path = io.write_volume(image, tmp_path / "head.nii.gz")
    real = tumor_synthesis.synthesize_job
    calls: list[int] = []

    def flaky(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(tumor_synthesis, "synthesize_job", flaky)
    result = augmentation.augment([path], tmp_path / "out", variants=2, model=tiny_editor, volume_range=(2000, 3000),
                                  margin_mm=5.0)
    assert [item["variant"] for item in result.items] == [1]
    [failure] = result.failures
    assert failure["variant"] == 0 and "head.nii.gz, variant 0" in failure["error"]
    assert "No space left on device" in failure["error"]
    assert result.manifest["complete"] is True


@pytest.mark.parametrize("stop", [KeyboardInterrupt, CancelledError])
def test_interrupts_still_stop_the_run(
    cases: Path, tmp_path: Path, tiny_editor: Path, monkeypatch: pytest.MonkeyPatch, stop: type[BaseException]
) -> None:
    from napari_medgen.pipelines import tumor_synthesis

    def interrupted(*args: object, **kwargs: object) -> object:
        raise stop("stop")

    monkeypatch.setattr(tumor_synthesis, "synthesize_job", interrupted)
    out = tmp_path / "out"
    job = augmentation.augment_job([cases], out, variants=1, model=tiny_editor, volume_range=(2000, 3000),
                                   margin_mm=5.0)
    with pytest.raises(stop):
        run_job(job, None, CancelToken())
    manifest = json.loads((out / "manifest-rank0.json").read_text(encoding="utf-8"))
    assert manifest["complete"] is False and manifest["items"] == []
