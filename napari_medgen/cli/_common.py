"""What every `medgen` command shares: the typer app, the progress runner, one-line errors, the --device
check, option parsing and output checks."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from napari_medgen.core.progress import CancelToken, Job, ProgressEvent, run_job
from napari_medgen.errors import CancelledError, MedGenError

if TYPE_CHECKING:
    import torch

    from napari_medgen.core.volume import LabelMap

T = TypeVar("T")

app = typer.Typer(
    name="medgen",
    help="Controllable synthesis of tumours and anatomy in medical images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)  # one message, one line: logs and pipes are not 80 columns

# options shared by several commands
DeviceOption = Annotated[str | None, typer.Option(
    "--device", help="auto|cpu|cuda|cuda:N|mps (default: $MEDGEN_DEVICE, else auto: cuda > mps > cpu)."
)]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q")]


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


def fail(error: Exception) -> NoReturn:
    """The error as one red line (never wrapped) and exit code 2."""
    console.print(f"[bold red]error:[/bold red] {error}", soft_wrap=True)
    raise typer.Exit(code=2)


def use_device(device: str | None) -> torch.device:
    """The device a model command runs on (`core.device.select_device`: --device > $MEDGEN_DEVICE > auto).
    Called first, before any file is read or model loaded, so an unavailable device fails at once."""
    from napari_medgen.core.device import select_device

    try:
        return select_device(device)
    except MedGenError as error:
        fail(error)


def floats(text: str, name: str, count: int = 3) -> tuple[float, ...]:
    """Parse 'a,b,c' options (spacing, centres) with a clear message."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise MedGenError(f"{name} needs {count} comma-separated numbers (e.g. 1,1,2.5); got '{text}'.")
    return values


def named_floats(items: list[str] | None, option: str, example: str) -> dict[str, float]:
    """``--set Name=value`` style pairs as floats."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise MedGenError(f"{option} needs Name=number (e.g. {example}); got '{item}'.")
    return out


def feature_settings(items: list[str] | None) -> dict[str, float]:
    """``--set Name=value`` pairs (pyradiomics feature names) as floats."""
    return named_floats(items, "--set", "VoxelVolume=8000")


#: seeds are 0 .. 2**63 - 1 (what every random generator the commands use accepts)
MAX_SEED = 2**63 - 1


def check_seed(seed: int) -> None:
    """Raise `MedGenError` for a --seed outside 0 .. 2**63 - 1."""
    if not 0 <= seed <= MAX_SEED:
        raise MedGenError(f"--seed must be an integer from 0 to {MAX_SEED}; got {seed}.")


def refuse_bad_seed(seed: int) -> None:
    """`check_seed` as a one-line error and exit code 2: every command with --seed calls it first, before any
    other work."""
    try:
        check_seed(seed)
    except MedGenError as error:
        fail(error)


def tumour_summary(labels: LabelMap) -> str:
    voxels = int(np.count_nonzero(labels.array))
    return f"{voxels} voxels ({voxels * float(np.prod(labels.spacing)):.0f} mm3)"


OverwriteInputOption = Annotated[bool, typer.Option(
    "--overwrite-input", help="Allow an output path to be one of the inputs (the input is replaced)."
)]


def _same_path(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file or folder (through links): `os.path.samefile` when both exist,
    else their resolved paths."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError, ValueError):
        return a.expanduser().absolute() == b.expanduser().absolute()


def _inside(inner: Path, folder: Path) -> bool:
    """Whether ``inner`` lies inside ``folder`` (resolved through links)."""
    try:
        return inner.resolve().is_relative_to(folder.resolve()) and inner.resolve() != folder.resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def refuse_input_overwrite(
    outputs: Sequence[tuple[str, Path | None]],
    inputs: Sequence[Path | str | None],
    overwrite_input: bool = False,
    *,
    replaces_folder: bool = True,
) -> None:
    """Exit with code 2 and a one-line error when an output would replace one of the inputs: the same file or
    folder (resolved through links), or a folder output that holds an input (it is replaced whole) -- unless
    ``--overwrite-input`` was given. Cheap (no file is read): commands call it before any other work.
    ``outputs`` are (option name, path) pairs; ``inputs`` that do not exist (model names) are skipped.
    ``replaces_folder=False`` for outputs written *into* a folder (``batch --out-dir``). Outputs that cannot be
    created are refused here too (`refuse_unwritable`), so every writing command gets both checks from one call."""
    if not overwrite_input:
        _refuse_inputs_as_outputs(outputs, inputs, replaces_folder)
    refuse_unwritable(outputs)


def _refuse_inputs_as_outputs(outputs: Sequence[tuple[str, Path | None]], inputs: Sequence[Path | str | None],
                              replaces_folder: bool) -> None:
    sources = [Path(p).expanduser() for p in inputs if p is not None and str(p) != ""]
    sources = [p for p in sources if p.exists()]  # model names, absent files: nothing to lose
    for option, out in outputs:
        if out is None:
            continue
        dest = Path(out).expanduser()
        for source in sources:
            if _same_path(dest, source) or (replaces_folder and _inside(source, dest)):
                how = "is" if _same_path(dest, source) else "holds"
                fail(MedGenError(
                    f"{option} {out} {how} the input {source}: it would be overwritten. Choose another output "
                    "path, or pass --overwrite-input to replace the input."
                ))


def refuse_unwritable(outputs: Sequence[tuple[str, Path | None]]) -> None:
    """Exit with code 2 and a one-line error when an output cannot be created: its nearest existing parent is a file
    or a folder this user cannot write. Cheap, so commands learn it before a model loads rather than after the work
    (`core.atomic.staged_outputs` still reports what only the write itself can find, e.g. a full disk)."""
    from napari_medgen.core.atomic import output_error

    for _, out in outputs:
        if out is None:
            continue
        dest = Path(out).expanduser().absolute()
        parent = dest.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            fail(output_error(dest, NotADirectoryError()))
        if not os.access(parent, os.W_OK | os.X_OK):
            fail(output_error(dest, PermissionError()))


def preflight(seed: int, outputs: Sequence[tuple[str, Path | None]], inputs: Sequence[Path | str | None],
              overwrite_input: bool, device: str | None, steps: int | None = None) -> torch.device:
    """The checks every model command makes before any work, in this order: the seed's range, ``steps`` >= 1 (the
    upper bound depends on the model), no output that is an input (`refuse_input_overwrite`) or that cannot be
    created (`refuse_unwritable`), the device (`use_device`). Returns the device."""
    refuse_bad_seed(seed)
    if steps is not None and steps < 1:
        fail(MedGenError(f"--steps must be at least 1; got {steps}."))
    refuse_input_overwrite(outputs, inputs, overwrite_input)
    return use_device(device)
