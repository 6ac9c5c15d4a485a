"""`medgen shape`: a tumour mask with requested shape features (the shape GAN)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from napari_medgen.cli._common import (
    DeviceOption,
    OverwriteInputOption,
    app,
    console,
    fail,
    feature_settings,
    floats,
    preflight,
)
from napari_medgen.errors import MedGenError


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
    device: DeviceOption = None,
    overwrite_input: OverwriteInputOption = False,
) -> None:
    """Generate a tumour mask with requested shape features (volume, sphericity, ...)."""
    target = preflight(seed, [("--out", out)], [reference, model], overwrite_input, device)
    from napari_medgen.core import io
    from napari_medgen.pipelines.shape_generation import (
        DEFAULT_CANDIDATES,
        DEFAULT_MODEL,
        generate_shape,
        place_shape,
    )

    try:
        features = feature_settings(set_)
        mask = generate_shape(features or None, preset=preset, spacing=floats(spacing, "--spacing"), seed=seed,
                              model=model or DEFAULT_MODEL,
                              candidates=DEFAULT_CANDIDATES if candidates is None else candidates,
                              match_axes=match_axes, device=target).mask
        generated = _mm3(mask)
        if reference is not None or center_mm is not None:
            if reference is None or center_mm is None:
                raise MedGenError("--reference and --center-mm go together: the image grid and the point in it.")
            mask = place_shape(mask, io.read_volume(reference), floats(center_mm, "--center-mm"))
        io.write_volume(mask, out)
    except MedGenError as error:
        fail(error)
    volume = _mm3(mask)
    console.print(f"wrote {out}: {volume:.0f} mm3 of tumour on a {mask.shape[::-1]} grid, spacing {mask.spacing}")
    _warn_volume_not_met(features, generated, volume)


#: a written volume further than this (relative) from the requested one gets a warning
VOLUME_TOLERANCE = 0.25


def _mm3(mask: object) -> float:
    return float((np.asarray(mask.array) > 0).sum() * np.prod(mask.spacing))


def _warn_volume_not_met(features: dict[str, float], generated: float, written: float) -> None:
    """Say so when the written mask's volume is far from a requested VoxelVolume / MeshVolume, and why: the
    reference grid cut the shape, or the request lies outside what the model makes."""
    for name in ("VoxelVolume", "MeshVolume"):
        wanted = features.get(name)
        if wanted is None or wanted <= 0 or abs(written - wanted) <= VOLUME_TOLERANCE * wanted:
            continue
        why = ("the reference grid cut the shape (it is too thin or the point is near its edge)"
               if written < (1 - VOLUME_TOLERANCE) * generated
               else "the request lies outside the volumes the shape model makes; see `medgen shape --help` presets")
        console.print(f"[yellow]warning:[/yellow] requested {name}={wanted:g} mm3 but the mask holds {written:.0f} "
                      f"mm3: {why}.")
