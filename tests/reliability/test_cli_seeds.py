"""Params: every command with --seed refuses a negative seed or one >= 2**63 with a one-line error (exit code 2)
before any work: no model is loaded and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from napari_medgen.cli import app

runner = CliRunner()


def _commands(tmp: Path) -> dict[str, list[str]]:
    # inputs that do not exist and models that are not there: the seed is refused before either is looked at
    missing = str(tmp / "absent.nii.gz")
    return {
        "shape": ["shape", "--out", str(tmp / "out" / "m.nii.gz")],
        "synth": ["synth", missing, "--center-mm", "0,0,0", "--out", str(tmp / "out" / "s.nii.gz"),
                  "--mask-out", str(tmp / "out" / "s_mask.nii.gz")],
        "seg2img": ["seg2img", missing, "--out", str(tmp / "out" / "i.nii.gz")],
        "paired": ["paired", "--n", "1", "--out", str(tmp / "out" / "pairs")],
        "batch": ["batch", missing, "--out-dir", str(tmp / "out" / "aug"), "--variants", "1"],
    }


@pytest.mark.parametrize("seed", ["-1", str(2**64), str(2**63)])
@pytest.mark.parametrize("command", ["shape", "synth", "seg2img", "paired", "batch"])
def test_out_of_range_seeds_are_refused_in_one_line(tmp_path: Path, command: str, seed: str) -> None:
    args = [*_commands(tmp_path)[command], "--seed", seed, "--model", str(tmp_path / "no-model")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: --seed must be an integer from 0 to {2**63 - 1}; got {seed}."]
    assert not (tmp_path / "out").exists()


def test_the_largest_seed_passes_the_seed_check(tmp_path: Path) -> None:
    result = runner.invoke(app, [*_commands(tmp_path)["shape"], "--seed", str(2**63 - 1),
                                 "--model", str(tmp_path / "no-model")])
    assert "--seed" not in result.output
