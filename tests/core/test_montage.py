"""Montages read the same whatever the direction matrix, at physical aspect."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_medgen.core.montage import montage_image, save_montage
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import GeometryMismatchError, InvalidInputError


def _blob(direction: tuple[float, ...]) -> tuple[Volume, LabelMap]:
    z, y, x = np.mgrid[0:10, 0:20, 0:30]
    arr = (x * 1.0).astype(np.float32)  # intensity grows along the x index
    lab = ((x - 20) ** 2 + (y - 10) ** 2 + ((z - 5) * 2) ** 2 < 16).astype(np.uint8)
    vol = Volume(arr, spacing=(1.0, 1.0, 3.0), direction=direction)
    return vol, vol.as_labels(lab)


def test_flipped_direction_gives_the_same_picture() -> None:
    vol, lab = _blob((1, 0, 0, 0, 1, 0, 0, 0, 1))
    flipped_x = Volume(
        vol.array[:, :, ::-1], spacing=vol.spacing, origin=(29.0, 0.0, 0.0), direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    flipped_lab = flipped_x.as_labels(lab.array[:, :, ::-1])
    a = np.asarray(montage_image(vol, lab))
    b = np.asarray(montage_image(flipped_x, flipped_lab))
    np.testing.assert_array_equal(a, b)
    assert a.shape[2] == 3
    # label overlay is visible (coloured pixels present)
    assert np.any(a[..., 0] != a[..., 2])


def test_physical_aspect_and_atomic_png(tmp_path) -> None:
    vol, lab = _blob((1, 0, 0, 0, 1, 0, 0, 0, 1))
    out = save_montage(tmp_path / "m.png", vol, lab, panel_height=90)
    img = Image.open(out)
    assert img.height == 90  # z extent 30 mm == y extent 20 mm? tallest panel defines the height
    assert list(tmp_path.iterdir()) == [out]
    with pytest.raises(InvalidInputError, match="PNG"):
        save_montage(tmp_path / "m.jpg", vol)


def test_label_grid_must_match() -> None:
    vol, lab = _blob((1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(GeometryMismatchError):
        montage_image(vol, lab.with_array(lab.array, origin=(5.0, 0.0, 0.0)))
