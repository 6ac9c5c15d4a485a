"""The ``medgen`` command line: batch work over the same backend the napari plugin uses.

Every command is a thin adapter: parse arguments, check the device (model commands, before anything is read),
read files into `Volume`s, drive one pipeline job with a rich progress bar, write results atomically.
`MedGenError`s become a one-line red message and exit code 2 instead of a traceback, because they describe a
user mistake, not a bug. One module per command group; importing them registers the commands.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading

from napari_medgen.cli._common import app, console, run_with_progress

#: the command modules, in the order their commands appear in ``medgen --help``
COMMAND_MODULES = ("io_commands", "train", "radiomics", "shape", "slice_diffusion", "tumour", "compose", "lesion_pairs",
                   "demo")
for _name in COMMAND_MODULES:
    importlib.import_module(f"napari_medgen.cli.{_name}")

__all__ = ["COMMAND_MODULES", "Terminated", "app", "console", "main", "run_with_progress"]

#: exit codes after SIGTERM and SIGINT (128 + signal number, what shells report for a process killed by it)
SIGTERM_EXIT_CODE = 143
SIGINT_EXIT_CODE = 130


class Terminated(BaseException):
    """SIGTERM arrived (``kill``, a scheduler ending the job). A `BaseException` like `KeyboardInterrupt`, so that
    ``except Exception`` does not swallow it and the cleanup of Ctrl-C runs: `core.atomic.staged_outputs` removes
    its staging folders and any output it had already renamed into place."""


def _on_sigterm(signum: int, frame: object) -> None:
    # a second SIGTERM must not interrupt the cleanup the first one started
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: object = None, line: str | None = None) -> None:
    """Python warnings (uneven DICOM slices, several series, ...) as one yellow line, like the errors."""
    from rich.markup import escape

    console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False)


_INTERRUPTED: list[bool] = []


def _on_sigint(signum: int, frame: object) -> None:
    _INTERRUPTED.append(True)
    raise KeyboardInterrupt


def _say_interrupted() -> None:
    console.print("[bold red]error:[/bold red] interrupted (Ctrl-C / SIGINT); files being written were removed, no "
                  "partial output is left.", soft_wrap=True)


def main() -> None:
    """Console-script entry point. SIGTERM takes the same cleanup path as Ctrl-C and ends with exit code 143 and a
    one-line message; warnings print as one line."""
    import warnings

    warnings.showwarning = _one_line_warning
    if hasattr(signal, "SIGTERM") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        app()
    except Terminated:
        console.print("[bold red]error:[/bold red] terminated (SIGTERM); files being written were removed, no "
                      "partial output is left.", soft_wrap=True)
        sys.exit(SIGTERM_EXIT_CODE)
    except KeyboardInterrupt:  # typer turns Ctrl-C into a silent exit 130; this is the path when it does not
        _say_interrupted()
        sys.exit(SIGINT_EXIT_CODE)
    except SystemExit as done:
        if done.code == SIGINT_EXIT_CODE and _INTERRUPTED:
            _say_interrupted()
        raise
