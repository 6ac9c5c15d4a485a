"""The job runner on its own: a worker that cannot run, crashes or gets a bad spec ends with a clear message."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from MedGenLib.jobs import JobRunner, JobState, new_job_folder, python_executable


def _spec(folder: Path, spec: dict) -> Path:
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def test_python_executable_is_this_python_outside_slicer() -> None:
    assert python_executable() == sys.executable


def test_unknown_operation_fails_with_the_backend_message() -> None:
    folder = new_job_folder()
    runner = JobRunner(_spec(folder, {"operation": "explode", "options": {}}))
    runner.start()
    assert runner.wait(120) is JobState.FAILED
    assert "Unknown operation 'explode'" in runner.error and runner.returncode == 2
    runner.cleanup()
    assert not folder.exists()


def test_a_crashing_worker_is_reported_not_raised(tmp_path: Path) -> None:
    """An interpreter that dies without writing a result (simulated: a script that prints a fatal error and exits
    with 134) gives a message with the exit code and the last output, pointing to the log."""
    folder = new_job_folder()
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Fatal Python error: simulated'\nexit 134\n")
    fake.chmod(0o755)
    runner = JobRunner(_spec(folder, {"operation": "paired", "options": {}}), python=str(fake))
    runner.start()
    assert runner.wait(60) is JobState.FAILED
    assert "stopped without a result (exit code 134" in runner.error and "simulated" in runner.error
    assert runner.log == ["Fatal Python error: simulated"]
    runner.cancel()  # a no-op for the process, removes the folder
    assert runner.state is JobState.FAILED and not folder.exists()


def test_cancel_before_start_and_single_use() -> None:
    folder = new_job_folder()
    runner = JobRunner(_spec(folder, {"operation": "paired", "options": {}}))
    runner.cancel()
    assert runner.state is JobState.CANCELLED and runner.poll() is JobState.CANCELLED
    assert "Cancelled" in runner.error and not folder.exists()
