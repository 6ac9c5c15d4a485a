"""The shared trainer: learning, exact resume, EMA export, several optimizers, guards, multi-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from napari_medgen.core.io import write_volume
from napari_medgen.core.progress import CancelToken, ProgressEvent
from napari_medgen.core.volume import Volume
from napari_medgen.errors import CancelledError, CheckpointError, ConfigError, InvalidInputError
from napari_medgen.hub import HubModelMixin, from_pretrained, register_model
from napari_medgen.training import train_from_config
from napari_medgen.training.launch import main as module_main
from napari_medgen.training.task import LossDict, TrainingTask
from napari_medgen.training.tasks import register_task
from napari_medgen.training.trainer import resolve_mixed_precision

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def disc_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 32x32 'ultrasound' PNGs with one bright disc each, BUSI-style masks."""
    root = tmp_path_factory.mktemp("discs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    for i in range(8):
        cy, cx, r = rng.integers(9, 23), rng.integers(9, 23), rng.integers(4, 8)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        image = rng.normal(60, 12, size=(32, 32)) + 90 * disc
        write_volume(Volume(np.clip(image, 0, 255).astype(np.uint8)[None]), root / f"case{i}.png")
        write_volume(Volume((disc * 255).astype(np.uint8)[None]), root / f"case{i}_mask.png")
    return root


def write_config(path: Path, data_root: Path, **overrides: Any) -> Path:
    config: dict[str, Any] = {
        "seed": 5,
        "max_steps": 6,
        "batch_size": 2,
        "lr": 0.01,
        "checkpoint_every": 100,
        "out_dir": str(path.parent / "run"),
        "data": {"root": str(data_root), "patch_size": [16, 16], "samples_per_epoch": 8,
                 "val_fraction": 0.25, "test_fraction": 0.0},
        "model": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
    }
    for key, value in overrides.items():
        if key in ("data", "model"):
            config[key].update(value)
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config))
    return path


def loss_log(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out_dir / "loss_log.jsonl").read_text(encoding="utf-8").splitlines()]


def test_segmenter_learns_and_exports_ema_weights(tmp_path: Path, disc_data: Path) -> None:
    config = write_config(tmp_path / "seg.yaml", disc_data, max_steps=24, batch_size=4, lr=0.02,
                          ema_decay=0.8, checkpoint_every=12, card={"licence": "CC0 (synthetic)"})
    events: list[ProgressEvent] = []
    model_dir = train_from_config("segmenter", config, progress=events.append)
    out = tmp_path / "run"
    assert model_dir == out / "model"
    assert [e.step for e in events] == list(range(1, 25)) and events[-1].total == 24

    losses = [line["losses"]["loss"] for line in loss_log(out)]
    assert len(losses) == 24
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])

    model = from_pretrained(model_dir, expected_type="segmenter")
    ema = load_file(out / "checkpoints" / "step_000024" / "ema.safetensors")
    raw = load_file(out / "checkpoints" / "step_000024" / "model.safetensors")
    for name, value in model.named_parameters():
        assert torch.equal(value.detach(), ema[f"segmenter/{name}"]), name
    assert any(not torch.equal(raw[k], ema[f"segmenter/{k}"]) for k in raw)  # EMA differs from the last iterate

    card = (model_dir / "README.md").read_text(encoding="utf-8")
    assert "val_dice" in card and "CC0 (synthetic)" in card and "| steps | 24 |" in card
    assert set(model.hub_extra["splits"]) == {"train", "val", "test"}
    assert len(model.hub_extra["splits"]["val"]) == 2
    image = np.asarray(Volume(np.zeros((1, 20, 28), np.float32)).array)
    assert model.predict(image).shape == (1, 20, 28)  # any size: padded to the U-Net's stride internally


def test_resume_after_cancel_reproduces_the_uninterrupted_run(tmp_path: Path, disc_data: Path) -> None:
    # grad_accum 2 with 4 micro-batches per epoch and dropout: resumption has to restore data position,
    # per-sample augmentation, dropout randomness, optimizer, LR schedule and EMA exactly.
    common = {"max_steps": 8, "grad_accum": 2, "ema_decay": 0.7, "ema_warmup_steps": 2, "lr_scheduler": "cosine",
              "warmup_steps": 2, "checkpoint_every": 3, "keep_checkpoints": 2,
              "data": {"samples_per_epoch": 9}, "model": {"dropout": 0.2}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    train_from_config("segmenter", write_config(tmp_path / "a" / "cfg.yaml", disc_data, **common))
    interrupted = write_config(tmp_path / "b" / "cfg.yaml", disc_data, **common)

    token = CancelToken()

    def stop_at_five(event: ProgressEvent) -> None:
        if event.step == 5:
            token.cancel()

    with pytest.raises(CancelledError, match="after step 5/8.*resume"):
        train_from_config("segmenter", interrupted, progress=stop_at_five, cancel=token)
    run_b = tmp_path / "b" / "run"
    assert not (run_b / "model").exists()
    assert sorted(p.name for p in (run_b / "checkpoints").iterdir()) == ["step_000003", "step_000005"]
    assert len(loss_log(run_b)) == 5

    train_from_config("segmenter", interrupted, overrides={"resume": True})
    run_a = tmp_path / "a" / "run"
    assert loss_log(run_b) == loss_log(run_a)
    assert [line["step"] for line in loss_log(run_a)] == list(range(1, 9))
    weights_a = load_file(run_a / "model" / "model.safetensors")
    weights_b = load_file(run_b / "model" / "model.safetensors")
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert sorted(p.name for p in (run_a / "checkpoints").iterdir()) == ["step_000006", "step_000008"]


def test_run_folder_guards(tmp_path: Path, disc_data: Path) -> None:
    config = write_config(tmp_path / "cfg.yaml", disc_data, max_steps=2)
    with pytest.raises(CheckpointError, match="Nothing to resume"):
        train_from_config("segmenter", config, overrides={"resume": True})
    train_from_config("segmenter", config)
    with pytest.raises(ConfigError, match="already holds a training run"):
        train_from_config("segmenter", config)
    with pytest.raises(ConfigError, match="batch_size: 2 -> 4 changed"):
        train_from_config("segmenter", config, overrides={"resume": True, "batch_size": 4, "max_steps": 3})
    with pytest.raises(ConfigError, match="EMA"):
        train_from_config("segmenter", config, overrides={"resume": True, "ema_decay": 0.5, "max_steps": 3})
    train_from_config("segmenter", config, overrides={"overwrite": True, "max_steps": 1})
    assert len(loss_log(tmp_path / "run")) == 1
    with pytest.raises(InvalidInputError, match="fewer than one batch"):
        train_from_config("segmenter", config, overrides={"overwrite": True, "data.samples_per_epoch": 1})


def test_bf16_mixed_precision_on_cpu(tmp_path: Path, disc_data: Path) -> None:
    config = write_config(tmp_path / "cfg.yaml", disc_data, max_steps=2, mixed_precision="bf16")
    model = from_pretrained(train_from_config("segmenter", config))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(np.isfinite(line["losses"]["loss"]) for line in loss_log(tmp_path / "run"))
    assert resolve_mixed_precision("fp16", cpu_only=True) == "no"
    assert resolve_mixed_precision("auto", cpu_only=True) == "no"


# ---- a two-optimizer (adversarial) task -------------------------------------------------------------
@register_model("test-toy-generator")
class ToyGenerator(HubModelMixin, nn.Module):
    def __init__(self, width: int = 2) -> None:
        super().__init__()
        self.config = {"width": width}
        self.layer = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class NoiseDataset(torch.utils.data.Dataset):
    """Uses the global torch generator: the trainer seeds it per sample."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.randn(2)


@register_task("test-adversarial")
class AdversarialTask(TrainingTask):
    """The critic's own loss has zero gradient, so its weights may only move if generator gradients leak."""

    export_module = "generator"

    def build_models(self) -> dict[str, nn.Module]:
        return {"generator": ToyGenerator(2), "critic": nn.Linear(2, 1)}

    def build_dataset(self) -> NoiseDataset:
        return NoiseDataset()

    def build_optimizers(self, models: Mapping[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {"generator": torch.optim.Adam(models["generator"].parameters(), lr=self.config.lr),
                "critic": torch.optim.Adam(models["critic"].parameters(), lr=self.config.lr)}

    def compute_loss(self, optimizer: str, batch: Any, models: Mapping[str, nn.Module], step: int) -> LossDict | None:
        if optimizer == "generator":
            fake = models["generator"](batch)
            return {"loss": -models["critic"](fake).mean(), "fake_mean": fake.mean()}
        if step % 2:
            return None  # e.g. a critic updated every other step
        critic_params = torch.cat([p.reshape(-1) for p in models["critic"].parameters()])
        return {"loss": 0.0 * critic_params.sum()}


def test_several_optimizers_step_in_isolation(tmp_path: Path) -> None:
    config = tmp_path / "adv.yaml"
    config.write_text(yaml.safe_dump({"max_steps": 4, "batch_size": 2, "grad_accum": 2, "lr": 0.1,
                                      "out_dir": str(tmp_path / "run"), "grad_clip": None}))
    from napari_medgen.training.config import load_config
    from napari_medgen.training.trainer import Trainer

    task = AdversarialTask(load_config(config))
    trainer = Trainer(task, load_config(config))
    captured: dict[str, nn.Module] = {}
    original_build = task.build_models

    def build() -> dict[str, nn.Module]:
        models = original_build()
        captured.update(models)
        captured["initial_critic"] = nn.Linear(2, 1)
        captured["initial_critic"].load_state_dict(models["critic"].state_dict())
        captured["initial_generator"] = ToyGenerator(2)
        captured["initial_generator"].load_state_dict(models["generator"].state_dict())
        return models

    task.build_models = build  # type: ignore[method-assign]
    model_dir = trainer.fit()
    for name, value in captured["critic"].state_dict().items():
        assert torch.equal(value, captured["initial_critic"].state_dict()[name]), "generator gradients leaked"
    assert not torch.equal(captured["generator"].layer.weight, captured["initial_generator"].layer.weight)
    lines = loss_log(tmp_path / "run")
    assert set(lines[0]["losses"]) == {"generator/loss", "generator/fake_mean", "critic/loss"}
    assert set(lines[1]["losses"]) == {"generator/loss", "generator/fake_mean"}  # critic skipped on odd steps
    assert set(lines[0]["lr"]) == {"generator", "critic"}
    assert isinstance(from_pretrained(model_dir, expected_type="test-toy-generator"), ToyGenerator)


# ---- entry points -----------------------------------------------------------------------------------
def test_module_entry_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_stepz: 3\n")
    assert module_main(["segmenter", "--config", str(bad), "--quiet"]) == 2
    assert "Unknown config key 'max_stepz'" in capsys.readouterr().err


def test_same_command_runs_under_accelerate_launch_with_two_processes(tmp_path: Path, disc_data: Path) -> None:
    config = write_config(tmp_path / "cfg.yaml", disc_data, max_steps=3, cpu=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    # `--cpu` alone makes accelerate start a single process; the multi-process launcher with cpu: true
    # runs two CPU processes over gloo.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "napari_medgen.training", "segmenter", "--config", str(config), "--quiet"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "run"
    assert (out / "model" / "model.safetensors").is_file()
    state = json.loads((out / "checkpoints" / "step_000003" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["num_processes"] == 2
    assert len(loss_log(out)) == 3  # only rank 0 writes
    assert isinstance(from_pretrained(out / "model"), nn.Module)
