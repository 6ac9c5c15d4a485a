"""One accelerate-based trainer for every model (see `napari_medgen.training.trainer`).

Importing this package is cheap (no torch): the CLI lists `available_tasks` and calls
`train_from_config`; the trainer, EMA and datasets are imported when training starts.
"""

from __future__ import annotations

from napari_medgen.training.config import TrainConfig, load_config
from napari_medgen.training.launch import train_from_config
from napari_medgen.training.tasks import available_tasks, register_task

__all__ = ["TrainConfig", "available_tasks", "load_config", "register_task", "train_from_config"]
