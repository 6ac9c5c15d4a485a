"""``medgen train vqgan``: the 3D VQ-GAN that compresses image patches for the latent texture generator.

Data are random 3D patches of image/label pairs (`PatchDataset`: any layout `find_pairs` knows, e.g.
BRATS case folders with ``case_image: "Flair*.nii.gz"`` and ``case_label: "OTMultiClass.nii.gz"``),
centred on a tumour voxel with probability ``foreground_fraction`` and randomly flipped. Images are
normalised per case with the model's ``normalization`` spec to [-1, 1]; the label only defines the
region of interest (every label > 0).

Losses (generator = the `VQGAN`):

* ``L1 + roi_weight * L1 inside the ROI`` (`roi_weighted_l1`): tumour textures are what the texture
  generator must reproduce, and tumours fill a small part of a patch, so their voxels count more;
* the VQ commitment loss (the codebook itself is learned by EMA, not by the optimizer; every
  ``codebook_reset_every`` steps unused codes are re-seeded with encoder outputs, `reset_dead_codes`,
  against codebook collapse -- beyond the reference implementation);
* from step ``adversarial_start`` on, ``adversarial_weight`` x a patch adversarial loss from a MONAI
  ``PatchDiscriminator`` (``least_squares`` or ``hinge`` via ``PatchAdversarialLoss``). The
  discriminator has its own optimizer and starts at the same step, so the autoencoder first learns
  to reconstruct. No perceptual loss: its networks would have to be downloaded.

`VQGANTask.evaluate` reconstructs held-out patches of the validation cases (L1 / PSNR over whole
patches and inside the tumour, in [-1, 1] units, data range 2) and measures codebook usage and the
per-channel latent mean/std on training patches; the statistics are exported in ``config.json`` for
the bridge model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_medgen.errors import ConfigError, InvalidInputError
from napari_medgen.models.vqgan import VQGAN, check_vqgan_normalization, normalize_to_network
from napari_medgen.training.config import TrainConfig
from napari_medgen.training.datasets import (
    CasePair,
    PatchDataset,
    binary_relabel,
    describe_pairs,
)
from napari_medgen.training.task import LossDict, TrainingTask
from napari_medgen.training.tasks import register_task

ADVERSARIAL_CRITERIA = ("least_squares", "hinge")


@dataclass
class VQGANDataConfig:
    """The ``data:`` section: where the pairs are, patch sampling and evaluation sizes."""

    root: str
    case_image: str | None = None  # case-folder layout: glob of the image inside each case folder
    case_label: str | None = None  # ... and of its label file
    allow_unpaired: bool = False
    patch_size: list[int] = field(default_factory=lambda: [32, 32, 32])
    normalization: str = "percentile"
    foreground_fraction: float = 0.5  # patches centred on a tumour voxel
    random_flip: bool = True  # flip each axis with probability 0.5
    samples_per_epoch: int = 512
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    group_by: str | None = None
    cache_cases: int = 16
    eval_patches: int = 32  # held-out patches for the metrics (from the validation cases)
    latent_stats_patches: int = 64  # training patches for the exported latent mean/std

    def __post_init__(self) -> None:
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ConfigError(f"data.patch_size needs 3 positive sizes (z, y, x); got {self.patch_size}.")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ConfigError(f"data.foreground_fraction must be in [0, 1]; got {self.foreground_fraction}.")
        if self.samples_per_epoch < 1 or self.cache_cases < 1:
            raise ConfigError("data.samples_per_epoch and data.cache_cases must be >= 1.")
        if self.eval_patches < 0 or self.latent_stats_patches < 2:
            raise ConfigError("data.eval_patches must be >= 0 and data.latent_stats_patches >= 2.")
        try:
            check_vqgan_normalization(self.normalization)
        except InvalidInputError as error:
            raise ConfigError(f"data.normalization: {error}") from error


@dataclass
class VQGANModelConfig:
    """The ``model:`` section: VQ-VAE and discriminator sizes and loss weights (generator lr = top-level lr)."""

    channels: list[int] = field(default_factory=lambda: [32])
    num_res_layers: int = 1
    num_res_channels: list[int] | int = 32
    downsample_parameters: list[list[int]] | None = None  # default: [2, 4, 1, 1] (stride 2) per level
    upsample_parameters: list[list[int]] | None = None  # default: [2, 4, 1, 1, 0] per level
    num_embeddings: int = 256
    embedding_dim: int = 4
    commitment_cost: float = 0.25
    codebook_decay: float = 0.99  # EMA decay of the codebook
    codebook_reset_every: int = 100  # every N steps, re-seed unused codes with encoder outputs (0: never)
    codebook_dead_fraction: float = 0.01  # a code is unused when its EMA count < this x the mean count
    roi_weight: float = 10.0  # extra weight of the L1 inside the label (TS-Radiomics: 10)
    quantization_weight: float = 1.0
    adversarial_weight: float = 0.01
    adversarial_start: int = 1000  # step from which the discriminator trains and the adversarial loss counts
    adversarial_criterion: str = "least_squares"  # least_squares | hinge
    disc_channels: int = 16
    disc_layers: int = 2
    disc_lr: float = 2.0e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])

    def __post_init__(self) -> None:
        if self.adversarial_criterion not in ADVERSARIAL_CRITERIA:
            raise ConfigError(
                f"model.adversarial_criterion must be one of {list(ADVERSARIAL_CRITERIA)}; "
                f"got {self.adversarial_criterion!r}."
            )
        if self.roi_weight < 0 or self.quantization_weight < 0 or self.adversarial_weight < 0:
            raise ConfigError("model.roi_weight, quantization_weight and adversarial_weight must be >= 0.")
        if self.codebook_reset_every < 0 or not 0 < self.codebook_dead_fraction < 1:
            raise ConfigError("model.codebook_reset_every must be >= 0 and codebook_dead_fraction in (0, 1).")
        if self.adversarial_start < 0 or self.disc_channels < 1 or self.disc_layers < 1 or self.disc_lr <= 0:
            raise ConfigError("model.adversarial_start >= 0, disc_channels >= 1, disc_layers >= 1 and disc_lr > 0 "
                              "are required.")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"model.betas must be two numbers in [0, 1); got {self.betas}.")


def roi_weighted_l1(
    reconstruction: torch.Tensor, target: torch.Tensor, roi: torch.Tensor, roi_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, l1, roi_l1)`` with ``total = l1 + roi_weight * roi_l1``.

    ``l1`` is the mean absolute error over all voxels; ``roi_l1`` the mean over the voxels where
    ``roi > 0`` in the whole batch (0 when the batch has none), so a tumour's error counts the same
    whatever its size, and ``roi_weight`` times more than the background's on average.
    """
    if reconstruction.shape != target.shape or roi.shape[0] != target.shape[0] or roi.shape[2:] != target.shape[2:]:
        raise InvalidInputError(
            f"reconstruction {tuple(reconstruction.shape)}, target {tuple(target.shape)} and roi "
            f"{tuple(roi.shape)} must share batch and spatial sizes."
        )
    error = (reconstruction - target).abs()
    l1 = error.mean()
    mask = (roi > 0).to(error.dtype).expand_as(error)
    count = mask.sum()
    roi_l1 = (error * mask).sum() / count.clamp(min=1.0)
    return l1 + roi_weight * roi_l1, l1, roi_l1


def _unwrap(module: nn.Module) -> Any:
    """The model inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)


@torch.no_grad()
def reset_dead_codes(model: VQGAN, images: torch.Tensor, dead_fraction: float) -> int:
    """Re-seed codebook entries that the EMA says are unused with random encoder outputs of ``images``.

    An EMA codebook whose entries start far from the encoder's outputs keeps only the few codes that
    were hit early (codebook collapse); moving unused ones onto real latents brings them back into use
    (as in Jukebox / SoundStream). Across processes the result of rank 0 is broadcast, so every replica
    keeps the same codebook. Returns the number of codes reset.
    """
    quantizer = model.net.quantizer.quantizer
    sizes = quantizer.ema_cluster_size
    dead = sizes < dead_fraction * sizes.mean().clamp(min=1e-12)
    if not bool(sizes.sum() > 0):
        dead = torch.ones_like(sizes, dtype=torch.bool)
    count = int(dead.sum())
    if count:
        encodings = model.encode_continuous(images).float()
        flat = encodings.transpose(0, 1).reshape(encodings.shape[1], -1).t()
        picks = torch.randint(flat.shape[0], (count,), device=flat.device)
        fresh = flat[picks] + 1e-3 * torch.randn_like(flat[picks])
        quantizer.embedding.weight.data[dead] = fresh.to(quantizer.embedding.weight.dtype)
        quantizer.ema_w.data[dead] = fresh.to(quantizer.ema_w.dtype)
        quantizer.ema_cluster_size.data[dead] = 1.0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for tensor in (quantizer.embedding.weight.data, quantizer.ema_w.data, quantizer.ema_cluster_size.data):
            torch.distributed.broadcast(tensor, src=0)
    return count


def psnr(mse: float, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB for a mean squared error (images in [-1, 1]: range 2)."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(data_range**2 / mse)


class FlippedPatches:
    """`PatchDataset` items with each spatial axis flipped with probability 0.5 (same flip for the label)."""

    def __init__(self, patches: PatchDataset, flip: bool) -> None:
        self.patches = patches
        self.flip = flip

    def __len__(self) -> int:
        return len(self.patches)

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        item = self.patches.get_item(index, rng)
        if self.flip:
            axes = [1 + a for a in range(3) if rng.random() < 0.5]
            if axes:
                item = {k: torch.flip(v, axes) if isinstance(v, torch.Tensor) else v for k, v in item.items()}
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get_item(index, np.random.default_rng(index))


@register_task("vqgan")
class VQGANTask(TrainingTask):
    """VQ-GAN: `VQGAN` (exported) + MONAI ``PatchDiscriminator`` (training only)."""

    data_config_class = VQGANDataConfig
    model_config_class = VQGANModelConfig
    export_module = "vqgan"

    def __init__(self, config: TrainConfig, where: str = "the config") -> None:
        super().__init__(config, where)
        self._fakes: list[torch.Tensor] = []  # reconstructions of this step's micro-batches, for the discriminator
        self._fakes_step = -1
        self._reset_step = -1
        self._adversarial: nn.Module | None = None
        self._eval_stats: dict[str, Any] = {}
        self._make_vqgan()  # fail on a bad architecture before any data are read or folders made

    def _patches(self, pairs: list[CasePair], count: int) -> PatchDataset:
        d: VQGANDataConfig = self.data_config
        return PatchDataset(
            pairs, spatial_dims=3, patch_size=d.patch_size, samples_per_epoch=count,
            normalize=partial(normalize_to_network, spec=d.normalization), relabel=binary_relabel,
            foreground_fraction=d.foreground_fraction, cache_cases=d.cache_cases,
        )

    def build_dataset(self) -> FlippedPatches:
        d: VQGANDataConfig = self.data_config
        return FlippedPatches(self._patches(self._split_pairs("train"), d.samples_per_epoch), d.random_flip)

    # ---- models and losses ------------------------------------------------------------------------
    def _make_vqgan(self) -> VQGAN:
        d: VQGANDataConfig = self.data_config
        m: VQGANModelConfig = self.model_config
        try:
            return VQGAN(
                in_channels=1, channels=m.channels, num_res_layers=m.num_res_layers,
                num_res_channels=m.num_res_channels, downsample_parameters=m.downsample_parameters,
                upsample_parameters=m.upsample_parameters, num_embeddings=m.num_embeddings,
                embedding_dim=m.embedding_dim, commitment_cost=m.commitment_cost, decay=m.codebook_decay,
                normalization=d.normalization, patch_size=d.patch_size,
            )
        except InvalidInputError as error:
            raise ConfigError(f"VQ-GAN settings do not fit together: {error}") from error

    def build_models(self) -> dict[str, nn.Module]:
        from monai.networks.nets import PatchDiscriminator

        m: VQGANModelConfig = self.model_config
        vqgan = self._make_vqgan()
        discriminator = PatchDiscriminator(
            spatial_dims=3, channels=m.disc_channels, in_channels=1, out_channels=1, num_layers_d=m.disc_layers,
        )
        return {"vqgan": vqgan, "discriminator": discriminator}

    def build_optimizers(self, models: Mapping[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        m: VQGANModelConfig = self.model_config
        betas = (float(m.betas[0]), float(m.betas[1]))
        generator_params = [p for p in models["vqgan"].parameters() if p.requires_grad]
        return {
            "generator": torch.optim.Adam(generator_params, lr=self.config.lr, betas=betas,
                                          weight_decay=self.config.weight_decay),
            "discriminator": torch.optim.Adam(models["discriminator"].parameters(), lr=m.disc_lr, betas=betas),
        }

    def adversarial_loss(self) -> nn.Module:
        if self._adversarial is None:
            from monai.losses import PatchAdversarialLoss

            self._adversarial = PatchAdversarialLoss(criterion=self.model_config.adversarial_criterion)
        return self._adversarial

    def compute_loss(self, optimizer: str, batch: Any, models: Mapping[str, nn.Module], step: int) -> LossDict | None:
        m: VQGANModelConfig = self.model_config
        image, label = batch["image"], batch["label"]
        adversarial_on = m.adversarial_weight > 0 and step >= m.adversarial_start
        if optimizer == "generator":
            reconstruction, quantization = models["vqgan"](image)
            reconstruction = reconstruction.float()
            recon_loss, l1, roi_l1 = roi_weighted_l1(reconstruction, image, label, m.roi_weight)
            loss = recon_loss + m.quantization_weight * quantization
            vqgan = _unwrap(models["vqgan"])
            logs: LossDict = {"l1": l1.detach(), "roi_l1": roi_l1.detach(), "quantization": quantization.detach(),
                              "perplexity": torch.as_tensor(vqgan.net.quantizer.perplexity, dtype=torch.float32)}
            if m.codebook_reset_every and step > 0 and step % m.codebook_reset_every == 0 \
                    and self._reset_step != step:
                self._reset_step = step
                logs["codes_reset"] = torch.tensor(float(reset_dead_codes(vqgan, image, m.codebook_dead_fraction)))
            if self._fakes_step != step:
                self._fakes, self._fakes_step = [], step
            if adversarial_on:
                logits = models["discriminator"](reconstruction)[-1]
                generator_adv = self.adversarial_loss()(logits, target_is_real=True, for_discriminator=False)
                loss = loss + m.adversarial_weight * generator_adv
                logs["adversarial"] = generator_adv.detach()
                self._fakes.append(reconstruction.detach())
            logs["loss"] = loss
            return logs
        if not adversarial_on or self._fakes_step != step or not self._fakes:
            return None
        criterion = self.adversarial_loss()
        discriminator = models["discriminator"]
        fake_logits = discriminator(self._fakes.pop(0))[-1]
        real_logits = discriminator(image.detach())[-1]
        loss_fake = criterion(fake_logits, target_is_real=False, for_discriminator=True)
        loss_real = criterion(real_logits, target_is_real=True, for_discriminator=True)
        loss = 0.5 * (loss_fake + loss_real)
        return {"loss": loss, "real": loss_real.detach(), "fake": loss_fake.detach()}

    def ema_modules(self) -> tuple[str, ...]:
        return ("vqgan",)

    # ---- evaluation and export --------------------------------------------------------------------
    @torch.no_grad()
    def latent_statistics(self, model: VQGAN, device: torch.device) -> dict[str, Any]:
        """Per-channel mean/std of quantised latents and codebook usage on a fixed set of training patches."""
        d: VQGANDataConfig = self.data_config
        patches = self._patches(self._split_pairs("train"), d.latent_stats_patches)
        total = torch.zeros(model.embedding_dim, dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        count = 0
        used = torch.zeros(int(model.config["num_embeddings"]), dtype=torch.bool)
        for start in range(0, d.latent_stats_patches, 8):
            batch = torch.stack([patches.get_item(i, np.random.default_rng([d.split_seed, 0x1A7, i]))["image"]
                                 for i in range(start, min(start + 8, d.latent_stats_patches))]).to(device)
            latents, indices = model.quantize(model.encode_continuous(batch))
            flat = latents.double().transpose(0, 1).reshape(model.embedding_dim, -1).cpu()
            total += flat.sum(dim=1)
            total_sq += (flat**2).sum(dim=1)
            count += flat.shape[1]
            used[indices.reshape(-1).cpu()] = True
        mean = total / count
        std = (total_sq / count - mean**2).clamp(min=0).sqrt().clamp(min=1e-6)
        return {"latent_mean": mean.tolist(), "latent_std": std.tolist(),
                "latent_stats_patches": d.latent_stats_patches, "codebook_usage": float(used.float().mean())}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """L1 / PSNR of held-out reconstructions (whole patch and inside the tumour); also computes the
        latent statistics that `export_extra` saves (this is called on the exported weights)."""
        d: VQGANDataConfig = self.data_config
        stats = self.latent_statistics(model, device)
        self._eval_stats = stats
        metrics: dict[str, float] = {"codebook_usage": stats["codebook_usage"]}
        val = self._split_pairs("val")
        if not val or d.eval_patches == 0:
            return metrics
        patches = self._patches(val, d.eval_patches)
        sums = {"abs": 0.0, "sq": 0.0, "n": 0, "roi_abs": 0.0, "roi_sq": 0.0, "roi_n": 0}
        for start in range(0, d.eval_patches, 8):
            items = [patches.get_item(i, np.random.default_rng([d.split_seed, 0xE7A1, i]))
                     for i in range(start, min(start + 8, d.eval_patches))]
            image = torch.stack([it["image"] for it in items]).to(device)
            roi = torch.stack([it["label"] for it in items]).to(device) > 0
            reconstruction = model(image)[0].float().clamp(-1.0, 1.0)
            error = reconstruction - image
            sums["abs"] += float(error.abs().sum())
            sums["sq"] += float((error**2).sum())
            sums["n"] += error.numel()
            sums["roi_abs"] += float(error.abs()[roi].sum())
            sums["roi_sq"] += float((error**2)[roi].sum())
            sums["roi_n"] += int(roi.sum())
        metrics.update({
            "val_l1": sums["abs"] / sums["n"],
            "val_psnr": psnr(sums["sq"] / sums["n"]),
            "val_patches": float(d.eval_patches),
        })
        if sums["roi_n"]:
            metrics["val_tumour_l1"] = sums["roi_abs"] / sums["roi_n"]
            metrics["val_tumour_psnr"] = psnr(sums["roi_sq"] / sums["roi_n"])
        return metrics

    def export_extra(self) -> dict[str, Any]:
        d: VQGANDataConfig = self.data_config
        m: VQGANModelConfig = self.model_config
        if not self._eval_stats:
            raise InvalidInputError("The VQ-GAN latent statistics were not computed (evaluate() must run on the "
                                    "exported weights before export_extra()).")
        _, splits = self._data()
        return {
            **self._eval_stats,
            "normalization": d.normalization,
            "network_range": [-1.0, 1.0],
            "patch_size": list(d.patch_size),
            "roi": "label > 0",
            "roi_weight": m.roi_weight,
            "data_root": str(d.root),
            "split_seed": d.split_seed,
            "splits": splits,
        }

    def describe_data(self) -> str:
        pairs, splits = self._data()
        d: VQGANDataConfig = self.data_config
        layout = f" (images `{d.case_image}`, labels `{d.case_label}` per case folder)" if d.case_image else ""
        return (
            f"{describe_pairs(pairs, splits)} from `{d.root}`{layout}; random 3D patches {d.patch_size} "
            f"({d.foreground_fraction:.0%} centred on a labelled voxel{', random flips' if d.random_flip else ''}), "
            f"intensities normalised per case with {d.normalization!r} to [-1, 1]. Case lists per split are in "
            "config.json (extra.splits)."
        )
