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

import numpy as np
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
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override any config key, e.g. --set lr=1e-4 --set data.root=DIR.")
    ] = None,
) -> None:
    """Train a model with the shared accelerate trainer (works under `accelerate launch`)."""
    from napari_medgen.training import train_from_config
    from napari_medgen.training.launch import progress_printer

    overrides: list[str] = list(set_ or [])
    bad = [item for item in overrides if "=" not in item]
    if bad:
        _fail(MedGenError(f"--set needs KEY=VALUE; got {bad}."))
    if resume:
        overrides.append("resume=true")
    if out is not None:
        overrides.append(f"out_dir={out}")
    if max_steps is not None:
        overrides.append(f"max_steps={max_steps}")
    try:
        result = train_from_config(model, config, overrides=overrides, progress=progress_printer(quiet=False))
    except MedGenError as error:
        _fail(error)
    console.print(f"trained {model}: model saved to {result}")


def _radiomics_pairs(image: Path, label: Path | None) -> list[tuple[str, Path, Path]]:
    """(case, image, label) triples: one pair of files, a data folder, or two parallel folders."""
    from napari_medgen.core.io import detect_format
    from napari_medgen.errors import InvalidInputError
    from napari_medgen.training.datasets import find_pairs

    single = image.is_file() or detect_format(image) == "dicom"
    if single:
        if label is None:
            raise InvalidInputError("Give the label file after the image: medgen radiomics IMAGE LABEL.")
        return [(image.name, image, label)]
    if not image.is_dir():
        raise InvalidInputError(f"{image} does not exist.")
    if label is None:
        pairs = find_pairs(image, allow_unpaired=True)
        return [(p.case_id, p.image, p.labels[0]) for p in pairs]
    if not label.is_dir():
        raise InvalidInputError("With a folder of images, LABEL must be a folder of label files with the same names.")
    triples = []
    for path in sorted(p for p in image.iterdir() if detect_format(p) and not p.name.startswith(".")):
        partner = label / path.name
        if not partner.exists():
            raise InvalidInputError(f"No label file {partner} for image {path.name}; label files must share names.")
        triples.append((path.name, path, partner))
    if not triples:
        raise InvalidInputError(f"No images found in {image}.")
    return triples


def _radiomics_job(pairs: list[tuple[str, Path, Path]], label: int | None, params) -> Job[list[dict]]:  # noqa: ANN001
    from napari_medgen.radiomics.table import iter_feature_rows

    rows: list[dict] = []
    for index, row in enumerate(iter_feature_rows(pairs, label, params)):
        rows.append(row)
        yield ProgressEvent(index + 1, len(pairs), "radiomics", str(row["Case"]))
    return rows


@app.command()
def radiomics(
    image: Annotated[Path, typer.Argument(help="Image file, DICOM folder, or a folder of cases.")],
    label: Annotated[Path | None, typer.Argument(help="Label file (or folder of label files).")] = None,
    label_value: Annotated[int | None, typer.Option("--label", help="Label value (default: params or 1).")] = None,
    params: Annotated[Path | None, typer.Option("--params", help="pyradiomics-style params YAML.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output .json or .csv (default: JSON to stdout).")] = None,
) -> None:
    """Radiomics features with pyradiomics names and values (shape, first-order and texture classes)."""
    from napari_medgen.radiomics.params import RadiomicsParams, load_params
    from napari_medgen.radiomics.settings import RadiomicsSettings
    from napari_medgen.radiomics.table import table_text, write_table

    try:
        loaded = load_params(params) if params else RadiomicsParams(RadiomicsSettings())
        pairs = _radiomics_pairs(image, label)
        rows = run_with_progress(_radiomics_job(pairs, label_value, loaded), "radiomics")
        if out is None:
            typer.echo(table_text(rows, "json"), nl=False)
        else:
            write_table(rows, out)
            console.print(f"wrote {len(rows)} case(s) to {out}")
    except MedGenError as error:
        _fail(error)


def _floats(text: str, name: str, count: int = 3) -> tuple[float, ...]:
    """Parse 'a,b,c' options (spacing, centres) with a clear message."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise MedGenError(f"{name} needs {count} comma-separated numbers (e.g. 1,1,2.5); got '{text}'.")
    return values


def _feature_settings(items: list[str] | None) -> dict[str, float]:
    """``--set Name=value`` pairs (pyradiomics feature names) as floats."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise MedGenError(f"--set needs Name=number (e.g. VoxelVolume=8000); got '{item}'.")
    return out


@app.command()
def shape(
    out: Annotated[Path, typer.Option("--out", help="Output mask file (.nii.gz, .nrrd, .seg.nrrd, ...).")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Requested shape feature (pyradiomics name), e.g. --set VoxelVolume=8000 --set Sphericity=0.8."
    )] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Named request, e.g. medium-round.")] = None,
    spacing: Annotated[str, typer.Option("--spacing", help="Output voxel size SX,SY,SZ in mm.")] = "1,1,1",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same mask).")] = 0,
    model: Annotated[str | None, typer.Option("--model", help="Bundled model name or checkpoint folder.")] = None,
    reference: Annotated[Path | None, typer.Option(
        "--reference", help="Place the mask into this image's grid (needs --center-mm)."
    )] = None,
    center_mm: Annotated[str | None, typer.Option("--center-mm", help="Tumour centre X,Y,Z (LPS mm).")] = None,
) -> None:
    """Generate a tumour mask with requested shape features (volume, sphericity, ...)."""
    from napari_medgen.core import io
    from napari_medgen.pipelines.shape_generation import DEFAULT_MODEL, generate_shape, place_shape

    try:
        features = _feature_settings(set_)
        mask = generate_shape(features or None, preset=preset, spacing=_floats(spacing, "--spacing"), seed=seed,
                              model=model or DEFAULT_MODEL)
        if reference is not None or center_mm is not None:
            if reference is None or center_mm is None:
                raise MedGenError("--reference and --center-mm go together: the image grid and the point in it.")
            mask = place_shape(mask, io.read_volume(reference), _floats(center_mm, "--center-mm"))
        io.write_volume(mask, out)
    except MedGenError as error:
        _fail(error)
    volume = float((mask.array > 0).sum() * np.prod(mask.spacing))
    console.print(f"wrote {out}: {volume:.0f} mm3 of tumour on a {mask.shape[::-1]} grid, spacing {mask.spacing}")


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
