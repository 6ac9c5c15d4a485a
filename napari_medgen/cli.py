"""The ``medgen`` command line: batch work over the same backend the napari plugin uses.

Every command is a thin adapter: parse arguments, read files into `Volume`s, drive one job with a
rich progress bar, write results atomically. `MedGenError`s become a one-line red message and
exit code 2 instead of a traceback, because they describe a user mistake, not a bug.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from napari_medgen.core.progress import CancelToken, Job, ProgressEvent, run_job
from napari_medgen.errors import CancelledError, MedGenError

if TYPE_CHECKING:
    from napari_medgen.core.volume import Volume

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
    candidates: Annotated[int | None, typer.Option(
        "--candidates", help="Noise draws tried; the one matching the request best is kept (default 16; 1 = one draw)."
    )] = None,
    reference: Annotated[Path | None, typer.Option(
        "--reference", help="Place the mask into this image's grid (needs --center-mm)."
    )] = None,
    center_mm: Annotated[str | None, typer.Option("--center-mm", help="Tumour centre X,Y,Z (LPS mm).")] = None,
) -> None:
    """Generate a tumour mask with requested shape features (volume, sphericity, ...)."""
    from napari_medgen.core import io
    from napari_medgen.pipelines.shape_generation import (
        DEFAULT_CANDIDATES,
        DEFAULT_MODEL,
        generate_shape,
        place_shape,
    )

    try:
        features = _feature_settings(set_)
        mask = generate_shape(features or None, preset=preset, spacing=_floats(spacing, "--spacing"), seed=seed,
                              model=model or DEFAULT_MODEL,
                              candidates=DEFAULT_CANDIDATES if candidates is None else candidates)
        if reference is not None or center_mm is not None:
            if reference is None or center_mm is None:
                raise MedGenError("--reference and --center-mm go together: the image grid and the point in it.")
            mask = place_shape(mask, io.read_volume(reference), _floats(center_mm, "--center-mm"))
        io.write_volume(mask, out)
    except MedGenError as error:
        _fail(error)
    volume = float((mask.array > 0).sum() * np.prod(mask.spacing))
    console.print(f"wrote {out}: {volume:.0f} mm3 of tumour on a {mask.shape[::-1]} grid, spacing {mask.spacing}")


# ---- mask-guided slice diffusion: seg2img and paired ----------------------------------------------------
_EIGHT_BIT_2D = (".png", ".jpg", ".jpeg", ".bmp")
_PAIRED_FORMATS = ("png", "nii.gz", "nrrd")


def _check_output_file(path: Path, n_slices: int) -> None:
    """Refuse an output name `write_volume` cannot honour *before* a long generation, not after it."""
    from napari_medgen.core.io import FORMAT_EXTENSIONS, SUPPORTED_EXTENSIONS

    name = path.name.lower()
    ext = next((e for e in SUPPORTED_EXTENSIONS if name.endswith(e) and len(name) > len(e)), None)
    if path.is_dir() or (ext is None and path.suffix == ""):
        return  # a DICOM series folder; write_volume checks that it may be replaced
    if ext is None or ext == ".dcm":
        raise MedGenError(
            f"Cannot write {path.name}: use a file name ending in .nii.gz, .nrrd, .mha, .png (2D), ... "
            "or a folder name without extension for a DICOM series."
        )
    two_d = set(FORMAT_EXTENSIONS["image2d"]) - {".tif", ".tiff"}
    if ext in two_d and n_slices != 1:
        raise MedGenError(
            f"{ext} holds one 2D slice but the labels have {n_slices} slices; write .nii.gz, .nrrd or .mha."
        )


def _as_2d_pixels(volume: Volume, path: Path) -> Volume:
    """8-bit 2D formats hold integers: [0, 1] outputs become 0..255, reference-unit outputs are rounded."""
    if not path.name.lower().endswith(_EIGHT_BIT_2D) or volume.array.dtype.kind != "f":
        return volume
    arr = volume.array
    if volume.metadata.get("units") == "normalised [0, 1]":
        arr = arr * 255.0
    top = 65535 if path.name.lower().endswith(".png") and arr.max() > 255.5 else 255
    return volume.with_array(np.clip(np.round(arr), 0, top).astype(np.uint8 if top == 255 else np.uint16))


def _default_steps(model: str | Path, sampler: str, steps: int | None) -> int:
    """The sampler's usual step count, capped by the model's training schedule (``ddpm`` = all of it)."""
    from napari_medgen.hub import read_checkpoint_config
    from napari_medgen.pipelines.diffusion_sampling import DEFAULT_STEPS, SAMPLERS

    if sampler not in SAMPLERS:
        raise MedGenError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    if steps is not None:
        return steps
    total = read_checkpoint_config(model)["config"].get("num_train_timesteps", DEFAULT_STEPS[sampler])
    return min(DEFAULT_STEPS[sampler], int(total))


def _class_labels(config: dict) -> dict[int, str]:
    """Label value -> "1 core" for the summary lines (just "1" where the checkpoint has no real name)."""
    values = [int(v) for v in config.get("class_values", [])]
    names = list(config.get("class_names") or [])
    out = {}
    for i, v in enumerate(values):
        name = names[i] if i < len(names) else ""
        out[v] = f"{v} {name}" if name and name not in (str(v), f"class {v}") else str(v)
    return out


def _check_counts(seed: int, batch_size: int) -> None:
    """Options every sampling command shares, checked before any model is loaded."""
    if seed < 0:
        raise MedGenError(f"--seed must be 0 or a positive integer; got {seed}.")
    if batch_size < 1:
        raise MedGenError(f"--batch-size must be at least 1; got {batch_size}.")


@app.command()
def seg2img(
    labels: Annotated[Path, typer.Argument(help="Label map (.nii.gz, .nrrd, .seg.nrrd, 2D .png, DICOM folder).")],
    out: Annotated[Path, typer.Option("--out", help="Output image (.nii.gz, .nrrd, .mha, .png for 2D, ...).")],
    model: Annotated[str | None, typer.Option(
        "--model", help="Mask-diffusion model: bundled name or checkpoint folder (default: seg2img-brain)."
    )] = None,
    axis: Annotated[int, typer.Option("--axis", help="Array axis to slice along (0 = z, 1 = y, 2 = x).")] = 0,
    drop_class: Annotated[list[int] | None, typer.Option(
        "--drop-class", help="Label value left unconstrained (mask-ablated models); repeat for several."
    )] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", help="Sampling steps (default: 20 for dpmpp, 50 for ddim, the full schedule for ddpm)."
    )] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="ddim, dpmpp or ddpm.")] = "dpmpp",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same image).")] = 0,
    reference: Annotated[Path | None, typer.Option(
        "--reference", help="The scan the labels were drawn on: output in its intensity units; enables --similarity."
    )] = None,
    similarity: Annotated[float, typer.Option(
        "--similarity", help="0..1: how much each slice follows the reference slice (needs --reference)."
    )] = 0.0,
    noise: Annotated[str, typer.Option(
        "--noise", help="Starting noise across slices: independent, shared or correlated."
    )] = "independent",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Slices generated together.")] = 16,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Generate an image that follows a label map, slice by slice, on exactly the labels' grid."""
    import time

    from napari_medgen.core import io
    from napari_medgen.hub import read_checkpoint_config
    from napari_medgen.pipelines.slice_generation import DEFAULT_MODEL, generate_from_labels_job

    model_name = model or DEFAULT_MODEL
    dropped = sorted({int(c) for c in drop_class or []})
    try:
        _check_counts(seed, batch_size)
        n_steps = _default_steps(model_name, sampler, steps)
        config = read_checkpoint_config(model_name)["config"]
        ref = io.read_volume(reference) if reference is not None else None
        label_map = io.read_labels(labels, reference=ref)
        _check_output_file(out, label_map.shape[0])
        start = time.perf_counter()
        job = generate_from_labels_job(
            label_map, model=model_name, axis=axis, drop_classes=dropped, steps=n_steps, sampler=sampler,
            seed=seed, reference=ref, similarity=similarity, noise=noise, batch_size=batch_size,
        )
        image = run_with_progress(job, "seg2img", quiet=quiet)
        elapsed = time.perf_counter() - start
        io.write_volume(_as_2d_pixels(image, out), out)
    except MedGenError as error:
        _fail(error)
    names = _class_labels(config)
    present = set(label_map.labels())
    constrained = [v for v in names if v not in dropped]
    summary = ", ".join(names[v] + ("" if v in present else " (absent)") for v in constrained) or "none"
    dropped_text = ", ".join(names.get(v, str(v)) for v in dropped) or "none"
    console.print(
        f"wrote {out}: {image.shape[::-1]} voxels in {elapsed:.1f} s ({n_steps} {sampler} steps, seed {seed}); "
        f"constrained classes: {summary}; dropped: {dropped_text}"
    )
    absent = [v for v in constrained if v not in present]
    if absent and config.get("trained_with_ablation", False):
        flags = " ".join(f"--drop-class {v}" for v in absent)
        listed = ", ".join(names[v] for v in absent)
        which, it = (f"class {listed} is", "it") if len(absent) == 1 else (f"classes {listed} are", "them")
        console.print(
            f"hint: {which} not in the labels, so the image was generated with {it} constrained as absent; "
            f"to let the model fill {it} in freely, add {flags}"
        )


def _paired_outputs_only(folder: Path) -> bool:
    """True when ``folder`` holds nothing but files an earlier `medgen paired` run wrote (safe to replace)."""
    import re

    pattern = re.compile(r"(image|mask)_\d+\.(png|nii\.gz|nrrd)")
    return all(entry.is_file() and pattern.fullmatch(entry.name) for entry in folder.iterdir())


@app.command()
def paired(
    n: Annotated[int, typer.Option("--n", help="Number of (image, mask) pairs.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (image_000.png, mask_000.png, ...).")],
    model: Annotated[str | None, typer.Option(
        "--model", help="Paired-guider model: bundled name or checkpoint folder (default: busi-paired-guider)."
    )] = None,
    image_model: Annotated[str | None, typer.Option(
        "--image-model", help="Mask-diffusion image model to pair with the guider (default: the guider's partner)."
    )] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", help="Sampling steps (default: 50 for ddim, 20 for dpmpp, the full schedule for ddpm)."
    )] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="ddim, dpmpp or ddpm.")] = "ddim",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same pairs).")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="png (8-bit), nii.gz or nrrd (float images).")] = "png",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Pairs generated together.")] = 8,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing output folder of an earlier `medgen paired` run."
    )] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Generate new 2D images together with their lesion masks (paired generation, PIG)."""
    import shutil
    import time
    import uuid

    from napari_medgen.core import io
    from napari_medgen.core.atomic import commit_folder
    from napari_medgen.pipelines.paired_generation import DEFAULT_GUIDER, generate_pairs_job

    guider = model or DEFAULT_GUIDER
    dest = out.expanduser().absolute()
    staged: Path | None = None
    created: list[Path] = []
    try:
        if fmt not in _PAIRED_FORMATS:
            raise MedGenError(f"--format must be one of {', '.join(_PAIRED_FORMATS)}; got {fmt!r}.")
        if n < 1:
            raise MedGenError(f"--n (number of pairs) must be a positive integer; got {n}.")
        _check_counts(seed, batch_size)
        if dest.exists() and not dest.is_dir():
            raise MedGenError(f"{dest} is a file; --out must be a folder (new or empty).")
        if dest.is_dir() and any(dest.iterdir()):
            if not overwrite:
                raise MedGenError(f"{dest} is not empty; choose a new folder or pass --overwrite to replace it.")
            if not _paired_outputs_only(dest):
                raise MedGenError(
                    f"{dest} holds files that `medgen paired` did not write, so it will not be replaced even with "
                    "--overwrite; choose a new or empty folder."
                )
        n_steps = _default_steps(guider, sampler, steps)
        start = time.perf_counter()
        job = generate_pairs_job(n, guider=guider, image_model=image_model, steps=n_steps, sampler=sampler,
                                 seed=seed, batch_size=batch_size)
        pairs = run_with_progress(job, "paired", quiet=quiet)
        elapsed = time.perf_counter() - start
        parent = dest.parent
        while not parent.exists():
            created.append(parent)
            parent = parent.parent
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}.medgen-tmp"
        staged.mkdir()
        width = max(3, len(str(n)))
        for index, (image, mask) in enumerate(pairs):
            target = staged / f"image_{index:0{width}d}.{fmt}"
            io.write_volume(_as_2d_pixels(image, target), target)
            io.write_volume(mask, staged / f"mask_{index:0{width}d}.{fmt}")
        commit_folder(staged, dest)
        staged = None
    except MedGenError as error:
        _fail(error)
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
            for folder in created:
                if folder.exists() and not any(folder.iterdir()):
                    folder.rmdir()
    size = pairs[0][0].shape[1:][::-1]
    console.print(f"wrote {n} image/mask pairs ({size[0]}x{size[1]} px, {fmt}) to {dest} in {elapsed:.1f} s "
                  f"({n_steps} {sampler} steps, seed {seed})")


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
