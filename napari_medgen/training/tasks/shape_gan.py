"""``medgen train shape-gan``: the radiomics-conditioned tumour shape GAN on folders of label maps.

Real tumour masks are few (tens, not thousands), so training never sees them directly. Instead a
*shape bank* is built once and cached as ``.npz`` in ``out_dir``:

1. every label file matching a source glob is read with its geometry; the tumour (the source's
   ``labels``) is split into connected components (the largest few above ``min_volume_mm3``);
2. each component is re-sampled many times onto a fixed **physical** grid (``base_size`` voxels of
   ``base_spacing_mm``, centred on the component's centroid) through a random similarity-plus-
   deformation transform: uniform 3D rotation, random flips, anisotropic scale in ``scale_range`` and a
   smooth random displacement field (``deform_mm``). Tumours too big for the field of view are shrunk
   until they fit with a margin;
3. the sample is thresholded at ``hires_factor`` x finer spacing (1 mm by default) and reduced to one
   connected component without holes; the training target is its occupancy fraction on the base grid
   (a soft mask, as the generator's probabilities are). Its shape features are extracted with our
   radiomics engine from the mask that the inference path (`reconstruct_masks`: logit smoothing,
   trilinear upsampling, threshold) makes from that target, so the conditioning is always true to what
   the generator can express (the finer detail of the 1 mm sample is lost on the base grid, and
   measuring it would bias every requested sphericity).

The `FeatureNormalizer` fitted on the bank, the mean/covariance of the normalised bank (used by
`napari_medgen.pipelines.shape_generation` to fill features the user did not give) and slider ranges
are saved in the exported model's ``config.json``.

Losses: hinge adversarial loss with a lazy R1 penalty on the discriminator, and (beyond the reference
implementation, where it is disabled) a radiomics-consistency loss on the generator that matches
differentiable shape proxies (`shape_statistics`) of the generated mask to those of the real sample
whose features it was asked for. Against mode collapse (a conditional generator that ignores its noise),
half of each generator batch repeats the other half's features with new noise, and the centred soft Dice
of those pairs is pushed below ``diversity_target``.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_medgen.core.atomic import atomic_file
from napari_medgen.core.masks import clean_mask
from napari_medgen.errors import ConfigError, InvalidInputError
from napari_medgen.models.shape_gan import ShapeDiscriminator, ShapeGenerator, shape_statistics
from napari_medgen.radiomics.conditioning import REGION_PRESETS, FeatureNormalizer
from napari_medgen.training.config import TrainConfig
from napari_medgen.training.task import LossDict, TrainingTask
from napari_medgen.training.tasks import register_task

#: shape features used as conditions (per region). 2D diameters are left out: they depend on the axis
#: order, which the flip/permutation augmentation changes.
CONDITION_FEATURES: tuple[str, ...] = (
    "MeshVolume", "VoxelVolume", "SurfaceArea", "SurfaceVolumeRatio", "Sphericity", "Maximum3DDiameter",
    "MajorAxisLength", "MinorAxisLength", "LeastAxisLength", "Elongation", "Flatness",
)
#: features a user sets by hand (sliders, ``--set``); the rest are filled in from the bank
INTUITIVE_FEATURES: tuple[str, ...] = ("VoxelVolume", "MeshVolume", "Sphericity", "Elongation", "Flatness",
                                       "Maximum3DDiameter")
#: slope of the soft threshold applied before the consistency proxies
SHARPNESS = 12.0
_UNITS = {"VoxelVolume": "mm3", "MeshVolume": "mm3", "Sphericity": "", "Elongation": "", "Flatness": "",
          "Maximum3DDiameter": "mm"}


def feature_key(region: str, name: str) -> str:
    """Normaliser name of a feature of a region, e.g. ``lesion/original_shape_VoxelVolume``."""
    return f"{region}/original_shape_{name}"


def shape_features_of(mask: np.ndarray, spacing_xyz: Sequence[float]) -> dict[str, float]:
    """Shape features of one boolean (z, y, x) mask with our radiomics engine (batched version when present)."""
    from napari_medgen.radiomics import shape

    spacing = tuple(float(s) for s in spacing_xyz)
    batch = getattr(shape, "shape_features_batch", None)
    if batch is not None:
        out = batch(np.asarray(mask, dtype=bool)[None], spacing)
        return {k: float(np.asarray(v)[0]) for k, v in out.items()}
    return shape.shape_features(np.asarray(mask, dtype=bool), spacing)  # type: ignore[arg-type]


# ---- configuration ----------------------------------------------------------------------------------
@dataclass
class ShapeGanDataConfig:
    """The ``data:`` section: label sources and the augmented shape bank."""

    sources: list[dict[str, Any]] = field(default_factory=list)  # [{glob: "...", labels: [2]}, ...]
    regions: str = "lesion"  # REGION_PRESETS name: channels of the model (inner -> outer)
    # substrings of the file name or of its folder's name (BRATS-style layouts name cases by folder) held out
    exclude: list[str] = field(default_factory=list)
    base_size: int = 32
    base_spacing_mm: float = 2.0
    hires_factor: int = 2  # features are extracted at base_spacing_mm / hires_factor
    augmentations_per_tumour: int = 120
    max_components_per_file: int = 3
    min_volume_mm3: float = 150.0
    scale_range: list[float] = field(default_factory=lambda: [0.6, 1.6])
    deform_mm: float = 2.0
    bank_seed: int = 0
    bank_file: str = ""  # default: OUT_DIR/shape_bank_<hash>.npz
    samples_per_epoch: int = 2048

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("data.sources is empty; list label files, e.g. [{glob: 'labels/*.nii.gz', labels: [1]}].")
        for i, source in enumerate(self.sources):
            unknown = sorted(set(source) - {"glob", "labels"})
            if unknown or "glob" not in source:
                raise ConfigError(f"data.sources[{i}] needs 'glob' (and optional 'labels'); got keys {sorted(source)}.")
            labels = source.get("labels", None)
            if labels is not None and (not isinstance(labels, list) or not all(isinstance(v, int) for v in labels)):
                raise ConfigError(f"data.sources[{i}].labels must be a list of integer label values; got {labels!r}.")
        if self.regions not in REGION_PRESETS:
            raise ConfigError(f"data.regions must be one of {sorted(REGION_PRESETS)}; got {self.regions!r}.")
        if self.base_size < 8 or self.base_size % 8:
            raise ConfigError(f"data.base_size must be a multiple of 8 (>= 8); got {self.base_size}.")
        if self.base_spacing_mm <= 0 or self.hires_factor < 1 or self.augmentations_per_tumour < 1:
            raise ConfigError("data.base_spacing_mm must be > 0, hires_factor and augmentations_per_tumour >= 1.")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ConfigError(f"data.scale_range must be [low, high] with 0 < low <= high; got {self.scale_range}.")
        if self.samples_per_epoch < 1 or self.min_volume_mm3 <= 0 or self.deform_mm < 0:
            raise ConfigError("data.samples_per_epoch >= 1, min_volume_mm3 > 0 and deform_mm >= 0 are required.")

    @property
    def field_of_view_mm(self) -> float:
        return self.base_size * self.base_spacing_mm


@dataclass
class ShapeGanModelConfig:
    """The ``model:`` section: network sizes and GAN loss settings (the generator uses the top-level lr)."""

    channels: list[int] = field(default_factory=lambda: [64, 64, 32, 16])
    z_dim: int = 64
    token_dim: int = 64
    heads: int = 4
    self_attention_sizes: list[int] = field(default_factory=lambda: [8])
    cross_attention_sizes: list[int] = field(default_factory=lambda: [4, 8, 16])
    disc_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 64])
    disc_lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    adversarial_weight: float = 1.0
    r1_gamma: float = 1.0
    r1_every: int = 4
    consistency_weight: float = 5.0  # radiomics-consistency loss (0 disables it, as in the reference code)
    diversity_weight: float = 1.0  # pairs of fakes with equal features and different noise (0 disables)
    diversity_target: float = 0.7  # ... are pushed below this centred soft Dice overlap
    eval_samples: int = 48


# ---- shape bank -------------------------------------------------------------------------------------
@dataclass
class _Tumour:
    """One real tumour component: its region channels on the source grid and its physical frame."""

    name: str
    channels: np.ndarray  # (C, z, y, x) float32 in {0, 1}, inner -> outer
    index_to_physical: np.ndarray  # 4x4, continuous (x, y, z) index -> mm
    centroid_mm: np.ndarray  # (3,)
    points_mm: np.ndarray  # (P, 3) subsample of foreground voxel centres


def _held_out(path: Path, exclude: Sequence[str]) -> bool:
    """Whether a label file is held out: a term of ``exclude`` is part of its name or of its folder's name
    (``case_00004_segmentation.nii.gz``, ``brats_2013_pat0005_1/OTMultiClass.nii.gz``)."""
    return any(term in path.name or term in path.parent.name for term in exclude)


def _source_files(data: ShapeGanDataConfig) -> list[tuple[str, list[int] | None]]:
    """(path, tumour labels) of every label file of the sources, minus held-out ones; sorted per source."""
    found: list[tuple[str, list[int] | None]] = []
    for source in data.sources:
        pattern = str(Path(os.path.expanduser(str(source["glob"]))))
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise ConfigError(f"data.sources glob {source['glob']!r} matches no file (from {Path.cwd()}).")
        found += [(p, source.get("labels")) for p in matches if not _held_out(Path(p), data.exclude)]
    if not found:
        raise ConfigError("Every file of data.sources is excluded by data.exclude; nothing to train on.")
    return found


def _read_tumours(data: ShapeGanDataConfig, files: Sequence[tuple[str, list[int] | None]]) -> list[_Tumour]:
    from scipy import ndimage

    from napari_medgen.core.io import read_labels

    regions = REGION_PRESETS[data.regions]
    tumours: list[_Tumour] = []
    for path, wanted in files:
        labels = read_labels(path)
        arr = labels.array
        tumour = np.isin(arr, wanted) if wanted else arr > 0
        if not tumour.any():
            continue
        voxel_mm3 = float(np.prod(labels.spacing))
        components, count = ndimage.label(tumour)
        sizes = ndimage.sum(tumour, components, range(1, count + 1)) * voxel_mm3
        order = [int(i) + 1 for i in np.argsort(-sizes) if sizes[i] >= data.min_volume_mm3]
        slices = ndimage.find_objects(components)
        case = Path(path).parent.name if Path(path).name.startswith("OTMultiClass") else Path(path).name
        for rank, comp in enumerate(order[: data.max_components_per_file]):
            box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in slices[comp - 1])
            comp_mask = components[box] == comp
            stack = np.stack([(region.mask(labels)[box] & comp_mask) for region in regions]).astype(np.float32)
            start_xyz = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
            matrix = labels.index_to_physical_matrix().copy()
            matrix[:3, 3] = matrix[:3, :3] @ start_xyz + matrix[:3, 3]
            idx_xyz = np.argwhere(comp_mask).astype(float)[:, ::-1]
            pts = np.einsum("ij,nj->ni", matrix[:3, :3], idx_xyz) + matrix[:3, 3]
            rng = np.random.default_rng(0)
            sub = pts[rng.choice(len(pts), size=min(len(pts), 4000), replace=False)]
            tumours.append(_Tumour(f"{case}#{rank}", stack, matrix, pts.mean(axis=0), sub))
    if not tumours:
        raise ConfigError("No tumour of at least data.min_volume_mm3 was found in data.sources.")
    return tumours


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ])


@functools.lru_cache(maxsize=4)
def _grid_points(size: int, spacing: float) -> np.ndarray:
    """Physical (x, y, z) centres of a size^3 grid centred at the origin, in (z, y, x) voxel order."""
    coords = (np.arange(size) - (size - 1) / 2.0) * spacing
    gz, gy, gx = np.meshgrid(coords, coords, coords, indexing="ij")
    points = np.stack([gx, gy, gz], axis=-1).reshape(-1, 3)
    points.flags.writeable = False
    return points


def _augment(tumour: _Tumour, data: ShapeGanDataConfig, rng: np.random.Generator) -> np.ndarray | None:
    """One augmented sample of ``tumour`` at hires spacing: (C, H, H, H) bool, or None when it failed."""
    from scipy import ndimage

    hires = data.base_size * data.hires_factor
    spacing = data.base_spacing_mm / data.hires_factor
    half_fov = data.field_of_view_mm / 2.0
    limit = half_fov - 2.0 * data.base_spacing_mm - 2.0 * data.deform_mm
    low, high = np.log(data.scale_range[0]), np.log(data.scale_range[1])
    rotation = _random_rotation(rng) @ np.diag(rng.choice([-1.0, 1.0], size=3))
    transform = rotation @ np.diag(np.exp(rng.uniform(low, high, size=3)))  # mm of source -> mm of sample
    moved = np.einsum("ij,nj->ni", transform, tumour.points_mm - tumour.centroid_mm)
    reach = float(np.abs(moved).max()) + 0.5
    if reach > limit:
        transform = transform * (limit / reach)
    sample_xyz = _grid_points(hires, spacing)
    if data.deform_mm > 0:
        coarse = torch.from_numpy(rng.normal(scale=data.deform_mm, size=(1, 3, 5, 5, 5)))
        field_ = F.interpolate(coarse, size=(hires,) * 3, mode="trilinear", align_corners=True)[0].numpy()
        sample_xyz = sample_xyz + field_.reshape(3, -1).T
    inverse_index = np.linalg.inv(tumour.index_to_physical)
    for _ in range(4):
        # einsum, not @: BLAS matmul with an inner size of 3 is very slow on busy machines
        to_index = inverse_index[:3, :3] @ np.linalg.inv(transform)
        offset = inverse_index[:3, :3] @ tumour.centroid_mm + inverse_index[:3, 3]
        idx_zyx = np.einsum("ij,nj->in", to_index[::-1], sample_xyz) + offset[::-1, None]
        channels = np.stack([
            ndimage.map_coordinates(ch, idx_zyx, order=1, mode="constant", cval=0.0).reshape(hires, hires, hires)
            for ch in tumour.channels
        ]) >= 0.5
        outer = clean_mask(channels[-1])
        volume = float(outer.sum()) * spacing**3
        border = max(1, data.hires_factor)
        touches = (outer[:border].any() or outer[-border:].any() or outer[:, :border].any()
                   or outer[:, -border:].any() or outer[:, :, :border].any() or outer[:, :, -border:].any())
        if touches:
            transform = transform * 0.85
            continue
        if volume < data.min_volume_mm3:
            if volume <= 0:
                return None
            transform = transform * min(1.6, (data.min_volume_mm3 / volume) ** (1 / 3) * 1.15)
            continue
        result = [channels[c] & outer for c in range(len(channels) - 1)] + [outer]
        return np.stack(result)
    return None


def _sample_features(sample: np.ndarray, region_names: Sequence[str], spacing: float) -> list[float] | None:
    values: list[float] = []
    for c, _ in enumerate(region_names):
        mask = sample[c]
        if mask.sum() < 8:  # an absent (or speck-sized) sub-region: zeros, as conditioning_features does
            if c == len(region_names) - 1:
                return None
            values.extend([0.0] * len(CONDITION_FEATURES))
            continue
        feats = shape_features_of(mask, (spacing,) * 3)
        row = [float(feats[name]) for name in CONDITION_FEATURES]
        if not np.all(np.isfinite(row)):
            return None
        values.extend(row)
    return values


def reconstruct_masks(occupancy: np.ndarray, hires_factor: int) -> np.ndarray:
    """Boolean (C, H, H, H) masks that the inference path makes from base-grid probabilities (C, S, S, S).

    Same smoothing, trilinear upsampling and threshold as `generate_shape`, so bank features describe
    masks the generator can express (the 1 mm detail of a real sample is lost on the 2 mm grid; measuring
    it anyway would bias every requested sphericity).
    """
    from napari_medgen.models.shape_gan import upsample_probabilities

    probs = torch.as_tensor(np.asarray(occupancy, dtype=np.float64))[None]
    size = probs.shape[-1] * hires_factor
    up = upsample_probabilities(probs, size)[0].numpy() >= 0.5
    outer = clean_mask(up[-1])
    return np.stack([*(up[c] & outer for c in range(up.shape[0] - 1)), outer])


def _bank_hash(data: ShapeGanDataConfig, files: Sequence[tuple[str, Any]]) -> str:
    payload = {"data": asdict(data), "files": [(f, os.path.getsize(f)) for f, _ in files], "version": 2}
    payload["data"].pop("bank_file", None)
    payload["data"].pop("samples_per_epoch", None)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_shape_bank(data: ShapeGanDataConfig, cache_dir: Path | None = None) -> dict[str, Any]:
    """The augmented bank: ``masks`` (N, C, S, S, S) uint8 occupancy x255, ``features`` (N, F) raw values,
    ``names`` (F,), ``tumour_index`` (N,), ``tumours`` (names). Cached as ``.npz`` when a folder is given."""
    files = _source_files(data)
    key = _bank_hash(data, files)
    path: Path | None = None
    if data.bank_file:
        path = Path(data.bank_file).expanduser()
    elif cache_dir is not None:
        path = Path(cache_dir) / f"shape_bank_{key}.npz"
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as loaded:
            if str(loaded["key"]) == key:
                return {k: loaded[k] for k in loaded.files}
    tumours = _read_tumours(data, files)
    region_names = [r.name for r in REGION_PRESETS[data.regions]]
    names = [feature_key(r, n) for r in region_names for n in CONDITION_FEATURES]
    spacing = data.base_spacing_mm / data.hires_factor
    f = data.hires_factor
    s = data.base_size
    masks: list[np.ndarray] = []
    rows: list[list[float]] = []
    owners: list[int] = []
    for t_index, tumour in enumerate(tumours):
        rng = np.random.default_rng([data.bank_seed, t_index])
        made, tries = 0, 0
        while made < data.augmentations_per_tumour and tries < data.augmentations_per_tumour * 2:
            tries += 1
            sample = _augment(tumour, data, rng)
            if sample is None:
                continue
            occupancy = np.round(sample.reshape(len(region_names), s, f, s, f, s, f).mean(axis=(2, 4, 6)) * 255)
            values = _sample_features(reconstruct_masks(occupancy / 255.0, f), region_names, spacing)
            if values is None:
                continue
            masks.append(occupancy.astype(np.uint8))
            rows.append(values)
            owners.append(t_index)
            made += 1
    if len(rows) < 2:
        raise ConfigError("The shape bank has fewer than 2 usable samples; check data.sources and min_volume_mm3.")
    bank = {
        "key": np.array(key),
        "masks": np.stack(masks),
        "features": np.asarray(rows, dtype=np.float64),
        "names": np.array(names),
        "tumour_index": np.asarray(owners, dtype=np.int32),
        "tumours": np.array([t.name for t in tumours]),
        "files": np.array([f for f, _ in files]),
    }
    if path is not None:
        with atomic_file(path) as tmp, open(tmp, "wb") as handle:  # a handle: numpy must not append ".npz"
            np.savez_compressed(handle, **bank)
    return bank


class ShapeBankDataset:
    """Samples of the bank with free, feature-preserving augmentation (flips and axis permutations)."""

    def __init__(self, masks: np.ndarray, features: np.ndarray, samples_per_epoch: int) -> None:
        self.masks = masks
        self.features = features.astype(np.float32)
        self.samples_per_epoch = int(samples_per_epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        i = int(rng.integers(len(self.masks)))
        mask = self.masks[i].astype(np.float32) / 255.0
        mask = np.transpose(mask, (0, *(1 + rng.permutation(3))))
        flips = tuple(1 + a for a in range(3) if rng.random() < 0.5)
        if flips:
            mask = np.flip(mask, axis=flips)
        return {"mask": torch.from_numpy(np.ascontiguousarray(mask)), "features": torch.from_numpy(self.features[i])}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get_item(index, np.random.default_rng(index))


def feature_gaussian(normalised: np.ndarray) -> dict[str, list]:
    """Mean and (slightly regularised) covariance of normalised bank features, for conditional filling."""
    mean = normalised.mean(axis=0)
    cov = np.cov(normalised, rowvar=False) + 1e-3 * np.eye(normalised.shape[1])
    return {"mean": mean.tolist(), "cov": cov.tolist()}


def control_ranges(features: np.ndarray, names: Sequence[str], region: str) -> dict[str, dict[str, float]]:
    """Slider ranges of the intuitive features of the outer region: 1st-99th percentile and the median."""
    out: dict[str, dict[str, float]] = {}
    for name in INTUITIVE_FEATURES:
        column = features[:, list(names).index(feature_key(region, name))]
        lo, mid, hi = np.percentile(column, [1, 50, 99])
        out[name] = {"min": float(lo), "max": float(hi), "default": float(mid), "unit": _UNITS[name]}
    return out


def centred_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Soft Dice of pairs of soft masks (P, S, S, S) after moving each ``b`` onto ``a``'s centroid (whole voxels).

    Centring makes the diversity term reward different *shapes and orientations*, not mere translations
    (generated masks are re-centred on their centroid anyway).
    """
    size = a.shape[-1]
    axis = torch.arange(size, dtype=a.dtype, device=a.device)
    scores = []
    for pa, pb in zip(a, b, strict=True):
        with torch.no_grad():
            shift = []
            for dim in range(3):
                other = tuple(d for d in range(3) if d != dim)
                ca = (pa.sum(dim=other) * axis).sum() / (pa.sum() + 1e-6)
                cb = (pb.sum(dim=other) * axis).sum() / (pb.sum() + 1e-6)
                shift.append(int(torch.round(ca - cb)))
        moved = torch.roll(pb, shifts=tuple(shift), dims=(0, 1, 2))
        scores.append(2.0 * (pa * moved).sum() / (pa.sum() + moved.sum() + 1e-6))
    return torch.stack(scores)


# ---- the task ---------------------------------------------------------------------------------------
@register_task("shape-gan")
class ShapeGanTask(TrainingTask):
    """Conditional shape GAN: generator (exported, EMA) + projection discriminator."""

    data_config_class = ShapeGanDataConfig
    model_config_class = ShapeGanModelConfig
    export_module = "generator"

    def __init__(self, config: TrainConfig, where: str = "the config") -> None:
        super().__init__(config, where)
        self._bank: dict[str, Any] | None = None
        self._normalizer: FeatureNormalizer | None = None
        self._fake: torch.Tensor | None = None
        self._fake_features: torch.Tensor | None = None

    # ---- data -----------------------------------------------------------------------------------
    def bank(self) -> dict[str, Any]:
        if self._bank is None:
            self._bank = build_shape_bank(self.data_config, Path(self.config.out_dir).expanduser())
            names = [str(n) for n in self._bank["names"]]
            self._normalizer = FeatureNormalizer.fit(names, self._bank["features"])
        return self._bank

    @property
    def normalizer(self) -> FeatureNormalizer:
        self.bank()
        assert self._normalizer is not None
        return self._normalizer

    def build_dataset(self) -> ShapeBankDataset:
        bank = self.bank()
        normalised = self.normalizer.transform(bank["features"])
        return ShapeBankDataset(bank["masks"], normalised, self.data_config.samples_per_epoch)

    # ---- models ---------------------------------------------------------------------------------
    def build_models(self) -> dict[str, nn.Module]:
        d: ShapeGanDataConfig = self.data_config
        m: ShapeGanModelConfig = self.model_config
        num_regions = len(REGION_PRESETS[d.regions])
        num_features = num_regions * len(CONDITION_FEATURES)
        try:
            generator = ShapeGenerator(
                num_features, num_regions, d.base_size, m.z_dim, m.token_dim, m.channels, m.heads,
                m.self_attention_sizes, m.cross_attention_sizes,
            )
        except InvalidInputError as error:
            raise ConfigError(f"Shape GAN settings do not fit together: {error}") from error
        discriminator = ShapeDiscriminator(num_features, num_regions, m.disc_channels)
        return {"generator": generator, "discriminator": discriminator}

    def build_optimizers(self, models: Mapping[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        m: ShapeGanModelConfig = self.model_config
        betas = (float(m.betas[0]), float(m.betas[1]))
        return {
            "generator": torch.optim.Adam(models["generator"].parameters(), lr=self.config.lr, betas=betas),
            "discriminator": torch.optim.Adam(models["discriminator"].parameters(), lr=m.disc_lr, betas=betas),
        }

    def _consistency(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        voxel = self.data_config.base_spacing_mm
        # Proxies of softly *thresholded* masks: users get the 0.5 iso-surface, and on raw probabilities a
        # faint haze (p ~ 0.2 far out) could satisfy the proxies while the thresholded shape does not.
        fake = torch.sigmoid((fake - 0.5) * SHARPNESS)
        real = torch.sigmoid((real - 0.5) * SHARPNESS)
        loss = fake.new_zeros(())
        for c in range(fake.shape[1]):
            present = real[:, c].sum(dim=(1, 2, 3)) >= 1.0
            if present.any():
                sf = shape_statistics(fake[present, c], voxel)
                sr = shape_statistics(real[present, c], voxel)
                diff = (sf - sr) * torch.tensor([1.0, 4.0, 4.0, 4.0], device=fake.device)
                loss = loss + diff.pow(2).mean()
            if (~present).any():
                loss = loss + fake[~present, c].mean() * 10.0
        return loss

    def compute_loss(self, optimizer: str, batch: Any, models: Mapping[str, nn.Module], step: int) -> LossDict | None:
        m: ShapeGanModelConfig = self.model_config
        real, features = batch["mask"], batch["features"]
        if optimizer == "generator":
            generator = models["generator"]
            b = real.shape[0]
            paired = m.diversity_weight > 0 and b >= 2 and b % 2 == 0
            if paired:  # second half repeats the first half's conditions with other noise
                index = torch.arange(b, device=real.device) % (b // 2)
                real, features = real[index], features[index]
            z = torch.randn(b, m.z_dim, device=real.device)
            fake = ShapeGenerator.probabilities(generator(z, features))
            self._fake = fake.detach()
            self._fake_features = features.detach()
            adversarial = -models["discriminator"](fake, features).mean()
            logs: LossDict = {"adversarial": adversarial.detach()}
            loss = m.adversarial_weight * adversarial
            if m.consistency_weight > 0:
                consistency = self._consistency(fake, real)
                loss = loss + m.consistency_weight * consistency
                logs["consistency"] = consistency.detach()
            if paired:
                overlap = centred_overlap(fake[: b // 2, -1], fake[b // 2 :, -1])
                loss = loss + m.diversity_weight * F.relu(overlap - m.diversity_target).mean()
                logs["pair_dice"] = overlap.mean().detach()
            logs["loss"] = loss
            return logs
        fake = self._fake
        if fake is None:
            return None
        discriminator = models["discriminator"]
        use_r1 = m.r1_gamma > 0 and m.r1_every > 0 and step % m.r1_every == 0
        real_in = real.detach().requires_grad_(use_r1)
        score_real = discriminator(real_in, features)
        score_fake = discriminator(fake, self._fake_features)
        hinge = F.relu(1.0 - score_real).mean() + F.relu(1.0 + score_fake).mean()
        logs = {"hinge": hinge.detach(), "real_score": score_real.mean().detach(),
                "fake_score": score_fake.mean().detach()}
        loss = hinge
        if use_r1:
            (grad,) = torch.autograd.grad(score_real.sum(), real_in, create_graph=True)
            r1 = grad.pow(2).sum(dim=(1, 2, 3, 4)).mean()
            loss = loss + 0.5 * m.r1_gamma * m.r1_every * r1
            logs["r1"] = r1.detach()
        logs["loss"] = loss
        return logs

    def ema_modules(self) -> tuple[str, ...]:
        return ("generator",)

    # ---- export ---------------------------------------------------------------------------------
    def export_extra(self) -> dict[str, Any]:
        d: ShapeGanDataConfig = self.data_config
        bank = self.bank()
        names = [str(n) for n in bank["names"]]
        regions = [r.name for r in REGION_PRESETS[d.regions]]
        normalised = self.normalizer.transform(bank["features"])
        return {
            "normalizer": self.normalizer.to_dict(),
            "regions": regions,
            "region_preset": d.regions,
            "condition_features": list(CONDITION_FEATURES),
            "base_spacing_mm": d.base_spacing_mm,
            "hires_factor": d.hires_factor,
            "field_of_view_mm": d.field_of_view_mm,
            "feature_gaussian": feature_gaussian(normalised),
            "controls": control_ranges(bank["features"], names, regions[-1]),
            "bank_size": int(len(bank["features"])),
            "bank_tumours": [str(t) for t in bank["tumours"]],
            "held_out": list(d.exclude),
        }

    def describe_data(self) -> str:
        d: ShapeGanDataConfig = self.data_config
        bank = self.bank()
        return (
            f"{len(bank['tumours'])} real tumour components from {len(bank['files'])} label files "
            f"({', '.join(sorted({Path(str(f)).name for f in bank['files']}))}); held out: {d.exclude or 'none'}. "
            f"Augmented shape bank of {len(bank['features'])} samples ({d.augmentations_per_tumour} per tumour: "
            f"random rotation, flips, anisotropic scale {d.scale_range}, smooth deformation {d.deform_mm} mm), "
            f"{d.base_size}^3 voxels of {d.base_spacing_mm} mm (field of view {d.field_of_view_mm} mm); shape "
            f"features extracted per sample at {d.base_spacing_mm / d.hires_factor} mm, regions {d.regions!r}."
        )

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Requested vs measured features for bank feature vectors (training distribution)."""
        from napari_medgen.models.shape_gan import upsample_probabilities

        m: ShapeGanModelConfig = self.model_config
        d: ShapeGanDataConfig = self.data_config
        bank = self.bank()
        if m.eval_samples < 3:
            return {}
        rng = np.random.default_rng(1234)
        picks = rng.choice(len(bank["features"]), size=min(m.eval_samples, len(bank["features"])), replace=False)
        names = [str(n) for n in bank["names"]]
        region = REGION_PRESETS[d.regions][-1].name
        cols = {k: names.index(feature_key(region, k)) for k in ("VoxelVolume", "Sphericity", "Elongation", "Flatness")}
        normalised = torch.as_tensor(self.normalizer.transform(bank["features"][picks]), dtype=torch.float32)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            probs = model.sample(normalised.to(device), generator=gen if device.type == "cpu" else None)
            probs = upsample_probabilities(probs.cpu(), d.base_size * d.hires_factor)
        spacing = d.base_spacing_mm / d.hires_factor
        measured = {k: [] for k in cols}
        for i in range(len(picks)):
            mask = clean_mask(probs[i, -1].numpy() >= 0.5)
            if mask.sum() < 8:
                for k in cols:
                    measured[k].append(0.0)
                continue
            feats = shape_features_of(mask, (spacing,) * 3)
            for k in cols:
                measured[k].append(float(feats[k]))
        metrics: dict[str, float] = {}
        for k, col in cols.items():
            requested = bank["features"][picks, col]
            got = np.asarray(measured[k])
            metrics[f"pearson_{k}"] = float(np.corrcoef(requested, got)[0, 1]) if got.std() > 0 else 0.0
        vol_req = bank["features"][picks, cols["VoxelVolume"]]
        metrics["median_rel_volume_error"] = float(np.median(np.abs(np.asarray(measured["VoxelVolume"]) - vol_req)
                                                             / vol_req))
        return metrics
