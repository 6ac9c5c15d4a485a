"""``medgen train inpainter``: healthy-tissue inpainting (tumour removal) on top of classical estimates.

The network (`models.inpainter.Inpainter`) learns, from regions of healthy brain hidden the way the BraTS
inpainting challenge hides them (`training.inpaint_dataset`), how much of the contralateral (mirror-harmonic) and
(``model.atlas``) the registered-atlas detail to take and which smooth residual to add to the harmonic fill. The
loss is the squared error inside the region on the coarse grid (PSNR is what the challenge reports), plus a little
L1 for robustness.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_medgen.errors import ConfigError
from napari_medgen.models.inpainter import Inpainter
from napari_medgen.training.inpaint_dataset import (
    GAP_VOXELS,
    InpaintItems,
    Scan,
    build_pool,
    load_or_build_pool,
    pool_key,
    tumour_shapes,
)
from napari_medgen.training.task import LossDict, TrainingTask
from napari_medgen.training.tasks import register_task
from napari_medgen.training.tasks.vqgan import psnr


@dataclass
class InpainterDataConfig:
    """The ``data:`` section: brain scans with tumour labels, extra sequences, the item pool."""

    root: str
    case_image: str | None = None
    case_label: str | None = None
    allow_unpaired: bool = False
    extra_images: list[str] = field(default_factory=list)  # other sequences of the same case (globs in its folder)
    pool_size: int = 256
    work_mm_range: list[float] = field(default_factory=lambda: [1.5, 2.5])
    samples_per_epoch: int = 512
    random_flip: bool = True
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0
    group_by: str | None = None
    eval_items: int = 16

    def __post_init__(self) -> None:
        if self.pool_size < 2 or self.samples_per_epoch < 1 or self.eval_items < 0:
            raise ConfigError("data.pool_size >= 2, samples_per_epoch >= 1 and eval_items >= 0 are required.")
        if len(self.work_mm_range) != 2 or not 0 < self.work_mm_range[0] <= self.work_mm_range[1]:
            raise ConfigError(f"data.work_mm_range must be [low, high] mm with 0 < low <= high; got "
                              f"{self.work_mm_range}.")


@dataclass
class InpainterModelConfig:
    """The ``model:`` section: the U-Net and its coarse working grid."""

    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    num_res_units: int = 1
    crop_size: int = 64
    work_mm: float = 2.0
    atlas: bool = False  # add the MNI152 atlas estimate (core.atlas) as a third input
    l1_weight: float = 0.1


def sequence_name(file_name: str) -> str:
    """``T1c_subtrMeanDivStd.nii.gz`` -> ``T1c``: the sequence a file (or glob) names, for per-sequence statistics."""
    return file_name.split("_", 1)[0].split("*", 1)[0].split(".", 1)[0]


def normalised(scan: Scan) -> np.ndarray:
    """The scan in brain-normalised units (`models.inpainter.brain_range` around its tumour), as synthesis sees it."""
    from napari_medgen.models.inpainter import brain_range

    low, high = brain_range(scan.image, scan.tumour, scan.brain)
    return (scan.image - low) / (high - low)


def _load_scans(pairs: list[Any], extra: list[str], with_labels: bool = False, atlas: bool = False) -> list[Scan]:
    """Every image (and extra sequence) of the cases with its tumour, brain and symmetry plane (and, with
    ``atlas``, the MNI152 atlas registered to the healthy brain, the dilated tumour left out)."""
    from napari_medgen.core.inpainting import default_brain_mask, estimate_mirror_index
    from napari_medgen.core.io import read_volume
    from napari_medgen.training.datasets import load_case

    scans = []
    for pair in pairs:
        labels = load_case(pair).labels
        files = [Path(pair.image)] + [f for pattern in extra for f in sorted(Path(pair.image).parent.glob(pattern))
                                      if f != Path(pair.image)]
        for path in files:
            volume = read_volume(path)
            if volume.shape != labels.shape:
                raise ConfigError(f"{path} is not on the grid of case {pair.case_id!r}'s labels; data.extra_images "
                                  "must name other sequences of the same case.")
            array = np.asarray(volume.array, dtype=np.float32)
            none = np.zeros(array.shape, dtype=bool)
            brain = default_brain_mask(array, none)
            mirror = 0 if with_labels else int(estimate_mirror_index(array, brain, labels > 0))
            tissue = None
            if atlas:
                from scipy import ndimage

                from napari_medgen.core.atlas import register_atlas

                valid = brain & ~ndimage.binary_dilation(labels > 0, iterations=GAP_VOXELS)
                tissue = register_atlas(array, valid, volume.spacing_zyx, volume.origin, volume.direction)
            scans.append(Scan(f"{pair.case_id}/{path.name}", array, labels > 0, brain,
                              tuple(float(s) for s in volume.spacing_zyx), mirror,
                              labels if with_labels else None, tissue))
    return scans


@register_task("inpainter")
class InpainterTask(TrainingTask):
    """Healthy-tissue inpainter (exported: `Inpainter`)."""

    data_config_class = InpainterDataConfig
    model_config_class = InpainterModelConfig
    export_module = "inpainter"

    def __init__(self, config: Any, where: str = "the config") -> None:
        super().__init__(config, where)
        self._pool: dict[str, np.ndarray] | None = None
        self._make()  # a bad architecture fails before any data are read

    def _make(self) -> Inpainter:
        m: InpainterModelConfig = self.model_config
        try:
            return Inpainter(channels=m.channels, num_res_units=m.num_res_units, crop_size=m.crop_size,
                             work_mm=m.work_mm, atlas=m.atlas)
        except Exception as error:  # noqa: BLE001 - any construction problem is a config problem
            raise ConfigError(f"Inpainter settings do not fit together: {error}") from error

    def build_models(self) -> dict[str, nn.Module]:
        return {"inpainter": self._make()}

    def _items(self, split: str, size: int, seed: int) -> dict[str, np.ndarray]:
        from napari_medgen.training.datasets import load_case

        d: InpainterDataConfig = self.data_config
        train_pairs = self._split_pairs("train")
        shapes = tumour_shapes([load_case(p).labels for p in train_pairs])
        atlas = bool(self.model_config.atlas)
        scans = _load_scans(self._split_pairs(split), d.extra_images, atlas=atlas)
        settings = {"split": split, "cases": [s.name for s in scans], "shapes": len(shapes), "size": size,
                    "seed": seed, "work_mm_range": list(d.work_mm_range), "crop": self.model_config.crop_size}
        if atlas:
            settings["atlas"] = True
        path = Path(self.config.out_dir) / f"pool-{split}-{pool_key(settings)}.npz"
        return load_or_build_pool(path, lambda: build_pool(scans, shapes, size, work_mm_range=tuple(d.work_mm_range),
                                                           crop=self.model_config.crop_size, seed=seed))

    def build_dataset(self) -> InpaintItems:
        d: InpainterDataConfig = self.data_config
        if self._pool is None:
            self._pool = self._items("train", d.pool_size, d.split_seed)
        return InpaintItems(self._pool, d.samples_per_epoch, d.random_flip)

    @staticmethod
    def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return (model.module if hasattr(model, "module") else model).blend(x)

    def _region_channel(self) -> int:
        """Index of the region-fraction input channel (after the estimates)."""
        return 2 + int(bool(self.model_config.atlas))

    def compute_loss(self, optimizer: str, batch: Any, models: Mapping[str, nn.Module], step: int) -> LossDict:
        x, target = batch["inputs"].float(), batch["target"].float()
        prediction = self._predict(models["inpainter"], x)
        c = self._region_channel()
        inside = (x[:, c:c + 1] > 0.5).float()
        count = inside.sum().clamp(min=1.0)
        error = prediction - target
        mse = (error.pow(2) * inside).sum() / count
        l1 = (error.abs() * inside).sum() / count
        baseline = ((x[:, :1] - target).pow(2) * inside).sum() / count
        loss = mse + self.model_config.l1_weight * l1
        return {"loss": loss, "mse": mse.detach(), "harmonic_mse": baseline.detach()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Coarse-grid PSNR inside held-out regions (val cases): the model vs harmonic and mirror-harmonic."""
        d: InpainterDataConfig = self.data_config
        if not self._split_pairs("val") or d.eval_items == 0:
            return {}
        pool = self._items("val", d.eval_items, d.split_seed + 1)
        x = torch.from_numpy(pool["inputs"].astype(np.float32)).to(device)
        target = torch.from_numpy(pool["target"].astype(np.float32)).to(device)
        c = self._region_channel()
        inside = x[:, c:c + 1] > 0.5
        candidates = [("model", self._predict(model, x)), ("harmonic", x[:, :1]), ("mirror", x[:, 1:2])]
        if self.model_config.atlas:
            candidates.append(("atlas", x[:, 2:3]))
        out = {}
        for name, prediction in candidates:
            out[f"val_{name}_psnr"] = psnr(float(((prediction - target) ** 2)[inside].mean()), data_range=1.0)
        return out

    def export_extra(self) -> dict[str, Any]:
        d: InpainterDataConfig = self.data_config
        record = self._case_split().record()
        return {"sequences": [d.case_image, *d.extra_images], "pool_size": d.pool_size,
                "work_mm_range": list(d.work_mm_range), "appearance": self._appearance(), **record}

    def _appearance(self) -> dict[str, Any]:
        """Glioma sub-region appearance per sequence, fitted on the training tumours (`models.tumour_appearance`):
        what synthesis paints by default. Keyed by sequence name (the file name before its first ``_`` or ``*``)."""
        from napari_medgen.models.tumour_appearance import fit_appearance

        d: InpainterDataConfig = self.data_config
        per_sequence: dict[str, list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]] = {}
        for scan in _load_scans(self._split_pairs("train"), d.extra_images, with_labels=True):
            per_sequence.setdefault(sequence_name(scan.name.split("/", 1)[1]), []).append(
                (normalised(scan), scan.labels, scan.spacing_zyx))
        return {name: fit_appearance(cases) for name, cases in per_sequence.items()}

    def describe_data(self) -> str:
        from napari_medgen.training.datasets import describe_pairs

        pairs, splits = self._data()
        d: InpainterDataConfig = self.data_config
        return (f"{describe_pairs(pairs, splits)} from `{d.root}` (images `{d.case_image}` + {d.extra_images}); "
                f"{d.pool_size} healthy regions hidden as in the BraTS inpainting challenge (training tumours' "
                f"shapes, flipped, rotated, rescaled 0.6-1.3x, placed >= 6 voxels from the scan's tumour, >= 75 % "
                f"in the brain), coarse grid of {d.work_mm_range} mm, {self.model_config.crop_size}^3 voxels.")

