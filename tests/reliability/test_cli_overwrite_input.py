"""Operations: no command overwrites one of its inputs (same file, or a link to it) unless --overwrite-input is
given; the refusal is a one-line error with exit code 2, before any model loads, and the input is unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from napari_medgen.cli import app
from napari_medgen.core import io
from napari_medgen.core.volume import LabelMap, Volume

runner = CliRunner()
FAST = ["--steps", "2", "--quiet"]


def _invoke(*args: str | Path) -> object:
    return runner.invoke(app, [str(a) for a in args])


def _text(result: object) -> str:
    return " ".join(result.output.split())


def _assert_refused(result: object, path: Path, before: bytes) -> None:
    text = _text(result)
    assert result.exit_code == 2, text
    assert "error:" in text and "--overwrite-input" in text and path.name in text
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1, result.output
    assert "Traceback" not in result.output
    assert path.read_bytes() == before


@pytest.fixture
def case(tmp_path: Path, brain_phantom: tuple[Volume, LabelMap]) -> tuple[Path, Path, Path]:
    """The phantom scan, its labels and a small tumour mask on its grid, as files."""
    image, labels = brain_phantom
    zz, yy, xx = np.indices(image.shape)
    ball = ((zz - 24) ** 2 + (yy - 20) ** 2 + (xx - 30) ** 2 <= 16).astype(np.uint8)
    return (io.write_volume(image, tmp_path / "scan.nii.gz"), io.write_volume(labels, tmp_path / "seg.nii.gz"),
            io.write_volume(image.as_labels(ball), tmp_path / "shape.nii.gz"))


def test_synth_out_is_the_scan(tmp_path: Path, case: tuple[Path, Path, Path], tiny_bridge: Path) -> None:
    scan, _, shape = case
    before = scan.read_bytes()
    args = ["synth", scan, "--shape", shape, "--out", scan, "--mask-out", tmp_path / "m.nii.gz",
            "--model", tiny_bridge, *FAST]
    _assert_refused(_invoke(*args), scan, before)
    assert not (tmp_path / "m.nii.gz").exists()
    result = _invoke(*args, "--overwrite-input")
    assert result.exit_code == 0, _text(result)
    assert scan.read_bytes() != before


def test_remove_mask_out_is_the_labels(tmp_path: Path, case: tuple[Path, Path, Path], tiny_bridge: Path) -> None:
    scan, seg, _ = case
    before = seg.read_bytes()
    out = tmp_path / "removed.nii.gz"
    args = ["remove", scan, seg, "--out", out, "--mask-out", seg, "--model", tiny_bridge, *FAST]
    _assert_refused(_invoke(*args), seg, before)
    assert not out.exists()
    result = _invoke(*args, "--overwrite-input")
    assert result.exit_code == 0, _text(result)
    assert out.exists()
    assert not np.asarray(io.read_labels(seg).array).any()  # every label removed: the labels that remain


def test_convert_onto_itself(case: tuple[Path, Path, Path]) -> None:
    scan = case[0]
    before = scan.read_bytes()
    _assert_refused(_invoke("convert", scan, scan), scan, before)
    result = _invoke("convert", scan, scan, "--overwrite-input")
    assert result.exit_code == 0, _text(result)
    np.testing.assert_array_equal(io.read_volume(scan).array, io.read_volume(scan).array)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_convert_onto_a_link_to_the_input(tmp_path: Path, case: tuple[Path, Path, Path]) -> None:
    scan = case[0]
    link = tmp_path / "link.nii.gz"
    try:
        link.symlink_to(scan)
    except OSError:
        pytest.skip("cannot create symbolic links here")
    before = scan.read_bytes()
    _assert_refused(_invoke("convert", scan, link), link, before)
    _assert_refused(_invoke("convert", link, scan), scan, before)
    # and through a linked folder
    folder_link = tmp_path / "again"
    folder_link.symlink_to(tmp_path, target_is_directory=True)
    _assert_refused(_invoke("convert", scan, folder_link / scan.name), scan, before)
    assert _invoke("convert", scan, link, "--overwrite-input").exit_code == 0


def test_other_writing_commands_refuse_before_any_work(tmp_path: Path, case: tuple[Path, Path, Path]) -> None:
    scan, seg, shape = case
    before = {p: p.read_bytes() for p in case}
    _assert_refused(_invoke("radiomics", scan, seg, "--out", seg), seg, before[seg])
    _assert_refused(_invoke("shape", "--out", scan, "--reference", scan, "--center-mm", "0,0,0"), scan, before[scan])
    _assert_refused(_invoke("seg2img", seg, "--out", seg), seg, before[seg])
    _assert_refused(_invoke("remove", scan, seg, "--out", seg), seg, before[seg])
    _assert_refused(_invoke("synth", scan, "--shape", shape, "--out", tmp_path / "o.nii.gz", "--mask-out", shape),
                    shape, before[shape])
    _assert_refused(_invoke("synth", scan, "--out", tmp_path / "o.nii.gz", "--mask-out", seg, "--texture-from", scan,
                            seg), seg, before[seg])
    # a folder output replaced whole must not hold an input (DICOM convert into the inputs' folder)
    result = _invoke("convert", scan, tmp_path)
    assert result.exit_code == 2 and scan.read_bytes() == before[scan]
    assert not (tmp_path / "o.nii.gz").exists()


def test_batch_refuses_an_input_named_like_its_output(tmp_path: Path, case: tuple[Path, Path, Path]) -> None:
    scan = case[0]
    out_dir = tmp_path / "aug"
    out_dir.mkdir()
    clash = out_dir / "scan_synth0.nii.gz"
    clash.write_bytes(scan.read_bytes())
    before = clash.read_bytes()
    _assert_refused(_invoke("batch", scan, clash, "--out-dir", out_dir, "--variants", "1"), clash, before)
    _assert_refused(_invoke("batch", scan, "--out-dir", scan, "--variants", "1"), scan, scan.read_bytes())
