"""What `medgen info` reports: versions, compute device and bundled models (for bug reports)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

_PACKAGES = ("torch", "monai", "diffusers", "accelerate", "SimpleITK", "numpy", "napari", "magicgui", "PyQt6")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def collect_info() -> dict[str, Any]:
    """Plain-data summary of this installation."""
    from napari_medgen import __version__
    from napari_medgen.core.device import describe_device, select_device
    from napari_medgen.hub import list_bundled
    from napari_medgen.training import available_tasks

    try:
        device = describe_device(select_device())
    except Exception as error:  # noqa: BLE001 - report, don't crash, in a diagnostics command
        device = f"unavailable ({error})"
    return {
        "napari-medgen": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "packages": {name: _version(name) for name in _PACKAGES},
        "bundled_models": list_bundled(),
        "trainable_models": list(available_tasks()),
    }
