"""`Volume` and `LabelMap`: a voxel array plus the geometry that places it in the patient.

Every operation in napari-medgen takes and returns these objects so that spacing, origin and
direction can never be dropped on the way. Conventions follow SimpleITK exactly:

* ``array`` is indexed ``(z, y, x)`` (numpy order of ``sitk.GetArrayFromImage``);
* ``spacing`` and ``origin`` are given in ``(x, y, z)`` order, millimetres, LPS world;
* ``direction`` is the 3x3 matrix whose *columns* are the world directions of the x, y, z index
  axes, stored row-major as 9 floats (``sitk.Image.GetDirection()``).

So the physical point of index ``(i, j, k)`` (x, y, z order) is
``origin + direction @ (spacing * (i, j, k))``.

Objects are immutable: the array is stored read-only and every edit returns a new object, which
is how the "inputs are never mutated" rule is enforced rather than merely promised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medgen.errors import DimensionError, GeometryMismatchError, InvalidInputError

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
GEOMETRY_TOLERANCE = 1e-6


def _triple(value: Sequence[float], name: str) -> tuple[float, float, float]:
    arr = np.asarray(value, dtype=float).reshape(-1)
    if arr.shape != (3,):
        raise InvalidInputError(f"{name} must have 3 values (x, y, z); got {arr.shape[0]}.")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{name} contains NaN or Inf: {tuple(arr)}.")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def _direction(value: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    mat = np.asarray(value, dtype=float).reshape(-1)
    if mat.shape != (9,):
        raise InvalidInputError(f"direction must be a 3x3 matrix (9 values); got {mat.shape[0]} values.")
    m = mat.reshape(3, 3)
    if not np.all(np.isfinite(m)) or abs(abs(np.linalg.det(m)) - 1.0) > 1e-3:
        raise InvalidInputError(
            "direction must be an orthonormal 3x3 matrix (|det| = 1); fix the file header or pass "
            "the identity (1, 0, 0, 0, 1, 0, 0, 0, 1)."
        )
    return tuple(float(v) for v in mat)


def describe_labels(values: Sequence[int], limit: int = 12) -> str:
    """``"1, 2, 4"``, or ``"1 .. 4095 (3564 values; is this an image rather than labels?)"`` beyond ``limit``."""
    values = [int(v) for v in values]
    if not values:
        return "none (empty)"
    if len(values) <= limit:
        return ", ".join(str(v) for v in values)
    return f"{values[0]} .. {values[-1]} ({len(values)} values; is this an image rather than labels?)"


def _frozen(arr: np.ndarray) -> np.ndarray:
    """``arr`` as a read-only array nobody else can write: copied when it, or any array it views, is writeable
    (the caller could otherwise change a "read-only" volume afterwards); shared as is when already frozen."""
    base: object = arr
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            arr = np.array(arr, copy=True)
            break
        base = base.base
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D scalar image with its physical geometry (see the module docstring for conventions)."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = IDENTITY_DIRECTION
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise DimensionError(
                f"{type(self).__name__} needs a 3D array (z, y, x); got {arr.ndim}D with shape {arr.shape}. "
                "For a 2D image add a leading axis of length 1; for 4D data pick one channel/time point."
            )
        if arr.dtype.kind not in "biuf":
            raise InvalidInputError(f"Voxel type {arr.dtype} is not supported; use an integer or float array.")
        object.__setattr__(self, "array", _frozen(arr))
        spacing = _triple(self.spacing, "spacing")
        if min(spacing) <= 0:
            raise InvalidInputError(f"spacing must be positive; got {spacing}.")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", _triple(self.origin, "origin"))
        object.__setattr__(self, "direction", _direction(self.direction))
        object.__setattr__(self, "metadata", dict(self.metadata))
        self._validate()

    def _validate(self) -> None:
        """Hook for subclasses with stricter voxel rules."""

    # ---- geometry views -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape in (z, y, x) order."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """Grid size in SimpleITK (x, y, z) order."""
        z, y, x = self.shape
        return (x, y, z)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in array (z, y, x) order, as napari's ``scale`` wants it."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 direction matrix (columns = world direction of x, y, z index axes)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def index_to_physical_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping a continuous (x, y, z) index to an LPS point in mm."""
        mat = np.eye(4)
        mat[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        mat[:3, 3] = self.origin
        return mat

    def geometry(self) -> dict[str, Any]:
        """Plain-data geometry (JSON friendly)."""
        return {
            "size_xyz": list(self.size_xyz),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    def same_grid(self, other: Volume, tol: float = GEOMETRY_TOLERANCE) -> bool:
        """True when ``other`` has the same shape, spacing, origin and direction (within ``tol``)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, rtol=0, atol=tol)
            and np.allclose(self.origin, other.origin, rtol=0, atol=tol)
            and np.allclose(self.direction, other.direction, rtol=0, atol=tol)
        )

    def require_same_grid(self, other: Volume, what: str = "label map") -> None:
        """Raise `GeometryMismatchError` with a helpful message when grids differ."""
        if self.same_grid(other):
            return
        raise GeometryMismatchError(
            f"The {what} does not lie on the image grid: image shape {self.shape}, spacing {self.spacing}, "
            f"origin {self.origin}; {what} shape {other.shape}, spacing {other.spacing}, origin {other.origin}. "
            f"Resample the {what} onto the image first (e.g. `medgen convert` with the image as reference, "
            "or napari_medgen.core.geometry.resample_like)."
        )

    # ---- constructors ---------------------------------------------------------------------------
    def with_array(self, array: np.ndarray, **changes: Any) -> Volume:
        """A new object of the same class and geometry holding ``array`` (geometry may be overridden)."""
        kwargs: dict[str, Any] = {
            "spacing": self.spacing,
            "origin": self.origin,
            "direction": self.direction,
            "metadata": dict(self.metadata),
        }
        kwargs.update(changes)
        return type(self)(np.asarray(array), **kwargs)

    def as_labels(self, array: np.ndarray | None = None) -> LabelMap:
        """A `LabelMap` on this grid (from ``array``, or from this volume's own voxels)."""
        data = self.array if array is None else array
        return LabelMap(np.asarray(data), self.spacing, self.origin, self.direction, dict(self.metadata))

    def as_image(self, array: np.ndarray | None = None) -> Volume:
        """A plain `Volume` on this grid."""
        data = self.array if array is None else array
        return Volume(np.asarray(data), self.spacing, self.origin, self.direction, dict(self.metadata))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, dtype={self.array.dtype}, spacing={self.spacing}, "
            f"origin={self.origin}, direction={self.direction})"
        )


@dataclass(frozen=True, eq=False, repr=False)
class LabelMap(Volume):
    """An integer label volume (0 = background) on a physical grid."""

    def _validate(self) -> None:
        if self.array.dtype.kind == "f":
            arr = self.array
            if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
                raise InvalidInputError(
                    "A label map must hold integer labels; this one has fractional or NaN values. "
                    "Threshold or round it first, or load it as an image."
                )
            converted = arr.astype(np.int32)
            converted.flags.writeable = False
            object.__setattr__(self, "array", converted)
        elif self.array.dtype.kind == "b":
            converted = self.array.astype(np.uint8)
            converted.flags.writeable = False
            object.__setattr__(self, "array", converted)
        if self.array.size and self.array.min() < 0:
            raise InvalidInputError("Label values must be >= 0 (0 is background).")

    def labels(self) -> list[int]:
        """Sorted non-zero label values present."""
        values = np.unique(self.array)
        return [int(v) for v in values if v != 0]

    def labels_text(self, limit: int = 12) -> str:
        """The labels present for an error message: all of them when few, else a range and a count (a label file
        that is really an image must not produce a message thousands of characters long)."""
        return describe_labels(self.labels(), limit)

    def mask(self, label: int | None = None) -> np.ndarray:
        """Boolean mask of one label value, or of every non-zero label when ``label`` is None."""
        if label is None:
            return self.array != 0
        if label not in self.labels():
            raise InvalidInputError(
                f"Label {label} is not present; this label map has labels {self.labels_text()}."
            )
        return self.array == label
