"""Side-by-side with pyradiomics on data the baseline never saw (a BRATS tumour crop) and synthetic crops."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from radiomics_test_helpers import close, to_sitk

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.radiomics import extract_features, extract_features_batch


def _reference(image: Volume, labels: LabelMap, settings: dict) -> dict[str, float]:
    radiomics = pytest.importorskip("radiomics")
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    radiomics.setVerbosity(logging.ERROR)
    ext = featureextractor.RadiomicsFeatureExtractor(**settings)
    ext.disableAllFeatures()
    for cls in ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"):
        ext.enableFeatureClassByName(cls)
    res = ext.execute(to_sitk(image), to_sitk(labels), label=settings.get("label", 1))
    return {k: float(v) for k, v in res.items() if k.startswith("original_")}


def _compare(ours: dict[str, float], ref: dict[str, float]) -> list[str]:
    bad = []
    for name, value in ref.items():
        if not close(ours.get(name, float("nan")), value, rtol=1e-4):
            bad.append(f"{name}: ref {value!r} ours {ours.get(name)!r}")
    return bad


@pytest.mark.realdata
def test_brats_tumour_crop_matches_pyradiomics(shared_data: Path) -> None:
    import SimpleITK as sitk

    case = shared_data / "brats2015_subset" / "brats_2013_pat0001_1"
    img = sitk.ReadImage(str(case / "T1c_subtrMeanDivStd.nii.gz"))
    lab = sitk.ReadImage(str(case / "OTMultiClass.nii.gz"))
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    seg = sitk.GetArrayFromImage(lab)
    idx = np.nonzero(seg == 4)  # enhancing tumour
    centre = [int(np.median(i)) for i in idx]
    sl = tuple(slice(max(c - 12, 0), c + 12) for c in centre)
    geo = {"spacing": img.GetSpacing(), "direction": img.GetDirection()}
    image = Volume(arr[sl], **geo)
    labels = LabelMap(seg[sl].astype(np.uint8), **geo)
    settings = {"binWidth": 0.1, "label": 4, "voxelArrayShift": 10}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ours = extract_features(image, labels, settings=settings)
    ref = _reference(image, labels, settings)
    assert len(ref) == len(ours) == 107
    bad = _compare(ours, ref)
    assert not bad, f"{len(ref) - len(bad)}/{len(ref)} matched:\n" + "\n".join(bad)


def test_synthetic_batch_matches_pyradiomics() -> None:
    rng = np.random.default_rng(3)
    n = 3
    images = rng.normal(100, 30, size=(n, 12, 12, 12)).round()
    zz, yy, xx = np.mgrid[:12, :12, :12]
    masks = np.stack([((zz - 6) ** 2 + (yy - 6) ** 2 / 2 + (xx - 5) ** 2) < r * r for r in (3, 4, 5)])
    masks[1, :, :, :3] = False
    masks = np.concatenate([masks, np.zeros((1, 12, 12, 12), bool)])
    images = np.concatenate([images, images[:1]])
    spacing = (0.8, 0.9, 2.0)
    settings = {"binWidth": 10}
    with pytest.warns(RuntimeWarning, match="empty mask"):
        batch = extract_features_batch(images, masks, spacing, settings)
    assert all(np.isnan(v[-1]) for v in batch.values()), "an empty mask must give NaN, not stop the batch"
    for k in range(n):
        image = Volume(images[k], spacing=spacing)
        labels = LabelMap(masks[k].astype(np.uint8), spacing=spacing)
        ref = _reference(image, labels, settings)
        bad = _compare({name: float(v[k]) for name, v in batch.items()}, ref)
        assert not bad, f"crop {k}: " + "\n".join(bad)


def _reference_classes(image: np.ndarray, mask: np.ndarray, spacing: tuple, settings: dict,
                       classes: tuple[str, ...]) -> dict[str, float]:
    radiomics = pytest.importorskip("radiomics")
    import SimpleITK as sitk
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    radiomics.setVerbosity(logging.ERROR)
    ext = featureextractor.RadiomicsFeatureExtractor(**settings)
    ext.disableAllFeatures()
    for cls in classes:
        ext.enableFeatureClassByName(cls)
    img = sitk.GetImageFromArray(image)
    img.SetSpacing(spacing)
    lab = sitk.GetImageFromArray(mask.astype(np.uint8))
    lab.SetSpacing(spacing)
    res = ext.execute(img, lab, label=1)
    return {k: float(v) for k, v in res.items() if k.startswith("original_")}


def _varied_crops() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    shape = (11, 12, 13)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    images = rng.normal(100, 30, size=(5, *shape)).round()
    masks = np.stack([((zz - 5) / a) ** 2 + ((yy - 6) / b) ** 2 + ((xx - 6) / c) ** 2 < 1
                      for a, b, c in [(4, 5, 5.5), (3, 3, 3), (5, 4, 6), (3, 5, 4), (1, 1, 1)]])
    images[1] = 30.0  # one gray level
    images[2] = np.where(rng.random(shape) < 0.5, 50.0, 61.0)  # two gray levels
    masks[4] = False
    masks[4, 5, 2:9, 3:10] = True  # a single slice: pyradiomics drops the directions that leave it
    return images, masks


@pytest.mark.parametrize(
    "settings",
    [
        {"binWidth": 10},
        {"binWidth": 25, "distances": [1, 2]},
        {"binCount": 16, "gldm_a": 1},
        {"binWidth": 10, "weightingNorm": "manhattan"},
        {"binWidth": 10, "force2D": True},
        {"binWidth": 10, "symmetricalGLCM": False},
        {"binWidth": 10, "resegmentRange": [-1, 1], "resegmentMode": "sigma", "voxelArrayShift": 100},
        {"binWidth": 0.7},
    ],
)
def test_batch_matches_pyradiomics_across_settings(settings: dict) -> None:
    classes = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
    images, masks = _varied_crops()
    spacing = (0.7, 0.8, 1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        batch = extract_features_batch(images, masks, spacing, settings, classes)
    bad = []
    for k in range(len(images)):
        ref = _reference_classes(images[k], masks[k], spacing, settings, classes)
        bad += [f"crop {k} {m}" for m in _compare({name: float(v[k]) for name, v in batch.items()}, ref)]
    assert not bad, "\n".join(bad[:30])
