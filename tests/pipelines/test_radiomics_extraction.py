"""Radiomics extraction as jobs: the same values as `features_for`, one event per class, Cancel, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_medgen.core.io import write_volume
from napari_medgen.core.progress import CancelToken, ProgressEvent, run_job
from napari_medgen.errors import CancelledError, ConfigError, InvalidInputError
from napari_medgen.pipelines.radiomics_extraction import (
    RadiomicsResult,
    extract_features,
    extract_features_job,
    feature_rows_job,
)
from napari_medgen.radiomics.extractor import DEFAULT_CLASSES
from napari_medgen.radiomics.params import RadiomicsParams, params_from_mapping
from napari_medgen.radiomics.settings import RadiomicsSettings
from napari_medgen.radiomics.table import features_for, iter_feature_rows
from napari_medgen.sample_data import make_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=(20, 32, 32), spacing=(3.0, 2.0, 2.0), seed=5)


def _same(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert list(actual) == list(expected)  # same names, same order
    for name, value in expected.items():
        assert actual[name] == value or (np.isnan(value) and np.isnan(actual[name])), name


def test_values_equal_features_for(phantom) -> None:
    image, labels = phantom
    params = RadiomicsParams(RadiomicsSettings())
    result = extract_features(image, labels, 1, params)
    assert isinstance(result, RadiomicsResult)
    _same(result.features, features_for(image, labels, 1, params))
    assert result.report == {"label": 1, "feature_classes": list(DEFAULT_CLASSES),
                             "n_features": len(result.features), "warnings": []}


def test_params_with_chosen_features_and_settings_as_params(phantom) -> None:
    image, labels = phantom
    params = params_from_mapping({"setting": {"binWidth": 10, "label": 2},
                                  "featureClass": {"firstorder": ["Mean", "Entropy"], "glcm": []}})
    result = extract_features(image, labels, None, params)  # label from the params
    _same(result.features, features_for(image, labels, 2, params))
    assert result.report["label"] == 2 and result.report["feature_classes"] == ["firstorder", "glcm"]
    assert {n.split("_")[1] for n in result.features} == {"firstorder", "glcm"}
    settings = {"binWidth": 10}
    _same(extract_features(image, labels, 1, settings).features,
          features_for(image, labels, 1, RadiomicsParams(RadiomicsSettings.from_any(settings))))


def test_one_event_per_feature_class(phantom) -> None:
    image, labels = phantom
    events: list[ProgressEvent] = []
    run_job(extract_features_job(image, labels, 1), events.append)
    n = len(DEFAULT_CLASSES)
    assert [(e.step, e.total) for e in events] == [(i + 1, n) for i in range(n)]
    assert [e.message for e in events] == [f"{cls} done" for cls in DEFAULT_CLASSES]
    assert {e.stage for e in events} == {"radiomics"}


def test_cancel_between_classes_raises_and_returns_nothing(phantom) -> None:
    image, labels = phantom
    token = CancelToken()
    seen: list[ProgressEvent] = []

    def cancel_after_two(event: ProgressEvent) -> None:
        seen.append(event)
        if event.step == 2:
            token.cancel()

    with pytest.raises(CancelledError):
        run_job(extract_features_job(image, labels, 1), cancel_after_two, token)
    assert [e.step for e in seen] == [1, 2]


@pytest.mark.parametrize(("kwargs", "error", "text"), [
    ({"label": 9}, InvalidInputError, "Label 9 is not present"),
    ({"label": -1}, InvalidInputError, "non-negative"),
    ({"params": 3}, InvalidInputError, "params must be"),
    ({"params": {"binWidth": -1}}, ConfigError, "binWidth"),
    ({"params": RadiomicsParams(RadiomicsSettings(), ("colour",))}, InvalidInputError, "Unknown radiomics"),
])
def test_bad_input_is_a_clear_error(phantom, kwargs, error, text) -> None:
    image, labels = phantom
    with pytest.raises(error, match=text):
        extract_features(image, labels, **kwargs)


def test_image_and_labels_must_be_volumes(phantom) -> None:
    image, labels = phantom
    with pytest.raises(InvalidInputError, match="image must be a Volume"):
        extract_features(np.zeros((4, 4, 4)), labels)
    with pytest.raises(InvalidInputError, match="image must be a Volume"):
        extract_features(labels, labels)
    with pytest.raises(InvalidInputError, match="labels must be a LabelMap"):
        extract_features(image, np.zeros((4, 4, 4)))


def _write_cases(root: Path, n: int) -> list[tuple[str, Path, Path]]:
    pairs = []
    for i in range(n):
        image, labels = make_phantom(shape=(12, 24, 24), spacing=(2.0, 2.0, 2.0), seed=i)
        pairs.append((f"case{i}", write_volume(image, root / f"case{i}.nii.gz"),
                      write_volume(labels, root / f"case{i}_seg.nii.gz")))
    return pairs


def test_feature_rows_job_gives_the_table_rows(tmp_path: Path) -> None:
    pairs = _write_cases(tmp_path, 2)
    params = params_from_mapping({"featureClass": {"firstorder": [], "shape": []}})
    events: list[ProgressEvent] = []
    rows = run_job(feature_rows_job(pairs, None, params), events.append)
    assert [(e.step, e.total, e.message) for e in events] == [(1, 2, "case0"), (2, 2, "case1")]
    expected = list(iter_feature_rows(pairs, None, params))
    assert [row["Case"] for row in rows] == ["case0", "case1"]
    for row, want in zip(rows, expected, strict=True):
        _same({k: v for k, v in row.items() if k.startswith("original_")},
              {k: v for k, v in want.items() if k.startswith("original_")})
        assert row["Label"] == 1


def test_feature_rows_job_cancels_between_cases(tmp_path: Path) -> None:
    pairs = _write_cases(tmp_path, 3)
    token = CancelToken()
    with pytest.raises(CancelledError):
        run_job(feature_rows_job(pairs, 1, None), lambda event: token.cancel(), token)


def test_discretisation_warning_on_normalised_scan_and_not_on_raw() -> None:
    import numpy as np

    from napari_medgen.core.volume import LabelMap, Volume
    from napari_medgen.pipelines.radiomics_extraction import extract_features

    rng = np.random.default_rng(0)
    raw = rng.normal(400, 60, (16, 16, 16)).astype(np.float32)
    mask = np.zeros((16, 16, 16), np.uint8)
    mask[4:12, 4:12, 4:12] = 1
    labels = LabelMap(mask)
    quiet = extract_features(Volume(raw), labels, 1, {"binWidth": 25})
    assert quiet.report["warnings"] == []
    z = extract_features(Volume((raw - 400) / 60), labels, 1)
    [warning] = z.report["warnings"]
    assert "grey level(s) occupied with binWidth 25" in warning and "binWidth to about" in warning
    assert extract_features(Volume((raw - 400) / 60), labels, 1, {"binCount": 32}).report["warnings"] == []
    shape_only = extract_features(Volume((raw - 400) / 60), labels, 1, _shape_and_firstorder())
    assert shape_only.report["warnings"] == []


def _shape_and_firstorder():  # noqa: ANN202
    from napari_medgen.radiomics.params import params_from_mapping

    return params_from_mapping({"featureClass": {"shape": [], "firstorder": []}})


def test_label_zero_measures_all_labels_together() -> None:
    import numpy as np

    from napari_medgen.core.volume import LabelMap, Volume
    from napari_medgen.pipelines.radiomics_extraction import extract_features

    arr = np.zeros((10, 10, 10), np.uint8)
    arr[2:5, 2:8, 2:8] = 1
    arr[5:8, 2:8, 2:8] = 4
    image = Volume(np.random.default_rng(1).normal(size=(10, 10, 10)).astype(np.float32))
    together = extract_features(image, LabelMap(arr), 0, _shape_and_firstorder())
    assert together.report["label"] == "all"
    assert together.features["original_shape_VoxelVolume"] == pytest.approx(216.0)
