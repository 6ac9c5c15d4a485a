"""Lesion image + mask pairs from attention maps, with layout guidance (DiDGen, seed 001, ch. 4 Stage III).

Sampling runs the model's usual DDIM loop. During the first ``guidance_fraction`` of the steps, when a
layout mask is given, the noisy sample is nudged before each step: z <- z - eta grad_z (L_CA + L_SA)
(eqs. 4.7-4.10, eta = 20), where L_CA pulls the ``<lesion>`` token's cross-attention (1/4 latent scale)
into the mask and L_SA keeps the self-attention (1/2 scale) of mask pixels inside it. After the last
step the lesion mask is read from the attention of that last UNet call: A_CS = (A_S)^4 A_C, Otsu,
dilation then erosion (`models.attention_masks.extract_mask`), so the mask is the model's own, not a
copy of the layout.

Two kinds of generator are supported: our token-conditioned model (`TokenDiffusionModel`, bundled
``token-diffusion-ph2``) and a local Stable Diffusion folder (loaded with ``local_files_only=True``; never
downloaded), e.g. one fine-tuned with `napari_medgen.training.sd_region_finetune`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medgen.core.progress import Job, ProgressEvent, run_job
from napari_medgen.errors import CheckpointError, InvalidInputError

DEFAULT_MODEL = "token-diffusion-ph2"
DEFAULT_STEPS = 50
GUIDANCE_SCALE = 20.0
GUIDANCE_FRACTION = 0.5
SD_PROMPT = "An image of <lesion> on <skin>"


@dataclass(frozen=True)
class LesionPair:
    """One generated image, its attention-derived lesion mask, and how it was made."""

    image: np.ndarray  # float32 in [0, 1]: (H, W) grey or (H, W, 3) RGB
    mask: np.ndarray  # uint8 (H, W) {0, 1}, extracted from attention
    layout: np.ndarray | None  # the layout mask that guided it (uint8) or None
    score: np.ndarray  # float32 (H, W): the normalised attention map the mask was thresholded from
    used: str  # which map was thresholded ("A_CS (matrix)", "A_C", ...)
    locality: float | None  # self-attention locality of the final step
    mass_in_layout: float | None  # share of the lesion token's attention inside the layout (final step)
    seed: int
    index: int
    cross_map: np.ndarray | None = None  # (h, w) lesion-token attention of the last step (``keep_maps``)
    self_attention: np.ndarray | None = None  # (N, N) self-attention of the last step (``keep_maps``)


@dataclass(frozen=True)
class LesionPairsResult:
    """The generated pairs and a JSON-ready report of the settings."""

    pairs: list[LesionPair]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> list[np.ndarray]:
        return [p.image for p in self.pairs]

    @property
    def masks(self) -> list[np.ndarray]:
        return [p.mask for p in self.pairs]


# ---- generators ---------------------------------------------------------------------------------------
class TokenGenerator:
    """Adapter around `TokenDiffusionModel`: noise prediction, the capture target and the token positions."""

    kind = "token-diffusion"

    def __init__(self, model: Any, attribute: str | None = None) -> None:
        from napari_medgen.models.token_diffusion import LESION_POSITION

        self.model = model
        self.net = model
        self.attribute = attribute
        model.token_ids([attribute])  # unknown attribute -> clear error before any work
        self.lesion_position = LESION_POSITION
        self.text_positions = list(range(1, 4))
        self.latent_size = model.image_size
        self.image_size = model.image_size
        self.scales = model.default_scales()
        self.channels = int(model.config["image_channels"])

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def sampler(self, steps: int, eta: float) -> Any:
        from napari_medgen.pipelines.diffusion_sampling import make_sampler

        return make_sampler(self.model, "ddim", int(steps), stochastic=eta > 0)

    def noise(self, generator: Any) -> Any:
        import torch

        return torch.randn((self.channels, *self.image_size), generator=generator)

    def eps(self, z: Any, t: Any) -> Any:
        ids = self.model.token_ids([self.attribute] * z.shape[0], device=z.device)
        return self.model(z, t.to(z.device), ids)

    def eps_uncond(self, z: Any, t: Any) -> Any | None:
        return None

    def decode(self, z: Any) -> np.ndarray:
        images = ((z.detach().clamp(-1, 1) + 1) / 2).float().cpu().numpy()
        return images.transpose(0, 2, 3, 1) if self.channels == 3 else images[:, 0]


class StableDiffusionGenerator:
    """Adapter around a diffusers ``StableDiffusionPipeline`` (classifier-free guidance ``cfg``)."""

    kind = "stable-diffusion"

    def __init__(self, pipe: Any, prompt: str = SD_PROMPT, lesion_word: str = "<lesion>", cfg: float = 7.5) -> None:
        import torch

        self.pipe = pipe
        self.net = pipe.unet
        self.cfg = float(cfg)
        tok = pipe.tokenizer
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        word = tok(lesion_word, add_special_tokens=False).input_ids
        row = ids[0].tolist()
        starts = [i for i in range(len(row) - len(word) + 1) if word and row[i:i + len(word)] == word]
        if not starts:
            raise InvalidInputError(
                f"The prompt {prompt!r} does not contain the lesion word {lesion_word!r}; put it in the prompt."
            )
        self.lesion_position = starts[0]
        eot = row.index(tok.eos_token_id, 1) if tok.eos_token_id in row[1:] else len(row)
        self.text_positions = list(range(1, eot))
        with torch.no_grad():
            device = pipe.unet.device
            self.cond = pipe.text_encoder(ids.to(device))[0]
            empty = tok("", padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
            self.uncond = pipe.text_encoder(empty.to(device))[0]
        factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        side = int(pipe.unet.config.sample_size)
        self.latent_size = (side, side)
        self.image_size = (side * factor, side * factor)
        self.scales = sd_scales(pipe.unet, self.latent_size)
        self.channels = int(pipe.unet.config.in_channels)

    @property
    def device(self) -> Any:
        return self.pipe.unet.device

    def sampler(self, steps: int, eta: float) -> Any:
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(int(steps))
        return scheduler

    def noise(self, generator: Any) -> Any:
        import torch

        return torch.randn((self.channels, *self.latent_size), generator=generator)

    def eps(self, z: Any, t: Any) -> Any:
        return self.pipe.unet(z, t, encoder_hidden_states=self.cond.expand(z.shape[0], -1, -1)).sample

    def eps_uncond(self, z: Any, t: Any) -> Any | None:
        if self.cfg == 1.0:
            return None
        return self.pipe.unet(z, t, encoder_hidden_states=self.uncond.expand(z.shape[0], -1, -1)).sample

    def decode(self, z: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            vae = self.pipe.vae
            images = vae.decode(z / vae.config.scaling_factor).sample
        return ((images.clamp(-1, 1) + 1) / 2).float().cpu().numpy().transpose(0, 2, 3, 1)


def sd_scales(unet: Any, latent_size: Sequence[int]) -> tuple[int, int]:
    """(cross, self) latent sides for an SD-style UNet: 1/4 and 1/2 of the latent side when it has attention
    there, otherwise the nearest coarser / finer attention levels (spec section 1.2)."""
    side = int(latent_size[0])
    types = list(unet.config.down_block_types)
    sides = {side // 2 ** i for i, name in enumerate(types) if "CrossAttn" in name} | {side // 2 ** (len(types) - 1)}
    ordered = sorted(sides, reverse=True)
    cross = side // 4 if side // 4 in sides else ordered[min(1, len(ordered) - 1)]
    self_side = side // 2 if side // 2 in sides else ordered[0]
    return cross, self_side


def is_stable_diffusion_folder(path: str | Path) -> bool:
    """Whether ``path`` is a local diffusers pipeline folder (it has ``model_index.json``)."""
    return (Path(path).expanduser() / "model_index.json").is_file()


def load_stable_diffusion(folder: str | Path, device: Any = None) -> Any:
    """A ``StableDiffusionPipeline`` from a local folder only (``local_files_only=True``: nothing is downloaded)."""
    from diffusers import StableDiffusionPipeline

    from napari_medgen.core.device import select_device

    path = Path(folder).expanduser()
    if not is_stable_diffusion_folder(path):
        raise CheckpointError(f"{path} is not a Stable Diffusion folder (no model_index.json).")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True, safety_checker=None,
                                                       requires_safety_checker=False)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"Could not load the Stable Diffusion folder {path}: {error}") from error
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(select_device(device))


def check_guidable(net: Any) -> None:
    """Layout guidance needs token cross-attention; raise a clear error for any other network."""
    from napari_medgen.models.attention_capture import has_cross_attention

    if not has_cross_attention(net):
        raise InvalidInputError(
            f"{type(net).__name__} has no cross-attention to tokens, so layout guidance and attention masks cannot "
            "work with it; use a token-diffusion checkpoint (e.g. token-diffusion-ph2) or a Stable Diffusion folder."
        )


def load_generator(model: Any = DEFAULT_MODEL, *, attribute: str | None = None, prompt: str | None = None,
                   lesion_word: str = "<lesion>", cfg: float = 7.5, device: Any = None) -> Any:
    """A generator adapter for a bundled name / checkpoint folder / SD folder, or a loaded model or pipeline."""
    import torch

    if isinstance(model, TokenGenerator | StableDiffusionGenerator):
        return model
    if hasattr(model, "unet") and hasattr(model, "vae") and hasattr(model, "tokenizer"):
        check_guidable(model.unet)
        return StableDiffusionGenerator(model, prompt or SD_PROMPT, lesion_word, cfg)
    if isinstance(model, torch.nn.Module):
        check_guidable(model)
        if not hasattr(model, "token_ids"):
            raise InvalidInputError(f"{type(model).__name__} is not a token-diffusion model or an SD pipeline.")
        return TokenGenerator(model, attribute)
    if isinstance(model, str | Path) and is_stable_diffusion_folder(model):
        return load_generator(load_stable_diffusion(model, device), prompt=prompt, lesion_word=lesion_word, cfg=cfg)
    from napari_medgen.hub import load_cached, read_checkpoint_config

    kind = read_checkpoint_config(model)["model_type"]
    if kind != "token-diffusion":
        raise InvalidInputError(
            f"{model} is a {kind!r} model without token cross-attention; layout guidance and attention masks need a "
            "token-diffusion checkpoint (e.g. token-diffusion-ph2) or a local Stable Diffusion folder."
        )
    return TokenGenerator(load_cached(model, expected_type="token-diffusion", device=device), attribute)


# ---- one batch ------------------------------------------------------------------------------------------
def _guidance_loss(gen: Any, store: Any, layout: Any) -> Any:
    from napari_medgen.models.attention_masks import cross_attention_loss, self_attention_loss, token_map

    cross_scale, self_scale = gen.scales
    h = cross_scale
    w = cross_scale * gen.latent_size[1] // gen.latent_size[0]
    a = token_map(store.cross_map(cross_scale), gen.lesion_position, gen.text_positions, shape=(h, w))
    b = layout.shape[0]
    return (cross_attention_loss(a, layout) + self_attention_loss(store.self_map(self_scale), layout)) * b


def guidance_step(gen: Any, z: Any, t: Any, layout: Any, scale: float, check: bool = False) -> tuple[Any, float]:
    """One layout-guidance update z <- z - scale * grad_z (L_CA + L_SA) (eq. 4.10); returns (new z, loss before)."""
    import torch

    from napari_medgen.models.attention_capture import AttentionStore, capture_attention, check_scales

    cross_scale, self_scale = gen.scales
    z = z.detach().requires_grad_(True)
    store = AttentionStore(tuple(gen.latent_size), cross_scales=(cross_scale,), self_scales=(self_scale,),
                           keep_grad=True)
    with torch.enable_grad(), capture_attention(gen.net, store):
        gen.eps(z, t)
        if check:
            check_scales(store, (cross_scale,), "cross")
            check_scales(store, (self_scale,), "self")
        loss = _guidance_loss(gen, store, layout)
        grad = torch.autograd.grad(loss, z)[0]
    return (z - scale * grad).detach(), float(loss.detach()) / layout.shape[0]


def sample_batch(gen: Any, z: Any, layout: Any | None, *, steps: int, guidance: bool, guidance_scale: float,
                 guidance_fraction: float, eta: float, generators: Sequence[Any]) -> Job[tuple[Any, Any]]:
    """Denoise latents ``z`` (B, C, h, w) with DDIM; ``generators``: one per item for the step noise (eta > 0), so a
    pair does not depend on the batch it is made in. Returns (z_0, the AttentionStore of the last UNet call)."""
    import torch

    from napari_medgen.models.attention_capture import AttentionStore, capture_attention
    cross_scale, self_scale = gen.scales
    scheduler = gen.sampler(steps, eta)
    guided = int(round(len(scheduler.timesteps) * guidance_fraction)) if guidance and layout is not None else 0
    store = AttentionStore(tuple(gen.latent_size), cross_scales=(cross_scale,), self_scales=(self_scale,))
    for i, t in enumerate(scheduler.timesteps):
        if i < guided:
            z, _ = guidance_step(gen, z, t, layout, guidance_scale, check=i == 0)
        last = i == len(scheduler.timesteps) - 1
        with torch.no_grad():
            store.new_step()
            if last:
                with capture_attention(gen.net, store):
                    eps = gen.eps(z, t)
            else:
                eps = gen.eps(z, t)
            uncond = gen.eps_uncond(z, t)
            if uncond is not None:
                eps = uncond + gen.cfg * (eps - uncond)
            noise = None
            if eta > 0:
                noise = torch.stack([torch.randn(z.shape[1:], generator=g) for g in generators]).to(z.device)
            z = scheduler.step(eps, t, z, eta=eta, variance_noise=noise).prev_sample
        yield ProgressEvent(i + 1, len(scheduler.timesteps), "lesion pairs", f"step {i + 1}")
    return z, store


# ---- the job ----------------------------------------------------------------------------------------------
def _layouts(layouts: Any, image_size: tuple[int, int]) -> list[np.ndarray] | None:
    from napari_medgen.models.attention_masks import check_layout

    if layouts is None:
        return None
    items = [layouts] if isinstance(layouts, np.ndarray) and layouts.ndim == 2 else list(layouts)
    if not items:
        raise InvalidInputError("layouts is empty; give at least one mask or None for unguided generation.")
    return [check_layout(m, image_size) for m in items]


def _check_args(n: Any, seed: Any, steps: Any, batch_size: Any, guidance_fraction: float, eta: float) -> None:
    for name, value, low in (("n", n, 1), ("seed", seed, 0), ("steps", steps, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise InvalidInputError(f"{name} must be an integer >= {low}; got {value!r}.")
    if not 0.0 <= guidance_fraction <= 1.0:
        raise InvalidInputError(f"guidance_fraction must be in [0, 1]; got {guidance_fraction}.")
    if not 0.0 <= eta <= 1.0:
        raise InvalidInputError(f"eta must be in [0, 1]; got {eta}.")


def generate_lesion_pairs_job(
    n: int,
    *,
    layouts: np.ndarray | Sequence[np.ndarray] | None = None,
    model: Any = DEFAULT_MODEL,
    attribute: str | None = None,
    guidance: bool = True,
    guidance_scale: float = GUIDANCE_SCALE,
    guidance_fraction: float = GUIDANCE_FRACTION,
    steps: int = DEFAULT_STEPS,
    eta: float | None = None,
    seed: int = 0,
    refine: str = "auto",
    tau: int = 4,
    batch_size: int = 8,
    prompt: str | None = None,
    cfg: float = 7.5,
    keep_maps: bool = False,
    device: Any = None,
) -> Job[LesionPairsResult]:
    """Job form of `generate_lesion_pairs`: one event per denoising step of each batch."""
    import torch

    from napari_medgen.core.device import cpu_generator
    from napari_medgen.models.attention_masks import REFINE_MODES, extract_mask, resize_mask

    eta_value = (1.0 if not isinstance(model, str | Path) or not is_stable_diffusion_folder(model) else 0.0) \
        if eta is None else float(eta)
    _check_args(n, seed, steps, batch_size, guidance_fraction, eta_value)
    if refine not in REFINE_MODES:
        raise InvalidInputError(f"refine must be one of {REFINE_MODES}; got {refine!r}.")
    yield ProgressEvent(0, None, "lesion pairs", "loading model")
    gen = load_generator(model, attribute=attribute, prompt=prompt, cfg=cfg, device=device)
    if gen.kind == "stable-diffusion" and eta is None:
        eta_value = 0.0
    masks = _layouts(layouts, gen.image_size)
    if guidance and masks is not None:
        check_guidable(gen.net)
    on = gen.device
    rows_all = list(range(int(n)))
    batches = [rows_all[i:i + int(batch_size)] for i in range(0, int(n), int(batch_size))]
    pairs: list[LesionPair] = []
    done, total = 0, len(batches) * int(steps)
    cross_scale, self_scale = gen.scales
    for rows in batches:
        z = torch.stack([gen.noise(cpu_generator(int(seed) * 1_000_003 + i)) for i in rows]).to(on)
        layout = None
        if masks is not None:
            layout = torch.from_numpy(np.stack([masks[i % len(masks)] for i in rows]).astype(np.float32)).to(on)
            if gen.kind == "stable-diffusion":  # the layout is drawn on the image; guidance works on the latent grid
                layout = resize_mask(layout, tuple(gen.latent_size))
        generators = [cpu_generator(int(seed) * 1_000_003 + i + 500_001) for i in rows]
        job = sample_batch(gen, z, layout, steps=int(steps), guidance=guidance, guidance_scale=float(guidance_scale),
                           guidance_fraction=float(guidance_fraction), eta=eta_value, generators=generators)
        try:
            while True:
                event = next(job)
                yield ProgressEvent(done + event.step, total, "lesion pairs",
                                    f"batch {len(pairs) // int(batch_size) + 1}/{len(batches)}, {event.message}")
        except StopIteration as stop:
            z, store = stop.value
        done += int(steps)
        images = gen.decode(z)
        cross = store.cross_map(cross_scale)
        selfs = store.self_map(self_scale)
        h = cross_scale
        w = cross_scale * gen.latent_size[1] // gen.latent_size[0]
        lesion = cross[..., gen.lesion_position].reshape(len(rows), h, w)
        for j, i in enumerate(rows):
            out = extract_mask(lesion[j], selfs[j], gen.image_size, refine=refine, tau=tau)
            lay = None if masks is None else masks[i % len(masks)]
            mass = None
            if lay is not None:
                m = resize_mask(torch.from_numpy(lay), (h, w))[0].to(lesion.device)
                mass = float((lesion[j] * m).sum() / lesion[j].sum().clamp_min(1e-12))
            maps = (lesion[j].cpu().numpy(), selfs[j].cpu().numpy()) if keep_maps else (None, None)
            pairs.append(LesionPair(np.ascontiguousarray(images[j], dtype=np.float32), out.mask, lay, out.score,
                                    out.used, out.locality, mass, int(seed), i, *maps))
    report = {"generated_by": "napari-medgen lesion-pairs", "model": str(model) if isinstance(model, str | Path)
              else type(model).__name__, "kind": gen.kind, "n": int(n), "seed": int(seed), "steps": int(steps),
              "eta": eta_value, "guidance": bool(guidance and masks is not None),
              "guidance_scale": float(guidance_scale),
              "guidance_fraction": float(guidance_fraction), "refine": refine, "tau": int(tau),
              "attribute": attribute, "cross_scale": cross_scale, "self_scale": self_scale,
              "layouts": 0 if masks is None else len(masks)}
    return LesionPairsResult(pairs, report)


def generate_lesion_pairs(n: int, **kwargs: Any) -> LesionPairsResult:
    """``n`` (image, attention mask) pairs; with ``layouts`` (one mask or a list, cycled) and ``guidance`` the
    lesion is steered into the layout. Same seed, same pairs. See `generate_lesion_pairs_job` for the options."""
    return run_job(generate_lesion_pairs_job(n, **kwargs))
