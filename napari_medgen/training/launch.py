"""Entry points: `train_from_config` (CLI, GUI, scripts) and ``python -m napari_medgen.training``.

The module form exists so the very same command runs under a launcher without the CLI installed::

    accelerate launch --num_processes 4 -m napari_medgen.training segmenter --config seg.yaml
    torchrun --nproc_per_node 4 -m napari_medgen.training segmenter --config seg.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from napari_medgen.core.progress import CancelToken, ProgressCallback, ProgressEvent, format_progress_line
from napari_medgen.errors import MedGenError
from napari_medgen.training.config import load_config
from napari_medgen.training.tasks import get_task


def train_from_config(
    model_name: str,
    config_path: str | os.PathLike[str] | None,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Path:
    """Train ``model_name`` (see `available_tasks`) from a YAML config; returns the exported model folder.

    ``overrides`` are dotted keys (``{"max_steps": 10, "data.root": "x"}`` or ``["resume=true"]``).
    Raises `ConfigError` for a bad config, `CancelledError` when ``cancel`` fires (a resumable
    checkpoint is kept), `CheckpointError` when resuming fails.
    """
    from napari_medgen.training.trainer import Trainer

    task_cls = get_task(model_name)
    config = load_config(config_path, overrides)
    task = task_cls(config, where=str(config_path) if config_path is not None else "the overrides")
    return Trainer(task, config, progress=progress, cancel=cancel).fit()


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def progress_printer(quiet: bool) -> ProgressCallback | None:
    if quiet or not _is_main_process():
        return None

    def show(event: ProgressEvent) -> None:
        every = max(1, (event.total or 100) // 100)
        if event.step % every == 0 or event.step == event.total:
            print(format_progress_line(event), flush=True)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m napari_medgen.training MODEL --config FILE [--set key=value ...] [--resume]``."""
    parser = argparse.ArgumentParser(prog="python -m napari_medgen.training", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="what to train, e.g. segmenter")
    parser.add_argument("--config", "-c", required=True, help="YAML training configuration")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted for sections, e.g. data.root=/data); repeatable")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + (["resume=true"] if args.resume else [])
    try:
        printer = progress_printer(args.quiet)
        model_dir = train_from_config(args.model, args.config, overrides=overrides, progress=printer)
    except MedGenError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if _is_main_process():
        print(f"model saved to {model_dir}")
    return 0
