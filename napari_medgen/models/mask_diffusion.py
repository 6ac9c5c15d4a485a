"""`MaskDiffusionUNet`: an image diffusion model that follows a multi-class mask at every step (seed 002).

The encoded mask (`napari_medgen.models.mask_code`) is concatenated to the noisy image as extra input
channels, so the network sees the anatomy at every denoising step. Models trained with mask ablation
(``trained_with_ablation``) also accept unconstrained classes at inference; a model trained on full
masks has never seen an all-zero class channel, so dropping a class there is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from napari_medgen.hub import HubModelMixin, register_model
from napari_medgen.models.diffusion_unet2d import DiffusionUNet2D


@register_model("mask-diffusion")
class MaskDiffusionUNet(HubModelMixin, DiffusionUNet2D):
    """eps(x_t, t | mask code): ``image_channels`` + one channel per foreground class in, noise out."""

    def __init__(
        self,
        image_size: Sequence[int] = (64, 64),
        image_channels: int = 1,
        class_values: Sequence[int] = (1,),
        class_names: Sequence[str] | None = None,
        block_out_channels: Sequence[int] = (32, 64, 64),
        layers_per_block: int = 1,
        attention_levels: Sequence[bool] | None = None,
        norm_num_groups: int = 8,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        normalization: str = "percentile",
        trained_with_ablation: bool = False,
    ) -> None:
        super().__init__(
            in_channels=int(image_channels) + len(class_values),
            out_channels=int(image_channels),
            image_size=image_size,
            class_values=class_values,
            class_names=class_names,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            attention_levels=attention_levels,
            norm_num_groups=norm_num_groups,
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            normalization=normalization,
            image_channels=image_channels,
        )
        self.config["trained_with_ablation"] = bool(trained_with_ablation)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int, mask_code: torch.Tensor) -> torch.Tensor:
        """Predicted noise of ``x_t`` (B, C, H, W) given the (B, K, H, W) mask code."""
        return self._unet(torch.cat([x_t, mask_code.to(x_t.dtype)], dim=1), t)
