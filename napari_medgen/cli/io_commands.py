"""`medgen info` and `medgen convert`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from napari_medgen.cli._common import (
    OverwriteInputOption,
    app,
    console,
    fail,
    refuse_input_overwrite,
)
from napari_medgen.errors import MedGenError


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
    overwrite_input: OverwriteInputOption = False,
) -> None:
    """Convert between NIfTI, NRRD, MetaImage and DICOM series, keeping spacing, origin and direction."""
    refuse_input_overwrite([("DESTINATION", destination)], [source], overwrite_input)
    from napari_medgen.core import io

    try:
        volume = io.read_labels(source) if labels else io.read_volume(source)
        io.write_volume(volume, destination)
    except MedGenError as error:
        fail(error)
    console.print(f"wrote {destination} {volume.shape[::-1]} voxels, spacing {volume.spacing}")
