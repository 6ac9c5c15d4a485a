"""`Segmenter`: a MONAI U-Net that labels 2D slices or 3D volumes.

It is a product component in its own right (``medgen train segmenter``) and the auxiliary model that
later measures how faithful generated images are to the masks they were conditioned on (a
generated lesion that the segmenter finds where the mask says is a faithful one).

The model carries its input contract in its config: the intensity normalisation (``normalization``)
and, for 2D models trained on resized images, the in-plane ``input_size``, so `Segmenter.predict`
reproduces the training preprocessing from the checkpoint alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_medgen.core.intensity import (  # noqa: F401 - the specs' home is core; re-exported for training
    NORMALIZATIONS_HELP,
    check_normalization,
    fit_normalizer,
    normalize_intensity,
)
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import DimensionError, InvalidInputError
from napari_medgen.hub import HubModelMixin, register_model


@register_model("segmenter")
class Segmenter(HubModelMixin, nn.Module):
    """MONAI ``UNet`` with residual units; ``num_classes`` includes background (2 = lesion vs background)."""

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 1,
        norm: str = "instance",
        dropout: float = 0.0,
        normalization: str = "percentile",
        patch_size: Sequence[int] | None = None,
        input_size: Sequence[int] | None = None,
    ) -> None:
        from monai.networks.nets import UNet

        super().__init__()
        if spatial_dims not in (2, 3):
            raise InvalidInputError(f"spatial_dims must be 2 or 3; got {spatial_dims}.")
        if num_classes < 2:
            raise InvalidInputError(f"num_classes counts background too and must be >= 2; got {num_classes}.")
        if len(channels) < 2 or len(strides) != len(channels) - 1:
            raise InvalidInputError(
                f"channels needs >= 2 levels and strides one fewer entry; got channels {list(channels)}, "
                f"strides {list(strides)}."
            )
        check_normalization(normalization)
        divisor = math.prod(int(s) for s in strides)
        for name, size, dims in (("patch_size", patch_size, spatial_dims), ("input_size", input_size, 2)):
            if size is None:
                continue
            if len(size) != dims or any(int(s) % divisor for s in size):
                raise InvalidInputError(
                    f"{name} {list(size)} must have {dims} sizes divisible by {divisor} (the product of strides)."
                )
        if input_size is not None and spatial_dims != 2:
            raise InvalidInputError("input_size (resizing) is only for 2D segmenters.")
        self.config: dict[str, Any] = {
            "spatial_dims": int(spatial_dims),
            "in_channels": int(in_channels),
            "num_classes": int(num_classes),
            "channels": [int(c) for c in channels],
            "strides": [int(s) for s in strides],
            "num_res_units": int(num_res_units),
            "norm": str(norm),
            "dropout": float(dropout),
            "normalization": normalization,
            "patch_size": None if patch_size is None else [int(s) for s in patch_size],
            "input_size": None if input_size is None else [int(s) for s in input_size],
        }
        self.hub_extra = {}
        self.hub_path = None
        self.net = UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=num_classes,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
            norm=norm,
            dropout=dropout,
        )

    @property
    def size_divisor(self) -> int:
        """Input sizes must be multiples of this (the total down-sampling)."""
        return math.prod(self.config["strides"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, *spatial)`` for normalised input ``(B, in_channels, *spatial)``."""
        return self.net(x)

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        d = self.size_divisor
        spatial = x.shape[2:]
        pads: list[int] = []
        for size in reversed(spatial):
            pads += [0, (-size) % d]
        return F.pad(x, pads, mode="replicate" if any(pads) else "constant"), tuple(spatial)

    @torch.no_grad()
    def predict_logits(self, image: np.ndarray | Volume, batch_size: int = 8) -> torch.Tensor:
        """Class logits ``(num_classes, z, y, x)`` (float32, CPU) for a raw ``(z, y, x)`` image."""
        arr = np.asarray(image.array if isinstance(image, Volume) else image)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise DimensionError(f"predict needs a (z, y, x) image (or a 2D slice); got shape {arr.shape}.")
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        x = torch.from_numpy(normalize_intensity(arr, self.config["normalization"])).to(device)
        try:
            if self.config["spatial_dims"] == 2:
                return self._predict_slices(x, batch_size).cpu()
            return self._predict_volume(x, batch_size).cpu()
        finally:
            self.train(was_training)

    def _predict_slices(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        outputs = []
        size = self.config["input_size"]
        for start in range(0, x.shape[0], batch_size):
            batch = x[start:start + batch_size, None]
            original = tuple(batch.shape[2:])
            if size is not None:
                batch = F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False)
            padded, spatial = self._pad(batch)
            logits = self(padded)[..., : spatial[0], : spatial[1]]
            if size is not None:
                logits = F.interpolate(logits, size=original, mode="bilinear", align_corners=False)
            outputs.append(logits.float())
        return torch.cat(outputs).permute(1, 0, 2, 3)

    def _predict_volume(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        roi = self.config["patch_size"] or [64, 64, 64]
        padded, spatial = self._pad(x[None, None])
        logits = sliding_window_inference(padded, roi, batch_size, self, overlap=0.25, mode="gaussian")
        return logits[0, :, : spatial[0], : spatial[1], : spatial[2]].float()

    def predict(self, image: np.ndarray | Volume, batch_size: int = 8) -> np.ndarray:
        """Label array ``(z, y, x)`` (uint8/int32) for a raw image (normalised as in training)."""
        labels = self.predict_logits(image, batch_size).argmax(0).numpy()
        return labels.astype(np.uint8 if self.config["num_classes"] <= 256 else np.int32)

    def segment(self, volume: Volume, batch_size: int = 8) -> LabelMap:
        """A `LabelMap` on ``volume``'s grid."""
        return volume.as_labels(self.predict(volume, batch_size))
