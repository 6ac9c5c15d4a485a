"""Volume / LabelMap invariants: immutability, validation, geometry views."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import DimensionError, GeometryMismatchError, InvalidInputError


def test_array_is_read_only_and_source_untouched() -> None:
    source = np.zeros((2, 3, 4), dtype=np.float32)
    vol = Volume(source)
    with pytest.raises(ValueError):
        vol.array[0, 0, 0] = 1.0
    assert source.flags.writeable  # the caller's array keeps its flags


def test_geometry_views(oblique_volume: Volume) -> None:
    assert oblique_volume.shape == (7, 11, 13)
    assert oblique_volume.size_xyz == (13, 11, 7)
    assert oblique_volume.spacing_zyx == (2.9, 1.3, 0.7)
    mat = oblique_volume.index_to_physical_matrix()
    # index (x, y, z) = (1, 0, 0) moves by spacing_x along the first direction column
    step = mat @ np.array([1, 0, 0, 1.0]) - mat @ np.array([0, 0, 0, 1.0])
    np.testing.assert_allclose(step[:3], 0.7 * oblique_volume.direction_matrix[:, 0])
    assert np.linalg.det(oblique_volume.direction_matrix) == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"array": np.zeros((3, 3))}, DimensionError),
        ({"array": np.zeros((1, 2, 3, 4))}, DimensionError),
        ({"array": np.zeros((2, 2, 2)), "spacing": (1, 0, 1)}, InvalidInputError),
        ({"array": np.zeros((2, 2, 2)), "spacing": (1, 1)}, InvalidInputError),
        ({"array": np.zeros((2, 2, 2)), "origin": (0, np.nan, 0)}, InvalidInputError),
        ({"array": np.zeros((2, 2, 2)), "direction": (2, 0, 0, 0, 1, 0, 0, 0, 1)}, InvalidInputError),
        ({"array": np.array([[["a"]]])}, InvalidInputError),
    ],
)
def test_bad_volumes_raise_clear_errors(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        Volume(**kwargs)
    assert len(str(info.value)) > 20


def test_labelmap_rules() -> None:
    assert LabelMap(np.ones((1, 2, 2), dtype=bool)).array.dtype == np.uint8
    assert LabelMap(np.full((1, 2, 2), 2.0)).labels() == [2]
    with pytest.raises(InvalidInputError, match="integer"):
        LabelMap(np.full((1, 2, 2), 0.5))
    with pytest.raises(InvalidInputError, match=">= 0"):
        LabelMap(np.full((1, 2, 2), -1, dtype=np.int16))
    lm = LabelMap(np.array([[[0, 1], [2, 2]]], dtype=np.uint8))
    assert lm.mask(2).sum() == 2
    with pytest.raises(InvalidInputError, match="not present"):
        lm.mask(3)


def test_grid_checks(oblique_volume: Volume, oblique_labels: LabelMap) -> None:
    oblique_volume.require_same_grid(oblique_labels)
    moved = oblique_labels.with_array(oblique_labels.array, origin=(0.0, 0.0, 0.0))
    assert isinstance(moved, LabelMap)
    with pytest.raises(GeometryMismatchError, match="Resample"):
        oblique_volume.require_same_grid(moved)


def test_with_array_keeps_geometry_and_copies_metadata(oblique_volume: Volume) -> None:
    src = oblique_volume.with_array(oblique_volume.array, metadata={"k": "v"})
    out = src.with_array(np.zeros(src.shape))
    assert out.same_grid(src)
    out.metadata["k"] = "changed"
    assert src.metadata["k"] == "v"
