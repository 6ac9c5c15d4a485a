"""The plugin in a real napari viewer (Xvfb via pytest-xvfb): open, place, edit, save, re-open."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medgen.core.io import write_volume
from napari_medgen.core.volume import LabelMap, Volume

napari = pytest.importorskip("napari")

pytestmark = pytest.mark.gui
PLUGIN = "napari-medgen"


def _sitk_world(image: sitk.Image, idx_zyx: np.ndarray) -> np.ndarray:
    """SimpleITK's physical point of a (z, y, x) index, in napari's reversed (z, y, x) world order."""
    point = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx_zyx[::-1]])
    return np.asarray(point)[::-1]


def _assert_layer_in_physical_space(layer, image: sitk.Image, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    shape = np.array(layer.data.shape)
    assert tuple(shape) == tuple(reversed(image.GetSize()))
    for idx in np.vstack([np.zeros(3), shape - 1, rng.uniform(0, 1, (6, 3)) * (shape - 1)]):
        np.testing.assert_allclose(layer.data_to_world(idx), _sitk_world(image, idx), atol=1e-4)


@pytest.mark.realdata
def test_pyradiomics_nrrd_pair_opens_aligned_and_labels_save_round_trip(
    make_napari_viewer, shared_data: Path, tmp_path: Path
) -> None:
    image_path = shared_data / "pyradiomics" / "data" / "brain1_image.nrrd"
    label_path = shared_data / "pyradiomics" / "data" / "brain1_label.nrrd"
    viewer = make_napari_viewer()
    [image] = viewer.open(str(image_path), plugin=PLUGIN)
    [labels] = viewer.open(str(label_path), plugin=PLUGIN)
    assert isinstance(image, napari.layers.Image) and isinstance(labels, napari.layers.Labels)
    _assert_layer_in_physical_space(image, sitk.ReadImage(str(image_path)))
    _assert_layer_in_physical_space(labels, sitk.ReadImage(str(label_path)))
    np.testing.assert_allclose(image.scale, (6.5, 0.78125, 0.78125), atol=1e-9)

    # Edit in the viewer, save through the plugin writer, re-open: same voxels at the same world points.
    edited_idx = tuple(int(v) for v in np.argwhere(labels.data > 0)[0])
    labels.data[edited_idx] = 7
    saved = tmp_path / "brain1_label_edited.nii.gz"
    written = napari.save_layers(str(saved), [labels], plugin=PLUGIN)
    assert [Path(p) for p in written] == [saved]
    [reopened] = viewer.open(str(saved), plugin=PLUGIN)
    assert isinstance(reopened, napari.layers.Labels)
    assert reopened.data.dtype.kind in "iu"
    np.testing.assert_array_equal(reopened.data, labels.data)
    assert reopened.data[edited_idx] == 7
    for idx in (np.zeros(3), np.array(edited_idx, float), np.array(image.data.shape) - 1):
        np.testing.assert_allclose(reopened.data_to_world(idx), image.data_to_world(idx), atol=1e-6)


@pytest.mark.realdata
def test_brats_nifti_and_dicom_folder_open_in_physical_space(make_napari_viewer, shared_data: Path) -> None:
    flair = shared_data / "brats2015_subset" / "brats_2013_pat0001_1" / "Flair_subtrMeanDivStd.nii.gz"
    dicom = shared_data / "totalsegmentator" / "example_ct_dicom"
    viewer = make_napari_viewer()
    [brats] = viewer.open(str(flair), plugin=PLUGIN)
    assert isinstance(brats, napari.layers.Image)
    _assert_layer_in_physical_space(brats, sitk.ReadImage(str(flair)))
    low, high = brats.contrast_limits
    assert low < high

    [ct] = viewer.open(str(dicom), plugin=PLUGIN)
    assert isinstance(ct, napari.layers.Image)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom)))
    _assert_layer_in_physical_space(ct, reader.Execute(), seed=1)
    assert ct.data.shape[0] == 20


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")  # napari cannot slice truly oblique data in 2D
def test_oblique_volume_round_trips_through_the_viewer(
    make_napari_viewer, tmp_path: Path, oblique_volume: Volume, oblique_labels: LabelMap
) -> None:
    img_path = write_volume(oblique_volume, tmp_path / "oblique.nrrd")
    lab_path = write_volume(oblique_labels, tmp_path / "oblique_label.nrrd")
    viewer = make_napari_viewer()
    [image] = viewer.open(str(img_path), plugin=PLUGIN)
    [labels] = viewer.open(str(lab_path), plugin=PLUGIN)
    _assert_layer_in_physical_space(image, sitk.ReadImage(str(img_path)))
    _assert_layer_in_physical_space(labels, sitk.ReadImage(str(lab_path)))

    out = tmp_path / "saved_labels.mha"
    viewer.layers.selection = {labels}
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    saved = sitk.ReadImage(str(out))
    np.testing.assert_allclose(saved.GetSpacing(), oblique_volume.spacing, atol=1e-6)
    np.testing.assert_allclose(saved.GetOrigin(), oblique_volume.origin, atol=1e-6)
    np.testing.assert_allclose(saved.GetDirection(), oblique_volume.direction, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(saved), oblique_labels.array)

    # A layer the user moved is saved where it is shown.
    image.translate = (2.0, -1.0, 0.5)
    moved = tmp_path / "moved.nii.gz"
    napari.save_layers(str(moved), [image], plugin=PLUGIN)
    _assert_layer_in_physical_space(image, sitk.ReadImage(str(moved)))

    # Both layers together go into a folder, one file each.
    folder = tmp_path / "case"
    written = napari.save_layers(str(folder), [image, labels], plugin=PLUGIN)
    assert sorted(Path(p).name for p in written) == ["oblique.nii.gz", "oblique_label.nii.gz"]


def test_sample_data_commands_load(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "phantom")
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels"]
    assert set(np.unique(layers[1].data)) == {0, 1, 2}
    np.testing.assert_allclose(layers[0].data_to_world((0, 0, 0)), layers[1].data_to_world((0, 0, 0)))
    [mni] = viewer.open_sample(PLUGIN, "mni152")
    assert isinstance(mni, napari.layers.Image)
    assert mni.data.shape == (189, 233, 197)
    # MNI origin (-98, -134, -72) RAS is (98, 134, -72) LPS: voxel 0 lies there in world (z, y, x)
    np.testing.assert_allclose(mni.data_to_world((0, 0, 0)), (-72.0, 134.0, 98.0), atol=1e-6)


def test_label_map_opens_as_labels_by_content_with_a_notification(make_napari_viewer, tmp_path: Path,
                                                                    monkeypatch) -> None:
    import napari_medgen.napari_io as nio

    said: list[str] = []
    show_info = nio._notify
    monkeypatch.setattr(nio, "_notify", lambda message: (said.append(message), show_info(message)))
    data = np.zeros((6, 10, 12), dtype=np.uint8)
    for value in range(1, 5):
        data[1:5, 2 * value : 2 * value + 2, 2:10] = value
    path = write_volume(LabelMap(data, spacing=(1.0, 1.0, 2.0)), tmp_path / "OTMultiClass.nii.gz")
    scan = write_volume(Volume((data * 0.5).astype(np.float32), spacing=(1.0, 1.0, 2.0)), tmp_path / "t1.nii.gz")
    viewer = make_napari_viewer()
    [labels] = viewer.open(str(path), plugin=PLUGIN)
    [image] = viewer.open(str(scan), plugin=PLUGIN)
    assert isinstance(labels, napari.layers.Labels) and labels.name == "OTMultiClass"
    assert isinstance(image, napari.layers.Image)  # float values in 0.5 steps: an image
    np.testing.assert_array_equal(labels.data, data)
    assert len(said) == 1 and "opened as labels: integer values 0-4" in said[0]
    assert [str(unit) for unit in viewer.layers.units] == ["millimeter"] * 3  # the scale bar reads mm


def test_png_slices_open_image_and_mask_as_labels(make_napari_viewer, tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    scan = (rng.uniform(0, 255, (40, 50))).astype(np.uint8)
    mask = np.zeros((40, 50), np.uint8)
    mask[10:20, 15:30] = 255
    Image.fromarray(scan).save(tmp_path / "case 1.png")
    Image.fromarray(mask).save(tmp_path / "case 1_mask.png")
    viewer = make_napari_viewer()
    viewer.open([str(tmp_path / "case 1.png"), str(tmp_path / "case 1_mask.png")], plugin=PLUGIN)
    kinds = {layer.name: type(layer).__name__ for layer in viewer.layers}
    assert kinds == {"case 1": "Image", "case 1_mask": "Labels"}
    np.testing.assert_array_equal(np.squeeze(viewer.layers["case 1"].data), scan)
    assert set(np.unique(viewer.layers["case 1_mask"].data)) == {0, 255}
