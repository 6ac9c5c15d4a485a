"""Intensity normalisation that models can save and undo: CT windows and MR percentile scaling.

A network sees intensities in a fixed range ([0, 1] or [-1, 1]); what it generates has to go back
to Hounsfield units or scanner units. `IntensityNormalizer` holds the two numbers that define the
linear map (``low``/``high`` source values that land on ``out_min``/``out_max``), applies it both
ways, and serialises to a plain dict that checkpoints store next to their config.

* CT: fixed HU windows (`CT_WINDOW_PRESETS`, level/width in HU as radiologists quote them).
* MR: no absolute scale, so ``low``/``high`` are percentiles (default 0.5 and 99.5) of the voxels
  inside a mask (or the non-zero foreground), computed once per image with `percentile_normalizer`.

With ``clip=True`` (the default) values beyond the window are clipped in `forward`; `inverse` can then
only return the window's ends for them, which is the information the model had.

Checkpoints name their input contract with a normalisation *spec* string (`NORMALIZATIONS_HELP`:
``percentile``, ``zscore``, ``ct:brain`` ...); `normalize_intensity` and `fit_normalizer` apply it, for training and
for inference alike, which is why they live here and not with any one model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, overload

import numpy as np

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import ConfigError, InvalidInputError

# name -> (level, width) in Hounsfield units; common radiology reading windows.
CT_WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "temporal_bone": (600.0, 2800.0),
    "soft_tissue": (40.0, 400.0),
    "abdomen": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}

_KINDS = ("window", "percentile", "manual")


def _finite_array(array: np.ndarray | Volume, what: str) -> np.ndarray:
    arr = np.asarray(array.array if isinstance(array, Volume) else array)
    if arr.dtype.kind not in "biuf":
        raise InvalidInputError(f"{what} must be numeric; got {arr.dtype}.")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InvalidInputError(
            f"{what} contains {bad} NaN/Inf voxels; replace them (e.g. numpy.nan_to_num) before normalising."
        )
    return arr


@dataclass(frozen=True)
class IntensityNormalizer:
    """Linear map ``[low, high] -> [out_min, out_max]`` with its inverse (see the module docstring)."""

    low: float
    high: float
    out_min: float = 0.0
    out_max: float = 1.0
    clip: bool = True
    kind: str = "manual"
    name: str = ""

    def __post_init__(self) -> None:
        for field_name in ("low", "high", "out_min", "out_max"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
                raise InvalidInputError(f"{field_name} must be a number; got {value!r}.")
            if not np.isfinite(value):
                raise InvalidInputError(f"{field_name} must be finite; got {value}.")
            object.__setattr__(self, field_name, float(value))
        if not self.high > self.low:
            raise InvalidInputError(
                f"high ({self.high}) must exceed low ({self.low}); a constant image (or an empty window) "
                "cannot be "
                "normalised. Check the mask covers the object, or give a manual window."
            )
        if not self.out_max > self.out_min:
            raise InvalidInputError(f"out_max ({self.out_max}) must exceed out_min ({self.out_min}).")
        if self.kind not in _KINDS:
            raise InvalidInputError(f"kind must be one of {_KINDS}; got {self.kind!r}.")
        if not isinstance(self.clip, bool | np.bool_):
            raise InvalidInputError(f"clip must be True or False; got {self.clip!r}.")
        object.__setattr__(self, "clip", bool(self.clip))
        object.__setattr__(self, "name", str(self.name))

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_window(
        cls,
        level: float,
        width: float,
        out_range: Sequence[float] = (0.0, 1.0),
        *,
        clip: bool = True,
        name: str = "",
    ) -> IntensityNormalizer:
        """A CT-style window given as level (centre) and width, in source units (HU)."""
        if not width > 0:
            raise InvalidInputError(f"Window width must be positive; got {width}.")
        lo, hi = _out_range(out_range)
        return cls(level - width / 2.0, level + width / 2.0, lo, hi, clip, "window", name)

    @classmethod
    def from_ct_preset(
        cls, preset: str, out_range: Sequence[float] = (0.0, 1.0), *, clip: bool = True
    ) -> IntensityNormalizer:
        """One of `CT_WINDOW_PRESETS` (case-insensitive; spaces and dashes count as underscores)."""
        key = str(preset).strip().lower().replace(" ", "_").replace("-", "_")
        if key not in CT_WINDOW_PRESETS:
            known = ", ".join(f"{k} ({lvl:g}/{wid:g})" for k, (lvl, wid) in CT_WINDOW_PRESETS.items())
            raise InvalidInputError(f"Unknown CT window preset {preset!r}. Known presets (level/width HU): {known}.")
        level, width = CT_WINDOW_PRESETS[key]
        return cls.from_window(level, width, out_range, clip=clip, name=key)

    @property
    def level(self) -> float:
        """Centre of the source window."""
        return (self.low + self.high) / 2.0

    @property
    def width(self) -> float:
        """Width of the source window."""
        return self.high - self.low

    # ---- application ----------------------------------------------------------------------------
    @overload
    def forward(self, array: Volume) -> Volume: ...

    @overload
    def forward(self, array: np.ndarray) -> np.ndarray: ...

    def forward(self, array: np.ndarray | Volume) -> np.ndarray | Volume:
        """Source units -> network range (float32). A `Volume` in gives a `Volume` out on the same grid."""
        arr = _finite_array(array, "The image")
        if isinstance(array, LabelMap):
            raise InvalidInputError("Label maps are not intensity-normalised; pass the image.")
        scale = (self.out_max - self.out_min) / (self.high - self.low)
        out = (arr.astype(np.float64) - self.low) * scale + self.out_min
        if self.clip:
            out = np.clip(out, self.out_min, self.out_max)
        result = out.astype(np.float32)
        return array.as_image(result) if isinstance(array, Volume) else result

    @overload
    def inverse(self, array: Volume) -> Volume: ...

    @overload
    def inverse(self, array: np.ndarray) -> np.ndarray: ...

    def inverse(self, array: np.ndarray | Volume) -> np.ndarray | Volume:
        """Network range -> source units (float32); the exact inverse of `forward` inside the window."""
        arr = _finite_array(array, "The normalised array")
        scale = (self.high - self.low) / (self.out_max - self.out_min)
        out = ((arr.astype(np.float64) - self.out_min) * scale + self.low).astype(np.float32)
        return array.as_image(out) if isinstance(array, Volume) else out

    # ---- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; `from_dict` restores an equal normaliser."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntensityNormalizer:
        """Rebuild from `to_dict` output; a malformed dict raises `ConfigError` naming the problem."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"An intensity normaliser config must be a mapping; got {type(data).__name__}.")
        allowed = {"low", "high", "out_min", "out_max", "clip", "kind", "name"}
        unknown = set(data) - allowed
        missing = {"low", "high"} - set(data)
        if unknown or missing:
            raise ConfigError(
                f"Invalid intensity normaliser config: unknown keys {sorted(unknown)}, missing keys "
                f"{sorted(missing)}. "
                f"Expected keys {sorted(allowed)} (low and high required)."
            )
        try:
            return cls(**dict(data))
        except InvalidInputError as err:
            raise ConfigError(f"Invalid intensity normaliser config: {err}") from err


def _out_range(out_range: Sequence[float]) -> tuple[float, float]:
    values = tuple(float(v) for v in out_range)
    if len(values) != 2 or not values[1] > values[0]:
        raise InvalidInputError(
            f"out_range must be (min, max) with min < max, e.g. (0, 1) or (-1, 1); got {out_range}."
        )
    return values  # type: ignore[return-value]


def ct_window(
    array: np.ndarray | Volume, preset: str | tuple[float, float], out_range: Sequence[float] = (0.0, 1.0)
) -> np.ndarray | Volume:
    """Apply a CT window given by preset name or ``(level, width)`` in HU; float32 result in ``out_range``."""
    if isinstance(preset, str):
        norm = IntensityNormalizer.from_ct_preset(preset, out_range)
    else:
        level, width = preset
        norm = IntensityNormalizer.from_window(level, width, out_range)
    return norm.forward(array)


def percentile_normalizer(
    array: np.ndarray | Volume,
    mask: np.ndarray | Volume | str | None = None,
    *,
    lower: float = 0.5,
    upper: float = 99.5,
    out_range: Sequence[float] = (0.0, 1.0),
    clip: bool = True,
) -> IntensityNormalizer:
    """Normaliser mapping the ``lower``/``upper`` percentiles of ``array`` to ``out_range`` (MR images).

    Percentiles are taken inside ``mask`` (non-zero voxels of an array/label map), inside the non-zero
    foreground with ``mask="nonzero"`` (skull-stripped or background-zeroed scans), or over all voxels.
    """
    arr = _finite_array(array, "The image")
    if not 0.0 <= lower < upper <= 100.0:
        raise InvalidInputError(f"Percentiles must satisfy 0 <= lower < upper <= 100; got {lower}, {upper}.")
    if isinstance(mask, str):
        if mask != "nonzero":
            raise InvalidInputError(f"mask must be an array, a label map, 'nonzero' or None; got {mask!r}.")
        selected = arr[arr != 0]
    elif mask is not None:
        mask_arr = np.asarray(mask.array if isinstance(mask, Volume) else mask)
        if mask_arr.shape != arr.shape:
            raise InvalidInputError(f"mask shape {mask_arr.shape} differs from image shape {arr.shape}.")
        selected = arr[mask_arr != 0]
    else:
        selected = arr.reshape(-1)
    if selected.size == 0:
        raise InvalidInputError("The mask selects no voxels; percentiles need at least one voxel inside it.")
    low, high = np.percentile(selected.astype(np.float64), [lower, upper])
    lo, hi = _out_range(out_range)
    return IntensityNormalizer(float(low), float(high), lo, hi, clip, "percentile", f"p{lower:g}-p{upper:g}")

# ---- normalisation specs: the strings a checkpoint stores for its input contract -------------------------
NORMALIZATIONS_HELP = (
    "'percentile' (0.5-99.5th percentile -> [0, 1]), 'percentile_nonzero' (same over non-zero voxels, for "
    "skull-stripped MR), 'zscore', 'ct:PRESET' (e.g. ct:abdomen), 'ct:LEVEL,WIDTH' (HU) or 'none'"
)


def check_normalization(spec: str) -> str:
    """Validate a normalisation name (see `normalize_intensity`); returns it unchanged."""
    if spec in ("none", "percentile", "percentile_nonzero", "zscore"):
        return spec
    if spec.startswith("ct:"):
        _ct_normalizer(spec)
        return spec
    raise InvalidInputError(f"Unknown normalization {spec!r}; use {NORMALIZATIONS_HELP}.")


def _ct_normalizer(spec: str) -> IntensityNormalizer:
    body = spec[3:].strip()
    if "," in body:
        try:
            level, width = (float(v) for v in body.split(","))
        except ValueError as error:
            raise InvalidInputError(f"normalization {spec!r}: write ct:LEVEL,WIDTH in HU, e.g. ct:40,400.") from error
        return IntensityNormalizer.from_window(level, width)
    return IntensityNormalizer.from_ct_preset(body)


def fit_normalizer(array: np.ndarray, spec: str) -> IntensityNormalizer | None:
    """The linear (invertible) map of ``spec`` fitted to ``array``; None for 'none', 'zscore' and images with
    nothing to scale (constant, or no non-zero voxel for 'percentile_nonzero')."""
    if spec.startswith("ct:"):
        return _ct_normalizer(spec)
    if spec not in ("percentile", "percentile_nonzero"):
        return None
    mask = "nonzero" if spec == "percentile_nonzero" else None
    if mask == "nonzero" and not np.any(array != 0):
        return None
    try:
        return percentile_normalizer(array, mask)
    except InvalidInputError:
        return None  # constant image


def normalize_intensity(array: np.ndarray, spec: str) -> np.ndarray:
    """Map raw intensities to the network's range, per image (so any scanner scale works).

    Constant images (nothing to scale) become zeros instead of failing.
    """
    arr = np.asarray(array, dtype=np.float32)
    if spec == "none":
        return arr.copy()
    if spec == "zscore":
        std = float(arr.std())
        return ((arr - float(arr.mean())) / std).astype(np.float32) if std > 0 else np.zeros_like(arr)
    normalizer = fit_normalizer(arr, spec)
    return np.zeros_like(arr) if normalizer is None else normalizer.forward(arr)
