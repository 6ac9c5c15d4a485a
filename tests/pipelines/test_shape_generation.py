"""`generate_shape` / `place_shape` with the bundled shape-gan-lesion weights."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy import ndimage

from napari_medgen.core.geometry import index_to_physical
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import InvalidInputError
from napari_medgen.pipelines import shape_generation
from napari_medgen.pipelines.shape_generation import (
    PRESETS,
    USER_FEATURES,
    fill_features,
    generate_shape,
    place_shape,
    shape_controls,
)

MODEL = os.environ.get("MEDGEN_TEST_SHAPE_MODEL", "shape-gan-lesion")


@pytest.fixture(scope="module")
def round_8cc() -> LabelMap:
    return generate_shape({"VoxelVolume": 8000.0, "Sphericity": 0.7}, seed=3, model=MODEL)


def _centroid_mm(labels: LabelMap) -> np.ndarray:
    return index_to_physical(labels, np.argwhere(labels.array > 0).mean(axis=0))


def test_output_is_one_solid_centred_component_with_the_requested_volume(round_8cc: LabelMap) -> None:
    mask = round_8cc.array > 0
    assert round_8cc.labels() == [1] and round_8cc.spacing == (1.0, 1.0, 1.0)
    assert all(n % 2 == 1 for n in round_8cc.shape)
    centre = (np.asarray(round_8cc.shape) - 1) // 2
    np.testing.assert_allclose(index_to_physical(round_8cc, centre.astype(float)), 0.0, atol=1e-9)
    _, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert count == 1
    assert np.array_equal(ndimage.binary_fill_holes(mask), mask)
    volume = mask.sum() * 1.0
    assert volume == pytest.approx(8000.0, rel=0.1)
    assert np.linalg.norm(_centroid_mm(round_8cc)) < 15.0  # roughly centred on the origin
    assert round_8cc.metadata["requested_features"] == {"VoxelVolume": 8000.0, "Sphericity": 0.7}


def test_same_seed_same_mask_and_other_seeds_differ(round_8cc: LabelMap) -> None:
    again = generate_shape({"VoxelVolume": 8000.0, "Sphericity": 0.7}, seed=3, model=MODEL)
    assert np.array_equal(again.array, round_8cc.array)
    other = generate_shape({"VoxelVolume": 8000.0, "Sphericity": 0.7}, seed=4, model=MODEL)
    assert not np.array_equal(other.array, round_8cc.array)


def test_anisotropic_spacing_grid() -> None:
    labels = generate_shape(preset="medium", spacing=(0.7, 0.9, 3.0), seed=1, model=MODEL)
    assert labels.spacing == (0.7, 0.9, 3.0)
    assert all(n % 2 == 1 for n in labels.shape)
    extent = np.asarray(labels.size_xyz) * np.asarray(labels.spacing)
    assert np.ptp(extent) <= 2 * 3.0 + 1e-6  # a cube in mm (up to rounding to odd voxel counts), not in voxels
    centre_index = (np.asarray(labels.shape) - 1) / 2.0
    np.testing.assert_allclose(index_to_physical(labels, centre_index), 0.0, atol=1e-9)
    volume = (labels.array > 0).sum() * 0.7 * 0.9 * 3.0
    assert volume == pytest.approx(PRESETS["medium"]["VoxelVolume"], rel=0.2)


def test_unrequested_features_follow_the_requested_ones() -> None:
    from napari_medgen.hub import from_pretrained

    extra = from_pretrained(MODEL).hub_extra
    _, small = fill_features({"VoxelVolume": 1000.0}, extra)
    _, large = fill_features({"VoxelVolume": 20000.0}, extra)
    key = "lesion/original_shape_"
    assert small[key + "VoxelVolume"] == pytest.approx(1000.0, rel=1e-6)
    assert large[key + "SurfaceArea"] > 3 * small[key + "SurfaceArea"]
    assert large[key + "Maximum3DDiameter"] > small[key + "Maximum3DDiameter"]


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({"VoxelVolume": -5.0}, "must be > 0"),
        ({"VoxelVolume": 0.0}, "must be > 0"),
        ({"Sphericity": 1.2}, r"\(0, 1\]"),
        ({"Elongation": 0.0}, r"\(0, 1\]"),
        ({"Flatness": 1.5}, r"\(0, 1\]"),
        ({"Elongation": 0.4, "Flatness": 0.6}, "cannot exceed Elongation"),
        ({"VoxelVolume": 5e6}, "field of view"),
        ({"Maximum3DDiameter": 500.0}, "field of view"),
        ({"Volume": 100.0}, "Unknown shape feature 'Volume'.*VoxelVolume"),
        ({"Sphericity": float("nan")}, "finite"),
        ({"Sphericity": "round"}, "must be a number"),
    ],
)
def test_bad_requests(features: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        generate_shape(features, model=MODEL)


def test_bad_spacing_preset_and_crop() -> None:
    with pytest.raises(InvalidInputError, match="spacing"):
        generate_shape(spacing=(1, 0, 1), model=MODEL)
    with pytest.raises(InvalidInputError, match="Unknown preset"):
        generate_shape(preset="huge", model=MODEL)
    with pytest.raises(InvalidInputError, match="too small"):
        generate_shape({"VoxelVolume": 8000.0}, crop_size_mm=12.0, model=MODEL)


def test_controls_describe_the_intuitive_features() -> None:
    controls = {c.name: c for c in shape_controls(MODEL)}
    assert set(controls) == set(USER_FEATURES)
    for control in controls.values():
        assert control.min < control.default < control.max
    assert controls["VoxelVolume"].unit == "mm3" and controls["Sphericity"].max <= 1.0
    if MODEL == "shape-gan-lesion":
        assert shape_controls(MODEL) == shape_generation.SHAPE_CONTROLS


def test_place_shape_on_an_oblique_reference(round_8cc: LabelMap) -> None:
    direction = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    reference = Volume(np.zeros((30, 80, 70), dtype=np.float32), spacing=(1.0, 1.0, 2.0),
                       origin=(30.0, -20.0, 5.0), direction=direction)
    centre = np.asarray(index_to_physical(reference, np.array([15.0, 40.0, 35.0])))
    placed = place_shape(round_8cc, reference, centre)
    assert placed.same_grid(reference) and placed.labels() == [1]
    assert np.linalg.norm(_centroid_mm(placed) - (centre + _centroid_mm(round_8cc))) < 2.0
    assert (placed.array > 0).sum() * 2.0 == pytest.approx((round_8cc.array > 0).sum(), rel=0.1)
    with pytest.raises(InvalidInputError, match="outside the image"):
        place_shape(round_8cc, reference, (1000.0, 0.0, 0.0))
    with pytest.raises(InvalidInputError, match="three numbers"):
        place_shape(round_8cc, reference, (1.0, 2.0))
