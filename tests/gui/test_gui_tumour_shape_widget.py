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
    slider.value = min(max(6.0, slider.min), slider.max)  # cm3
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
    assert volume == pytest.approx(slider.value * 1000.0, rel=0.3)


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

    widget = TumourShapeWidget(make_napari_viewer(), model="shape-gan-lesion")
    assert not widget._necrotic_use.enabled  # one-region model: no necrotic core
    widget._model.value = "shape-gan-brats"
    assert widget._necrotic_use.enabled
    brats = {c.name: c for c in shape_controls("shape-gan-brats")}
    use, slider = widget._controls["VoxelVolume"]
    assert (slider.min, slider.max) == pytest.approx((brats["VoxelVolume"].min / 1000, brats["VoxelVolume"].max / 1000),
                                                     rel=1e-6)  # shown in cm3
    assert slider.value == pytest.approx(brats["VoxelVolume"].default / 1000, rel=1e-6)
    assert slider.label == "volume (cm3)" and "VoxelVolume" in slider.tooltip
    assert "shape-gan-brats" in widget._status.value
    widget._model.value = "/no/such/model"
    assert widget._status.value.startswith("model:")  # a clear message, sliders left as they were
    assert slider.max == pytest.approx(brats["VoxelVolume"].max / 1000, rel=1e-6)


def test_brain_model_is_the_default_with_a_necrotic_core_control(viewer_with_phantom_and_point, qtbot) -> None:
    from napari_medgen.pipelines.appearance_editing import SHAPE_MODEL
    from napari_medgen.widgets.tumour_shape import TumourShapeWidget

    viewer, image_layer, _, centre_index = viewer_with_phantom_and_point
    widget = TumourShapeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Tumour shape")
    assert widget._model.value == SHAPE_MODEL == "shape-gan-brats"
    assert widget._necrotic_use.enabled and not widget._necrotic.enabled and widget._necrotic.tooltip
    use, slider = widget._controls["VoxelVolume"]
    use.value, slider.value = False, 8.0  # cm3
    widget._necrotic_use.value = True
    assert widget._necrotic.enabled
    widget._necrotic.value = 25.0
    request = widget.request()
    assert request["VoxelVolume"] == pytest.approx(8000.0)
    assert request["necrotic_core/VoxelVolume"] == pytest.approx(2000.0)
    widget._generate.clicked.emit()
    qtbot.waitUntil(lambda: widget.last_layer is not None or widget._status.value.startswith("error"),
                    timeout=120000)
    assert widget.last_layer is not None, widget._status.value
    data = np.asarray(widget.last_layer.data)
    assert {1, 2} <= set(np.unique(data).tolist())  # necrotic core (1) inside the tumour core (2)
    widget._model.value = "shape-gan-lesion"
    assert not widget._necrotic_use.enabled and not widget._necrotic_use.value
    assert "necrotic_core/VoxelVolume" not in widget.request()


def test_generated_shape_becomes_the_synthesis_shape(viewer_with_phantom_and_point, qtbot) -> None:
    from napari_medgen.widgets.tumour_shape import TumourShapeWidget
    from napari_medgen.widgets.tumour_synthesis import SHAPE_FROM_LABELS, SHAPE_FROM_SLIDERS, TumourSynthesisWidget

    viewer, image_layer, points, _ = viewer_with_phantom_and_point
    synth = TumourSynthesisWidget(viewer)
    viewer.window.add_dock_widget(synth, name="Tumour synthesis")
    assert synth._shape_from.value == SHAPE_FROM_SLIDERS and synth._points.value is points
    shape = TumourShapeWidget(viewer)
    viewer.window.add_dock_widget(shape, name="Tumour shape")
    shape._generate.clicked.emit()
    qtbot.waitUntil(lambda: shape.last_layer is not None or shape._status.value.startswith("error"),
                    timeout=120000)
    assert shape.last_layer is not None, shape._status.value
    assert shape.last_layer.metadata["medgen_shape"]["VoxelVolume"] > 0
    # the synthesis widget took the new shape with no re-selection
    assert synth._labels.value is shape.last_layer
    assert synth._shape_from.value == SHAPE_FROM_LABELS and synth._image.value is image_layer
