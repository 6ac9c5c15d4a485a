"""IO: DICOM folders with a truncated slice or several series are read with a warning that names the files or
series, never silently; `medgen convert` prints it as one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_medgen.core.io import read_volume, write_volume
from napari_medgen.core.volume import Volume


def _series(folder: Path, slices: int = 20, value: float = 100.0) -> Path:
    rng = np.random.default_rng(slices)
    arr = (value + 10 * rng.normal(size=(slices, 16, 16))).astype(np.int16)
    volume = Volume(arr, spacing=(0.8, 0.8, 2.0), metadata={"Modality": "CT"})
    return write_volume(volume, folder)


def test_truncated_slice_is_named(tmp_path: Path) -> None:
    folder = _series(tmp_path / "ct")
    files = sorted(folder.iterdir())
    victim = files[9]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated mid-header
    with pytest.warns(UserWarning) as record:
        volume = read_volume(folder)
    text = " ".join(str(w.message) for w in record)
    assert volume.shape[0] == 19
    assert victim.name in text and "could not be read" in text
    assert "unevenly spaced" in text and files[8].name in text and files[10].name in text


def test_several_series_are_announced(tmp_path: Path) -> None:
    folder = _series(tmp_path / "mixed", slices=12)
    other = _series(tmp_path / "other", slices=6, value=500.0)
    for path in other.iterdir():
        path.rename(folder / f"other_{path.name}")
    with pytest.warns(UserWarning, match="folder holds 2 series"):
        volume = read_volume(folder)
    assert volume.shape[0] == 12


def test_convert_prints_the_warning_in_one_line(tmp_path: Path) -> None:
    folder = _series(tmp_path / "ct")
    files = sorted(folder.iterdir())
    files[5].unlink()
    done = subprocess.run([sys.executable, "-m", "napari_medgen.cli", "convert", str(folder),
                           str(tmp_path / "out.nii.gz")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ours = [line for line in done.stderr.splitlines() if "unevenly spaced" in line]
    assert len(ours) == 1 and ours[0].startswith("warning: DICOM slices are unevenly spaced"), done.stderr
    assert files[4].name in ours[0] and files[6].name in ours[0]
