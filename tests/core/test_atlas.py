"""The MNI152 atlas prior for removal (`core.atlas`): registration recovers a known affine, nothing under the region
is read, the atlas-guided fill restores anatomy a harmonic fill blurs, and a useless atlas falls back honestly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_medgen.core.atlas import ATLAS_FILES, atlas_file, atlas_harmonic_fill, fit_atlas_intensity, register_atlas
from napari_medgen.core.inpainting import harmonic_fill


@pytest.fixture(scope="module")
def mni() -> dict:
    """The MNI T1 template cropped and shifted by 6 mm (a scan that is not the atlas's own grid), with a 30 mm ball
    in the right hemisphere's white matter and cortex as the region."""
    from napari_medgen.core.io import read_volume

    volume = read_volume(atlas_file("t1"))
    arr = np.asarray(volume.array, dtype=np.float32)[20:170, 20:215, 15:185]
    origin = np.asarray(volume.origin) + volume.direction_matrix @ (np.array([15, 20, 20]) + [6.0, -6.0, 0.0])
    zz, yy, xx = np.indices(arr.shape)
    region = (zz - 85) ** 2 + (yy - 95) ** 2 + (xx - 55) ** 2 <= 15**2
    brain = ndimage.binary_fill_holes(arr > 0)
    return {"image": arr, "region": region & brain, "brain": brain, "origin": tuple(origin),
            "direction": volume.direction}


def test_the_atlas_files_ship_inside_nilearn() -> None:
    for name in ATLAS_FILES:
        assert atlas_file(name).is_file()


def test_registration_finds_the_atlas_and_ignores_the_region(mni: dict) -> None:
    image, region, brain = mni["image"], mni["region"], mni["brain"]
    valid = brain & ~region
    tissue = register_atlas(image, valid, (1, 1, 1), mni["origin"], mni["direction"])
    assert set(tissue) == {"gm", "wm", "csf"} and tissue["wm"].shape == image.shape
    # the registered white matter lies on this scan's bright tissue (the template is the scan, shifted)
    wm = tissue["wm"] > 0.5
    assert image[wm & valid].mean() > np.percentile(image[brain], 70)
    painted = image.copy()
    painted[region] = np.random.default_rng(0).uniform(0, 255, int(region.sum()))
    again = register_atlas(painted, valid, (1, 1, 1), mni["origin"], mni["direction"])
    for name in tissue:
        np.testing.assert_array_equal(again[name], tissue[name])


def test_the_atlas_guided_fill_restores_what_a_harmonic_fill_blurs(mni: dict) -> None:
    image, region, brain = mni["image"], mni["region"], mni["brain"]
    tissue = register_atlas(image, brain & ~region, (1, 1, 1), mni["origin"], mni["direction"])
    voided = np.where(region, 0, image).astype(np.float32)
    fill, fit = atlas_harmonic_fill(voided, region, brain=brain, tissue=tissue)
    assert fit.used and fit.r2 > 0.5
    np.testing.assert_array_equal(fill[~region], voided[~region])
    smooth = harmonic_fill(voided, region, brain=brain, brain_aware=True)
    error_atlas = np.abs(fill - image)[region].mean()
    error_harmonic = np.abs(smooth - image)[region].mean()
    assert error_atlas < 0.7 * error_harmonic
    painted = image.copy()
    painted[region] = 255
    np.testing.assert_array_equal(atlas_harmonic_fill(painted, region, brain=brain, tissue=tissue)[0], fill)


def test_an_atlas_that_explains_nothing_falls_back_to_the_harmonic_fill(mni: dict) -> None:
    image, region, brain = mni["image"], mni["region"], mni["brain"]
    rng = np.random.default_rng(0)
    noise = {name: rng.uniform(0, 1, image.shape).astype(np.float32) for name in ("gm", "wm", "csf")}
    fit = fit_atlas_intensity(image, region, brain, noise)
    assert not fit.used and "explains too little" in fit.reason and fit.estimate is None
    fill, fit = atlas_harmonic_fill(image, region, brain=brain, tissue=noise)
    np.testing.assert_array_equal(fill, harmonic_fill(np.where(region, 0, image), region, brain=brain,
                                                      brain_aware=True))
    empty = {name: np.zeros(image.shape, np.float32) for name in ("gm", "wm", "csf")}
    assert "does not cover" in fit_atlas_intensity(image, region, brain, empty).reason
