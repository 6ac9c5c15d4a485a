"""Run the MedGen worker in a separate process, stream its progress lines, and cancel it.

A plain `subprocess.Popen` with a reader thread: `JobRunner.poll` never blocks, so Slicer's widget calls it from a
``qt.QTimer`` and the GUI stays responsive; tests call it in a loop. Cancel terminates the worker's whole process
group and removes the job's temporary folder, so nothing of a cancelled job remains.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

WORKER = Path(__file__).resolve().with_name("worker.py")
#: lines of worker output kept for the log shown when a job fails
LOG_LINES = 400


class JobState(Enum):
    """Where a job stands; `poll` returns it."""

    NOT_STARTED = "not started"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


def python_executable() -> str:
    """The interpreter for the worker: Slicer's ``PythonSlicer`` launcher (sets up Slicer's Python environment) when
    there is one beside the running Python or on PATH, else this Python (``sys.executable``)."""
    names = ("PythonSlicer.exe", "PythonSlicer") if os.name == "nt" else ("PythonSlicer",)
    for folder in (Path(sys.executable).parent, Path(sys.executable).parent.parent / "bin"):
        for name in names:
            if (folder / name).is_file():
                return str(folder / name)
    found = shutil.which("PythonSlicer")
    return found or sys.executable


def new_job_folder() -> Path:
    """A fresh temporary folder for one job (inputs, spec, outputs, result)."""
    return Path(tempfile.mkdtemp(prefix="medgen-job-"))


class JobRunner:
    """One worker process for one spec file; `start`, then `poll` until the state is final, then `result`."""

    def __init__(self, spec_path: Path, *, python: str | None = None,
                 on_progress: Callable[[Any], None] | None = None, on_line: Callable[[str], None] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.spec_path = Path(spec_path)
        self.folder = self.spec_path.parent
        self.python = python or python_executable()
        self.on_progress = on_progress
        self.on_line = on_line
        self.env = env
        self.state = JobState.NOT_STARTED
        self.log: list[str] = []
        self.last_progress: Any = None
        self._process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._result: dict[str, Any] | None = None

    # ---- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.state is not JobState.NOT_STARTED:
            raise RuntimeError("A JobRunner runs once; make a new one for another job.")
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True  # its own process group: cancel reaches every child
        self._process = subprocess.Popen(
            [self.python, "-u", str(WORKER), str(self.spec_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace", bufsize=1, cwd=str(self.folder),
            env=env, **kwargs)
        self.state = JobState.RUNNING
        self._reader = threading.Thread(target=self._read, name="medgen-job-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _drain(self) -> bool:
        """Hand queued lines to the callbacks; True once the output has ended."""
        from napari_medgen.core.progress import parse_progress_line

        ended = False
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return ended
            if line is None:
                ended = True
                continue
            event = parse_progress_line(line)
            if event is not None:
                self.last_progress = event
                if self.on_progress is not None:
                    self.on_progress(event)
                continue
            self.log.append(line)
            del self.log[:-LOG_LINES]
            if self.on_line is not None:
                self.on_line(line)

    def poll(self) -> JobState:
        """Forward new output to the callbacks and return the state; never blocks."""
        if self.state is not JobState.RUNNING:
            return self.state
        assert self._process is not None
        ended = self._drain()
        code = self._process.poll()
        if code is None or not ended and self._reader is not None and self._reader.is_alive():
            return self.state
        self._drain()
        self._result = self._read_result()
        ok = code == 0 and self._result.get("status") == "ok"
        self.state = JobState.DONE if ok else JobState.FAILED
        return self.state

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> JobState:
        """Poll until the job ends (scripts, tests, Slicer's self-test); ``timeout`` seconds, then cancel."""
        return wait_for(self, timeout, interval)

    def cancel(self) -> None:
        """Stop the worker (its whole process group) and remove the job folder; a no-op once the job has ended."""
        if self.state is JobState.RUNNING and self._process is not None:
            _terminate(self._process)
            self.state = JobState.CANCELLED
        elif self.state is JobState.NOT_STARTED:
            self.state = JobState.CANCELLED
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the job's temporary folder (inputs, outputs): call after the results are loaded, or on failure."""
        shutil.rmtree(self.folder, ignore_errors=True)

    # ---- outcome ----------------------------------------------------------------------------------------------
    def _read_result(self) -> dict[str, Any]:
        path = self.folder / "result.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            tail = " | ".join(self.log[-5:]) or "no output"
            return {"status": "error", "type": "WorkerCrashed",
                    "error": f"The MedGen worker stopped without a result (exit code {self.returncode}; last output: "
                    f"{tail}). See the Python console for its log."}

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    @property
    def result(self) -> dict[str, Any]:
        """The worker's result record (``status``, ``outputs`` or ``error``) once the job has ended."""
        if self._result is None:
            raise RuntimeError(f"The job has no result yet (state: {self.state.value}).")
        return self._result

    @property
    def error(self) -> str | None:
        """The message for the user when the job failed, else None."""
        if self.state is JobState.CANCELLED:
            return "Cancelled; nothing was added to the scene."
        if self.state is not JobState.FAILED:
            return None
        return str(self.result.get("error") or "The job failed.")


def _terminate(process: subprocess.Popen[str], grace: float = 5.0) -> None:
    """Terminate ``process`` and its children (process group on POSIX), killing it after ``grace`` seconds."""
    try:
        if os.name == "nt":
            process.terminate()
        else:
            os.killpg(process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError, OSError):
        pass
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            if os.name == "nt":
                process.kill()
            else:
                os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass
        process.wait(timeout=grace)


__all__ = ["JobRunner", "JobState", "WORKER", "new_job_folder", "python_executable"]


def wait_for(job: Any, timeout: float | None = None, interval: float = 0.05) -> JobState:
    """Poll ``job`` (anything with ``poll()``, ``cancel()`` and ``state``) until it ends; after ``timeout`` seconds
    cancel it. Outside Slicer's event loop only: the module's widget polls with a QTimer instead."""
    import time

    start = time.monotonic()
    while job.poll() is JobState.RUNNING:
        if timeout is not None and time.monotonic() - start > timeout:
            job.cancel()
            break
        time.sleep(interval)
    return job.state
