"""Registry of trainable models: one module per task in this package.

`available_tasks` imports every module here, so a later model only adds a file that defines a
`TrainingTask` subclass decorated with ``@register_task("name")``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TypeVar

from napari_medgen.errors import ConfigError

_TASKS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_task(name: str) -> Callable[[T], T]:
    """Class decorator: expose a `TrainingTask` as ``medgen train NAME``."""

    def decorate(cls: T) -> T:
        existing = _TASKS.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ConfigError(
                f"Training task {name!r} is registered twice ({existing.__qualname__}, {cls.__qualname__})."
            )
        cls.name = name
        _TASKS[name] = cls
        return cls

    return decorate


def _import_task_modules() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def available_tasks() -> dict[str, type]:
    """Task name -> `TrainingTask` subclass, for every trainable model."""
    _import_task_modules()
    return dict(sorted(_TASKS.items()))


def get_task(name: str) -> type:
    """The task class for ``name``; `ConfigError` listing the valid names otherwise."""
    tasks = available_tasks()
    try:
        return tasks[name]
    except KeyError:
        raise ConfigError(
            f"Unknown model {name!r} for training; trainable models: {', '.join(tasks) or 'none'}."
        ) from None
