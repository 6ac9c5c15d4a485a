"""pyradiomics' parameter schema for the ``setting`` section, checked before any feature is computed.

Without it a typo (``binwidth``) or a wrong type (``distances: 2``) either crashed deep inside the extractor or was
ignored, leaving the user with default settings they believe they changed. The key names, types and ranges follow
pyradiomics 3's ``radiomics/schemas/paramSchema.yaml``; a test checks this table against the installed file. Keys
that only matter to filtered image types (LoG ``sigma``, wavelet, LBP) are valid but have no effect here, because
only the Original image is computed.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from napari_medgen.errors import ConfigError


@dataclass(frozen=True)
class SettingRule:
    """Type (``int``, ``float``, ``bool``, ``str``, ``any``), whether it is a list of that type, and its range."""

    kind: str
    seq: bool = False
    min: float | None = None
    min_exclusive: bool = False
    max: float | None = None


_R = SettingRule
#: pyradiomics 3 ``setting`` keys (paramSchema.yaml)
SETTING_RULES: dict[str, SettingRule] = {
    # pyradiomics' minimum is 1; 0 is kept (our extension) so that a single voxel can be measured on purpose
    "minimumROIDimensions": _R("int", min=0, max=3),
    "minimumROISize": _R("int", min=0, min_exclusive=True),
    "geometryTolerance": _R("float", min=0, min_exclusive=True),
    "correctMask": _R("bool"),
    "additionalInfo": _R("bool"),
    "label": _R("int", min=0, min_exclusive=True),
    "label_channel": _R("int", min=0),
    "binWidth": _R("float", min=0, min_exclusive=True),
    "binCount": _R("int", min=0, min_exclusive=True),
    "normalize": _R("bool"),
    "normalizeScale": _R("float", min=0, min_exclusive=True),
    "removeOutliers": _R("float", min=0, min_exclusive=True),
    "resampledPixelSpacing": _R("float", seq=True, min=0),
    "interpolator": _R("any"),
    "padDistance": _R("int", min=0),
    "distances": _R("int", seq=True, min=0, min_exclusive=True),
    "force2D": _R("bool"),
    "force2Ddimension": _R("int", min=0, max=2),
    "resegmentRange": _R("float", seq=True),
    "resegmentMode": _R("str"),
    "resegmentShape": _R("bool"),
    "preCrop": _R("bool"),
    "sigma": _R("float", seq=True, min=0, min_exclusive=True),
    "start_level": _R("int", min=0),
    "level": _R("int", min=0, min_exclusive=True),
    "wavelet": _R("str"),
    "gradientUseSpacing": _R("bool"),
    "lbp2DRadius": _R("float", min=0, min_exclusive=True),
    "lbp2DSamples": _R("int", min=1),
    "lbp2DMethod": _R("str"),
    "lbp3DLevels": _R("int", min=1),
    "lbp3DIcosphereRadius": _R("float", min=0, min_exclusive=True),
    "lbp3DIcosphereSubdivision": _R("int", min=0),
    "voxelArrayShift": _R("float"),
    "symmetricalGLCM": _R("bool"),
    "weightingNorm": _R("any"),
    "gldm_a": _R("float", min=0),
}

_EXAMPLES = {"int": "a whole number, e.g. 1", "float": "a number, e.g. 25", "bool": "true or false",
             "str": "a text value"}


def closest(name: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` for the nearest valid name (case-insensitive first), or an empty string."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if name.lower() in lowered:
        return f" (did you mean {lowered[name.lower()]!r}?)"
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _scalar_ok(value: Any, kind: str) -> bool:
    if kind == "any" or value is None:
        return True
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def _in_range(value: float, rule: SettingRule) -> bool:
    if rule.min is not None and (value < rule.min or (rule.min_exclusive and value == rule.min)):
        return False
    return rule.max is None or value <= rule.max


def _range_text(rule: SettingRule) -> str:
    parts = []
    if rule.min is not None:
        parts.append(f"{'>' if rule.min_exclusive else '>='} {rule.min:g}")
    if rule.max is not None:
        parts.append(f"<= {rule.max:g}")
    return " and ".join(parts)


def check_setting(key: str, value: Any) -> None:
    """`ConfigError` naming ``key`` when it is not a pyradiomics setting or ``value`` has the wrong type/range."""
    rule = SETTING_RULES.get(key)
    if rule is None:
        raise ConfigError(f"Unknown radiomics setting {key!r}{closest(key, SETTING_RULES)}; valid settings are "
                          "pyradiomics' (binWidth, binCount, label, distances, resampledPixelSpacing, ...).")
    if value is None:
        return
    items = value if rule.seq else [value]
    if rule.seq and (isinstance(value, str | bytes | Mapping) or not hasattr(value, "__iter__")):
        raise ConfigError(f"Radiomics setting {key!r} must be a list of {rule.kind} values, e.g. {key}: [1]; "
                          f"got {value!r}.")
    for item in items:
        if not _scalar_ok(item, rule.kind):
            what = f"a list of {rule.kind} values" if rule.seq else _EXAMPLES.get(rule.kind, rule.kind)
            raise ConfigError(f"Radiomics setting {key!r} must be {what}; got {item!r}.")
        if rule.kind in ("int", "float") and not _in_range(float(item), rule):
            raise ConfigError(f"Radiomics setting {key!r} must be {_range_text(rule)}; got {item!r}.")


def check_settings(settings: Mapping[str, Any]) -> None:
    """Check every key of a ``setting`` mapping (see `check_setting`)."""
    for key, value in settings.items():
        check_setting(str(key), value)
