"""How dock widgets show a running job: progress bar + status line, and errors as a status line plus a
napari notification (a `MedGenError` message as is; anything else marked as unexpected)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari_medgen.errors import MedGenError


def show_progress(progress: Any, status: Any, event: Any) -> None:
    """Move ``progress`` (a magicgui ProgressBar) to a `ProgressEvent` and describe it in ``status``."""
    if event.total:
        progress.max = int(event.total)
        progress.value = min(int(event.step), int(event.total))
    status.value = f"{event.stage}: {event.message}" if event.message else str(event.stage)


def show_error(status: Any, error: Exception) -> None:
    """Put ``error`` in the widget's ``status`` line and in a napari notification."""
    from napari.utils.notifications import show_error as notify

    status.value = f"error: {error}"
    if isinstance(error, MedGenError):
        notify(str(error))
    else:
        notify(f"Unexpected error ({type(error).__name__}): {error}")


def start_job_worker(
    job: Callable[..., Any],
    *args: Any,
    on_progress: Callable[[Any], None],
    on_returned: Callable[[Any], None],
    on_error: Callable[[Exception], None],
    on_aborted: Callable[[], None],
    on_finished: Callable[[], None],
    **kwargs: Any,
) -> Any:
    """Run the generator job ``job(*args, **kwargs)`` in a napari worker thread: every yielded `ProgressEvent`
    goes to ``on_progress`` and is a cancellation point (``worker.quit()``), the result to ``on_returned`` only
    at the end (so a cancelled or failed run adds nothing). Returns the started worker."""
    from napari.qt.threading import create_worker

    worker = create_worker(job, *args, **kwargs, _start_thread=False, _ignore_errors=True)
    worker.yielded.connect(on_progress)
    worker.returned.connect(on_returned)
    worker.errored.connect(on_error)
    worker.aborted.connect(on_aborted)
    worker.finished.connect(on_finished)
    worker.start()
    return worker
