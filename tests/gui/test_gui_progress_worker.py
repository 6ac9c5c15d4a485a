"""The job protocol driven by napari's thread_worker: yields are progress + cancel points, return is the result."""

from __future__ import annotations

import time

import pytest

from napari_medgen.core.progress import Job, ProgressEvent

napari = pytest.importorskip("napari")
pytestmark = pytest.mark.gui


def slow_job(n: int, committed: list[int]) -> Job[int]:
    done = []
    for i in range(n):
        time.sleep(0.02)
        done.append(i)
        yield ProgressEvent(i + 1, n, "steps")
    committed.extend(done)
    return len(done)


def test_generator_worker_reports_progress_and_returns(qtbot) -> None:
    from napari.qt.threading import create_worker

    committed: list[int] = []
    events: list[ProgressEvent] = []
    results: list[int] = []
    worker = create_worker(slow_job, 5, committed, _start_thread=False)
    worker.yielded.connect(events.append)
    worker.returned.connect(results.append)
    with qtbot.waitSignal(worker.finished, timeout=10000):
        worker.start()
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
    assert results == [5] and committed == [0, 1, 2, 3, 4]


def test_quitting_the_worker_cancels_without_a_result(qtbot) -> None:
    from napari.qt.threading import create_worker

    committed: list[int] = []
    results: list[int] = []
    worker = create_worker(slow_job, 200, committed, _start_thread=False)
    worker.returned.connect(results.append)
    worker.yielded.connect(lambda event: worker.quit() if event.step == 3 else None)
    with qtbot.waitSignal(worker.finished, timeout=10000):
        worker.start()
    assert results == [] and committed == []
