"""Radiomics as model conditions: named feature sets per tumour sub-region, and a reversible normaliser.

Seed 003 conditions the shape generator on *shape* features and the texture generator on *texture*
features (first-order + GLCM + GLRLM + GLSZM), each computed per sub-region of the tumour (for brain
gliomas: the necrotic core and the tumour core). Raw radiomics values span many orders of magnitude
(volumes in mm3 next to ratios in [0, 1]), so models see them through `FeatureNormalizer`: log1p for
heavy-tailed non-negative features, then a z-score, with the statistics saved beside the weights and
inverted for display so users always read real units (mm3, mm, ratios).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import InvalidInputError
from napari_medgen.radiomics.settings import RadiomicsSettings

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "shape": ("shape",),
    "texture": ("firstorder", "glcm", "glrlm", "glszm"),
}
"""Seed 003's conditioning vectors: feature classes computed for every sub-region."""


@dataclass(frozen=True)
class Region:
    """A tumour sub-region: the union of some label values (e.g. tumour core = necrosis + enhancing)."""

    name: str
    labels: tuple[int, ...]

    def mask(self, labels: LabelMap) -> np.ndarray:
        return np.isin(labels.array, self.labels)


REGION_PRESETS: dict[str, tuple[Region, ...]] = {
    # BraTS convention: 1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing (seed 003: NCR and TC channels).
    "brats": (Region("necrotic_core", (1,)), Region("tumour_core", (1, 3, 4))),
    # One lesion of any non-zero label (kidney tumour, lung nodule, breast lesion...).
    "lesion": (Region("lesion", tuple(range(1, 256))),),
}

_SHAPE_UNITS = {
    "VoxelVolume": "mm3",
    "MeshVolume": "mm3",
    "SurfaceArea": "mm2",
    "SurfaceVolumeRatio": "1/mm",
    "Sphericity": "ratio",
    "Elongation": "ratio",
    "Flatness": "ratio",
    "Maximum3DDiameter": "mm",
    "Maximum2DDiameterSlice": "mm",
    "Maximum2DDiameterColumn": "mm",
    "Maximum2DDiameterRow": "mm",
    "MajorAxisLength": "mm",
    "MinorAxisLength": "mm",
    "LeastAxisLength": "mm",
}


def feature_unit(name: str) -> str:
    """Unit of a (possibly region-prefixed) feature name, for tables and sliders; '' when unitless/unknown."""
    base = name.rsplit("/", 1)[-1]
    if base.startswith("original_shape_"):
        return _SHAPE_UNITS.get(base.removeprefix("original_shape_"), "")
    return ""


def resolve_regions(regions: str | Sequence[Region]) -> tuple[Region, ...]:
    """A preset name ('brats', 'lesion') or explicit regions."""
    if isinstance(regions, str):
        if regions not in REGION_PRESETS:
            raise InvalidInputError(f"Unknown region preset '{regions}'; choose from {sorted(REGION_PRESETS)}.")
        return REGION_PRESETS[regions]
    out = tuple(regions)
    if not out:
        raise InvalidInputError("At least one region is needed to compute conditioning features.")
    return out


def conditioning_features(
    image: Volume | None,
    labels: LabelMap,
    feature_set: str,
    regions: str | Sequence[Region] = "lesion",
    settings: RadiomicsSettings | Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Features of ``feature_set`` for every region, named ``<region>/original_<class>_<Feature>``.

    A region absent from ``labels`` contributes zeros (the model learns "no necrotic core" from them),
    but the tumour as a whole must not be empty. ``image`` may be None for the shape set.
    """
    from napari_medgen.radiomics.extractor import extract_features

    if feature_set not in FEATURE_SETS:
        raise InvalidInputError(f"Unknown feature set '{feature_set}'; choose from {sorted(FEATURE_SETS)}.")
    classes = FEATURE_SETS[feature_set]
    if image is None:
        if feature_set != "shape":
            raise InvalidInputError("Texture features need the image; pass the scan together with its labels.")
        image = labels.as_image(np.zeros(labels.shape, dtype=np.float32))
    else:
        image.require_same_grid(labels)
    region_list = resolve_regions(regions)
    if not labels.labels():
        raise InvalidInputError("The label map is empty: draw or load a tumour mask first.")
    out: dict[str, float] = {}
    template: dict[str, float] | None = None
    missing: list[Region] = []
    for region in region_list:
        mask = region.mask(labels)
        if not mask.any():
            missing.append(region)
            continue
        values = extract_features(image, labels.as_labels(mask.astype(np.uint8)), 1, settings, classes)
        template = values
        out.update({f"{region.name}/{k}": float(v) for k, v in values.items()})
    if template is None:
        raise InvalidInputError(
            f"None of the regions {[r.name for r in region_list]} occurs in the label map "
            f"(labels present: {labels.labels_text()}); choose the region preset that matches your label convention."
        )
    for region in missing:
        out.update({f"{region.name}/{k}": 0.0 for k in template})
    return {f"{r.name}/{k}": out[f"{r.name}/{k}"] for r in region_list for k in template}


@dataclass(frozen=True)
class FeatureNormalizer:
    """log1p (heavy-tailed, non-negative features) + z-score, fitted on training features; invertible."""

    names: tuple[str, ...]
    log: tuple[bool, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, names: Sequence[str], values: np.ndarray, skew_threshold: float = 1.0) -> FeatureNormalizer:
        """Fit on a (samples, features) matrix; a feature gets log1p when it is >= 0 and right-skewed."""
        data = np.asarray(values, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] != len(names):
            raise InvalidInputError(f"values must be (samples, {len(names)}); got shape {data.shape}.")
        if data.shape[0] < 2:
            raise InvalidInputError("Fitting a feature normaliser needs at least 2 samples.")
        if not np.all(np.isfinite(data)):
            bad = [n for n, ok in zip(names, np.isfinite(data).all(axis=0), strict=True) if not ok]
            raise InvalidInputError(f"Features contain NaN/Inf and cannot be normalised: {bad[:5]}.")
        log_flags: list[bool] = []
        means: list[float] = []
        stds: list[float] = []
        for column in data.T:
            use_log = bool(column.min() >= 0 and _skewness(column) > skew_threshold)
            transformed = np.log1p(column) if use_log else column
            log_flags.append(use_log)
            means.append(float(transformed.mean()))
            std = float(transformed.std())
            stds.append(std if std > 1e-12 else 1.0)
        return cls(tuple(names), tuple(log_flags), tuple(means), tuple(stds))

    def _vector(self, features: Mapping[str, float] | np.ndarray) -> np.ndarray:
        if isinstance(features, Mapping):
            unknown = sorted(set(features) - set(self.names))
            if unknown:
                raise InvalidInputError(f"Unknown feature name(s) {unknown[:5]}; this model uses {len(self.names)} "
                                        f"features such as {list(self.names[:3])}.")
            missing = [n for n in self.names if n not in features]
            if missing:
                raise InvalidInputError(f"Missing feature(s) {missing[:5]}; give every feature or use a preset.")
            return np.array([features[n] for n in self.names], dtype=np.float64)
        arr = np.asarray(features, dtype=np.float64)
        if arr.shape[-1] != len(self.names):
            raise InvalidInputError(f"Expected {len(self.names)} features in the last axis; got {arr.shape}.")
        return arr

    def transform(self, features: Mapping[str, float] | np.ndarray) -> np.ndarray:
        """Real units -> model space (works on one mapping, a vector or a (N, F) matrix)."""
        arr = self._vector(features)
        if not np.all(np.isfinite(arr)):
            raise InvalidInputError("Features contain NaN/Inf; recompute them from a non-empty mask.")
        log = np.asarray(self.log)
        if np.any(arr[..., log] < 0):
            raise InvalidInputError("A volume/area-like feature is negative; such features must be >= 0.")
        out = np.where(log, np.log1p(np.where(log, arr, 0.0)), arr)
        return (out - np.asarray(self.mean)) / np.asarray(self.std)

    def inverse(self, normalised: np.ndarray) -> np.ndarray:
        """Model space -> real units (log features clamped at 0)."""
        arr = np.asarray(normalised, dtype=np.float64) * np.asarray(self.std) + np.asarray(self.mean)
        log = np.asarray(self.log)
        return np.where(log, np.expm1(np.where(log, arr, 0.0)).clip(min=0.0), arr)

    def inverse_dict(self, normalised: np.ndarray) -> dict[str, float]:
        """One normalised vector back to named features in real units."""
        return dict(zip(self.names, (float(v) for v in self.inverse(normalised)), strict=True))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready statistics, stored in a model's config.json."""
        return {"names": list(self.names), "log": list(self.log), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureNormalizer:
        try:
            norm = cls(tuple(data["names"]), tuple(bool(v) for v in data["log"]),
                       tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInputError(f"Stored feature statistics are incomplete or malformed ({error}).") from error
        if not len(norm.names) == len(norm.log) == len(norm.mean) == len(norm.std):
            raise InvalidInputError("Stored feature statistics have inconsistent lengths; re-train the model.")
        return norm


def _skewness(values: Iterable[float]) -> float:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
    std = arr.std()
    if std < 1e-12:
        return 0.0
    return float(np.mean(((arr - arr.mean()) / std) ** 3))
