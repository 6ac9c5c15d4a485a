"""The "Radiomics features" dock widget in a real viewer: layers in, grouped table and CSV out."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from napari_medgen.layers import volume_to_layer_data
from napari_medgen.radiomics import extract_features
from napari_medgen.sample_data import make_phantom

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.gui


@pytest.fixture
def viewer_with_phantom(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = make_phantom(shape=(32, 48, 48), spacing=(3.0, 3.0, 4.0), seed=3)
    for data, kwargs, kind in (volume_to_layer_data(image, "phantom"), volume_to_layer_data(labels, "tumour")):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    return viewer, image, labels


def test_widget_table_matches_backend_and_exports(viewer_with_phantom, qtbot, tmp_path: Path) -> None:
    from napari_medgen.widgets.radiomics_table import RadiomicsTableWidget

    viewer, image, labels = viewer_with_phantom
    widget = RadiomicsTableWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Radiomics features")
    widget._label_value.value = 1
    widget._compute.clicked.emit()  # real path: thread worker
    qtbot.waitUntil(lambda: bool(widget.features), timeout=60000)
    expected = extract_features(image, labels, 1)
    assert widget.features.keys() == expected.keys()
    for name, value in expected.items():
        assert widget.features[name] == pytest.approx(value, rel=1e-9, nan_ok=True)
    rows = widget.table.value["data"]
    classes = [row[0] for row in rows]
    assert classes[0] == "shape" and "glcm" in classes and classes == sorted(classes, key=classes.index)
    units = {row[1]: row[3] for row in rows}
    assert units["VoxelVolume"] == "mm3"

    out = widget.export_csv(tmp_path / "features.csv")
    with out.open() as handle:
        [row] = list(csv.DictReader(handle))
    assert float(row["original_shape_VoxelVolume"]) == pytest.approx(expected["original_shape_VoxelVolume"])
    assert row["Label"] == "1"


def test_widget_reports_absent_label_without_crashing(viewer_with_phantom, qtbot) -> None:
    from napari_medgen.widgets.radiomics_table import RadiomicsTableWidget

    viewer, _, _ = viewer_with_phantom
    widget = RadiomicsTableWidget(viewer)
    widget._label_value.value = 9
    widget._compute.clicked.emit()
    qtbot.waitUntil(lambda: widget._status.value.startswith("error"), timeout=60000)
    assert "9" in widget._status.value
    assert widget.features == {}


def test_zscored_scan_warns_all_labels_and_error_clears_table(make_napari_viewer, qtbot) -> None:
    import numpy as np

    from napari_medgen.widgets.radiomics_table import RadiomicsTableWidget

    viewer = make_napari_viewer()
    image, labels = make_phantom(shape=(24, 32, 32), spacing=(1.0, 1.0, 1.0), seed=5)
    arr = np.asarray(image.array, dtype=np.float64)
    zscored = image.with_array(((arr - arr.mean()) / arr.std()).astype(np.float32))
    two = labels.as_labels(np.where(np.asarray(labels.array) > 0, 1, 0).astype(np.uint8))
    two_arr = np.asarray(two.array).copy()
    two_arr[:, :, :16][two_arr[:, :, :16] == 1] = 2  # split the tumour into labels 1 and 2
    two = two.as_labels(two_arr)
    for data, kwargs, kind in (volume_to_layer_data(zscored, "z"), volume_to_layer_data(two, "tumour")):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = RadiomicsTableWidget(viewer)
    widget._label_value.value = 0  # all labels
    widget._compute.clicked.emit()
    qtbot.waitUntil(lambda: bool(widget.features), timeout=60000)
    assert "all labels" in widget._status.value and "grey level" in widget._status.value
    assert widget.features["original_shape_VoxelVolume"] == pytest.approx(float((two_arr > 0).sum()))
    widget._label_value.value = 9  # absent: the old table must not stay on screen
    widget._compute.clicked.emit()
    qtbot.waitUntil(lambda: widget._status.value.startswith("error"), timeout=60000)
    assert widget.features == {} and widget.table.value["data"] == []
