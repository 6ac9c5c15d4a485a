"""``medgen train token-diffusion``: region-aware training of the token-conditioned model (seed 001, ch. 4.3.2).

Every step noises real images and learns the noise given the prompt ``[<sot>, <lesion>, <skin|tissue>,
attribute]`` while the cross-attention of ``<lesion>`` and of the background token at the 1/4 latent scale
is pulled towards the lesion mask and its complement: L = L_rec + alpha L_attn with alpha = 0.1 (eqs. 4.3,
4.5, 4.6). The attribute token is replaced by ``<null>`` with probability ``attribute_dropout`` so the
model also works without one. Validation reports the noise MSE and how well the lesion token's attention,
thresholded with Otsu, matches the held-out masks (IoU).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_medgen.errors import ConfigError, InvalidInputError
from napari_medgen.models.attention_capture import AttentionStore, capture_attention
from napari_medgen.models.attention_masks import attention_alignment_loss, extract_mask, mask_iou
from napari_medgen.models.token_diffusion import BACKGROUND_POSITION, LESION_POSITION, TokenDiffusionModel
from napari_medgen.training.datasets import split_cases
from napari_medgen.training.lesion_token_dataset import LesionTokenDataset, find_cases, load_case
from napari_medgen.training.task import LossDict, TrainingTask
from napari_medgen.training.tasks import register_task


@dataclass
class TokenDataConfig:
    """``data:`` section: a PH2 or BUSI folder, the image size and the split."""

    root: str
    layout: str = "ph2"
    image_size: list[int] = field(default_factory=lambda: [64, 64])
    image_channels: int = 3
    attributes: list[str] | None = None  # attribute names in the data (default: every class found)
    test_fraction: float = 0.2
    split_seed: int = 0
    samples_per_epoch: int = 512
    flip: bool = True
    max_val_images: int = 32

    def __post_init__(self) -> None:
        if len(self.image_size) != 2:
            raise ConfigError(f"data.image_size is [height, width]; got {self.image_size}.")
        if self.layout not in ("ph2", "busi"):
            raise ConfigError(f"data.layout must be 'ph2' or 'busi'; got {self.layout!r}.")


@dataclass
class TokenModelConfig:
    """``model:`` section: network size, tokens and the region-aware loss weight."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64, 64])
    attention_levels: list[bool] = field(default_factory=lambda: [False, True, True, True])
    layers_per_block: int = 1
    cross_attention_dim: int = 32
    attention_heads: int = 4
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    background_token: str = "<skin>"
    domain: str = "dermoscopy"
    alpha: float = 0.1  # weight of L_attn (thesis: 0.1)
    attribute_dropout: float = 0.1
    cross_scale: int | None = None  # latent side of the aligned cross-attention (default: 1/4 of the image)

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ConfigError(f"model.alpha must be >= 0; got {self.alpha}.")
        if not 0.0 <= self.attribute_dropout <= 1.0:
            raise ConfigError(f"model.attribute_dropout must be in [0, 1]; got {self.attribute_dropout}.")


@register_task("token-diffusion")
class TokenDiffusionTask(TrainingTask):
    """DDPM noise prediction conditioned on learned tokens, plus the attention-alignment loss."""

    data_config_class = TokenDataConfig
    model_config_class = TokenModelConfig

    def _cases(self) -> tuple[list[Any], dict[str, list[str]]]:
        if getattr(self, "_case_cache", None) is None:
            d: TokenDataConfig = self.data_config
            try:
                cases = find_cases(d.root, d.layout)
                splits = split_cases([c.case_id for c in cases], val_fraction=0.0, test_fraction=d.test_fraction,
                                     seed=d.split_seed)
            except InvalidInputError as error:
                raise ConfigError(f"data: {error}") from error
            self._case_cache = (cases, splits)
        return self._case_cache

    def split(self, name: str) -> list[Any]:
        cases, splits = self._cases()
        wanted = set(splits[name])
        return [c for c in cases if c.case_id in wanted]

    def attributes(self) -> list[str]:
        d: TokenDataConfig = self.data_config
        if d.attributes is not None:
            return [str(a) for a in d.attributes]
        return sorted({c.attribute for c in self._cases()[0]})

    def build_models(self) -> dict[str, nn.Module]:
        d: TokenDataConfig = self.data_config
        m: TokenModelConfig = self.model_config
        try:
            model = TokenDiffusionModel(
                image_size=d.image_size, image_channels=d.image_channels, background_token=m.background_token,
                attribute_tokens=self.attributes(), block_out_channels=m.block_out_channels,
                attention_levels=m.attention_levels, layers_per_block=m.layers_per_block,
                cross_attention_dim=m.cross_attention_dim, attention_heads=m.attention_heads,
                norm_num_groups=m.norm_num_groups, num_train_timesteps=m.num_train_timesteps,
                beta_schedule=m.beta_schedule, domain=m.domain)
        except InvalidInputError as error:
            raise ConfigError(f"token-diffusion model settings do not fit together: {error}") from error
        self._scheduler = model.training_scheduler()
        self._cross_scale = m.cross_scale or model.default_scales()[0]
        if self._cross_scale not in model.attention_scales()["cross"]:
            raise ConfigError(f"model.cross_scale {self._cross_scale} is not one of the model's attention scales "
                              f"{model.attention_scales()['cross']}.")
        return {"model": model}

    def build_dataset(self) -> LesionTokenDataset:
        d: TokenDataConfig = self.data_config
        return LesionTokenDataset(self.split("train"), self.attributes(), tuple(d.image_size), d.image_channels,
                                  samples_per_epoch=d.samples_per_epoch, flip=d.flip)

    def _ids(self, model: Any, attribute: torch.Tensor, drop: float) -> torch.Tensor:
        names = self.attributes()
        keep = torch.rand(attribute.shape[0]) >= drop
        chosen = [names[int(a)] if int(a) >= 0 and bool(k) else None for a, k in zip(attribute, keep, strict=True)]
        return _unwrap(model).token_ids(chosen, device=attribute.device)

    def compute_loss(self, optimizer: str, batch: Any, models: Mapping[str, nn.Module], step: int) -> LossDict:
        m: TokenModelConfig = self.model_config
        model = models["model"]
        x0, mask = batch["image"], batch["mask"]
        ids = self._ids(model, batch["attribute"], m.attribute_dropout)
        t = torch.randint(0, m.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self._scheduler.add_noise(x0, noise, t)
        store = AttentionStore(tuple(x0.shape[-2:]), cross_scales=(self._cross_scale,), self_scales=(),
                               keep_grad=True)
        with capture_attention(model, store):
            eps = model(x_t, t, ids)
        rec = F.mse_loss(eps.float(), noise.float())
        attn = attention_alignment_loss(store.cross_map(self._cross_scale), mask, LESION_POSITION,
                                        BACKGROUND_POSITION)
        return {"loss": rec + m.alpha * attn, "l_rec": rec.detach(), "l_attn": attn.detach()}

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Noise MSE at fixed t (10 % and 50 % of the schedule) and noise, and the IoU of the Otsu-thresholded
        ``<lesion>`` attention with the held-out masks."""
        d: TokenDataConfig = self.data_config
        test = self.split("test")[: d.max_val_images]
        if not test:
            return {}
        loaded = [load_case(c, tuple(d.image_size), d.image_channels) for c in test]
        x0 = torch.from_numpy(np.stack([im for im, _ in loaded])).to(device)
        masks = np.stack([mk for _, mk in loaded])
        names = self.attributes()
        ids = model.token_ids([c.attribute if c.attribute in names else None for c in test], device=device)
        scheduler = model.training_scheduler()
        generator = torch.Generator().manual_seed(1234)
        metrics: dict[str, float] = {}
        scale = self._cross_scale
        for percent in (10, 50):
            t_value = int(percent / 100 * (model.config["num_train_timesteps"] - 1))
            t = torch.full((len(test),), t_value, device=device)
            noise = torch.randn(x0.shape, generator=generator).to(device)
            store = AttentionStore(tuple(d.image_size), cross_scales=(scale,), self_scales=())
            with torch.no_grad(), capture_attention(model, store):
                eps = model(scheduler.add_noise(x0, noise, t), t, ids)
            metrics[f"val_mse_t{percent}"] = float(F.mse_loss(eps, noise))
            lesion = store.cross_map(scale)[..., LESION_POSITION].reshape(len(test), scale, -1)
            ious = [mask_iou(extract_mask(lesion[i], None, d.image_size, refine="none").mask, masks[i])
                    for i in range(len(test))]
            metrics[f"val_attn_iou_t{percent}"] = float(np.mean(ious))
        return metrics

    def export_extra(self) -> dict[str, Any]:
        d: TokenDataConfig = self.data_config
        _, splits = self._cases()
        return {"data_root": str(d.root), "layout": d.layout, "split_seed": d.split_seed, "splits": splits,
                "cross_scale": self._cross_scale, "alpha": self.model_config.alpha}

    def describe_data(self) -> str:
        d: TokenDataConfig = self.data_config
        cases, splits = self._cases()
        counts = {a: sum(c.attribute == a for c in self.split("train")) for a in self.attributes()}
        return (f"{len(cases)} {d.layout} image/mask pairs from `{d.root}`: train {len(splits['train'])}, test "
                f"{len(splits['test'])} (split seed {d.split_seed}); resized to {d.image_size}, "
                f"{d.image_channels} channel(s); training attribute counts {counts}. Case lists are in config.json "
                "(extra.splits).")


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)
