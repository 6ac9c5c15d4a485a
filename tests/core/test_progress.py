"""The job protocol drives the same generator from the CLI, napari and a Slicer subprocess."""

from __future__ import annotations

import pytest

from napari_medgen.core.progress import (
    CancelToken,
    Job,
    ProgressEvent,
    ProgressReporter,
    format_progress_line,
    parse_progress_line,
    run_job,
)
from napari_medgen.errors import CancelledError


def counting_job(n: int, written: list[int]) -> Job[int]:
    partial: list[int] = []
    for i in range(n):
        partial.append(i)
        yield ProgressEvent(i + 1, n, "count", f"item {i}")
    written.extend(partial)  # results are committed only at the end
    return sum(partial)


def test_run_job_returns_value_and_reports_every_step() -> None:
    events: list[ProgressEvent] = []
    written: list[int] = []
    assert run_job(counting_job(4, written), events.append) == 6
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert events[-1].fraction == 1.0
    assert written == [0, 1, 2, 3]


def test_cancel_stops_at_next_step_and_commits_nothing() -> None:
    token = CancelToken()
    written: list[int] = []

    def cancel_after_two(event: ProgressEvent) -> None:
        if event.step == 2:
            token.cancel()

    with pytest.raises(CancelledError):
        run_job(counting_job(10, written), cancel_after_two, token)
    assert written == []


def test_reporter_raises_when_cancelled() -> None:
    token = CancelToken()
    seen: list[ProgressEvent] = []
    reporter = ProgressReporter(3, "train", seen.append, token)
    reporter.advance(message="a")
    token.cancel()
    with pytest.raises(CancelledError):
        reporter.advance()
    assert [e.step for e in seen] == [1]


@pytest.mark.parametrize(
    "event",
    [ProgressEvent(3, 20, "sampling", "step 3"), ProgressEvent(7, None, "epochs", ""), ProgressEvent(0, 5)],
)
def test_progress_lines_round_trip(event: ProgressEvent) -> None:
    line = format_progress_line(event)
    assert parse_progress_line(line) == event
    assert parse_progress_line("some other log line") is None
