"""Every dock widget on the shared job base (`widgets/job_widget.py`), in a real viewer with tiny models.

For each of the five widgets: the progress bar reaches the end and the result is added; Cancel stops a running
job at its next step and adds nothing; an unavailable device ('cuda' here) is an error message and starts no
job; the chosen device reaches the job as ``device=``; an error raised inside the job is shown in the status line
and as a napari notification. Jobs are the real pipelines; for Cancel and errors they are wrapped (a pause before
each step, or an error after the first) so the tests do not depend on timing.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from napari_medgen.errors import InvalidInputError
from napari_medgen.layers import volume_to_layer_data
from napari_medgen.sample_data import make_phantom

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.gui


@dataclass(frozen=True)
class Case:
    """How to set up one widget with inputs that run, and which pipeline job it runs."""

    make: Callable[..., Any]  # (viewer, request) -> widget ready to run
    run: Callable[[Any], None]  # click its run button
    job: tuple[str, str]  # (module, attribute) of the pipeline job the widget calls


def _add(viewer, volume, name: str):
    data, kwargs, kind = volume_to_layer_data(volume, name)
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


def _radiomics(viewer, request):
    from napari_medgen.widgets.radiomics_table import RadiomicsTableWidget

    image, labels = make_phantom(shape=(16, 24, 24), spacing=(2.0, 2.0, 2.0), seed=3)
    _add(viewer, image, "phantom")
    _add(viewer, labels, "tumour")
    return RadiomicsTableWidget(viewer)


def _shape(viewer, request):
    from napari_medgen.widgets.tumour_shape import TumourShapeWidget

    image, _ = make_phantom(shape=(24, 40, 40), spacing=(2.0, 2.0, 2.0), seed=1)
    layer = _add(viewer, image, "phantom")
    viewer.add_points([layer.data_to_world(np.array([12.0, 20.0, 20.0]))], name="location")
    widget = TumourShapeWidget(viewer)
    use, slider = widget._controls["VoxelVolume"]
    use.value, slider.value = True, min(max(2.0, slider.min), slider.max)  # cm3
    return widget


def _seg2img(viewer, request):
    from napari_medgen.widgets.generate_from_labels import GenerateFromLabelsWidget

    data = np.zeros((4, 12, 10), dtype=np.uint8)
    data[:, 2:10, 2:8] = 5
    data[1:3, 4:8, 3:6] = 1
    layer = viewer.add_labels(data, name="tumour", scale=(3.0, 0.8, 1.2))
    widget = GenerateFromLabelsWidget(viewer, model=str(request.getfixturevalue("tiny_seg2img")))
    widget._labels.value = layer
    widget._sampler.value = "ddim"
    widget._steps.value = 3
    return widget


def _paired(viewer, request):
    from napari_medgen.widgets.paired_generation import PairedGenerationWidget

    guider, image_model = request.getfixturevalue("tiny_paired")
    widget = PairedGenerationWidget(viewer, guider=str(guider), image_model=str(image_model))
    widget._n.value = 2
    widget._steps.value = 3
    return widget


def _synthesis(viewer, request):
    from napari_medgen.widgets.tumour_synthesis import TumourSynthesisWidget

    image, labels = request.getfixturevalue("brain_phantom")
    image_layer = _add(viewer, image, "scan")
    labels_layer = _add(viewer, labels, "tumour")
    widget = TumourSynthesisWidget(viewer, model=str(request.getfixturevalue("tiny_bridge")))
    widget._image.value, widget._labels.value = image_layer, labels_layer
    widget._points.value = widget._texture_labels.value = widget._texture_image.value = None
    widget._steps.value = 3
    return widget


CASES = {
    "radiomics": Case(_radiomics, lambda w: w._compute.clicked.emit(),
                      ("napari_medgen.pipelines.radiomics_extraction", "extract_features_job")),
    "shape": Case(_shape, lambda w: w._generate.clicked.emit(),
                  ("napari_medgen.pipelines.shape_generation", "generate_shape_job")),
    "seg2img": Case(_seg2img, lambda w: w._generate.clicked.emit(),
                    ("napari_medgen.pipelines.slice_generation", "generate_from_labels_job")),
    "paired": Case(_paired, lambda w: w._generate.clicked.emit(),
                   ("napari_medgen.pipelines.paired_generation", "generate_pairs_job")),
    "synthesis": Case(_synthesis, lambda w: w._buttons["remove"].clicked.emit(),
                      ("napari_medgen.pipelines.tumor_synthesis", "remove_job")),
}
DEVICE_CASES = [name for name in CASES if name != "radiomics"]  # radiomics runs on the CPU: no device choice


@pytest.fixture
def notifications(monkeypatch) -> list[str]:
    """The messages the widgets send to napari's error notifications."""
    import napari.utils.notifications as notes

    sent: list[str] = []
    monkeypatch.setattr(notes, "show_error", sent.append)
    return sent


def _setup(name: str, make_napari_viewer, request):
    viewer = make_napari_viewer()
    widget = CASES[name].make(viewer, request)
    viewer.window.add_dock_widget(widget, name=name)
    return viewer, widget


def _wrap_job(monkeypatch, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> list[dict]:
    """Replace the widget's pipeline job by ``wrapper(real job)``; returns the keyword arguments of each call."""
    module_name, attr = CASES[name].job
    module = importlib.import_module(module_name)
    real = getattr(module, attr)
    calls: list[dict] = []

    def job(*args, **kwargs):  # a generator function, as napari's create_worker needs
        calls.append(kwargs)
        return (yield from wrapper(real)(*args, **kwargs))

    monkeypatch.setattr(module, attr, job)
    return calls


def _paused(real: Callable[..., Any], pause: float = 0.4) -> Callable[..., Any]:
    """The real job with a pause before each step it reports: Cancel always lands between two steps."""

    def job(*args, **kwargs):
        inner = real(*args, **kwargs)
        try:
            while True:
                event = next(inner)
                time.sleep(pause)
                yield event
        except StopIteration as stop:
            return stop.value

    return job


def _failing(real: Callable[..., Any]) -> Callable[..., Any]:
    """The real job, failing with a user-facing error after its first step."""

    def job(*args, **kwargs):
        yield next(real(*args, **kwargs))
        raise InvalidInputError("boom: the pipeline refused this input")

    return job


def _run_buttons_enabled(widget) -> bool:
    return all(button.enabled for button in widget._run_buttons)


@pytest.mark.parametrize("name", list(CASES))
def test_progress_reaches_the_end_and_the_result_is_added(name, make_napari_viewer, request, qtbot) -> None:
    viewer, widget = _setup(name, make_napari_viewer, request)
    n_layers = len(viewer.layers)
    events = []
    CASES[name].run(widget)
    assert widget.running and widget._cancel.enabled and not _run_buttons_enabled(widget)
    widget.worker.yielded.connect(events.append)
    qtbot.waitUntil(lambda: not widget.running, timeout=180000)
    assert not widget._status.value.startswith("error"), widget._status.value
    assert events and widget._progress.max == events[-1].total > 1, events
    assert widget._progress.value == widget._progress.max
    assert _run_buttons_enabled(widget) and not widget._cancel.enabled
    if name == "radiomics":
        assert widget.features and widget._export.enabled and len(viewer.layers) == n_layers
    else:
        assert len(viewer.layers) > n_layers and widget._status.value.startswith("added")


@pytest.mark.parametrize("name", list(CASES))
def test_cancel_stops_the_running_job_and_adds_nothing(name, make_napari_viewer, request, qtbot, monkeypatch) -> None:
    viewer, widget = _setup(name, make_napari_viewer, request)
    _wrap_job(monkeypatch, name, _paused)
    n_layers = len(viewer.layers)
    events = []
    CASES[name].run(widget)
    widget.worker.yielded.connect(events.append)
    returned = []
    widget.worker.returned.connect(returned.append)
    qtbot.waitUntil(lambda: bool(events), timeout=120000)  # the job is running: its first step is done
    widget._cancel.clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    assert widget._status.value == "cancelled: nothing was added"
    assert returned == [] and len(viewer.layers) == n_layers
    assert widget._progress.value < widget._progress.max or widget._progress.max == 1
    assert _run_buttons_enabled(widget) and not widget._cancel.enabled
    if name == "radiomics":
        assert widget.features == {} and not widget._export.enabled
    else:
        assert getattr(widget, "last_layer", None) is None and getattr(widget, "last_layers", None) is None


@pytest.mark.parametrize("name", DEVICE_CASES)
def test_an_unavailable_device_is_an_error_and_starts_nothing(name, make_napari_viewer, request, qtbot,
                                                              monkeypatch, notifications) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    viewer, widget = _setup(name, make_napari_viewer, request)
    calls = _wrap_job(monkeypatch, name, lambda real: real)
    n_layers = len(viewer.layers)
    widget._device.value = "cuda"
    CASES[name].run(widget)
    assert widget._status.value.startswith("error") and "'cuda'" in widget._status.value
    assert "not available" in widget._status.value, widget._status.value
    assert notifications and "'cuda'" in notifications[-1]
    assert widget.worker is None and not widget.running and calls == []
    assert _run_buttons_enabled(widget) and not widget._cancel.enabled
    qtbot.wait(50)
    assert len(viewer.layers) == n_layers


def test_auto_follows_medgen_device_and_refuses_a_missing_one(make_napari_viewer, request, monkeypatch,
                                                              notifications) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("MEDGEN_DEVICE", "cuda")
    _, widget = _setup("seg2img", make_napari_viewer, request)
    assert widget._device.value == "auto"
    CASES["seg2img"].run(widget)
    assert widget._status.value.startswith("error") and "MEDGEN_DEVICE" in widget._status.value
    assert widget.worker is None


@pytest.mark.parametrize("name", DEVICE_CASES)
def test_the_chosen_device_reaches_the_job(name, make_napari_viewer, request, qtbot, monkeypatch) -> None:
    from napari_medgen.core.device import DEVICE_CHOICES

    viewer, widget = _setup(name, make_napari_viewer, request)
    assert tuple(widget._device.choices) == DEVICE_CHOICES and widget._device.value == "auto"
    calls = _wrap_job(monkeypatch, name, _failing)  # stop after one step: only the arguments matter here
    for choice, expected in (("cpu", "cpu"), ("auto", None)):
        widget._device.value = choice
        CASES[name].run(widget)
        qtbot.waitUntil(lambda: not widget.running, timeout=120000)
        assert calls[-1]["device"] == expected
    assert len(calls) == 2


def test_radiomics_offers_no_device(make_napari_viewer, request) -> None:
    _, widget = _setup("radiomics", make_napari_viewer, request)
    assert widget._device not in list(widget)


@pytest.mark.parametrize("name", list(CASES))
def test_an_error_inside_the_job_is_shown_and_adds_nothing(name, make_napari_viewer, request, qtbot, monkeypatch,
                                                          notifications) -> None:
    viewer, widget = _setup(name, make_napari_viewer, request)
    _wrap_job(monkeypatch, name, _failing)
    n_layers = len(viewer.layers)
    CASES[name].run(widget)
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    assert widget._status.value == "error: boom: the pipeline refused this input"
    assert notifications == ["boom: the pipeline refused this input"]
    assert len(viewer.layers) == n_layers
    assert _run_buttons_enabled(widget) and not widget._cancel.enabled


def test_an_unexpected_error_is_marked_as_such(make_napari_viewer, request, qtbot, monkeypatch,
                                               notifications) -> None:
    def broken(real):
        def job(*args, **kwargs):
            yield next(real(*args, **kwargs))
            raise ZeroDivisionError("division by zero")

        return job

    _, widget = _setup("paired", make_napari_viewer, request)
    _wrap_job(monkeypatch, "paired", broken)
    CASES["paired"].run(widget)
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    assert widget._status.value == "error: division by zero"
    assert notifications == ["Unexpected error (ZeroDivisionError): division by zero"]


# ---- default steps come from the pipelines -------------------------------------------------------------
@pytest.mark.parametrize(("name", "field", "module", "bundled"), [
    ("seg2img", "_model", "slice_generation", "seg2img-brain"),
    ("paired", "_guider", "paired_generation", "busi-paired-guider"),
])
def test_steps_follow_the_pipeline_default(name, field, module, bundled, make_napari_viewer, request) -> None:
    """The steps box shows the pipeline's default for the model and sampler (what the CLI uses without --steps)."""
    from napari_medgen.pipelines.diffusion_sampling import SAMPLERS

    default_steps = importlib.import_module(f"napari_medgen.pipelines.{module}").default_steps
    _, widget = _setup(name, make_napari_viewer, request)
    source = getattr(widget, field)
    tiny = str(source.value)
    for sampler in SAMPLERS:
        widget._sampler.value = sampler
        assert widget._steps.value == default_steps(tiny, sampler)
    assert default_steps(tiny, "ddpm") == 100  # ddpm: the tiny model's whole schedule
    source.value = bundled
    assert widget._steps.value == default_steps(bundled, str(widget._sampler.value))
    widget._steps.value = 7
    source.value = "no-such-model"  # not usable: the steps are left as they are
    assert widget._steps.value == 7


def test_synthesis_steps_follow_the_model(make_napari_viewer, request, tiny_bridge, tiny_editor) -> None:
    from napari_medgen.pipelines.tumor_synthesis import resolve_steps

    _, widget = _setup("synthesis", make_napari_viewer, request)
    widget._model.value = "bridge-brain-t1c"  # the bundled texture bridge
    assert widget._steps.value == resolve_steps("bridge-brain-t1c") and widget._steps.enabled
    widget._model.value = str(tiny_bridge)
    assert widget._steps.value == resolve_steps(str(tiny_bridge))
    widget._model.value = str(tiny_editor)  # the brain editor has no steps: the box is disabled
    assert not widget._steps.enabled


def test_points_and_shapes_added_by_hand_join_the_mm_layers(make_napari_viewer) -> None:
    from napari_medgen.widgets.radiomics_table import RadiomicsTableWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 8, 8), np.float32), units=("mm", "mm", "mm"))
    widget = RadiomicsTableWidget(viewer)  # kept: napari holds its callbacks weakly, as a docked widget is held
    points = viewer.add_points(np.zeros((1, 3)))
    shapes = viewer.add_shapes([np.array([[0.0, 0, 0], [0, 2, 0], [0, 2, 2]])], shape_type="polygon")
    assert {str(u) for u in points.units} == {"millimeter"} and {str(u) for u in shapes.units} == {"millimeter"}
    assert viewer.layers.extent.units is not None  # consistent: napari keeps using the units
    pixel_viewer = make_napari_viewer()
    pixel_viewer.add_image(np.zeros((4, 8, 8), np.float32))  # a plain napari image in pixels: left alone
    other = RadiomicsTableWidget(pixel_viewer)
    assert {str(u) for u in pixel_viewer.add_points(np.zeros((1, 3))).units} == {"pixel"}
    assert widget is not other
