"""YAML -> TrainConfig: typed values, overrides, and errors that name the offending key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from napari_medgen.errors import ConfigError
from napari_medgen.training.config import TrainConfig, load_config
from napari_medgen.training.tasks import available_tasks, get_task
from napari_medgen.training.trainer import lr_factor


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_yaml_becomes_typed_config(tmp_path: Path) -> None:
    path = write(tmp_path, "seed: 7\nmax_steps: 20\nlr: 1e-3\ngrad_clip: null\nmixed_precision: bf16\n"
                           "resume: latest\ndata:\n  root: /data\n")
    config = load_config(path)
    assert config.seed == 7 and config.max_steps == 20
    assert config.lr == pytest.approx(1e-3) and isinstance(config.lr, float)  # YAML reads 1e-3 as a string
    assert config.grad_clip is None
    assert config.mixed_precision == "bf16"
    assert config.resume is True
    assert config.data == {"root": "/data"}


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Unknown config key 'max_step'.*Did you mean 'max_steps'"):
        load_config(write(tmp_path, "max_step: 3\n"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("max_steps: many\n", "'max_steps' must be an integer"),
        ("batch_size: 0\n", "batch_size must be >= 1"),
        ("mixed_precision: fp8\n", "mixed_precision must be one of"),
        ("ema_decay: 1.0\n", "ema_decay must be in"),
        ("cpu: yes please\n", "'cpu' must be true or false"),
        ("data: [1, 2]\n", "'data' must be a mapping"),
        ("- a list\n", "must contain a mapping"),
        ("seed: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_values(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/config.yaml")


def test_overrides_as_strings_and_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "max_steps: 5\ndata:\n  root: a\n  patch_size: [8, 8]\n")
    config = load_config(path, ["max_steps=9", "data.root=b", "out_dir=runs/x"])
    assert config.max_steps == 9 and config.out_dir == "runs/x"
    assert config.data == {"root": "b", "patch_size": [8, 8]}
    config = load_config(path, {"data.patch_size": [4, 4], "resume": True})
    assert config.data["patch_size"] == [4, 4] and config.resume is True
    with pytest.raises(ConfigError, match="Unknown config key 'max_stepz'"):
        load_config(path, {"max_stepz": 1})
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["max_steps"])


def test_task_sections_reject_unknown_keys(tmp_path: Path) -> None:
    task_cls = get_task("segmenter")
    config = load_config(write(tmp_path, "data:\n  root: x\n  patch_sise: [8, 8]\n"))
    with pytest.raises(ConfigError, match="'data.patch_sise'.*Did you mean 'patch_size'"):
        task_cls(config)
    with pytest.raises(ConfigError, match="'data.root'"):
        task_cls(load_config(write(tmp_path, "data: {}\n")))
    with pytest.raises(ConfigError, match="data.patch_size needs 3 sizes"):
        task_cls(load_config(write(tmp_path, "data: {root: x, spatial_dims: 3}\n")))
    with pytest.raises(ConfigError, match="'model.channels\\[1\\]' must be an integer"):
        task_cls(load_config(write(tmp_path, "data: {root: x}\nmodel: {channels: [4, wide]}\n")))
    with pytest.raises(ConfigError, match="normalization"):
        task_cls(load_config(write(tmp_path, "data: {root: x, normalization: magic}\n")))


def test_task_registry() -> None:
    assert "segmenter" in available_tasks()
    with pytest.raises(ConfigError, match="trainable models: .*segmenter"):
        get_task("teleporter")


def test_learning_rate_schedules() -> None:
    cosine = TrainConfig(max_steps=10, warmup_steps=2, lr_scheduler="cosine")
    assert [lr_factor(s, cosine) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, cosine) == pytest.approx(1.0)
    assert lr_factor(6, cosine) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    linear = TrainConfig(max_steps=10, lr_scheduler="linear")
    assert lr_factor(5, linear) == pytest.approx(0.5)
    assert lr_factor(7, TrainConfig(max_steps=10)) == 1.0


def test_unknown_model_card_section(tmp_path: Path) -> None:
    from napari_medgen.training.trainer import Trainer

    config = load_config(write(tmp_path, "data: {root: x}\ncard: {licnse: MIT}\n"))
    with pytest.raises(ConfigError, match="card.licnse"):
        Trainer(get_task("segmenter")(config), config)
