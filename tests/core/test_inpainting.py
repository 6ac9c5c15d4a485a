"""Classical inpainting fills: nothing under the region is read, outside is untouched, exact where theory says."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medgen.core.inpainting import (
    estimate_mirror_index,
    harmonic_fill,
    mean_fill,
    mirror_fill,
    mirror_harmonic_fill,
)
from napari_medgen.errors import InvalidInputError

FILLS = [mean_fill, harmonic_fill, mirror_fill, mirror_harmonic_fill]
SHAPE = (24, 28, 32)


def _ellipsoid(shape: tuple[int, int, int], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def _symmetric_head(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A left-right symmetric 'head' (mirror x -> 31 - x) with textured tissue and background 0."""
    rng = np.random.default_rng(seed)
    brain = _ellipsoid(SHAPE, (11.5, 13.5, 15.5), (10, 12, 13))
    tissue = rng.normal(100.0, 10.0, SHAPE)
    tissue = tissue + tissue[:, :, ::-1]
    return np.where(brain, tissue, 0.0).astype(np.float32), brain


def _region() -> np.ndarray:
    return _ellipsoid(SHAPE, (12, 13, 9), (4, 5, 3))


@pytest.mark.parametrize("fill", FILLS)
def test_outside_is_bit_identical_and_output_is_float32(fill) -> None:
    image, brain = _symmetric_head()
    image = (image * 7).astype(np.int16)
    region = _region()
    out = fill(image, region, brain=brain)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_array_equal(out[~region], image[~region].astype(np.float32))
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("fill", FILLS)
@pytest.mark.parametrize("with_brain", [True, False])
def test_fill_does_not_read_under_the_region(fill, with_brain: bool) -> None:
    image, brain = _symmetric_head(1)
    region = _region()
    rng = np.random.default_rng(5)
    kwargs = {"brain": brain} if with_brain else {}
    voided = np.where(region, 0.0, image).astype(np.float32)
    noisy = image.copy()
    noisy[region] = rng.normal(0, 1e4, int(region.sum()))
    nan = image.copy()
    nan[region] = np.nan
    reference = fill(voided, region, **kwargs)
    for painted in (image, noisy, nan):
        np.testing.assert_array_equal(fill(painted, region, **kwargs), reference)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.8, 0.8)])
def test_harmonic_fill_of_a_linear_ramp_is_exact(spacing) -> None:
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij")
    ramp = (2.0 * z - 0.5 * y + 1.5 * x + 10.0).astype(np.float32)
    region = _region()
    out = harmonic_fill(ramp, region, spacing_zyx=spacing)
    np.testing.assert_allclose(out[region], ramp[region], atol=1e-3)


def test_harmonic_fill_of_a_large_region_uses_the_coarse_start_and_stays_exact() -> None:
    shape = (48, 48, 48)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    ramp = (z + 2 * y - 3 * x).astype(np.float32)
    region = np.zeros(shape, bool)
    region[4:44, 4:44, 4:44] = True  # 64 000 unknowns: above the coarse-grid threshold
    out = harmonic_fill(ramp, region)
    np.testing.assert_allclose(out[region], ramp[region], atol=1e-3)


def test_region_touching_the_array_border_uses_zero_flux_faces() -> None:
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij")
    ramp = (3.0 * x - y).astype(np.float32)  # constant along z: the z faces carry no flux
    region = np.zeros(SHAPE, bool)
    region[:6, 8:20, 8:20] = True
    np.testing.assert_allclose(harmonic_fill(ramp, region)[region], ramp[region], atol=1e-3)


def test_mean_fill_is_the_mean_of_the_brain_shell() -> None:
    image = np.zeros(SHAPE, np.float32)
    brain = np.zeros(SHAPE, bool)
    brain[:, :, 4:] = True
    image[brain] = 50.0
    region = np.zeros(SHAPE, bool)
    region[10:14, 10:14, 5:9] = True  # 1 voxel from the background on the left
    out = mean_fill(image, region, brain=brain)
    np.testing.assert_allclose(out[region], 50.0)


@pytest.mark.parametrize("fill", [mirror_fill, mirror_harmonic_fill])
@pytest.mark.parametrize("with_brain", [True, False])
def test_mirror_fill_recovers_a_left_right_symmetric_volume(fill, with_brain: bool) -> None:
    image, brain = _symmetric_head(2)
    region = _region()
    assert estimate_mirror_index(image, brain, exclude=region) == SHAPE[2] - 1
    out = fill(np.where(region, 0, image), region, **({"brain": brain} if with_brain else {}))
    np.testing.assert_allclose(out[region], image[region], atol=1e-3)


def test_mirror_fill_falls_back_to_harmonic_where_the_mirror_is_in_the_region() -> None:
    image = np.full(SHAPE, 20.0, np.float32)
    region = np.zeros(SHAPE, bool)
    region[8:16, 8:16, 12:20] = True  # straddles the midline: mirrored voxels are in the region
    out = mirror_fill(image, region, brain=np.ones(SHAPE, bool), mirror_index=SHAPE[2] - 1)
    np.testing.assert_allclose(out[region], 20.0, atol=1e-3)


@pytest.mark.parametrize("fill", FILLS)
def test_bad_inputs_raise_clear_errors(fill) -> None:
    image, brain = _symmetric_head()
    region = _region()
    with pytest.raises(InvalidInputError, match="same voxel grid"):
        fill(image, region[:-1])
    with pytest.raises(InvalidInputError, match="empty"):
        fill(image, np.zeros(SHAPE, bool))
    with pytest.raises(InvalidInputError, match="whole image"):
        fill(image, np.ones(SHAPE, bool))
    with pytest.raises(InvalidInputError, match="3D"):
        fill(image[0], region[0])
    with pytest.raises(InvalidInputError, match="spacing_zyx"):
        fill(image, region, spacing_zyx=(1.0, 0.0, 1.0))
    with pytest.raises(InvalidInputError, match="brain mask"):
        fill(image, region, brain=brain[1:])
    bad = image.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        fill(bad, region)
