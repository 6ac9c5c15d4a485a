"""`medgen demo`: the job behind `make demo` (bundled models and data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from napari_medgen.cli._common import QuietOption, app, console, fail, run_with_progress
from napari_medgen.errors import MedGenError


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("outputs/demo"),
    quiet: QuietOption = False,
) -> None:
    """Run the main job on bundled defaults and write volumes, montage and a JSON report."""
    from napari_medgen.demo import run_demo

    try:
        report = run_with_progress(run_demo(out), "demo", quiet=quiet)
    except MedGenError as error:
        fail(error)
    console.print(f"demo outputs in {out}:")
    for name in report["outputs"]:
        console.print(f"  {name}")
