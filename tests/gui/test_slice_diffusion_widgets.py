"""The "Generate from labels" and "Paired generation" dock widgets in a real viewer, with tiny untrained models.

The models are random (tests/conftest.py), so these tests check the adapter: geometry of the new layers,
class checkboxes, reference/similarity wiring, cancel and error paths, and the paired stacks.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_medgen.layers import volume_to_layer_data

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.gui

SCALE = (3.0, 0.8, 1.2)
TRANSLATE = (10.0, -5.0, 2.5)


def _labels_data(shape: tuple[int, int, int] = (5, 12, 10), extra: int | None = None) -> np.ndarray:
    data = np.zeros(shape, dtype=np.uint8)
    data[:, 2:10, 2:8] = 5
    data[1:4, 4:8, 3:6] = 1
    if extra is not None:
        data[2, 5, 4] = extra
    return data


def _run(widget, qtbot, timeout: int = 120000) -> None:
    """Click Generate and wait until the run is over (Generate is disabled while a worker runs)."""
    widget._generate.clicked.emit()
    qtbot.waitUntil(lambda: widget._generate.enabled, timeout=timeout)


def _world_corners(layer) -> np.ndarray:
    shape = np.asarray(layer.data.shape)
    corners = [np.array(c) * (shape - 1) for c in np.ndindex(2, 2, 2)] + [(shape - 1) / 2.0]
    return np.array([layer.data_to_world(c) for c in corners])


@pytest.fixture
def labels_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(_labels_data(), name="tumour", scale=SCALE, translate=TRANSLATE)
    return viewer, layer


def _seg2img_widget(viewer, model, layer):
    from napari_medgen.widgets.generate_from_labels import GenerateFromLabelsWidget

    widget = GenerateFromLabelsWidget(viewer, model=str(model))
    viewer.window.add_dock_widget(widget, name="Generate from labels")
    widget._labels.value = layer
    widget._sampler.value = "ddim"  # sets the steps to the pipeline's default: choose them after
    widget._steps.value = 2
    return widget


@pytest.mark.parametrize("geometry", ["scaled_translated", "oblique_affine"])
def test_generate_adds_one_image_on_the_labels_grid(make_napari_viewer, qtbot, tiny_seg2img, oblique_labels,
                                                     geometry) -> None:
    viewer = make_napari_viewer()
    if geometry == "scaled_translated":
        layer = viewer.add_labels(_labels_data(), name="tumour", scale=SCALE, translate=TRANSLATE)
    else:
        data, kwargs, _ = volume_to_layer_data(oblique_labels, "tumour")
        layer = viewer.add_labels(data, **kwargs)
        assert not np.allclose(layer.affine.affine_matrix, np.eye(4))
    widget = _seg2img_widget(viewer, tiny_seg2img, layer)
    widget._seed.value = 3
    widget._axis.value = 1
    n_layers = len(viewer.layers)
    _run(widget, qtbot)
    assert widget.last_layer is not None, widget._status.value
    assert len(viewer.layers) == n_layers + 1
    out = widget.last_layer
    assert isinstance(out, napari.layers.Image)
    assert out.name == "tumour seg2img (seed 3)"
    assert out.data.shape == layer.data.shape and np.all(np.isfinite(out.data))
    np.testing.assert_allclose(_world_corners(out), _world_corners(layer), atol=1e-6)
    header = out.metadata["medgen"]["header"]
    assert header["axis"] == 1 and header["seed"] == 3 and header["steps"] == 2
    assert widget._status.value.startswith("added")
    assert widget._progress.value == widget._progress.max


def test_class_defaults_and_dropping_a_class_on_the_ablated_model(labels_viewer, qtbot, tiny_seg2img) -> None:
    viewer, layer = labels_viewer
    widget = _seg2img_widget(viewer, tiny_seg2img, layer)
    boxes = widget._class_boxes
    assert sorted(boxes) == [1, 2, 5]
    assert all(box.enabled for box in boxes.values())
    assert {v: box.value for v, box in boxes.items()} == {1: True, 2: False, 5: True}  # class 2 is not drawn
    boxes[5].value = False
    assert widget.drop_classes() == [2, 5]
    _run(widget, qtbot)
    assert widget.last_layer is not None, widget._status.value
    assert widget.last_layer.metadata["medgen"]["header"]["dropped_classes"] == [2, 5]
    # another labels layer with class 2 drawn: its box is ticked by default
    data = _labels_data(extra=2)
    other = viewer.add_labels(data, name="other", scale=SCALE, translate=TRANSLATE)
    widget._labels.value = other
    assert boxes[2].value and boxes[1].value and boxes[5].value


def test_standard_model_keeps_every_class_constrained(labels_viewer, qtbot, tiny_seg2img,
                                                      tiny_seg2img_standard) -> None:
    viewer, layer = labels_viewer
    widget = _seg2img_widget(viewer, tiny_seg2img_standard, layer)
    boxes = widget._class_boxes
    assert sorted(boxes) == [1, 2, 5]
    assert all(box.value and not box.enabled for box in boxes.values())
    assert all("mask ablation" in box.tooltip for box in boxes.values())
    assert widget.drop_classes() == []
    _run(widget, qtbot)
    assert widget.last_layer is not None, widget._status.value
    assert widget.last_layer.metadata["medgen"]["header"]["dropped_classes"] == []
    widget._model.value = str(tiny_seg2img)  # switching to an ablated model re-enables the boxes
    assert all(box.enabled for box in widget._class_boxes.values())
    assert widget._class_boxes[2].value is False
    widget._model.value = "no-such-model"
    assert widget._class_boxes == {} and "no-such-model" in widget._class_note.tooltip


def test_reference_enables_similarity_and_sets_intensity_units(labels_viewer, qtbot, tiny_seg2img) -> None:
    viewer, layer = labels_viewer
    rng = np.random.default_rng(0)
    scan = (200.0 + 50.0 * rng.standard_normal(layer.data.shape)).astype(np.float32)
    reference = viewer.add_image(scan, name="scan", scale=SCALE, translate=TRANSLATE,
                                 contrast_limits=(150.0, 260.0), colormap="viridis")
    widget = _seg2img_widget(viewer, tiny_seg2img, layer)
    widget._reference.value = None
    assert not widget._similarity.enabled
    widget._reference.value = reference
    assert widget._similarity.enabled
    widget._similarity.value = 0.5
    _run(widget, qtbot)
    out = widget.last_layer
    assert out is not None, widget._status.value
    header = out.metadata["medgen"]["header"]
    assert header["similarity"] == pytest.approx(0.5)
    assert header["units"] == "reference intensities"
    assert float(np.median(out.data)) > 10.0  # mapped back to the scan's units, not the model's [0, 1]
    np.testing.assert_allclose(out.contrast_limits, reference.contrast_limits)  # shown like the reference
    assert out.colormap.name == reference.colormap.name
    np.testing.assert_allclose(_world_corners(out), _world_corners(layer), atol=1e-6)


def test_reference_on_another_grid_is_refused(labels_viewer, qtbot, tiny_seg2img) -> None:
    viewer, layer = labels_viewer
    reference = viewer.add_image(np.ones(layer.data.shape, np.float32), name="scan", scale=(1.0, 1.0, 1.0))
    widget = _seg2img_widget(viewer, tiny_seg2img, layer)
    widget._reference.value = reference
    n_layers = len(viewer.layers)
    _run(widget, qtbot)
    assert widget._status.value.startswith("error") and "not on the image grid" in widget._status.value
    assert widget.last_layer is None and len(viewer.layers) == n_layers


def test_cancel_mid_run_adds_nothing(make_napari_viewer, qtbot, tiny_seg2img) -> None:
    viewer = make_napari_viewer()
    layer = viewer.add_labels(_labels_data(shape=(40, 12, 10)), name="tumour", scale=SCALE)
    widget = _seg2img_widget(viewer, tiny_seg2img, layer)
    widget._steps.value = 100  # 3 batches x 100 steps: far longer than the time to press Cancel
    n_layers = len(viewer.layers)
    widget._generate.clicked.emit()
    qtbot.waitUntil(lambda: widget._progress.value >= 1, timeout=60000)
    widget._cancel.clicked.emit()
    qtbot.waitUntil(lambda: widget._generate.enabled, timeout=60000)
    assert widget._status.value == "cancelled: nothing was added"
    assert widget._progress.value < widget._progress.max
    assert widget.last_layer is None and len(viewer.layers) == n_layers
    assert not widget._cancel.enabled


def test_unknown_class_is_reported_and_adds_nothing(make_napari_viewer, qtbot, tiny_seg2img) -> None:
    viewer = make_napari_viewer()
    layer = viewer.add_labels(_labels_data(extra=7), name="bad", scale=SCALE, translate=TRANSLATE)
    widget = _seg2img_widget(viewer, tiny_seg2img, layer)
    n_layers = len(viewer.layers)
    _run(widget, qtbot)
    assert widget._status.value.startswith("error"), widget._status.value
    assert "[7]" in widget._status.value and "not trained on" in widget._status.value
    assert widget.last_layer is None and len(viewer.layers) == n_layers


def test_2d_labels_layer_gives_a_2d_image(make_napari_viewer, qtbot, tiny_seg2img) -> None:
    viewer = make_napari_viewer()
    layer = viewer.add_labels(_labels_data()[2], name="slice", scale=(0.5, 0.7), translate=(3.0, -1.0))
    widget = _seg2img_widget(viewer, tiny_seg2img, layer)
    widget._axis.value = 2  # ignored for a single slice
    _run(widget, qtbot)
    out = widget.last_layer
    assert out is not None, widget._status.value
    assert out.data.shape == layer.data.shape
    np.testing.assert_allclose(out.scale, layer.scale)
    np.testing.assert_allclose(out.translate, layer.translate)
    assert [str(unit) for unit in out.units] == ["millimeter"] * 2


# ---- paired generation ----------------------------------------------------------------------------------
def _paired_widget(viewer, guider, image_model):
    from napari_medgen.widgets.paired_generation import PairedGenerationWidget

    widget = PairedGenerationWidget(viewer, guider=str(guider), image_model=image_model)
    viewer.window.add_dock_widget(widget, name="Paired generation")
    widget._steps.value = 2
    return widget


def test_paired_widget_adds_image_and_mask_stacks(make_napari_viewer, qtbot, tiny_paired) -> None:
    guider, image_model = tiny_paired
    viewer = make_napari_viewer()
    widget = _paired_widget(viewer, guider, str(image_model))
    widget._n.value = 3
    widget._seed.value = 4
    _run(widget, qtbot)
    assert widget.last_layers is not None, widget._status.value
    assert len(viewer.layers) == 2
    images, masks = widget.last_layers
    assert isinstance(images, napari.layers.Image) and isinstance(masks, napari.layers.Labels)
    assert images.name == "paired images (seed 4)" and masks.name == "paired masks (seed 4)"
    assert images.data.shape == masks.data.shape == (3, 16, 16)
    assert np.issubdtype(masks.data.dtype, np.integer)
    assert set(np.unique(masks.data)) <= {0, 1}
    assert float(images.data.min()) >= 0.0 and float(images.data.max()) <= 1.0
    np.testing.assert_allclose(images.scale, masks.scale)
    assert masks.metadata["medgen"]["header"]["pairs"] == 3
    assert viewer.dims.current_step[0] == 0  # the slider shows pair 0, not napari's middle item
    assert [str(unit) for unit in viewer.layers.units] == ["millimeter"] * 3  # the scale bar reads mm


def test_paired_widget_needs_an_image_model_for_a_folder_guider(make_napari_viewer, qtbot, tiny_paired) -> None:
    guider, _ = tiny_paired
    viewer = make_napari_viewer()
    widget = _paired_widget(viewer, guider, None)
    _run(widget, qtbot)
    assert widget._status.value.startswith("error") and "image model" in widget._status.value.lower()
    assert widget.last_layers is None and len(viewer.layers) == 0


def test_paired_widget_cancel_adds_nothing(make_napari_viewer, qtbot, tiny_paired) -> None:
    guider, image_model = tiny_paired
    viewer = make_napari_viewer()
    widget = _paired_widget(viewer, guider, str(image_model))
    widget._steps.value = 100
    widget._n.value = 24  # 3 batches of 8
    widget._generate.clicked.emit()
    qtbot.waitUntil(lambda: widget._progress.value >= 1, timeout=60000)
    widget._cancel.clicked.emit()
    qtbot.waitUntil(lambda: widget._generate.enabled, timeout=60000)
    assert widget._status.value == "cancelled: nothing was added"
    assert widget.last_layers is None and len(viewer.layers) == 0


@pytest.mark.parametrize(("display_name", "cls_name"), [("Generate from labels", "GenerateFromLabelsWidget"),
                                                        ("Paired generation", "PairedGenerationWidget")])
def test_widgets_open_from_the_plugin_manifest(make_napari_viewer, display_name, cls_name) -> None:
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medgen", display_name)
    assert type(widget).__name__ == cls_name
    widget._viewer.add_labels(np.zeros((2, 4, 4), np.uint8), name="drawn")  # napari passes a viewer proxy
    assert [layer.name for layer in viewer.layers] == ["drawn"]


def test_sampler_choices_match_the_pipeline() -> None:
    from napari_medgen.pipelines.diffusion_sampling import SAMPLERS
    from napari_medgen.widgets import generate_from_labels, paired_generation

    assert sorted(generate_from_labels.SAMPLER_CHOICES) == sorted(SAMPLERS)
    assert sorted(paired_generation.SAMPLER_CHOICES) == sorted(SAMPLERS)


def test_absent_classes_are_named_and_brain_class_comes_from_an_image(make_napari_viewer) -> None:
    from napari_medgen.widgets.generate_from_labels import GenerateFromLabelsWidget

    viewer = make_napari_viewer()
    tumour = np.zeros((6, 20, 20), np.uint8)
    tumour[2:4, 8:12, 8:12] = 4
    tumour[3, 9:11, 9:11] = 1
    layer = viewer.add_labels(tumour, name="tumour", scale=SCALE, translate=TRANSLATE)
    scan = np.zeros((6, 20, 20), np.float32)
    scan[:, 3:17, 3:17] = 100.0  # the head; outside it is background
    image = viewer.add_image(scan, name="scan", scale=SCALE, translate=TRANSLATE)
    widget = GenerateFromLabelsWidget(viewer, model="seg2img-brain")
    widget._labels.value = layer
    note = widget._class_note.value
    assert "left free" in note and "5: brain" in note and "2: edema" in note and "4: enhancing" not in note
    widget._brain_image.value = image
    widget._add_brain.clicked.emit()
    added = viewer.layers["tumour + brain"]
    assert widget._labels.value is added and widget._class_boxes[5].value
    expected = tumour.copy()
    expected[(tumour == 0) & (scan > 0)] = 5
    np.testing.assert_array_equal(added.data, expected)
    np.testing.assert_array_equal(layer.data, tumour)  # the source layer is unchanged
    assert "5: brain" not in widget._class_note.value
