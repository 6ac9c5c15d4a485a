"""`medgen lesion-pairs`: new lesion images with masks read from the model's attention, optionally steered into a
painted layout (DiDGen layout guidance, issue 18)."""

from __future__ import annotations

import json
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
from napari_medgen.errors import InvalidInputError, MedGenError

_OUR_FILES = ("image_", "mask_", "report.json")


def read_layout(path: Path) -> np.ndarray:
    """A layout mask image (PNG/JPEG/TIFF, any non-zero pixel is lesion) as a 2D uint8 {0, 1} array."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InvalidInputError(f"Layout mask {path} does not exist.")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidInputError(f"{path} is not a readable image ({error}); give a PNG mask.") from error
    return (array > 0).astype(np.uint8)


def _only_ours(folder: Path) -> bool:
    return all(p.is_file() and p.name.startswith(_OUR_FILES) for p in folder.iterdir())


@app.command("lesion-pairs")
def lesion_pairs(
    n: Annotated[int, typer.Option("--n", help="Number of (image, mask) pairs.")],
    out: Annotated[Path, typer.Option(
        "--out", help="Output folder: image_000.png, mask_000.png (0/255), report.json."
    )],
    layout: Annotated[Path | None, typer.Option(
        "--layout", help="Layout mask PNG of the model's image size (non-zero = lesion); omit for free generation."
    )] = None,
    model: Annotated[str, typer.Option(
        "--model", help="token-diffusion checkpoint (bundled name or folder) or a local Stable Diffusion folder."
    )] = "token-diffusion-ph2",
    guidance: Annotated[bool, typer.Option(
        "--guidance/--no-guidance", help="Steer the lesion into --layout (L_CA + L_SA on the first half of the steps)."
    )] = True,
    attribute: Annotated[str | None, typer.Option(
        "--attribute", help="Attribute token, e.g. melanoma (token models only)."
    )] = None,
    prompt: Annotated[str | None, typer.Option(
        "--prompt", help="Prompt for a Stable Diffusion folder (must contain <lesion>)."
    )] = None,
    steps: Annotated[int, typer.Option("--steps", help="DDIM steps.")] = 50,
    guidance_scale: Annotated[float, typer.Option(
        "--guidance-scale", help="Step size eta of the latent update."
    )] = 20.0,
    refine: Annotated[str, typer.Option(
        "--refine", help="Mask read-out: auto, matrix, elementwise (A_CS with tau=4) or none (A_C only)."
    )] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same pairs).")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Pairs generated together.")] = 8,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an output folder written by an earlier `medgen lesion-pairs` run."
    )] = False,
    device: DeviceOption = None,
    quiet: QuietOption = False,
    overwrite_input: OverwriteInputOption = False,
) -> None:
    """Generate lesion images whose masks come from the model's own attention (DiDGen, thesis seed 001)."""
    target = preflight(seed, [("--out", out)], [layout, model], overwrite_input, device, steps)
    from PIL import Image

    from napari_medgen.core.atomic import staged_outputs
    from napari_medgen.models.attention_masks import mask_iou
    from napari_medgen.pipelines.lesion_pairs import generate_lesion_pairs_job

    dest = out.expanduser().absolute()
    try:
        if n < 1:
            raise MedGenError(f"--n (number of pairs) must be a positive integer; got {n}.")
        if dest.exists() and not dest.is_dir():
            raise MedGenError(f"{dest} is a file; --out must be a folder (new or empty).")
        if dest.is_dir() and any(dest.iterdir()):
            if not overwrite:
                raise MedGenError(f"{dest} is not empty; choose a new folder or pass --overwrite to replace it.")
            if not _only_ours(dest):
                raise MedGenError(f"{dest} holds files `medgen lesion-pairs` did not write; choose a new folder.")
        layouts = None if layout is None else read_layout(layout.expanduser())
        job = generate_lesion_pairs_job(n, layouts=layouts, model=model, attribute=attribute, guidance=guidance,
                                        guidance_scale=guidance_scale, steps=steps, seed=seed, refine=refine,
                                        batch_size=batch_size, prompt=prompt, device=target)
        result = run_with_progress(job, "lesion pairs", quiet=quiet)
        width = max(3, len(str(n)))
        records = []
        with staged_outputs([dest], replace=overwrite) as (staged,):
            staged.mkdir()
            for k, pair in enumerate(result.pairs):
                pixels = np.clip(np.round(pair.image * 255), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(staged / f"image_{k:0{width}d}.png")
                Image.fromarray(pair.mask * 255).save(staged / f"mask_{k:0{width}d}.png")
                records.append({"index": k, "used": pair.used, "locality": pair.locality,
                                "mass_in_layout": pair.mass_in_layout,
                                "iou_with_layout": None if pair.layout is None else mask_iou(pair.mask, pair.layout)})
            (staged / "report.json").write_text(json.dumps({**result.report, "pairs": records}, indent=1))
    except MedGenError as error:
        fail(error)
    ious = [r["iou_with_layout"] for r in records if r["iou_with_layout"] is not None]
    extra = f", mean IoU with the layout {np.mean(ious):.2f}" if ious else ""
    console.print(f"wrote {n} image/mask pairs to {dest} ({steps} steps, guidance "
                  f"{'on' if result.report['guidance'] else 'off'}, seed {seed}{extra})")
