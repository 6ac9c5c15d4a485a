"""`medgen compose` on tiny random-weight checkpoints: files, placement, determinism, volumes, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from napari_medgen.cli import app
from napari_medgen.core import io
from napari_medgen.core.volume import Volume

runner = CliRunner()
FAST = ["--steps", "10", "--t-prime", "4", "--tau", "2", "--quiet"]


def _text(result: object) -> str:
    return " ".join(result.output.split())


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A 40x50 uint8 background and a 30x30 object with a round tumour mask, as PNG files."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :50]
    bg = np.clip(100 + 40 * np.sin(xx / 7.0) + rng.normal(0, 5, (40, 50)), 0, 255).astype(np.uint8)
    oy, ox = np.mgrid[:30, :30]
    mask = ((oy - 15) ** 2 + (ox - 14) ** 2 < 36).astype(np.uint8)
    obj = np.clip(60 + rng.normal(0, 5, (30, 30)) + 120 * mask, 0, 255).astype(np.uint8)
    paths = []
    for name, arr in (("bg.png", bg), ("obj.png", obj), ("mask.png", mask * 255)):
        paths.append(io.write_volume(Volume(arr[None]), tmp_path / name))
    return paths[0], paths[1], paths[2]


def _compose(pair: tuple[Path, Path, Path], out: Path, mask_out: Path, *extra: str) -> object:
    return runner.invoke(app, ["compose", *(str(p) for p in pair), "--out", str(out), "--mask-out", str(mask_out),
                               *extra])


def test_copy_paste_writes_image_and_mask(tmp_path: Path, pair: tuple[Path, Path, Path]) -> None:
    out, mask_out = tmp_path / "comp.png", tmp_path / "comp_mask.png"
    result = _compose(pair, out, mask_out, "--at", "25,20", "--method", "copy-paste", "--quiet")
    assert result.exit_code == 0, _text(result)
    image, labels = io.read_volume(out), io.read_labels(mask_out)
    bg = io.read_volume(pair[0])
    assert image.shape == bg.shape == labels.shape and image.array.dtype == np.uint8
    ys, xs = np.nonzero(labels.array[0])
    assert abs(ys.mean() - 20) < 1.5 and abs(xs.mean() - 25) < 1.5
    assert np.array_equal(image.array[labels.array == 0], bg.array[labels.array == 0])
    assert "copy-paste composite" in _text(result)


def test_ours_with_a_model_is_deterministic(tmp_path: Path, pair: tuple[Path, Path, Path], tiny_seg2img: Path) -> None:
    images = []
    for name, seed in (("a", "1"), ("b", "1")):
        out = tmp_path / f"{name}.nii.gz"
        result = _compose(pair, out, tmp_path / f"{name}_mask.nii.gz", "--at", "25,20", "--scale", "1.2", "--model",
                          str(tiny_seg2img), "--seed", seed, *FAST)
        assert result.exit_code == 0, _text(result)
        images.append(io.read_volume(out).array)
    assert np.array_equal(images[0], images[1])
    assert images[0].dtype.kind == "f"


def test_volume_composition_with_slice_axis(tmp_path: Path, tiny_seg2img: Path) -> None:
    rng = np.random.default_rng(0)
    bg = Volume(rng.normal(100, 10, (5, 24, 24)).astype(np.float32), spacing=(3.0, 0.9, 0.9), origin=(4, 5, 6))
    obj_arr = rng.normal(50, 5, (3, 20, 20)).astype(np.float32)
    mask_arr = np.zeros((3, 20, 20), np.uint8)
    mask_arr[1, 8:13, 7:12] = 1
    paths = [io.write_volume(bg, tmp_path / "bg.nii.gz"), io.write_volume(Volume(obj_arr), tmp_path / "obj.nii.gz"),
             io.write_volume(Volume(obj_arr).as_labels(mask_arr), tmp_path / "m.nii.gz")]
    out, mask_out = tmp_path / "out.nii.gz", tmp_path / "out_mask.nii.gz"
    result = _compose(tuple(paths), out, mask_out, "--at", "12,12,2", "--slice-axis", "0", "--model",
                      str(tiny_seg2img), *FAST)
    assert result.exit_code == 0, _text(result)
    image, labels = io.read_volume(out), io.read_labels(mask_out)
    assert image.same_grid(bg, 1e-5) and labels.same_grid(bg, 1e-5)
    assert sorted(set(np.nonzero(labels.array)[0])) == [2]


@pytest.mark.parametrize("extra, words", [
    (["--at", "25,20", "--t-prime", "30"], "T' (30) cannot exceed"),
    (["--at", "25,20", "--tau", "5", "--t-prime", "4"], "tau (5) cannot exceed T'"),
    (["--at", "90,20"], "outside"),
    (["--at", "25"], "--at needs 2"),
    (["--at", "25,20", "--scale", "5"], "larger than"),
    (["--at", "25,20", "--method", "warp"], "Unknown method"),
])
def test_bad_options_fail_cleanly_without_outputs(tmp_path: Path, pair: tuple[Path, Path, Path], extra: list[str],
                                                  words: str) -> None:
    out, mask_out = tmp_path / "o.png", tmp_path / "m.png"
    result = _compose(pair, out, mask_out, "--method", "copy-paste", *extra, "--quiet")
    assert result.exit_code == 2, _text(result)
    assert words in _text(result)
    assert not out.exists() and not mask_out.exists()


def test_empty_mask_and_mismatched_sizes_are_refused(tmp_path: Path, pair: tuple[Path, Path, Path]) -> None:
    empty = io.write_volume(Volume(np.zeros((1, 30, 30), np.uint8)), tmp_path / "empty.png")
    result = _compose((pair[0], pair[1], empty), tmp_path / "o.png", tmp_path / "m.png", "--at", "25,20", "--method",
                      "copy-paste", "--quiet")
    assert result.exit_code == 2 and "mask is empty" in _text(result)
    small = io.write_volume(Volume(np.ones((1, 20, 20), np.uint8)), tmp_path / "small.png")
    result = _compose((pair[0], pair[1], small), tmp_path / "o.png", tmp_path / "m.png", "--at", "25,20", "--method",
                      "copy-paste", "--quiet")
    assert result.exit_code == 2 and "object image's size" in _text(result)
    assert not (tmp_path / "o.png").exists()


def test_a_volume_without_slice_axis_is_refused(tmp_path: Path, pair: tuple[Path, Path, Path]) -> None:
    vol = io.write_volume(Volume(np.zeros((3, 40, 50), np.float32)), tmp_path / "vol.nii.gz")
    result = _compose((vol, pair[1], pair[2]), tmp_path / "o.nii.gz", tmp_path / "m.nii.gz", "--at", "25,20",
                      "--method", "copy-paste", "--quiet")
    assert result.exit_code == 2 and "--slice-axis" in _text(result)


def test_model_without_null_condition_is_refused(tmp_path: Path, pair: tuple[Path, Path, Path],
                                                 tiny_seg2img_standard: Path) -> None:
    result = _compose(pair, tmp_path / "o.png", tmp_path / "m.png", "--at", "25,20", "--model",
                      str(tiny_seg2img_standard), *FAST)
    assert result.exit_code == 2 and "mask-ablated" in _text(result)
