"""Extraction settings mirroring pyradiomics' parameter names, so a pyradiomics params dict can be reused."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from napari_medgen.errors import ConfigError
from napari_medgen.radiomics.params_schema import check_settings

_WEIGHTING_NORMS = (None, "no_weighting", "infinity", "euclidean", "manhattan")
_INTERPOLATORS = ("sitkNearestNeighbor", "sitkLinear", "sitkBSpline", "sitkGaussian", "sitkLabelGaussian",
                  "sitkHammingWindowedSinc", "sitkCosineWindowedSinc", "sitkWelchWindowedSinc",
                  "sitkLanczosWindowedSinc", "sitkBlackmanWindowedSinc")


@dataclass(frozen=True)
class RadiomicsSettings:
    """Every setting that changes feature values (names and defaults as in pyradiomics 3)."""

    binWidth: float = 25.0
    binCount: int | None = None
    resampledPixelSpacing: tuple[float, ...] | None = None
    interpolator: str | None = "sitkBSpline"
    padDistance: int = 5
    normalize: bool = False
    normalizeScale: float = 1.0
    removeOutliers: float | None = None
    voxelArrayShift: float = 0.0
    label: int = 1
    force2D: bool = False
    force2Ddimension: int = 0
    resegmentRange: tuple[float, ...] | None = None
    resegmentMode: str = "absolute"
    resegmentShape: bool = False
    minimumROIDimensions: int = 2
    minimumROISize: int | None = None
    distances: tuple[int, ...] = (1,)
    symmetricalGLCM: bool = True
    weightingNorm: str | None = None
    gldm_a: float = 0.0
    preCrop: bool = False
    correctMask: bool = False
    additionalInfo: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.binCount is None and not self.binWidth > 0:
            raise ConfigError(f"binWidth must be > 0; got {self.binWidth}. Use e.g. binWidth=25.")
        if self.binCount is not None and int(self.binCount) < 1:
            raise ConfigError(f"binCount must be >= 1; got {self.binCount}.")
        if self.weightingNorm not in _WEIGHTING_NORMS:
            raise ConfigError(f"weightingNorm must be one of {_WEIGHTING_NORMS}; got {self.weightingNorm!r}.")
        if self.resegmentMode not in ("absolute", "relative", "sigma"):
            raise ConfigError(f"resegmentMode must be absolute, relative or sigma; got {self.resegmentMode!r}.")
        if self.interpolator is not None and self.interpolator not in _INTERPOLATORS:
            raise ConfigError(f"Unknown interpolator {self.interpolator!r}; use one of {_INTERPOLATORS}.")
        if self.force2Ddimension not in (0, 1, 2):
            raise ConfigError(f"force2Ddimension must be 0 (z), 1 (y) or 2 (x); got {self.force2Ddimension}.")
        if not self.distances or min(int(d) for d in self.distances) < 1:
            raise ConfigError(f"distances must be positive integers; got {self.distances}.")

    @classmethod
    def from_any(cls, settings: RadiomicsSettings | Mapping[str, Any] | None) -> RadiomicsSettings:
        """Accept an instance, a pyradiomics-style dict (checked against pyradiomics' schema; valid keys without an
        effect on the Original image are kept in ``extra``) or None."""
        if settings is None:
            return cls()
        if isinstance(settings, RadiomicsSettings):
            return settings
        if not isinstance(settings, Mapping):
            raise ConfigError(f"settings must be a RadiomicsSettings or a dict; got {type(settings).__name__}.")
        check_settings(settings)
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in settings.items():
            if key in known:
                kwargs[key] = value
            else:
                extra[key] = value
        for key in ("resampledPixelSpacing", "resegmentRange", "distances"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        if kwargs.get("binCount") is not None:
            kwargs["binCount"] = int(kwargs["binCount"])
        for key in ("binWidth", "normalizeScale", "voxelArrayShift", "gldm_a"):
            if kwargs.get(key) is not None:
                kwargs[key] = float(kwargs[key])
        for key in ("binWidth", "normalizeScale", "voxelArrayShift", "gldm_a", "padDistance",
                    "minimumROIDimensions", "force2Ddimension", "label", "interpolator"):
            if key in kwargs and kwargs[key] is None and key != "interpolator":
                del kwargs[key]
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_baseline_string(cls, text: str) -> RadiomicsSettings:
        """Parse the ``diagnostics_Configuration_Settings`` cell of a pyradiomics baseline CSV."""
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise ConfigError(f"Cannot parse radiomics settings {text[:80]!r}: {exc}") from exc
        if not isinstance(value, dict):
            raise ConfigError(f"Radiomics settings must be a dict literal; got {type(value).__name__}.")
        return cls.from_any(value)


def positive_spacing(values: Any, count: int, what: str) -> np.ndarray:
    """``values`` as ``count`` positive finite millimetres (float64), else `InvalidInputError` naming ``what``."""
    from napari_medgen.errors import InvalidInputError

    spacing = np.asarray(values, dtype=np.float64).reshape(-1)
    if spacing.shape != (count,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InvalidInputError(f"{what} must be {count} positive values in mm; got {values!r}.")
    return spacing
