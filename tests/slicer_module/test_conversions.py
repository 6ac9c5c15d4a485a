"""MRML node <-> `Volume` / `LabelMap` conversions: exact round trips, and agreement with Slicer's own readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import read_with_slicer, sphere
from MedGenLib import conversions

from napari_medgen.core import io
from napari_medgen.core.geometry import right_handed
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import DimensionError, InvalidInputError

OBLIQUE_FLIPPED = tuple(float(v) for v in (
    np.array([[0.8660254037844387, -0.5, 0.0], [0.5, 0.8660254037844387, 0.0], [0.0, 0.0, 1.0]])
    @ np.diag([1.0, -1.0, 1.0])
    @ np.array([[1.0, 0.0, 0.0], [0.0, 0.9396926207859084, -0.3420201433256687],
                [0.0, 0.3420201433256687, 0.9396926207859084]])
).reshape(-1))


def assert_same(a: Volume, b: Volume, exact: bool = True) -> None:
    assert a.shape == b.shape
    assert a.array.dtype == b.array.dtype
    np.testing.assert_array_equal(a.array, b.array)
    tol = 0 if exact else 1e-6
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=0, atol=tol)
    np.testing.assert_allclose(a.origin, b.origin, rtol=0, atol=max(tol, 1e-12))
    np.testing.assert_allclose(a.direction, b.direction, rtol=0, atol=max(tol, 1e-12))


def round_trip(volume: Volume, scene) -> tuple[Volume, object]:
    node = conversions.node_from_volume(volume, "x")
    scene.AddNode(node)
    return conversions.volume_from_node(node), node


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64, np.int32, np.uint16])
def test_oblique_flipped_grid_round_trip_is_exact(scene, dtype) -> None:
    rng = np.random.default_rng(1)
    arr = (rng.normal(100, 30, size=(7, 11, 13))).astype(dtype)
    vol = Volume(arr, spacing=(0.7, 1.3, 2.9), origin=(-12.5, 33.25, 7.0), direction=OBLIQUE_FLIPPED)
    back, node = round_trip(vol, scene)
    assert_same(vol, back)
    assert type(back) is Volume and node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")


def test_ras_is_lps_flipped(scene) -> None:
    """Index (i, j, k) lands at LPS point p in napari-medgen and at RAS (-p_x, -p_y, p_z) in Slicer."""
    vol = Volume(np.zeros((7, 11, 13), np.int16), spacing=(0.7, 1.3, 2.9), origin=(-12.5, 33.25, 7.0),
                 direction=OBLIQUE_FLIPPED)
    node = conversions.node_from_volume(vol, "grid")
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    for ijk in ([0, 0, 0], [3, 7, 2], [12, 10, 6]):
        ras = matrix.MultiplyPoint([*map(float, ijk), 1.0])[:3]
        lps = vol.index_to_physical_matrix() @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(ras, [-lps[0], -lps[1], lps[2]], atol=1e-9)


def test_labelmap_node_round_trip_and_type(scene) -> None:
    arr = np.zeros((6, 9, 8), np.uint8)
    arr[1:4, 2:6, 3:7] = 2
    arr[2, 3, 4] = 7
    labels = LabelMap(arr, spacing=(1.5, 0.5, 2.0), origin=(3.0, -4.0, 5.0), direction=OBLIQUE_FLIPPED)
    back, node = round_trip(labels, scene)
    assert node.IsA("vtkMRMLLabelMapVolumeNode") and isinstance(back, LabelMap)
    assert_same(labels, back)


def test_linear_parent_transform_is_folded_into_the_geometry(scene) -> None:
    import slicer
    import vtk

    vol = Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), spacing=(1.0, 2.0, 3.0))
    node = conversions.node_from_volume(vol, "moved")
    scene.AddNode(node)
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 10.0)  # 10 mm to the Right = -10 in LPS x
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = conversions.volume_from_node(node)
    np.testing.assert_allclose(moved.origin, (-10.0, 0.0, 0.0))
    matrix.SetElement(0, 1, 0.5)  # a shearing transform cannot be an orthonormal grid
    transform.SetMatrixTransformToParent(matrix)
    with pytest.raises(InvalidInputError, match="Harden the transform"):
        conversions.volume_from_node(node)


def test_bad_nodes_raise_clear_errors(scene) -> None:
    import slicer
    import vtk

    with pytest.raises(InvalidInputError, match="No volume is selected"):
        conversions.volume_from_node(None)
    empty = slicer.vtkMRMLScalarVolumeNode()
    empty.SetName("empty")
    with pytest.raises(InvalidInputError, match="no image data"):
        conversions.volume_from_node(empty)
    rgb = slicer.vtkMRMLVectorVolumeNode()
    image = vtk.vtkImageData()
    image.SetDimensions(4, 4, 4)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    rgb.SetAndObserveImageData(image)
    rgb.SetName("rgb")
    with pytest.raises(DimensionError, match="3 components"):
        conversions.volume_from_node(rgb)


# ---- real scans: Slicer's reader and napari-medgen's agree, and the round trips are exact -----------------------
REAL_IMAGES = [
    ("pyradiomics/data/brain1_image.nrrd", "pyradiomics/data/brain1_label.nrrd"),
    ("brats2015_subset/brats_2013_pat0001_1/T1c_subtrMeanDivStd.nii.gz",
     "brats2015_subset/brats_2013_pat0001_1/OTMultiClass.nii.gz"),
    ("pyradiomics/data/lung2_image.nrrd", "pyradiomics/data/lung2_label.nrrd"),
]


@pytest.mark.realdata
@pytest.mark.parametrize(("image", "label"), REAL_IMAGES, ids=["brain1-nrrd", "brats-nifti", "lung2-nrrd"])
def test_real_scans_slicer_reader_matches_and_round_trips(scene, shared_data: Path, image: str, label: str) -> None:
    path = shared_data / image
    node = read_with_slicer(scene, path)
    from_slicer = conversions.volume_from_node(node)
    ours = io.read_volume(path)
    # Slicer's reader (RAS) and ours (LPS) place every voxel at the same point; Slicer makes left-handed grids
    # right-handed on reading (as DICOM does), so compare both on the right-handed grid
    assert_same(right_handed(from_slicer), right_handed(ours), exact=False)
    back = conversions.volume_from_node(conversions.node_from_volume(from_slicer, "copy"))
    assert_same(from_slicer, back)  # and node -> Volume -> node -> Volume is exact

    labels = io.read_labels(shared_data / label, reference=ours)
    labels = LabelMap(right_handed(labels).array, from_slicer.spacing, from_slicer.origin, from_slicer.direction)
    seg = conversions.segmentation_from_labels(labels, "seg")
    scene.AddNode(seg)
    assert seg.GetSegmentation().GetNumberOfSegments() == len(labels.labels())
    again, names = conversions.labels_from_segmentation(seg, node)
    np.testing.assert_array_equal(again.array, labels.array)
    assert sorted(names) == labels.labels()
    np.testing.assert_allclose(again.origin, labels.origin, atol=1e-6)
    # the label map read by Slicer as a label map node agrees too
    label_node = read_with_slicer(scene, shared_data / label, labels=True)
    from_slicer_labels = conversions.volume_from_node(label_node)
    assert isinstance(from_slicer_labels, LabelMap)
    np.testing.assert_array_equal(from_slicer_labels.array, labels.array)


@pytest.mark.realdata
def test_seg_nrrd_read_by_slicer_exports_to_the_same_labels(scene, shared_data: Path, tmp_path: Path) -> None:
    """A .seg.nrrd written by napari-medgen and read by Slicer's segmentation reader gives the same label map."""
    import slicer

    case = shared_data / "brats2015_subset" / "brats_2013_pat0002_1"
    image = io.read_volume(case / "T1c_subtrMeanDivStd.nii.gz")
    labels = io.read_labels(case / "OTMultiClass.nii.gz", reference=image)
    io.write_volume(labels, tmp_path / "tumour.seg.nrrd")
    node = read_with_slicer(scene, case / "T1c_subtrMeanDivStd.nii.gz")
    seg = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(seg)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "tumour.seg.nrrd"))
    assert storage.ReadData(seg)
    assert seg.GetSegmentation().GetNumberOfSegments() == len(labels.labels())
    exported, _ = conversions.labels_from_segmentation(seg, node)
    np.testing.assert_array_equal(exported.array, right_handed(labels).array)


@pytest.mark.realdata
def test_dicom_derived_volume_round_trips(scene, shared_data: Path) -> None:
    folder = shared_data / "totalsegmentator" / "example_ct_dicom"
    if not folder.is_dir():
        pytest.skip(f"no DICOM series at {folder}")
    vol = io.read_volume(folder)
    back, node = round_trip(vol, scene)
    assert_same(vol, back)
    assert back.shape[0] == 20
    # Slicer's own reader of the series (ITK archetype reader over the file list) places it identically
    import slicer

    files = sorted(p for p in folder.iterdir() if p.is_file())
    from_slicer = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(from_slicer)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(files[0]))
    for path in files:
        storage.AddFileName(str(path))
    from_slicer.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(from_slicer)
    assert_same(right_handed(conversions.volume_from_node(from_slicer)), right_handed(vol), exact=False)


def test_multi_segment_segmentation_round_trip_with_segment_editor_values(scene) -> None:
    """Segments painted on separate layers (all label value 1) get 1, 2, 3 by order; MedGen's tags win."""
    import slicer

    vol = Volume(np.zeros((20, 24, 22), np.int16), spacing=(1.0, 1.2, 2.0), origin=(5.0, 6.0, -7.0),
                 direction=OBLIQUE_FLIPPED)
    node = conversions.node_from_volume(vol, "ref")
    scene.AddNode(node)
    seg = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(seg)
    masks = [sphere(vol.shape, (6, 8, 8), 3), sphere(vol.shape, (12, 14, 12), 4), sphere(vol.shape, (10, 5, 16), 2)]
    ijk_to_ras = conversions.ijk_to_ras_of(vol)
    for k, mask in enumerate(masks):
        sid = seg.GetSegmentation().AddEmptySegment("", f"seg{k}")
        image = conversions._oriented_mask(mask, ijk_to_ras)
        assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, seg, sid, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    labels, names = conversions.labels_from_segmentation(seg, node)
    expected = np.zeros(vol.shape, np.uint8)
    for k, mask in enumerate(masks):
        expected[mask] = k + 1
    assert set(np.unique(labels.array)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(labels.array, expected)
    assert names == {1: "seg0", 2: "seg1", 3: "seg2"}
    # subset of segments, and the grid of the labels is the reference volume's
    sub, _ = conversions.labels_from_segmentation(seg, node, [conversions.segment_ids(seg)[1]])
    assert sub.labels() == [2] and vol.same_grid(sub)
    # labels -> segmentation -> labels with arbitrary values (BraTS 1, 2, 4) keeps the values
    brats = LabelMap(np.where(expected == 3, 4, expected).astype(np.uint8), vol.spacing, vol.origin, vol.direction)
    seg2 = conversions.segmentation_from_labels(brats, "brats", {1: "necrotic core", 2: "edema", 4: "enhancing"})
    scene.AddNode(seg2)
    back, names2 = conversions.labels_from_segmentation(seg2, node)
    np.testing.assert_array_equal(back.array, brats.array)
    assert names2 == {1: "necrotic core", 2: "edema", 4: "enhancing"}


def test_empty_segment_and_missing_inputs_raise(scene) -> None:
    import slicer

    vol = Volume(np.zeros((8, 8, 8), np.int16))
    node = conversions.node_from_volume(vol, "ref")
    scene.AddNode(node)
    seg = slicer.vtkMRMLSegmentationNode()
    seg.SetName("tumour seg")
    scene.AddNode(seg)
    seg.GetSegmentation().AddEmptySegment("", "nothing")
    with pytest.raises(InvalidInputError, match="Segment 'nothing' is empty"):
        conversions.labels_from_segmentation(seg, node)
    with pytest.raises(InvalidInputError, match="No segmentation is selected"):
        conversions.labels_from_segmentation(None, node)
    with pytest.raises(InvalidInputError, match="No volume is selected"):
        conversions.labels_from_segmentation(seg, None)
    with pytest.raises(InvalidInputError, match="no segment selected"):
        conversions.labels_from_segmentation(seg, node, [])


def test_segmentation_under_the_volume_transform_exports_in_world_geometry(scene) -> None:
    import slicer
    import vtk

    vol = Volume(np.zeros((12, 14, 16), np.int16), spacing=(1.0, 1.5, 2.0), origin=(1.0, 2.0, 3.0),
                 direction=OBLIQUE_FLIPPED)
    node = conversions.node_from_volume(vol, "ref")
    scene.AddNode(node)
    mask = sphere(vol.shape, (6, 7, 8), 3)
    seg = conversions.segmentation_from_labels(vol.as_labels(mask.astype(np.uint8)), "seg")
    scene.AddNode(seg)
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(2, 3, 5.0)  # 5 mm superior
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(InvalidInputError, match="different transforms"):
        conversions.labels_from_segmentation(seg, node)
    seg.SetAndObserveTransformNodeID(transform.GetID())
    labels, _ = conversions.labels_from_segmentation(seg, node)
    np.testing.assert_array_equal(labels.array > 0, mask)  # same voxels ...
    np.testing.assert_allclose(labels.origin, (1.0, 2.0, 8.0), atol=1e-9)  # ... in world (LPS) geometry
