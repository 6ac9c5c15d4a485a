"""``medgen train mask-diffusion``: the mask-guided image model of seed 002, optionally mask-ablated.

Each step noises real slices at random timesteps and learns the noise given the encoded mask. With
``model.ablation_p`` > 0 every class is dropped from the mask code independently with that
probability (training only; at inference the user drops classes explicitly). With ``model.guider`` the
second stage of PIG (seed 004) is trained instead: the mask code comes from a frozen guider's estimate
of the clean mask at the same noise level, so the image model learns to work with the masks the paired
sampler will actually give it (``guider_fraction`` of the items; the rest keep the true mask).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_medgen.errors import ConfigError
from napari_medgen.models.mask_code import ablation_drops, decode_mask, encode_mask
from napari_medgen.models.mask_diffusion import MaskDiffusionUNet
from napari_medgen.training.slice_diffusion_task import SliceDiffusionTask, SliceModelConfig
from napari_medgen.training.task import LossDict
from napari_medgen.training.tasks import register_task


@dataclass
class MaskDiffusionModelConfig(SliceModelConfig):
    """``model:`` section: U-Net size plus mask ablation, lesion weighting and the optional PIG guider."""

    ablation_p: float = 0.0
    lesion_weight: float = 1.0  # loss weight of pixels of the focus classes (PIG's lesion-weighted MSE)
    guider: str | None = None  # frozen PairedGuider checkpoint: train as PIG's image model
    guider_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.ablation_p <= 1.0:
            raise ConfigError(f"model.ablation_p must be in [0, 1]; got {self.ablation_p}.")
        if self.lesion_weight <= 0:
            raise ConfigError(f"model.lesion_weight must be > 0; got {self.lesion_weight}.")
        if not 0.0 <= self.guider_fraction <= 1.0:
            raise ConfigError(f"model.guider_fraction must be in [0, 1]; got {self.guider_fraction}.")


def guider_mask_estimate(guider: nn.Module, scheduler: Any, code0: torch.Tensor, image_t: torch.Tensor,
                         t: torch.Tensor, class_values: list[int]) -> torch.Tensor:
    """The guider's binarised clean-mask estimate from (x_t, y_t) at timesteps ``t`` (no gradient)."""
    with torch.no_grad():
        noise = torch.randn_like(code0)
        code_t = scheduler.add_noise(code0, noise, t)
        eps = guider(code_t, image_t, t)
        abar = scheduler.alphas_cumprod.to(code0.device)[t].view(-1, 1, 1, 1)
        x0_hat = (code_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        return decode_mask(x0_hat, class_values)


@register_task("mask-diffusion")
class MaskDiffusionTask(SliceDiffusionTask):
    """DDPM noise prediction on slices, conditioned on the (possibly ablated) mask code."""

    model_config_class = MaskDiffusionModelConfig
    export_module = "model"

    def build_models(self) -> dict[str, nn.Module]:
        m: MaskDiffusionModelConfig = self.model_config
        try:
            model = MaskDiffusionUNet(**self.model_kwargs(), trained_with_ablation=m.ablation_p > 0)
        except Exception as error:  # invalid sizes etc. are config problems here
            raise ConfigError(f"mask-diffusion model settings do not fit together: {error}") from error
        models: dict[str, nn.Module] = {"model": model}
        if m.guider:
            from napari_medgen.models.diffusion_unet2d import same_contract
            from napari_medgen.models.paired_guider import PairedGuider

            guider = PairedGuider.from_pretrained(m.guider)
            same_contract(guider, model, "model.guider")
            guider.requires_grad_(False).eval()
            models["guider"] = guider
        self._scheduler = model.training_scheduler()
        return models

    def compute_loss(self, optimizer: str, batch: Any, models: Mapping[str, nn.Module], step: int) -> LossDict:
        m: MaskDiffusionModelConfig = self.model_config
        model = models["model"]
        x0, labels = batch["image"], batch["label"]
        values = self.data_config.class_values
        b = x0.shape[0]
        t = self.antithetic_timesteps(b, m.num_train_timesteps, x0.device)
        x_t, noise = self.noised(self._scheduler, x0, t)
        if "guider" in models and m.guider_fraction > 0:
            estimate = guider_mask_estimate(models["guider"], self._scheduler, encode_mask(labels, values), x_t, t,
                                            values)
            use = (torch.rand(b, device=x0.device) < m.guider_fraction).view(-1, 1, 1)
            labels = torch.where(use, estimate, labels)
        drops = ablation_drops(b, len(values), m.ablation_p).to(x0.device) if m.ablation_p > 0 else ()
        code = encode_mask(labels, values, drops)
        eps = model(x_t, t, code)
        err = (eps.float() - noise.float()) ** 2
        if m.lesion_weight != 1.0:
            focus = torch.isin(batch["label"], torch.as_tensor(self.focus_values(), device=x0.device))
            err = err * torch.where(focus, m.lesion_weight, 1.0)[:, None]
        return {"loss": err.mean(), "mse": F.mse_loss(eps.float(), noise.float()).detach()}

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Noise-prediction MSE on held-out slices at fixed timesteps and noise (comparable across runs)."""
        split = self.slices("val") or self.slices("test")
        if split is None:
            return {}
        n = min(len(split.images), self.data_config.max_val_slices)
        x0 = torch.from_numpy(split.images[:n, None]).to(device)
        labels = torch.from_numpy(split.labels[:n]).to(device)
        code = encode_mask(labels, self.data_config.class_values)
        scheduler = model.training_scheduler()
        generator = torch.Generator().manual_seed(1234)
        total, metrics = 0.0, {}
        with torch.no_grad():
            for frac in (0.1, 0.3, 0.5, 0.8):
                t = torch.full((n,), int(frac * (model.config["num_train_timesteps"] - 1)), device=device)
                noise = torch.randn(x0.shape, generator=generator).to(device)
                eps = model(scheduler.add_noise(x0, noise, t), t, code)
                mse = float(F.mse_loss(eps, noise))
                metrics[f"val_mse_t{int(frac * 100)}"] = mse
                total += mse / 4
        metrics["val_mse"] = total
        return metrics
