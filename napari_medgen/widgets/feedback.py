"""How dock widgets show a running job: progress bar + status line, and errors as a status line plus a
napari notification (a `MedGenError` message as is; anything else marked as unexpected)."""

from __future__ import annotations

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
