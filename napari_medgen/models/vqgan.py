"""`VQGAN`: the 3D vector-quantised autoencoder that compresses image patches for the texture generator.

The latent Brownian-bridge texture model (issue 5) works on the quantised latents of this network,
as TS-Radiomics does with its MONAI-Generative VQ-GAN: a MONAI ``VQVAE`` (encoder, EMA codebook,
decoder) trained with L1 + tumour-weighted L1 + an adversarial patch loss
(`napari_medgen.training.tasks.vqgan`). The discriminator is a training-time helper and is not part of
the checkpoint.

The model carries its input contract in ``config``: the intensity normalisation spec (see
`network_normalizer`; the network sees ``[-1, 1]``), the training ``patch_size`` and the
down-sampling factor implied by the (de)convolution parameters. Trained checkpoints also store the
per-channel mean/std of training latents in ``hub_extra`` (``latent_mean``, ``latent_std``), which the
bridge model uses through `VQGAN.normalize_latent` / `VQGAN.denormalize_latent`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_medgen.core.intensity import IntensityNormalizer, percentile_normalizer
from napari_medgen.errors import CheckpointError, DimensionError, InvalidInputError
from napari_medgen.hub import HubModelMixin, register_model
from napari_medgen.models.segmenter import NORMALIZATIONS_HELP, check_normalization

#: normalisation for scans whose background is stored as their minimum (skull-stripped, z-scored MR such
#: as BRATS): percentiles of the voxels above the minimum, with a high upper one so that bright lesions
#: (FLAIR oedema) are not clipped. Plain 'percentile' over all voxels clips 25-60 % of BRATS tumour voxels.
FOREGROUND_SPEC = "percentile_foreground"
FOREGROUND_PERCENTILES = (0.5, 99.9)

#: the range the network reads and writes
NETWORK_RANGE = (-1.0, 1.0)
#: one stride-2 level: conv kernel 4, dilation 1, padding 1 halves sizes; its transpose doubles them
HALVING_DOWNSAMPLE = (2, 4, 1, 1)
DOUBLING_UPSAMPLE = (2, 4, 1, 1, 0)


def check_vqgan_normalization(spec: str) -> str:
    """A normalisation spec with a bounded range (``zscore`` has none, so the network could not use [-1, 1]).

    Besides the segmenter's specs (see `NORMALIZATIONS_HELP`) the VQ-GAN knows ``percentile_foreground``
    (`FOREGROUND_SPEC`).
    """
    if spec == FOREGROUND_SPEC:
        return spec
    check_normalization(spec)
    if spec == "zscore":
        raise InvalidInputError(
            "normalization 'zscore' is unbounded and cannot be mapped to the VQ-GAN's [-1, 1] range; use "
            "'percentile', 'percentile_nonzero', 'percentile_foreground', a 'ct:...' window or 'none' (input "
            "already in [-1, 1])."
        )
    return spec


def network_normalizer(array: np.ndarray, spec: str) -> IntensityNormalizer:
    """The linear map from this image's intensities to the network's [-1, 1] (and back, with ``inverse``).

    Percentile specs are computed per image (MR has no absolute scale), CT windows are fixed, ``none``
    means the input is already in [-1, 1]. A constant image raises `InvalidInputError`.
    """
    check_vqgan_normalization(spec)
    lo, hi = NETWORK_RANGE
    if spec == "none":
        return IntensityNormalizer(lo, hi, lo, hi, True, "manual", "none")
    if spec.startswith("ct:"):
        body = spec[3:].strip()
        if "," in body:
            level, width = (float(v) for v in body.split(","))
            return IntensityNormalizer.from_window(level, width, NETWORK_RANGE)
        return IntensityNormalizer.from_ct_preset(body, NETWORK_RANGE)
    arr = np.asarray(array)
    if spec == FOREGROUND_SPEC:
        above = arr > arr.min() if arr.size else np.zeros(arr.shape, dtype=bool)
        if not above.any():
            raise InvalidInputError("The image is constant; 'percentile_foreground' cannot normalise it.")
        low, high = FOREGROUND_PERCENTILES
        return percentile_normalizer(arr, above, lower=low, upper=high, out_range=NETWORK_RANGE)
    mask = "nonzero" if spec == "percentile_nonzero" else None
    if mask == "nonzero" and not np.any(arr != 0):
        raise InvalidInputError("The image has no non-zero voxel; 'percentile_nonzero' cannot normalise it.")
    return percentile_normalizer(arr, mask, out_range=NETWORK_RANGE)


def normalize_to_network(array: np.ndarray, spec: str) -> np.ndarray:
    """``array`` in the network's [-1, 1] (float32); a constant image becomes all -1 (nothing to scale)."""
    arr = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("The image contains NaN/Inf voxels; replace them before normalising.")
    try:
        normalizer = network_normalizer(arr, spec)
    except InvalidInputError:
        check_vqgan_normalization(spec)
        return np.full(arr.shape, NETWORK_RANGE[0], dtype=np.float32)
    return normalizer.forward(arr)


def _conv_size(n: int, stride: int, kernel: int, dilation: int, padding: int) -> int:
    return (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _deconv_size(n: int, stride: int, kernel: int, dilation: int, padding: int, output_padding: int) -> int:
    return (n - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


@register_model("vqgan")
class VQGAN(HubModelMixin, nn.Module):
    """MONAI ``VQVAE(spatial_dims=3)``; images in [-1, 1], latents ``(embedding_dim, *spatial / f)``."""

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32,),
        num_res_layers: int = 1,
        num_res_channels: Sequence[int] | int = 32,
        downsample_parameters: Sequence[Sequence[int]] | None = None,
        upsample_parameters: Sequence[Sequence[int]] | None = None,
        num_embeddings: int = 256,
        embedding_dim: int = 4,
        commitment_cost: float = 0.25,
        decay: float = 0.99,
        normalization: str = "percentile",
        patch_size: Sequence[int] | None = None,
    ) -> None:
        from monai.networks.nets import VQVAE

        super().__init__()
        levels = len(channels)
        if levels < 1 or any(int(c) < 1 for c in channels):
            raise InvalidInputError(f"channels needs at least one positive width per level; got {list(channels)}.")
        if in_channels < 1 or num_res_layers < 0 or num_embeddings < 2 or embedding_dim < 1:
            raise InvalidInputError(
                f"Need in_channels >= 1, num_res_layers >= 0, num_embeddings >= 2 and embedding_dim >= 1; got "
                f"{in_channels}, {num_res_layers}, {num_embeddings}, {embedding_dim}."
            )
        if not 0.0 <= decay < 1.0 or commitment_cost < 0:
            raise InvalidInputError(
                f"decay must be in [0, 1) and commitment_cost >= 0; got {decay}, {commitment_cost}."
            )
        res_channels = [int(num_res_channels)] * levels if isinstance(num_res_channels, int | np.integer) \
            else [int(c) for c in num_res_channels]
        if len(res_channels) != levels:
            raise InvalidInputError(
                f"num_res_channels must be one integer or one per level of channels ({levels}); got {res_channels}."
            )
        down = [list(HALVING_DOWNSAMPLE)] * levels if downsample_parameters is None \
            else [[int(v) for v in p] for p in downsample_parameters]
        up = [list(DOUBLING_UPSAMPLE)] * levels if upsample_parameters is None \
            else [[int(v) for v in p] for p in upsample_parameters]
        if len(down) != levels or len(up) != levels or any(len(p) != 4 for p in down) or any(len(p) != 5 for p in up):
            raise InvalidInputError(
                f"downsample_parameters needs {levels} entries [stride, kernel, dilation, padding] and "
                f"upsample_parameters {levels} entries [stride, kernel, dilation, padding, output_padding] (one "
                f"per level of channels); got {down} and {up}. For f=2 per level use {list(HALVING_DOWNSAMPLE)} "
                f"and {list(DOUBLING_UPSAMPLE)}."
            )
        factor = math.prod(p[0] for p in down)
        if math.prod(p[0] for p in up) != factor:
            raise InvalidInputError(f"The upsample strides {[p[0] for p in up]} must undo the downsample strides "
                                    f"{[p[0] for p in down]}.")
        for m in (3, 4, 7):  # each level must divide sizes exactly, and the decoder must undo it
            n = m * factor
            for p in down:
                n = _conv_size(n, *p)
            k = n
            for p in up:
                k = _deconv_size(k, *p)
            if n != m or k != m * factor:
                raise InvalidInputError(
                    f"downsample_parameters {down} / upsample_parameters {up} do not divide/multiply sizes "
                    f"exactly by {factor} (a size {m * factor} became {n} and back {k}); per stride-2 level use "
                    f"{list(HALVING_DOWNSAMPLE)} and {list(DOUBLING_UPSAMPLE)}."
                )
        check_vqgan_normalization(normalization)
        if patch_size is not None and (len(patch_size) != 3 or any(int(s) < factor or int(s) % factor
                                                                   for s in patch_size)):
            raise InvalidInputError(
                f"patch_size {list(patch_size)} must be 3 sizes, each a multiple of the downsample factor {factor}."
            )
        self.config: dict[str, Any] = {
            "in_channels": int(in_channels),
            "channels": [int(c) for c in channels],
            "num_res_layers": int(num_res_layers),
            "num_res_channels": res_channels,
            "downsample_parameters": down,
            "upsample_parameters": up,
            "num_embeddings": int(num_embeddings),
            "embedding_dim": int(embedding_dim),
            "commitment_cost": float(commitment_cost),
            "decay": float(decay),
            "normalization": normalization,
            "patch_size": None if patch_size is None else [int(s) for s in patch_size],
        }
        self.hub_extra: dict[str, Any] = {}
        self.hub_path = None
        self.net = VQVAE(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=in_channels,
            channels=tuple(self.config["channels"]),
            num_res_layers=num_res_layers,
            num_res_channels=tuple(res_channels),
            downsample_parameters=tuple(tuple(p) for p in down),
            upsample_parameters=tuple(tuple(p) for p in up),
            num_embeddings=num_embeddings,
            embedding_dim=embedding_dim,
            commitment_cost=commitment_cost,
            decay=decay,
            ddp_sync=True,
        )

    # ---- geometry ---------------------------------------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        """Spatial sizes of the latent are those of the image divided by this."""
        return math.prod(p[0] for p in self.config["downsample_parameters"])

    @property
    def embedding_dim(self) -> int:
        return int(self.config["embedding_dim"])

    def latent_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """``(embedding_dim, z/f, y/f, x/f)`` for an image of spatial size ``spatial`` (multiples of f)."""
        f = self.downsample_factor
        if len(spatial) != 3 or any(int(s) < f or int(s) % f for s in spatial):
            raise DimensionError(
                f"The VQ-GAN needs 3 spatial sizes that are multiples of its downsample factor {f}; got "
                f"{list(spatial)}. Crop or pad the image to a multiple of {f}."
            )
        return (self.embedding_dim, *(int(s) // f for s in spatial))

    def _check_image(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.config["in_channels"]:
            raise DimensionError(
                f"Expected images (batch, {self.config['in_channels']}, z, y, x); got shape {tuple(x.shape)}."
            )
        self.latent_shape(tuple(x.shape[2:]))

    # ---- network ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(reconstruction, quantisation loss)`` for images in [-1, 1]; updates the EMA codebook in training."""
        self._check_image(x)
        return self.net(x)

    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output before quantisation ``(B, embedding_dim, *spatial / f)``."""
        self._check_image(x)
        return self.net.encode(x)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codebook vectors, code indices (B, *spatial))`` nearest to the latents ``z``; no codebook update."""
        if z.ndim != 5 or z.shape[1] != self.embedding_dim:
            raise DimensionError(f"Expected latents (batch, {self.embedding_dim}, z, y, x); got {tuple(z.shape)}.")
        quantizer = self.net.quantizer.quantizer
        _, _, indices = quantizer.quantize(z)
        return self.net.quantizer.embed(indices).to(z.dtype), indices

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Quantised latents: exact codebook vectors ``(B, embedding_dim, *spatial / f)``."""
        return self.quantize(self.encode_continuous(x))[0]

    def decode(self, z: torch.Tensor, *, quantize: bool = True) -> torch.Tensor:
        """Images in (about) [-1, 1] from latents; ``quantize`` first snaps them to the codebook (as the
        reference does for the bridge's outputs), ``quantize=False`` decodes them as they are."""
        if z.ndim != 5 or z.shape[1] != self.embedding_dim:
            raise DimensionError(f"Expected latents (batch, {self.embedding_dim}, z, y, x); got {tuple(z.shape)}.")
        if quantize:
            z = self.quantize(z)[0]
        return self.net.decode(z)

    @property
    def codebook(self) -> torch.Tensor:
        """The code vectors ``(num_embeddings, embedding_dim)`` (learned by EMA, not by the optimizer)."""
        return self.net.quantizer.quantizer.embedding.weight

    # ---- intensities and latent statistics -----------------------------------------------------------
    def normalizer_for(self, image: np.ndarray) -> IntensityNormalizer:
        """How this model maps ``image`` (raw units) to [-1, 1] and back (``normalization`` of the config)."""
        return network_normalizer(image, self.config["normalization"])

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.hub_extra.get("latent_mean"), self.hub_extra.get("latent_std")
        if mean is None or std is None:
            raise CheckpointError(
                "This VQ-GAN has no latent statistics (hub_extra latent_mean / latent_std); use a checkpoint "
                "exported by `medgen train vqgan`."
            )
        if len(mean) != self.embedding_dim or len(std) != self.embedding_dim:
            raise CheckpointError(
                f"The latent statistics have {len(mean)}/{len(std)} channels, the model {self.embedding_dim}; "
                "the checkpoint is inconsistent. Re-export it."
            )
        shape = (1, -1, 1, 1, 1)
        m = torch.as_tensor(mean, dtype=like.dtype, device=like.device).view(shape)
        s = torch.as_tensor(std, dtype=like.dtype, device=like.device).view(shape)
        return m, s

    def normalize_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Per-channel ``(z - mean) / std`` with the training-data statistics (what a bridge model sees)."""
        mean, std = self._latent_stats(z)
        return (z - mean) / std

    def denormalize_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize_latent`."""
        mean, std = self._latent_stats(z)
        return z * std + mean


__all__ = [
    "FOREGROUND_SPEC",
    "NETWORK_RANGE",
    "NORMALIZATIONS_HELP",
    "VQGAN",
    "check_vqgan_normalization",
    "network_normalizer",
    "normalize_to_network",
]
