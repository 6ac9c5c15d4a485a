"""The ``medgen`` command line: batch work over the same backend the napari plugin uses.

Every command is a thin adapter: parse arguments, check the device (model commands, before anything is read),
read files into `Volume`s, drive one pipeline job with a rich progress bar, write results atomically.
`MedGenError`s become a one-line red message and exit code 2 instead of a traceback, because they describe a
user mistake, not a bug. One module per command group; importing them registers the commands.
"""

from __future__ import annotations

import importlib

from napari_medgen.cli._common import app, console, run_with_progress

#: the command modules, in the order their commands appear in ``medgen --help``
COMMAND_MODULES = ("io_commands", "train", "radiomics", "shape", "slice_diffusion", "tumour", "demo")
for _name in COMMAND_MODULES:
    importlib.import_module(f"napari_medgen.cli.{_name}")

__all__ = ["COMMAND_MODULES", "app", "console", "main", "run_with_progress"]


def main() -> None:
    """Console-script entry point."""
    app()
