"""pyradiomics parameter files (YAML) -> our settings, so users keep the params files they already have.

A pyradiomics params file has three sections: ``setting`` (binWidth, label, resampledPixelSpacing...),
``imageType`` (which filtered images to compute on) and ``featureClass`` (which classes, optionally
which features of each). We compute on the original image only; other image types are refused with
a clear message rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_medgen.errors import ConfigError
from napari_medgen.radiomics.params_schema import closest
from napari_medgen.radiomics.settings import RadiomicsSettings

_SECTIONS = ("setting", "imageType", "featureClass", "voxelSetting")


@dataclass(frozen=True)
class RadiomicsParams:
    """Settings, feature classes and (optionally) a per-class list of wanted features."""

    settings: RadiomicsSettings
    feature_classes: tuple[str, ...] | None = None
    wanted: Mapping[str, tuple[str, ...]] | None = None

    def keep(self, name: str) -> bool:
        """Whether ``original_<class>_<Feature>`` was asked for."""
        if not self.wanted:
            return True
        _, cls, feature = name.split("_", 2)
        chosen = self.wanted.get(cls)
        return chosen is None or len(chosen) == 0 or feature in chosen


def params_from_mapping(data: Mapping[str, Any]) -> RadiomicsParams:
    """Interpret a parsed pyradiomics params document."""
    unknown = [key for key in data if key not in _SECTIONS]
    if unknown:
        raise ConfigError(f"Unknown section(s) {unknown} in the radiomics params; expected {list(_SECTIONS)}.")
    if data.get("voxelSetting"):
        raise ConfigError("Voxel-based (feature map) extraction is not supported; remove the voxelSetting section.")
    image_types = data.get("imageType") or {"Original": {}}
    if set(image_types) != {"Original"}:
        others = sorted(set(image_types) - {"Original"})
        raise ConfigError(
            f"Only the Original image type is computed; remove {others} from imageType "
            "(filtered images such as wavelet or LoG are not supported)."
        )
    settings = RadiomicsSettings.from_any(data.get("setting") or {})
    classes = data.get("featureClass")
    if classes is None:
        return RadiomicsParams(settings)
    if not isinstance(classes, Mapping):
        raise ConfigError("featureClass must map class names to a list of features (or an empty list for all).")
    wanted = {str(cls): tuple(feats or ()) for cls, feats in classes.items()}
    _check_feature_names(wanted)
    return RadiomicsParams(settings, tuple(wanted), wanted)


def _check_feature_names(wanted: Mapping[str, tuple[str, ...]]) -> None:
    """Unknown classes or feature names are errors with the closest valid name: ignoring them would compute
    something other than what the user asked for."""
    from napari_medgen.radiomics.extractor import FEATURE_CLASSES, feature_names

    for cls, feats in wanted.items():
        if cls not in FEATURE_CLASSES:
            raise ConfigError(f"Unknown radiomics feature class {cls!r}{closest(cls, FEATURE_CLASSES)} in "
                              f"featureClass; classes: {', '.join(FEATURE_CLASSES)}.")
        valid = [name.split("_", 2)[2] for name in feature_names([cls])]
        for feat in feats:
            if not isinstance(feat, str) or feat not in valid:
                raise ConfigError(f"Unknown {cls} feature {feat!r}{closest(str(feat), valid)} in featureClass; "
                                  f"{cls} features: {', '.join(valid)}.")


def load_params(path: str | Path) -> RadiomicsParams:
    """Read a pyradiomics-style YAML (or JSON) params file."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"Radiomics params file {file} does not exist.")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{file} is not a text file; a radiomics params file is YAML or JSON text.") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{file} is not valid YAML: {error}") from error
    if not isinstance(data, Mapping):
        raise ConfigError(f"{file} must contain a mapping with setting / imageType / featureClass sections.")
    return params_from_mapping(data)
