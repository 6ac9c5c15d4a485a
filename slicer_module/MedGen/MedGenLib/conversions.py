"""MRML nodes <-> napari-medgen `Volume` / `LabelMap`, with the geometry kept exactly.

Slicer places a volume with its IJK-to-RAS matrix (spacing, direction and origin in RAS); napari-medgen, like
SimpleITK, NRRD and DICOM, uses LPS. The two differ by a flip of the first two world axes, ``F = diag(-1, -1, 1)``:

* ``direction_LPS = F @ direction_RAS`` (columns = world directions of the i, j, k index axes),
* ``origin_LPS = F @ origin_RAS``; spacing is the same in both.

Voxels are copied (never shared) in numpy ``(z, y, x)`` order with their dtype unchanged, so a round trip node ->
`Volume` -> node is bit-exact. A linear parent transform is folded into the geometry (the `Volume` is in world
coordinates); a warping or non-rigid one is refused with the fix (harden it).

Only MRML / vtkSegmentationCore classes are used (no ``slicer.util``, ``slicer.app`` or Qt), so this runs headless on
the ``slicer-core`` package as well as inside Slicer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
#: segment tag holding the label value a segment stands for in a label map (kept across round trips)
LABEL_VALUE_TAG = "MedGen.LabelValue"
_ORTHONORMAL_TOLERANCE = 1e-6


def _slicer() -> Any:
    import slicer

    return slicer


def _vtk() -> Any:
    import vtk

    return vtk


def _errors() -> Any:
    from napari_medgen import errors

    return errors


def _matrix_to_numpy(matrix: Any) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def _numpy_to_matrix(array: np.ndarray) -> Any:
    matrix = _vtk().vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


# ---- geometry ------------------------------------------------------------------------------------------------
def ijk_to_ras_of(volume: Any) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a napari-medgen `Volume` (its LPS geometry flipped to RAS)."""
    lps = volume.index_to_physical_matrix()
    flip = np.eye(4)
    flip[:3, :3] = RAS_TO_LPS
    return flip @ lps


def geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray) -> dict[str, tuple[float, ...]]:
    """Spacing, LPS origin and LPS direction (row-major, SimpleITK order) of an IJK-to-RAS matrix.

    Raises `InvalidInputError` when the matrix has shear or is not invertible (e.g. a non-rigid transform was folded
    in): napari-medgen grids are orthonormal."""
    linear = np.asarray(ijk_to_ras, dtype=float)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(linear)):
        raise _errors().InvalidInputError("The volume's IJK-to-RAS matrix is degenerate (zero spacing); fix the "
                                          "volume's geometry in the Volumes module (Volume Information).")
    direction_ras = linear / spacing
    if not np.allclose(direction_ras.T @ direction_ras, np.eye(3), atol=_ORTHONORMAL_TOLERANCE):
        raise _errors().InvalidInputError(
            "The volume is sheared or non-uniformly scaled by a transform, which napari-medgen grids cannot hold. "
            "Harden the transform with resampling (Transforms module, or Resample Scalar/Vector/DWI Volume) first."
        )
    direction_lps = RAS_TO_LPS @ direction_ras
    origin_lps = RAS_TO_LPS @ np.asarray(ijk_to_ras, dtype=float)[:3, 3]
    return {
        "spacing": tuple(float(v) for v in spacing),
        "origin": tuple(float(v) for v in origin_lps),
        "direction": tuple(float(v) for v in direction_lps.reshape(-1)),
    }


def _parent_to_world(node: Any) -> np.ndarray:
    """4x4 matrix of the node's parent transform chain (identity when none); non-linear ones are refused."""
    parent = node.GetParentTransformNode() if hasattr(node, "GetParentTransformNode") else None
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise _errors().InvalidInputError(
            f"'{node.GetName()}' is under a non-linear transform ('{parent.GetName()}'). Harden the transform "
            "(Data module: right-click the node > Harden transform) before using it with MedGen."
        )
    matrix = _vtk().vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return _matrix_to_numpy(matrix)


def node_ijk_to_ras(node: Any, world: bool = True) -> np.ndarray:
    """IJK-to-RAS of a volume node (with its linear parent transforms when ``world``), for index 0 of its array."""
    matrix = _vtk().vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    local = _matrix_to_numpy(matrix)
    image = node.GetImageData()
    if image is not None:  # an image extent that does not start at 0 shifts the array's first voxel
        start = np.array(image.GetExtent()[::2], dtype=float)
        if np.any(start != 0):
            local[:3, 3] = local[:3, :3] @ start + local[:3, 3]
    return _parent_to_world(node) @ local if world else local


# ---- volume nodes --------------------------------------------------------------------------------------------
def _array_of_image(image: Any, name: str) -> np.ndarray:
    from vtkmodules.util import numpy_support

    errors = _errors()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise errors.InvalidInputError(f"'{name}' holds no image data; load or create a volume first.")
    scalars = image.GetPointData().GetScalars()
    if scalars.GetNumberOfComponents() != 1:
        raise errors.DimensionError(
            f"'{name}' has {scalars.GetNumberOfComponents()} components per voxel (a vector or colour volume); "
            "MedGen needs a scalar volume. Extract one component first (Vector to Scalar Volume module)."
        )
    nx, ny, nz = image.GetDimensions()
    return numpy_support.vtk_to_numpy(scalars).reshape(nz, ny, nx).copy()


def _node_geometry(node: Any) -> dict[str, tuple[float, ...]]:
    """LPS geometry of a volume node in world coordinates. Without a parent transform (and with an extent starting
    at 0) spacing, origin and directions are read as stored, so only signs change and round trips are bit-exact."""
    image = node.GetImageData()
    shifted = image is not None and any(v != 0 for v in image.GetExtent()[::2])
    parent = node.GetParentTransformNode() if hasattr(node, "GetParentTransformNode") else None
    if shifted or parent is not None:
        return geometry_from_ijk_to_ras(node_ijk_to_ras(node))
    directions = [[0.0] * 3 for _ in range(3)]
    node.GetIJKToRASDirections(directions)
    direction_ras = np.array(directions, dtype=float)
    spacing = tuple(float(v) for v in node.GetSpacing())
    if min(spacing) <= 0:
        raise _errors().InvalidInputError(f"'{node.GetName()}' has a zero or negative spacing {spacing}; fix it in "
                                          "the Volumes module (Volume Information).")
    return {
        "spacing": spacing,
        "origin": tuple(float(v) for v in RAS_TO_LPS @ np.array(node.GetOrigin(), dtype=float)),
        "direction": tuple(float(v) for v in (RAS_TO_LPS @ direction_ras).reshape(-1)),
    }


def volume_from_node(node: Any, *, labels: bool | None = None) -> Any:
    """A `Volume` (or `LabelMap`: for label map nodes, or ``labels=True``) with the node's voxels and world geometry."""
    from napari_medgen.core.volume import LabelMap, Volume

    errors = _errors()
    if node is None:
        raise errors.InvalidInputError("No volume is selected; choose an input volume first.")
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise errors.InvalidInputError(f"'{node.GetName()}' is a {node.GetClassName()}, not a scalar volume.")
    array = _array_of_image(node.GetImageData(), node.GetName())
    as_labels = node.IsA("vtkMRMLLabelMapVolumeNode") if labels is None else labels
    cls = LabelMap if as_labels else Volume
    return cls(array, metadata={"slicer_node": node.GetName()}, **_node_geometry(node))


def _image_data(array: np.ndarray) -> Any:
    from vtkmodules.util import numpy_support

    arr = np.ascontiguousarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    image = _vtk().vtkImageData()
    nz, ny, nx = arr.shape
    image.SetDimensions(nx, ny, nz)
    scalars = numpy_support.numpy_to_vtk(arr.reshape(-1), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


def set_node_geometry(node: Any, volume: Any) -> None:
    """Place ``node`` on ``volume``'s grid: spacing as is, origin and directions flipped from LPS to RAS (set one by
    one, not through a composed matrix, so nothing is rounded)."""
    direction_ras = RAS_TO_LPS @ volume.direction_matrix
    node.SetSpacing(*volume.spacing)
    node.SetOrigin(*(float(v) for v in RAS_TO_LPS @ np.asarray(volume.origin, dtype=float)))
    node.SetIJKToRASDirections([[float(v) for v in row] for row in direction_ras])


def node_from_volume(volume: Any, name: str, *, labels: bool | None = None) -> Any:
    """A new scalar (or label map: for a `LabelMap`, or ``labels=True``) volume node holding a copy of ``volume``.

    The node is not added to any scene: callers add every result together, so a failure adds nothing."""
    from napari_medgen.core.volume import LabelMap

    slicer = _slicer()
    as_labels = isinstance(volume, LabelMap) if labels is None else labels
    node = slicer.vtkMRMLLabelMapVolumeNode() if as_labels else slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    node.SetAndObserveImageData(_image_data(np.asarray(volume.array)))
    set_node_geometry(node, volume)
    return node


# ---- segmentation nodes --------------------------------------------------------------------------------------
def _reference_image(node: Any) -> Any:
    """An empty oriented image with ``node``'s (local) grid: what segments are resampled onto."""
    slicer = _slicer()
    image = node.GetImageData()
    if image is None:
        raise _errors().InvalidInputError(f"'{node.GetName()}' holds no image data.")
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(image.GetExtent())
    matrix = _vtk().vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    reference.SetImageToWorldMatrix(matrix)
    return reference


def segment_ids(segmentation_node: Any) -> list[str]:
    """IDs of every segment, in the segmentation's order."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def _tag(segment: Any) -> str | None:
    """The MedGen label-value tag of ``segment`` (VTK's wrapping fills a `vtk.reference` for the string)."""
    holder = _vtk().reference("")
    if not segment.GetTag(LABEL_VALUE_TAG, holder):
        return None
    return str(holder)


def segment_label_values(segmentation_node: Any, ids: Sequence[str]) -> list[int]:
    """The label value each chosen segment stands for in a label map.

    Per segment: its MedGen tag (set when MedGen made it). Segments without one take Slicer's own label value (what a
    ``.seg.nrrd`` or an imported label map stored) when those are distinct among the untagged chosen segments, else
    their position in the segmentation (1, 2, ...): segments painted on separate layers all have label value 1."""
    segmentation = segmentation_node.GetSegmentation()
    order = segment_ids(segmentation_node)
    tags: list[int | None] = []
    for segment_id in ids:
        text = _tag(segmentation.GetSegment(segment_id))
        try:
            tags.append(int(text) if text is not None else None)
        except ValueError:
            tags.append(None)
    untagged = [i for i, t in enumerate(tags) if t is None]
    own = [int(segmentation.GetSegment(ids[i]).GetLabelValue()) for i in untagged]
    use_own = len(set(own)) == len(own) and all(v >= 1 for v in own)
    values = list(tags)
    for k, i in enumerate(untagged):
        values[i] = own[k] if use_own else order.index(ids[i]) + 1
    return [int(v) for v in values]  # type: ignore[arg-type]


def _same_transform(a: Any, b: Any) -> bool:
    pa = a.GetParentTransformNode() if hasattr(a, "GetParentTransformNode") else None
    pb = b.GetParentTransformNode() if hasattr(b, "GetParentTransformNode") else None
    return (pa is None and pb is None) or (pa is not None and pb is not None and pa.GetID() == pb.GetID())


def segment_masks(segmentation_node: Any, reference_node: Any, ids: Sequence[str] | None = None) -> list[
        tuple[str, str, int, np.ndarray]]:
    """(segment id, name, label value, boolean mask on the reference grid) of each chosen segment (all by default).

    Segments are resampled (nearest) onto ``reference_node``'s grid, so they may be stored on any grid."""
    slicer = _slicer()
    errors = _errors()
    if segmentation_node is None:
        raise errors.InvalidInputError("No segmentation is selected; choose a segmentation with the tumour segment.")
    if not _same_transform(segmentation_node, reference_node):
        raise errors.InvalidInputError(
            f"'{segmentation_node.GetName()}' and '{reference_node.GetName()}' are under different transforms; "
            "harden the transforms (Data module: right-click > Harden transform) or put both under the same one.")
    all_ids = segment_ids(segmentation_node)
    chosen = list(all_ids if ids is None else ids)
    if not chosen:
        raise errors.InvalidInputError(f"'{segmentation_node.GetName()}' has no segment selected; select at least "
                                       "one segment.")
    reference = _reference_image(reference_node)
    dims = reference.GetDimensions()
    segmentation = segmentation_node.GetSegmentation()
    for segment_id in chosen:
        if segment_id not in all_ids:
            raise errors.InvalidInputError(f"Segment '{segment_id}' is not in '{segmentation_node.GetName()}'.")
    values = segment_label_values(segmentation_node, chosen)
    out = []
    for segment_id, value in zip(chosen, values, strict=True):
        segment = segmentation.GetSegment(segment_id)
        labelmap = slicer.vtkOrientedImageData()
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        # local frame (no parent transform applied): the reference grid is the volume's local one, and both nodes
        # are under the same transform (checked above)
        if not logic.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id, labelmap, False):
            raise errors.InvalidInputError(
                f"Segment '{segment.GetName()}' has no binary labelmap; convert the segmentation to a binary labelmap "
                "(Segmentations module: Representations) first.")
        mask = np.zeros((dims[2], dims[1], dims[0]), dtype=bool)
        if labelmap.GetPointData() is not None and labelmap.GetPointData().GetScalars() is not None and \
                min(labelmap.GetDimensions()) > 0 and not _extent_empty(labelmap.GetExtent()):
            resampled = slicer.vtkOrientedImageData()
            slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                labelmap, reference, resampled, False, True)
            # segments may share one labelmap layer: the segment is the voxels holding its layer value
            mask = _crop_to_reference(resampled, reference, int(segment.GetLabelValue()))
        out.append((segment_id, segment.GetName(), int(value), mask))
    return out


def _extent_empty(extent: Sequence[int]) -> bool:
    return extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]


def _crop_to_reference(image: Any, reference: Any, layer_value: int) -> np.ndarray:
    """Where ``image`` (on ``reference``'s lattice, any extent) holds ``layer_value``, as a boolean array over exactly
    ``reference``'s extent."""
    from vtkmodules.util import numpy_support

    ref = reference.GetExtent()
    dims = reference.GetDimensions()
    out = np.zeros((dims[2], dims[1], dims[0]), dtype=bool)
    ext = image.GetExtent()
    if _extent_empty(ext) or image.GetPointData().GetScalars() is None:
        return out
    nx, ny, nz = image.GetDimensions()
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nz, ny, nx) == layer_value
    lo = [max(ext[2 * a], ref[2 * a]) for a in range(3)]
    hi = [min(ext[2 * a + 1], ref[2 * a + 1]) for a in range(3)]
    if any(h < low for low, h in zip(lo, hi, strict=True)):
        return out
    src = tuple(slice(lo[a] - ext[2 * a], hi[a] - ext[2 * a] + 1) for a in (2, 1, 0))
    dst = tuple(slice(lo[a] - ref[2 * a], hi[a] - ref[2 * a] + 1) for a in (2, 1, 0))
    out[dst] = values[src]
    return out


def labels_from_segmentation(segmentation_node: Any, reference_node: Any, ids: Sequence[str] | None = None,
                             *, require_nonempty: bool = True) -> tuple[Any, dict[int, str]]:
    """A `LabelMap` on the reference volume's (world) grid from the chosen segments, and label value -> segment name.

    Each segment becomes its label value (`segment_label_values`); where segments overlap, the later one in the
    list wins. An empty chosen segment raises `InvalidInputError` when ``require_nonempty``."""
    from napari_medgen.core.volume import LabelMap

    errors = _errors()
    if reference_node is None:
        raise errors.InvalidInputError("No volume is selected; choose the volume the segmentation belongs to.")
    masks = segment_masks(segmentation_node, reference_node, ids)
    values = [value for _, _, value, _ in masks]
    dtype = np.uint8 if max(values, default=0) < 256 else np.int32
    dims = masks[0][3].shape
    array = np.zeros(dims, dtype=dtype)
    names: dict[int, str] = {}
    for _, name, value, mask in masks:
        if require_nonempty and not mask.any():
            raise errors.InvalidInputError(
                f"Segment '{name}' is empty inside '{reference_node.GetName()}'; paint it in the Segment Editor or "
                "choose another segment.")
        if value < 1:
            raise errors.InvalidInputError(f"Segment '{name}' has label value {value}; label values must be >= 1.")
        array[mask] = value
        names[value] = name
    geometry = geometry_from_ijk_to_ras(node_ijk_to_ras(reference_node))
    return LabelMap(array, metadata={"segment_names": dict(names)}, **geometry), names


def _oriented_mask(mask: np.ndarray, ijk_to_ras: np.ndarray) -> Any:
    slicer = _slicer()
    image = slicer.vtkOrientedImageData()
    image.ShallowCopy(_image_data(mask.astype(np.uint8)))
    image.SetImageToWorldMatrix(_numpy_to_matrix(ijk_to_ras))
    return image


def segmentation_from_labels(labels: Any, name: str, names: Mapping[int, str] | None = None,
                             colors: Mapping[int, Sequence[float]] | None = None) -> Any:
    """A new segmentation node with one segment per non-zero label value of ``labels`` (not added to a scene).

    Segments are named from ``names`` (else "Label <v>") and carry their label value (tag and Slicer label value),
    so `labels_from_segmentation` gives the same label map back."""
    slicer = _slicer()
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(name)
    ijk_to_ras = ijk_to_ras_of(labels)
    reference = _oriented_mask(np.zeros(labels.shape, dtype=np.uint8), ijk_to_ras)
    converter = slicer.vtkSegmentationConverter
    node.GetSegmentation().SetConversionParameter(converter.GetReferenceImageGeometryParameterName(),
                                                  converter.SerializeImageGeometry(reference))
    array = np.asarray(labels.array)
    for value in labels.labels():
        segment_name = (names or {}).get(int(value), f"Label {value}")
        segment_id = node.GetSegmentation().AddEmptySegment("", segment_name)
        segment = node.GetSegmentation().GetSegment(segment_id)
        segment.SetTag(LABEL_VALUE_TAG, str(int(value)))
        segment.SetLabelValue(int(value))
        if colors and int(value) in colors:
            segment.SetColor(*[float(c) for c in colors[int(value)]][:3])
        ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            _oriented_mask(array == value, ijk_to_ras), node, segment_id,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        if not ok:
            raise _errors().MedGenError(f"Could not store label {value} in segment '{segment_name}'.")
    return node


__all__ = [
    "LABEL_VALUE_TAG",
    "RAS_TO_LPS",
    "geometry_from_ijk_to_ras",
    "ijk_to_ras_of",
    "labels_from_segmentation",
    "node_from_volume",
    "node_ijk_to_ras",
    "segment_ids",
    "segment_label_values",
    "segment_masks",
    "segmentation_from_labels",
    "set_node_geometry",
    "volume_from_node",
]
