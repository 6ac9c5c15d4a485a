"""Samplers for our 2D diffusion models: diffusers schedulers rebuilt from the model's training schedule.

Every model stores its training noise schedule, so a sampler is chosen at run time without retraining:
``ddpm`` (ancestral, as trained; slow), ``ddim`` (skip-step DDIM; eta `DDIM_ETA`) or ``dpmpp``
(DPM-Solver++ 2M in its SDE form, stochastic; good images in 20-50 steps). The mask-guided loop also implements the
adjustable anatomical similarity of seed 002 (section 3.2.2): generation is halted at ``t~``, mixed
with the real image noised to ``t~``, and denoised from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from napari_medgen.core.device import autocast
from napari_medgen.core.progress import Job, ProgressEvent
from napari_medgen.errors import InvalidInputError

SAMPLERS = ("ddpm", "ddim", "dpmpp")
#: DDIM's eta. 0 is the deterministic DDIM of the papers; our CPU-trained models keep visible residual noise
#: with deterministic sampling (their noise estimates at low noise are not yet exact), which the stochastic
#: variants (eta 1, DDPM, SDE DPM-Solver++) wash out (docs/slice_diffusion.md, "Samplers").
DDIM_ETA = 1.0
DEFAULT_STEPS = {"ddpm": 1000, "ddim": 50, "dpmpp": 20}


def make_sampler(model: Any, name: str, steps: int, clip: bool = True, stochastic: bool = True) -> Any:
    """A diffusers scheduler of kind ``name`` on ``model``'s training schedule, set to ``steps`` steps.

    ``clip``: keep every clean-sample estimate inside the data range [-1, 1] (diffusers' ``clip_sample``;
    DPM-Solver++ through its thresholding with a maximum of 1). At high noise an epsilon-predicting network
    turns tiny noise errors into huge x0 errors (divided by sqrt(abar_T) ~ 0.006); unclipped, small or
    briefly trained models drift to all-black or saturated samples. ``stochastic``: DPM-Solver++ in its SDE form
    (False: the ODE form, deterministic)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if name not in SAMPLERS:
        raise InvalidInputError(f"Unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}.")
    total = int(model.config["num_train_timesteps"])
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= total:
        raise InvalidInputError(f"steps must be an integer from 1 to {total} (the training schedule); got {steps!r}.")
    common = {"num_train_timesteps": total, "beta_schedule": model.config["beta_schedule"],
              "prediction_type": "epsilon"}
    if name == "ddpm":
        scheduler = DDPMScheduler(**common, clip_sample=clip, clip_sample_range=1.0, timestep_spacing="trailing")
    elif name == "ddim":
        scheduler = DDIMScheduler(**common, clip_sample=clip, clip_sample_range=1.0, set_alpha_to_one=True,
                                  timestep_spacing="trailing")
    else:
        algorithm = "sde-dpmsolver++" if stochastic else "dpmsolver++"
        scheduler = DPMSolverMultistepScheduler(**common, algorithm_type=algorithm, solver_order=2,
                                                timestep_spacing="trailing", thresholding=clip,
                                                sample_max_value=1.0)
    scheduler.set_timesteps(steps)
    return scheduler


def default_steps(model_config: dict[str, Any], sampler: str) -> int:
    """The step count a sampler uses when the user gives none: its usual count (`DEFAULT_STEPS`), capped by the
    model's training schedule (``ddpm`` = all of it). The one place front ends and pipelines take it from."""
    if sampler not in SAMPLERS:
        raise InvalidInputError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    total = int(model_config.get("num_train_timesteps", DEFAULT_STEPS[sampler]))
    return min(DEFAULT_STEPS[sampler], total)


def predict_x0(scheduler: Any, x_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
    """The clean-sample estimate (x_t - sqrt(1 - abar) eps) / sqrt(abar) at training timestep ``t``."""
    abar = scheduler.alphas_cumprod[int(t)].to(x_t.device, torch.float32)
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def restart_solver(scheduler: Any) -> None:
    """Forget a multistep solver's earlier model outputs (after the sample jumped, e.g. by mixing), so the
    next step is first order from the new point instead of extrapolating from another trajectory."""
    if getattr(scheduler, "model_outputs", None) is not None:
        scheduler.model_outputs = [None] * len(scheduler.model_outputs)
        scheduler.lower_order_nums = 0


def step_kwargs(name: str, generator: torch.Generator | None, eta: float = DDIM_ETA) -> dict[str, Any]:
    """Extra arguments of ``scheduler.step`` (every sampler here is stochastic and takes our generator)."""
    return {"generator": generator, "eta": float(eta)} if name == "ddim" else {"generator": generator}


def sample_mask_guided(
    model: Any,
    code: torch.Tensor,
    noise: torch.Tensor,
    *,
    sampler: str = "dpmpp",
    steps: int = 20,
    generator: torch.Generator | None = None,
    reference: torch.Tensor | None = None,
    similarity: float = 0.0,
    mix_at: float = 0.24,
    stage: str = "sampling",
    eta: float = DDIM_ETA,
    on_step: Callable[[int], None] | None = None,
) -> Job[torch.Tensor]:
    """Denoise ``noise`` (B, C, H, W) under the mask ``code`` (B, K, H, W); yields one event per step,
    returns x0 in the model's [-1, 1] units.

    ``reference`` (B, C, H, W in [-1, 1]) with ``similarity`` s in [0, 1]: at the first timestep <=
    ``mix_at`` x T (the last timestep when few steps never get that low) the current sample becomes
    ``s * q(reference, t~) + (1 - s) * x_t~`` (the paper's lambda is ``1 - s``; its t~ = 240 of 1000 is
    ``mix_at`` = 0.24). A multistep solver restarts there: its history belongs to the unmixed trajectory.
    """
    if not 0.0 <= similarity <= 1.0:
        raise InvalidInputError(f"similarity must be in [0, 1]; got {similarity}.")
    if similarity > 0 and reference is None:
        raise InvalidInputError("similarity > 0 needs a reference image to be similar to.")
    if not 0.0 < mix_at < 1.0:
        raise InvalidInputError(f"mix_at must be in (0, 1) (a fraction of the schedule); got {mix_at}.")
    if not 0.0 <= eta <= 1.0:
        raise InvalidInputError(f"eta must be in [0, 1] (0: deterministic sampling); got {eta}.")
    scheduler = make_sampler(model, sampler, steps, stochastic=eta > 0)
    device = next(model.parameters()).device
    x = noise.to(device) * scheduler.init_noise_sigma
    code = code.to(device)
    timesteps = list(scheduler.timesteps)
    t_mix = mix_at * (model.config["num_train_timesteps"] - 1)
    mix_index = next((i for i, t in enumerate(timesteps) if float(t) <= t_mix), len(timesteps) - 1)
    kwargs = step_kwargs(sampler, generator, eta)
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            if similarity > 0 and i == mix_index:
                ref_noise = torch.randn(x.shape, generator=generator).to(device)
                noised = scheduler.add_noise(reference.to(device), ref_noise, torch.as_tensor([int(t)]))
                x = similarity * noised + (1 - similarity) * x
                restart_solver(scheduler)
            with autocast(device):  # the U-Net in bf16 on CUDA; the scheduler update stays in fp32
                eps = model(scheduler.scale_model_input(x, t), t.to(device), code)
            x = scheduler.step(eps.float(), t, x, **kwargs).prev_sample
            if on_step is not None:
                on_step(i)
            yield ProgressEvent(i + 1, len(timesteps), stage)
    return x.clamp(-1.0, 1.0)
