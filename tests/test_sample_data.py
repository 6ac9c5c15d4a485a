"""The synthetic phantom and the offline MNI152 sample."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import InvalidInputError
from napari_medgen.sample_data import (
    NECROSIS_LABEL,
    PHANTOM_SHAPE,
    TUMOUR_LABEL,
    make_phantom,
    mni152_t1_path,
    phantom_sample,
)

SMALL = (16, 24, 24)


def test_default_phantom_geometry_is_anisotropic_with_offset_origin() -> None:
    image, labels = make_phantom()
    assert isinstance(image, Volume) and isinstance(labels, LabelMap)
    assert image.shape == PHANTOM_SHAPE
    assert len(set(image.spacing)) > 1
    assert all(abs(o) > 1.0 for o in image.origin)
    assert labels.same_grid(image, tol=0.0)
    assert image.array.dtype == np.float32 and labels.array.dtype == np.uint8


def test_phantom_is_deterministic_per_seed() -> None:
    a_img, a_lab = make_phantom(SMALL, seed=3)
    b_img, b_lab = make_phantom(SMALL, seed=3)
    c_img, _ = make_phantom(SMALL, seed=4)
    np.testing.assert_array_equal(a_img.array, b_img.array)
    np.testing.assert_array_equal(a_lab.array, b_lab.array)
    assert not np.array_equal(a_img.array, c_img.array)


def test_tumour_has_enhancing_rim_around_necrotic_core() -> None:
    image, labels = make_phantom()
    assert labels.labels() == [TUMOUR_LABEL, NECROSIS_LABEL]
    tumour = labels.array > 0
    core = labels.array == NECROSIS_LABEL
    # one connected lesion, with the core strictly inside it
    assert ndimage.label(tumour)[1] == 1
    assert np.all(tumour[ndimage.binary_dilation(core)])
    rim_mean = image.array[labels.array == TUMOUR_LABEL].mean()
    core_mean = image.array[core].mean()
    brain_mean = image.array[ndimage.binary_dilation(tumour, iterations=6) & ~tumour].mean()
    assert rim_mean > brain_mean > core_mean
    voxel_ml = np.prod(image.spacing) / 1000.0
    assert 5.0 < tumour.sum() * voxel_ml < 60.0  # a plausible glioma volume in mL


def test_phantom_background_is_dark_and_head_is_bright() -> None:
    image, _ = make_phantom(SMALL)
    arr = image.array
    assert arr[0, 0, 0] < 100.0
    assert arr[SMALL[0] // 2, SMALL[1] // 2, :].max() > 300.0


@pytest.mark.parametrize(("kwargs"), [{"shape": (4, 24, 24)}, {"shape": (8, 8)}, {"tumour_radius_mm": 0.0}])
def test_phantom_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(InvalidInputError):
        make_phantom(**kwargs)


def test_phantom_sample_layers_share_one_placement() -> None:
    (img, img_kw, img_type), (lab, lab_kw, lab_type) = phantom_sample()
    assert (img_type, lab_type) == ("image", "labels")
    assert img_kw["scale"] == lab_kw["scale"] and img_kw["translate"] == lab_kw["translate"]
    assert img_kw["colormap"] == "gray"
    assert lab.flags.writeable  # napari paints into labels in place


def test_mni152_template_is_found_offline() -> None:
    pytest.importorskip("nilearn")
    path = mni152_t1_path()
    assert path.is_file() and path.name.endswith(".nii.gz")


def test_mni152_sample_reads_lps_geometry() -> None:
    pytest.importorskip("nilearn")
    pytest.importorskip("napari_medgen.core.io")
    from napari_medgen.sample_data import mni152_sample

    [(data, kwargs, kind)] = mni152_sample()
    assert kind == "image"
    assert data.shape == (189, 233, 197)
    # the NIfTI is RAS with x and y flipped into LPS: the layer must carry that flip
    np.testing.assert_allclose(np.diag(kwargs["affine"][:3, :3]), (1.0, -1.0, -1.0))
    np.testing.assert_allclose(kwargs["affine"][:3, 3], (-72.0, 134.0, 98.0))
