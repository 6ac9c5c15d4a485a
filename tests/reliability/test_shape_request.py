"""Operations: `medgen shape` says so when the written mask is far from a requested volume (a reference grid too
thin for it, a request outside the model's range), instead of writing something else silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from napari_medgen.cli import app
from napari_medgen.core.io import write_volume
from napari_medgen.core.volume import Volume

runner = CliRunner()


def test_thin_reference_and_tiny_request_warn(tmp_path: Path) -> None:
    flat = write_volume(Volume(np.zeros((1, 64, 64), np.float32)), tmp_path / "flat.nii.gz")
    cut = runner.invoke(app, ["shape", "--set", "VoxelVolume=500", "--reference", str(flat), "--center-mm",
                              "32,32,0", "--out", str(tmp_path / "cut.nii.gz")])
    assert cut.exit_code == 0, cut.output
    assert "warning: requested VoxelVolume=500 mm3" in cut.output and "reference grid cut" in cut.output
    tiny = runner.invoke(app, ["shape", "--set", "VoxelVolume=0.5", "--out", str(tmp_path / "tiny.nii.gz")])
    assert tiny.exit_code == 0 and "outside the volumes the shape model makes" in tiny.output
    met = runner.invoke(app, ["shape", "--set", "VoxelVolume=4000", "--out", str(tmp_path / "met.nii.gz")])
    assert met.exit_code == 0 and "warning" not in met.output
