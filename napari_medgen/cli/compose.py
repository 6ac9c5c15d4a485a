"""`medgen compose`: place a real tumour into a tumour-free image (training-free composition, seed 000)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from napari_medgen.cli._common import (
    DeviceOption,
    OverwriteInputOption,
    QuietOption,
    app,
    console,
    fail,
    preflight,
    run_with_progress,
)
from napari_medgen.errors import MedGenError

_EIGHT_BIT_2D = (".png", ".jpg", ".jpeg", ".bmp")


def _parse_at(text: str, volume: bool) -> tuple[float, ...]:
    count = 3 if volume else 2
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        example = "X,Y,SLICE (e.g. 120,96,40)" if volume else "X,Y in pixels (e.g. 120,96)"
        raise MedGenError(f"--at needs {count} comma-separated numbers: {example}; got '{text}'.")
    return values


def _pixels(image: np.ndarray, reference: np.ndarray, path: Path) -> np.ndarray:
    """8-bit/16-bit 2D formats hold integers: round into the reference's integer range."""
    if not path.name.lower().endswith(_EIGHT_BIT_2D):
        return image
    top = 65535 if path.name.lower().endswith(".png") and float(np.max(reference)) > 255.5 else 255
    return np.clip(np.round(image), 0, top).astype(np.uint8 if top == 255 else np.uint16)


@app.command()
def compose(
    background: Annotated[Path, typer.Argument(metavar="BACKGROUND",
                                               help="Tumour-free background image (2D .png/.nii.gz/... or a volume).")],
    object_image: Annotated[Path, typer.Argument(metavar="OBJECT", help="Image holding the tumour to place.")],
    object_mask: Annotated[Path, typer.Argument(metavar="OBJECT_MASK",
                                                help="The tumour's mask on the object image (non-zero = tumour).")],
    at: Annotated[str, typer.Option("--at", help="Where the tumour's centre goes: X,Y pixels (volumes: X,Y,SLICE).")],
    out: Annotated[Path, typer.Option("--out", help="Composite image (same format rules as the background).")],
    mask_out: Annotated[Path, typer.Option("--mask-out", help="Label map of the placed tumour (background's grid).")],
    scale: Annotated[float, typer.Option("--scale", help="Size factor applied to the tumour (and its margin).")] = 1.0,
    t_prime: Annotated[int, typer.Option("--t-prime", help="T': grid point where composition starts (ours).")] = 6,
    tau: Annotated[int, typer.Option("--tau", help="Background re-injected for t in [tau, T'].")] = 3,
    steps: Annotated[int, typer.Option("--steps", help="Inversion/denoising steps.")] = 20,
    method: Annotated[str, typer.Option(
        "--method", help="ours, copy-paste, poisson, sdedit, blended or tf-icon.")] = "ours",
    model: Annotated[str | None, typer.Option(
        "--model", help="Mask-ablated mask-diffusion model (bundled name or folder) or a local Stable Diffusion "
        "folder (default: seg2img-busi-ablation).")] = None,
    solver: Annotated[str, typer.Option("--solver", help="Inversion solver: dpmpp (DPM-Solver++) or ddim.")] = "dpmpp",
    strength: Annotated[float | None, typer.Option(
        "--strength", help="sdedit/blended: noise level as a fraction of the steps (default 0.5 / 0.8).")] = None,
    prompt: Annotated[str | None, typer.Option(
        "--prompt", help="Stable Diffusion only: text guiding the final denoising (default: the exceptional prompt).")
    ] = None,
    margin: Annotated[float, typer.Option("--margin", help="Context kept around the tumour, fraction of its size.")
                      ] = 0.15,
    same_units: Annotated[bool, typer.Option(
        "--same-units", help="The object is in the background's intensity units (same scan or scanner): map both "
        "with one window fitted to both instead of each with its own.")] = False,
    model_background: Annotated[bool, typer.Option(
        "--model-background", help="Keep the model's background too (default: the original outside the user box).")
    ] = False,
    slice_axis: Annotated[int | None, typer.Option(
        "--slice-axis", help="Volumes: compose slice by slice along this array axis (0 = z, 1 = y, 2 = x).")] = None,
    noise: Annotated[str, typer.Option(
        "--noise", help="Volumes: starting noise across slices: independent, shared or correlated.")] = "independent",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same composite).")] = 0,
    device: DeviceOption = None,
    quiet: QuietOption = False,
    overwrite_input: OverwriteInputOption = False,
) -> None:
    """Compose a tumour (OBJECT + OBJECT_MASK) into BACKGROUND at --at; write the image and the placed tumour mask."""
    target = preflight(seed, [("--out", out), ("--mask-out", mask_out)],
                       [background, object_image, object_mask, model], overwrite_input, device, steps)
    import time

    from napari_medgen.core import io
    from napari_medgen.pipelines.composition import DEFAULT_MODEL, check_settings, compose_job
    from napari_medgen.pipelines.composition_volume import compose_volume_job

    options = {"scale": scale, "method": method, "model": model or DEFAULT_MODEL, "steps": steps,
               "t_prime": t_prime, "tau": tau, "solver": solver, "strength": strength, "prompt": prompt,
               "restore_background": not model_background, "same_units": same_units, "device": target}
    try:
        if out.expanduser().absolute() == mask_out.expanduser().absolute():
            raise MedGenError("--out and --mask-out must be different files.")
        check_settings(method, steps, t_prime, tau, strength)
        bg = io.read_volume(background)
        obj = io.read_volume(object_image)
        obj_mask = io.read_labels(object_mask)
        volume = slice_axis is not None
        where = _parse_at(at, volume)
        start = time.perf_counter()
        if volume:
            job = compose_volume_job(bg, obj, obj_mask, at=where, axis=slice_axis, noise=noise, margin=margin,
                                     seed=seed, **options)
            result = run_with_progress(job, "compose", quiet=quiet)
            image, labels = result.image, result.mask
        else:
            for what, vol in (("background", bg), ("object image", obj), ("object mask", obj_mask)):
                if vol.shape[0] != 1:
                    raise MedGenError(f"The {what} is a volume ({vol.shape}); pass --slice-axis to compose slice by "
                                      "slice, or give 2D images.")
            job = compose_job(bg, obj, obj_mask, at=where, margin=margin, seed=seed, **options)
            result = run_with_progress(job, "compose", quiet=quiet)
            array = _pixels(result.image, np.asarray(bg.array), out)
            image = bg.with_array(array[None], metadata=result.report)
            labels = bg.as_labels(result.mask[None])
        elapsed = time.perf_counter() - start
        io.write_outputs([(image, out), (labels, mask_out)])
    except MedGenError as error:
        fail(error)
    tumour_pixels = int(np.count_nonzero(labels.array))
    console.print(f"wrote {out} and {mask_out}: {method} composite in {elapsed:.1f} s (tumour {tumour_pixels} "
                  f"pixels, steps {steps}, T' {t_prime}, tau {tau}, seed {seed})")
