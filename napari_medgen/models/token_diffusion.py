"""A small token-conditioned 2D diffusion model: our own stand-in for Stable Diffusion in DiDGen (seed 001, ch. 4).

The thesis conditions SD on a prompt "An image of <lesion> on <skin> ..." and reads the attention of the
placeholder tokens. Without SD weights we train the same *kind* of network from scratch: a diffusers
``UNet2DConditionModel`` in pixel space whose cross-attention context is a short sequence of learned
token embeddings. The vocabulary holds

* ``<sot>`` -- an always-present attention sink (the role SD's start token plays; without it the softmax
  over two region tokens would force A_lesion = 1 - A_background, spec section 1.3),
* ``<null>`` -- "no attribute" (fills the attribute slot, and is used for attribute dropout),
* the region tokens, ``<lesion>`` then the background token (``<skin>`` or ``<tissue>``),
* optional attribute tokens (e.g. the PH2 diagnosis ``<melanoma>``).

A prompt is always ``[<sot>, <lesion>, <background>, attribute]``; so the lesion token sits at context
position 1 and the background token at 2 (`LESION_POSITION`, `BACKGROUND_POSITION`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from napari_medgen.errors import InvalidInputError
from napari_medgen.hub import HubModelMixin, register_model

SINK = "<sot>"
NULL = "<null>"
LESION_POSITION = 1
BACKGROUND_POSITION = 2
CONTEXT_LENGTH = 4
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _token(name: str) -> str:
    text = str(name).strip()
    if not text:
        raise InvalidInputError("Token names must not be empty.")
    return text if text.startswith("<") and text.endswith(">") else f"<{text}>"


@register_model("token-diffusion")
class TokenDiffusionModel(HubModelMixin, nn.Module):
    """eps(x_t, t, tokens): a pixel-space ``UNet2DConditionModel`` attending to learned token embeddings."""

    def __init__(
        self,
        image_size: Sequence[int] = (64, 64),
        image_channels: int = 3,
        lesion_token: str = "<lesion>",
        background_token: str = "<skin>",
        attribute_tokens: Sequence[str] = (),
        block_out_channels: Sequence[int] = (32, 64, 64, 64),
        attention_levels: Sequence[bool] = (False, True, True, True),
        layers_per_block: int = 1,
        cross_attention_dim: int = 32,
        attention_heads: int = 4,
        norm_num_groups: int = 8,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        domain: str = "dermoscopy",
    ) -> None:
        from diffusers import UNet2DConditionModel

        super().__init__()
        size = [int(s) for s in image_size]
        levels = len(block_out_channels)
        attention = [bool(a) for a in attention_levels]
        divisor = 2 ** (levels - 1)
        if len(size) != 2 or any(s < 8 or s % divisor for s in size):
            raise InvalidInputError(
                f"image_size must be two sizes >= 8 divisible by {divisor}; got {list(image_size)}."
            )
        if len(attention) != levels or not any(attention):
            raise InvalidInputError(
                f"attention_levels needs one flag per level ({levels}) and at least one True; got {attention}."
            )
        if any(int(c) % int(norm_num_groups) for c in block_out_channels):
            raise InvalidInputError(f"block_out_channels {list(block_out_channels)} must divide by norm_num_groups.")
        if beta_schedule not in BETA_SCHEDULES:
            raise InvalidInputError(f"beta_schedule must be one of {BETA_SCHEDULES}; got {beta_schedule!r}.")
        if int(image_channels) not in (1, 3):
            raise InvalidInputError(f"image_channels must be 1 (grey) or 3 (RGB); got {image_channels}.")
        attributes = [_token(a) for a in attribute_tokens]
        vocabulary = [SINK, NULL, _token(lesion_token), _token(background_token), *attributes]
        if len(set(vocabulary)) != len(vocabulary):
            raise InvalidInputError(f"Token names must be unique; got {vocabulary}.")
        self.config: dict[str, Any] = {
            "image_size": size, "image_channels": int(image_channels), "lesion_token": vocabulary[2],
            "background_token": vocabulary[3], "attribute_tokens": attributes,
            "block_out_channels": [int(c) for c in block_out_channels], "attention_levels": attention,
            "layers_per_block": int(layers_per_block), "cross_attention_dim": int(cross_attention_dim),
            "attention_heads": int(attention_heads), "norm_num_groups": int(norm_num_groups),
            "num_train_timesteps": int(num_train_timesteps), "beta_schedule": beta_schedule, "domain": str(domain),
        }
        self.hub_extra: dict[str, Any] = {}
        self.hub_path = None
        self.vocabulary = vocabulary
        self.tokens = nn.Embedding(len(vocabulary), int(cross_attention_dim))
        nn.init.normal_(self.tokens.weight, std=1.0)
        self.unet = UNet2DConditionModel(
            sample_size=tuple(size),
            in_channels=int(image_channels),
            out_channels=int(image_channels),
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
            block_out_channels=tuple(int(c) for c in block_out_channels),
            layers_per_block=int(layers_per_block),
            cross_attention_dim=int(cross_attention_dim),
            attention_head_dim=int(attention_heads),  # diffusers reads this legacy name as the number of heads
            norm_num_groups=int(norm_num_groups),
        )

    # ---- contract ---------------------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.config["image_size"])  # type: ignore[return-value]

    @property
    def attribute_tokens(self) -> list[str]:
        return list(self.config["attribute_tokens"])

    def attention_scales(self) -> dict[str, list[int]]:
        """Latent side lengths that have cross- and self-attention (the mid block sits at the coarsest level)."""
        h = self.image_size[0]
        levels = self.config["attention_levels"]
        sides = sorted({h // 2 ** i for i, a in enumerate(levels) if a} | {h // 2 ** (len(levels) - 1)}, reverse=True)
        return {"cross": sides, "self": sides}

    def default_scales(self) -> tuple[int, int]:
        """(cross scale, self scale): 1/4 and 1/2 of the latent side when the model has them (spec 1.2)."""
        sides = self.attention_scales()["cross"]
        h = self.image_size[0]
        cross = h // 4 if h // 4 in sides else sides[min(1, len(sides) - 1)]
        self_scale = h // 2 if h // 2 in sides else sides[0]
        return cross, self_scale

    def token_ids(self, attributes: Sequence[str | None], device: Any = None) -> torch.Tensor:
        """(B, 4) context ids ``[<sot>, lesion, background, attribute or <null>]`` for one attribute per item."""
        ids = []
        for attribute in attributes:
            name = NULL if attribute in (None, "", NULL) else _token(str(attribute))
            if name not in self.vocabulary:
                raise InvalidInputError(
                    f"Unknown attribute {attribute!r}; this model knows {self.attribute_tokens or 'no attributes'}."
                )
            ids.append([0, 2, 3, self.vocabulary.index(name)])
        return torch.tensor(ids, dtype=torch.int64, device=device)

    def context(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, L, cross_attention_dim) for context ids."""
        return self.tokens(ids)

    def training_scheduler(self) -> Any:
        """The ``DDPMScheduler`` the model is trained with (epsilon prediction)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler(num_train_timesteps=self.config["num_train_timesteps"],
                             beta_schedule=self.config["beta_schedule"], prediction_type="epsilon", clip_sample=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, ids: torch.Tensor) -> torch.Tensor:
        """Predicted noise of ``x`` (B, C, H, W) at timesteps ``t`` given context ids (B, L)."""
        if not torch.is_tensor(t):
            t = torch.tensor([int(t)], device=x.device)
        if t.ndim == 0:
            t = t[None]
        if t.shape[0] == 1 and x.shape[0] > 1:
            t = t.expand(x.shape[0])
        return self.unet(x, t, encoder_hidden_states=self.context(ids)).sample
