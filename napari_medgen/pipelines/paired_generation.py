"""Paired image + mask generation with a diffusion guider (PIG, seed 004).

Both the lesion mask x and the image y start as noise and are denoised in lock-step. At every step
the guider predicts the mask noise from (x_t, y_t); its clean-mask estimate x0_hat is binarised
(average pool + threshold, as PIG does) and conditions the mask-guided image model's step on y_t.
The final mask is the guider's last estimate, so image and mask come out together and agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medgen.core.progress import Job, ProgressEvent, run_job
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import InvalidInputError

DEFAULT_GUIDER = "busi-paired-guider"
DEFAULT_SAMPLER = "ddim"
#: image model used with a bundled guider when none is given
PARTNERS = {"busi-paired-guider": "seg2img-busi"}


@dataclass(frozen=True)
class PairsResult:
    """The generated (image, lesion mask) pairs, each a 2D volume of shape (1, H, W), and how they were made."""

    pairs: list[tuple[Volume, LabelMap]]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> list[Volume]:
        return [image for image, _ in self.pairs]

    @property
    def masks(self) -> list[LabelMap]:
        return [mask for _, mask in self.pairs]


def default_steps(guider: str | Path = DEFAULT_GUIDER, sampler: str = DEFAULT_SAMPLER) -> int:
    """The step count used when none is given: the sampler's usual count, capped by the guider's schedule."""
    from napari_medgen.hub import read_checkpoint_config
    from napari_medgen.pipelines.diffusion_sampling import default_steps as sampler_steps

    return sampler_steps(read_checkpoint_config(guider)["config"], sampler)


def _models(guider: str | Path, image_model: str | Path | None, device: Any = None) -> tuple[Any, Any]:
    from napari_medgen.hub import load_cached
    from napari_medgen.models.diffusion_unet2d import same_contract

    if image_model is None:
        key = str(guider)
        if key not in PARTNERS:
            raise InvalidInputError(
                f"Give the image model to pair with guider {key!r} (a mask-diffusion checkpoint trained on the same "
                "data): image_model=... / --image-model DIR."
            )
        image_model = PARTNERS[key]
    x_net = load_cached(guider, expected_type="paired-guider", device=device)
    y_net = load_cached(image_model, expected_type="mask-diffusion", device=device)
    same_contract(x_net, y_net, "paired generation")
    return x_net, y_net


def generate_pairs_job(
    n: int,
    *,
    guider: str | Path = DEFAULT_GUIDER,
    image_model: str | Path | None = None,
    steps: int | None = None,
    sampler: str = DEFAULT_SAMPLER,
    seed: int = 0,
    smooth: int = 3,
    batch_size: int = 8,
    spacing: tuple[float, float] = (1.0, 1.0),
    eta: float = 1.0,
    device: Any = None,
) -> Job[PairsResult]:
    """Job form of `generate_pairs`: one event per lock-step of each batch."""
    import torch

    from napari_medgen.core.device import autocast, cpu_generator
    from napari_medgen.models.mask_code import decode_mask, encode_mask
    from napari_medgen.pipelines.diffusion_sampling import default_steps as sampler_steps
    from napari_medgen.pipelines.diffusion_sampling import make_sampler, predict_x0, step_kwargs

    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise InvalidInputError(f"n (number of pairs) must be a positive integer; got {n!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise InvalidInputError(f"seed must be an integer; got {seed!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer; got {batch_size!r}.")
    if seed < 0:
        raise InvalidInputError(f"seed must be 0 or a positive integer; got {seed}.")
    if not 0.0 <= eta <= 1.0:
        raise InvalidInputError(f"eta must be in [0, 1] (0: deterministic sampling); got {eta}.")
    if smooth < 1 or smooth % 2 == 0:
        raise InvalidInputError(f"smooth (binarisation window) must be an odd number >= 1; got {smooth}.")
    if len(spacing) != 2 or min(float(s) for s in spacing) <= 0:
        raise InvalidInputError(f"spacing is two positive pixel sizes (x, y) in mm; got {spacing!r}.")
    yield ProgressEvent(0, None, "paired generation", "loading models")
    x_net, y_net = _models(guider, image_model, device)
    steps = sampler_steps(x_net.config, sampler) if steps is None else steps
    on = next(x_net.parameters()).device
    values = x_net.class_values
    k, c = x_net.num_classes, x_net.config["image_channels"]
    size = x_net.image_size
    batches = [list(range(i, min(i + batch_size, int(n)))) for i in range(0, int(n), batch_size)]
    total = len(batches) * int(steps)
    done = 0
    pairs: list[tuple[Volume, LabelMap]] = []
    for rows in batches:
        # starting noise per pair (the same pairs whatever the batch size); ddpm's step noise is per batch
        starts = [cpu_generator(int(seed) * 1_000_003 + i) for i in rows]
        x = torch.stack([torch.randn((k, *size), generator=g) for g in starts]).to(on)
        y = torch.stack([torch.randn((c, *size), generator=g) for g in starts]).to(on)
        generator = cpu_generator(int(seed) * 1_000_003 + rows[0] + 7)
        sx = make_sampler(x_net, sampler, int(steps), stochastic=eta > 0)
        sy = make_sampler(y_net, sampler, int(steps), stochastic=eta > 0)
        kwargs = step_kwargs(sampler, generator, eta)
        mask = torch.zeros((len(rows), *size), dtype=torch.int64, device=on)
        with torch.no_grad():
            for t in sx.timesteps:
                with autocast(on):  # network passes in bf16 on CUDA; x0 estimates and scheduler steps in fp32
                    eps_x = x_net(sx.scale_model_input(x, t), y, t.to(on)).float()
                mask = decode_mask(predict_x0(sx, x, eps_x, int(t)), values, smooth)
                x = sx.step(eps_x, t, x, **kwargs).prev_sample
                with autocast(on):
                    eps_y = y_net(sy.scale_model_input(y, t), t.to(on), encode_mask(mask, values)).float()
                y = sy.step(eps_y, t, y, **kwargs).prev_sample
                done += 1
                yield ProgressEvent(done, total, "paired generation", f"batch {len(pairs) // batch_size + 1}/"
                                    f"{len(batches)}, step {done}/{total}")
        final_mask = decode_mask(x, values, smooth).cpu()
        images = ((y.clamp(-1, 1) + 1) / 2).cpu().numpy().astype(np.float32)
        for i in range(len(rows)):
            meta = {"generated_by": "napari-medgen paired", "guider": str(guider), "seed": int(seed),
                    "index": rows[i], "sampler": sampler, "steps": int(steps), "eta": float(eta),
                    "units": "normalised [0, 1]"}
            sp = (float(spacing[0]), float(spacing[1]), 1.0)
            image = Volume(images[i][0][None], spacing=sp, metadata=meta)
            pairs.append((image, LabelMap(final_mask[i].numpy().astype(np.uint8)[None], spacing=sp, metadata=meta)))
    report = {"generated_by": "napari-medgen paired", "guider": str(guider), "image_model": str(image_model or
              PARTNERS.get(str(guider), "")), "n": int(n), "seed": int(seed), "sampler": sampler, "steps": int(steps),
              "eta": float(eta), "smooth": int(smooth)}
    return PairsResult(pairs, report)


def generate_pairs(n: int, **kwargs: Any) -> PairsResult:
    """``n`` new (image, lesion mask) pairs as 2D volumes of shape (1, H, W); same seed, same pairs.

    ``guider``: a paired-guider checkpoint; ``image_model``: the mask-diffusion model to pair it with
    (defaults to the bundled partner of a bundled guider); ``steps=None``: `default_steps`; ``device``: where the
    networks run. See `generate_pairs_job` for the options.
    """
    return run_job(generate_pairs_job(n, **kwargs))
