"""``medgen train paired-guider``: stage one of PIG (seed 004), the diffusion guider of the mask.

Mask code and image are noised at the same timestep with independent noise; the guider learns the
mask noise from both. Stage two is the image model: any `MaskDiffusionUNet` trained on the same data
(``medgen train mask-diffusion``, optionally with ``model.guider`` pointing here to train on the
guider's own mask estimates as PIG does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_medgen.errors import ConfigError
from napari_medgen.models.mask_code import encode_mask
from napari_medgen.models.paired_guider import PairedGuider
from napari_medgen.training.slice_diffusion_task import SliceDiffusionTask
from napari_medgen.training.task import LossDict
from napari_medgen.training.tasks import register_task


@register_task("paired-guider")
class PairedGuiderTask(SliceDiffusionTask):
    """eps_x(x_t, y_t, t) for the mask code x and the image y."""

    export_module = "guider"

    def build_models(self) -> dict[str, nn.Module]:
        try:
            guider = PairedGuider(**self.model_kwargs())
        except Exception as error:
            raise ConfigError(f"paired-guider model settings do not fit together: {error}") from error
        self._scheduler = guider.training_scheduler()
        return {"guider": guider}

    def compute_loss(self, optimizer: str, batch: Any, models: Mapping[str, nn.Module], step: int) -> LossDict:
        guider = models["guider"]
        y0 = batch["image"]
        x0 = encode_mask(batch["label"], self.data_config.class_values)
        t = self.antithetic_timesteps(y0.shape[0], self.model_config.num_train_timesteps, y0.device)
        x_t, noise_x = self.noised(self._scheduler, x0, t)
        y_t, _ = self.noised(self._scheduler, y0, t)
        eps = guider(x_t, y_t, t)
        return {"loss": F.mse_loss(eps.float(), noise_x.float())}

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Dice of the guider's one-step clean-mask estimate at t = 30% of the schedule on held-out slices."""
        from napari_medgen.models.mask_code import decode_mask

        split = self.slices("val") or self.slices("test")
        if split is None:
            return {}
        n = min(len(split.images), self.data_config.max_val_slices)
        y0 = torch.from_numpy(split.images[:n, None]).to(device)
        labels = torch.from_numpy(split.labels[:n]).to(device)
        values = self.data_config.class_values
        x0 = encode_mask(labels, values)
        scheduler = model.training_scheduler()
        g = torch.Generator().manual_seed(4321)
        t = torch.full((n,), int(0.3 * (model.config["num_train_timesteps"] - 1)), device=device)
        with torch.no_grad():
            x_t = scheduler.add_noise(x0, torch.randn(x0.shape, generator=g).to(device), t)
            y_t = scheduler.add_noise(y0, torch.randn(y0.shape, generator=g).to(device), t)
            eps = model(x_t, y_t, t)
            abar = scheduler.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1)
            estimate = decode_mask((x_t - (1 - abar).sqrt() * eps) / abar.sqrt(), values)
        inter = float(((estimate > 0) & (labels > 0)).sum())
        denom = float((estimate > 0).sum() + (labels > 0).sum())
        return {"val_mask_dice_t30": 1.0 if denom == 0 else 2 * inter / denom}
