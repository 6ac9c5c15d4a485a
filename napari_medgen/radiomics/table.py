"""Feature tables: one row per case, written as pyradiomics-named JSON or CSV, grouped by class for display.

Shared by ``medgen radiomics`` (files and folders in batch) and the napari feature-table widget so
both produce the same columns and the same files.
"""

from __future__ import annotations

import csv
import io as _stringio
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_medgen.core.atomic import atomic_write_text
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import InvalidInputError
from napari_medgen.radiomics.conditioning import feature_unit
from napari_medgen.radiomics.discretisation import TEXTURE_CLASSES, discretisation_warning
from napari_medgen.radiomics.params import RadiomicsParams

CLASS_ORDER = ("shape", "shape2D", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


def features_for(image: Volume, labels: LabelMap, label: int | None, params: RadiomicsParams) -> dict[str, float]:
    """Features of one label as the params ask (classes and per-class feature lists)."""
    from napari_medgen.radiomics.extractor import extract_features

    values = extract_features(image, labels, label, params.settings, params.feature_classes)
    return {name: value for name, value in values.items() if params.keep(name)}


def group_by_class(features: Mapping[str, float]) -> dict[str, list[tuple[str, float, str]]]:
    """``{class: [(feature, value, unit), ...]}`` in pyradiomics class order, for tables in the GUI."""
    groups: dict[str, list[tuple[str, float, str]]] = {}
    for name, value in features.items():
        parts = name.split("_", 2)
        if len(parts) != 3 or parts[0] != "original":
            raise InvalidInputError(f"'{name}' is not a pyradiomics feature name (original_<class>_<Feature>).")
        groups.setdefault(parts[1], []).append((parts[2], float(value), feature_unit(name)))
    return {cls: groups[cls] for cls in sorted(groups, key=lambda c: (CLASS_ORDER + (c,)).index(c))}


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; pyradiomics' NaN becomes null
    return value


def table_text(rows: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """Rows (case columns first, then features) as CSV text or JSON (an object for one row, else a list)."""
    if not rows:
        raise InvalidInputError("No feature rows to write.")
    if fmt == "json":
        clean = [{k: _json_value(v) for k, v in row.items()} for row in rows]
        return json.dumps(clean[0] if len(clean) == 1 else clean, indent=2) + "\n"
    if fmt != "csv":
        raise InvalidInputError(f"Unknown table format '{fmt}'; use .json or .csv.")
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = _stringio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return buffer.getvalue()


def write_table(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows to ``.json`` or ``.csv`` atomically."""
    out = Path(path)
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in ("json", "csv"):
        raise InvalidInputError(f"Write features to a .json or .csv file; got '{out.name}'.")
    return atomic_write_text(out, table_text(rows, suffix))


def case_row(case: str, image: str, mask: str, label: int | None, features: Mapping[str, float]) -> dict[str, Any]:
    """A table row in pyradiomics' batch layout: identification columns, then features."""
    row: dict[str, Any] = {"Case": case, "Image": image, "Mask": mask, "Label": label}
    row.update(features)
    return row


def iter_feature_rows(
    pairs: Iterable[tuple[str, Path, Path]], label: int | None, params: RadiomicsParams
) -> Iterable[dict[str, Any]]:
    """Read and extract every (case, image, label) file pair; used for folders in batch."""
    from napari_medgen.core.io import read_labels, read_volume

    effective = params.settings.label if label is None else int(label)
    for case, image_path, label_path in pairs:
        image = read_volume(image_path)
        labels = read_labels(label_path, reference=image)
        features = features_for(image, labels, effective, params)
        classes = params.feature_classes or TEXTURE_CLASSES
        if set(classes) & set(TEXTURE_CLASSES):
            warning = discretisation_warning(image, np.asarray(labels.array) == effective, params.settings)
            if warning is not None:
                warnings.warn(f"{case}: {warning}", UserWarning, stacklevel=2)
        yield case_row(case, str(image_path), str(label_path), effective, features)
