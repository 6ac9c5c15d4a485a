"""Voxel <-> world coordinates, crop/paste with feathered blending, and resampling.

Conventions (the same everywhere in napari-medgen):

* **indices** are given in array order ``(z, y, x)`` because arrays are indexed that way; they may be
  continuous (0.0 is the centre of the first voxel);
* **points** are physical LPS coordinates in millimetres in ``(x, y, z)`` order, as SimpleITK and
  DICOM write them.

So ``index_to_physical(vol, (k, j, i)) == origin + direction @ (spacing * (i, j, k))``.
Every function returns new objects; inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import GeometryMismatchError, InvalidInputError

_INTERPOLATORS = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "label_gaussian": sitk.sitkLabelGaussian,
}


def _points(values: np.ndarray | Sequence[float] | Sequence[Sequence[float]], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 0 or arr.shape[-1] != 3:
        raise InvalidInputError(f"{name} must have 3 coordinates per point (shape (3,) or (N, 3)); got {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{name} contains NaN or Inf.")
    return arr


def index_to_physical(volume: Volume, index_zyx: np.ndarray | Sequence[float]) -> np.ndarray:
    """Physical (x, y, z) LPS points in mm of continuous (z, y, x) indices; shape (3,) or (..., 3)."""
    idx = _points(index_zyx, "index_zyx")
    matrix = volume.direction_matrix @ np.diag(volume.spacing)
    return idx[..., ::-1] @ matrix.T + np.asarray(volume.origin)


def physical_to_index(volume: Volume, points_xyz: np.ndarray | Sequence[float]) -> np.ndarray:
    """Continuous (z, y, x) indices of physical (x, y, z) LPS points in mm; shape (3,) or (..., 3)."""
    pts = _points(points_xyz, "points_xyz")
    matrix = volume.direction_matrix @ np.diag(volume.spacing)
    xyz = (pts - np.asarray(volume.origin)) @ np.linalg.inv(matrix).T
    return xyz[..., ::-1]


def right_handed(volume: Volume) -> Volume:
    """The same voxels on a right-handed grid (det(direction) = +1), reversing the slice axis if needed.

    DICOM series cannot describe left-handed grids (slices are ordered along row x column), so this is
    the grid a DICOM folder reads back as. Every voxel keeps its physical position and value.
    """
    if np.linalg.det(volume.direction_matrix) > 0:
        return volume
    direction = volume.direction_matrix.copy()
    direction[:, 2] *= -1.0
    origin = index_to_physical(volume, (volume.shape[0] - 1, 0.0, 0.0))
    return volume.with_array(volume.array[::-1], origin=tuple(origin), direction=tuple(direction.reshape(-1)))


# ---- crop and paste -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Crop:
    """A box cut out of a larger volume: the crop (with its own correct geometry) and where it came from.

    ``start_zyx`` is the index of the crop's first voxel in the source array; it may be negative or
    reach past the source where the box was padded. `paste` uses it to put the crop back.
    """

    volume: Volume
    start_zyx: tuple[int, int, int]

    @property
    def stop_zyx(self) -> tuple[int, int, int]:
        """Exclusive end index of the box in the source array."""
        return tuple(s + n for s, n in zip(self.start_zyx, self.volume.shape, strict=True))  # type: ignore[return-value]


def _size_triple(size_zyx: Sequence[int] | int) -> tuple[int, int, int]:
    sizes = np.broadcast_to(np.asarray(size_zyx), (3,))
    if not np.all(np.equal(np.mod(sizes, 1), 0)) or np.any(sizes < 1):
        raise InvalidInputError(f"size_zyx must be positive whole numbers of voxels; got {tuple(sizes)}.")
    return tuple(int(s) for s in sizes)  # type: ignore[return-value]


def crop_around(
    volume: Volume,
    center_mm: Sequence[float] | np.ndarray,
    size_zyx: Sequence[int] | int,
    pad_value: float | None = None,
) -> Crop:
    """Cut a ``size_zyx`` box of voxels centred on the physical point ``center_mm`` (x, y, z).

    The box stays on the source voxel grid (no interpolation). Parts outside the volume are filled
    with ``pad_value`` (default: the volume minimum for images, 0 for label maps). The returned
    crop's origin places it exactly where it was in the source, so its own geometry is right.
    """
    size = np.asarray(_size_triple(size_zyx))
    centre = physical_to_index(volume, _points(center_mm, "center_mm").reshape(3))
    shape = np.asarray(volume.shape)
    if np.any(centre < -0.5) or np.any(centre > shape - 0.5):
        raise InvalidInputError(
            f"The crop centre {tuple(np.round(center_mm, 3).tolist())} mm lies outside the image (voxel index z,y,x "
            f"{tuple(np.round(centre, 2).tolist())}, image shape {volume.shape}). Pick a point inside the volume."
        )
    start = np.floor(centre - (size - 1) / 2.0 + 0.5).astype(int)
    stop = start + size
    if pad_value is None:
        pad_value = 0 if isinstance(volume, LabelMap) else (volume.array.min() if volume.array.size else 0)
    if not np.isfinite(float(pad_value)):
        raise InvalidInputError(f"pad_value must be a finite number; got {pad_value}.")
    fill = np.asarray(pad_value).astype(volume.array.dtype)
    if volume.array.dtype.kind in "iub" and float(fill) != float(pad_value):
        raise InvalidInputError(
            f"pad_value {pad_value} cannot be stored in this {volume.array.dtype} volume; give a whole "
            "number "
            "within the voxel type's range."
        )
    out = np.full(tuple(size), fill, dtype=volume.array.dtype)
    src0, src1 = np.maximum(start, 0), np.minimum(stop, shape)
    dst0, dst1 = src0 - start, src1 - start
    out[dst0[0] : dst1[0], dst0[1] : dst1[1], dst0[2] : dst1[2]] = volume.array[
        src0[0] : src1[0], src0[1] : src1[1], src0[2] : src1[2]
    ]
    origin = index_to_physical(volume, start.astype(float))
    cropped = volume.with_array(out, origin=tuple(origin))
    return Crop(cropped, tuple(int(s) for s in start))  # type: ignore[arg-type]


def _require_same_axes(target: Volume, patch: Volume) -> None:
    if not (
        np.allclose(target.spacing, patch.spacing, rtol=1e-6, atol=1e-9)
        and np.allclose(target.direction, patch.direction, rtol=0, atol=1e-6)
    ):
        raise GeometryMismatchError(
            f"The patch (spacing {patch.spacing}) does not share the target's voxel axes (spacing "
            f"{target.spacing}, direction {target.direction}); resample it onto the target first "
            "(napari_medgen.core.geometry.resample_like)."
        )


def _start_from_origin(target: Volume, patch: Volume) -> tuple[int, int, int]:
    idx = physical_to_index(target, patch.origin)
    rounded = np.round(idx)
    if np.max(np.abs(idx - rounded)) > 1e-3:
        raise GeometryMismatchError(
            f"The patch origin {patch.origin} falls between the target's voxels (index "
            f"{tuple(np.round(idx, 3).tolist())}); "
            "pass start_zyx explicitly or resample the patch with resample_like."
        )
    return tuple(int(v) for v in rounded)  # type: ignore[return-value]


def blend_weights(region: np.ndarray, spacing_zyx: Sequence[float], feather_mm: float) -> np.ndarray:
    """Per-voxel blend weights in [0, 1]: 0 outside ``region``, ramping up to 1 at ``feather_mm`` inside it.

    The ramp is the Euclidean distance (mm, anisotropic spacing respected) from each region voxel to the
    nearest voxel outside the region or outside the box, divided by ``feather_mm``.
    ``feather_mm = 0`` gives a hard 0/1 mask.
    """
    inside = np.asarray(region, dtype=bool)
    if feather_mm < 0 or not np.isfinite(feather_mm):
        raise InvalidInputError(f"feather_mm must be >= 0; got {feather_mm}.")
    if feather_mm == 0:
        return inside.astype(np.float64)
    from scipy.ndimage import distance_transform_edt

    padded = np.pad(inside, 1, constant_values=False)  # the box edge counts as outside
    dist = distance_transform_edt(padded, sampling=tuple(float(s) for s in spacing_zyx))[1:-1, 1:-1, 1:-1]
    return np.where(inside, np.clip(dist / feather_mm, 0.0, 1.0), 0.0)


def _cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iub":
        info = np.iinfo(dtype) if dtype.kind != "b" else np.iinfo(np.uint8)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def paste(
    target: Volume,
    patch: Crop | Volume,
    start_zyx: Sequence[int] | None = None,
    *,
    mask: np.ndarray | Volume | None = None,
    feather_mm: float = 0.0,
) -> Volume:
    """A copy of ``target`` with ``patch`` blended in at ``start_zyx`` (default: the crop's own start, or
    the position given by the patch's origin).

    The blend region is ``mask`` (non-zero voxels, patch shaped) or the whole patch. Inside it the
    weights of `blend_weights` mix patch and target; every voxel outside it is bit-identical to
    ``target``. Parts of the patch beyond the target are ignored. Label maps are pasted hard
    (``feather_mm`` must be 0) since blended labels mean nothing.
    """
    if isinstance(patch, Crop):
        patch_volume = patch.volume
        start = patch.start_zyx if start_zyx is None else start_zyx
    else:
        patch_volume = patch
        start = _start_from_origin(target, patch) if start_zyx is None else start_zyx
    _require_same_axes(target, patch_volume)
    start_arr = np.asarray(start)
    if start_arr.shape != (3,) or not np.all(np.equal(np.mod(start_arr, 1), 0)):
        raise InvalidInputError(f"start_zyx must be 3 whole voxel indices (z, y, x); got {start}.")
    start_arr = start_arr.astype(int)
    if isinstance(target, LabelMap) and feather_mm > 0:
        raise InvalidInputError("Label maps are pasted without feathering; use feather_mm=0 (blend images only).")
    if mask is None:
        region = np.ones(patch_volume.shape, dtype=bool)
    else:
        mask_arr = np.asarray(mask.array if isinstance(mask, Volume) else mask)
        if mask_arr.shape != patch_volume.shape:
            raise GeometryMismatchError(f"mask shape {mask_arr.shape} differs from patch shape {patch_volume.shape}.")
        region = mask_arr != 0
    weights = blend_weights(region, patch_volume.spacing_zyx, feather_mm)
    shape = np.asarray(target.shape)
    t0, t1 = np.maximum(start_arr, 0), np.minimum(start_arr + np.asarray(patch_volume.shape), shape)
    if np.any(t1 <= t0):
        raise InvalidInputError(
            f"The patch (start {tuple(start_arr)}, shape {patch_volume.shape}) lies entirely outside the "
            "target "
            f"of shape {target.shape}; nothing to paste."
        )
    p0, p1 = t0 - start_arr, t1 - start_arr
    out = np.array(target.array, copy=True)
    t_view = out[t0[0] : t1[0], t0[1] : t1[1], t0[2] : t1[2]]
    p_sub = np.asarray(patch_volume.array[p0[0] : p1[0], p0[1] : p1[1], p0[2] : p1[2]])
    w_sub = weights[p0[0] : p1[0], p0[1] : p1[1], p0[2] : p1[2]]
    full = w_sub >= 1.0
    partial = (w_sub > 0.0) & ~full
    t_view[full] = _cast_like(p_sub[full], out.dtype)
    if partial.any():
        w = w_sub[partial]
        mixed = w * p_sub[partial].astype(np.float64) + (1.0 - w) * t_view[partial].astype(np.float64)
        t_view[partial] = _cast_like(mixed, out.dtype)
    return target.with_array(out)


# ---- resampling -----------------------------------------------------------------------------------------
def _interpolator(volume: Volume, name: str) -> int:
    if name == "auto":
        name = "nearest" if isinstance(volume, LabelMap) else "linear"
    if name not in _INTERPOLATORS:
        raise InvalidInputError(f"Unknown interpolator {name!r}; choose one of {['auto', *_INTERPOLATORS]}.")
    if isinstance(volume, LabelMap) and name in ("linear", "bspline"):
        raise InvalidInputError(
            f"{name!r} interpolation would invent fractional labels; use 'nearest' or 'label_gaussian' for label maps."
        )
    return _INTERPOLATORS[name]


def _resample(
    volume: Volume,
    size_xyz: Sequence[int],
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: Sequence[float],
    interpolator: str,
    default_value: float | None,
) -> Volume:
    from napari_medgen.core.io import to_sitk

    method = _interpolator(volume, interpolator)
    if default_value is None:
        empty = isinstance(volume, LabelMap) or not volume.array.size
        default_value = 0.0 if empty else float(volume.array.min())
    image = to_sitk(volume)
    exact_type = method in (sitk.sitkNearestNeighbor, sitk.sitkLabelGaussian)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(s) for s in size_xyz])
    resampler.SetOutputSpacing(tuple(float(s) for s in spacing))
    resampler.SetOutputOrigin(tuple(float(o) for o in origin))
    resampler.SetOutputDirection(tuple(float(d) for d in direction))
    resampler.SetInterpolator(method)
    resampler.SetDefaultPixelValue(float(default_value))
    resampler.SetOutputPixelType(image.GetPixelID() if exact_type else sitk.sitkFloat64)
    result = sitk.GetArrayFromImage(resampler.Execute(image))
    result = _cast_like(result, volume.array.dtype if volume.array.dtype != np.bool_ else np.dtype(np.uint8))
    return type(volume)(result, spacing=spacing, origin=origin, direction=direction, metadata=dict(volume.metadata))


def resample_to_spacing(
    volume: Volume,
    spacing_xyz: Sequence[float] | float,
    *,
    interpolator: str = "auto",
    default_value: float | None = None,
) -> Volume:
    """Resample onto a grid with spacing ``spacing_xyz`` (mm, x y z order; one number = isotropic).

    The field of view is kept: the outer corner of the first voxel and the direction stay fixed and the
    voxel count is ``round(extent / spacing)`` per axis, so the box covered by the voxels is unchanged
    whenever the extent is divisible by the new spacing (the first voxel *centre* moves by half the
    spacing change). ``interpolator``: "auto" (nearest for label maps, linear for images), "nearest",
    "linear", "bspline" or "label_gaussian". Voxels mapping outside the source get ``default_value``
    (default: the image minimum, 0 for labels). The voxel type is kept (rounded for integer images).
    """
    new_spacing = np.broadcast_to(np.asarray(spacing_xyz, dtype=float), (3,))
    if not np.all(np.isfinite(new_spacing)) or np.any(new_spacing <= 0):
        raise InvalidInputError(f"spacing_xyz must be positive finite millimetres; got {tuple(new_spacing)}.")
    old_spacing = np.asarray(volume.spacing)
    extent = np.asarray(volume.size_xyz) * old_spacing
    size = np.maximum(np.round(extent / new_spacing), 1).astype(int)
    origin = np.asarray(volume.origin) + volume.direction_matrix @ ((new_spacing - old_spacing) / 2.0)
    return _resample(volume, size, new_spacing, origin, volume.direction, interpolator, default_value)


def resample_like(
    volume: Volume, reference: Volume, *, interpolator: str = "auto", default_value: float | None = None
) -> Volume:
    """Resample ``volume`` onto exactly the grid of ``reference`` (shape, spacing, origin, direction).

    Returns the same class as ``volume`` (a `LabelMap` stays a label map) with its voxel type and metadata.
    """
    return _resample(
        volume,
        reference.size_xyz,
        reference.spacing,
        reference.origin,
        reference.direction,
        interpolator,
        default_value,
    )
