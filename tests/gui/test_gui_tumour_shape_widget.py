"""The "Tumour shape" dock widget in a real viewer: sliders + a point -> a labels layer on the image grid."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medgen.layers import labels_layer_to_labelmap, layer_to_volume, volume_to_layer_data
from napari_medgen.sample_data import make_phantom

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.gui


@pytest.fixture
def viewer_with_phantom_and_point(make_napari_viewer):
    viewer = make_napari_viewer()
    image, _ = make_phantom(shape=(40, 64, 64), spacing=(2.5, 2.5, 3.0), seed=1)
    data, kwargs, _ = volume_to_layer_data(image, "phantom")
    image_layer = viewer.add_image(data, **kwargs)
    centre_index = np.array([20.0, 30.0, 34.0])
    world = image_layer.data_to_world(centre_index)
    points = viewer.add_points([world], name="location")
    return viewer, image_layer, points, centre_index


def test_generate_adds_aligned_labels_layer(viewer_with_phantom_and_point, qtbot) -> None:
    from napari_medgen.widgets.tumour_shape import TumourShapeWidget

    viewer, image_layer, _, centre_index = viewer_with_phantom_and_point
    widget = TumourShapeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Tumour shape")
    use, slider = widget._controls["VoxelVolume"]
    use.value = True
    slider.value = min(max(6000.0, slider.min), slider.max)
    widget._controls["Sphericity"][0].value = False
    n_layers = len(viewer.layers)
    widget._generate.clicked.emit()
    qtbot.waitUntil(lambda: widget.last_layer is not None or widget._status.value.startswith("error"),
                    timeout=120000)
    assert widget.last_layer is not None, widget._status.value
    assert len(viewer.layers) == n_layers + 1
    image = layer_to_volume(image_layer)
    mask = labels_layer_to_labelmap(widget.last_layer, image)  # raises if not on the image grid
    assert mask.array[tuple(centre_index.astype(int))] > 0
    volume = (mask.array > 0).sum() * np.prod(mask.spacing)
    assert volume == pytest.approx(slider.value, rel=0.3)


def test_empty_points_layer_reports_error_and_adds_nothing(viewer_with_phantom_and_point, qtbot) -> None:
    from napari_medgen.widgets.tumour_shape import TumourShapeWidget

    viewer, _, points, _ = viewer_with_phantom_and_point
    points.data = np.zeros((0, 3))
    widget = TumourShapeWidget(viewer)
    n_layers = len(viewer.layers)
    widget._generate.clicked.emit()
    qtbot.waitUntil(lambda: widget._status.value.startswith("error"), timeout=60000)
    assert "points layer is empty" in widget._status.value
    assert len(viewer.layers) == n_layers


def test_changing_the_model_rescales_the_sliders(make_napari_viewer) -> None:
    from napari_medgen.pipelines.shape_generation import shape_controls
    from napari_medgen.widgets.tumour_shape import TumourShapeWidget

    widget = TumourShapeWidget(make_napari_viewer())
    widget._model.value = "shape-gan-brats"
    brats = {c.name: c for c in shape_controls("shape-gan-brats")}
    use, slider = widget._controls["VoxelVolume"]
    assert (slider.min, slider.max) == pytest.approx((brats["VoxelVolume"].min, brats["VoxelVolume"].max), rel=1e-6)
    assert slider.value == pytest.approx(brats["VoxelVolume"].default, rel=1e-6)
    assert "shape-gan-brats" in widget._status.value
    widget._model.value = "/no/such/model"
    assert widget._status.value.startswith("model:")  # a clear message, sliders left as they were
    assert slider.max == pytest.approx(brats["VoxelVolume"].max, rel=1e-6)
