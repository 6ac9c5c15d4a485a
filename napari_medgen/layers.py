"""Conversions between `Volume`/`LabelMap` and napari layers, with the geometry kept exact.

napari places a layer in the world with the chain ``world = A @ (R @ Sh @ diag(scale) @ idx + translate)``
where ``A`` is the layer's ``affine`` and ``R``/``Sh`` its ``rotate``/``shear``, all in the array's
``(z, y, x)`` axis order. napari-medgen makes napari's world axes the *reversed* SimpleITK physical
axes, so world point ``(z, y, x)`` is the LPS point ``(x, y, z)`` in millimetres. A `Volume` therefore
becomes a layer with ``scale = spacing`` (reversed) and, depending on the direction matrix:

* identity direction: ``translate = origin`` (reversed) and no affine, the plainest napari layer;
* any other direction (flips, obliques): ``affine = [D | origin]`` in reversed axis order, which
  keeps the direction instead of dropping it.

The way back (`layer_to_volume`) composes whatever transforms the layer has *now*, so a layer the
user moved is written where it is shown. These functions import nothing from napari or Qt: they take
a layer object (duck-typed) or a ``(data, meta)`` pair as napari writers receive it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from napari_medgen.core.volume import IDENTITY_DIRECTION, LabelMap, Volume
from napari_medgen.errors import DimensionError, GeometryMismatchError, InvalidInputError

METADATA_KEY = "medgen"
"""Key under ``layer.metadata`` that holds the source geometry and header of a layer."""

ORTHONORMAL_TOLERANCE = 1e-4
SNAP_TOLERANCE = 1e-9
LABEL_GRID_TOLERANCE = 1e-4

LayerDataTuple = tuple[np.ndarray, dict[str, Any], str]

# ---- geometry <-> napari matrices --------------------------------------------------------------------


def _reverse(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in reversed(list(values)))


def volume_world_matrix(volume: Volume) -> np.ndarray:
    """4x4 matrix mapping a napari data index ``(z, y, x)`` to the world point ``(z, y, x)``.

    It is SimpleITK's index-to-physical matrix with both axis orders reversed.
    """
    rev = np.eye(4)
    rev[:3, :3] = np.eye(3)[::-1]
    return rev @ volume.index_to_physical_matrix() @ rev


def world_matrix_to_geometry(
    matrix_zyx: np.ndarray,
) -> tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, ...]]:
    """Split a napari data-to-world matrix into SimpleITK ``(spacing, origin, direction)``.

    Raises `GeometryMismatchError` when the matrix holds a shear or skew, which no medical image
    header (NIfTI qform, NRRD, MHA) can store.
    """
    mat = np.asarray(matrix_zyx, dtype=float)
    if mat.shape != (4, 4):
        raise InvalidInputError(f"Expected a 4x4 homogeneous matrix for a 3D layer; got shape {mat.shape}.")
    linear_xyz = mat[:3, :3][::-1, ::-1]
    spacing = np.linalg.norm(linear_xyz, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise GeometryMismatchError(
            f"The layer transform collapses an axis (voxel size {tuple(spacing)}); "
            "reset the layer's scale/affine before saving."
        )
    direction = linear_xyz / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=ORTHONORMAL_TOLERANCE):
        raise GeometryMismatchError(
            "The layer's transform contains a shear or skew, which NIfTI/NRRD/MHA headers cannot store. "
            "Reset the layer's shear (layer.shear = 0) or resample the data before saving."
        )
    origin = _reverse(mat[:3, 3])
    return (
        (float(spacing[0]), float(spacing[1]), float(spacing[2])),
        (origin[0], origin[1], origin[2]),
        tuple(float(v) for v in direction.reshape(-1)),
    )


def _shear_matrix(shear: Any, ndim: int) -> np.ndarray:
    arr = np.asarray(shear if shear is not None else np.zeros(ndim * (ndim - 1) // 2), dtype=float)
    if arr.ndim == 2:
        return arr
    mat = np.eye(ndim)
    mat[np.triu_indices(ndim, k=1)] = arr.reshape(-1)
    return mat


def layer_world_matrix(meta: Mapping[str, Any], ndim: int) -> np.ndarray:
    """Compose napari's ``affine @ (rotate @ shear @ diag(scale), translate)`` into one matrix.

    ``meta`` holds napari layer state (``scale``, ``translate``, ``rotate``, ``shear``, ``affine``);
    missing entries mean the napari default (no transform).
    """
    scale = np.asarray(meta.get("scale", np.ones(ndim)), dtype=float).reshape(-1)
    translate = np.asarray(meta.get("translate", np.zeros(ndim)), dtype=float).reshape(-1)
    rotate = meta.get("rotate")
    rotate_mat = np.eye(ndim) if rotate is None else np.asarray(rotate, dtype=float)
    if rotate_mat.shape != (ndim, ndim):
        raise InvalidInputError(
            f"rotate must be a {ndim}x{ndim} matrix here (napari stores it that way); got {rotate_mat.shape}."
        )
    if scale.shape != (ndim,) or translate.shape != (ndim,):
        raise InvalidInputError(
            f"scale/translate must have {ndim} values for a {ndim}D layer; "
            f"got {scale.shape}, {translate.shape}."
        )
    data2physical = np.eye(ndim + 1)
    data2physical[:ndim, :ndim] = rotate_mat @ _shear_matrix(meta.get("shear"), ndim) @ np.diag(scale)
    data2physical[:ndim, ndim] = translate
    affine = meta.get("affine")
    physical2world = np.eye(ndim + 1) if affine is None else _as_affine_matrix(affine, ndim)
    return physical2world @ data2physical


def _as_affine_matrix(affine: Any, ndim: int) -> np.ndarray:
    mat = getattr(affine, "affine_matrix", affine)
    mat = np.asarray(mat, dtype=float)
    if mat.shape == (ndim, ndim):
        full = np.eye(ndim + 1)
        full[:ndim, :ndim] = mat
        return full
    if mat.shape != (ndim + 1, ndim + 1):
        raise InvalidInputError(
            f"affine must be ({ndim + 1}, {ndim + 1}) for a {ndim}D layer; got {mat.shape}."
        )
    return mat


# ---- Volume -> layer ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def napari_has_layer_units() -> bool:
    """Whether the installed napari takes a layer's ``units`` (0.6 and later; the scale bar follows them).

    Read from the package version, so this module still imports nothing from napari."""
    try:
        major, minor = (int(part) for part in re.findall(r"\d+", version("napari"))[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (0, 6)


def volume_to_layer_kwargs(volume: Volume, name: str | None = None) -> dict[str, Any]:
    """Keyword arguments placing ``volume`` correctly in napari (``scale``/``translate``/``affine``, and
    ``units`` in mm where napari has layer units).

    Works for both ``viewer.add_image`` and ``viewer.add_labels``. The source geometry (and any
    header in ``volume.metadata``) is kept under ``metadata["medgen"]`` so it survives a round trip.
    """
    kwargs: dict[str, Any] = {"scale": volume.spacing_zyx}
    if np.allclose(volume.direction, IDENTITY_DIRECTION, rtol=0, atol=1e-12):
        kwargs["translate"] = _reverse(volume.origin)
    else:
        affine = np.eye(4)
        affine[:3, :3] = volume.direction_matrix[::-1, ::-1]
        affine[:3, 3] = _reverse(volume.origin)
        kwargs["translate"] = (0.0, 0.0, 0.0)
        kwargs["affine"] = affine
    medgen: dict[str, Any] = {
        "spacing": list(volume.spacing),
        "origin": list(volume.origin),
        "direction": list(volume.direction),
        "size_xyz": list(volume.size_xyz),
        "dtype": str(volume.array.dtype),
        "header": {k: v for k, v in volume.metadata.items() if k not in {"spacing", "origin", "direction"}},
    }
    source = volume.metadata.get("source_path")
    if source is not None:
        medgen["source_path"] = str(source)
    kwargs["metadata"] = {METADATA_KEY: medgen}
    if napari_has_layer_units():
        kwargs["units"] = ("mm",) * 3  # napari's scale bar then reads millimetres, not pixels
    if name:
        kwargs["name"] = name
    return kwargs


def image_display_kwargs(volume: Volume) -> dict[str, Any]:
    """Grey colormap and robust contrast limits (0.5-99.5 percentile) for an image layer."""
    arr = volume.array
    step = max(1, int(round((arr.size / 2_000_000) ** (1 / 3))))
    sample = np.asarray(arr[::step, ::step, ::step], dtype=np.float64)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        low, high = 0.0, 1.0
    else:
        low, high = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
        if high <= low:
            low, high = float(finite.min()), float(finite.max())
        if high <= low:
            high = low + 1.0
    return {"colormap": "gray", "contrast_limits": (low, high)}


def volume_to_layer_data(volume: Volume, name: str | None = None) -> LayerDataTuple:
    """A napari layer data tuple: ``labels`` for a `LabelMap`, ``image`` otherwise.

    Labels get a writable copy of the voxels because napari paints into its labels array in place;
    images share the (read-only) array.
    """
    kwargs = volume_to_layer_kwargs(volume, name=name)
    if isinstance(volume, LabelMap):
        return np.array(volume.array), kwargs, "labels"
    kwargs.update(image_display_kwargs(volume))
    return volume.array, kwargs, "image"


# ---- layer -> Volume ---------------------------------------------------------------------------------


def _layer_parts(layer_or_data: Any, meta: Mapping[str, Any] | None, layer_type: str | None) -> tuple:
    if hasattr(layer_or_data, "as_layer_data_tuple"):
        data, state, kind = layer_or_data.as_layer_data_tuple()
        return data, dict(state), layer_type or kind
    return layer_or_data, dict(meta or {}), layer_type or "image"


def _to_numpy(data: Any, meta: Mapping[str, Any]) -> np.ndarray:
    if meta.get("multiscale") or isinstance(data, list | tuple):
        raise DimensionError(
            "Multiscale (pyramid) layers are not supported; make a single-scale layer from the "
            "full-resolution level (e.g. viewer.add_image(layer.data[0], ...)) and use that."
        )
    if isinstance(data, np.ndarray):
        return data
    if not hasattr(data, "__array__"):
        raise InvalidInputError(
            f"The layer data ({type(data).__name__}) is not an array; convert it to a numpy array first."
        )
    return np.asarray(data)


def _compact_label_dtype(arr: np.ndarray) -> np.ndarray:
    """Smallest unsigned integer type holding the labels, for files every viewer can open."""
    if arr.dtype.kind == "f":
        return arr  # LabelMap validates integrality and converts
    top = int(arr.max()) if arr.size else 0
    if arr.size and int(arr.min()) < 0:
        return arr  # LabelMap rejects negative labels with a clear message
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return arr if arr.dtype == dtype else arr.astype(dtype)
    return arr


def _snap_to_source(
    geometry: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]], meta: Mapping[str, Any]
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Use the stored source geometry verbatim when the layer was not moved (float-noise away)."""
    source = (meta.get("metadata") or {}).get(METADATA_KEY) or {}
    try:
        stored = tuple(tuple(float(v) for v in source[k]) for k in ("spacing", "origin", "direction"))
    except (KeyError, TypeError, ValueError):
        return geometry
    if all(
        len(a) == len(b) and np.allclose(a, b, rtol=0, atol=SNAP_TOLERANCE)
        for a, b in zip(stored, geometry, strict=True)
    ):
        return stored  # type: ignore[return-value]
    return geometry


def layer_to_volume(
    layer_or_data: Any,
    meta: Mapping[str, Any] | None = None,
    *,
    layer_type: str | None = None,
) -> Volume:
    """Turn a napari layer (or a writer's ``(data, meta)``) into a `Volume`/`LabelMap` where it is shown.

    ``layer_type`` ``"labels"`` (or a Labels layer) gives a `LabelMap` with a compact unsigned dtype.
    A 2D layer becomes a one-slice volume (1 mm thick); RGB, multiscale and >3D layers are refused
    with a `MedGenError` saying what to do.
    """
    data, state, kind = _layer_parts(layer_or_data, meta, layer_type)
    if state.get("rgb"):
        raise DimensionError(
            "RGB(A) image layers cannot be saved as a medical volume; convert to greyscale first "
            "(e.g. viewer.add_image(layer.data.mean(axis=-1)))."
        )
    arr = _to_numpy(data, state)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
        matrix2d = layer_world_matrix(state, 2)
        matrix = np.eye(4)
        matrix[1:, 1:] = matrix2d
    elif arr.ndim == 3:
        matrix = layer_world_matrix(state, 3)
    else:
        raise DimensionError(
            f"The layer has {arr.ndim} dimensions (shape {arr.shape}); only 2D or 3D layers can be saved. "
            "Select one time point/channel first (e.g. viewer.add_image(layer.data[0]))."
        )
    spacing, origin, direction = _snap_to_source(world_matrix_to_geometry(matrix), state)
    header = dict(((state.get("metadata") or {}).get(METADATA_KEY) or {}).get("header") or {})
    if state.get("name"):
        header["layer_name"] = str(state["name"])
    if kind == "labels":
        return LabelMap(_compact_label_dtype(arr), spacing, origin, direction, header)
    if kind != "image":
        raise InvalidInputError(f"Only image and labels layers can become volumes; got a {kind} layer.")
    return Volume(arr, spacing, origin, direction, header)


def snapshot(volume: Volume) -> Volume:
    """A copy of a layer-backed volume whose voxels no later edit of the layer (painting) can change: what a
    worker thread must read while the user keeps working."""
    return replace(volume, array=np.array(volume.array))


def labels_layer_to_labelmap(
    layer_or_data: Any, reference: Volume, meta: Mapping[str, Any] | None = None
) -> LabelMap:
    """The labels of a layer as a `LabelMap` on ``reference``'s grid (exact reference geometry).

    Raises `GeometryMismatchError` when the layer is not aligned voxel-for-voxel with the reference,
    e.g. a labels layer made for another image, or one that was moved.
    """
    labels = layer_to_volume(layer_or_data, meta, layer_type="labels")
    assert isinstance(labels, LabelMap)
    if labels.shape != reference.shape or not (
        np.allclose(labels.spacing, reference.spacing, rtol=0, atol=LABEL_GRID_TOLERANCE)
        and np.allclose(labels.origin, reference.origin, rtol=0, atol=LABEL_GRID_TOLERANCE)
        and np.allclose(labels.direction, reference.direction, rtol=0, atol=LABEL_GRID_TOLERANCE)
    ):
        raise GeometryMismatchError(
            f"The labels layer is not on the image grid: labels shape {labels.shape}, "
            f"spacing {labels.spacing}, origin {labels.origin}; image shape {reference.shape}, "
            f"spacing {reference.spacing}, origin {reference.origin}. Draw the labels on a layer made "
            "from this image (same scale/translate/affine), or resample them onto the image first."
        )
    return reference.as_labels(labels.array)
