"""The vectorised batch gives, for every crop and every feature, what one ROI at a time gives.

Crops are deliberately varied: ROI sizes from a slab to a big ellipsoid, a flat (single gray level) crop,
a two-level crop, float intensities with a tiny range, anisotropic spacing, and crops that cannot be
computed (empty mask, NaN inside the mask, one voxel) which must come back as NaN rows with a warning.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.radiomics import extract_features, extract_features_batch
from napari_medgen.radiomics import extractor as extractor_mod

SPACING = (0.7, 0.8, 1.6)  # x, y, z: anisotropic


def _crops(n_extra_bad: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    shape = (12, 13, 14)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    images = rng.normal(100, 30, size=(9, *shape)).round()
    masks = np.zeros((9, *shape), dtype=bool)
    radii = [(2.5, 3, 3), (5, 5.5, 6), (4, 2, 5), (3.5, 4, 4), (5, 6, 6.5)]
    for k, (a, b, c) in enumerate(radii):
        masks[k] = ((zz - 6) / a) ** 2 + ((yy - 6) / b) ** 2 + ((xx - 7) / c) ** 2 < 1
    masks[1, :, :, :5] = False  # cut ellipsoid
    images[2] = 40.0  # flat: one gray level
    images[3] = np.where(rng.random(shape) < 0.5, 50.0, 61.0)  # two gray levels
    images[4] = rng.normal(0, 1, shape) * 0.01  # float values, tiny range (binWidth below)
    masks[5, 6, 2:10, 3:11] = True  # single slice: 3D directions leaving the plane are dropped
    # crops that cannot be computed
    masks[6, 3, 3, 3] = True  # one voxel: fails minimumROIDimensions=2
    images[7, 5, 5, 5] = np.nan
    masks[7, 4:8, 4:8, 4:8] = True  # NaN inside the mask
    # masks[8] stays empty
    return images, masks


def _single(image: np.ndarray, mask: np.ndarray, settings: dict) -> dict[str, float]:
    return extract_features(Volume(image, spacing=SPACING), LabelMap(mask.astype(np.uint8), spacing=SPACING),
                            settings=settings)


def _same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _check_rows(batch: dict[str, np.ndarray], images: np.ndarray, masks: np.ndarray, rows: list[int],
                settings: dict) -> None:
    bad = []
    for k in rows:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = _single(images[k], masks[k], settings)
        assert set(ref) == set(batch), "batch and single ROI must name the same features"
        bad += [f"crop {k} {name}: single {v!r} batch {batch[name][k]!r}" for name, v in ref.items()
                if not _same(float(batch[name][k]), v)]
    assert not bad, "\n".join(bad[:30])


def test_batch_equals_single_roi_for_every_feature() -> None:
    images, masks = _crops()
    settings = {"binWidth": 10}
    with pytest.warns(RuntimeWarning) as record:
        batch = extract_features_batch(images, masks, SPACING, settings)
    messages = " ".join(str(w.message) for w in record)
    assert "[8]" in messages and "empty" in messages
    assert "[7]" in messages and "NaN" in messages
    assert "[6]" in messages and "minimumROIDimensions" in messages
    assert len(batch) == 107
    for k in (6, 7, 8):
        assert all(np.isnan(v[k]) for v in batch.values()), f"crop {k} must be a NaN row"
    ok_rows = [0, 1, 2, 3, 5]
    assert all(np.isfinite(batch["original_firstorder_Mean"][ok_rows]))
    _check_rows(batch, images, masks, ok_rows, settings)
    # the float crop needs a bin width that suits its range
    small = {"binWidth": 0.002}
    _check_rows(extract_features_batch(images[4:5], masks[4:5], SPACING, small), images[4:5], masks[4:5], [0], small)


def test_flat_and_single_slice_crops_give_pyradiomics_conventions() -> None:
    images, masks = _crops()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        batch = extract_features_batch(images[2:3], masks[2:3], SPACING, {"binWidth": 10})
    # one gray level: correlation and MCC are 1 by convention, IMC1/2 and contrasts are 0
    for name, expected in [("glcm_Correlation", 1.0), ("glcm_MCC", 1.0), ("glcm_Imc1", 0.0), ("glcm_Imc2", 0.0),
                           ("glcm_Contrast", 0.0), ("ngtdm_Contrast", 0.0), ("ngtdm_Coarseness", 1e6),
                           ("firstorder_Entropy", 0.0), ("firstorder_Uniformity", 1.0)]:
        assert batch[f"original_{name}"][0] == pytest.approx(expected, abs=1e-12), name


@pytest.mark.parametrize(
    "settings",
    [
        {"binWidth": 25, "distances": [1, 2]},
        {"binCount": 12, "gldm_a": 1},
        {"binWidth": 10, "force2D": True},
        {"binWidth": 10, "weightingNorm": "euclidean", "symmetricalGLCM": False},
        {"binWidth": 10, "resegmentRange": [-1.5, 1.5], "resegmentMode": "sigma", "voxelArrayShift": 50},
    ],
)
def test_batch_equals_single_roi_across_settings(settings: dict) -> None:
    images, masks = _crops()
    rows = [0, 1, 3, 5]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        batch = extract_features_batch(images[rows], masks[rows], SPACING, settings, workers=1)
    _check_rows(batch, images[rows], masks[rows], list(range(len(rows))), settings)


def test_chunking_threads_and_memory_splits_do_not_change_values(monkeypatch: pytest.MonkeyPatch) -> None:
    images, masks = _crops()
    keep = [0, 1, 2, 3, 4, 5]
    images, masks = images[keep], masks[keep]
    settings = {"binWidth": 3}
    ref = extract_features_batch(images, masks, SPACING, settings, workers=1)
    monkeypatch.setattr(extractor_mod, "_MAX_LATTICE_VOXELS", 4000)  # one chunk per crop or two
    monkeypatch.setattr(extractor_mod, "_MIN_CROPS_PER_WORKER", 1)
    monkeypatch.setattr(extractor_mod, "_MAX_GLCM_ENTRIES", 2000)  # forces the GLCM-size halving
    got = extract_features_batch(images, masks, SPACING, settings, workers=2)
    for name, v in ref.items():
        np.testing.assert_allclose(got[name], v, rtol=1e-12, atol=1e-14, err_msg=name)


def test_batch_does_not_modify_inputs_and_accepts_integer_images() -> None:
    images, masks = _crops()
    images, masks = images[:2], masks[:2]
    before_i, before_m = images.copy(), masks.copy()
    as_float = extract_features_batch(images, masks, SPACING, {"binWidth": 10})
    as_int = extract_features_batch(images.astype(np.int16), masks.astype(np.uint8), SPACING, {"binWidth": 10})
    assert np.array_equal(images, before_i) and np.array_equal(masks, before_m)
    for name, v in as_float.items():
        np.testing.assert_allclose(as_int[name], v, rtol=1e-12, err_msg=name)


def test_batch_with_only_unusable_crops_returns_nan_rows() -> None:
    masks = np.zeros((2, 4, 4, 4), dtype=bool)
    with pytest.warns(RuntimeWarning, match="empty mask"):
        out = extract_features_batch(np.zeros((2, 4, 4, 4)), masks, (1.0, 1.0, 1.0),
                                     feature_classes=["firstorder", "glcm"])
    assert len(out) == 18 + 24
    assert all(v.shape == (2,) and np.isnan(v).all() for v in out.values())
