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
    from napari_medgen.core.volume import LabelMap, Volume

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
    match_axes: Annotated[bool, typer.Option(
        "--match-axes/--no-match-axes",
        help="Stretch the shape along its principal axes to the requested Elongation/Flatness (default on).",
    )] = True,
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
                              candidates=DEFAULT_CANDIDATES if candidates is None else candidates,
                              match_axes=match_axes)
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


# ---- tumour synthesis with the latent texture bridge: synth, remove, batch ------------------------------
#: file formats the tumour commands write (single files, so that every output can be staged and renamed)
_EDIT_OUTPUTS = (".nii.gz", ".nii", ".nrrd", ".mha")
#: batch inputs found in a folder; files whose name contains one of `_NOT_IMAGES` are segmentations
_BATCH_INPUTS = (".nii.gz", ".nii", ".nrrd", ".mha")
_NOT_IMAGES = ("label", "mask", "seg")
#: shape requests of `medgen batch` (log-uniform volume, uniform sphericity) and its centre margin
BATCH_VOLUME_RANGE = (2000.0, 15000.0)
BATCH_SPHERICITY_RANGE = (0.6, 0.85)
BATCH_MARGIN_MM = 15.0


def _check_edit_output(path: Path, option: str, allowed: tuple[str, ...] = _EDIT_OUTPUTS) -> Path:
    """Refuse an output name the tumour commands cannot write *before* the model runs, not after it."""
    dest = path.expanduser().absolute()
    if dest.is_dir():
        raise MedGenError(f"{option} {path} is a folder; give a file name such as {dest / 'out.nii.gz'}.")
    if not any(dest.name.lower().endswith(ext) and len(dest.name) > len(ext) for ext in allowed):
        raise MedGenError(f"{option} {path.name}: use a file name ending in {', '.join(allowed)}.")
    return dest


def _check_edit_outputs(out: Path, mask_out: Path | None, report: Path | None) -> None:
    """The scan, mask and report outputs of a tumour command: writable kinds, and all different."""
    _check_edit_output(out, "--out")
    if mask_out is not None:
        _check_edit_output(mask_out, "--mask-out", (*_EDIT_OUTPUTS, ".seg.nrrd"))
    if report is not None:
        _check_edit_output(report, "--report", (".json",))
    given = [p.expanduser().absolute() for p in (out, mask_out, report) if p is not None]
    if len(set(given)) != len(given):
        raise MedGenError("The output files must all be different (--out, --mask-out, --report).")


def _check_edit_counts(seed: int, steps: int | None) -> None:
    if seed < 0:
        raise MedGenError(f"--seed must be 0 or a positive integer; got {seed}.")
    if steps is not None and steps < 1:
        raise MedGenError(f"--steps must be at least 1; got {steps}.")


def _texture_settings(items: list[str] | None) -> dict[str, float]:
    """``--texture Name=value`` pairs (texture feature names, ``original_`` prefix optional) as floats."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise MedGenError(f"--texture needs Name=number (e.g. firstorder_Mean=0.2); got '{item}'.")
    return out


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _json_text(data: object) -> str:
    return json.dumps(data, indent=2, default=_json_default) + "\n"


def _write_all(outputs: list[tuple[Volume | str, Path]]) -> None:
    """Write every output or none of them.

    Each is written into a hidden folder beside its destination, then all are renamed into place; an error
    or Ctrl-C while writing leaves no new file behind (a file renamed already is removed again).
    """
    import os
    import shutil
    import uuid

    from napari_medgen.core import io

    staging: list[Path] = []
    created: list[Path] = []
    ready: list[tuple[Path, Path]] = []
    committed: list[Path] = []
    try:
        for content, path in outputs:
            dest = path.expanduser().absolute()
            parent = dest.parent
            while not parent.exists():
                created.append(parent)
                parent = parent.parent
            dest.parent.mkdir(parents=True, exist_ok=True)
            folder = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}.medgen-tmp"
            folder.mkdir()
            staging.append(folder)
            if isinstance(content, str):
                (folder / dest.name).write_text(content, encoding="utf-8")
            else:
                io.write_volume(content, folder / dest.name)
            ready.append((folder / dest.name, dest))
        for staged, dest in ready:
            os.replace(staged, dest)
            committed.append(dest)
    except BaseException as error:
        for dest in committed:
            dest.unlink(missing_ok=True)
        for folder in staging:
            shutil.rmtree(folder, ignore_errors=True)
        for folder in created:  # innermost first
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()
        if isinstance(error, OSError):
            raise MedGenError(f"Could not write the outputs ({error}); none was written. Check the output paths "
                              "and free disk space.") from error
        raise
    for folder in staging:
        shutil.rmtree(folder, ignore_errors=True)


def _shape_mask(path: Path, volume: Volume) -> LabelMap:
    """A ``--shape`` mask: snapped to the scan's grid when it lies on it (float header rounding); otherwise the
    backend places it with its centroid at ``--center-mm``, whatever grid the mask came from."""
    from napari_medgen.core import io
    from napari_medgen.core.volume import LabelMap

    mask = io.read_labels(path)
    if volume.same_grid(mask, tol=1e-4):
        return LabelMap(mask.array, volume.spacing, volume.origin, volume.direction, mask.metadata)
    return mask


def _tumour_summary(labels: LabelMap) -> str:
    voxels = int(np.count_nonzero(labels.array))
    return f"{voxels} voxels ({voxels * float(np.prod(labels.spacing)):.0f} mm3)"


# options shared by the texture-bridge commands (synth, remove, batch)
BridgeStepsOption = Annotated[int | None, typer.Option(
    "--steps", help="Bridge sampling steps (default 25, at most the model's training schedule)."
)]
BridgeModelOption = Annotated[str | None, typer.Option(
    "--model", help="Texture-bridge model: bundled name or checkpoint folder (default: bridge-brain-t1c)."
)]
EditReportOption = Annotated[Path | None, typer.Option("--report", help="Write what was done as JSON (.json).")]


_SYNTH_HELP = (
    "Synthesize a new tumour in a 3D scan (texture bridge); voxels away from it stay bit-identical.\n\n"
    "Shape: the shape generator (--set; default VoxelVolume=4000, Sphericity=0.8) or a mask (--shape). Texture: the "
    "model's default, a reference tumour (--texture-from IMAGE LABEL) and/or single features (--texture)."
)


@app.command(help=_SYNTH_HELP)
def synth(
    image: Annotated[Path, typer.Argument(help="3D scan to edit (.nii.gz, .nrrd, .mha, DICOM folder).")],
    out: Annotated[Path, typer.Option("--out", help="Edited scan (.nii.gz, .nii, .nrrd or .mha), on the input grid.")],
    mask_out: Annotated[Path, typer.Option(
        "--mask-out", help="Mask of the new tumour (.nii.gz, .nii, .nrrd, .seg.nrrd or .mha), on the input grid."
    )],
    center_mm: Annotated[str | None, typer.Option(
        "--center-mm", help="Tumour centre X,Y,Z in physical (LPS) mm. Needed unless --shape lies on the scan's grid."
    )] = None,
    shape_mask: Annotated[Path | None, typer.Option(
        "--shape", help="Tumour mask: on the scan's grid (used where it is, or moved to --center-mm), or an unplaced "
        "mask such as `medgen shape` writes (its centre goes to --center-mm). Excludes --set."
    )] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Shape feature for the shape generator (names as in `medgen shape`), e.g. --set VoxelVolume=8000 "
        "--set Sphericity=0.8. Without --shape and --set: VoxelVolume=4000, Sphericity=0.8."
    )] = None,
    texture_from: Annotated[tuple[Path, Path] | None, typer.Option(
        "--texture-from", metavar="IMAGE LABEL",
        help="Copy the texture of a reference tumour: two paths, its scan and its label file (--texture-from "
        "scan.nii.gz seg.nii.gz). Default texture: the model's median training tumour."
    )] = None,
    texture_from_label: Annotated[int | None, typer.Option(
        "--texture-from-label", help="Label value of the reference tumour (default: every non-zero label)."
    )] = None,
    texture: Annotated[list[str] | None, typer.Option(
        "--texture", help="Override one texture feature (model units), e.g. --texture firstorder_Mean=0.3; the "
        "original_ prefix is optional."
    )] = None,
    label_value: Annotated[int, typer.Option("--label-value", help="Value of the tumour in --mask-out (1..255).")] = 1,
    steps: BridgeStepsOption = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same tumour).")] = 0,
    model: BridgeModelOption = None,
    report: EditReportOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Synthesize a new tumour in a 3D scan (texture bridge); voxels away from it stay bit-identical."""
    from napari_medgen.core import io
    from napari_medgen.pipelines.tumor_synthesis import DEFAULT_MODEL, synthesize_job

    model_name = model or DEFAULT_MODEL
    try:
        _check_edit_counts(seed, steps)
        shape_request = _feature_settings(set_) or None
        texture_request = _texture_settings(texture) or None
        if shape_mask is not None and shape_request is not None:
            raise MedGenError("--shape and --set exclude each other: give a mask or shape features, not both.")
        if texture_from_label is not None and texture_from is None:
            raise MedGenError("--texture-from-label picks a label of the --texture-from reference; add --texture-from.")
        centre = _floats(center_mm, "--center-mm") if center_mm is not None else None
        _check_edit_outputs(out, mask_out, report)
        volume = io.read_volume(image)
        shape = _shape_mask(shape_mask, volume) if shape_mask is not None else None
        if centre is None and (shape is None or not shape.same_grid(volume)):
            raise MedGenError(
                "Give --center-mm X,Y,Z (the tumour centre in physical LPS mm, e.g. read off napari or Slicer), or a "
                "--shape mask that lies on the scan's grid."
            )
        reference = None
        if texture_from is not None:
            ref_image = io.read_volume(texture_from[0])
            reference = (ref_image, io.read_labels(texture_from[1], reference=ref_image), texture_from_label)
        job = synthesize_job(volume, center_mm=centre, shape=shape, shape_request=shape_request,
                             texture=texture_request, texture_from=reference, model=model_name, steps=steps,
                             seed=seed, label_value=label_value)
        result = run_with_progress(job, "synth", quiet=quiet)
        outputs: list[tuple[Volume | str, Path]] = [(result.image, out), (result.labels, mask_out)]
        if report is not None:
            outputs.append((_json_text({"image": str(image), "out": str(out), "mask_out": str(mask_out),
                                        **result.report}), report))
        _write_all(outputs)
    except MedGenError as error:
        _fail(error)
    where = result.report.get("center_mm")
    place = f" at {tuple(round(v, 1) for v in where)} mm" if where else ""
    console.print(f"wrote {out} and {mask_out}: new tumour of {_tumour_summary(result.labels)}{place} "
                  f"({result.report['shape_from']}; {result.report['steps']} steps, seed {seed})")


@app.command("remove")
def remove_tumour(
    image: Annotated[Path, typer.Argument(help="3D scan to edit (.nii.gz, .nrrd, .mha, DICOM folder).")],
    labels: Annotated[Path, typer.Argument(help="Label map of the tumour on the scan's grid.")],
    out: Annotated[Path, typer.Option("--out", help="Edited scan (.nii.gz, .nii, .nrrd or .mha), on the input grid.")],
    label: Annotated[int | None, typer.Option(
        "--label", help="Label value to remove (default: every non-zero label)."
    )] = None,
    mask_out: Annotated[Path | None, typer.Option(
        "--mask-out", help="The labels that remain (removed ones set to 0), on the input grid."
    )] = None,
    steps: BridgeStepsOption = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same result).")] = 0,
    model: BridgeModelOption = None,
    report: EditReportOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Remove a tumour: its region (plus a 2 mm rim) is replaced by healthy-looking tissue."""
    from napari_medgen.core import io
    from napari_medgen.pipelines.tumor_synthesis import DEFAULT_MODEL, remove_job

    model_name = model or DEFAULT_MODEL
    try:
        _check_edit_counts(seed, steps)
        _check_edit_outputs(out, mask_out, report)
        volume = io.read_volume(image)
        label_map = io.read_labels(labels, reference=volume)
        job = remove_job(volume, label_map, label, model=model_name, steps=steps, seed=seed)
        result = run_with_progress(job, "remove", quiet=quiet)
        outputs: list[tuple[Volume | str, Path]] = [(result.image, out)]
        if mask_out is not None:
            outputs.append((result.labels, mask_out))
        if report is not None:
            outputs.append((_json_text({"image": str(image), "labels": str(labels), "out": str(out),
                                        "mask_out": None if mask_out is None else str(mask_out), **result.report}),
                            report))
        _write_all(outputs)
    except MedGenError as error:
        _fail(error)
    removed = "every label" if label is None else f"label {label}"
    remaining = ", ".join(map(str, result.labels.labels())) or "none"
    console.print(f"wrote {out}: removed {removed} ({result.report['region_voxels']} voxels with the rim; "
                  f"{result.report['steps']} steps, seed {seed}); labels left: {remaining}"
                  + (f", written to {mask_out}" if mask_out is not None else ""))


def _case_name(path: Path) -> str:
    name = path.name
    for ext in _BATCH_INPUTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _batch_cases(inputs: list[Path], out_dir: Path) -> list[tuple[str, Path]]:
    """(case name, image) in a fixed order: files as given, folders expanded to their image files (sorted;
    segmentations and files inside ``out_dir`` skipped). Case names must be unique."""
    from napari_medgen.errors import InvalidInputError

    out_dir = out_dir.expanduser().absolute()
    files: list[Path] = []
    for item in inputs:
        path = item.expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".")
                and p.name.lower().endswith(_BATCH_INPUTS)
                and not any(word in p.name.lower() for word in _NOT_IMAGES)
                and p.absolute().parent != out_dir
            )
            if not found:
                raise InvalidInputError(
                    f"No images in {path}: a folder contributes its {', '.join(_BATCH_INPUTS)} files whose names do "
                    f"not contain {', '.join(_NOT_IMAGES)}."
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InvalidInputError(f"{item} does not exist; give image files or folders of images.")
    cases = [(_case_name(p), p) for p in files]
    names = [name for name, _ in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidInputError(
            f"Several inputs are named {', '.join(duplicates)}; outputs are named after the input, so give each case "
            "a unique file name."
        )
    return cases


def _range(text: str, option: str, low: float, high: float) -> tuple[float, float]:
    lo, hi = _floats(text, option, count=2)
    if not (low < lo <= hi <= high):
        raise MedGenError(f"{option} needs MIN,MAX with {low:g} < MIN <= MAX <= {high:g}; got '{text}'.")
    return lo, hi


def _centre_candidates(volume: Volume, margin_mm: float) -> np.ndarray:
    """Voxel indices (z, y, x) at least ``margin_mm`` inside the foreground (voxels above the image minimum;
    skull-stripped scans store their background as the minimum) and the image border."""
    from scipy import ndimage

    arr = np.asarray(volume.array)
    inside = np.pad(arr > arr.min(), 1)  # beyond the image counts as background
    distance = ndimage.distance_transform_edt(inside, sampling=volume.spacing_zyx)[1:-1, 1:-1, 1:-1]
    return np.argwhere(distance >= margin_mm)


def _batch_request(rng: np.random.Generator, volumes: tuple[float, float],
                   sphericities: tuple[float, float]) -> dict[str, float]:
    """A random shape request: log-uniform volume (small and large tumours equally often), uniform sphericity."""
    volume = float(np.exp(rng.uniform(np.log(volumes[0]), np.log(volumes[1]))))
    return {"VoxelVolume": round(volume, 1), "Sphericity": round(float(rng.uniform(*sphericities)), 3)}


_BATCH_HELP = (
    "Write N synthesized-tumour variants per case for data augmentation (random centres and shapes).\n\n"
    "Centres: random voxels at least --margin-mm inside the foreground; shapes: random requests from --volume-range "
    "and --sphericity-range; texture: the model's default. Case i (input order, folders sorted), variant k always "
    "gets the same result for a --seed.\n\n"
    "Under `accelerate launch` process r takes the cases i with i % num_processes == r and writes "
    "manifest-rank<r>.json. Each pair is written atomically; the manifest lists the pairs written so far "
    "(\"complete\": true at the end)."
)


@app.command("batch", help=_BATCH_HELP)
def batch_synth(
    inputs: Annotated[list[Path], typer.Argument(
        help="Image files, or folders: a folder contributes every .nii.gz, .nii, .nrrd and .mha file in it (not "
        "recursive) except names containing 'label', 'mask' or 'seg'."
    )],
    out_dir: Annotated[Path, typer.Option(
        "--out-dir", help="Output folder: <case>_synth<k>.nii.gz, <case>_synth<k>_mask.nii.gz, manifest-rank<r>.json."
    )],
    variants: Annotated[int, typer.Option("--variants", help="Synthesized variants per case.")],
    volume_range: Annotated[str, typer.Option(
        "--volume-range", help="Tumour volume MIN,MAX in mm3, drawn log-uniformly."
    )] = f"{BATCH_VOLUME_RANGE[0]:g},{BATCH_VOLUME_RANGE[1]:g}",
    sphericity_range: Annotated[str, typer.Option(
        "--sphericity-range", help="Tumour sphericity MIN,MAX, drawn uniformly."
    )] = f"{BATCH_SPHERICITY_RANGE[0]:g},{BATCH_SPHERICITY_RANGE[1]:g}",
    margin_mm: Annotated[float, typer.Option(
        "--margin-mm", help="Tumour centres lie at least this far inside the foreground (voxels above the image "
        "minimum) and the image border."
    )] = BATCH_MARGIN_MM,
    steps: BridgeStepsOption = None,
    seed: Annotated[int, typer.Option(
        "--seed", help="Base seed; case i, variant k always get the same centre, shape and noise."
    )] = 0,
    model: BridgeModelOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Write N synthesized-tumour variants per case for data augmentation (random centres and shapes)."""
    from accelerate import PartialState
    from rich.markup import escape

    from napari_medgen.core import io
    from napari_medgen.core.atomic import atomic_write_text
    from napari_medgen.core.geometry import index_to_physical
    from napari_medgen.hub import load_cached
    from napari_medgen.pipelines.tumor_synthesis import DEFAULT_MODEL, check_scan, resolve_steps, synthesize_job

    model_name = model or DEFAULT_MODEL
    # cpu=True: the bridge runs on the CPU and the processes never communicate, so the process group is gloo
    # on any machine; without it a GPU-less `accelerate launch` would give every process rank 0.
    state = PartialState(cpu=True)
    rank, world = int(state.process_index), int(state.num_processes)
    prefix = escape(f"[rank {rank}] ") if world > 1 else ""  # not rich markup
    dest = out_dir.expanduser().absolute()
    written = 0
    try:
        _check_edit_counts(seed, steps)
        if variants < 1:
            raise MedGenError(f"--variants must be a positive integer; got {variants}.")
        volumes = _range(volume_range, "--volume-range", 0.0, float("inf"))
        sphericities = _range(sphericity_range, "--sphericity-range", 0.0, 1.0)
        if not (np.isfinite(margin_mm) and margin_mm >= 0):
            raise MedGenError(f"--margin-mm must be 0 or a positive number of millimetres; got {margin_mm}.")
        if dest.exists() and not dest.is_dir():
            raise MedGenError(f"{dest} is a file; --out-dir must be a folder.")
        cases = _batch_cases(inputs, dest)
        net = load_cached(model_name, expected_type="bridge-unet")  # a wrong model fails before any work
        n_steps = resolve_steps(net, steps)
        mine = [(index, name, path) for index, (name, path) in enumerate(cases) if index % world == rank]
        manifest_path = dest / f"manifest-rank{rank}.json"
        manifest: dict = {
            "command": "medgen batch", "model": model_name, "steps": n_steps, "seed": seed, "variants": variants,
            "volume_range_mm3": list(volumes), "sphericity_range": list(sphericities), "margin_mm": margin_mm,
            "process_index": rank, "num_processes": world, "cases": [name for _, name, _ in mine],
            "complete": False, "items": [],
        }
        atomic_write_text(manifest_path, _json_text(manifest))
        for index, name, path in mine:
            volume = io.read_volume(path)
            try:
                check_scan(volume, net)
            except MedGenError as error:
                raise MedGenError(f"{path.name}: {error}") from error
            candidates = _centre_candidates(volume, margin_mm)
            if len(candidates) == 0:
                raise MedGenError(
                    f"{path.name}: no voxel lies {margin_mm:g} mm inside the foreground (voxels above the image "
                    "minimum) and the image border; lower --margin-mm or use a larger scan."
                )
            for k in range(variants):
                rng = np.random.default_rng([seed, index, k])
                centre = index_to_physical(volume, candidates[rng.integers(len(candidates))].astype(float))
                request = _batch_request(rng, volumes, sphericities)
                job_seed = int(rng.integers(0, 2**31 - 1))
                job = synthesize_job(volume, center_mm=tuple(float(v) for v in centre), shape_request=request,
                                     model=model_name, steps=n_steps, seed=job_seed)
                try:
                    result = run_with_progress(job, f"{name} variant {k}", quiet=quiet)
                except MedGenError as error:
                    raise MedGenError(f"{path.name}, variant {k}: {error}") from error
                image_name, mask_name = f"{name}_synth{k}.nii.gz", f"{name}_synth{k}_mask.nii.gz"
                _write_all([(result.image, dest / image_name), (result.labels, dest / mask_name)])
                written += 1
                manifest["items"].append({
                    "case": name, "case_index": index, "source": str(path), "variant": k,
                    "image": image_name, "mask": mask_name, "center_mm": [float(v) for v in centre],
                    "shape_request": request, "seed": job_seed, "report": result.report,
                })
                atomic_write_text(manifest_path, _json_text(manifest))
                if not quiet:
                    console.print(f"{prefix}wrote {image_name} + {mask_name}: {_tumour_summary(result.labels)}")
        manifest["complete"] = True
        atomic_write_text(manifest_path, _json_text(manifest))
    except MedGenError as error:
        if written:
            console.print(f"{prefix}{written} pair(s) were written before the error; {dest} has them and their "
                          "manifest.")
        _fail(error)
    console.print(f"{prefix}wrote {written} image/mask pair(s) for {len(mine)} case(s) to {dest} "
                  f"({n_steps} steps, seed {seed}); manifest {manifest_path.name}")


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
