"""Operations / concurrency: cheap argument errors come before any model loads (a 2D image given to synth,
--label-value out of range, --steps 0, an output that cannot be created), and two `medgen paired` runs into the
same folder never both report success."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import napari_medgen.hub as hub
from napari_medgen.cli import app
from napari_medgen.core.atomic import staged_outputs
from napari_medgen.core.io import write_volume
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import OutputPathError

runner = CliRunner()


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the argument error")

    monkeypatch.setattr(hub, "load_cached", refuse)
    monkeypatch.setattr(hub, "load_model", refuse, raising=False)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    scan = write_volume(Volume(rng.normal(size=(12, 12, 12)).astype(np.float32)), tmp_path / "scan.nii.gz")
    flat = write_volume(Volume(rng.normal(size=(1, 12, 12)).astype(np.float32)), tmp_path / "flat.nii.gz")
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[4:8, 4:8, 4:8] = 1
    labels = write_volume(LabelMap(mask), tmp_path / "labels.nii.gz")
    (tmp_path / "afile").write_text("x")
    return {"scan": scan, "flat": flat, "labels": labels, "blocker": tmp_path / "afile"}


def _cases(f: dict[str, Path], tmp: Path) -> dict[str, tuple[list[str], str]]:
    out = ["--out", str(tmp / "o" / "s.nii.gz"), "--mask-out", str(tmp / "o" / "m.nii.gz")]
    return {
        "2d scan to synth": (["synth", str(f["flat"]), "--center-mm", "0,0,0", *out], "needs a 3D scan"),
        "label value": (["synth", str(f["scan"]), "--center-mm", "0,0,0", "--label-value", "300", *out],
                        "--label-value must be 1..255; got 300."),
        "synth steps": (["synth", str(f["scan"]), "--center-mm", "0,0,0", "--steps", "0", *out],
                        "--steps must be at least 1; got 0."),
        "seg2img steps": (["seg2img", str(f["labels"]), "--steps", "0", "--out", str(tmp / "o" / "i.nii.gz")],
                          "--steps must be at least 1; got 0."),
        "paired steps": (["paired", "--n", "1", "--steps", "0", "--out", str(tmp / "o" / "pairs")],
                         "--steps must be at least 1; got 0."),
        "synth output under a file": (["synth", str(f["scan"]), "--center-mm", "0,0,0", "--out",
                                       str(f["blocker"] / "s.nii.gz"), "--mask-out", str(tmp / "m.nii.gz")],
                                      "a parent of it is a file"),
        "remove output under a file": (["remove", str(f["scan"]), str(f["labels"]), "--out",
                                        str(f["blocker"] / "r.nii.gz")], "a parent of it is a file"),
        "batch out-dir under a file": (["batch", str(f["scan"]), "--out-dir", str(f["blocker"] / "aug"),
                                        "--variants", "1"], "a parent of it is a file"),
    }


CASES = ["2d scan to synth", "label value", "synth steps", "seg2img steps", "paired steps",
         "synth output under a file", "remove output under a file", "batch out-dir under a file"]


@pytest.mark.parametrize("case", CASES)
def test_argument_errors_come_before_any_model(tmp_path: Path, files: dict[str, Path], no_model_loads: None,
                                               case: str) -> None:
    args, message = _cases(files, tmp_path)[case]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip() and not line.endswith("...")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not (tmp_path / "o").exists()


def test_folder_written_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "pairs"
    with pytest.raises(OutputPathError, match="written by another run"), staged_outputs([dest],
                                                                                          replace=False) as (tmp,):
        tmp.mkdir()
        (tmp / "mine.txt").write_text("mine")
        dest.mkdir()
        (dest / "theirs.txt").write_text("theirs")  # the other run finished first
    assert sorted(p.name for p in dest.iterdir()) == ["theirs.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".medgen-tmp")]
    with staged_outputs([dest], replace=True) as (tmp,):  # --overwrite: replaced deliberately
        tmp.mkdir()
        (tmp / "mine.txt").write_text("mine")
    assert sorted(p.name for p in dest.iterdir()) == ["mine.txt"]


def test_two_paired_runs_into_one_folder(tmp_path: Path, tiny_paired: tuple[Path, Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import napari_medgen.cli.slice_diffusion as cli

    out = tmp_path / "pairs"
    real = cli.run_with_progress

    def other_run_finishes_first(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)
        out.mkdir()
        (out / "image_000.png").write_bytes(b"the other run's pair")
        return result

    monkeypatch.setattr(cli, "run_with_progress", other_run_finishes_first)
    guider, image_model = tiny_paired
    result = runner.invoke(app, ["paired", "--n", "1", "--steps", "2", "--model", str(guider), "--image-model",
                                 str(image_model), "--out", str(out), "--format", "png"])
    assert result.exit_code == 2, result.output
    assert "written by another run" in result.output
    assert (out / "image_000.png").read_bytes() == b"the other run's pair"
