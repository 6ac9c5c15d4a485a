"""The brain editor path of the tumour pipeline (learned inpainting + glioma appearance; tiny untrained checkpoint):
sub-regions, geometry, locality, determinism, texture controls and references, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_medgen.core.geometry import index_to_physical
from napari_medgen.errors import InvalidInputError
from napari_medgen.pipelines import tumor_synthesis as ts
from tests.conftest import brats_phantom

EDEMA = (2.0, 4.0)


@pytest.fixture
def scan():
    return brats_phantom()


def _centre(image, labels) -> tuple[float, float, float]:
    return tuple(float(v) for v in index_to_physical(image, np.argwhere(np.asarray(labels.array) > 0).mean(0)))


def test_synthesis_paints_glioma_subregions_and_keeps_everything_else(scan, tiny_editor: Path) -> None:
    image, labels = scan
    source = np.array(image.array)
    centre = _centre(image, labels)
    result = ts.synthesize(image, center_mm=centre, shape_request={"VoxelVolume": 2500.0}, model=tiny_editor,
                           seed=3, edema_mm=EDEMA)
    out, lab = np.asarray(result.image.array), np.asarray(result.labels.array)
    assert set(np.unique(lab)) <= {0, 1, 2, 4} and {1, 4} <= set(np.unique(lab))
    assert result.image.same_grid(image) and result.labels.same_grid(image) and out.dtype == source.dtype
    from scipy import ndimage

    band = ndimage.binary_dilation(lab > 0, structure=np.ones((5, 5, 5), bool))  # blend_mm 2: +-2 voxels
    np.testing.assert_array_equal(out[~band], source[~band])
    assert np.mean(out[lab == 4]) > np.mean(out[lab == 1])  # bright enhancing rim, darker necrotic core
    again = ts.synthesize(image, center_mm=centre, shape_request={"VoxelVolume": 2500.0}, model=tiny_editor,
                          seed=3, edema_mm=EDEMA)
    np.testing.assert_array_equal(again.image.array, out)
    np.testing.assert_array_equal(image.array, source)
    assert result.report["shape_from"].startswith("shape generator") and result.report["sequence"] == "T1c"


def test_a_one_label_mask_is_split_and_edema_is_optional(scan, tiny_editor: Path) -> None:
    image, labels = scan
    core = image.as_labels((np.asarray(labels.array) == 4).astype(np.uint8) | (np.asarray(labels.array) == 1))
    with_edema = ts.synthesize(image, shape=core, model=tiny_editor, edema_mm=EDEMA)
    lab = np.asarray(with_edema.labels.array)
    assert set(np.unique(lab)) == {0, 1, 2, 4}
    inner = np.count_nonzero(lab == 1) / np.count_nonzero(np.isin(lab, (1, 4)))
    assert inner == pytest.approx(0.3, abs=0.1)  # the deepest ~30 % (distance ties make it coarse)
    without = ts.synthesize(image, shape=core, model=tiny_editor, edema_mm=None, necrotic_fraction=0.0)
    assert set(np.unique(without.labels.array)) == {0, 4}


def test_texture_controls_and_reference_tumours(scan, tiny_editor: Path) -> None:
    image, labels = scan
    base = ts.synthesize(image, shape=labels, model=tiny_editor, seed=1)
    brighter = ts.synthesize(image, shape=labels, model=tiny_editor, seed=1, texture={"enhancing/mean": 1.2})
    rim = np.asarray(labels.array) == 4
    assert np.mean(brighter.image.array[rim]) > np.mean(base.image.array[rim]) + 50
    referenced = ts.synthesize(image, shape=labels, model=tiny_editor, seed=1, texture_from=(image, labels))
    assert referenced.report["texture_from"] == "reference tumour"
    with pytest.raises(InvalidInputError, match="Unknown texture control"):
        ts.synthesize(image, shape=labels, model=tiny_editor, texture={"firstorder_Mean": 0.3})
    with pytest.raises(InvalidInputError, match="steps apply to the texture bridge"):
        ts.synthesize(image, shape=labels, model=tiny_editor, steps=5)
    with pytest.raises(InvalidInputError, match="BraTS labels"):
        ts.synthesize(image, shape=labels, model=tiny_editor, label_value=3)
    with pytest.raises(InvalidInputError, match="sequences"):
        ts.synthesize(image, shape=labels, model=tiny_editor, sequence="DWI")


def test_retexture_keeps_the_shape_and_remove_inpaints(scan, tiny_editor: Path) -> None:
    image, labels = scan
    tumour = np.asarray(labels.array) > 0
    re = ts.retexture(image, labels, model=tiny_editor, texture={"necrotic/mean": 0.1}, seed=2)
    np.testing.assert_array_equal(re.labels.array, labels.array)
    assert not np.array_equal(np.asarray(re.image.array)[tumour], np.asarray(image.array)[tumour])
    removed = ts.remove(image, labels, model=tiny_editor, margin_mm=0.0)
    assert not np.asarray(removed.labels.array).any() and removed.report["method"] == "model"
    np.testing.assert_array_equal(np.asarray(removed.image.array)[~tumour], np.asarray(image.array)[~tumour])


def test_resize_and_move_carry_the_subregions(scan, tiny_editor: Path) -> None:
    image, labels = scan
    tumour = np.asarray(labels.array) > 0
    smaller = ts.resize(image, labels, 0.7, model=tiny_editor)
    lab = np.asarray(smaller.labels.array)
    assert np.count_nonzero(lab) < 0.5 * np.count_nonzero(tumour) and {1, 4} <= set(np.unique(lab))
    target = np.asarray(_centre(image, labels)) + np.array([3.0, 0.0, 0.0])
    moved = ts.move(image, labels, tuple(target), model=tiny_editor)
    assert {1, 4} <= set(np.unique(moved.labels.array))
    assert np.linalg.norm(np.asarray(_centre(image, moved.labels)) - target) < 1.5
