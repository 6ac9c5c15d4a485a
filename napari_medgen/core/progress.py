"""One progress + cancel protocol for every front end.

A long operation is written as a *job*: a generator that ``yield``s `ProgressEvent`s (one per
sampling step, epoch, slice ...) and ``return``s its result. That single shape is driven by

* the CLI (`run_job` with a rich progress bar as callback),
* napari (``thread_worker`` turns the generator into a ``GeneratorWorker``: every yield is a
  progress update and a cancellation point, and ``.returned`` delivers the result),
* a Slicer subprocess (`format_progress_line` prints machine-readable lines that the module parses
  with `parse_progress_line`),
* plain Python (`run_job(job)` simply returns the result).

Cancellation is cooperative: a `CancelToken` is checked at every yield; a cancelled job raises
`CancelledError` and, because results are only built at the end, leaves nothing half-written.
Code that cannot be a generator (e.g. a library loop) uses `ProgressReporter`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

from napari_medgen.errors import CancelledError

T = TypeVar("T")


@dataclass(frozen=True)
class ProgressEvent:
    """A progress update: ``step`` of ``total`` (None when unknown) within a named ``stage``."""

    step: int
    total: int | None = None
    stage: str = ""
    message: str = ""

    @property
    def fraction(self) -> float | None:
        """Completed fraction in [0, 1], or None for an open-ended stage."""
        if not self.total:
            return None
        return min(max(self.step / self.total, 0.0), 1.0)


ProgressCallback = Callable[[ProgressEvent], None]
Job = Generator[ProgressEvent, None, T]


class CancelToken:
    """Thread-safe flag a GUI thread sets and a worker thread checks."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Request cancellation; the job stops at its next progress point."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise `CancelledError` when cancellation was requested."""
        if self._event.is_set():
            raise CancelledError("Cancelled by the user; no output was written.")


def run_job(
    job: Job[T], callback: ProgressCallback | None = None, cancel: CancelToken | None = None
) -> T:
    """Drive ``job`` to completion, forwarding events to ``callback`` and honouring ``cancel``."""
    try:
        while True:
            if cancel is not None and cancel.cancelled:
                job.close()
                cancel.raise_if_cancelled()
            event = next(job)
            if callback is not None:
                callback(event)
    except StopIteration as stop:
        return stop.value


class ProgressReporter:
    """Callback-style progress for code that is not a generator: ``advance()`` reports and checks cancel."""

    def __init__(
        self,
        total: int | None,
        stage: str = "",
        callback: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        self.total = total
        self.stage = stage
        self.step = 0
        self._callback = callback
        self._cancel = cancel

    def advance(self, n: int = 1, message: str = "") -> ProgressEvent:
        """Move ``n`` steps forward; raises `CancelledError` if the user cancelled."""
        if self._cancel is not None:
            self._cancel.raise_if_cancelled()
        self.step += n
        event = ProgressEvent(self.step, self.total, self.stage, message)
        if self._callback is not None:
            self._callback(event)
        return event


_LINE_PREFIX = "MEDGEN-PROGRESS"
_LINE_RE = re.compile(rf"^{_LINE_PREFIX} (\d+)/(\d+|\?) \[([^\]]*)\] ?(.*)$")


def format_progress_line(event: ProgressEvent) -> str:
    """One line a parent process (e.g. the Slicer module) can parse: ``MEDGEN-PROGRESS 3/20 [stage] msg``."""
    total = "?" if event.total is None else str(event.total)
    stage = event.stage.replace("]", ")")
    message = event.message.replace("\n", " ")
    return f"{_LINE_PREFIX} {event.step}/{total} [{stage}] {message}".rstrip()


def parse_progress_line(line: str) -> ProgressEvent | None:
    """Inverse of `format_progress_line`; None for any other output line."""
    match = _LINE_RE.match(line.strip())
    if match is None:
        return None
    step, total, stage, message = match.groups()
    return ProgressEvent(int(step), None if total == "?" else int(total), stage, message)
