"""The base of every dock widget that runs a pipeline job: device choice, run buttons, Cancel, progress, status.

A widget calls `JobWidget.start_job` with a function that reads its inputs and returns
``(job, args, kwargs, on_returned)``: a `napari_medgen.core.progress` job (a generator of `ProgressEvent`s
returning a result), its arguments, and what to do with the result (add layers, fill a table). The base then

* checks the chosen device first (`core.device.select_device`; "auto" = the policy, ``$MEDGEN_DEVICE`` included):
  a device that is not there is an error message and nothing starts;
* runs the job in a napari thread worker: every yielded event moves the progress bar and is a cancellation point;
* Cancel (``worker.quit()``) stops the job at its next yield, and nothing is added;
* errors (before or during the run) go to the status line and a napari notification;
* the widget's result handler gets the job's return value only when the job finishes;
* the run buttons are disabled and Cancel enabled exactly while a job runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton, Widget

from napari_medgen.errors import MedGenError

if TYPE_CHECKING:
    import napari

#: what ``build()`` returns: (job function, positional args, keyword args, result handler)
JobSpec = tuple[Callable[..., Any], Sequence[Any], dict[str, Any], Callable[[Any], None]]
CANCELLED = "cancelled: nothing was added"


def show_progress(progress: Any, status: Any, event: Any) -> None:
    """Move ``progress`` (a magicgui ProgressBar) to a `ProgressEvent` and describe it in ``status``."""
    if event.total:
        progress.max = int(event.total)
        progress.value = min(int(event.step), int(event.total))
    status.value = f"{event.stage}: {event.message}" if event.message else str(event.stage)


def source_display(layer: Any) -> dict[str, Any]:
    """The image layer's contrast limits and colormap, for result layers shown like their source (an edit then
    reads as a change of the scan, not as a new percentile stretch); empty without a layer."""
    if layer is None:
        return {}
    return {"contrast_limits": tuple(float(v) for v in layer.contrast_limits), "colormap": layer.colormap}


def show_error(status: Any, error: Exception) -> None:
    """Put ``error`` in the widget's ``status`` line and in a napari notification (a `MedGenError` message as
    is; anything else marked as unexpected)."""
    from napari.utils.notifications import show_error as notify

    status.value = f"error: {error}"
    if isinstance(error, MedGenError):
        notify(str(error))
    else:
        notify(f"Unexpected error ({type(error).__name__}): {error}")


class JobWidget(Container):
    """A dock widget that runs one pipeline job at a time (see the module docstring).

    Subclasses create their inputs, then ``self.extend([...inputs, *self.job_controls(run_button)])`` and
    connect the run button to a method that calls `start_job`. ``uses_device = False`` for jobs that take
    no ``device`` (radiomics runs on the CPU): no device choice is shown and none is passed.
    """

    uses_device: ClassVar[bool] = True

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from napari_medgen.core.device import DEVICE_CHOICES

        super().__init__(labels=True)
        self._viewer = viewer
        self._device = ComboBox(choices=DEVICE_CHOICES, value="auto", label="device")
        self._device.tooltip = ("Where the models run. auto: CUDA, then Apple MPS, then CPU ($MEDGEN_DEVICE "
                                "overrides); a device this machine does not have is refused when you press Run.")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._cancel.tooltip = "Stop at the next step; nothing is added."
        self._progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self._status = Label(value="")
        self._status.native.setWordWrap(True)
        self._run_buttons: list[PushButton] = []
        self._running = False
        self._cancel_requested = False
        self._outcome: str | None = None  # "returned", "error" or "aborted" once the worker says so
        self.worker: Any = None
        self._cancel.changed.connect(self.cancel)
        viewer.layers.events.inserted.connect(self._match_units, position="first")

    def _match_units(self, event: Any) -> None:
        """A points or shapes layer the user adds gets napari's default pixel units, next to our layers in mm:
        napari then warns "Inconsistent units across layers" and drops units from the display. Give the new layer
        mm when the layers it joins are all in mm (its coordinates are world millimetres already)."""
        layer = getattr(event, "value", None)
        if type(layer).__name__ not in ("Points", "Shapes") or not hasattr(layer, "units"):
            return
        others = [other for other in self._viewer.layers if other is not layer and hasattr(other, "units")]
        if not others or any({str(u) for u in other.units} != {"millimeter"} for other in others):
            return
        if {str(u) for u in layer.units} == {"pixel"}:
            layer.units = ("mm",) * len(layer.units)

    def job_controls(self, *run_buttons: PushButton) -> list[Widget]:
        """The shared rows, placed after the widget's own inputs: device, the run button(s) (several in one
        row), Cancel, progress bar and status line."""
        self._run_buttons = list(run_buttons)
        rows: list[Widget] = [self._device] if self.uses_device else []
        if len(run_buttons) > 1:
            rows.append(Container(widgets=list(run_buttons), layout="horizontal", labels=False))
        else:
            rows.extend(run_buttons)
        return [*rows, self._cancel, self._progress, self._status]

    # ---- state ---------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True from a successful `start_job` until its worker has finished (run buttons disabled meanwhile)."""
        return self._running

    def device(self) -> str | None:
        """The chosen device as the pipelines take it (None = "auto", the device policy)."""
        value = str(self._device.value)
        return None if value == "auto" else value

    def checked_device(self) -> str | None:
        """`device`, after checking that this machine has it (raises `InvalidInputError` naming it otherwise)."""
        from napari_medgen.core.device import select_device

        device = self.device()
        select_device(device)
        return device

    def follow_default(self, target: Widget, default: Callable[[], Any], *sources: Widget) -> None:
        """Set ``target`` to ``default()`` now and whenever one of ``sources`` changes (e.g. the steps box to the
        pipeline's default steps for the model and sampler); left as it is while ``default()`` raises a
        `MedGenError` (a model name being typed: the widget says why elsewhere)."""

        def refresh(*_: Any) -> None:
            try:
                target.value = default()
            except MedGenError:
                return

        for source in sources:
            source.changed.connect(refresh)
        refresh()

    def report(self, error: Exception) -> None:
        """Show ``error`` in the status line and as a napari notification."""
        show_error(self._status, error)

    # ---- running -------------------------------------------------------------------------------------
    def start_job(self, build: Callable[[], JobSpec], status: str = "loading model...") -> bool:
        """Check the device, ``build()`` the job from the widget's inputs and run it in a thread worker; the
        handler ``build`` returned gets the result (in the GUI thread) only if the job finishes. A `MedGenError`
        from the device check or ``build`` is reported and nothing starts. Returns whether a job started."""
        from napari.qt.threading import create_worker

        if self._running:
            return False
        try:
            device = self.checked_device() if self.uses_device else None  # first: fail before reading anything
            job, args, kwargs, on_returned = build()
        except MedGenError as error:
            self.report(error)
            return False
        if self.uses_device:
            kwargs = {**kwargs, "device": device}
        self._set_running(True)
        self._cancel_requested, self._outcome = False, None
        self._progress.max, self._progress.value = 1, 0
        self._status.value = status
        worker = create_worker(_warmed, job, *args, **kwargs, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._on_returned(on_returned, result))
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()
        return True

    def cancel(self) -> None:
        """Stop the running job at its next progress point; nothing is added."""
        if self.worker is not None and self._running:
            self._cancel_requested = True
            self._status.value = "cancelling..."
            self.worker.quit()

    def _set_running(self, running: bool) -> None:
        self._running = running
        for button in self._run_buttons:
            button.enabled = not running
        self._cancel.enabled = running
        self._device.enabled = not running

    def _on_progress(self, event: Any) -> None:
        if not self._cancel_requested:  # keep "cancelling..." up until the job has stopped
            show_progress(self._progress, self._status, event)

    def _on_returned(self, handler: Callable[[Any], None], result: Any) -> None:
        self._outcome = "returned"
        try:
            handler(result)
        except Exception as error:  # noqa: BLE001 - adding the result failed: say so in the widget, not a traceback
            self.report(error)
            return
        self._progress.value = self._progress.max

    def _on_error(self, error: Exception) -> None:
        self._outcome = "error"
        self.report(error)

    def _on_aborted(self) -> None:
        self._outcome = "aborted"
        self._status.value = CANCELLED

    def _on_finished(self) -> None:
        if self._cancel_requested and self._outcome is None:  # cancelled after the job's last step: no result
            self._status.value = CANCELLED
        self._set_running(False)


_LAYER_MODULES_WARM = False


def _warm_layer_modules() -> None:
    """Import, in the worker, what napari imports lazily when the first Labels layer is added (pandas for layer
    features, skimage.color for the label colormap): 0.6-0.8 s of main-thread stall otherwise, the largest part of
    adding a result layer on a fresh viewer."""
    global _LAYER_MODULES_WARM
    if _LAYER_MODULES_WARM:
        return
    import importlib

    for name in ("pandas", "skimage.color"):
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - napari's own dependencies; nothing to warm without them
            continue
    _LAYER_MODULES_WARM = True


def _warmed(job: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``job`` (a generator function) after `_warm_layer_modules`; its events and result pass through."""
    _warm_layer_modules()
    return (yield from job(*args, **kwargs))
