"""The ``medgen`` command line: batch work over the same backend the napari plugin uses.

Every command is a thin adapter: parse arguments, read files into `Volume`s, drive one job with a
rich progress bar, write results atomically. `MedGenError`s become a one-line red message and
exit code 2 instead of a traceback, because they describe a user mistake, not a bug.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from napari_medgen.core.progress import CancelToken, Job, ProgressEvent, run_job
from napari_medgen.errors import CancelledError, MedGenError

T = TypeVar("T")

app = typer.Typer(
    name="medgen",
    help="Controllable synthesis of tumours and anatomy in medical images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def run_with_progress(job: Job[T], description: str, quiet: bool = False) -> T:
    """Drive a job with a rich progress bar (one task per stage); Ctrl-C cancels cleanly."""
    if quiet or not sys.stderr.isatty():
        return _run_with_log(job, quiet)
    cancel = CancelToken()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[message]}"),
        console=console,
        transient=False,
    ) as bar:
        tasks: dict[str, int] = {}

        def update(event: ProgressEvent) -> None:
            stage = event.stage or description
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=event.total, message="")
            bar.update(tasks[stage], completed=event.step, total=event.total, message=event.message)

        try:
            return run_job(job, update, cancel)
        except KeyboardInterrupt:
            cancel.cancel()
            job.close()
            raise CancelledError("Interrupted; no output was written.") from None


def _run_with_log(job: Job[T], quiet: bool) -> T:
    """Non-interactive progress: one line per stage change (logs stay readable in CI and Slicer)."""
    last_stage: list[str] = []

    def update(event: ProgressEvent) -> None:
        if quiet:
            return
        if not last_stage or last_stage[-1] != event.stage:
            last_stage.append(event.stage)
            console.print(f"[dim]{event.stage}...[/dim]")

    return run_job(job, update)


def _fail(error: Exception) -> None:
    console.print(f"[bold red]error:[/bold red] {error}")
    raise typer.Exit(code=2)


@app.command()
def info(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Versions, the compute device and the bundled models."""
    from napari_medgen.system_info import collect_info

    data = collect_info()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if isinstance(value, dict):
            typer.echo(f"{key}:")
            for sub_key, sub_value in value.items():
                typer.echo(f"  {sub_key}: {sub_value}")
        elif isinstance(value, list):
            typer.echo(f"{key}: {', '.join(map(str, value)) if value else '(none)'}")
        else:
            typer.echo(f"{key}: {value}")


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Input file or DICOM folder.")],
    destination: Annotated[Path, typer.Argument(help="Output file (.nii.gz, .nrrd, .seg.nrrd, .mha, ...) or folder.")],
    labels: Annotated[bool, typer.Option("--labels", help="Treat the input as a label map.")] = False,
) -> None:
    """Convert between NIfTI, NRRD, MetaImage and DICOM series, keeping spacing, origin and direction."""
    from napari_medgen.core import io

    try:
        volume = io.read_labels(source) if labels else io.read_volume(source)
        io.write_volume(volume, destination)
    except MedGenError as error:
        _fail(error)
    console.print(f"wrote {destination} {volume.shape[::-1]} voxels, spacing {volume.spacing}")


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="What to train (see `medgen info`).")],
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML training configuration.")],
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Override the config's out_dir.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Override max_steps.")] = None,
) -> None:
    """Train a model with the shared accelerate trainer (works under `accelerate launch`)."""
    from napari_medgen.training import train_from_config

    overrides: dict[str, object] = {}
    if resume:
        overrides["resume"] = True
    if out is not None:
        overrides["out_dir"] = str(out)
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    try:
        result = train_from_config(model, config, overrides=overrides)
    except MedGenError as error:
        _fail(error)
    console.print(f"trained {model}: model saved to {result}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("outputs/demo"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Run the main job on bundled defaults and write volumes, montage and a JSON report."""
    from napari_medgen.demo import run_demo

    try:
        report = run_with_progress(run_demo(out), "demo", quiet=quiet)
    except MedGenError as error:
        _fail(error)
    console.print(f"demo outputs in {out}:")
    for name in report["outputs"]:
        console.print(f"  {name}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
