"""`medgen seg2img` and `medgen paired` on tiny untrained checkpoints: geometry, determinism, files, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from napari_medgen.cli import app
from napari_medgen.core import io
from napari_medgen.core.volume import LabelMap, Volume

runner = CliRunner()
FAST = ["--steps", "2", "--quiet"]


def _text(result: object) -> str:
    """The output with rich's line wrapping undone (the test terminal is 80 columns wide)."""
    return " ".join(result.output.split())


def _seg2img(labels: Path, out: Path, model: Path, *extra: str) -> object:
    return runner.invoke(app, ["seg2img", str(labels), "--out", str(out), "--model", str(model), *FAST, *extra])


def _paired(out: Path, guider: Path, image_model: Path, n: int = 3, *extra: str) -> object:
    return runner.invoke(app, ["paired", "--n", str(n), "--out", str(out), "--model", str(guider),
                               "--image-model", str(image_model), *FAST, *extra])


@pytest.fixture
def labels_file(tmp_path: Path, oblique_labels: LabelMap) -> Path:
    """Classes 1 and 2 on an anisotropic, oblique, flipped grid (class 5 of the tiny model is absent)."""
    return io.write_volume(oblique_labels, tmp_path / "labels.nii.gz")


# ---- seg2img --------------------------------------------------------------------------------------------
def test_seg2img_writes_image_on_the_labels_grid(tmp_path: Path, labels_file: Path, oblique_labels: LabelMap,
                                                 tiny_seg2img: Path) -> None:
    out = tmp_path / "image.nrrd"
    result = _seg2img(labels_file, out, tiny_seg2img)
    assert result.exit_code == 0, _text(result)
    image = io.read_volume(out)
    assert image.shape == oblique_labels.shape
    assert image.same_grid(oblique_labels, 1e-6)
    assert image.array.dtype.kind == "f"
    assert image.array.min() >= 0.0 and image.array.max() <= 1.0
    assert "constrained classes: 1 core, 2 edema, 5 tissue (absent)" in _text(result)
    # class 5 is missing from the labels of a mask-ablated model: the user learns how to leave it free
    assert "hint: class 5 tissue is not in the labels" in _text(result)
    assert "--drop-class 5" in _text(result)


def test_seg2img_same_seed_same_image_other_seed_differs(tmp_path: Path, labels_file: Path,
                                                         tiny_seg2img: Path) -> None:
    outputs = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        out = tmp_path / f"{name}.nii.gz"
        result = _seg2img(labels_file, out, tiny_seg2img, "--seed", seed, "--noise", "correlated")
        assert result.exit_code == 0, _text(result)
        outputs.append(io.read_volume(out).array)
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])


def test_seg2img_drop_class_on_ablated_model(tmp_path: Path, labels_file: Path, tiny_seg2img: Path) -> None:
    out = tmp_path / "image.nii.gz"
    result = _seg2img(labels_file, out, tiny_seg2img, "--drop-class", "5", "--axis", "2", "--sampler", "ddim")
    assert result.exit_code == 0, _text(result)
    assert "dropped: 5 tissue" in _text(result)
    assert "hint:" not in _text(result)


def test_seg2img_drop_class_refused_by_standard_model(tmp_path: Path, labels_file: Path,
                                                      tiny_seg2img_standard: Path) -> None:
    out = tmp_path / "image.nii.gz"
    result = _seg2img(labels_file, out, tiny_seg2img_standard, "--drop-class", "5")
    assert result.exit_code == 2
    assert "error:" in _text(result) and "mask ablation" in _text(result)
    assert "Traceback" not in _text(result)
    assert not out.exists()
    # without --drop-class the standard model works, and gives no --drop-class hint
    result = _seg2img(labels_file, out, tiny_seg2img_standard)
    assert result.exit_code == 0, _text(result)
    assert "hint:" not in _text(result)


def test_seg2img_refuses_unknown_class_values(tmp_path: Path, oblique_labels: LabelMap, tiny_seg2img: Path) -> None:
    arr = np.array(oblique_labels.array)
    arr[0, 0, 0] = 7
    labels = io.write_volume(oblique_labels.with_array(arr), tmp_path / "labels.nrrd")
    out = tmp_path / "image.nii.gz"
    result = _seg2img(labels, out, tiny_seg2img)
    assert result.exit_code == 2
    assert "[7]" in _text(result) and "Traceback" not in _text(result)
    assert not out.exists()


@pytest.mark.parametrize("option", [["--seed", "-1"], ["--batch-size", "0"]])
def test_seg2img_and_paired_refuse_bad_counts(tmp_path: Path, labels_file: Path, tiny_seg2img: Path,
                                              tiny_paired: tuple[Path, Path], option: list[str]) -> None:
    result = _seg2img(labels_file, tmp_path / "image.nii.gz", tiny_seg2img, *option)
    assert result.exit_code == 2 and option[0] in _text(result)
    result = _paired(tmp_path / "pairs", *tiny_paired, 1, *option)
    assert result.exit_code == 2 and option[0] in _text(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]  # nothing written


def test_seg2img_refuses_an_image_given_as_labels(tmp_path: Path, oblique_volume: Volume, tiny_seg2img: Path) -> None:
    image = io.write_volume(oblique_volume, tmp_path / "scan.nii.gz")
    out = tmp_path / "image.nii.gz"
    result = _seg2img(image, out, tiny_seg2img)
    assert result.exit_code == 2
    assert "non-integer" in _text(result)
    assert not out.exists()


def test_seg2img_2d_png_labels_to_png(tmp_path: Path, tiny_seg2img: Path) -> None:
    arr = np.zeros((1, 20, 24), dtype=np.uint8)
    arr[0, 4:12, 6:18] = 5
    arr[0, 6:9, 8:12] = 1
    labels = io.write_volume(LabelMap(arr, spacing=(0.5, 0.25, 1.0)), tmp_path / "mask.png")
    out = tmp_path / "image.png"
    result = _seg2img(labels, out, tiny_seg2img)
    assert result.exit_code == 0, _text(result)
    image = io.read_volume(out)
    assert image.shape == (1, 20, 24)
    assert image.array.dtype == np.uint8
    assert image.spacing[:2] == pytest.approx((0.5, 0.25))
    # a 3D label map cannot go to a 2D file: refused before generating
    result = _seg2img(tmp_path / "mask.png", tmp_path / "x.png", tiny_seg2img, "--axis", "1")
    assert result.exit_code == 2


def test_seg2img_refuses_3d_labels_to_png_before_generating(tmp_path: Path, labels_file: Path,
                                                            tiny_seg2img: Path) -> None:
    result = _seg2img(labels_file, tmp_path / "image.png", tiny_seg2img)
    assert result.exit_code == 2
    assert "one 2D slice" in _text(result)


def test_seg2img_with_reference(tmp_path: Path, labels_file: Path, oblique_volume: Volume,
                                tiny_seg2img: Path) -> None:
    reference = io.write_volume(oblique_volume, tmp_path / "scan.nrrd")
    out = tmp_path / "image.nii.gz"
    result = _seg2img(labels_file, out, tiny_seg2img, "--reference", str(reference), "--similarity", "0.5")
    assert result.exit_code == 0, _text(result)
    image = io.read_volume(out)
    assert image.same_grid(oblique_volume, 1e-6)
    # mapped back to the reference's intensity units (about 100 +- 20), not the model's [0, 1]
    assert image.array.max() > 2.0


def test_seg2img_reference_on_another_grid_is_refused(tmp_path: Path, labels_file: Path, oblique_volume: Volume,
                                                      tiny_seg2img: Path) -> None:
    moved = Volume(oblique_volume.array, oblique_volume.spacing, (0.0, 0.0, 0.0), oblique_volume.direction)
    reference = io.write_volume(moved, tmp_path / "scan.nrrd")
    out = tmp_path / "image.nii.gz"
    result = _seg2img(labels_file, out, tiny_seg2img, "--reference", str(reference))
    assert result.exit_code == 2
    assert "grid" in _text(result) and "Traceback" not in _text(result)
    assert not out.exists()


def test_seg2img_refuses_a_guider_checkpoint(tmp_path: Path, labels_file: Path,
                                             tiny_paired: tuple[Path, Path]) -> None:
    guider, _ = tiny_paired
    result = _seg2img(labels_file, tmp_path / "image.nii.gz", guider)
    assert result.exit_code == 2
    assert "'paired-guider'" in _text(result) and "'mask-diffusion'" in _text(result)


# ---- paired ----------------------------------------------------------------------------------------------
def test_paired_writes_png_pairs_and_refuses_to_overwrite(tmp_path: Path, tiny_paired: tuple[Path, Path]) -> None:
    guider, image_model = tiny_paired
    out = tmp_path / "new" / "pairs"
    result = _paired(out, guider, image_model, 3)
    assert result.exit_code == 0, _text(result)
    assert sorted(p.name for p in out.iterdir()) == [
        "image_000.png", "image_001.png", "image_002.png", "mask_000.png", "mask_001.png", "mask_002.png"]
    for i in range(3):
        image = io.read_volume(out / f"image_{i:03d}.png")
        mask = io.read_labels(out / f"mask_{i:03d}.png")
        assert image.shape == mask.shape == (1, 16, 16)
        assert image.array.dtype == np.uint8
        assert mask.array.dtype.kind in "iu"
        assert set(np.unique(mask.array)) <= {0, 1}
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = _paired(out, guider, image_model, 2)
    assert result.exit_code == 2
    assert "--overwrite" in _text(result)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    result = _paired(out, guider, image_model, 2, "--overwrite", "--seed", "1")
    assert result.exit_code == 0, _text(result)
    assert sorted(p.name for p in out.iterdir()) == ["image_000.png", "image_001.png", "mask_000.png", "mask_001.png"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging folders left


def test_paired_float_format_is_deterministic(tmp_path: Path, tiny_paired: tuple[Path, Path]) -> None:
    guider, image_model = tiny_paired
    for name in ("a", "b"):
        result = _paired(tmp_path / name, guider, image_model, 2, "--format", "nii.gz", "--sampler", "dpmpp")
        assert result.exit_code == 0, _text(result)
    for kind in ("image", "mask"):
        a = io.read_volume(tmp_path / "a" / f"{kind}_001.nii.gz").array
        np.testing.assert_array_equal(a, io.read_volume(tmp_path / "b" / f"{kind}_001.nii.gz").array)
    image = io.read_volume(tmp_path / "a" / "image_000.nii.gz")
    assert image.array.dtype == np.float32 and image.array.min() >= 0.0 and image.array.max() <= 1.0


def test_paired_refuses_foreign_folder_even_with_overwrite(tmp_path: Path, tiny_paired: tuple[Path, Path]) -> None:
    guider, image_model = tiny_paired
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    result = _paired(out, guider, image_model, 1, "--overwrite")
    assert result.exit_code == 2
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me"


@pytest.mark.parametrize("swap", ["guider_as_image_model", "image_model_as_guider"])
def test_paired_refuses_swapped_checkpoints(tmp_path: Path, tiny_paired: tuple[Path, Path], swap: str) -> None:
    guider, image_model = tiny_paired
    pair = (guider, guider) if swap == "guider_as_image_model" else (image_model, image_model)
    out = tmp_path / "pairs"
    result = _paired(out, *pair, 1)
    assert result.exit_code == 2
    assert "'paired-guider'" in _text(result) and "'mask-diffusion'" in _text(result)
    assert "Traceback" not in _text(result)
    assert not out.exists()


def test_paired_needs_image_model_for_a_local_guider(tmp_path: Path, tiny_paired: tuple[Path, Path]) -> None:
    guider, _ = tiny_paired
    result = runner.invoke(app, ["paired", "--n", "1", "--out", str(tmp_path / "p"), "--model", str(guider), *FAST])
    assert result.exit_code == 2
    assert "--image-model" in _text(result)


def test_paired_leaves_no_partial_output_when_writing_fails(tmp_path: Path, tiny_paired: tuple[Path, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from napari_medgen.errors import MedGenError

    guider, image_model = tiny_paired
    real_write = io.write_volume
    calls: list[Path] = []

    def failing_write(volume: Volume, path: Path) -> Path:
        calls.append(Path(path))
        if len(calls) == 3:
            raise MedGenError("disk full (simulated)")
        return real_write(volume, path)

    monkeypatch.setattr(io, "write_volume", failing_write)
    out = tmp_path / "sub" / "pairs"
    result = _paired(out, guider, image_model, 2)
    assert result.exit_code == 2
    assert "disk full" in _text(result)
    assert len(calls) == 3
    assert not (tmp_path / "sub").exists()
