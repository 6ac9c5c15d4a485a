"""`medgen lesion-pairs` on a tiny untrained token-diffusion checkpoint: files, report, determinism, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from napari_medgen.cli import app
from napari_medgen.models.token_diffusion import TokenDiffusionModel

runner = CliRunner()
FAST = ["--steps", "3", "--quiet"]


def _text(result: object) -> str:
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def tiny_token(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = TokenDiffusionModel(image_size=(32, 32), image_channels=3, attribute_tokens=["melanoma"],
                                block_out_channels=(16, 16, 16, 16), cross_attention_dim=16, attention_heads=2)
    return model.save_pretrained(tmp_path_factory.mktemp("tiny_token") / "model")


@pytest.fixture
def layout_png(tmp_path: Path) -> Path:
    m = np.zeros((32, 32), np.uint8)
    m[6:18, 10:24] = 255
    path = tmp_path / "layout.png"
    Image.fromarray(m).save(path)
    return path


def _run(out: Path, model: Path, *extra: str) -> object:
    return runner.invoke(app, ["lesion-pairs", "--n", "2", "--out", str(out), "--model", str(model), *FAST, *extra])


def test_writes_pairs_and_report(tmp_path: Path, tiny_token: Path, layout_png: Path) -> None:
    out = tmp_path / "pairs"
    result = _run(out, tiny_token, "--layout", str(layout_png), "--attribute", "melanoma")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["image_000.png", "image_001.png", "mask_000.png",
                                                      "mask_001.png", "report.json"]
    image = np.asarray(Image.open(out / "image_000.png"))
    mask = np.asarray(Image.open(out / "mask_000.png"))
    assert image.shape == (32, 32, 3) and mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["guidance"] is True and report["attribute"] == "melanoma" and len(report["pairs"]) == 2
    assert all(0 <= p["iou_with_layout"] <= 1 for p in report["pairs"])
    assert "mean IoU with the layout" in _text(result)
    again = tmp_path / "again"
    assert _run(again, tiny_token, "--layout", str(layout_png), "--attribute", "melanoma").exit_code == 0
    assert np.array_equal(image, np.asarray(Image.open(again / "image_000.png")))


def test_no_guidance_and_no_layout(tmp_path: Path, tiny_token: Path, layout_png: Path) -> None:
    result = _run(tmp_path / "a", tiny_token, "--layout", str(layout_png), "--no-guidance")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "report.json").read_text(encoding="utf-8"))["guidance"] is False
    result = _run(tmp_path / "b", tiny_token)
    assert result.exit_code == 0 and "guidance off" in _text(result)


def test_errors_leave_nothing_behind(tmp_path: Path, tiny_token: Path, layout_png: Path) -> None:
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.full((48, 48), 255, np.uint8)).save(wrong)
    result = _run(tmp_path / "x", tiny_token, "--layout", str(wrong))
    assert result.exit_code == 2 and "48x48 but the model makes 32x32" in _text(result)
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(empty)
    result = _run(tmp_path / "x", tiny_token, "--layout", str(empty))
    assert result.exit_code == 2 and "layout mask is empty" in _text(result)
    result = _run(tmp_path / "x", tiny_token, "--layout", str(tmp_path / "missing.png"))
    assert result.exit_code == 2 and "does not exist" in _text(result)
    assert not (tmp_path / "x").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    result = _run(tmp_path / "busy", tiny_token, "--overwrite")
    assert result.exit_code == 2 and "did not write" in _text(result)
    result = _run(tmp_path / "y", tiny_token, "--refine", "magic")
    assert result.exit_code == 2 and "refine must be one of" in _text(result)
