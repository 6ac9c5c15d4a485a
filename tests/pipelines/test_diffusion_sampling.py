"""Samplers on the model's schedule, checked against exact ("oracle") noise predictors.

An oracle that knows the clean sample returns the exact noise of any x_t; every deterministic sampler
must then land on that sample from pure noise. That validates the step wiring, the timestep spacing
(the oracle looks the noise level up by the timestep it is given) and `predict_x0`. A second oracle,
the exact denoiser of Gaussian data, has outputs that depend on the trajectory, which makes the
anatomical-similarity mixing measurable.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_medgen.core.progress import ProgressEvent, run_job
from napari_medgen.errors import InvalidInputError
from napari_medgen.pipelines.diffusion_sampling import (
    DDIM_ETA,
    SAMPLERS,
    make_sampler,
    predict_x0,
    sample_mask_guided,
    step_kwargs,
)

SHAPE = (2, 1, 8, 8)


def _alphas_cumprod(total: int, schedule: str) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=total, beta_schedule=schedule).alphas_cumprod


class Oracle(nn.Module):
    """eps(x_t, t) = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t) for a known x0; records what it is given."""

    def __init__(self, x0: torch.Tensor, total: int = 100, schedule: str = "linear") -> None:
        super().__init__()
        self.config = {"num_train_timesteps": total, "beta_schedule": schedule}
        self.weight = nn.Parameter(torch.zeros(1))  # samplers find the device through parameters()
        self.x0 = x0
        self.abar = _alphas_cumprod(total, schedule)
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def clean_estimate(self, x_t: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.x0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        assert torch.is_tensor(t) and t.numel() == 1
        self.calls.append((int(t), x_t.clone(), code.clone()))
        a = self.abar[int(t)]
        return (x_t - a.sqrt() * self.clean_estimate(x_t, a)) / (1 - a).sqrt()


class GaussianDenoiser(Oracle):
    """The exact noise predictor for data x0 ~ N(0, sd^2) per pixel (its x0 estimate follows x_t)."""

    def __init__(self, sd: float = 0.5, total: int = 100) -> None:
        super().__init__(torch.zeros(SHAPE), total)
        self.sd = sd

    def clean_estimate(self, x_t: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a.sqrt() * self.sd**2 / (a * self.sd**2 + 1 - a) * x_t


def _x0() -> torch.Tensor:
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9


def _noise(seed: int = 1) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def _sample(model: nn.Module, sampler: str, steps: int, **kwargs: object) -> torch.Tensor:
    return run_job(sample_mask_guided(model, torch.zeros(SHAPE), _noise(), sampler=sampler, steps=steps,
                                      generator=torch.Generator().manual_seed(7), **kwargs))


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 7, 25])
def test_make_sampler_uses_model_schedule_and_steps(name: str, steps: int) -> None:
    model = Oracle(_x0(), total=200, schedule="squaredcos_cap_v2")
    scheduler = make_sampler(model, name, steps)
    assert len(scheduler.timesteps) == steps
    assert int(scheduler.timesteps[0]) == 199  # trailing spacing starts at the noisiest trained step
    assert all(int(a) > int(b) for a, b in zip(scheduler.timesteps[:-1], scheduler.timesteps[1:], strict=True))
    assert scheduler.config.num_train_timesteps == 200
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert scheduler.config.prediction_type == "epsilon"
    torch.testing.assert_close(scheduler.alphas_cumprod, model.abar)


def test_make_sampler_rejects_bad_names_and_steps() -> None:
    model = Oracle(_x0())
    with pytest.raises(InvalidInputError, match="Unknown sampler"):
        make_sampler(model, "euler", 10)
    for steps in (0, -3, 101, 2.5, True, "10"):
        with pytest.raises(InvalidInputError, match="steps"):
            make_sampler(model, "ddim", steps)  # type: ignore[arg-type]
    assert len(make_sampler(model, "ddpm", 100).timesteps) == 100


def test_predict_x0_inverts_the_forward_process() -> None:
    scheduler = make_sampler(Oracle(_x0()), "ddim", 10)
    x0, eps = _x0(), _noise()
    for t in (0, 37, 99):
        a = scheduler.alphas_cumprod[t]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        torch.testing.assert_close(predict_x0(scheduler, x_t, eps, t), x0, atol=2e-5, rtol=0)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize(("name", "steps"), [("ddim", 10), ("ddim", 3), ("dpmpp", 10), ("dpmpp", 3), ("ddpm", 10)])
def test_oracle_samplers_recover_x0_from_pure_noise(schedule: str, name: str, steps: int) -> None:
    x0 = _x0()
    model = Oracle(x0, total=100, schedule=schedule)
    code = torch.ones((2, 3, 8, 8))
    events: list[ProgressEvent] = []
    job = sample_mask_guided(model, code, _noise(), sampler=name, steps=steps,
                             generator=torch.Generator().manual_seed(7), stage="test")
    out = run_job(job, events.append)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)
    # the model saw every scheduled timestep once, in order, with the mask code unchanged
    scheduled = [int(t) for t in make_sampler(model, name, steps).timesteps]
    assert [c[0] for c in model.calls] == scheduled
    assert all(torch.equal(c[2], code) for c in model.calls)
    assert [e.step for e in events] == list(range(1, steps + 1)) and {e.total for e in events} == {steps}
    assert {e.stage for e in events} == {"test"}


def test_output_is_clamped_to_model_range() -> None:
    x0 = _x0() * 3.0  # partly outside [-1, 1]
    out = _sample(Oracle(x0), "ddim", 5)
    assert float(out.max()) <= 1.0 and float(out.min()) >= -1.0
    torch.testing.assert_close(out, x0.clamp(-1, 1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", SAMPLERS)
def test_same_generator_same_sample(name: str) -> None:
    a = _sample(GaussianDenoiser(), name, 6)
    b = _sample(GaussianDenoiser(), name, 6)
    assert torch.equal(a, b)


def test_step_kwargs() -> None:
    g = torch.Generator()
    assert step_kwargs("ddim", g) == {"eta": DDIM_ETA, "generator": g}
    assert step_kwargs("ddim", g, eta=0.0)["eta"] == 0.0
    assert step_kwargs("dpmpp", g)["generator"] is g and step_kwargs("ddpm", g)["generator"] is g


# ---- anatomical similarity (seed 002, section 3.2.2) ------------------------------------------------
REFERENCE = torch.rand(SHAPE, generator=torch.Generator().manual_seed(5)) * 1.6 - 0.8


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


@pytest.mark.parametrize("name", SAMPLERS)
def test_similarity_pulls_the_sample_towards_the_reference(name: str) -> None:
    dist = {s: _rms(_sample(GaussianDenoiser(), name, 10, reference=REFERENCE, similarity=s), REFERENCE)
            for s in (0.0, 0.5, 1.0)}
    assert dist[1.0] < dist[0.5] < dist[0.0]
    assert dist[1.0] < 0.5 * dist[0.0]


@pytest.mark.parametrize("name", SAMPLERS)
def test_similarity_zero_ignores_the_reference(name: str) -> None:
    plain = _sample(GaussianDenoiser(), name, 8)
    assert torch.equal(plain, _sample(GaussianDenoiser(), name, 8, reference=REFERENCE, similarity=0.0))


@pytest.mark.parametrize("name", SAMPLERS)
def test_mixing_happens_at_the_first_timestep_below_mix_at(name: str) -> None:
    runs = {}
    for s in (0.0, 1.0):
        model = GaussianDenoiser()
        _sample(model, name, 10, reference=REFERENCE, similarity=s, mix_at=0.5)
        runs[s] = model.calls
    timesteps = [c[0] for c in runs[0.0]]
    assert timesteps == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]
    first = timesteps.index(49)  # first t <= 0.5 * 99
    for i in range(first):  # the trajectory before t~ is untouched
        assert torch.equal(runs[0.0][i][1], runs[1.0][i][1])
    # at t~ the model sees the reference noised to t~ (similarity 1 discards the current sample)
    a = _alphas_cumprod(100, "linear")[49]
    seen = runs[1.0][first][1]
    assert _rms(seen / a.sqrt(), REFERENCE) < _rms(runs[0.0][first][1] / a.sqrt(), REFERENCE)
    assert _rms(seen, a.sqrt() * REFERENCE) < 1.5 * float((1 - a).sqrt())


def test_dpmpp_restarts_after_mixing() -> None:
    """After the jump, DPM-Solver++ 2M must not extrapolate from the unmixed trajectory: from the same
    mixed point it must agree with DDIM (both solve the same ODE; here the data are Gaussian)."""
    ddim = _sample(GaussianDenoiser(), "ddim", 20, reference=REFERENCE, similarity=1.0, eta=0.0)
    dpmpp = _sample(GaussianDenoiser(), "dpmpp", 20, reference=REFERENCE, similarity=1.0, eta=0.0)
    assert _rms(ddim, dpmpp) < 0.03


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_similarity_applies_even_when_few_steps_never_reach_mix_at(steps: int) -> None:
    # 3 steps of 100: timesteps 99, 66, 33 -- none <= 0.24 * 99, so the mix happens at the last one
    without = _sample(GaussianDenoiser(), "ddim", steps)
    with_ref = _sample(GaussianDenoiser(), "ddim", steps, reference=REFERENCE, similarity=1.0)
    assert _rms(with_ref, REFERENCE) < _rms(without, REFERENCE)


def test_similarity_argument_errors() -> None:
    model = GaussianDenoiser()
    with pytest.raises(InvalidInputError, match="reference"):
        _sample(model, "ddim", 4, similarity=0.3)
    for bad in (-0.1, 1.2):
        with pytest.raises(InvalidInputError, match="similarity"):
            _sample(model, "ddim", 4, reference=REFERENCE, similarity=bad)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(InvalidInputError, match="mix_at"):
            _sample(model, "ddim", 4, reference=REFERENCE, similarity=0.5, mix_at=bad)
    assert model.calls == []  # refused before any model call
