"""The "Tumour synthesis" dock widget in a real viewer, with the tiny untrained texture bridge (tests/conftest.py).

The model is random, so these tests check the adapter: one new image + one new labels layer per run with the
source layer's transform, inputs untouched, tumour gone after Remove, Cancel and errors adding nothing, texture
sliders from the model's config, and a GUI that stays responsive while the job runs.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.layers import volume_to_layer_data

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.gui

FLIPPED_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # axis-aligned, as RAS-stored scans read back


def _transform(layer) -> dict[str, np.ndarray]:
    return {"scale": np.array(layer.scale), "translate": np.array(layer.translate),
            "affine": np.array(layer.affine.affine_matrix), "rotate": np.array(layer.rotate)}


def _assert_same_transform(out, source) -> None:
    for key, value in _transform(source).items():
        np.testing.assert_allclose(_transform(out)[key], value, rtol=0, atol=1e-12, err_msg=key)


def _add(viewer, volume: Volume, name: str):
    """A layer placed by the volume's geometry, as the plugin reader makes it."""
    data, kwargs, kind = volume_to_layer_data(volume, name)
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


def _run(widget, qtbot, operation: str, timeout: int = 180000) -> None:
    """Click the operation's button and wait until the run is over (buttons are disabled while it runs)."""
    widget._buttons[operation].clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


@pytest.fixture(params=["translated", "flipped_affine"])
def phantom_viewer(request, make_napari_viewer, brain_phantom):
    """Viewer with the phantom scan, its tumour labels and a points layer with one point away from the tumour."""
    image, labels = brain_phantom
    if request.param == "flipped_affine":
        image = Volume(image.array, image.spacing, image.origin, FLIPPED_DIRECTION)
        labels = LabelMap(labels.array, labels.spacing, labels.origin, FLIPPED_DIRECTION)
    viewer = make_napari_viewer()
    image_layer = _add(viewer, image, "phantom")
    labels_layer = _add(viewer, labels, "phantom tumour")
    cz, cy, cx = np.argwhere(labels.array > 0).mean(axis=0)
    target = np.array([cz, cy, labels.shape[2] - 1 - cx])  # the tumour's mirror position in the other hemisphere
    points = viewer.add_points([image_layer.data_to_world(target)], name="location")
    if request.param == "flipped_affine":
        assert not np.allclose(image_layer.affine.affine_matrix, np.eye(4))
    return viewer, image_layer, labels_layer, points, target


def _widget(viewer, model, image_layer, labels_layer=None, points=None, steps: int = 2):
    from napari_medgen.widgets.tumour_synthesis import TumourSynthesisWidget

    widget = TumourSynthesisWidget(viewer, model=str(model))
    viewer.window.add_dock_widget(widget, name="Tumour synthesis")
    widget._image.value = image_layer
    widget._labels.value = labels_layer
    widget._points.value = points
    widget._texture_labels.value = None
    widget._texture_image.value = None
    widget._steps.value = steps
    return widget


def _snapshot_layers(viewer) -> list[tuple[str, np.ndarray, dict[str, np.ndarray]]]:
    return [(layer.name, np.array(layer.data), _transform(layer)) for layer in viewer.layers]


def _assert_untouched(viewer, before) -> None:
    for (name, data, transform), layer in zip(before, viewer.layers, strict=False):
        assert layer.name == name
        np.testing.assert_array_equal(np.asarray(layer.data), data, err_msg=name)
        for key, value in transform.items():
            np.testing.assert_array_equal(_transform(layer)[key], value, err_msg=f"{name} {key}")


def test_synthesize_at_a_point_adds_one_image_and_one_labels_layer(phantom_viewer, qtbot, tiny_bridge) -> None:
    viewer, image_layer, labels_layer, points, target = phantom_viewer
    widget = _widget(viewer, tiny_bridge, image_layer, labels_layer, points)
    widget._shape_sliders["VoxelVolume"].value = 1.5  # cm3
    before = _snapshot_layers(viewer)
    _run(widget, qtbot, "synthesize")
    assert widget.last_layers is not None, widget._status.value
    assert len(viewer.layers) == len(before) + 2
    image_out, labels_out = widget.last_layers
    assert isinstance(image_out, napari.layers.Image) and isinstance(labels_out, napari.layers.Labels)
    assert image_out.name == "phantom synthesized" and labels_out.name == "phantom synthesized labels"
    _assert_same_transform(image_out, image_layer)
    _assert_same_transform(labels_out, image_layer)
    _assert_untouched(viewer, before)
    region = np.asarray(labels_out.data) > 0
    assert region[tuple(np.round(target).astype(int))], "the new tumour is not at the clicked point"
    assert region.sum() == pytest.approx(1500.0, rel=0.4)  # 1 mm voxels: mm3 = voxels
    out, source = np.asarray(image_out.data), np.asarray(image_layer.data)
    assert out.shape == source.shape and out.dtype == source.dtype
    assert not np.array_equal(out[region], source[region])
    assert widget.last_report["operation"] == "synthesize" and widget.last_report["steps"] == 2
    assert image_out.metadata["medgen_edit"]["center_mm"] == pytest.approx(list(widget._point("x")))
    assert widget._status.value.startswith("added") and widget._progress.value == widget._progress.max


def test_result_shares_the_source_contrast_and_is_in_mm(make_napari_viewer, qtbot, tiny_bridge,
                                                         brain_phantom) -> None:
    image, _ = brain_phantom
    viewer = make_napari_viewer()
    image_layer = _add(viewer, image, "scan")
    image_layer.contrast_limits = (0.1, 0.6)  # the user's own window, not the percentile default
    image_layer.colormap = "magma"
    centre = np.array(image.shape) / 2.0
    points = viewer.add_points([image_layer.data_to_world(centre)], name="location")
    widget = _widget(viewer, tiny_bridge, image_layer, points=points)
    widget._shape_sliders["VoxelVolume"].value = 1.0  # cm3
    _run(widget, qtbot, "synthesize")
    assert widget.last_layers is not None, widget._status.value
    image_out, _ = widget.last_layers
    np.testing.assert_allclose(image_out.contrast_limits, image_layer.contrast_limits)
    assert image_out.colormap.name == image_layer.colormap.name == "magma"
    assert [str(unit) for unit in image_out.units] == ["millimeter"] * 3  # the scale bar reads mm


def test_remove_leaves_no_tumour_and_keeps_far_voxels(phantom_viewer, qtbot, tiny_bridge) -> None:
    from scipy import ndimage

    viewer, image_layer, labels_layer, _, _ = phantom_viewer
    widget = _widget(viewer, tiny_bridge, image_layer, labels_layer)
    before = _snapshot_layers(viewer)
    _run(widget, qtbot, "remove")
    assert widget.last_layers is not None, widget._status.value
    assert len(viewer.layers) == len(before) + 2
    image_out, labels_out = widget.last_layers
    assert image_out.name == "phantom removed" and labels_out.name == "phantom removed labels"
    assert isinstance(labels_out, napari.layers.Labels) and not np.any(labels_out.data)
    _assert_same_transform(image_out, image_layer)
    _assert_same_transform(labels_out, image_layer)
    _assert_untouched(viewer, before)
    tumour = np.asarray(labels_layer.data) > 0
    far = ndimage.distance_transform_edt(~tumour) > 5.0  # beyond margin (2 mm) + blend (2 mm) + 1 voxel
    out, source = np.asarray(image_out.data), np.asarray(image_layer.data)
    np.testing.assert_array_equal(out[far], source[far])
    assert not np.array_equal(out[tumour], source[tumour])


def test_retexture_resize_and_move_add_named_layers(make_napari_viewer, qtbot, tiny_bridge, brain_phantom) -> None:
    image, labels = brain_phantom
    viewer = make_napari_viewer()
    image_layer = _add(viewer, image, "scan")
    labels_layer = _add(viewer, labels, "tumour")
    old_centre = np.argwhere(labels.array > 0).mean(axis=0)
    new_centre = old_centre + np.array([0.0, 0.0, 4.0])
    points = viewer.add_points([image_layer.data_to_world(new_centre)], name="new centre")
    widget = _widget(viewer, tiny_bridge, image_layer, labels_layer, points)
    widget._texture_labels.value = labels_layer  # the tumour's own texture as the reference
    use, slider = widget._texture_controls["firstorder_Mean"]
    use.value = True
    slider.value = slider.max
    before = _snapshot_layers(viewer)
    for operation in ("retexture", "resize", "move"):
        count = len(viewer.layers)
        _run(widget, qtbot, operation)
        assert widget.last_layers is not None and widget._status.value.startswith("added"), widget._status.value
        assert len(viewer.layers) == count + 2
        image_out, labels_out = widget.last_layers
        assert image_out.name == f"scan {operation}d" and labels_out.name == f"scan {operation}d labels"
        assert widget.last_report["operation"] == operation
        _assert_same_transform(labels_out, image_layer)
    _assert_untouched(viewer, before)
    retextured = viewer.layers["scan retextured"]
    assert retextured.metadata["medgen_edit"]["texture_requested"]["original_firstorder_Mean"] == slider.max
    moved = np.asarray(viewer.layers["scan moved labels"].data) > 0
    np.testing.assert_allclose(np.argwhere(moved).mean(axis=0), new_centre, atol=1.0)
    resized = np.asarray(viewer.layers["scan resized labels"].data) > 0
    assert resized.sum() > 1.5 * (labels.array > 0).sum()  # scale 1.5 (linear) on a sphere: ~3.4x the voxels


def test_synthesize_with_the_shape_of_a_labels_layer(make_napari_viewer, qtbot, tiny_bridge, brain_phantom) -> None:
    """On the image grid the drawn shape is used where it is; a mask from another grid goes to the point."""
    from napari_medgen.widgets.tumour_synthesis import SHAPE_FROM_LABELS

    image, labels = brain_phantom
    viewer = make_napari_viewer()
    image_layer = _add(viewer, image, "scan")
    labels_layer = _add(viewer, labels, "tumour")
    widget = _widget(viewer, tiny_bridge, image_layer, labels_layer)
    widget._shape_from.value = SHAPE_FROM_LABELS
    widget._label.value = 2  # the necrotic core only
    _run(widget, qtbot, "synthesize")
    assert widget.last_layers is not None, widget._status.value
    np.testing.assert_array_equal(np.asarray(widget.last_layers[1].data), np.where(labels.array == 2, 2, 0))
    assert widget.last_report["shape_from"] == "mask on the scan's grid"

    ball = np.zeros((15, 15, 15), np.uint8)
    ball[np.sum((np.indices(ball.shape) - 7.0) ** 2, axis=0) <= 36] = 1
    other_grid = viewer.add_labels(ball, name="drawn elsewhere", translate=(100.0, 100.0, 100.0))
    target = np.array([24.0, 30.0, 16.0])
    points = viewer.add_points([image_layer.data_to_world(target)], name="location")
    widget._labels.value, widget._points.value, widget._label.value = other_grid, points, 0
    _run(widget, qtbot, "synthesize")
    assert widget.last_layers is not None and widget._status.value.startswith("added"), widget._status.value
    placed = np.asarray(widget.last_layers[1].data) > 0
    assert placed.sum() == pytest.approx(ball.sum(), rel=0.05)
    np.testing.assert_allclose(np.argwhere(placed).mean(axis=0), target, atol=1.0)
    np.testing.assert_array_equal(np.asarray(other_grid.data), ball)


def test_cancel_mid_run_adds_nothing(make_napari_viewer, qtbot, tiny_bridge, brain_phantom) -> None:
    image, labels = brain_phantom
    viewer = make_napari_viewer()
    image_layer = _add(viewer, image, "scan")
    labels_layer = _add(viewer, labels, "tumour")
    widget = _widget(viewer, tiny_bridge, image_layer, labels_layer, steps=60)
    before = _snapshot_layers(viewer)
    widget._buttons["remove"].clicked.emit()
    qtbot.waitUntil(lambda: widget._progress.value >= 1, timeout=120000)  # the first sampling step is done
    widget._cancel.clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    assert widget._status.value == "cancelled: nothing was added"
    assert widget._progress.value < widget._progress.max
    assert widget.last_layers is None and len(viewer.layers) == len(before)
    assert not widget._cancel.enabled
    _assert_untouched(viewer, before)


def test_event_loop_is_never_blocked_during_a_run(make_napari_viewer, qtbot, tiny_bridge, brain_phantom) -> None:
    """A QTimer ticks every 20 ms from the click until the job has returned; no gap may reach 200 ms.

    The window ends when the result arrives: adding the two layers afterwards is napari's own main-thread
    work (a new Labels layer builds its vispy overlays, 0.1-0.5 s here), which no widget can move off the
    event loop. What napari would import there for a first Labels layer (pandas, skimage.color: 0.6-0.8 s) is
    imported in the worker beforehand: `test_first_labels_layer_imports_happen_in_the_worker`.
    """
    from qtpy.QtCore import QTimer

    image, _ = brain_phantom
    viewer = make_napari_viewer()
    image_layer = _add(viewer, image, "scan")
    points = viewer.add_points([image_layer.data_to_world([24.0, 30.0, 16.0])], name="location")
    widget = _widget(viewer, tiny_bridge, image_layer, points=points, steps=12)
    returned: list[float] = []
    add_layers = widget._add_layers

    def timed_add_layers(result, **context) -> None:
        returned.append(time.perf_counter())
        add_layers(result, **context)

    widget._add_layers = timed_add_layers  # start() hands the worker's result to this attribute
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    qtbot.wait(100)
    start = time.perf_counter()
    widget._buttons["synthesize"].clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=180000)
    timer.stop()
    assert widget.last_layers is not None and len(returned) == 1, widget._status.value
    end = returned[0]
    assert end - start >= 1.0, f"the run took {end - start:.2f} s: too short to say anything about responsiveness"
    during = [t for t in ticks if t <= end] + [end]
    gaps = np.diff([start, *[t for t in during if t >= start]])
    assert len(gaps) > 10
    assert gaps.max() < 0.2, f"the GUI froze for {gaps.max() * 1000:.0f} ms during the run"


@pytest.mark.parametrize("problem", ["2d_image", "no_points_layer", "empty_points", "labels_off_grid"])
def test_bad_input_shows_an_error_and_adds_nothing(make_napari_viewer, qtbot, tiny_bridge, brain_phantom,
                                                   problem) -> None:
    image, labels = brain_phantom
    viewer = make_napari_viewer()
    image_layer = _add(viewer, image, "scan")
    points = viewer.add_points([image_layer.data_to_world([24.0, 24.0, 16.0])], name="location")
    widget = _widget(viewer, tiny_bridge, image_layer, points=points)
    operation, expected = "synthesize", ""
    if problem == "2d_image":
        widget._image.value = viewer.add_image(np.asarray(image.array[24]), name="slice")
        expected = "needs a 3D scan"
    elif problem == "no_points_layer":
        widget._points.value = None
        expected = "No location: add a points layer"
    elif problem == "empty_points":
        points.data = np.zeros((0, 3))
        expected = "points layer is empty"
    else:
        widget._labels.value = viewer.add_labels(labels.array, name="elsewhere", translate=(5.0, 0.0, 0.0))
        operation, expected = "remove", "not on the image grid"
    before = _snapshot_layers(viewer)
    _run(widget, qtbot, operation)
    assert widget._status.value.startswith("error") and expected in widget._status.value, widget._status.value
    assert widget.last_layers is None and len(viewer.layers) == len(before)
    _assert_untouched(viewer, before)


def test_backend_errors_are_reported_and_add_nothing(make_napari_viewer, qtbot, tiny_bridge, brain_phantom) -> None:
    """An error raised inside the worker (the scan's spacing is not the model's) reaches the status line."""
    image, _ = brain_phantom
    viewer = make_napari_viewer()
    coarse = Volume(image.array, (2.0, 2.0, 2.0), image.origin)
    image_layer = _add(viewer, coarse, "coarse")
    points = viewer.add_points([image_layer.data_to_world([24.0, 24.0, 16.0])], name="location")
    widget = _widget(viewer, tiny_bridge, image_layer, points=points)
    n_layers = len(viewer.layers)
    _run(widget, qtbot, "synthesize")
    assert widget._status.value.startswith("error") and "spacing" in widget._status.value, widget._status.value
    assert widget.last_layers is None and len(viewer.layers) == n_layers


def test_texture_sliders_follow_the_model_config(make_napari_viewer, tiny_bridge) -> None:
    from napari_medgen.hub import read_checkpoint_config
    from napari_medgen.widgets.tumour_synthesis import TEXTURE_SLIDERS, TumourSynthesisWidget

    extra = read_checkpoint_config(tiny_bridge)["extra"]
    viewer = make_napari_viewer()
    widget = TumourSynthesisWidget(viewer, model=str(tiny_bridge))
    assert sorted(widget._texture_controls) == sorted(TEXTURE_SLIDERS)
    for name, (use, slider) in widget._texture_controls.items():
        low, high = extra["feature_ranges"][f"original_{name}"]
        assert slider.min == pytest.approx(low, abs=1e-6) and slider.max == pytest.approx(high, abs=1e-6)  # 6 decimals
        assert not use.value and not slider.enabled
        use.value = True
        assert slider.enabled
    assert sorted(widget.texture_request()) == sorted(TEXTURE_SLIDERS)
    widget._model.value = "no-such-model"
    assert widget._texture_controls == {} and "no-such-model" in widget._texture_note.tooltip
    assert widget.texture_request() == {}


def test_widget_opens_from_the_plugin_manifest(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medgen", "Tumour synthesis")
    assert type(widget).__name__ == "TumourSynthesisWidget"
    assert sorted(widget._buttons) == sorted(["synthesize", "remove", "retexture", "resize", "move"])


# ---- the brain editor (tiny untrained checkpoint: learned inpainting + glioma appearance) --------------------
def test_controls_switch_between_the_bridge_and_the_brain_editor(make_napari_viewer, tiny_bridge,
                                                                 tiny_editor) -> None:
    from napari_medgen.pipelines.appearance_editing import SHAPE_MODEL
    from napari_medgen.pipelines.shape_generation import shape_controls
    from napari_medgen.widgets.tumour_synthesis import (
        EDITOR_TEXTURE_SLIDERS,
        TEXTURE_SLIDERS,
        TumourSynthesisWidget,
    )

    widget = TumourSynthesisWidget(make_napari_viewer(), model=str(tiny_bridge))
    assert sorted(widget._texture_controls) == sorted(TEXTURE_SLIDERS) and widget._steps.enabled
    assert "necrotic_core" not in widget._shape_sliders and len(widget._editor_options) == 0

    widget._model.value = str(tiny_editor)
    assert sorted(widget._texture_controls) == sorted(EDITOR_TEXTURE_SLIDERS)
    assert not widget._steps.enabled and "no sampling steps" in widget._steps.tooltip
    assert list(widget._sequence.choices) == ["T1c"] and len(widget._editor_options) == 3
    for use, slider in widget._texture_controls.values():
        assert "brain-normalised" in slider.tooltip and use.tooltip and not slider.enabled
    brats = {c.name: c for c in shape_controls(SHAPE_MODEL)}
    volume = widget._shape_sliders["VoxelVolume"]
    assert volume.max == pytest.approx(brats["VoxelVolume"].max / 1000.0) and "cm3" in volume.label
    volume.value, widget._shape_sliders["necrotic_core"].value = 20.0, 25.0
    request = widget.shape_request()
    assert request["VoxelVolume"] == pytest.approx(20000.0)
    assert request["necrotic_core/VoxelVolume"] == pytest.approx(5000.0)
    assert "Sphericity" in request and all(w.tooltip for w in widget._shape_sliders.values())
    use, slider = widget._texture_controls["enhancing/mean"]
    use.value, slider.value = True, 0.9
    assert widget.texture_request() == {"enhancing/mean": pytest.approx(0.9, abs=0.01)}
    widget._edema.value = False
    assert widget.edema_mm() is None and not widget._edema_mm.enabled
    widget._edema.value, widget._edema_mm.value = True, 6.0
    assert widget.edema_mm() == pytest.approx((2.0, 6.0))

    widget._model.value = str(tiny_bridge)  # back: the old controls
    assert sorted(widget._texture_controls) == sorted(TEXTURE_SLIDERS) and widget._steps.enabled
    assert "necrotic_core" not in widget._shape_sliders and len(widget._editor_options) == 0


def _brats_viewer(make_napari_viewer):
    from tests.conftest import brats_phantom

    image, labels = brats_phantom()
    viewer = make_napari_viewer()
    image_layer = _add(viewer, image, "brain")
    labels_layer = _add(viewer, labels, "glioma")
    centre = np.argwhere(np.asarray(labels.array) > 0).mean(axis=0)
    points = viewer.add_points([image_layer.data_to_world(centre)], name="location")
    return viewer, image_layer, labels_layer, points, labels


def test_editor_synthesize_shows_named_subregions_and_preselects_layers(make_napari_viewer, qtbot,
                                                                         tiny_editor) -> None:
    from napari_medgen.widgets.tumour_synthesis import SUBREGIONS, TumourSynthesisWidget

    viewer, image_layer, labels_layer, points, _ = _brats_viewer(make_napari_viewer)
    widget = TumourSynthesisWidget(viewer, model=str(tiny_editor))
    viewer.window.add_dock_widget(widget, name="Tumour synthesis")
    assert widget._points.value is points and widget._labels.value is labels_layer  # pre-selected
    widget._image.value = image_layer
    widget._shape_sliders["VoxelVolume"].value = 2.5  # cm3
    widget._shape_sliders["necrotic_core"].value = 20.0
    widget._edema_mm.value = 4.0
    before = _snapshot_layers(viewer)
    _run(widget, qtbot, "synthesize")
    assert widget.last_layers is not None, widget._status.value
    assert len(viewer.layers) == len(before) + 2
    _assert_untouched(viewer, before)
    image_out, labels_out = widget.last_layers
    _assert_same_transform(labels_out, image_layer)
    values = set(np.unique(labels_out.data).tolist())
    assert values <= {0, 1, 2, 4} and {1, 2, 4} <= values
    assert labels_out.name == "brain synthesized labels (1 necrotic core, 2 edema, 4 enhancing tumour)"
    features = labels_out.features
    named = dict(zip(features["index"], features["sub-region"], strict=True))
    assert {v: named[v] for v in SUBREGIONS} == {v: n for v, (n, _) in SUBREGIONS.items()}
    colours = {v: tuple(np.round(labels_out.colormap.map(v), 3)) for v in (1, 2, 4)}
    assert len(set(colours.values())) == 3 and labels_out.colormap.map(0)[3] == 0
    assert "1 necrotic core (red)" in widget._status.value and "cm3" in widget._status.value
    assert "2 = edema" in widget._status.tooltip
    report = widget.last_report
    assert report["operation"] == "synthesize" and report["shape_from"].startswith("shape generator")
    assert report["shape_request"]["necrotic_core/VoxelVolume"] == pytest.approx(500.0)
    assert report["edema_mm"] == pytest.approx([4.0 / 3.0, 4.0]) and "steps" not in report
    region = np.asarray(labels_out.data) > 0
    assert not np.array_equal(np.asarray(image_out.data)[region], np.asarray(image_layer.data)[region])


def test_editor_remove_and_retexture_run_through_the_worker(make_napari_viewer, qtbot, tiny_editor) -> None:
    viewer, image_layer, labels_layer, _, labels = _brats_viewer(make_napari_viewer)
    widget = _widget(viewer, tiny_editor, image_layer, labels_layer)
    _run(widget, qtbot, "remove")
    assert widget.last_layers is not None, widget._status.value
    image_out, labels_out = widget.last_layers
    assert not np.any(labels_out.data) and widget.last_report["method"] == "model"
    assert "no tumour left" in widget._status.value
    tumour = np.asarray(labels.array) > 0
    assert not np.array_equal(np.asarray(image_out.data)[tumour], np.asarray(image_layer.data)[tumour])

    use, slider = widget._texture_controls["necrotic/mean"]
    use.value, slider.value = True, 0.1
    _run(widget, qtbot, "retexture")
    assert widget.last_layers is not None and widget._status.value.startswith("added"), widget._status.value
    np.testing.assert_array_equal(np.asarray(widget.last_layers[1].data), np.asarray(labels.array))
    assert widget.last_report["texture_controls"] == {"necrotic/mean": pytest.approx(0.1, abs=0.01)}


def test_editor_synthesize_keeps_the_subregions_of_a_labels_layer(make_napari_viewer, qtbot, tiny_editor) -> None:
    from napari_medgen.widgets.tumour_synthesis import SHAPE_FROM_LABELS

    viewer, image_layer, labels_layer, points, labels = _brats_viewer(make_napari_viewer)
    widget = _widget(viewer, tiny_editor, image_layer, labels_layer)
    widget._shape_from.value = SHAPE_FROM_LABELS
    _run(widget, qtbot, "synthesize")
    assert widget.last_layers is not None, widget._status.value
    np.testing.assert_array_equal(np.asarray(widget.last_layers[1].data), np.asarray(labels.array))


def test_new_points_and_labels_layers_are_preselected_once(make_napari_viewer, tiny_bridge) -> None:
    from napari_medgen.widgets.tumour_synthesis import TumourSynthesisWidget

    viewer = make_napari_viewer()
    widget = TumourSynthesisWidget(viewer, model=str(tiny_bridge))
    viewer.window.add_dock_widget(widget, name="Tumour synthesis")
    assert widget._points.value is None and widget._labels.value is None
    points = viewer.add_points(np.zeros((1, 3)), name="location")
    labels = viewer.add_labels(np.zeros((8, 8, 8), np.uint8), name="tumour shape")
    assert widget._points.value is points and widget._labels.value is labels
    widget._labels.value = None  # the user's choice is kept while the layers stay the same
    viewer.layers.selection.active = points
    widget.reset_choices()
    assert widget._labels.value is None
    newer = viewer.add_labels(np.zeros((8, 8, 8), np.uint8), name="another shape")
    assert widget._labels.value is newer


def test_first_labels_layer_imports_happen_in_the_worker(make_napari_viewer, qtbot, tiny_bridge,
                                                         brain_phantom) -> None:
    import sys

    from napari_medgen.widgets import job_widget

    image, _ = brain_phantom
    viewer = make_napari_viewer()
    image_layer = _add(viewer, image, "scan")
    points = viewer.add_points([image_layer.data_to_world([24.0, 30.0, 16.0])], name="location")
    widget = _widget(viewer, tiny_bridge, image_layer, points=points, steps=2)
    seen: dict[str, bool] = {}
    add_layers = widget._add_layers

    def check_then_add(result, **context) -> None:
        seen.update({name: name in sys.modules for name in ("pandas", "skimage.color")})
        add_layers(result, **context)

    widget._add_layers = check_then_add
    widget._buttons["synthesize"].clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=180000)
    assert widget.last_layers is not None, widget._status.value
    assert seen == {"pandas": True, "skimage.color": True} and job_widget._LAYER_MODULES_WARM
