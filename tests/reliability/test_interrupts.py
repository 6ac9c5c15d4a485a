"""Interrupts: SIGTERM mid-write (what `kill` and schedulers send) takes the same cleanup path as Ctrl-C: the
process exits with code 143 and a one-line message, leaving no staging folder and no partial output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medgen.core.atomic import TMP_SUFFIX

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt", reason="needs POSIX SIGTERM")


def _staging(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(TMP_SUFFIX)]


def test_sigterm_during_convert_leaves_nothing_behind(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src = tmp_path / "big.nrrd"  # uncompressed: fast to read; the gzip of the output is the slow part
    sitk.WriteImage(sitk.GetImageFromArray(rng.random((192, 256, 256), dtype=np.float32)), str(src))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dest = out_dir / "big.nii.gz"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "napari_medgen.cli", "convert", str(src), str(dest)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _staging(out_dir) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is not None or not _staging(out_dir):
            pytest.fail(f"no staging folder appeared before the write ended: {proc.communicate()}")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "SIGTERM" in err and "Traceback" not in err
    assert _staging(out_dir) == []
    assert not dest.exists()
    assert list(out_dir.iterdir()) == []
