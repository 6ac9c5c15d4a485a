"""``medgen train segmenter``: a 2D or 3D U-Net on image/label pairs with Dice + cross-entropy.

Data come from `napari_medgen.training.datasets` (folder conventions, case-wise splits, random
patches with foreground oversampling); the validation split is scored with the exported model's own
`Segmenter.predict` on whole images, so the reported Dice is what users will get.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_medgen.errors import ConfigError, InvalidInputError
from napari_medgen.models.segmenter import Segmenter, check_normalization, normalize_intensity
from napari_medgen.training.config import TrainConfig
from napari_medgen.training.datasets import (
    MulticlassRelabel,
    PatchDataset,
    binary_relabel,
    describe_pairs,
    load_case,
)
from napari_medgen.training.task import LossDict, TrainingTask
from napari_medgen.training.tasks import register_task


@dataclass
class SegmenterDataConfig:
    """The ``data:`` section of a segmenter config."""

    root: str
    spatial_dims: int = 2  # 2: slices (PNG, or slices of volumes); 3: volume patches
    patch_size: list[int] = field(default_factory=lambda: [64, 64])
    resize: list[int] | None = None  # 2D only: resize every slice to (y, x) first (also done at inference)
    label_mode: str = "binary"  # binary: any label > 0 is foreground | multiclass: keep values
    num_classes: int = 2  # including background; binary mode always uses 2
    normalization: str = "percentile"
    foreground_fraction: float = 0.5
    samples_per_epoch: int = 256
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    group_by: str | None = None  # regex naming the patient of a case id (keeps slices of a patient together)
    case_image: str | None = None  # case-folder layout: glob of the image inside each case folder
    case_label: str | None = None  # ... and of its label file
    allow_unpaired: bool = False
    cache_cases: int = 64
    max_val_cases: int = 32

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"data.spatial_dims must be 2 or 3; got {self.spatial_dims}.")
        if len(self.patch_size) != self.spatial_dims:
            raise ConfigError(
                f"data.patch_size needs {self.spatial_dims} sizes for spatial_dims {self.spatial_dims}; "
                f"got {self.patch_size}."
            )
        if self.resize is not None and (self.spatial_dims != 2 or len(self.resize) != 2):
            raise ConfigError("data.resize is [y, x] and only applies to spatial_dims 2.")
        if self.label_mode not in ("binary", "multiclass"):
            raise ConfigError(f"data.label_mode must be 'binary' or 'multiclass'; got {self.label_mode!r}.")
        if self.num_classes < 2:
            raise ConfigError(f"data.num_classes counts background and must be >= 2; got {self.num_classes}.")
        if self.max_val_cases < 0 or self.cache_cases < 1 or self.samples_per_epoch < 1:
            raise ConfigError("data.max_val_cases must be >= 0, cache_cases and samples_per_epoch >= 1.")
        try:
            check_normalization(self.normalization)
        except InvalidInputError as error:
            raise ConfigError(f"data.normalization: {error}") from error


@dataclass
class SegmenterModelConfig:
    """The ``model:`` section: U-Net size."""

    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[int] = field(default_factory=lambda: [2, 2, 2])
    num_res_units: int = 1
    norm: str = "instance"
    dropout: float = 0.0


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> list[float]:
    """Dice of each foreground class (1 when both are empty: nothing to find and nothing found)."""
    scores = []
    for value in range(1, num_classes):
        p, t = prediction == value, truth == value
        denom = int(p.sum()) + int(t.sum())
        scores.append(1.0 if denom == 0 else 2.0 * int(np.logical_and(p, t).sum()) / denom)
    return scores


@register_task("segmenter")
class SegmenterTask(TrainingTask):
    """U-Net segmenter trained on random patches with ``monai.losses.DiceCELoss``."""

    data_config_class = SegmenterDataConfig
    model_config_class = SegmenterModelConfig
    export_module = "segmenter"

    def __init__(self, config: TrainConfig, where: str = "the config") -> None:
        super().__init__(config, where)
        data: SegmenterDataConfig = self.data_config
        self.num_classes = 2 if data.label_mode == "binary" else data.num_classes
        self._loss: nn.Module | None = None

    def _relabel(self) -> Any:
        return binary_relabel if self.data_config.label_mode == "binary" else MulticlassRelabel(self.num_classes)

    def build_dataset(self) -> PatchDataset:
        d: SegmenterDataConfig = self.data_config
        return PatchDataset(
            self._split_pairs("train"),
            spatial_dims=d.spatial_dims,
            patch_size=d.patch_size,
            samples_per_epoch=d.samples_per_epoch,
            normalize=partial(normalize_intensity, spec=d.normalization),
            relabel=self._relabel(),
            resize_yx=d.resize,
            foreground_fraction=d.foreground_fraction,
            cache_cases=d.cache_cases,
        )

    # ---- model and loss -------------------------------------------------------------------------
    def build_models(self) -> dict[str, nn.Module]:
        d: SegmenterDataConfig = self.data_config
        m: SegmenterModelConfig = self.model_config
        try:
            model = Segmenter(
                spatial_dims=d.spatial_dims,
                num_classes=self.num_classes,
                channels=m.channels,
                strides=m.strides,
                num_res_units=m.num_res_units,
                norm=m.norm,
                dropout=m.dropout,
                normalization=d.normalization,
                patch_size=d.patch_size,
                input_size=d.resize,
            )
        except InvalidInputError as error:
            raise ConfigError(f"Segmenter settings do not fit together: {error}") from error
        return {"segmenter": model}

    def compute_loss(self, optimizer: str, batch: Any, models: Mapping[str, nn.Module], step: int) -> LossDict:
        if self._loss is None:
            from monai.losses import DiceCELoss

            self._loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
        logits = models["segmenter"](batch["image"])
        return {"loss": self._loss(logits.float(), batch["label"])}

    # ---- export ---------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        d: SegmenterDataConfig = self.data_config
        cases = self._split_pairs("val")[: d.max_val_cases]
        if not cases:
            return {}
        per_case = []
        for pair in cases:
            loaded = load_case(pair, relabel=self._relabel())
            prediction = model.predict(loaded.image)
            per_case.append(dice_per_class(prediction, loaded.labels, self.num_classes))
        scores = np.asarray(per_case, dtype=np.float64)
        metrics = {"val_dice": float(scores.mean()), "val_cases": float(len(cases))}
        if self.num_classes > 2:
            metrics.update({f"val_dice_class_{c + 1}": float(v) for c, v in enumerate(scores.mean(axis=0))})
        return metrics

    def export_extra(self) -> dict[str, Any]:
        _, splits = self._data()
        d: SegmenterDataConfig = self.data_config
        return {"label_mode": d.label_mode, "data_root": str(d.root), "split_seed": d.split_seed, "splits": splits}

    def describe_data(self) -> str:
        pairs, splits = self._data()
        d: SegmenterDataConfig = self.data_config
        return (f"{describe_pairs(pairs, splits)} from `{d.root}`; {d.spatial_dims}D patches {d.patch_size}"
                f"{f' after resizing to {d.resize}' if d.resize else ''}, {d.label_mode} labels, "
                f"normalization {d.normalization!r}. Case lists per split are in config.json (extra.splits).")
