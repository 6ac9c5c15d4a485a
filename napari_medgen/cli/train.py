"""`medgen train`: the shared accelerate trainer (devices come from accelerate / `accelerate launch`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from napari_medgen.cli._common import app, console, fail
from napari_medgen.errors import MedGenError


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
        fail(MedGenError(f"--set needs KEY=VALUE; got {bad}."))
    if resume:
        overrides.append("resume=true")
    if out is not None:
        overrides.append(f"out_dir={out}")
    if max_steps is not None:
        overrides.append(f"max_steps={max_steps}")
    try:
        result = train_from_config(model, config, overrides=overrides, progress=progress_printer(quiet=False))
    except MedGenError as error:
        fail(error)
    console.print(f"trained {model}: model saved to {result}")
