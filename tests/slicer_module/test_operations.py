"""The MedGen operations end to end on a headless scene: the worker runs the bundled models in a subprocess, streams
progress, and its results come back as nodes on the source grid; Cancel and failures leave the scene unchanged."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import read_with_slicer, scene_snapshot, sphere
from MedGenLib import conversions, operations
from MedGenLib.jobs import JobState
from MedGenLib.operations import Selection

from napari_medgen.core import io
from napari_medgen.core.geometry import crop_around, index_to_physical, right_handed
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import DimensionError, InvalidInputError

TIMEOUT = 240


def job_folders() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("medgen-job-")}


@pytest.fixture
def brats_crop(scene, shared_data: Path):
    """A 48 x 64 x 64 crop of a real BRATS T1c scan around its tumour, as a volume node and a segmentation node
    (BraTS labels 1, 2, 3, 4 as four segments)."""
    case = shared_data / "brats2015_subset" / "brats_2013_pat0001_1"
    image = io.read_volume(case / "T1c_subtrMeanDivStd.nii.gz")
    labels = io.read_labels(case / "OTMultiClass.nii.gz", reference=image)
    centre = index_to_physical(image, np.argwhere(np.asarray(labels.array) == 4).mean(axis=0))
    crop = crop_around(image, centre, (48, 64, 64)).volume
    crop_labels = LabelMap(crop_around(labels, centre, (48, 64, 64)).volume.array, crop.spacing, crop.origin,
                           crop.direction)
    node = conversions.node_from_volume(crop, "brats crop")
    scene.AddNode(node)
    seg = conversions.segmentation_from_labels(crop_labels, "brats tumour", operations.BRATS_NAMES)
    scene.AddNode(seg)
    return node, seg, crop, crop_labels


def segment_id(seg, name: str) -> str:
    for sid in conversions.segment_ids(seg):
        if seg.GetSegmentation().GetSegment(sid).GetName() == name:
            return sid
    raise AssertionError(f"no segment {name}")


def run_op(scene, operation, selection, options=None, **kwargs):
    events = []
    run = operations.start_operation(scene, operation, selection, options or {}, on_progress=events.append, **kwargs)
    state = run.wait(TIMEOUT)
    return run, state, events


@pytest.mark.realdata
def test_radiomics_table_matches_the_backend_and_exports_csv(scene, shared_data: Path, tmp_path: Path) -> None:
    from napari_medgen.pipelines.radiomics_extraction import extract_features

    folder = shared_data / "pyradiomics" / "data"
    node = read_with_slicer(scene, folder / "brain1_image.nrrd")
    image = conversions.volume_from_node(node)
    labels = right_handed(io.read_labels(folder / "brain1_label.nrrd"))
    labels = LabelMap(labels.array, image.spacing, image.origin, image.direction)
    seg = conversions.segmentation_from_labels(labels, "lesion", {1: "lesion"})
    scene.AddNode(seg)
    before = scene.GetNumberOfNodes()
    run, state, events = run_op(scene, "radiomics", Selection(node, seg))
    assert state is JobState.DONE, run.error
    assert [e.step for e in events] == list(range(1, 8)) and events[-1].total == 7
    (table,) = run.nodes
    assert table.IsA("vtkMRMLTableNode") and table.GetName() == "brain1_image MedGen radiomics"
    assert scene.GetNumberOfNodes() == before + 1
    expected = extract_features(image, labels, 1).features  # the backend on the very voxels the scene holds
    assert table.GetNumberOfRows() == len(expected)
    assert table.GetColumnName(1) == "lesion"
    values = table.GetTable().GetColumn(1)
    got = {table.GetCellText(r, 0): values.GetValue(r) for r in range(table.GetNumberOfRows())}
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-12, nan_ok=True), name
    assert got["original_shape_VoxelVolume"] == pytest.approx(16412.6, rel=1e-3)  # pyradiomics' baseline value
    out = operations.export_table_csv(table, tmp_path / "features.csv")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0].replace('"', "") == "Feature,lesion" and len(lines) == len(expected) + 1
    assert not run.folder.exists()


@pytest.mark.realdata
def test_remove_tumour_gives_a_new_volume_on_the_source_grid(scene, brats_crop) -> None:
    node, seg, crop, crop_labels = brats_crop
    necrotic = segment_id(seg, "necrotic core")
    run, state, events = run_op(scene, "remove", Selection(node, seg, [necrotic]), {"seed": 0}, device="cpu")
    assert state is JobState.DONE, run.error
    assert events, "no progress was streamed"
    (volume_node,) = run.nodes  # the edited scan; every selected label was removed, so no segmentation is left
    assert volume_node.GetName() == "brats crop MedGen remove"
    result = conversions.volume_from_node(volume_node)
    assert result.same_grid(crop, tol=0) and result.array.dtype == crop.array.dtype
    tumour = np.asarray(crop_labels.array) == 1
    assert not np.allclose(result.array[tumour], crop.array[tumour])
    far = ~(conversions.labels_from_segmentation(seg, node, [necrotic])[0].array > 0)
    from scipy import ndimage

    far = ~ndimage.binary_dilation(~far, iterations=6)
    np.testing.assert_array_equal(result.array[far], crop.array[far])  # untouched away from the tumour


@pytest.mark.realdata
def test_synthesize_at_a_markup_point_then_retexture_resize_and_move(scene, brats_crop) -> None:
    import slicer
    import vtk

    node, seg, crop, _ = brats_crop
    point = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(point)
    lps = index_to_physical(crop, (24, 32, 32))
    point.AddControlPoint(vtk.vtkVector3d(-lps[0], -lps[1], lps[2]))
    ras = operations.markup_point_ras(point)
    run, state, _ = run_op(scene, "synthesize", Selection(node, point_ras=ras),
                           {"features": {"VoxelVolume": 1500.0}, "seed": 1}, device="cpu")
    assert state is JobState.DONE, run.error
    synth_node, synth_seg = run.nodes
    labels, names = conversions.labels_from_segmentation(synth_seg, synth_node)
    assert set(names.values()) <= set(operations.BRATS_NAMES.values())
    centroid = index_to_physical(labels, np.argwhere(labels.array > 0).mean(axis=0))
    assert np.linalg.norm(centroid - lps) < 8.0  # the tumour sits at the markup point (LPS <-> RAS right)
    for operation, options in (("retexture", {"texture": {"enhancing/mean": 0.95}}), ("resize", {"scale": 1.2}),
                               ("move", {})):
        selection = Selection(synth_node, synth_seg, point_ras=(ras[0] + 3.0, ras[1], ras[2]))
        run, state, _ = run_op(scene, operation, selection, options, device="cpu")
        assert state is JobState.DONE, (operation, run.error)
        assert run.nodes[0].GetName() == f"brats crop MedGen synthesize MedGen {operation}"
        assert conversions.volume_from_node(run.nodes[0]).same_grid(crop, tol=0)


def test_tumour_shape_lands_at_the_markup_point_on_an_oblique_grid(scene) -> None:
    vol = Volume(np.zeros((40, 44, 42), np.int16), spacing=(1.0, 1.0, 1.0), origin=(10.0, -20.0, 30.0),
                 direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    node = conversions.node_from_volume(vol, "grid")
    scene.AddNode(node)
    lps = index_to_physical(vol, (20, 22, 21))
    ras = (-lps[0], -lps[1], lps[2])
    run, state, events = run_op(scene, "shape", Selection(node, point_ras=ras),
                                {"features": {"VoxelVolume": 3000.0}, "candidates": 2, "seed": 3}, device="cpu")
    assert state is JobState.DONE, run.error
    assert {e.stage for e in events} == {"generating shape"}
    (seg,) = run.nodes
    assert seg.GetName() == "grid MedGen shape segmentation"
    labels, _ = conversions.labels_from_segmentation(seg, node)
    voxels = np.argwhere(labels.array > 0)
    assert 1500 < len(voxels) < 6000
    assert np.linalg.norm(index_to_physical(vol, voxels.mean(axis=0)) - lps) < 3.0


def test_generate_from_segmentation_and_paired_generation(scene) -> None:
    vol = Volume(np.zeros((3, 40, 36), np.float32), spacing=(1.0, 1.0, 2.0), origin=(1.0, 2.0, 3.0))
    node = conversions.node_from_volume(vol, "slices")
    scene.AddNode(node)
    arr = np.zeros(vol.shape, np.uint8)
    arr[:, 5:35, 4:32] = 5  # brain
    arr[1, 15:25, 12:22] = 4  # enhancing tumour on one slice
    seg = conversions.segmentation_from_labels(LabelMap(arr, vol.spacing, vol.origin, vol.direction), "labels")
    scene.AddNode(seg)
    run, state, events = run_op(scene, "seg2img", Selection(node, seg), {"steps": 2, "seed": 0}, device="cpu")
    assert state is JobState.DONE, run.error
    assert events[-1].step == events[-1].total
    (image_node,) = run.nodes
    image = conversions.volume_from_node(image_node)
    assert image.same_grid(vol, tol=0) and image.array.std() > 0

    run, state, _ = run_op(scene, "paired", Selection(), {"n": 2, "steps": 2, "seed": 0}, device="cpu")
    assert state is JobState.DONE, run.error
    image_node, seg_node = run.nodes
    assert image_node.GetName() == "MedGen paired" and conversions.volume_from_node(image_node).shape[0] == 2


def test_cancel_stops_the_worker_and_leaves_the_scene_unchanged(scene) -> None:
    before = scene_snapshot(scene)
    folders = job_folders()
    events = []
    run = operations.start_operation(scene, "paired", Selection(), {"n": 16, "steps": 400, "seed": 0},
                                     device="cpu", on_progress=events.append)
    pid = run.runner._process.pid
    import time

    deadline = time.monotonic() + TIMEOUT
    while not [e for e in events if e.step > 0] and time.monotonic() < deadline:
        assert run.poll() is JobState.RUNNING
        time.sleep(0.05)
    assert events, "the worker sent no progress before the deadline"
    run.cancel()
    assert run.state is JobState.CANCELLED and "Cancelled" in run.error
    assert run.poll() is JobState.CANCELLED and not run.nodes
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert scene_snapshot(scene) == before
    assert job_folders() == folders


def test_failing_job_reports_the_backend_message_and_changes_nothing(scene) -> None:
    vol = Volume(np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32), spacing=(0.8, 0.8, 3.0))
    node = conversions.node_from_volume(vol, "anisotropic")
    scene.AddNode(node)
    seg = conversions.segmentation_from_labels(vol.as_labels(sphere(vol.shape, (10, 10, 10), 4).astype(np.uint8)), "t")
    scene.AddNode(seg)
    before = scene_snapshot(scene)
    folders = job_folders()
    run, state, _ = run_op(scene, "remove", Selection(node, seg), {"model": "bridge-brain-t1c"}, device="cpu")
    assert state is JobState.FAILED
    assert "spacing" in run.error and "Resample" in run.error and "Traceback" not in run.error
    run2, state2, _ = run_op(scene, "seg2img", Selection(node, seg), {"model": "no-such-model"}, device="cpu")
    assert state2 is JobState.FAILED and "no-such-model" in run2.error
    import torch

    if not torch.cuda.is_available():  # the device setting: an absent GPU is a message, not a silent CPU run
        run3, state3, _ = run_op(scene, "shape", Selection(node, point_ras=(0.0, 0.0, 0.0)), {}, device="cuda")
        assert state3 is JobState.FAILED and "CUDA is not available" in run3.error
    assert scene_snapshot(scene) == before and not run.nodes and not run2.nodes
    assert job_folders() == folders


def test_bad_selections_are_refused_before_anything_starts(scene) -> None:
    import slicer

    vol = Volume(np.zeros((1, 30, 30), np.int16))
    flat = conversions.node_from_volume(vol, "flat")
    scene.AddNode(flat)
    seg = slicer.vtkMRMLSegmentationNode()
    seg.SetName("empty seg")
    scene.AddNode(seg)
    empty_id = seg.GetSegmentation().AddEmptySegment("", "empty")
    folders = job_folders()
    with pytest.raises(InvalidInputError, match="no input volume is selected"):
        operations.start_operation(scene, "remove", Selection(None, seg))
    with pytest.raises(DimensionError, match="needs a 3D volume"):
        operations.start_operation(scene, "remove", Selection(flat, seg, [empty_id]))
    cube = conversions.node_from_volume(Volume(np.zeros((10, 10, 10), np.int16)), "cube")
    scene.AddNode(cube)
    before = scene_snapshot(scene)
    with pytest.raises(InvalidInputError, match="Segment 'empty' is empty"):
        operations.start_operation(scene, "remove", Selection(cube, seg, [empty_id]))
    with pytest.raises(InvalidInputError, match="place a markup point"):
        operations.start_operation(scene, "shape", Selection(cube))
    with pytest.raises(InvalidInputError, match="no segmentation is selected"):
        operations.start_operation(scene, "radiomics", Selection(cube))
    with pytest.raises(InvalidInputError, match="Unknown operation"):
        operations.start_operation(scene, "explode", Selection(cube))
    assert scene_snapshot(scene) == before
    assert job_folders() == folders


def test_results_are_added_all_or_none(scene) -> None:
    first = conversions.node_from_volume(Volume(np.zeros((4, 4, 4), np.int16)), "first")
    second = conversions.segmentation_from_labels(LabelMap(np.ones((4, 4, 4), np.uint8)), "second")
    before = scene.GetNumberOfNodes()
    with pytest.raises(TypeError):
        operations.add_results(scene, [first, second, "not a node"])
    assert scene.GetNumberOfNodes() == before
    assert operations.add_results(scene, [first, second]) == [first, second]
    assert first.GetDisplayNode() is not None and second.GetDisplayNode() is not None


def test_option_fields_become_worker_options() -> None:
    assert operations.options_for("resize", scale=2.0, texture="enhancing/mean = 0.9; edema/spread=1.1", seed=4) == {
        "seed": 4, "texture": {"enhancing/mean": 0.9, "edema/spread": 1.1}, "scale": 2.0}
    assert operations.options_for("paired", pairs=3, steps=5, model=" busi-paired-guider ") == {
        "seed": 0, "model": "busi-paired-guider", "steps": 5, "n": 3}
    assert operations.options_for("radiomics", steps=9) == {"seed": 0}
    with pytest.raises(InvalidInputError, match="Texture: 'mean' is not Name=number"):
        operations.options_for("retexture", texture="mean")
