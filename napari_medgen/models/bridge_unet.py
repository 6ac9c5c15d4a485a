"""`BridgeUNet`: the latent Brownian-bridge texture network of seed 003 (section 3.2), on MONAI's 3D diffusion U-Net.

Inputs at the VQ-GAN latent resolution, concatenated along channels (as TS-Radiomics does): the bridge
state ``x_t``, the condition latent ``y`` (the scan with the edited region filled, encoded and
normalised) and the edited region itself as a fraction-of-voxels channel (so the network always knows
which latent voxels it has to repaint, even where the fill looks like tissue). It predicts the bridge
objective of its `BrownianBridgeScheduler` (``grad`` by default).

Texture features enter as tokens (`FeatureTokenizer`: value x per-feature embedding + feature-id
embedding, shared with the shape generator) that the U-Net cross-attends to at every attention level
(two or more; TS-Radiomics only conditions its bottleneck). Without features the same blocks run
seed 003's eq. 8: ``q, k, v = phi(z_t)`` -- self-attention with the *same* W_K / W_V projections,
which MONAI's ``CrossAttentionBlock`` does when ``context`` is None provided the attention levels'
width equals the token width. That is the tumour-removal path; it is trained jointly with synthesis
on healthy patches under pasted tumour masks (`napari_medgen.training.tasks.bridge`).

The frozen `VQGAN` the bridge was trained on lives inside it (``self.vqgan``, its config and latent
statistics in ``config["vqgan"]``), so a checkpoint is self-contained: the texture model can never be
paired with a compressor whose latents it does not know. The checkpoint's ``hub_extra`` carries the
feature normaliser, default texture and the data contract (spacing, radiomics settings, fill value).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_medgen.errors import CheckpointError, DimensionError, InvalidInputError
from napari_medgen.hub import HubModelMixin, register_model
from napari_medgen.models.shape_gan import FeatureTokenizer
from napari_medgen.models.vqgan import VQGAN
from napari_medgen.schedulers.brownian_bridge import BrownianBridgeScheduler

#: normalised intensity the edited region is filled with in the condition image (training and inference agree;
#: checkpoints store it as ``fill_value`` in their extra statistics)
FILL_VALUE = 0.0


def latent_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """The fraction of edited voxels in each latent voxel: ``(B, 1, Z, Y, X)`` -> ``(B, 1, Z/f, Y/f, X/f)``."""
    if mask.ndim != 5 or mask.shape[1] != 1:
        raise DimensionError(f"Expected a mask (batch, 1, z, y, x); got shape {tuple(mask.shape)}.")
    mask = mask.float()
    return F.avg_pool3d(mask, factor) if factor > 1 else mask


@register_model("bridge-unet")
class BridgeUNet(HubModelMixin, nn.Module):
    """MONAI ``DiffusionModelUNet(spatial_dims=3)`` with texture tokens; see the module docstring."""

    def __init__(
        self,
        vqgan: Mapping[str, Any],
        feature_names: Sequence[str] = (),
        channels: Sequence[int] = (16, 32, 32, 32),
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: int = 1,
        num_head_channels: int = 16,
        norm_num_groups: int = 8,
        transformer_num_layers: int = 1,
        num_train_timesteps: int = 1000,
        mt_schedule: str = "linear",
        max_var: float = 1.0,
        objective: str = "grad",
    ) -> None:
        from monai.networks.nets import DiffusionModelUNet

        super().__init__()
        names = [str(n) for n in feature_names]
        if not names or len(set(names)) != len(names):
            raise InvalidInputError(
                f"feature_names must list at least one texture feature, each once; got {len(names)} "
                f"({len(set(names))} distinct)."
            )
        widths = [int(c) for c in channels]
        levels = [bool(a) for a in attention_levels]
        if len(widths) != len(levels) or not widths or min(widths) < 1:
            raise InvalidInputError(
                f"channels and attention_levels need one entry per level; got {widths} and {levels}."
            )
        attention_widths = {w for w, a in zip(widths, levels, strict=True) if a}
        if sum(levels) < 2:
            raise InvalidInputError(
                f"Texture tokens must be cross-attended at two or more levels; attention_levels={levels}."
            )
        if len(attention_widths) != 1:
            raise InvalidInputError(
                f"All attention levels must have the same width (it is the token width, so that without texture "
                f"features the blocks self-attend with the same projections, seed 003 eq. 8); got channels "
                f"{widths} at attention_levels {levels}."
            )
        token_dim = attention_widths.pop()
        if token_dim % num_head_channels:
            raise InvalidInputError(
                f"num_head_channels {num_head_channels} must divide the attention width {token_dim}."
            )
        if any(w % norm_num_groups for w in widths):
            raise InvalidInputError(f"norm_num_groups {norm_num_groups} must divide every width in {widths}.")
        if num_res_blocks < 1:
            raise InvalidInputError(f"num_res_blocks must be >= 1; got {num_res_blocks}.")
        compressor = self._build_vqgan(vqgan)
        latent_channels = compressor.embedding_dim
        scheduler = BrownianBridgeScheduler(num_train_timesteps, mt_schedule, max_var, objective)
        self.config: dict[str, Any] = {
            "vqgan": {key: vqgan[key] for key in ("config", "latent_mean", "latent_std")},
            "feature_names": names,
            "channels": widths,
            "attention_levels": levels,
            "num_res_blocks": int(num_res_blocks),
            "num_head_channels": int(num_head_channels),
            "norm_num_groups": int(norm_num_groups),
            "transformer_num_layers": int(transformer_num_layers),
            "num_train_timesteps": scheduler.num_train_timesteps,
            "mt_schedule": scheduler.mt_schedule,
            "max_var": scheduler.max_var,
            "objective": scheduler.objective,
        }
        self.hub_extra: dict[str, Any] = {}
        self.hub_path = None
        self.vqgan = compressor.requires_grad_(False).eval()
        self.tokenizer = FeatureTokenizer(len(names), token_dim)
        self.unet = DiffusionModelUNet(
            spatial_dims=3,
            in_channels=2 * latent_channels + 1,
            out_channels=latent_channels,
            num_res_blocks=num_res_blocks,
            channels=tuple(widths),
            attention_levels=tuple(levels),
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
            with_conditioning=True,
            transformer_num_layers=transformer_num_layers,
            cross_attention_dim=token_dim,
            use_flash_attention=True,
        )

    @staticmethod
    def _build_vqgan(spec: Mapping[str, Any]) -> VQGAN:
        try:
            compressor = VQGAN(**spec["config"])
            mean, std = list(spec["latent_mean"]), list(spec["latent_std"])
        except (KeyError, TypeError) as error:
            raise CheckpointError(
                "vqgan must describe the frozen VQ-GAN: {'config': its constructor arguments, 'latent_mean', "
                f"'latent_std'}} (as `BridgeUNet.vqgan_spec(model)` gives); got {error!r}."
            ) from error
        compressor.hub_extra = {"latent_mean": mean, "latent_std": std}
        compressor.normalize_latent(torch.zeros(1, compressor.embedding_dim, 1, 1, 1))  # checks the statistics
        return compressor

    @staticmethod
    def vqgan_spec(model: VQGAN) -> dict[str, Any]:
        """What the ``vqgan`` argument needs from a trained VQ-GAN (its weights are loaded separately)."""
        if not isinstance(model, VQGAN):
            raise CheckpointError(f"The texture model needs a 'vqgan' checkpoint; got a {type(model).__name__}.")
        extra = getattr(model, "hub_extra", {}) or {}
        if "latent_mean" not in extra or "latent_std" not in extra:
            raise CheckpointError("This VQ-GAN has no latent statistics; use a checkpoint exported by "
                                  "`medgen train vqgan`.")
        return {"config": dict(model.config), "latent_mean": list(extra["latent_mean"]),
                "latent_std": list(extra["latent_std"])}

    def train(self, mode: bool = True) -> BridgeUNet:
        """Train the bridge; the VQ-GAN stays in eval mode (its EMA codebook must not move)."""
        super().train(mode)
        self.vqgan.eval()
        return self

    # ---- contract -------------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return list(self.config["feature_names"])

    @property
    def latent_channels(self) -> int:
        return self.vqgan.embedding_dim

    @property
    def size_multiple(self) -> int:
        """Image crop sizes must be multiples of this: the VQ-GAN's factor x one halving per U-Net level."""
        return self.vqgan.downsample_factor * 2 ** (len(self.config["channels"]) - 1)

    @property
    def normalization(self) -> str:
        """The intensity normalisation spec of the scans (the VQ-GAN's)."""
        return str(self.vqgan.config["normalization"])

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(B, 1, Z, Y, X)`` in [-1, 1] -> normalised quantised latents (what the bridge sees)."""
        return self.vqgan.normalize_latent(self.vqgan.encode(images))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Bridge latents -> images in [-1, 1] (snapped to the codebook first, clipped)."""
        return self.vqgan.decode(self.vqgan.denormalize_latent(latents)).clamp(-1.0, 1.0)

    def region_latent(self, mask: torch.Tensor) -> torch.Tensor:
        """The edited region at latent resolution (fraction of edited voxels per latent voxel)."""
        return latent_mask(mask, self.vqgan.downsample_factor)

    def scheduler(self, eta: float = 1.0) -> BrownianBridgeScheduler:
        """The bridge this network was trained on, with a sampling ``eta`` (1: ancestral, 0: deterministic)."""
        c = self.config
        return BrownianBridgeScheduler(c["num_train_timesteps"], c["mt_schedule"], c["max_var"], c["objective"], eta)

    def tokens(self, features: torch.Tensor | None) -> torch.Tensor | None:
        """``(B, F)`` normalised features -> ``(B, F, D)`` tokens; None stays None (the removal path)."""
        if features is None:
            return None
        if features.ndim != 2 or features.shape[1] != len(self.config["feature_names"]):
            raise DimensionError(
                f"Expected texture features (batch, {len(self.config['feature_names'])}); got {tuple(features.shape)}."
            )
        return self.tokenizer(features)

    def forward(
        self,
        x_t: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        timesteps: torch.Tensor,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The bridge objective for ``x_t`` (synthesis with ``features``, removal without)."""
        c = self.latent_channels
        if x_t.ndim != 5 or x_t.shape[1] != c or y.shape != x_t.shape:
            raise DimensionError(
                f"x_t and y must both be latents (batch, {c}, z, y, x); got {tuple(x_t.shape)} and {tuple(y.shape)}."
            )
        if mask.shape != (x_t.shape[0], 1, *x_t.shape[2:]):
            raise DimensionError(
                f"The latent mask must be (batch, 1, {', '.join(map(str, x_t.shape[2:]))}); got {tuple(mask.shape)}."
            )
        m = 2 ** (len(self.config["channels"]) - 1)
        if any(s % m for s in x_t.shape[2:]):
            raise DimensionError(
                f"Latent sizes {tuple(x_t.shape[2:])} must be multiples of {m} for this U-Net's "
                f"{len(self.config['channels'])} levels; pad the crop."
            )
        context = self.tokens(features)
        if context is not None and context.shape[0] != x_t.shape[0]:
            raise DimensionError(f"{context.shape[0]} feature vectors for a batch of {x_t.shape[0]} latents.")
        return self.unet(torch.cat([x_t, y, mask.to(x_t.dtype)], dim=1), timesteps, context=context)

    def sample_job(
        self,
        y: torch.Tensor,
        mask: torch.Tensor,
        features: torch.Tensor | None,
        *,
        steps: int = 50,
        eta: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Generator[int, None, torch.Tensor]:
        """Run the bridge from x_T = ``y`` to x_0 in ``steps`` skip-steps, yielding the number of steps done
        after each (a cancellation point for jobs); returns x_0. ``features=None`` is the removal path."""
        from napari_medgen.core.device import autocast

        scheduler = self.scheduler(eta)
        scheduler.set_timesteps(steps, device=y.device)
        x = scheduler.initial_sample(y)
        for done, t in enumerate(scheduler.timesteps, start=1):
            with torch.no_grad():
                with autocast(y.device):  # the U-Net in bf16 on CUDA; the bridge update below stays in fp32
                    output = self(x, y, mask, t.expand(y.shape[0]), features)
                x = scheduler.step(output.float(), t, x, y, generator=generator).prev_sample
            yield done
        return x

    def sample(
        self, y: torch.Tensor, mask: torch.Tensor, features: torch.Tensor | None, **options: Any
    ) -> torch.Tensor:
        """`sample_job` run to the end."""
        job = self.sample_job(y, mask, features, **options)
        while True:
            try:
                next(job)
            except StopIteration as stop:
                return stop.value


__all__ = ["FILL_VALUE", "BridgeUNet", "latent_mask"]
