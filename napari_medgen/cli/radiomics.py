"""`medgen radiomics`: pyradiomics-compatible feature tables of one case or many."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from napari_medgen.cli._common import (
    OverwriteInputOption,
    app,
    console,
    fail,
    refuse_input_overwrite,
    run_with_progress,
)
from napari_medgen.errors import MedGenError


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


@app.command()
def radiomics(
    image: Annotated[Path, typer.Argument(help="Image file, DICOM folder, or a folder of cases.")],
    label: Annotated[Path | None, typer.Argument(help="Label file (or folder of label files).")] = None,
    label_value: Annotated[int | None, typer.Option("--label", help="Label value (default: params or 1).")] = None,
    params: Annotated[Path | None, typer.Option("--params", help="pyradiomics-style params YAML.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output .json or .csv (default: JSON to stdout).")] = None,
    overwrite_input: OverwriteInputOption = False,
) -> None:
    """Radiomics features with pyradiomics names and values (shape, first-order and texture classes)."""
    refuse_input_overwrite([("--out", out)], [image, label, params], overwrite_input)
    from napari_medgen.pipelines.radiomics_extraction import feature_rows_job
    from napari_medgen.radiomics.params import RadiomicsParams, load_params
    from napari_medgen.radiomics.settings import RadiomicsSettings
    from napari_medgen.radiomics.table import table_text, write_table

    try:
        loaded = load_params(params) if params else RadiomicsParams(RadiomicsSettings())
        pairs = _radiomics_pairs(image, label)
        rows = run_with_progress(feature_rows_job(pairs, label_value, loaded), "radiomics")
        if out is None:
            typer.echo(table_text(rows, "json"), nl=False)
        else:
            write_table(rows, out)
            console.print(f"wrote {len(rows)} case(s) to {out}")
    except MedGenError as error:
        fail(error)
