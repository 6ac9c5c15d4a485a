"""IO: outputs that cannot be created (a parent that is a file, a read-only folder) are one-line errors through
the CLI and `OutputPathError` through the API, never a traceback; outputs follow the user's umask; a `Volume`
never shares memory a caller can still write."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from napari_medgen.cli import app
from napari_medgen.core.atomic import atomic_write_text, staged_outputs
from napari_medgen.core.io import write_volume
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import OutputPathError

runner = CliRunner()


@pytest.fixture
def case(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    image, labels = tmp_path / "image.nrrd", tmp_path / "labels.nrrd"
    write_volume(Volume(rng.normal(size=(8, 8, 8)).astype(np.float32)), image)
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:6, 2:6, 2:6] = 1
    write_volume(LabelMap(mask), labels)
    return image, labels


def _commands(image: Path, labels: Path, out: Path) -> dict[str, list[str]]:
    return {
        "convert": ["convert", str(image), str(out / "x.nii.gz")],
        "radiomics": ["radiomics", str(image), str(labels), "--out", str(out / "f.csv")],
        "shape": ["shape", "--out", str(out / "m.nii.gz"), "--seed", "0"],
        "paired": ["paired", "--n", "1", "--steps", "2", "--out", str(out / "pairs")],
    }


@pytest.mark.parametrize("command", ["convert", "radiomics", "shape", "paired"])
def test_parent_that_is_a_file_is_a_one_line_error(tmp_path: Path, case: tuple[Path, Path], command: str) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    result = runner.invoke(app, _commands(*case, blocker / "sub")[command])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip() and "%" not in line]
    assert lines[-1].startswith("error: Cannot write ") and "is a file, not a folder" in lines[-1], result.output
    assert blocker.read_text(encoding="utf-8") == "not a folder"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_an_output_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="not writable"):
            atomic_write_text(folder / "a.json", "{}")
    finally:
        folder.chmod(0o755)


def test_api_parent_is_file_raises_output_path_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputPathError, match="a parent of it is a file"), \
            staged_outputs([tmp_path / "afile" / "out.json"]):
        pass
    with pytest.raises(OutputPathError):
        write_volume(Volume(np.zeros((2, 2, 2), np.float32)), tmp_path / "afile" / "v.nii.gz")


def test_outputs_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        text = atomic_write_text(tmp_path / "deep" / "a.csv", "a,b\n")
        volume = tmp_path / "v.nii.gz"
        write_volume(Volume(np.zeros((2, 2, 2), np.float32)), volume)
    finally:
        os.umask(old)
    for path in (text, volume):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE((tmp_path / "deep").stat().st_mode) == 0o755


def test_volume_does_not_share_a_writeable_caller_array() -> None:
    data = np.zeros((3, 3, 3), np.float32)
    volume = Volume(data)
    data[0, 0, 0] = 5.0
    assert volume.array[0, 0, 0] == 0.0
    view_of_writeable = data[:, :, :2]
    view_of_writeable.flags.writeable = False
    held = Volume(view_of_writeable)
    data[1, 1, 1] = 7.0
    assert held.array[1, 1, 1] == 0.0
    assert not volume.array.flags.writeable
    again = Volume(volume.array)
    assert np.shares_memory(again.array, volume.array)  # already frozen: no copy


def test_absent_label_message_stays_short_for_image_like_label_maps() -> None:
    from napari_medgen.errors import InvalidInputError
    from napari_medgen.radiomics.extractor import extract_features

    values = np.arange(4000, dtype=np.int32).reshape(10, 20, 20)
    labels = LabelMap(values)
    with pytest.raises(InvalidInputError) as info:
        labels.mask(5000)
    assert len(str(info.value)) < 200 and "1 .. 3999 (3999 values" in str(info.value)
    with pytest.raises(InvalidInputError) as info:
        extract_features(Volume(values.astype(np.float32)), labels, 5000)
    assert len(str(info.value)) < 250
