"""Geometry round trips between `Volume` and napari layer transforms (no viewer, no Qt)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import DimensionError, GeometryMismatchError, InvalidInputError, MedGenError
from napari_medgen.layers import (
    METADATA_KEY,
    image_display_kwargs,
    labels_layer_to_labelmap,
    layer_to_volume,
    layer_world_matrix,
    volume_to_layer_data,
    volume_to_layer_kwargs,
    volume_world_matrix,
    world_matrix_to_geometry,
)


def _random_direction(rng: np.random.Generator) -> tuple[float, ...]:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if rng.random() < 0.5:  # also cover left-handed (flipped) frames
        q = q @ np.diag([1.0, -1.0, 1.0])
    return tuple(q.reshape(-1))


def _sitk_physical(volume: Volume, idx_zyx: np.ndarray) -> np.ndarray:
    img = sitk.Image([int(s) for s in volume.size_xyz], sitk.sitkUInt8)
    img.SetSpacing(volume.spacing)
    img.SetOrigin(volume.origin)
    img.SetDirection(volume.direction)
    return np.array(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx_zyx[::-1]]))


def _world_points(kwargs: dict, idx_zyx: np.ndarray) -> np.ndarray:
    mat = layer_world_matrix(kwargs, 3)
    return (mat @ np.append(idx_zyx, 1.0))[:3]


def _volume(direction: tuple[float, ...], seed: int = 1) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(
        rng.normal(size=(5, 6, 7)).astype(np.float32),
        spacing=(0.7, 1.3, 2.9),
        origin=(-12.5, 33.25, 7.0),
        direction=direction,
    )


IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_identity_direction_uses_scale_and_translate_only() -> None:
    vol = _volume(IDENTITY)
    kwargs = volume_to_layer_kwargs(vol, name="ct")
    assert kwargs["scale"] == (2.9, 1.3, 0.7)
    assert kwargs["translate"] == (7.0, 33.25, -12.5)
    assert "affine" not in kwargs
    assert kwargs["name"] == "ct"
    assert kwargs["metadata"][METADATA_KEY]["spacing"] == [0.7, 1.3, 2.9]


@pytest.mark.parametrize("seed", range(6))
def test_layer_transform_matches_simpleitk_physical_points(seed: int) -> None:
    rng = np.random.default_rng(seed)
    direction = IDENTITY if seed == 0 else _random_direction(rng)
    vol = _volume(direction, seed)
    kwargs = volume_to_layer_kwargs(vol)
    np.testing.assert_allclose(layer_world_matrix(kwargs, 3), volume_world_matrix(vol), atol=1e-12)
    for idx in rng.uniform(-2, 8, size=(10, 3)):
        expected = _sitk_physical(vol, idx)
        np.testing.assert_allclose(_world_points(kwargs, idx), expected[::-1], atol=1e-9)


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")
def test_napari_layer_data_to_world_matches_simpleitk(oblique_volume: Volume) -> None:
    layers = pytest.importorskip("napari.layers")
    rng = np.random.default_rng(3)
    for vol in (oblique_volume, _volume(IDENTITY)):
        data, kwargs, _ = volume_to_layer_data(vol)
        layer = layers.Image(data, **kwargs)
        for idx in rng.uniform(0, 6, size=(8, 3)):
            np.testing.assert_allclose(layer.data_to_world(idx), _sitk_physical(vol, idx)[::-1], atol=1e-9)


def test_round_trip_is_exact_for_unmodified_layer(oblique_volume: Volume) -> None:
    data, kwargs, kind = volume_to_layer_data(oblique_volume)
    back = layer_to_volume(data, kwargs, layer_type=kind)
    assert type(back) is Volume
    assert back.spacing == oblique_volume.spacing
    assert back.origin == oblique_volume.origin
    assert back.direction == oblique_volume.direction
    np.testing.assert_array_equal(back.array, oblique_volume.array)


def test_round_trip_without_stored_geometry_is_within_tolerance(oblique_volume: Volume) -> None:
    kwargs = volume_to_layer_kwargs(oblique_volume)
    del kwargs["metadata"]
    back = layer_to_volume(oblique_volume.array, kwargs)
    assert back.same_grid(oblique_volume, tol=1e-9)


def test_moved_layer_is_written_where_it_is_shown(oblique_volume: Volume) -> None:
    kwargs = volume_to_layer_kwargs(oblique_volume)
    kwargs["translate"] = (1.0, -2.0, 3.0)  # the user dragged the layer (world z, y, x)
    back = layer_to_volume(oblique_volume.array, kwargs)
    idx = np.array([1.5, 2.0, 3.25])
    expected_world = _world_points(kwargs, idx)
    np.testing.assert_allclose(_sitk_physical(back, idx)[::-1], expected_world, atol=1e-9)
    # napari applies `translate` before `affine`, so the world shift is the affine's rotation of it
    shift_zyx = kwargs["affine"][:3, :3] @ np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(np.subtract(back.origin, oblique_volume.origin), shift_zyx[::-1], atol=1e-9)


def test_rotated_layer_keeps_orthonormal_direction() -> None:
    vol = _volume(IDENTITY)
    kwargs = volume_to_layer_kwargs(vol)
    c, s = np.cos(0.3), np.sin(0.3)
    kwargs["rotate"] = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    back = layer_to_volume(vol.array, kwargs)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-12)
    d = back.direction_matrix
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-12)
    assert not np.allclose(back.direction, IDENTITY)


def test_sheared_layer_is_refused_with_guidance() -> None:
    vol = _volume(IDENTITY)
    kwargs = volume_to_layer_kwargs(vol)
    kwargs["shear"] = [0.2, 0.0, 0.0]
    with pytest.raises(GeometryMismatchError, match="shear"):
        layer_to_volume(vol.array, kwargs)


def test_world_matrix_to_geometry_inverts_volume_world_matrix(oblique_volume: Volume) -> None:
    spacing, origin, direction = world_matrix_to_geometry(volume_world_matrix(oblique_volume))
    np.testing.assert_allclose(spacing, oblique_volume.spacing, atol=1e-12)
    np.testing.assert_allclose(origin, oblique_volume.origin, atol=1e-12)
    np.testing.assert_allclose(direction, oblique_volume.direction, atol=1e-12)
    with pytest.raises(InvalidInputError):
        world_matrix_to_geometry(np.eye(3))


def test_two_d_layer_becomes_single_slice() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    vol = layer_to_volume(arr, {"scale": (0.5, 0.25), "translate": (10.0, 20.0)})
    assert vol.shape == (1, 3, 4)
    assert vol.spacing == (0.25, 0.5, 1.0)
    assert vol.origin == (20.0, 10.0, 0.0)


@pytest.mark.parametrize(
    ("data", "meta", "error"),
    [
        (np.zeros((2, 3, 4, 5), np.float32), {}, DimensionError),
        (np.zeros((4, 5, 3), np.uint8), {"rgb": True}, DimensionError),
        ([np.zeros((4, 4, 4)), np.zeros((2, 2, 2))], {"multiscale": True}, DimensionError),
        (object(), {}, InvalidInputError),
    ],
)
def test_unsupported_layers_raise_medgen_errors(data: object, meta: dict, error: type) -> None:
    with pytest.raises(error) as info:
        layer_to_volume(data, meta)
    assert isinstance(info.value, MedGenError)
    assert "e.g." in str(info.value) or "convert" in str(info.value)


def test_array_like_data_is_accepted() -> None:
    class ArrayLike:
        def __array__(self, dtype=None, copy=None):
            return np.ones((2, 3, 4), dtype=np.float32)

    assert layer_to_volume(ArrayLike(), {}).shape == (2, 3, 4)


def test_labels_get_compact_integer_dtype_and_are_copied(oblique_labels: LabelMap) -> None:
    data, kwargs, kind = volume_to_layer_data(oblique_labels)
    assert kind == "labels"
    assert data.flags.writeable and not np.shares_memory(data, oblique_labels.array)
    wide = data.astype(np.int64)
    wide[0, 0, 0] = 300
    back = layer_to_volume(wide, kwargs, layer_type="labels")
    assert isinstance(back, LabelMap)
    assert back.array.dtype == np.uint16
    assert back.array[0, 0, 0] == 300
    assert wide.dtype == np.int64  # input untouched


def test_labels_layer_to_labelmap_uses_reference_geometry(
    oblique_volume: Volume, oblique_labels: LabelMap
) -> None:
    data, kwargs, _ = volume_to_layer_data(oblique_labels)
    del kwargs["metadata"]
    labels = labels_layer_to_labelmap(data, oblique_volume, kwargs)
    assert labels.same_grid(oblique_volume, tol=0.0)
    np.testing.assert_array_equal(labels.array, oblique_labels.array)

    kwargs["translate"] = (0.0, 0.0, 5.0)
    with pytest.raises(GeometryMismatchError, match="not on the image grid"):
        labels_layer_to_labelmap(data, oblique_volume, kwargs)
    with pytest.raises(GeometryMismatchError):
        labels_layer_to_labelmap(data[:-1], oblique_volume, volume_to_layer_kwargs(oblique_labels))


def test_image_display_kwargs_use_robust_percentiles() -> None:
    arr = np.zeros((10, 10, 10), dtype=np.float32)
    arr[..., :5] = 100.0
    arr[0, 0, 0] = 1e6  # a single hot voxel must not set the window
    limits = image_display_kwargs(Volume(arr))["contrast_limits"]
    assert limits[0] == 0.0 and limits[1] <= 100.0 + 1e-6
    assert image_display_kwargs(Volume(np.full((2, 2, 2), 7.0)))["contrast_limits"] == (7.0, 8.0)


def test_header_survives_round_trip() -> None:
    vol = Volume(np.zeros((2, 2, 2), np.int16), metadata={"modality": "CT", "source_path": "/x/ct.nii.gz"})
    kwargs = volume_to_layer_kwargs(vol, name="ct")
    assert kwargs["metadata"][METADATA_KEY]["source_path"] == "/x/ct.nii.gz"
    back = layer_to_volume(vol.array, kwargs)
    assert back.metadata["modality"] == "CT"
    assert back.metadata["layer_name"] == "ct"


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")
def test_napari_layer_objects_convert_back(oblique_volume: Volume, oblique_labels: LabelMap) -> None:
    layers = pytest.importorskip("napari.layers")
    image = layers.Layer.create(*volume_to_layer_data(oblique_volume, name="t1"))
    labels = layers.Layer.create(*volume_to_layer_data(oblique_labels, name="seg"))
    back = layer_to_volume(image)
    assert type(back) is Volume and back.same_grid(oblique_volume, tol=1e-9)
    assert back.metadata["layer_name"] == "t1"
    lab = labels_layer_to_labelmap(labels, back)
    assert isinstance(lab, LabelMap) and lab.same_grid(oblique_volume, tol=1e-9)
    np.testing.assert_array_equal(lab.array, oblique_labels.array)
    labels.translate = (0.0, 4.0, 0.0)
    with pytest.raises(GeometryMismatchError):
        labels_layer_to_labelmap(labels, back)
