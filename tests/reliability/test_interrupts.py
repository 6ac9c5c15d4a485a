"""Interrupts: SIGTERM (what `kill` and schedulers send) and SIGINT (Ctrl-C) mid-write take one cleanup path: the
process exits with code 143 / 130 and a one-line message, leaving no staging folder and no partial output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medgen.core.atomic import TMP_SUFFIX

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt", reason="needs POSIX SIGTERM")


def _staging(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(TMP_SUFFIX)]


def _interrupt(args: list[str], ready: Callable[[], bool], signum: int, timeout: float) -> tuple[int, str]:
    """Run ``medgen ARGS``, send ``signum`` once ``ready()`` holds; (exit code, stderr). Fails the test if the
    command ends before it could be interrupted."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "napari_medgen.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is not None or not ready():
            pytest.fail(f"medgen {args[0]} ended before it could be interrupted: {proc.communicate()}")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


SIGNALS = [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "interrupted")]


@pytest.mark.parametrize(("signum", "code", "word"), SIGNALS)
def test_signal_during_convert_leaves_nothing_behind(tmp_path: Path, signum: int, code: int, word: str) -> None:
    rng = np.random.default_rng(0)
    src = tmp_path / "big.nrrd"  # uncompressed: fast to read; the gzip of the output is the slow part
    sitk.WriteImage(sitk.GetImageFromArray(rng.random((192, 256, 256), dtype=np.float32)), str(src))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dest = out_dir / "big.nii.gz"
    returncode, err = _interrupt(["convert", str(src), str(dest)], lambda: bool(_staging(out_dir)), signum, 120)
    assert returncode == code, err
    assert word in err and "Traceback" not in err
    assert _staging(out_dir) == []
    assert not dest.exists()
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(("signum", "code", "word"), SIGNALS)
def test_signal_during_batch_keeps_finished_pairs_and_reports_incomplete(tmp_path: Path, signum: int, code: int,
                                                                         word: str) -> None:
    import json

    from napari_medgen.core.io import write_volume
    from tests.conftest import brats_phantom

    image, _ = brats_phantom((40, 40, 40))
    scans = [write_volume(image, tmp_path / f"case{i}.nii.gz") for i in range(3)]
    out_dir = tmp_path / "aug"
    manifest = out_dir / "manifest-rank0.json"

    def first_pair_written() -> bool:
        try:
            return bool(json.loads(manifest.read_text(encoding="utf-8"))["items"])
        except (OSError, ValueError, KeyError):
            return False

    args = ["batch", *map(str, scans), "--out-dir", str(out_dir), "--variants", "2", "--volume-range", "800,1500",
            "--margin-mm", "4"]
    returncode, err = _interrupt(args, first_pair_written, signum, 300)
    assert returncode == code, err
    assert word in err and "Traceback" not in err
    leftovers = [p for p in out_dir.rglob("*") if TMP_SUFFIX in p.name]
    assert leftovers == []
    report = json.loads(manifest.read_text(encoding="utf-8"))
    assert report["complete"] is False and report["items"]
    for item in report["items"]:  # what the manifest lists was written completely
        assert (out_dir / item["image"]).is_file() and (out_dir / item["mask"]).is_file()
