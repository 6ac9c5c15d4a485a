"""npe2 reader and writer commands: medical image files <-> napari layers in physical space.

All file access goes through `napari_medgen.core.io` (SimpleITK), all geometry through
`napari_medgen.layers`; this module only decides *which* layers to make and how to call them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_medgen.core.naming import looks_like_labels
from napari_medgen.core.naming import stem as _stem
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import InvalidInputError, UnsupportedFormatError
from napari_medgen.layers import LayerDataTuple, layer_to_volume, volume_to_layer_data

PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]

def _paths(path: PathOrPaths) -> list[str]:
    if isinstance(path, str | os.PathLike):
        return [os.fspath(path)]
    return [os.fspath(p) for p in path]


# ---- reader ------------------------------------------------------------------------------------------


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerDataTuple]] | None:
    """npe2 ``get_reader``: a reader function when every path is a supported volume, else None.

    Never raises: napari asks every plugin about every path, so an unreadable or foreign path must
    just be declined.
    """
    try:
        from napari_medgen.core.io import detect_format

        paths = _paths(path)
        if not paths or any(detect_format(p) is None for p in paths):
            return None
    except Exception:  # contract: get_reader declines instead of raising
        return None
    return read_layers


def read_volume_for_display(path: str) -> Volume:
    """Read ``path`` as a `LabelMap` when it is named like one and holds whole-number voxels, else a `Volume`.

    A ``.seg.nrrd`` is always a label map (Slicer segmentation, flattened by `read_labels`).
    """
    from napari_medgen.core.io import read_labels, read_volume

    if path.lower().endswith(".seg.nrrd"):
        return read_labels(path)
    volume = read_volume(path)
    if looks_like_labels(path):
        try:  # integer voxels (or whole-number floats) make a label map
            return volume.as_labels()
        except InvalidInputError:  # fractional or negative values: not a label map after all
            return volume
    return volume


def read_layers(path: PathOrPaths) -> list[LayerDataTuple]:
    """Reader function: one layer per path, placed in physical (LPS, mm) world coordinates."""
    layers = []
    for p in _paths(path):
        volume = read_volume_for_display(p)
        volume = volume.with_array(
            volume.array, metadata={**volume.metadata, "source_path": os.path.abspath(p)}
        )
        layers.append(volume_to_layer_data(volume, name=_stem(p)))
    return layers


# ---- writers -----------------------------------------------------------------------------------------


def _write_one(path: str, data: Any, meta: dict[str, Any], layer_type: str) -> list[str]:
    from napari_medgen.core.io import write_volume

    volume = layer_to_volume(data, meta, layer_type=layer_type)
    write_volume(volume, path)
    return [path]


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one image layer where it is shown (its current scale/translate/rotate/affine)."""
    return _write_one(path, data, meta, "image")


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one labels layer with an integer voxel type, where it is shown."""
    return _write_one(path, data, meta, "labels")


def _safe_name(name: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "layer"
    candidate, n = base, 1
    while candidate.lower() in used:
        n += 1
        candidate = f"{base}_{n}"
    used.add(candidate.lower())
    return candidate


def write_layers_to_folder(path: str, layer_data: list[tuple[Any, dict[str, Any], str]]) -> list[str]:
    """Write several image/labels layers into folder ``path``, one ``<layer name>.nii.gz`` each.

    Every layer is converted before anything is written, so an unsavable layer (RGB, 4D, sheared)
    leaves no half-written folder behind.
    """
    from napari_medgen.core.io import write_outputs

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UnsupportedFormatError(
            f"{folder} is a file; to save several layers give a folder name without an extension, "
            "or save one layer at a time to a .nii.gz/.nrrd/.mha file."
        )
    if not layer_data:
        raise InvalidInputError("No layers to save; select at least one image or labels layer.")
    used: set[str] = set()
    planned: list[tuple[Path, Volume]] = []
    for data, meta, layer_type in layer_data:
        if layer_type not in {"image", "labels"}:
            raise UnsupportedFormatError(
                f"napari-medgen saves image and labels layers only; got {layer_type}."
            )
        volume = layer_to_volume(data, meta, layer_type=layer_type)
        name = _safe_name(
            str(meta.get("name") or ("labels" if isinstance(volume, LabelMap) else "image")), used
        )
        planned.append((folder / f"{name}.nii.gz", volume))
    write_outputs([(volume, target) for target, volume in planned])  # every layer or none
    return [str(target) for target, _ in planned]


__all__ = [
    "get_reader",
    "looks_like_labels",
    "read_layers",
    "read_volume_for_display",
    "write_image",
    "write_labels",
    "write_layers_to_folder",
]
