"""shape2D features against pyradiomics: every 2x2 configuration, random masks, the baseline's slices."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from radiomics_test_helpers import close, to_sitk
from test_baseline import single_slice_pair

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import InvalidInputError
from napari_medgen.radiomics import extract_features, extract_features_batch
from napari_medgen.radiomics.shape2d import DEPRECATED_FEATURES, FEATURES, shape2d_features

ALL = FEATURES + DEPRECATED_FEATURES
# pyradiomics' general eigen-solver leaves ~1e-16 mm^2 of noise on a zero eigenvalue (collinear pixels);
# its square root (~3e-8) is absorbed by the absolute tolerance.
RTOL, ATOL = 1e-9, 1e-7


def _reference(image: Volume, labels: LabelMap, **settings: object) -> dict[str, float]:
    """pyradiomics shape2D features (the deprecated ones too) of ``labels`` == 1."""
    radiomics = pytest.importorskip("radiomics")
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    radiomics.setVerbosity(logging.ERROR)
    ext = featureextractor.RadiomicsFeatureExtractor(force2D=True, **settings)
    ext.disableAllFeatures()
    ext.enableFeaturesByName(shape2D=list(ALL))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 elongation of a single pixel
        res = ext.execute(to_sitk(image), to_sitk(labels))
    return {k.removeprefix("original_shape2D_"): float(v) for k, v in res.items() if "_shape2D_" in k}


def _reference_class(image: Volume, labels: LabelMap, force2d_dimension: int = 0) -> dict[str, float]:
    """pyradiomics' shape2D class itself, for ROIs its extractor will not pass on: one pixel, or one column wide
    (the extractor tests the extent along the SimpleITK axis numbered force2Ddimension, and requires it to be
    > 1: with 0 it skips masks one column wide; with 1 it never computes shape2D at all)."""
    radiomics = pytest.importorskip("radiomics")
    from radiomics.shape2D import RadiomicsShape2D

    radiomics.setVerbosity(logging.ERROR)
    cls = RadiomicsShape2D(to_sitk(image), to_sitk(labels), force2D=True, force2Ddimension=force2d_dimension)
    for name in ALL:
        cls.enableFeatureByName(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {k: float(v) for k, v in cls.execute().items()}


def _mismatches(ours: dict[str, float], ref: dict[str, float]) -> list[str]:
    assert set(ref) == set(ALL), sorted(ref)
    return [f"{k}: ref {ref[k]!r} ours {ours[k]!r}" for k in ALL if not close(ours[k], ref[k], RTOL, ATOL)]


def _volumes(mask: np.ndarray, spacing: tuple[float, float, float]) -> tuple[Volume, LabelMap]:
    rng = np.random.default_rng(1)
    image = Volume(rng.normal(100, 20, mask.shape), spacing=spacing)
    return image, LabelMap(mask.astype(np.uint8), spacing=spacing)


@pytest.mark.parametrize("config", range(1, 16))
def test_every_square_configuration_matches_pyradiomics(config: int) -> None:
    mask = np.array([[config & 1, config >> 1 & 1], [config >> 2 & 1, config >> 3 & 1]], dtype=bool)
    image, labels = _volumes(mask[None], (1.3, 0.7, 2.5))
    narrow = not mask.any(axis=0).all()  # a single column
    ref = _reference_class(image, labels) if narrow else _reference(image, labels, minimumROIDimensions=1)
    ours = shape2d_features(mask, (0.7, 1.3))  # (row, column) spacing = (y, x)
    assert not _mismatches(ours, ref)


def test_empty_square_is_nan() -> None:
    assert all(np.isnan(v) for v in shape2d_features(np.zeros((2, 2), bool), (1.0, 1.0)).values())


def test_saddles_keep_opposite_pixels_apart() -> None:
    # Two diagonal pixels: two diamonds of half a pixel each (a joined saddle would add half a pixel).
    for mask in (np.eye(2, dtype=bool), np.eye(2, dtype=bool)[::-1]):
        assert shape2d_features(mask, (2.0, 3.0))["MeshSurface"] == pytest.approx(6.0, rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_match_pyradiomics(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(4, 30, 2))
    mask = rng.random(shape) < rng.uniform(0.3, 0.8)
    mask[rng.integers(shape[0]), :] = True  # at least two dimensions
    spacing = (float(rng.uniform(0.3, 2.0)), float(rng.uniform(0.3, 2.0)), 4.0)
    image, labels = _volumes(mask[None], spacing)
    ref = _reference(image, labels)
    ours = extract_features(image, labels, settings={"force2D": True}, feature_classes=["shape2D"])
    assert set(ours) == {f"original_shape2D_{k}" for k in FEATURES}
    direct = shape2d_features(mask, (spacing[1], spacing[0]))
    assert not _mismatches(direct, ref)
    assert all(close(ours[f"original_shape2D_{k}"], ref[k], RTOL, ATOL) for k in FEATURES)


@pytest.mark.parametrize("dimension", [1, 2])
def test_other_force2d_dimensions_match_pyradiomics(dimension: int) -> None:
    rng = np.random.default_rng(10 + dimension)
    plane = rng.random((9, 13)) < 0.6
    plane[4] = True
    mask = np.expand_dims(plane, dimension)  # pyradiomics' class needs a one-thick array, as its extractor crops
    image, labels = _volumes(mask, (0.6, 1.1, 2.3))
    ref = _reference_class(image, labels, dimension)
    ours = extract_features(image, labels, settings={"force2D": True, "force2Ddimension": dimension},
                            feature_classes=["shape2D"])
    assert all(close(ours[f"original_shape2D_{k}"], ref[k], RTOL, ATOL) for k in FEATURES)


def test_convex_hull_shortcut_keeps_the_diameter(monkeypatch: pytest.MonkeyPatch) -> None:
    from napari_medgen.radiomics import shape2d

    rng = np.random.default_rng(7)
    mask = rng.random((48, 56)) < 0.5  # about 2700 mesh vertices: above the hull threshold
    hull = shape2d_features(mask, (0.9, 0.4))["MaximumDiameter"]
    monkeypatch.setattr(shape2d, "_HULL_ABOVE", 10**9)
    assert hull == pytest.approx(shape2d_features(mask, (0.9, 0.4))["MaximumDiameter"], rel=1e-14)


def test_batch_matches_single_rois() -> None:
    rng = np.random.default_rng(3)
    masks = np.zeros((4, 3, 12, 14), dtype=bool)
    for k in range(4):
        masks[k, k % 3] = rng.random((12, 14)) < 0.5
        masks[k, k % 3, 5] = True
    images = rng.normal(50, 10, masks.shape)
    spacing = (0.8, 1.4, 3.0)
    batch = extract_features_batch(images, masks, spacing, {"force2D": True}, ["shape2D"], workers=1)
    for k in range(4):
        single = shape2d_features(masks[k].any(axis=0), (1.4, 0.8))
        for name in FEATURES:
            assert close(batch[f"original_shape2D_{name}"][k], single[name], 1e-12, 0.0)


def test_needs_force2d_and_single_slice() -> None:
    mask = np.zeros((3, 6, 6), dtype=np.uint8)
    mask[1, 1:4, 1:5] = 1
    image, labels = _volumes(mask, (1.0, 1.0, 1.0))
    with pytest.raises(InvalidInputError, match="force2D=True"):
        extract_features(image, labels, feature_classes=["shape2D"])
    thick = labels.with_array(np.concatenate([mask[:2], mask[1:2]]))
    with pytest.raises(InvalidInputError, match="single slice"):
        extract_features(image, thick, settings={"force2D": True}, feature_classes=["shape2D"])


@pytest.mark.realdata
@pytest.mark.parametrize("case", ["brain1", "brain2", "breast1", "lung1", "lung2"])
def test_baseline_slices_match_installed_pyradiomics(shared_data: Path, case: str) -> None:
    import csv

    root = shared_data / "pyradiomics" / "data"
    rows = list(csv.reader((root / "baseline" / "baseline_shape2D.csv").open()))
    col = rows[0].index(f"{case}_shape2D") - 1
    diagnostics = {r[0]: r[1:][col] for r in rows[1:] if r[0].startswith("diagnostics_")}
    image, labels = single_slice_pair(root, case, diagnostics)
    ref = _reference(image, labels)
    ours = extract_features(image, labels, settings={"force2D": True}, feature_classes=["shape2D"])
    bad = [k for k in FEATURES if not close(ours[f"original_shape2D_{k}"], ref[k], 1e-9, 0.0)]
    assert not bad, {k: (ours[f"original_shape2D_{k}"], ref[k]) for k in bad}
    baseline = {r[0]: float(r[1:][col]) for r in rows[1:] if r[0].startswith("original_shape2D_")}
    assert all(close(ours[k], v, 1e-9, 0.0) for k, v in baseline.items()), baseline  # CSV has 12 digits
