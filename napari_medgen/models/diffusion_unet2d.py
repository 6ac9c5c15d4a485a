"""Shared body of our 2D diffusion networks: a diffusers ``UNet2DModel`` plus its contract.

The mask-guided image model (`MaskDiffusionUNet`) and the paired-generation guider (`PairedGuider`) are
the same kind of network with different inputs and outputs. Everything a checkpoint must carry to be
used correctly without its training config lives in ``config``: image size, class values and names,
the intensity normalisation, and the training noise schedule (samplers are rebuilt from it, so DDPM,
DDIM and DPM-Solver++ all see the schedule the model learned).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from napari_medgen.errors import InvalidInputError
from napari_medgen.models.mask_code import check_class_values
from napari_medgen.models.segmenter import check_normalization

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


class DiffusionUNet2D(nn.Module):
    """A ``UNet2DModel`` with ``in_channels`` inputs predicting ``out_channels`` noise maps."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        image_size: Sequence[int],
        class_values: Sequence[int],
        class_names: Sequence[str] | None,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        attention_levels: Sequence[bool] | None,
        norm_num_groups: int,
        num_train_timesteps: int,
        beta_schedule: str,
        normalization: str,
        image_channels: int,
    ) -> None:
        from diffusers import UNet2DModel

        super().__init__()
        size = [int(s) for s in image_size]
        levels = len(block_out_channels)
        attention = [False] * (levels - 1) + [True] if attention_levels is None else [bool(a) for a in attention_levels]
        divisor = 2 ** (levels - 1)
        if len(size) != 2 or any(s < 8 or s % divisor for s in size):
            raise InvalidInputError(
                f"image_size must be two sizes >= 8 divisible by {divisor} (2^(levels-1)); got {list(image_size)}."
            )
        if len(attention) != levels:
            raise InvalidInputError(f"attention_levels needs one flag per level ({levels}); got {attention}.")
        if any(int(c) % int(norm_num_groups) for c in block_out_channels):
            raise InvalidInputError(
                f"every block_out_channels entry must be divisible by norm_num_groups={norm_num_groups}; "
                f"got {list(block_out_channels)}."
            )
        if beta_schedule not in BETA_SCHEDULES:
            raise InvalidInputError(f"beta_schedule must be one of {BETA_SCHEDULES}; got {beta_schedule!r}.")
        if num_train_timesteps < 10:
            raise InvalidInputError(f"num_train_timesteps must be >= 10; got {num_train_timesteps}.")
        values = check_class_values(class_values)
        names = [str(n) for n in class_names] if class_names else [f"class {v}" for v in values]
        if len(names) != len(values):
            raise InvalidInputError(f"class_names needs one name per class value {values}; got {names}.")
        check_normalization(normalization)
        self.config: dict[str, Any] = {
            "image_size": size,
            "image_channels": int(image_channels),
            "class_values": values,
            "class_names": names,
            "block_out_channels": [int(c) for c in block_out_channels],
            "layers_per_block": int(layers_per_block),
            "attention_levels": attention,
            "norm_num_groups": int(norm_num_groups),
            "num_train_timesteps": int(num_train_timesteps),
            "beta_schedule": beta_schedule,
            "normalization": normalization,
        }
        self.hub_extra: dict[str, Any] = {}
        self.hub_path = None
        self.unet = UNet2DModel(
            sample_size=tuple(size),
            in_channels=int(in_channels),
            out_channels=int(out_channels),
            layers_per_block=int(layers_per_block),
            block_out_channels=tuple(int(c) for c in block_out_channels),
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
            norm_num_groups=int(norm_num_groups),
            attention_head_dim=8,
        )

    # ---- contract ---------------------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.config["image_size"])  # type: ignore[return-value]

    @property
    def class_values(self) -> list[int]:
        return list(self.config["class_values"])

    @property
    def num_classes(self) -> int:
        """Foreground classes (channels of the mask code)."""
        return len(self.config["class_values"])

    def class_name(self, value: int) -> str:
        return self.config["class_names"][self.class_values.index(int(value))]

    def training_scheduler(self) -> Any:
        """The diffusers ``DDPMScheduler`` the model is trained with (epsilon prediction)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler(
            num_train_timesteps=self.config["num_train_timesteps"],
            beta_schedule=self.config["beta_schedule"],
            prediction_type="epsilon",
            clip_sample=False,
        )

    def _unet(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        if not torch.is_tensor(t):
            t = torch.tensor([int(t)], device=x.device)
        if t.ndim == 0:
            t = t[None]
        if t.shape[0] == 1 and x.shape[0] > 1:
            t = t.expand(x.shape[0])
        return self.unet(x, t).sample


def same_contract(a: DiffusionUNet2D, b: DiffusionUNet2D, what: str) -> None:
    """Two models used together (guider + image model) must agree on size, classes, noise and intensities."""
    for key in ("image_size", "image_channels", "class_values", "num_train_timesteps", "beta_schedule"):
        if a.config[key] != b.config[key]:
            raise InvalidInputError(
                f"{what}: the two models disagree on {key} ({a.config[key]} vs {b.config[key]}); use a guider "
                "and an image model trained on the same data settings."
            )
