"""Radiomics extraction as jobs: one ROI class by class (progress, Cancel), or a table of many cases.

The values are those of `napari_medgen.radiomics.table.features_for` (the engine behind ``medgen radiomics``),
computed one feature class at a time so a front end can show progress and stop between classes. Radiomics runs
on the CPU (numpy + numba kernels): these jobs take no ``device``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_medgen.core.progress import Job, ProgressEvent, run_job
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import InvalidInputError
from napari_medgen.radiomics.discretisation import MIN_OCCUPIED_BINS, TEXTURE_CLASSES, discretisation_warning
from napari_medgen.radiomics.params import RadiomicsParams
from napari_medgen.radiomics.settings import RadiomicsSettings


@dataclass(frozen=True)
class RadiomicsResult:
    """pyradiomics-named features of one ROI (``original_<class>_<Feature>``) and what produced them."""

    features: dict[str, float]
    report: dict[str, Any] = field(default_factory=dict)


def as_params(params: RadiomicsParams | RadiomicsSettings | Mapping[str, Any] | None) -> RadiomicsParams:
    """``params`` as `RadiomicsParams`: None = pyradiomics defaults; settings (object or mapping) = all classes."""
    if params is None:
        return RadiomicsParams(RadiomicsSettings())
    if isinstance(params, RadiomicsParams):
        return params
    if isinstance(params, RadiomicsSettings | Mapping):
        return RadiomicsParams(RadiomicsSettings.from_any(params))
    raise InvalidInputError(
        f"params must be RadiomicsParams (load_params(file)), RadiomicsSettings or a settings mapping; "
        f"got {type(params).__name__}."
    )


def _feature_classes(params: RadiomicsParams) -> list[str]:
    """The classes to compute, validated (unknown names raise `InvalidInputError`)."""
    from napari_medgen.radiomics.extractor import DEFAULT_CLASSES, feature_names

    classes = list(params.feature_classes) if params.feature_classes is not None else list(DEFAULT_CLASSES)
    feature_names(classes)  # raises on an unknown class
    if not classes:
        raise InvalidInputError("No radiomics feature class requested; list at least one under featureClass.")
    return classes


def extract_features_job(
    image: Volume,
    labels: LabelMap,
    label: int | None = None,
    params: RadiomicsParams | RadiomicsSettings | Mapping[str, Any] | None = None,
) -> Job[RadiomicsResult]:
    """Job form of `extract_features`: one event per feature class, each a cancellation point.

    ``label`` defaults to the params' ``label`` setting (1); ``label=0`` measures every non-zero label together
    (all labels as one ROI). The report's ``warnings`` lists a degenerate discretisation
    (`discretisation_warning`).
    """
    from napari_medgen.radiomics.table import features_for

    if not isinstance(image, Volume) or isinstance(image, LabelMap):
        raise InvalidInputError(f"image must be a Volume (a scan); got {type(image).__name__}.")
    if not isinstance(labels, Volume):
        raise InvalidInputError(f"labels must be a LabelMap on the image's grid; got {type(labels).__name__}.")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int | np.integer) or label < 0):
        raise InvalidInputError(f"label must be a non-negative integer label value; got {label!r}.")
    loaded = as_params(params)
    classes = _feature_classes(loaded)
    effective = loaded.settings.label if label is None else int(label)
    all_labels = effective == 0
    if all_labels:
        if not np.any(np.asarray(labels.array)):
            raise InvalidInputError("The labels layer is empty: draw or load a region first.")
        labels = labels.as_labels((np.asarray(labels.array) != 0).astype(np.uint8))
        effective = 1
    features: dict[str, float] = {}
    for index, cls in enumerate(classes):
        features.update(features_for(image, labels, effective, replace(loaded, feature_classes=(cls,))))
        yield ProgressEvent(index + 1, len(classes), "radiomics", f"{cls} done")
    warnings = []
    if set(classes) & set(TEXTURE_CLASSES):
        warning = discretisation_warning(image, np.asarray(labels.array) == effective, loaded.settings)
        if warning is not None:
            warnings.append(warning)
    report = {"label": "all" if all_labels else effective, "feature_classes": classes, "n_features": len(features),
              "warnings": warnings}
    return RadiomicsResult(features, report)


def extract_features(
    image: Volume,
    labels: LabelMap,
    label: int | None = None,
    params: RadiomicsParams | RadiomicsSettings | Mapping[str, Any] | None = None,
) -> RadiomicsResult:
    """pyradiomics-named features of one label of ``labels`` on ``image`` (the same values as ``medgen radiomics``)."""
    return run_job(extract_features_job(image, labels, label, params))


def feature_rows_job(
    pairs: Sequence[tuple[str, Path, Path]],
    label: int | None,
    params: RadiomicsParams | RadiomicsSettings | Mapping[str, Any] | None,
) -> Job[list[dict[str, Any]]]:
    """Feature table rows of many (case, image file, label file) triples: one event per case, each a
    cancellation point; the rows are returned only when every case is done."""
    from napari_medgen.radiomics.table import iter_feature_rows

    pairs = list(pairs)
    rows: list[dict[str, Any]] = []
    for index, row in enumerate(iter_feature_rows(pairs, label, as_params(params))):
        rows.append(row)
        yield ProgressEvent(index + 1, len(pairs), "radiomics", str(row["Case"]))
    return rows


__all__ = ["MIN_OCCUPIED_BINS", "RadiomicsResult", "as_params", "discretisation_warning", "extract_features",
           "extract_features_job", "feature_rows_job"]
