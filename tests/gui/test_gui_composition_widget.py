"""The "Tumour composition" dock widget in a real viewer: layers in, composite image + placed tumour labels out;
a missing target and T' > steps are reported and add nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.gui


def _layers(viewer: object) -> tuple[object, object, object]:
    rng = np.random.default_rng(0)
    bg = viewer.add_image((100 + rng.normal(0, 5, (40, 50))).astype(np.float32), name="background")
    oy, ox = np.mgrid[:30, :30]
    mask = ((oy - 15) ** 2 + (ox - 14) ** 2 < 36).astype(np.uint8)
    obj = viewer.add_image((60 + 120 * mask + rng.normal(0, 5, (30, 30))).astype(np.float32), name="object")
    labels = viewer.add_labels(mask, name="tumour")
    return bg, obj, labels


def _widget(viewer: object, model: str) -> object:
    from napari_medgen.widgets.composition import CompositionWidget

    widget = CompositionWidget(viewer, model=model)
    viewer.window.add_dock_widget(widget, name="Tumour composition")
    widget.reset_choices()
    return widget


def test_point_target_gives_composite_and_labels(make_napari_viewer, qtbot, tiny_seg2img: Path) -> None:
    viewer = make_napari_viewer()
    bg, obj, labels = _layers(viewer)
    points = viewer.add_points([[20.0, 25.0]], name="target")
    widget = _widget(viewer, str(tiny_seg2img))
    widget._background.value, widget._object.value, widget._object_labels.value = bg, obj, labels
    widget._points.value = points
    widget._steps.value, widget._t_prime.value, widget._tau.value = 6, 3, 1
    n_layers = len(viewer.layers)
    widget._run.clicked.emit()
    qtbot.waitUntil(lambda: widget.last_layers is not None or widget._status.value.startswith("error"),
                    timeout=120000)
    assert widget.last_layers is not None, widget._status.value
    image, placed = widget.last_layers
    assert len(viewer.layers) == n_layers + 2
    assert image.data.shape == (40, 50) and placed.data.shape == (40, 50)
    ys, xs = np.nonzero(placed.data)
    assert abs(ys.mean() - 20) < 1.5 and abs(xs.mean() - 25) < 1.5
    outside = np.ones((40, 50), bool)
    outside[ys.min() - 3: ys.max() + 4, xs.min() - 3: xs.max() + 4] = False
    assert np.array_equal(image.data[outside], bg.data[outside])
    assert tuple(image.contrast_limits) == tuple(bg.contrast_limits)


def test_rectangle_sets_place_and_size(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer()
    bg, obj, labels = _layers(viewer)
    shapes = viewer.add_shapes([np.array([[5.0, 5.0], [5.0, 35.0], [35.0, 35.0], [35.0, 5.0]])],
                               shape_type="rectangle", name="box")
    widget = _widget(viewer, "")
    widget._background.value, widget._object.value, widget._object_labels.value = bg, obj, labels
    widget._shapes.value = shapes
    widget._method.value = "copy-paste"
    widget._run.clicked.emit()
    qtbot.waitUntil(lambda: widget.last_layers is not None or widget._status.value.startswith("error"),
                    timeout=60000)
    assert widget.last_layers is not None, widget._status.value
    placed = widget.last_layers[1].data
    ys, xs = np.nonzero(placed)
    assert abs(ys.mean() - 20) < 2 and abs(xs.mean() - 20) < 2
    assert placed.sum() > 2.5 * labels.data.sum()  # enlarged to fill the 30x30 rectangle


def test_missing_target_and_bad_t_prime_are_reported(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer()
    bg, obj, labels = _layers(viewer)
    widget = _widget(viewer, "")
    widget._background.value, widget._object.value, widget._object_labels.value = bg, obj, labels
    widget._method.value = "copy-paste"
    n_layers = len(viewer.layers)
    widget._run.clicked.emit()
    assert widget._status.value.startswith("error") and "Mark the target" in widget._status.value
    widget._points.value = viewer.add_points([[20.0, 25.0]], name="target")
    widget._steps.value, widget._t_prime.value = 5, 9
    widget._run.clicked.emit()
    assert "cannot exceed" in widget._status.value
    assert len(viewer.layers) == n_layers + 1 and widget.last_layers is None
