"""The composition methods on working-size tensors: seed 000's delayed composition and its baselines.

Every method takes the same `Scene` (background and placed-object images at the backbone's working size, in the
network's [-1, 1] range, the placed object mask and the user mask) and returns the composite in [-1, 1]:

* ``ours`` (seed 000): invert background and object under the content-free condition, reconstruct both down to T',
  start the composite there from the object inside its mask and the background elsewhere (eq. 8), re-inject the
  background outside the user mask on every grid point in [tau, T'] (eq. 9), then denoise plainly.
* ``tf-icon``: TF-ICON-style composition at T (eq. 7: fresh noise in the transition band ``M_obj XOR M_user``) with the
  same background re-injection; TF-ICON's self-attention injection is *not* reproduced (see docs/composition.md).
* ``sdedit``: the copy-paste image noised to ``strength`` x steps and denoised (SDEdit).
* ``blended``: Blended (latent) diffusion: the copy-paste image noised to ``strength`` x steps, and after every step
  the background noised to the same level replaces everything outside the user mask.

The pixel-domain methods (``copy-paste``, ``poisson``) live in `composition` because they run at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_medgen.core.progress import Job
from napari_medgen.pipelines.composition_solvers import Grid, denoise, invert, make_grid

DIFFUSION_METHODS = ("ours", "tf-icon", "sdedit", "blended")


@dataclass(frozen=True)
class Scene:
    """One composition request at the working size (tensors (1, C, h, w) in [-1, 1], masks (h, w) bool)."""

    background: torch.Tensor
    object_canvas: torch.Tensor
    copy_paste: torch.Tensor
    object_mask: np.ndarray
    user_mask: np.ndarray


@dataclass(frozen=True)
class Settings:
    """The knobs of the diffusion methods (validated by the caller)."""

    steps: int = 20
    t_prime: int = 6
    tau: int = 3
    solver: str = "dpmpp"
    strength: float = 0.5
    prompt: str | None = None
    guide: bool = False
    start_from: str = "reconstruction"


def latent_masks(backbone: Any, scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """(object, user) masks at the resolution the diffusion runs at: the user mask covers every latent cell it
    touches, the object mask the cells it fills at least half."""
    f = backbone.latent_factor()
    device = backbone.device
    obj = torch.from_numpy(scene.object_mask.astype(np.float32))[None, None]
    user = torch.from_numpy(scene.user_mask.astype(np.float32))[None, None]
    if f > 1:
        obj = torch.nn.functional.avg_pool2d(obj, f)
        user = torch.nn.functional.avg_pool2d(user, f)
    return (obj >= 0.5).float().to(device), (user > 0).float().to(device)


def _conds(backbone: Any, scene: Scene, settings: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    free = backbone.content_free(1)
    guided = backbone.guided(scene.object_mask if settings.guide else None, settings.prompt, 1)
    return free, guided


def run_method(method: str, backbone: Any, scene: Scene, settings: Settings,
               generator: torch.Generator, noise: torch.Tensor | None = None) -> Job[torch.Tensor]:
    """The composite (1, C, h, w) in [-1, 1] of a diffusion method; ``noise`` (optional, standard normal of the
    latent's shape) replaces the first draw from ``generator`` (slice-wise noise modes of volumes)."""
    grid = make_grid(backbone, settings.solver, settings.steps)
    m_obj, m_user = latent_masks(backbone, scene)
    free, guided = _conds(backbone, scene, settings)
    with torch.no_grad():
        latents = backbone.encode(torch.cat([scene.background, scene.object_canvas, scene.copy_paste]))
    bg0, obj0, cp0 = latents[:1], latents[1:2], latents[2:3]

    def draw() -> torch.Tensor:
        if noise is not None:
            return noise.to(bg0.device, bg0.dtype)
        return torch.randn(bg0.shape, generator=generator).to(bg0.device)

    if method in ("ours", "tf-icon"):
        result = yield from _delayed(backbone, grid, bg0, obj0, m_obj, m_user, free, guided, settings,
                                     at_t=method == "tf-icon", draw=draw, generator=generator)
    elif method == "sdedit":
        k = max(1, round(settings.strength * settings.steps))
        x = grid.noised(cp0, draw(), k)
        result = yield from denoise(backbone, grid, x, guided, k, 0, stochastic=True, generator=generator,
                                    stage="SDEdit")
    else:
        k = max(1, round(settings.strength * settings.steps))
        x = grid.noised(cp0, draw(), k)

        def blend(point: int, sample: torch.Tensor) -> torch.Tensor:
            fresh = torch.randn(bg0.shape, generator=generator)
            return sample * m_user + grid.noised(bg0, fresh, point) * (1 - m_user)

        result = yield from denoise(backbone, grid, x, guided, k, 0, stochastic=True, generator=generator,
                                    hook=blend, stage="blended diffusion")
    with torch.no_grad():
        return backbone.decode(result)


def _delayed(backbone: Any, grid: Grid, bg0: torch.Tensor, obj0: torch.Tensor, m_obj: torch.Tensor,
             m_user: torch.Tensor, free: torch.Tensor, guided: torch.Tensor, settings: Settings, *, at_t: bool,
             draw: Any, generator: torch.Generator) -> Job[torch.Tensor]:
    """Seed 000 (``at_t`` False: compose at T', eq. 8) or TF-ICON-style (``at_t``: compose at T, eq. 7)."""
    steps, tau = settings.steps, settings.tau
    start = steps if at_t else settings.t_prime
    pair_free = torch.cat([free, free])
    inverted = yield from invert(backbone, grid, torch.cat([bg0, obj0]), pair_free)
    if settings.start_from == "inversion" or start == steps:
        pair = inverted[start]
    else:  # reconstruct both images from their inverted noise down to the composition point (seed 000, fig. 5)
        pair = yield from denoise(backbone, grid, inverted[steps], pair_free, steps, start, stage="reconstructing")
    bg_k, obj_k = pair[:1], pair[1:2]
    if at_t:
        band = ((m_obj > 0) ^ (m_user > 0)).float()
        comp = obj_k * m_obj + bg_k * (1 - m_user) + draw() * band
    else:
        comp = obj_k * m_obj + bg_k * (1 - m_obj)
    if settings.start_from == "inversion":
        def reinject(point: int, sample: torch.Tensor) -> torch.Tensor:
            return sample * m_user + inverted[point][:1] * (1 - m_user) if point >= tau else sample

        return (yield from denoise(backbone, grid, comp, guided, start, 0, hook=reinject, stage="composing"))

    def reinject_pair(point: int, sample: torch.Tensor) -> torch.Tensor:
        out = sample.clone()
        out[:1] = sample[:1] * m_user + sample[1:2] * (1 - m_user)
        return out

    both = torch.cat([comp * m_user + bg_k * (1 - m_user), bg_k])
    both = yield from denoise(backbone, grid, both, torch.cat([guided, free]), start, tau, hook=reinject_pair,
                              stage="composing")
    return (yield from denoise(backbone, grid, both[:1], guided, tau, 0, stage="final denoising"))


def model_calls(method: str, settings: Settings) -> int:
    """Network evaluations a method makes (progress totals and the cost comparison of the benchmark)."""
    s = settings.steps
    if method in ("sdedit", "blended"):
        return max(1, round(settings.strength * s))
    start = s if method == "tf-icon" else settings.t_prime
    recon = 0 if settings.start_from == "inversion" or start == s else s - start
    return s + recon + start


__all__ = ["DIFFUSION_METHODS", "Scene", "Settings", "latent_masks", "model_calls", "run_method"]
