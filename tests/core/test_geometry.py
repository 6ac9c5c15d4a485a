"""Geometry: index <-> world, crop/paste with feathering, resampling (property tests with hypothesis)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_medgen.core.geometry import (
    Crop,
    blend_weights,
    crop_around,
    index_to_physical,
    paste,
    physical_to_index,
    resample_like,
    resample_to_spacing,
    right_handed,
)
from napari_medgen.core.io import to_sitk
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import GeometryMismatchError, InvalidInputError

FAST = settings(max_examples=40, deadline=None)

spacings = st.tuples(*[st.floats(0.2, 5.0)] * 3)
origins = st.tuples(*[st.floats(-500.0, 500.0)] * 3)


@st.composite
def directions(draw: st.DrawFn) -> tuple[float, ...]:
    """Random orthonormal 3x3 matrices, half of them reflections (det = -1)."""
    raw = np.array(draw(st.lists(st.floats(-1.0, 1.0, allow_subnormal=False), min_size=9, max_size=9))).reshape(3, 3)
    assume(abs(np.linalg.det(raw)) > 0.05)
    q, r = np.linalg.qr(raw)
    q = q @ np.diag(np.sign(np.diag(r)))
    if draw(st.booleans()):
        q[:, 2] *= -1.0
    q[np.abs(q) < 1e-100] = 0.0  # QR can leave ~1e-308 entries; their ITK handling has its own test below
    return tuple(q.reshape(-1))


@st.composite
def volumes(draw: st.DrawFn, max_side: int = 9, labels: bool = False) -> Volume:
    shape = draw(st.tuples(*[st.integers(1, max_side)] * 3))
    if labels:
        arr = draw(arrays(np.uint8, shape, elements=st.integers(0, 4)))
        return LabelMap(arr, draw(spacings), draw(origins), draw(directions()))
    arr = draw(arrays(np.float32, shape, elements=st.floats(-1000, 1000, width=32)))
    return Volume(arr, draw(spacings), draw(origins), draw(directions()))


# ---- index <-> physical -------------------------------------------------------------------------------------
@FAST
@given(volumes(), st.lists(st.tuples(*[st.floats(-20, 20)] * 3), min_size=1, max_size=6))
def test_index_physical_roundtrip_and_sitk_agreement(volume: Volume, indices: list) -> None:
    idx = np.asarray(indices)
    points = index_to_physical(volume, idx)
    assert points.shape == idx.shape
    np.testing.assert_allclose(physical_to_index(volume, points), idx, atol=1e-8)
    image = to_sitk(volume)
    for zyx, xyz in zip(idx, points, strict=True):
        expected = image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in zyx[::-1]))
        np.testing.assert_allclose(xyz, expected, atol=1e-8)


def test_index_order_is_zyx_and_points_are_xyz(oblique_volume: Volume) -> None:
    single = index_to_physical(oblique_volume, (0, 0, 1))  # one step along x
    assert single.shape == (3,)
    np.testing.assert_allclose(
        single - np.asarray(oblique_volume.origin), 0.7 * oblique_volume.direction_matrix[:, 0], atol=1e-12
    )
    with pytest.raises(InvalidInputError, match="3 coordinates"):
        index_to_physical(oblique_volume, (1, 2))
    with pytest.raises(InvalidInputError, match="NaN"):
        physical_to_index(oblique_volume, (np.nan, 0, 0))


@FAST
@given(volumes())
def test_right_handed_keeps_every_voxel_at_its_place(volume: Volume) -> None:
    rh = right_handed(volume)
    assert np.linalg.det(rh.direction_matrix) > 0
    idx = np.argwhere(np.ones(volume.shape, bool)).astype(float)
    where = np.rint(physical_to_index(rh, index_to_physical(volume, idx))).astype(int)
    np.testing.assert_array_equal(rh.array[tuple(where.T)], volume.array[tuple(idx.astype(int).T)])


# ---- crop ---------------------------------------------------------------------------------------------------
@FAST
@given(volumes(max_side=10), st.data())
def test_crop_matches_source_and_has_its_own_geometry(volume: Volume, data: st.DataObject) -> None:
    centre_idx = np.array([data.draw(st.integers(0, n - 1)) for n in volume.shape])
    size = data.draw(st.tuples(*[st.integers(1, 7)] * 3))
    crop = crop_around(volume, index_to_physical(volume, centre_idx.astype(float)), size)
    assert crop.volume.shape == size and crop.volume.array.dtype == volume.array.dtype
    start = np.asarray(crop.start_zyx)
    # the crop's own geometry puts each of its voxels where it was in the source
    np.testing.assert_allclose(
        index_to_physical(crop.volume, (0.0, 0.0, 0.0)), index_to_physical(volume, start.astype(float)), atol=1e-8
    )
    # the requested centre is within half a voxel of the box centre (exactly on it for odd sizes)
    offset = start + (np.asarray(size) - 1) / 2.0 - centre_idx
    assert np.all(np.abs(offset) <= 0.5) and np.all(offset[np.asarray(size) % 2 == 1] == 0)
    src = start + np.argwhere(np.ones(size, bool))
    inside = np.all((src >= 0) & (src < np.asarray(volume.shape)), axis=1)
    flat = crop.volume.array.reshape(-1)
    np.testing.assert_array_equal(flat[inside], volume.array[tuple(src[inside].T)])
    assert np.all(flat[~inside] == volume.array.min())


def test_crop_near_border_pads_images_with_minimum_and_labels_with_zero(oblique_labels: LabelMap) -> None:
    arr = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7) + 100
    vol = Volume(arr, spacing=(1.0, 2.0, 3.0), origin=(5.0, 6.0, 7.0))
    crop = crop_around(vol, index_to_physical(vol, (0.0, 0.0, 0.0)), (3, 3, 3))
    assert crop.start_zyx == (-1, -1, -1)
    assert crop.volume.array[0, 0, 0] == 100 and crop.volume.array[1, 1, 1] == arr[0, 0, 0]
    assert crop.stop_zyx == (2, 2, 2)
    custom = crop_around(vol, index_to_physical(vol, (4.0, 5.0, 6.0)), (2, 2, 2), pad_value=-7)
    assert custom.volume.array[1, 1, 1] == -7 and custom.volume.array[0, 0, 0] == arr[4, 5, 6]
    labels = oblique_labels.with_array(oblique_labels.array + 1)
    lcrop = crop_around(labels, index_to_physical(labels, (0.0, 0.0, 0.0)), (3, 3, 3))
    assert isinstance(lcrop.volume, LabelMap) and lcrop.volume.array[0, 0, 0] == 0
    with pytest.raises(InvalidInputError, match="cannot be stored"):
        crop_around(vol, index_to_physical(vol, (0.0, 0.0, 0.0)), 3, pad_value=0.5)
    with pytest.raises(InvalidInputError, match="outside the image"):
        crop_around(vol, index_to_physical(vol, (-3.0, 0.0, 0.0)), 3)
    with pytest.raises(InvalidInputError, match="size_zyx"):
        crop_around(vol, vol.origin, (0, 2, 2))


# ---- paste --------------------------------------------------------------------------------------------------
@FAST
@given(volumes(max_side=8))
def test_crop_then_paste_unchanged_is_identity(volume: Volume) -> None:
    centre = index_to_physical(volume, (np.asarray(volume.shape) - 1) / 2.0)
    crop = crop_around(volume, centre, (5, 4, 6))
    for feather in (0.0, 3.0):
        out = paste(volume, crop, feather_mm=feather)
        assert out is not volume
        np.testing.assert_array_equal(out.array, volume.array)
        assert out.same_grid(volume, tol=0.0)


@FAST
@given(
    volumes(max_side=8),
    st.data(),
    st.sampled_from([0.0, 0.5, 2.0, 7.5]),
)
def test_paste_changes_nothing_outside_the_blend_region(volume: Volume, data: st.DataObject, feather: float) -> None:
    before = volume.array.copy()
    pshape = data.draw(st.tuples(*[st.integers(1, 6)] * 3))
    # only overlapping placements (drawn directly rather than filtered: no health-check flakiness)
    start = tuple(data.draw(st.integers(max(-3, 1 - p), n - 1)) for p, n in zip(pshape, volume.shape, strict=True))
    patch = volume.with_array(np.full(pshape, 5000.0, np.float32))
    mask = data.draw(arrays(np.bool_, pshape))
    out = paste(volume, patch, start, mask=mask, feather_mm=feather)
    # blend region in target coordinates
    region = np.zeros(volume.shape, bool)
    weights = blend_weights(mask, volume.spacing_zyx, feather)
    for local in np.argwhere(weights > 0):
        target_idx = np.asarray(start) + local
        if np.all(target_idx >= 0) and np.all(target_idx < volume.shape):
            region[tuple(target_idx)] = True
            w = weights[tuple(local)]
            expected = np.float32(w * 5000.0 + (1 - w) * float(before[tuple(target_idx)])) if w < 1 else 5000.0
            assert out.array[tuple(target_idx)] == pytest.approx(expected, rel=1e-6)
    np.testing.assert_array_equal(out.array[~region], before[~region])  # bit-identical
    np.testing.assert_array_equal(volume.array, before)  # input untouched


def test_feather_ramp_is_in_millimetres_with_anisotropic_spacing() -> None:
    region = np.zeros((9, 9, 9), bool)
    region[1:8, 1:8, 1:8] = True
    weights = blend_weights(region, spacing_zyx=(4.0, 1.0, 1.0), feather_mm=4.0)
    assert weights[0, 4, 4] == 0.0 and weights[4, 4, 0] == 0.0
    assert weights[1, 4, 4] == pytest.approx(1.0)  # 4 mm from the z boundary: fully inside the ramp
    assert weights[4, 4, 1] == pytest.approx(0.25)  # 1 mm from the x boundary
    assert weights[4, 4, 3] == pytest.approx(0.75)
    assert weights[4, 4, 4] == 1.0
    np.testing.assert_array_equal(blend_weights(region, (4.0, 1.0, 1.0), 0.0), region.astype(float))
    with pytest.raises(InvalidInputError, match="feather_mm"):
        blend_weights(region, (1.0, 1.0, 1.0), -1.0)


def test_paste_integer_and_label_targets(oblique_labels: LabelMap) -> None:
    target = Volume(np.zeros((6, 6, 6), np.uint8))
    patch = target.with_array(np.full((2, 2, 2), 300.7))
    out = paste(target, patch, (2, 2, 2))
    assert out.array.dtype == np.uint8 and out.array[2, 2, 2] == 255  # rounded and clipped to the type
    blended = paste(target, target.with_array(np.full((6, 6, 6), 101.0)), (0, 0, 0), feather_mm=2.0)
    assert blended.array.dtype == np.uint8 and 0 < blended.array[0, 3, 3] < 101 and blended.array[3, 3, 3] == 101
    lesion = LabelMap(np.full((3, 3, 3), 7, np.uint8), oblique_labels.spacing, (0, 0, 0), oblique_labels.direction)
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = True
    pasted = paste(oblique_labels, lesion, (0, 0, 0), mask=mask)
    assert isinstance(pasted, LabelMap) and pasted.array[1, 1, 1] == 7
    assert np.count_nonzero(pasted.array != oblique_labels.array) == 1
    with pytest.raises(InvalidInputError, match="feather"):
        paste(oblique_labels, lesion, (0, 0, 0), feather_mm=1.0)


def test_paste_infers_start_from_origin_and_checks_geometry(oblique_volume: Volume) -> None:
    crop = crop_around(oblique_volume, index_to_physical(oblique_volume, (3.0, 5.0, 6.0)), (3, 3, 3))
    bright = crop.volume.with_array(np.full((3, 3, 3), 1e4, np.float32))
    out = paste(oblique_volume, bright)  # a plain Volume: position from its origin
    assert np.all(out.array[2:5, 4:7, 5:8] == 1e4)
    assert isinstance(crop, Crop)
    with pytest.raises(GeometryMismatchError, match="resample"):
        paste(oblique_volume, bright.with_array(bright.array, spacing=(1.0, 1.0, 1.0)))
    with pytest.raises(GeometryMismatchError, match="between the target's voxels"):
        shifted = np.asarray(bright.origin) + 0.3 * oblique_volume.direction_matrix[:, 0]
        paste(oblique_volume, bright.with_array(bright.array, origin=tuple(shifted)))
    with pytest.raises(InvalidInputError, match="entirely outside"):
        paste(oblique_volume, bright, (50, 0, 0))
    with pytest.raises(GeometryMismatchError, match="mask shape"):
        paste(oblique_volume, bright, (0, 0, 0), mask=np.ones((2, 2, 2)))


# ---- resampling ---------------------------------------------------------------------------------------------
@FAST
@given(
    st.tuples(*[st.integers(1, 5)] * 3),
    st.tuples(*[st.integers(1, 3)] * 3),
    spacings,
    origins,
    directions(),
    st.integers(0, 2**32 - 1),
)
def test_labels_up_then_down_on_divisible_grids_are_identical(
    shape: tuple, factors: tuple, spacing: tuple, origin: tuple, direction: tuple, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    labels = LabelMap(rng.integers(0, 5, shape).astype(np.uint8), spacing, origin, direction)
    fine_spacing = tuple(s / f for s, f in zip(spacing, factors[::-1], strict=True))  # factors are zyx
    fine = resample_to_spacing(labels, fine_spacing)
    assert isinstance(fine, LabelMap)
    assert fine.shape == tuple(n * f for n, f in zip(shape, factors, strict=True))
    # the field of view (outer voxel corners) is unchanged
    np.testing.assert_allclose(
        index_to_physical(fine, (-0.5, -0.5, -0.5)), index_to_physical(labels, (-0.5, -0.5, -0.5)), atol=1e-6
    )
    back = resample_to_spacing(fine, spacing)
    np.testing.assert_array_equal(back.array, labels.array)
    np.testing.assert_allclose(back.origin, labels.origin, atol=1e-6)
    back_like = resample_like(fine, labels)
    np.testing.assert_array_equal(back_like.array, labels.array)
    assert back_like.same_grid(labels, tol=0.0)


def test_image_resampling_keeps_type_and_linear_signals(oblique_volume: Volume) -> None:
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in (8, 9, 10)], indexing="ij")
    ramp = Volume((10.0 * xx + 3.0 * yy - 2.0 * zz).astype(np.float32), spacing=(1.0, 1.0, 1.0))
    fine = resample_to_spacing(ramp, (0.5, 0.5, 0.5))
    assert fine.array.dtype == np.float32 and fine.shape == (16, 18, 20)
    inner = np.argwhere(np.ones(fine.shape, bool))
    inner = inner[np.all((inner >= 1) & (inner <= np.asarray(fine.shape) - 2), axis=1)]
    src = physical_to_index(ramp, index_to_physical(fine, inner.astype(float)))
    expected = 10.0 * src[:, 2] + 3.0 * src[:, 1] - 2.0 * src[:, 0]
    np.testing.assert_allclose(fine.array[tuple(inner.T)], expected, atol=1e-3)
    ints = Volume(np.arange(27, dtype=np.int16).reshape(3, 3, 3) * 10)
    halves = resample_like(ints, ints.with_array(ints.array, origin=(0.5, 0.0, 0.0)))
    assert halves.array.dtype == np.int16 and halves.array[0, 0, 0] == 5  # rounded linear interpolation
    assert halves.array[0, 0, 2] == ints.array.min()  # outside the source: the image minimum
    same = resample_like(oblique_volume, oblique_volume)
    np.testing.assert_allclose(same.array, oblique_volume.array, atol=1e-4)
    iso = resample_to_spacing(oblique_volume, 1.0)
    assert iso.spacing == (1.0, 1.0, 1.0) and iso.direction == oblique_volume.direction


def test_resampling_errors(oblique_volume: Volume, oblique_labels: LabelMap) -> None:
    with pytest.raises(InvalidInputError, match="fractional labels"):
        resample_to_spacing(oblique_labels, 1.0, interpolator="linear")
    with pytest.raises(InvalidInputError, match="Unknown interpolator"):
        resample_to_spacing(oblique_volume, 1.0, interpolator="cubic")
    with pytest.raises(InvalidInputError, match="positive"):
        resample_to_spacing(oblique_volume, (1.0, 0.0, 1.0))
    smooth = resample_to_spacing(oblique_labels, 0.5, interpolator="label_gaussian")
    assert isinstance(smooth, LabelMap) and set(smooth.labels()) <= {1, 2}


@pytest.mark.realdata
def test_real_flipped_label_grid_is_resampled_exactly(shared_data: Path) -> None:
    """TotalSegmentator stores the DICOM case's labels with the y axis flipped: same voxels, other grid."""
    from napari_medgen.core.io import read_labels, read_volume

    ct = read_volume(shared_data / "totalsegmentator/example_ct_dicom")
    seg = read_labels(shared_data / "totalsegmentator/example_seg_dicom.nii.gz")
    assert not seg.same_grid(ct)
    on_ct = resample_like(seg, ct)
    assert on_ct.same_grid(ct, tol=0.0) and isinstance(on_ct, LabelMap)
    np.testing.assert_array_equal(on_ct.array, seg.array[:, ::-1, :])
    ref = sitk.Resample(to_sitk(seg), to_sitk(ct), sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(on_ct.array, sitk.GetArrayFromImage(ref))


def test_subnormal_direction_entries_do_not_break_resampling() -> None:
    """QR-made rotations can carry 1e-308 entries; ITK's SVD turns those into NaN unless flushed."""
    c, s = 0.9363291775690448, 0.3511234415883917
    direction = (c, -s, 8e-309, s, c, -2.2e-308, 0.0, 2.97e-308, 1.0)
    labels = LabelMap(np.full((1, 2, 2), 4, np.uint8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), direction)
    np.testing.assert_array_equal(resample_like(labels, labels).array, labels.array)
    np.testing.assert_array_equal(resample_to_spacing(labels, labels.spacing).array, labels.array)
