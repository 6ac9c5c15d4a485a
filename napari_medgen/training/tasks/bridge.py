"""``medgen train bridge``: the latent Brownian-bridge texture generator (seed 003, section 3.2).

The frozen VQ-GAN named by ``model.vqgan`` (a ``medgen train vqgan`` checkpoint or a bundled name)
encodes the target patch and the condition patch (edited region filled); both latents are normalised
with the VQ-GAN's training statistics. The network learns the BBDM objective (``grad`` by default) with
an L1 loss (as BBDM) plus ``region_weight`` x the L1 inside the edited region at latent resolution,
where nearly all of the work is: outside it, target and condition latents coincide. Synthesis items
condition on their texture features (cross-attention), removal items on none (self-attention, seed 003
eq. 8); see `napari_medgen.training.bridge_dataset` for how both are drawn.

`BridgeTask.evaluate` samples held-out items (validation cases) with the exported weights and reports
PSNR inside the edited region for synthesis and removal, next to a mean-fill baseline, in [-1, 1] units.
The VQ-GAN is stored inside the exported checkpoint (see `BridgeUNet`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_medgen.errors import ConfigError, InvalidInputError, MedGenError
from napari_medgen.models.bridge_unet import BridgeUNet
from napari_medgen.models.vqgan import VQGAN, normalize_to_network
from napari_medgen.radiomics.conditioning import FeatureNormalizer
from napari_medgen.radiomics.texture_condition import TEXTURE_SETTINGS, texture_feature_names
from napari_medgen.schedulers.brownian_bridge import MT_SCHEDULES, OBJECTIVES
from napari_medgen.training.bridge_dataset import FILL_VALUE, BridgePatches
from napari_medgen.training.config import TrainConfig
from napari_medgen.training.datasets import CasePair, describe_pairs
from napari_medgen.training.task import LossDict, TrainingTask
from napari_medgen.training.tasks import register_task
from napari_medgen.training.tasks.vqgan import psnr


@dataclass
class BridgeDataConfig:
    """The ``data:`` section: image/label pairs, patches and the synthesis/removal mix."""

    root: str
    case_image: str | None = None
    case_label: str | None = None
    allow_unpaired: bool = False
    patch_size: list[int] = field(default_factory=lambda: [32, 32, 32])
    removal_fraction: float = 0.5
    pool_size: int = 512  # tumour patches drawn once, with their texture features
    min_region_voxels: int = 64
    random_flip: bool = True
    samples_per_epoch: int = 1024
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    group_by: str | None = None
    eval_items: int = 8  # held-out synthesis and removal items each, sampled at the end
    eval_steps: int = 20

    def __post_init__(self) -> None:
        if len(self.patch_size) != 3 or min(self.patch_size) < 8:
            raise ConfigError(f"data.patch_size needs 3 sizes >= 8 (z, y, x); got {self.patch_size}.")
        if not 0.0 <= self.removal_fraction <= 1.0:
            raise ConfigError(f"data.removal_fraction must be in [0, 1]; got {self.removal_fraction}.")
        if self.pool_size < 2 or self.samples_per_epoch < 1 or self.eval_items < 0 or self.eval_steps < 1:
            raise ConfigError("data.pool_size >= 2, samples_per_epoch >= 1, eval_items >= 0 and eval_steps >= 1 "
                              "are required.")


@dataclass
class BridgeModelConfig:
    """The ``model:`` section: the frozen VQ-GAN, the U-Net and the bridge schedule."""

    vqgan: str = ""
    channels: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    attention_levels: list[bool] = field(default_factory=lambda: [False, False, True, True])
    num_res_blocks: int = 1
    num_head_channels: int = 16
    norm_num_groups: int = 8
    transformer_num_layers: int = 1
    num_train_timesteps: int = 1000
    mt_schedule: str = "linear"
    max_var: float = 1.0
    objective: str = "grad"
    region_weight: float = 4.0  # extra L1 weight inside the edited region (latent resolution)

    def __post_init__(self) -> None:
        if not self.vqgan:
            raise ConfigError("model.vqgan must name the VQ-GAN checkpoint (bundled name or folder of "
                              "`medgen train vqgan` output, e.g. outputs/vqgan-brain/model).")
        if self.mt_schedule not in MT_SCHEDULES or self.objective not in OBJECTIVES:
            raise ConfigError(f"model.mt_schedule must be one of {list(MT_SCHEDULES)} and model.objective one of "
                              f"{list(OBJECTIVES)}; got {self.mt_schedule!r}, {self.objective!r}.")
        if self.region_weight < 0:
            raise ConfigError(f"model.region_weight must be >= 0; got {self.region_weight}.")


def _unwrap(module: nn.Module) -> Any:
    return getattr(module, "module", module)


@register_task("bridge")
class BridgeTask(TrainingTask):
    """Texture bridge: `BridgeUNet` (exported, with its frozen VQ-GAN inside)."""

    data_config_class = BridgeDataConfig
    model_config_class = BridgeModelConfig
    export_module = "bridge"
    find_unused_parameters = True  # a removal-only micro-batch does not use the tokenizer

    def __init__(self, config: TrainConfig, where: str = "the config") -> None:
        super().__init__(config, where)
        self._dataset: BridgePatches | None = None
        self._vqgan: VQGAN | None = None
        self._make_bridge()  # fail on a bad architecture or VQ-GAN before any data are read

    def _patches(self, pairs: list[CasePair], count: int, pool: int, seed: int,
                 normalizer: FeatureNormalizer | None = None) -> BridgePatches:
        d: BridgeDataConfig = self.data_config
        spec = self.vqgan().config["normalization"]
        try:
            return BridgePatches(
                pairs, patch_size=d.patch_size, normalize=partial(normalize_to_network, spec=spec),
                samples_per_epoch=count, removal_fraction=d.removal_fraction, pool_size=pool,
                min_region_voxels=d.min_region_voxels, random_flip=d.random_flip, seed=seed, normalizer=normalizer,
            )
        except InvalidInputError as error:
            raise ConfigError(f"data: {error}") from error

    def build_dataset(self) -> BridgePatches:
        d: BridgeDataConfig = self.data_config
        if self._dataset is None:
            self._dataset = self._patches(self._split_pairs("train"), d.samples_per_epoch, d.pool_size, d.split_seed)
        return self._dataset

    # ---- model --------------------------------------------------------------------------------------
    def vqgan(self) -> VQGAN:
        """The frozen VQ-GAN of ``model.vqgan``."""
        if self._vqgan is None:
            try:
                self._vqgan = VQGAN.from_pretrained(self.model_config.vqgan)
            except MedGenError as error:
                raise ConfigError(f"model.vqgan: {error}") from error
        return self._vqgan

    def _make_bridge(self) -> BridgeUNet:
        m: BridgeModelConfig = self.model_config
        vqgan = self.vqgan()
        try:
            bridge = BridgeUNet(
                vqgan=BridgeUNet.vqgan_spec(vqgan), feature_names=texture_feature_names(), channels=m.channels,
                attention_levels=m.attention_levels, num_res_blocks=m.num_res_blocks,
                num_head_channels=m.num_head_channels, norm_num_groups=m.norm_num_groups,
                transformer_num_layers=m.transformer_num_layers, num_train_timesteps=m.num_train_timesteps,
                mt_schedule=m.mt_schedule, max_var=m.max_var, objective=m.objective,
            )
        except InvalidInputError as error:
            raise ConfigError(f"Bridge settings do not fit together: {error}") from error
        patch = self.data_config.patch_size
        if any(s % bridge.size_multiple for s in patch):
            raise ConfigError(f"data.patch_size {patch} must be multiples of {bridge.size_multiple} (VQ-GAN factor x "
                              "U-Net halvings).")
        bridge.vqgan.load_state_dict(vqgan.state_dict())
        return bridge

    def build_models(self) -> dict[str, nn.Module]:
        return {"bridge": self._make_bridge()}

    def compute_loss(self, optimizer: str, batch: Any, models: Mapping[str, nn.Module], step: int) -> LossDict:
        m: BridgeModelConfig = self.model_config
        model = models["bridge"]
        bridge: BridgeUNet = _unwrap(model)
        x0 = bridge.encode(batch["image"])
        y = bridge.encode(batch["condition"])
        region = bridge.region_latent(batch["mask"])
        scheduler = bridge.scheduler()
        t = torch.randint(0, scheduler.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = scheduler.add_noise(x0, y, noise, t)
        target = scheduler.training_target(x0, y, noise, t)
        synthesis = batch["synthesis"].bool()
        prediction = torch.zeros_like(target)
        if synthesis.any():
            s = synthesis
            prediction[s] = model(x_t[s], y[s], region[s], t[s], batch["features"][s].float())
        if (~synthesis).any():
            r = ~synthesis
            prediction[r] = model(x_t[r], y[r], region[r], t[r], None)
        error = (prediction.float() - target.float()).abs()
        l1 = error.mean()
        inside = region.expand_as(error)
        region_l1 = (error * inside).sum() / inside.sum().clamp(min=1.0)
        loss = l1 + m.region_weight * region_l1
        return {"loss": loss, "l1": l1.detach(), "region_l1": region_l1.detach(),
                "synthesis_fraction": synthesis.float().mean()}

    # ---- evaluation and export ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """PSNR inside the edited region (sampled with ``eval_steps``) vs a mean-fill baseline, held-out cases."""
        d: BridgeDataConfig = self.data_config
        val = self._split_pairs("val")
        if not val or d.eval_items == 0:
            return {}
        bridge: BridgeUNet = model
        train = self.build_dataset()
        patches = self._patches(val, 1, max(2, d.eval_items), d.split_seed + 1, train.normalizer)
        metrics: dict[str, float] = {}
        generator = torch.Generator().manual_seed(d.split_seed)
        for name, removal in (("synthesis", 0.0), ("removal", 1.0)):
            patches.removal_fraction = removal
            items = [patches.get_item(i, np.random.default_rng([d.split_seed, 0xE7A1, i])) for i in range(d.eval_items)]
            image = torch.stack([it["image"] for it in items]).to(device)
            condition = torch.stack([it["condition"] for it in items]).to(device)
            mask = torch.stack([it["mask"] for it in items]).to(device)
            features = None if removal else torch.stack([it["features"] for it in items]).to(device)
            y = bridge.encode(condition)
            latent = bridge.sample(y, bridge.region_latent(mask), features, steps=d.eval_steps, generator=generator)
            output = bridge.decode(latent)
            inside = mask > 0
            error = ((output - image) ** 2)[inside].mean().item()
            fill = image[inside].mean()
            baseline = ((fill - image) ** 2)[inside].mean().item()
            metrics[f"val_{name}_psnr"] = psnr(error)
            metrics[f"val_{name}_meanfill_psnr"] = psnr(baseline)
        return metrics

    def export_extra(self) -> dict[str, Any]:
        d: BridgeDataConfig = self.data_config
        dataset = self.build_dataset()
        _, splits = self._data()
        features = dataset.pool_features
        names = dataset.normalizer.names
        return {
            "feature_normalizer": dataset.normalizer.to_dict(),
            "default_features": dict(zip(names, np.median(features, axis=0).tolist(), strict=True)),
            "feature_ranges": {n: [float(lo), float(hi)] for n, lo, hi in
                               zip(names, np.percentile(features, 2, axis=0), np.percentile(features, 98, axis=0),
                                   strict=True)},
            "texture_settings": dict(TEXTURE_SETTINGS),
            "fill_value": FILL_VALUE,
            "patch_size": list(d.patch_size),
            "spacing_mm": self._training_spacing(),
            "vqgan_source": str(self.model_config.vqgan),
            "pool_size": int(len(features)),
            "data_root": str(d.root),
            "split_seed": d.split_seed,
            "splits": splits,
        }

    def _training_spacing(self) -> list[float]:
        """The voxel spacing (x, y, z mm) of the training scans; they must all share it."""
        from napari_medgen.core.io import read_volume

        spacings = {tuple(round(v, 4) for v in read_volume(p.image).spacing) for p in self._split_pairs("train")}
        if len(spacings) != 1:
            raise ConfigError(f"The training scans have different spacings {sorted(spacings)}; resample them to "
                              "one grid first (the texture model learns at a fixed voxel size).")
        return [float(v) for v in spacings.pop()]

    def describe_data(self) -> str:
        pairs, splits = self._data()
        d: BridgeDataConfig = self.data_config
        layout = f" (images `{d.case_image}`, labels `{d.case_label}` per case folder)" if d.case_image else ""
        return (
            f"{describe_pairs(pairs, splits)} from `{d.root}`{layout}; 3D patches {d.patch_size}: "
            f"{1 - d.removal_fraction:.0%} tumour patches (pool of {d.pool_size}, texture features of the tumour "
            f"inside each patch), {d.removal_fraction:.0%} healthy patches with a pasted tumour region (removal). "
            f"Intensities normalised per case with the VQ-GAN's {self.vqgan().config['normalization']!r}."
        )
