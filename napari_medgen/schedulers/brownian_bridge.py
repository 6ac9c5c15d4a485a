"""`BrownianBridgeScheduler`: the Brownian-bridge diffusion process of BBDM (Li et al., CVPR 2023).

BBDM translates a source y (here: the latent with the tumour masked out) into a target x0 (the tumour latent)
along a Brownian bridge instead of starting from pure noise. With ``m_t`` rising from ~0 to ~1 over the
``T`` training steps (indices t = 0 .. T-1):

- forward marginal  q(x_t | x0, y) = N((1 - m_t) x0 + m_t y, var_t I),  var_t = 2 (m_t - m_t^2) max_var;
- ``mt_schedule="linear"``: m_t = linspace(0.001, 0.999, T);
- ``mt_schedule="sin"`` (BBDM's name; the curve is exponential): r_i = 1.0075 ** linspace(0, T, T)[i],
  m_i = r_i / r_{T-1} for i < T-1 and m_{T-1} = 0.999 (so m_0 = 1.0075**-T and the curve is increasing);
- objectives (what the network predicts): ``"grad"`` m_t (y - x0) + sqrt(var_t) eps (= x_t - x0),
  ``"noise"`` eps, ``"ysubx"`` y - x0;
- reverse (BBDM's skip-step sampler, eta in [0, inf)): for consecutive sampling timesteps t > s,
  sigma2 = (var_t - var_s (1 - m_t)^2 / (1 - m_s)^2) var_s / var_t and
  x_s = (1 - m_s) x0_hat + m_s y + sqrt((var_s - sigma2) / var_t) (x_t - (1 - m_t) x0_hat - m_t y)
  + eta sqrt(sigma2) z. The step at the last sampling timestep returns x0_hat itself.

eta = 1 is ancestral sampling from the bridge posterior (it keeps the forward marginals: an x_t drawn from
q(x_t | x0, y) and the exact x0 give x_s distributed as q(x_s | x0, y)). eta = 0 is deterministic; as in BBDM
the deterministic part keeps the sqrt(var_s - sigma2) coefficient, so its samples carry less noise than the
marginal (variance var_s - sigma2 instead of var_s) and not a DDIM-style eta^2 interpolation.

Sampling starts at x_T = y (the bridge's end, where m = 1 and var = 0), not at noise: `initial_sample`.
The interface follows diffusers (`set_timesteps`, `step` -> ``prev_sample``/``pred_original_sample``,
`add_noise`, ``config``) so pipelines can swap samplers; `step` also takes ``y``, which the bridge needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from napari_medgen.errors import ConfigError, InvalidInputError

OBJECTIVES = ("grad", "noise", "ysubx")
MT_SCHEDULES = ("linear", "sin")
SIN_BASE = 1.0075
M_MIN, M_MAX = 0.001, 0.999

TimestepLike = int | torch.Tensor


@dataclass(frozen=True)
class BrownianBridgeSchedulerOutput:
    """Result of one reverse step, named like diffusers' ``SchedulerOutput``/``DDIMSchedulerOutput``."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def bridge_m_schedule(num_train_timesteps: int, mt_schedule: str) -> torch.Tensor:
    """m_0 .. m_{T-1} (float64, increasing in (0, 1)): how far x_t has moved from x0 towards y."""
    steps = num_train_timesteps
    if mt_schedule == "linear":
        return torch.linspace(M_MIN, M_MAX, steps, dtype=torch.float64)
    if mt_schedule == "sin":
        ramp = SIN_BASE ** torch.linspace(0.0, float(steps), steps, dtype=torch.float64)
        m = ramp / ramp[-1]
        m[-1] = M_MAX
        return m
    raise InvalidInputError(f"mt_schedule must be one of {MT_SCHEDULES}; got {mt_schedule!r}.")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_same_shape(reference_name: str, reference: torch.Tensor, **others: torch.Tensor) -> None:
    for name, tensor in others.items():
        if not isinstance(tensor, torch.Tensor):
            raise InvalidInputError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}.")
        if tensor.shape != reference.shape:
            raise InvalidInputError(
                f"{name} has shape {tuple(tensor.shape)} but {reference_name} has {tuple(reference.shape)}; "
                "the bridge needs both on the same grid (same batch, channels and spatial size)."
            )


class BrownianBridgeScheduler:
    """Brownian-bridge forward process, training targets and skip-step reverse sampler (see module docstring)."""

    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        mt_schedule: str = "linear",
        max_var: float = 1.0,
        objective: str = "grad",
        eta: float = 0.0,
    ) -> None:
        if not _is_int(num_train_timesteps) or num_train_timesteps < 2:
            raise InvalidInputError(
                f"num_train_timesteps must be an integer >= 2 (BBDM uses 1000); got {num_train_timesteps!r}."
            )
        if mt_schedule not in MT_SCHEDULES:
            raise InvalidInputError(f"mt_schedule must be one of {MT_SCHEDULES}; got {mt_schedule!r}.")
        if objective not in OBJECTIVES:
            raise InvalidInputError(
                f"objective must be one of {OBJECTIVES} (what the network predicts); got {objective!r}."
            )
        if isinstance(max_var, bool) or not isinstance(max_var, int | float) or not (
            math.isfinite(max_var) and max_var > 0
        ):
            raise InvalidInputError(f"max_var must be a finite number > 0 (BBDM uses 1.0); got {max_var!r}.")
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not (math.isfinite(eta) and eta >= 0):
            raise InvalidInputError(
                f"eta must be a finite number >= 0 (0: deterministic, 1: ancestral sampling); got {eta!r}."
            )
        self.num_train_timesteps = int(num_train_timesteps)
        self.mt_schedule = mt_schedule
        self.max_var = float(max_var)
        self.objective = objective
        self.eta = float(eta)
        self.m_t = bridge_m_schedule(self.num_train_timesteps, mt_schedule)
        self.variance_t = 2.0 * (self.m_t - self.m_t**2) * self.max_var
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(self.num_train_timesteps - 1, -1, -1, dtype=torch.int64)

    # -- configuration ---------------------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (a fresh JSON-serialisable dict) for a checkpoint's config.json."""
        return {
            "_class_name": type(self).__name__,
            "num_train_timesteps": self.num_train_timesteps,
            "mt_schedule": self.mt_schedule,
            "max_var": self.max_var,
            "objective": self.objective,
            "eta": self.eta,
        }

    def to_dict(self) -> dict[str, Any]:
        """Same as ``config``; named like the rest of the project's serialisable objects."""
        return self.config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BrownianBridgeScheduler:
        """Rebuild a scheduler from ``config`` (as written by `config`); unknown keys are refused."""
        if not isinstance(config, Mapping):
            raise ConfigError(f"A scheduler config must be a mapping; got {type(config).__name__}.")
        values = dict(config)
        class_name = values.pop("_class_name", cls.__name__)
        if class_name != cls.__name__:
            raise ConfigError(
                f"This config describes a {class_name!r}, not a {cls.__name__}; load it with the matching class."
            )
        allowed = {"num_train_timesteps", "mt_schedule", "max_var", "objective", "eta"}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ConfigError(
                f"Unknown {cls.__name__} config keys {unknown}; allowed keys are {sorted(allowed)}."
            )
        return cls(**values)

    from_dict = from_config

    def __len__(self) -> int:
        return self.num_train_timesteps

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if k != "_class_name")
        return f"{type(self).__name__}({args})"

    # -- timesteps -------------------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose ``num_inference_steps`` sampling timesteps, evenly spaced from T-1 down to 0.

        timesteps[i] = round((T - 1) (S - 1 - i) / (S - 1)) in exact integer arithmetic, so the first is
        T - 1, the last is 0, they strictly decrease and neighbouring gaps differ by at most 1. S = 1 gives
        [T - 1]: a single network call predicting x0 straight from y. S = T visits every training step.
        """
        steps = num_inference_steps
        total = self.num_train_timesteps
        if not _is_int(steps) or not 1 <= steps <= total:
            raise InvalidInputError(
                f"num_inference_steps must be an integer from 1 to {total} (the training steps); got {steps!r}."
            )
        if steps == 1:
            values = [total - 1]
        else:
            span = total - 1
            values = [(span * (steps - 1 - i) * 2 + (steps - 1)) // (2 * (steps - 1)) for i in range(steps)]
        self.num_inference_steps = steps
        self.timesteps = torch.tensor(values, dtype=torch.int64, device=device)

    def previous_timestep(self, timestep: TimestepLike) -> int | None:
        """The sampling timestep after ``timestep`` in ``self.timesteps``; None at the last one."""
        t = self._scalar_timestep(timestep)
        schedule = self.timesteps.tolist()
        if t not in schedule:
            raise InvalidInputError(
                f"timestep {t} is not one of this scheduler's sampling timesteps; call set_timesteps(steps) and "
                "step through scheduler.timesteps in order."
            )
        index = schedule.index(t)
        return schedule[index + 1] if index + 1 < len(schedule) else None

    # -- coefficients ----------------------------------------------------------------------------------------

    def _scalar_timestep(self, timestep: TimestepLike) -> int:
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise InvalidInputError(
                    f"step takes one timestep for the whole batch; got a tensor of shape {tuple(timestep.shape)}."
                )
            value = timestep.reshape(()).item()
        else:
            value = timestep
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not _is_int(value) or not 0 <= value < self.num_train_timesteps:
            raise InvalidInputError(
                f"timestep must be an integer from 0 to {self.num_train_timesteps - 1}; got {timestep!r}."
            )
        return int(value)

    def _coefficient(self, table: torch.Tensor, timesteps: TimestepLike, like: torch.Tensor) -> torch.Tensor:
        """``table[timesteps]`` in ``like``'s dtype/device, shaped to broadcast over ``like`` per batch entry."""
        if not isinstance(like, torch.Tensor) or not like.is_floating_point():
            raise InvalidInputError("The bridge works on floating-point torch tensors (float32 or float64).")
        if isinstance(timesteps, torch.Tensor) and timesteps.dim() > 0:
            if timesteps.dim() != 1 or like.dim() == 0 or timesteps.shape[0] not in (1, like.shape[0]):
                batch = like.shape[0] if like.dim() else 1
                raise InvalidInputError(
                    f"timesteps must be one integer or one per batch entry (shape ({batch},)); got shape "
                    f"{tuple(timesteps.shape)} for a sample of shape {tuple(like.shape)}."
                )
            index = timesteps.detach().cpu()
            if index.is_floating_point():
                if not torch.equal(index, index.round()):
                    raise InvalidInputError("timesteps must be integers (training step indices).")
                index = index.long()
            index = index.to(torch.int64)
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_train_timesteps):
                raise InvalidInputError(
                    f"timesteps must lie in 0..{self.num_train_timesteps - 1}; got {index.tolist()}."
                )
            values = table[index].to(device=like.device, dtype=like.dtype)
            return values.reshape(-1, *([1] * (like.dim() - 1)))
        t = self._scalar_timestep(timesteps)
        return table[t].to(device=like.device, dtype=like.dtype)

    # -- forward process and training ------------------------------------------------------------------------

    def add_noise(
        self, x0: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, timesteps: TimestepLike
    ) -> torch.Tensor:
        """x_t = (1 - m_t) x0 + m_t y + sqrt(var_t) noise: a draw from q(x_t | x0, y) (timesteps per batch)."""
        _check_same_shape("x0", x0, y=y, noise=noise)
        m = self._coefficient(self.m_t, timesteps, x0)
        std = self._coefficient(self.variance_t.sqrt(), timesteps, x0)
        return (1.0 - m) * x0 + m * y + std * noise

    def training_target(
        self, x0: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, timesteps: TimestepLike
    ) -> torch.Tensor:
        """What the network should output for x_t = add_noise(x0, y, noise, timesteps) under ``objective``."""
        _check_same_shape("x0", x0, y=y, noise=noise)
        if self.objective == "grad":
            m = self._coefficient(self.m_t, timesteps, x0)
            std = self._coefficient(self.variance_t.sqrt(), timesteps, x0)
            return m * (y - x0) + std * noise
        self._coefficient(self.m_t, timesteps, x0)  # validates timesteps for the other objectives too
        if self.objective == "noise":
            return noise.clone()
        return y - x0

    def predict_x0(
        self, model_output: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, timesteps: TimestepLike
    ) -> torch.Tensor:
        """The x0 estimate implied by ``model_output`` at x_t (inverse of `training_target`)."""
        _check_same_shape("x_t", x_t, model_output=model_output, y=y)
        if self.objective == "grad":
            self._coefficient(self.m_t, timesteps, x_t)
            return x_t - model_output
        if self.objective == "noise":
            m = self._coefficient(self.m_t, timesteps, x_t)
            std = self._coefficient(self.variance_t.sqrt(), timesteps, x_t)
            return (x_t - m * y - std * model_output) / (1.0 - m)
        self._coefficient(self.m_t, timesteps, x_t)
        return y - model_output

    # -- reverse process -------------------------------------------------------------------------------------

    def initial_sample(self, y: torch.Tensor) -> torch.Tensor:
        """x_T = y: the bridge starts at the source itself (a copy, so the sampler never aliases the input)."""
        if not isinstance(y, torch.Tensor) or not y.is_floating_point():
            raise InvalidInputError("y must be a floating-point torch tensor (the source / masked latent).")
        return y.clone()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: TimestepLike,
        sample: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> BrownianBridgeSchedulerOutput:
        """One reverse step from ``timestep`` to the next sampling timestep (x0_hat at the last one)."""
        _check_same_shape("sample", sample, model_output=model_output, y=y)
        t = self._scalar_timestep(timestep)
        x0_hat = self.predict_x0(model_output, sample, y, t)
        s = self.previous_timestep(t)
        if s is None:
            return BrownianBridgeSchedulerOutput(prev_sample=x0_hat, pred_original_sample=x0_hat)
        m_t, m_s = float(self.m_t[t]), float(self.m_t[s])
        var_t, var_s = float(self.variance_t[t]), float(self.variance_t[s])
        sigma2 = max(0.0, (var_t - var_s * (1.0 - m_t) ** 2 / (1.0 - m_s) ** 2) * var_s / var_t)
        keep = math.sqrt(max(0.0, (var_s - sigma2) / var_t))
        prev = (1.0 - m_s) * x0_hat + m_s * y + keep * (sample - (1.0 - m_t) * x0_hat - m_t * y)
        if self.eta > 0 and sigma2 > 0:
            device = generator.device if generator is not None else sample.device
            z = torch.randn(sample.shape, generator=generator, device=device, dtype=sample.dtype).to(sample.device)
            prev = prev + (self.eta * math.sqrt(sigma2)) * z
        return BrownianBridgeSchedulerOutput(prev_sample=prev, pred_original_sample=x0_hat)
