"""Brownian-bridge scheduler (BBDM): schedule values, forward marginals, objectives, oracle sampling, config."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
import torch

from napari_medgen.errors import ConfigError, InvalidInputError
from napari_medgen.schedulers.brownian_bridge import BrownianBridgeScheduler, BrownianBridgeSchedulerOutput

OBJECTIVES = ("grad", "noise", "ysubx")


def oracle_output(scheduler: BrownianBridgeScheduler, x0: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor,
                  t: int) -> torch.Tensor:
    """The exact network output for a known x0: recover eps from x_t and form the objective's target."""
    m = float(scheduler.m_t[t])
    var = float(scheduler.variance_t[t])
    eps = (x_t - (1 - m) * x0 - m * y) / math.sqrt(var)
    if scheduler.objective == "grad":
        return m * (y - x0) + math.sqrt(var) * eps
    if scheduler.objective == "noise":
        return eps
    return y - x0


def pair(shape: tuple[int, ...], dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=gen, dtype=dtype)
    y = torch.randn(shape, generator=gen, dtype=dtype) + 2.0
    return x0, y


# -- schedule ------------------------------------------------------------------------------------------------


def test_linear_schedule_endpoints_spacing_and_variance() -> None:
    scheduler = BrownianBridgeScheduler(num_train_timesteps=1000)
    m, var = scheduler.m_t, scheduler.variance_t
    assert m.shape == var.shape == (1000,)
    assert float(m[0]) == pytest.approx(0.001, abs=1e-15)
    assert float(m[-1]) == pytest.approx(0.999, abs=1e-15)
    assert torch.allclose(m.diff(), torch.full((999,), 0.998 / 999, dtype=torch.float64), atol=1e-14)
    for t in (0, 1, 250, 499, 500, 998, 999):
        m_expected = 0.001 + 0.998 * t / 999
        assert float(m[t]) == pytest.approx(m_expected, abs=1e-14)
        assert float(var[t]) == pytest.approx(2 * (m_expected - m_expected**2), abs=1e-14)
    # the variance vanishes towards both ends (m -> 0 at x0, m -> 1 at y) and peaks at m = 1/2 with max_var / 2
    assert (var >= 0).all()
    assert float(var[0]) == pytest.approx(2 * 0.001 * 0.999) and float(var[-1]) == pytest.approx(2 * 0.001 * 0.999)
    assert float(var.max()) == pytest.approx(0.5, abs=1e-6)
    assert 499 <= int(var.argmax()) <= 500


def test_sin_schedule_matches_documented_formula() -> None:
    total = 1000
    scheduler = BrownianBridgeScheduler(num_train_timesteps=total, mt_schedule="sin")
    m = scheduler.m_t
    assert float(m[-1]) == 0.999
    assert float(m[0]) == pytest.approx(1.0075 ** (-total), rel=1e-12)
    for i in (1, 10, 500, 997, 998):
        exponent = total * i / (total - 1) - total  # linspace(0, T, T)[i] - T
        assert float(m[i]) == pytest.approx(1.0075**exponent, rel=1e-12)
    assert (m.diff() > 0).all()
    assert ((m > 0) & (m < 1)).all()
    assert torch.allclose(scheduler.variance_t, 2 * (m - m**2), atol=0)


@pytest.mark.parametrize("schedule", ["linear", "sin"])
@pytest.mark.parametrize("total", [2, 10, 1000])
def test_schedules_increase_and_variance_scales_with_max_var(schedule: str, total: int) -> None:
    base = BrownianBridgeScheduler(num_train_timesteps=total, mt_schedule=schedule)
    half = BrownianBridgeScheduler(num_train_timesteps=total, mt_schedule=schedule, max_var=0.5)
    assert (base.m_t.diff() > 0).all()
    assert float(base.m_t[-1]) == pytest.approx(0.999)
    assert (base.variance_t > 0).all()
    assert torch.allclose(half.variance_t, 0.5 * base.variance_t, atol=0, rtol=1e-15)
    assert torch.equal(half.m_t, base.m_t)


# -- forward process -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 100, 500, 900, 999])
def test_forward_marginal_mean_and_variance(t: int) -> None:
    scheduler = BrownianBridgeScheduler()
    n = 20000
    x0_one, y_one = pair((1, 1, 2, 3))
    x0, y = x0_one.expand(n, -1, -1, -1), y_one.expand(n, -1, -1, -1)
    noise = torch.randn((n, 1, 2, 3), generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    x_t = scheduler.add_noise(x0, y, noise, torch.full((n,), t))
    m, var = float(scheduler.m_t[t]), float(scheduler.variance_t[t])
    expected_mean = (1 - m) * x0_one[0] + m * y_one[0]
    # 5 standard errors: of the mean sqrt(var / n), of the sample variance var sqrt(2 / (n - 1))
    assert torch.allclose(x_t.mean(0), expected_mean, atol=5 * math.sqrt(var / n), rtol=0)
    assert torch.allclose(x_t.var(0), torch.full_like(expected_mean, var), atol=5 * var * math.sqrt(2 / (n - 1)))


def test_add_noise_broadcasts_per_batch_timesteps_and_keeps_inputs() -> None:
    scheduler = BrownianBridgeScheduler(num_train_timesteps=50)
    x0, y = pair((3, 2, 4, 4, 4), dtype=torch.float32)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    copies = [x0.clone(), y.clone(), noise.clone()]
    timesteps = torch.tensor([0, 17, 49])
    batched = scheduler.add_noise(x0, y, noise, timesteps)
    assert batched.dtype == torch.float32 and batched.shape == x0.shape
    for i, t in enumerate(timesteps.tolist()):
        single = scheduler.add_noise(x0[i : i + 1], y[i : i + 1], noise[i : i + 1], t)
        assert torch.allclose(batched[i : i + 1], single, atol=1e-6)
        m, std = float(scheduler.m_t[t]), math.sqrt(float(scheduler.variance_t[t]))
        assert torch.allclose(batched[i], (1 - m) * x0[i] + m * y[i] + std * noise[i], atol=1e-6)
    for before, after in zip(copies, (x0, y, noise), strict=True):
        assert torch.equal(before, after)
    # one timestep for the whole batch: as int, 0-d tensor or 1-element tensor
    same = [scheduler.add_noise(x0, y, noise, t) for t in (17, torch.tensor(17), torch.tensor([17]))]
    assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2])


def test_bridge_ends_at_y() -> None:
    """initial_sample(y) is exactly y (a copy); the last training step's marginal has mean 0.999 y + 0.001 x0,
    so it is within 0.001 |y - x0| of y, with variance 2 * 0.999 * 0.001 (std ~0.045)."""
    scheduler = BrownianBridgeScheduler()
    x0, y = pair((2, 1, 3, 3))
    start = scheduler.initial_sample(y)
    assert torch.equal(start, y) and start.data_ptr() != y.data_ptr()
    zero = torch.zeros_like(x0)
    mean_last = scheduler.add_noise(x0, y, zero, scheduler.num_train_timesteps - 1)
    assert torch.allclose(mean_last, 0.999 * y + 0.001 * x0, atol=1e-12)
    assert (mean_last - y).abs().max() <= 0.001 * (y - x0).abs().max() + 1e-12
    assert float(scheduler.variance_t[-1]) == pytest.approx(2 * 0.999 * 0.001)
    mean_first = scheduler.add_noise(x0, y, zero, 0)
    assert torch.allclose(mean_first, 0.999 * x0 + 0.001 * y, atol=1e-12)
    with pytest.raises(InvalidInputError):
        scheduler.initial_sample(torch.ones(2, 2, dtype=torch.int64))


# -- objectives ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("schedule", ["linear", "sin"])
def test_predict_x0_inverts_training_target(objective: str, schedule: str) -> None:
    scheduler = BrownianBridgeScheduler(mt_schedule=schedule, objective=objective)
    x0, y = pair((4, 2, 5, 5))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    timesteps = torch.tensor([0, 1, 500, 999])
    x_t = scheduler.add_noise(x0, y, eps, timesteps)
    target = scheduler.training_target(x0, y, eps, timesteps)
    assert torch.allclose(scheduler.predict_x0(target, x_t, y, timesteps), x0, atol=1e-9)
    # the target is the documented quantity, not just any invertible one
    m = scheduler.m_t[timesteps].reshape(-1, 1, 1, 1)
    std = scheduler.variance_t[timesteps].sqrt().reshape(-1, 1, 1, 1)
    expected = {"grad": m * (y - x0) + std * eps, "noise": eps, "ysubx": y - x0}[objective]
    assert torch.allclose(target, expected, atol=1e-12)
    if objective == "grad":
        assert torch.allclose(target, x_t - x0, atol=1e-12)
    # a wrong output gives a wrong x0
    assert not torch.allclose(scheduler.predict_x0(target + 0.1, x_t, y, timesteps), x0, atol=1e-3)


# -- timesteps -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [2, 3, 5, 20, 50, 200, 999, 1000])
def test_set_timesteps_even_descending_from_last_to_zero(steps: int) -> None:
    scheduler = BrownianBridgeScheduler()
    scheduler.set_timesteps(steps)
    ts = scheduler.timesteps
    assert ts.dtype == torch.int64 and ts.shape == (steps,)
    assert int(ts[0]) == 999 and int(ts[-1]) == 0
    gaps = -ts.diff()
    assert (gaps >= 1).all()
    assert int(gaps.max()) - int(gaps.min()) <= 1
    # 999 (S - 1 - i) / (S - 1) rounded half up, in exact rational arithmetic
    expected = [math.floor(Fraction(999 * (steps - 1 - i), steps - 1) + Fraction(1, 2)) for i in range(steps)]
    assert ts.tolist() == expected
    assert scheduler.num_inference_steps == steps
    if steps == 1000:
        assert ts.tolist() == list(range(999, -1, -1))


def test_set_timesteps_single_step_and_default() -> None:
    scheduler = BrownianBridgeScheduler(num_train_timesteps=10)
    assert scheduler.timesteps.tolist() == list(range(9, -1, -1))
    scheduler.set_timesteps(1)
    assert scheduler.timesteps.tolist() == [9]
    assert scheduler.previous_timestep(9) is None


@pytest.mark.parametrize("steps", [0, -1, 11, 2.0, True, "5", None])
def test_set_timesteps_rejects_bad_counts(steps: object) -> None:
    scheduler = BrownianBridgeScheduler(num_train_timesteps=10)
    with pytest.raises(InvalidInputError, match="num_inference_steps"):
        scheduler.set_timesteps(steps)  # type: ignore[arg-type]


# -- sampling ------------------------------------------------------------------------------------------------


def run_oracle(scheduler: BrownianBridgeScheduler, x0: torch.Tensor, y: torch.Tensor, steps: int,
               seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    sample = scheduler.initial_sample(y)
    estimates = []
    for t in scheduler.timesteps:
        output = oracle_output(scheduler, x0, sample, y, int(t))
        result = scheduler.step(output, t, sample, y, generator=generator)
        assert isinstance(result, BrownianBridgeSchedulerOutput)
        estimates.append(result.pred_original_sample)
        sample = result.prev_sample
    return sample, estimates


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", [1000, 200, 50, 20, 5])
def test_oracle_model_recovers_x0(objective: str, eta: float, steps: int) -> None:
    scheduler = BrownianBridgeScheduler(objective=objective, eta=eta)
    x0, y = pair((2, 1, 3, 4, 4))
    y_before = y.clone()
    result, estimates = run_oracle(scheduler, x0, y, steps)
    assert torch.allclose(result, x0, atol=1e-8, rtol=0)
    assert all(torch.allclose(e, x0, atol=1e-8) for e in estimates)
    assert torch.equal(y, y_before)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_oracle_sampling_in_float32(objective: str) -> None:
    scheduler = BrownianBridgeScheduler(objective=objective, eta=1.0)
    x0, y = pair((1, 2, 8, 8), dtype=torch.float32)
    result, _ = run_oracle(scheduler, x0, y, 20)
    assert result.dtype == torch.float32
    # 'noise' divides by 1 - m_t = 0.001 at the first step, so float32 round-off is amplified there
    assert torch.allclose(result, x0, atol=5e-3 if objective == "noise" else 1e-5)


def test_step_matches_hand_computed_bridge_update() -> None:
    scheduler = BrownianBridgeScheduler(num_train_timesteps=100, objective="ysubx", eta=0.7)
    scheduler.set_timesteps(4)  # 99, 66, 33, 0
    assert scheduler.timesteps.tolist() == [99, 66, 33, 0]
    t, s = 66, 33
    m_t, m_s = 0.001 + 0.998 * t / 99, 0.001 + 0.998 * s / 99
    var_t, var_s = 2 * (m_t - m_t**2), 2 * (m_s - m_s**2)
    sigma2 = (var_t - var_s * (1 - m_t) ** 2 / (1 - m_s) ** 2) * var_s / var_t
    x0_hat, y = torch.tensor([0.3, -1.2], dtype=torch.float64), torch.tensor([1.5, 0.5], dtype=torch.float64)
    x_t = torch.tensor([0.9, 0.1], dtype=torch.float64)
    output = y - x0_hat
    seed = 5
    z = torch.randn(2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    keep = math.sqrt((var_s - sigma2) / var_t)
    expected = (1 - m_s) * x0_hat + m_s * y + keep * (x_t - (1 - m_t) * x0_hat - m_t * y) + 0.7 * math.sqrt(sigma2) * z
    result = scheduler.step(output, t, x_t, y, generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(result.prev_sample, expected, atol=1e-12)
    assert torch.allclose(result.pred_original_sample, x0_hat, atol=1e-12)
    final = scheduler.step(output, 0, x_t, y)
    assert torch.equal(final.prev_sample, final.pred_original_sample)
    assert torch.allclose(final.prev_sample, x0_hat, atol=1e-12)


@pytest.mark.parametrize("steps", [1000, 10])
def test_ancestral_steps_keep_forward_marginals(steps: int) -> None:
    """eta = 1 with the exact x0: a batch of x_t from q(x_t | x0, y) steps to samples of q(x_s | x0, y)."""
    scheduler = BrownianBridgeScheduler(objective="noise", eta=1.0)
    scheduler.set_timesteps(steps)
    n = 20000
    x0 = torch.full((n, 1), 0.5, dtype=torch.float64)
    y = torch.full((n, 1), -1.0, dtype=torch.float64)
    middle = len(scheduler.timesteps) // 2
    t, s = int(scheduler.timesteps[middle]), int(scheduler.timesteps[middle + 1])
    eps = torch.randn((n, 1), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    x_t = scheduler.add_noise(x0, y, eps, t)
    out = scheduler.step(oracle_output(scheduler, x0, x_t, y, t), t, x_t, y, torch.Generator().manual_seed(12))
    m_s, var_s = float(scheduler.m_t[s]), float(scheduler.variance_t[s])
    assert float(out.prev_sample.mean()) == pytest.approx(0.5 * (1 - m_s) - m_s, abs=5 * math.sqrt(var_s / n))
    assert float(out.prev_sample.var()) == pytest.approx(var_s, abs=5 * var_s * math.sqrt(2 / (n - 1)))


def test_deterministic_step_shrinks_variance_as_bbdm() -> None:
    """eta = 0 keeps BBDM's coefficient: from the exact marginal at t, the variance at s is var_s - sigma2."""
    scheduler = BrownianBridgeScheduler(objective="grad", eta=0.0)
    scheduler.set_timesteps(10)
    t, s = int(scheduler.timesteps[3]), int(scheduler.timesteps[4])
    n = 20000
    x0, y = torch.zeros((n, 1), dtype=torch.float64), torch.ones((n, 1), dtype=torch.float64)
    eps = torch.randn((n, 1), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x_t = scheduler.add_noise(x0, y, eps, t)
    out = scheduler.step(oracle_output(scheduler, x0, x_t, y, t), t, x_t, y).prev_sample
    m_t, m_s = float(scheduler.m_t[t]), float(scheduler.m_t[s])
    var_t, var_s = float(scheduler.variance_t[t]), float(scheduler.variance_t[s])
    sigma2 = (var_t - var_s * (1 - m_t) ** 2 / (1 - m_s) ** 2) * var_s / var_t
    # deterministic: the result is an exact affine map of eps
    assert torch.allclose(out, m_s + math.sqrt((var_s - sigma2) / var_t) * math.sqrt(var_t) * eps, atol=1e-12)
    assert sigma2 > 0.01 * var_s


def test_stochastic_step_is_seeded() -> None:
    scheduler = BrownianBridgeScheduler(num_train_timesteps=100, eta=1.0)
    scheduler.set_timesteps(5)
    x0, y = pair((2, 1, 4, 4))
    t = int(scheduler.timesteps[1])
    x_t = scheduler.add_noise(x0, y, torch.zeros_like(x0), t)
    output = oracle_output(scheduler, x0, x_t, y, t)

    def run(seed: int) -> torch.Tensor:
        return scheduler.step(output, t, x_t, y, generator=torch.Generator().manual_seed(seed)).prev_sample

    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))
    # eta = 0 draws nothing: the generator is left untouched and the step is deterministic
    quiet = BrownianBridgeScheduler(num_train_timesteps=100, eta=0.0)
    quiet.set_timesteps(5)
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    a = quiet.step(output, t, x_t, y, generator=generator).prev_sample
    assert torch.equal(generator.get_state(), state)
    assert torch.equal(a, quiet.step(output, t, x_t, y, generator=torch.Generator().manual_seed(4)).prev_sample)


def test_step_rejects_bad_inputs() -> None:
    scheduler = BrownianBridgeScheduler(num_train_timesteps=100)
    scheduler.set_timesteps(5)
    sample = torch.zeros(1, 1, 4, 4)
    with pytest.raises(InvalidInputError, match="y has shape"):
        scheduler.step(sample, 99, sample, torch.zeros(1, 1, 4, 5))
    with pytest.raises(InvalidInputError, match="model_output has shape"):
        scheduler.step(torch.zeros(1, 2, 4, 4), 99, sample, sample)
    with pytest.raises(InvalidInputError, match="not one of"):
        scheduler.step(sample, 98, sample, sample)
    for bad in (100, -1, 2.5, torch.tensor([99, 74])):
        with pytest.raises(InvalidInputError):
            scheduler.step(sample, bad, sample, sample)
    with pytest.raises(InvalidInputError, match="noise has shape"):
        scheduler.add_noise(sample, sample, torch.zeros(2, 1, 4, 4), 3)
    with pytest.raises(InvalidInputError, match="timesteps"):
        scheduler.add_noise(sample, sample, sample, torch.tensor([100]))
    with pytest.raises(InvalidInputError, match="timesteps"):
        scheduler.add_noise(sample, sample, sample, torch.tensor([1, 2, 3]))
    with pytest.raises(InvalidInputError, match="floating-point"):
        scheduler.add_noise(sample.long(), sample.long(), sample.long(), 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"objective": "eps"},
        {"mt_schedule": "cosine"},
        {"num_train_timesteps": 1},
        {"num_train_timesteps": 10.0},
        {"max_var": 0.0},
        {"max_var": float("nan")},
        {"eta": -0.1},
        {"eta": float("inf")},
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(InvalidInputError):
        BrownianBridgeScheduler(**kwargs)


# -- config --------------------------------------------------------------------------------------------------


def test_config_round_trip_rebuilds_identical_scheduler() -> None:
    scheduler = BrownianBridgeScheduler(num_train_timesteps=64, mt_schedule="sin", max_var=0.8, objective="noise",
                                        eta=0.5)
    stored = json.loads(json.dumps(scheduler.config))
    rebuilt = BrownianBridgeScheduler.from_config(stored)
    assert rebuilt.config == scheduler.config
    assert torch.equal(rebuilt.m_t, scheduler.m_t) and torch.equal(rebuilt.variance_t, scheduler.variance_t)
    for s in (scheduler, rebuilt):
        s.set_timesteps(7)
    assert torch.equal(rebuilt.timesteps, scheduler.timesteps)
    x0, y = pair((1, 1, 3, 3))
    t = int(scheduler.timesteps[2])
    x_t = scheduler.add_noise(x0, y, torch.ones_like(x0), t)
    a, b = (s.step(x0, t, x_t, y, generator=torch.Generator().manual_seed(9)).prev_sample for s in (scheduler, rebuilt))
    assert torch.equal(a, b)
    # the returned config is a copy
    scheduler.config["eta"] = 3.0
    assert scheduler.eta == 0.5
    assert BrownianBridgeScheduler.from_dict(scheduler.to_dict()).config == scheduler.config


def test_from_config_refuses_foreign_or_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="Unknown"):
        BrownianBridgeScheduler.from_config({"num_train_timesteps": 10, "beta_schedule": "linear"})
    with pytest.raises(ConfigError, match="DDIMScheduler"):
        BrownianBridgeScheduler.from_config({"_class_name": "DDIMScheduler"})
    with pytest.raises(InvalidInputError):
        BrownianBridgeScheduler.from_config({"objective": "velocity"})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_with_cpu_generator() -> None:
    scheduler = BrownianBridgeScheduler(eta=1.0)
    x0, y = (v.cuda() for v in pair((1, 1, 4, 4, 4), dtype=torch.float32))
    result, _ = run_oracle(scheduler, x0, y, 20)
    assert result.device.type == "cuda"
    assert torch.allclose(result, x0, atol=1e-5)
    noisy = scheduler.add_noise(x0, y, torch.zeros_like(x0), torch.tensor([5], device="cuda"))
    assert noisy.device.type == "cuda"
