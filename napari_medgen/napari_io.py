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

import numpy as np

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


#: at most this many distinct values (background 0 included) make an integer volume a label map by content
MAX_LABEL_VALUES = 32


def label_values(volume: Volume) -> tuple[int, ...] | None:
    """The distinct values of ``volume`` when its voxels look like a label map by content, else None.

    Content rule: whole-number voxels (an integer type, or a float type holding only whole numbers, as BraTS
    stores ``OTMultiClass.nii.gz``), no negative values, background 0 present and at most `MAX_LABEL_VALUES`
    distinct values (BraTS: 0-4). A float scan (fractional values, even only a few of them) stays an image.
    """
    arr = np.asarray(volume.array)
    if arr.dtype.kind not in "iuf" or arr.size == 0:
        return None
    step = max(1, int(round((arr.size / 1_000_000) ** (1 / max(arr.ndim, 1)))))
    sample = arr[(slice(None, None, step),) * arr.ndim]
    if np.unique(sample).size > MAX_LABEL_VALUES:
        return None  # a scan: cheap rejection on a sample
    if arr.dtype.kind == "f" and not (np.all(np.isfinite(arr)) and np.array_equal(arr, np.round(arr))):
        return None  # fractional values: an image
    low, high = arr.min(), arr.max()
    if low != 0 or high > np.iinfo(np.int32).max:  # negative values, no background, or not a label range
        return None
    if high <= np.iinfo(np.uint16).max:
        values = np.flatnonzero(np.bincount(arr.ravel().astype(np.intp), minlength=1))
    else:
        values = np.unique(arr)
    if values.size > MAX_LABEL_VALUES:
        return None
    return tuple(int(v) for v in values)


def describe_values(values: tuple[int, ...]) -> str:
    """``"0-4"`` for consecutive values, else the list (``"0, 1, 4"``)."""
    if len(values) > 1 and values == tuple(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(str(v) for v in values)


def _notify(message: str) -> None:
    """A napari info notification when napari is there (the reader also runs without it)."""
    try:
        from napari.utils.notifications import show_info
    except ImportError:  # pragma: no cover - napari is optional for the readers
        return
    show_info(message)


def read_volume_for_display(path: str) -> Volume:
    """Read ``path`` as a `LabelMap` or a `Volume`.

    * a ``.seg.nrrd`` is always a label map (Slicer segmentation, flattened by `read_labels`);
    * a file *named* like a label map (label/seg/mask) holding whole-number voxels >= 0 is one;
    * otherwise the *content* decides: whole-number voxels, background 0 and at most `MAX_LABEL_VALUES` distinct
      values make a label map (`label_values`), and a napari notification says so.
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
    values = label_values(volume)
    if values is not None:
        _notify(
            f"{Path(path).name} opened as labels: integer values {describe_values(values)} "
            f"(at most {MAX_LABEL_VALUES} values, background 0). Right-click the layer > Convert to Image to "
            "see it as an image."
        )
        return volume.as_labels()
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
    "MAX_LABEL_VALUES",
    "describe_values",
    "get_reader",
    "label_values",
    "looks_like_labels",
    "read_layers",
    "read_volume_for_display",
    "write_image",
    "write_labels",
    "write_layers_to_folder",
]
