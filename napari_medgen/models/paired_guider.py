"""`PairedGuider`: the diffusion guider of PIG (seed 004) that denoises the *mask* next to the image.

PIG factorises a joint reverse step as p(x_{t-1} | x_t, y_t) p(y_{t-1} | x_{t-1}, y_t): the guider
predicts the noise of the mask code x_t while looking at the equally noisy image y_t, and a mask-guided
image model (`MaskDiffusionUNet`) then denoises the image given the guider's current mask estimate.
The mask is diffused in the same +1 / -1 code the image model is conditioned on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from napari_medgen.hub import HubModelMixin, register_model
from napari_medgen.models.diffusion_unet2d import DiffusionUNet2D


@register_model("paired-guider")
class PairedGuider(HubModelMixin, DiffusionUNet2D):
    """eps_x(x_t, y_t, t): mask code (K channels) + image (C channels) in, mask-code noise out."""

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
    ) -> None:
        super().__init__(
            in_channels=len(class_values) + int(image_channels),
            out_channels=len(class_values),
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

    def forward(self, mask_t: torch.Tensor, image_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Predicted noise of the noisy mask code ``mask_t`` (B, K, H, W) given the noisy image (B, C, H, W)."""
        return self._unet(torch.cat([mask_t, image_t.to(mask_t.dtype)], dim=1), t)
