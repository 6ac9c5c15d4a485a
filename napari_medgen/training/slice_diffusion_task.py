"""What the two slice-wise diffusion tasks share: data settings, the slice dataset, the model size and
the noise-prediction loss (`MaskDiffusionTask` and `PairedGuiderTask` differ only in what is noised
and what conditions the network)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from napari_medgen.errors import ConfigError, InvalidInputError
from napari_medgen.models.mask_code import check_class_values
from napari_medgen.models.segmenter import check_normalization, normalize_intensity
from napari_medgen.training.config import TrainConfig
from napari_medgen.training.datasets import describe_pairs
from napari_medgen.training.slice_dataset import SliceDataset, SliceSet, load_slices
from napari_medgen.training.task import TrainingTask


@dataclass
class SliceDataConfig:
    """The ``data:`` section: where the image/label pairs are and how slices are made."""

    root: str
    class_values: list[int] = field(default_factory=lambda: [1])
    class_names: list[str] | None = None
    label_mode: str = "multiclass"  # multiclass: keep values | binary: any label > 0 becomes class_values[0]
    image_size: list[int] = field(default_factory=lambda: [64, 64])
    axis: int = 0  # slice axis of volumes (0 = z: axial slices of a z, y, x array)
    normalization: str = "percentile"
    tissue_label: str | None = None  # glob beside each image of an organ mask (e.g. "brainmask.nii.gz") ...
    tissue_value: int = 0  # ... drawn as this class where the lesion labels are background
    focus_values: list[int] | None = None  # classes whose slices are oversampled (default: all but tissue)
    focus_fraction: float = 0.5
    include_empty: bool = False  # also train on slices without any label
    flip: bool = True
    samples_per_epoch: int = 512
    val_fraction: float = 0.0
    test_fraction: float = 0.2
    split_seed: int = 0
    group_by: str | None = None
    case_image: str | None = None
    case_label: str | None = None
    allow_unpaired: bool = False
    max_val_slices: int = 64

    def __post_init__(self) -> None:
        try:
            self.class_values = check_class_values(self.class_values)
            check_normalization(self.normalization)
        except InvalidInputError as error:
            raise ConfigError(f"data: {error}") from error
        if self.label_mode not in ("binary", "multiclass"):
            raise ConfigError(f"data.label_mode must be 'binary' or 'multiclass'; got {self.label_mode!r}.")
        if self.class_names is not None and len(self.class_names) != len(self.class_values):
            raise ConfigError("data.class_names needs one name per entry of data.class_values.")
        if self.tissue_label and self.tissue_value not in self.class_values:
            raise ConfigError(f"data.tissue_value {self.tissue_value} must be one of data.class_values.")
        if len(self.image_size) != 2:
            raise ConfigError(f"data.image_size is [height, width]; got {self.image_size}.")


@dataclass
class SliceModelConfig:
    """The ``model:`` section: U-Net size and noise schedule."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    attention_levels: list[bool] | None = None
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"


class _BinaryToClass:
    """Any non-zero label -> one class value (picklable for DataLoader workers)."""

    def __init__(self, value: int) -> None:
        self.value = int(value)

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        return np.where(labels > 0, self.value, 0).astype(np.int64)


class _KnownClasses:
    """Keeps label values, refusing values outside ``data.class_values``: the mask code has no channel for
    them, so they would silently be taught as background (picklable for DataLoader workers)."""

    def __init__(self, values: list[int]) -> None:
        self.values = [int(v) for v in values]

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        unknown = sorted({int(v) for v in np.unique(labels)} - {0, *self.values})
        if unknown:
            raise InvalidInputError(
                f"label values {unknown} are not in data.class_values {self.values}; add them to "
                "data.class_values (and data.class_names) or use label_mode: binary."
            )
        return labels.astype(np.int64)


class SliceDiffusionTask(TrainingTask):
    """Common data handling of the 2D diffusion tasks; subclasses build the model and the loss."""

    data_config_class = SliceDataConfig
    model_config_class = SliceModelConfig

    def __init__(self, config: TrainConfig, where: str = "the config") -> None:
        super().__init__(config, where)
        self._slices: dict[str, SliceSet] = {}

    def relabel(self) -> Any:
        d: SliceDataConfig = self.data_config
        if d.label_mode == "binary":
            return _BinaryToClass(d.class_values[0])
        return _KnownClasses(d.class_values)

    def focus_values(self) -> list[int]:
        d: SliceDataConfig = self.data_config
        if d.focus_values is not None:
            return [int(v) for v in d.focus_values]
        return [v for v in d.class_values if not (d.tissue_label and v == d.tissue_value)]

    def slices(self, split: str) -> SliceSet | None:
        """Slices of one split (``train`` / ``val`` / ``test``), or None when the split is empty."""
        if split not in self._slices:
            chosen = self._split_pairs(split)
            if not chosen:
                return None
            d: SliceDataConfig = self.data_config
            self._slices[split] = load_slices(
                chosen, image_size=d.image_size, normalize=partial(normalize_intensity, spec=d.normalization),
                relabel=self.relabel(), axis=d.axis, tissue_pattern=d.tissue_label, tissue_value=d.tissue_value,
                focus_values=self.focus_values(), include_empty=d.include_empty,
            )
        return self._slices[split]

    def build_dataset(self) -> SliceDataset:
        d: SliceDataConfig = self.data_config
        train = self.slices("train")
        if train is None:
            raise ConfigError("The training split has no cases; add data or lower data.val_fraction/test_fraction.")
        return SliceDataset(train, samples_per_epoch=d.samples_per_epoch, focus_fraction=d.focus_fraction,
                            flip=d.flip)

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor arguments both model classes share."""
        d: SliceDataConfig = self.data_config
        m: SliceModelConfig = self.model_config
        return {
            "image_size": d.image_size, "image_channels": 1, "class_values": d.class_values,
            "class_names": d.class_names, "block_out_channels": m.block_out_channels,
            "layers_per_block": m.layers_per_block, "attention_levels": m.attention_levels,
            "norm_num_groups": m.norm_num_groups, "num_train_timesteps": m.num_train_timesteps,
            "beta_schedule": m.beta_schedule, "normalization": d.normalization,
        }

    # ---- diffusion helpers ----------------------------------------------------------------------
    @staticmethod
    def noised(scheduler: Any, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, the noise used) for clean ``x0`` at timesteps ``t``."""
        noise = torch.randn_like(x0)
        return scheduler.add_noise(x0, noise, t), noise

    @staticmethod
    def antithetic_timesteps(batch: int, total: int, device: torch.device) -> torch.Tensor:
        """Half random t, half T-1-t (PIG's antithetic sampling: lower-variance loss over the schedule)."""
        half = torch.randint(0, total, ((batch + 1) // 2,), device=device)
        return torch.cat([half, total - 1 - half])[:batch]

    # ---- export ---------------------------------------------------------------------------------
    def export_extra(self) -> dict[str, Any]:
        _, splits = self._data()
        d: SliceDataConfig = self.data_config
        return {"data_root": str(d.root), "split_seed": d.split_seed, "splits": splits, "axis": d.axis,
                "tissue_label": d.tissue_label, "tissue_value": d.tissue_value if d.tissue_label else None,
                "label_mode": d.label_mode}

    def describe_data(self) -> str:
        pairs, splits = self._data()
        d: SliceDataConfig = self.data_config
        train = self.slices("train")
        n = 0 if train is None else len(train.images)
        skipped = "" if train is None or not train.skipped else (
            f"; skipped (labels off the image grid): {', '.join(train.skipped)}")
        tissue = f"; tissue mask `{d.tissue_label}` drawn as class {d.tissue_value}" if d.tissue_label else ""
        return (f"{describe_pairs(pairs, splits)} from `{d.root}`; {n} training slices (axis {d.axis}) resized to "
                f"{d.image_size}, classes {d.class_values} ({d.label_mode}){tissue}, normalization "
                f"{d.normalization!r}{skipped}. Case lists per split are in config.json (extra.splits).")
