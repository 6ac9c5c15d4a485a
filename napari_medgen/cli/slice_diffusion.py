"""Mask-guided slice diffusion: `medgen seg2img` (an image that follows a label map) and `medgen paired`
(new 2D images with their lesion masks)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from napari_medgen.cli._common import (
    DeviceOption,
    OverwriteInputOption,
    QuietOption,
    app,
    check_seed,
    console,
    fail,
    preflight,
    run_with_progress,
)
from napari_medgen.errors import MedGenError

if TYPE_CHECKING:
    from napari_medgen.core.volume import Volume

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
    check_seed(seed)
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
    device: DeviceOption = None,
    quiet: QuietOption = False,
    overwrite_input: OverwriteInputOption = False,
) -> None:
    """Generate an image that follows a label map, slice by slice, on exactly the labels' grid."""
    target = preflight(seed, [("--out", out)], [labels, reference, model], overwrite_input, device, steps)
    import time

    from napari_medgen.core import io
    from napari_medgen.hub import read_checkpoint_config
    from napari_medgen.pipelines.slice_generation import DEFAULT_MODEL, generate_from_labels_job

    model_name = model or DEFAULT_MODEL
    dropped = sorted({int(c) for c in drop_class or []})
    try:
        _check_counts(seed, batch_size)
        config = read_checkpoint_config(model_name)["config"]
        ref = io.read_volume(reference) if reference is not None else None
        label_map = io.read_labels(labels, reference=ref)
        _check_output_file(out, label_map.shape[0])
        start = time.perf_counter()
        job = generate_from_labels_job(
            label_map, model=model_name, axis=axis, drop_classes=dropped, steps=steps, sampler=sampler,
            seed=seed, reference=ref, similarity=similarity, noise=noise, batch_size=batch_size, device=target,
        )
        result = run_with_progress(job, "seg2img", quiet=quiet)
        elapsed = time.perf_counter() - start
        image = result.image
        io.write_volume(_as_2d_pixels(image, out), out)
    except MedGenError as error:
        fail(error)
    names = _class_labels(config)
    present = set(label_map.labels())
    constrained = [v for v in names if v not in dropped]
    summary = ", ".join(names[v] + ("" if v in present else " (absent)") for v in constrained) or "none"
    dropped_text = ", ".join(names.get(v, str(v)) for v in dropped) or "none"
    console.print(
        f"wrote {out}: {image.shape[::-1]} voxels in {elapsed:.1f} s ({result.report['steps']} {sampler} steps, "
        f"seed {seed}); constrained classes: {summary}; dropped: {dropped_text}"
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
    device: DeviceOption = None,
    quiet: QuietOption = False,
    overwrite_input: OverwriteInputOption = False,
) -> None:
    """Generate new 2D images together with their lesion masks (paired generation, PIG)."""
    target = preflight(seed, [("--out", out)], [model, image_model], overwrite_input, device, steps)
    import time

    from napari_medgen.core import io
    from napari_medgen.core.atomic import staged_outputs
    from napari_medgen.pipelines.paired_generation import DEFAULT_GUIDER, generate_pairs_job

    guider = model or DEFAULT_GUIDER
    dest = out.expanduser().absolute()
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
        start = time.perf_counter()
        job = generate_pairs_job(n, guider=guider, image_model=image_model, steps=steps, sampler=sampler,
                                 seed=seed, batch_size=batch_size, device=target)
        result = run_with_progress(job, "paired", quiet=quiet)
        elapsed = time.perf_counter() - start
        width = max(3, len(str(n)))
        with staged_outputs([dest], replace=overwrite) as (staged,):
            staged.mkdir()
            for index, (image, mask) in enumerate(result.pairs):
                name = staged / f"image_{index:0{width}d}.{fmt}"
                io.write_volume(_as_2d_pixels(image, name), name)
                io.write_volume(mask, staged / f"mask_{index:0{width}d}.{fmt}")
    except MedGenError as error:
        fail(error)
    size = result.pairs[0][0].shape[1:][::-1]
    console.print(f"wrote {n} image/mask pairs ({size[0]}x{size[1]} px, {fmt}) to {dest} in {elapsed:.1f} s "
                  f"({result.report['steps']} {sampler} steps, seed {seed})")
