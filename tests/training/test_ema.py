"""EMA of parameters: closed-form values, warm-up, swapping in/out, and save/restore."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_medgen.errors import CheckpointError, InvalidInputError
from napari_medgen.training.ema import ExponentialMovingAverage


def make_module(value: float) -> nn.Module:
    module = nn.Linear(2, 1)
    with torch.no_grad():
        module.weight.fill_(value)
        module.bias.fill_(value)
    return module


def set_value(module: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)


def test_average_matches_closed_form() -> None:
    module = make_module(0.0)
    ema = ExponentialMovingAverage(module, decay=0.5)
    expected = 0.0
    for value in (1.0, 2.0, 4.0):
        set_value(module, value)
        ema.update(module)
        expected = 0.5 * expected + 0.5 * value
    assert ema.num_updates == 3
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), expected))
    assert expected == pytest.approx(2.625)


def test_warmup_ramps_the_decay_from_zero() -> None:
    module = make_module(0.0)
    ema = ExponentialMovingAverage(module, decay=0.9, warmup_steps=4)
    decays = []
    for value in (10.0, 20.0):
        decays.append(ema.current_decay())
        set_value(module, value)
        ema.update(module)
    assert decays == [0.0, pytest.approx(0.225)]
    # first update copies the weights (decay 0), the second mixes with decay 0.225
    assert ema.shadow["bias"].item() == pytest.approx(0.225 * 10.0 + 0.775 * 20.0)
    for _ in range(10):
        ema.update(module)
    assert ema.current_decay() == pytest.approx(0.9)


def test_frozen_parameters_are_not_tracked() -> None:
    module = make_module(1.0)
    module.bias.requires_grad_(False)
    assert set(ExponentialMovingAverage(module, 0.9).shadow) == {"weight"}


def test_copy_and_temporary_swap() -> None:
    module = make_module(0.0)
    ema = ExponentialMovingAverage(module, decay=0.5)
    set_value(module, 8.0)
    ema.update(module)  # shadow = 4
    with ema.applied_to(module):
        assert module.weight.detach().eq(4.0).all()
    assert module.weight.detach().eq(8.0).all()
    ema.copy_to(module)
    assert module.bias.item() == 4.0


def test_state_round_trip_through_safetensors(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    module = make_module(0.0)
    ema = ExponentialMovingAverage(module, decay=0.7, warmup_steps=3)
    for value in (1.0, 3.0):
        set_value(module, value)
        ema.update(module)
    save_file(ema.state_dict(), tmp_path / "ema.safetensors")
    restored = ExponentialMovingAverage(make_module(5.0), decay=0.7, warmup_steps=3)
    restored.load_state_dict(load_file(tmp_path / "ema.safetensors"))
    assert restored.num_updates == 2
    assert restored.current_decay() == ema.current_decay()
    for name in ema.shadow:
        assert torch.equal(restored.shadow[name], ema.shadow[name])
    other = ExponentialMovingAverage(nn.Linear(3, 1), decay=0.7)
    with pytest.raises(CheckpointError, match="shape"):
        other.load_state_dict(ema.state_dict())
    with pytest.raises(CheckpointError, match="different model"):
        ExponentialMovingAverage(nn.Conv1d(1, 1, 1), 0.7).load_state_dict({"x": torch.zeros(1)})


def test_invalid_settings() -> None:
    with pytest.raises(InvalidInputError):
        ExponentialMovingAverage(make_module(0.0), decay=1.0)
    with pytest.raises(InvalidInputError):
        ExponentialMovingAverage(make_module(0.0), decay=0.5, warmup_steps=-1)
