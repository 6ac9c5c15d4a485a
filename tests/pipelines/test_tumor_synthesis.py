"""Tumour synthesis / removal / retexture / resize / move with the latent texture bridge (tiny untrained model).

The weights are random, so these tests check the contract, not image quality: the edit stays inside the
region (grown by the blend band), geometry and dtype survive, seeds reproduce, texture requests reach the
network, bad input is refused with the inputs untouched, and cancellation leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from napari_medgen.core.geometry import index_to_physical, physical_to_index
from napari_medgen.core.progress import CancelToken, ProgressEvent, run_job
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import (
    CancelledError,
    CheckpointError,
    DimensionError,
    GeometryMismatchError,
    InvalidInputError,
)
from napari_medgen.pipelines import tumor_synthesis as ts
from napari_medgen.radiomics.texture_condition import texture_feature_names

FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # axis-aligned, so allowed
ORIGIN = (37.5, -12.25, 4.0)
FAST = {"steps": 2}


@pytest.fixture
def scan(brain_phantom: tuple[Volume, LabelMap]) -> tuple[Volume, LabelMap]:
    """The 48^3 phantom on a flipped (diag(-1, -1, 1)), shifted grid: geometry mistakes cannot hide."""
    image, labels = brain_phantom
    moved = Volume(np.asarray(image.array), image.spacing, ORIGIN, FLIPPED, {"modality": "MR"})
    return moved, moved.as_labels(np.asarray(labels.array))


def snapshot(*volumes: Volume) -> list[tuple[Any, ...]]:
    return [(np.array(v.array, copy=True), v.spacing, v.origin, v.direction, dict(v.metadata)) for v in volumes]


def assert_unchanged(before: list[tuple[Any, ...]], *volumes: Volume) -> None:
    for (array, spacing, origin, direction, metadata), volume in zip(before, volumes, strict=True):
        np.testing.assert_array_equal(np.asarray(volume.array), array)
        assert np.asarray(volume.array).dtype == array.dtype
        assert (volume.spacing, volume.origin, volume.direction, dict(volume.metadata)) == (
            spacing, origin, direction, metadata)


def assert_same_grid(result: ts.EditResult, image: Volume) -> None:
    for out in (result.image, result.labels):
        assert out.shape == image.shape
        assert out.spacing == image.spacing and out.origin == image.origin and out.direction == image.direction
    assert isinstance(result.labels, LabelMap)


def grown(region: np.ndarray, mm: float) -> np.ndarray:
    return ndimage.distance_transform_edt(~region) <= mm  # 1 mm isotropic


# ---- synthesis -----------------------------------------------------------------------------------------
def test_synthesize_with_a_mask_on_the_grid_edits_only_the_blended_region(scan, tiny_bridge: Path) -> None:
    image, labels = scan
    before = snapshot(image, labels)
    region = np.asarray(labels.array) > 0
    result = ts.synthesize(image, shape=labels, model=tiny_bridge, seed=3, blend_mm=2.0, label_value=4, **FAST)
    assert_unchanged(before, image, labels)
    assert_same_grid(result, image)
    out, source = np.asarray(result.image.array), np.asarray(image.array)
    assert out.dtype == source.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(np.asarray(result.labels.array), region.astype(np.uint8) * 4)
    band = grown(region, 2.0)
    np.testing.assert_array_equal(out[~band], source[~band])  # bit-identical outside region + blend band
    assert np.mean(out[region] != source[region]) > 0.95
    assert result.report["operation"] == "synthesize" and result.report["shape_from"] == "mask on the scan's grid"
    assert result.report["region_voxels"] == int(region.sum()) and result.report["edited_voxels"] == int(band.sum())
    assert result.report["path"].startswith("synthesis") and result.image.metadata["modality"] == "MR"


@pytest.mark.parametrize("dtype", [np.int16, np.uint8])
def test_integer_scans_keep_their_dtype(scan, tiny_bridge: Path, dtype: type) -> None:
    image, labels = scan
    source = np.asarray(image.array)
    scaled = source * (250.0 / source.max()) if dtype == np.uint8 else source
    integer = image.with_array(np.rint(scaled).astype(dtype))
    before = snapshot(integer)
    result = ts.synthesize(integer, shape=labels, model=tiny_bridge, **FAST)
    assert_unchanged(before, integer)
    out = np.asarray(result.image.array)
    assert out.dtype == dtype
    band = grown(np.asarray(labels.array) > 0, 2.0)
    np.testing.assert_array_equal(out[~band], np.asarray(integer.array)[~band])
    assert not np.array_equal(out[band], np.asarray(integer.array)[band])


def test_scanner_units_do_not_matter(scan, tiny_bridge: Path) -> None:
    """A raw-intensity scan (here: the same scan as 250 x + 1000, like unnormalised MR) gives the same edit in its
    own units: the model normalises with the stored spec and maps back."""
    image, labels = scan
    raw = image.with_array(np.asarray(image.array, dtype=np.float64) * 250.0 + 1000.0)
    a = ts.remove(image, labels, model=tiny_bridge, seed=5, **FAST)
    b = ts.remove(raw, labels, model=tiny_bridge, seed=5, **FAST)
    np.testing.assert_allclose(np.asarray(b.image.array), np.asarray(a.image.array, dtype=np.float64) * 250.0 + 1000.0,
                               rtol=0, atol=2e-2)
    assert not np.array_equal(np.asarray(a.image.array), np.asarray(image.array))


def test_same_seed_same_output_other_seed_other_output(scan, tiny_bridge: Path) -> None:
    image, labels = scan
    first = ts.synthesize(image, shape=labels, model=tiny_bridge, seed=5, **FAST)
    again = ts.synthesize(image, shape=labels, model=tiny_bridge, seed=5, **FAST)
    other = ts.synthesize(image, shape=labels, model=tiny_bridge, seed=6, **FAST)
    np.testing.assert_array_equal(np.asarray(first.image.array), np.asarray(again.image.array))
    assert first.report == again.report
    assert not np.array_equal(np.asarray(first.image.array), np.asarray(other.image.array))


def test_one_progress_event_per_step(scan, tiny_bridge: Path) -> None:
    image, labels = scan
    events: list[ProgressEvent] = []
    result = run_job(ts.synthesize_job(image, shape=labels, model=tiny_bridge, steps=3), callback=events.append)
    assert isinstance(result, ts.EditResult)
    assert [e.step for e in events] == [0, 1, 2, 3] and all(e.total == 3 for e in events)
    assert events[-1].fraction == 1.0 and events[0].message == "encoding"


def test_synthesize_at_a_point_with_the_bundled_shape_generator(scan, tiny_bridge: Path) -> None:
    image, _ = scan
    centre_index = np.array([24.0, 22.0, 25.0])
    centre_mm = index_to_physical(image, centre_index)
    result = ts.synthesize(image, center_mm=tuple(centre_mm), shape_request={"VoxelVolume": 500.0},
                           model=tiny_bridge, **FAST)
    assert_same_grid(result, image)
    mask = np.asarray(result.labels.array) > 0
    assert 300 < mask.sum() < 750  # ~500 mm^3 at 1 mm
    np.testing.assert_allclose(np.argwhere(mask).mean(axis=0), centre_index, atol=1.5)
    assert result.report["shape_from"] == "shape generator"
    assert result.report["shape_request"] == {"VoxelVolume": 500.0}
    band = grown(mask, 2.0)
    np.testing.assert_array_equal(np.asarray(result.image.array)[~band], np.asarray(image.array)[~band])


def test_an_unplaced_mask_is_placed_at_the_centre(scan, tiny_bridge: Path) -> None:
    image, _ = scan
    zz, yy, xx = np.mgrid[:9, :9, :9]
    ball = ((zz - 4) ** 2 + (yy - 4) ** 2 + (xx - 4) ** 2 <= 12).astype(np.uint8)
    shape = LabelMap(ball, (1.0, 1.0, 1.0), (-4.0, -4.0, -4.0))  # centred at the physical origin
    centre_index = np.array([20.0, 26.0, 21.0])
    result = ts.synthesize(image, center_mm=tuple(index_to_physical(image, centre_index)), shape=shape,
                           model=tiny_bridge, **FAST)
    mask = np.asarray(result.labels.array) > 0
    assert mask.sum() == ball.sum()
    np.testing.assert_allclose(np.argwhere(mask).mean(axis=0), centre_index, atol=1.0)


# ---- texture ------------------------------------------------------------------------------------------
def test_measure_texture_gives_74_finite_features(scan, tiny_bridge: Path) -> None:
    image, labels = scan
    features = ts.measure_texture(image, labels, model=tiny_bridge)
    assert list(features) == texture_feature_names() and len(features) == 74
    assert all(np.isfinite(v) for v in features.values())
    core = ts.measure_texture(image, labels, label=2, model=tiny_bridge)
    assert core != features  # the necrotic core alone is another texture
    assert ts.texture_feature_defaults(tiny_bridge).keys() == features.keys()


def test_texture_from_features_short_names_and_errors(scan, tiny_bridge: Path) -> None:
    image, labels = scan
    default = ts.synthesize(image, shape=labels, model=tiny_bridge, **FAST)
    requested = ts.synthesize(image, shape=labels, model=tiny_bridge, texture={"firstorder_Mean": 0.8,
                                                                               "original_glcm_Contrast": 3.0},
                              **FAST)
    wanted = requested.report["texture_requested"]
    assert wanted["original_firstorder_Mean"] == 0.8 and wanted["original_glcm_Contrast"] == 3.0
    defaults = ts.texture_feature_defaults(tiny_bridge)
    assert all(wanted[k] == v for k, v in defaults.items() if k not in ("original_firstorder_Mean",
                                                                       "original_glcm_Contrast"))
    assert default.report["texture_requested"] == defaults
    region = np.asarray(labels.array) > 0
    assert not np.array_equal(np.asarray(default.image.array)[region], np.asarray(requested.image.array)[region])
    before = snapshot(image, labels)
    with pytest.raises(InvalidInputError, match=r"Unknown texture feature 'firstorder_Mena'.*such as firstorder_"):
        ts.synthesize(image, shape=labels, model=tiny_bridge, texture={"firstorder_Mena": 1.0}, **FAST)
    with pytest.raises(InvalidInputError, match="must be finite"):
        ts.synthesize(image, shape=labels, model=tiny_bridge, texture={"firstorder_Mean": float("nan")}, **FAST)
    with pytest.raises(InvalidInputError, match="needs a number"):
        ts.synthesize(image, shape=labels, model=tiny_bridge, texture={"firstorder_Mean": "bright"}, **FAST)
    assert_unchanged(before, image, labels)


def test_texture_from_a_reference_tumour(scan, tiny_bridge: Path) -> None:
    image, labels = scan
    reference = ts.measure_texture(image, labels, model=tiny_bridge)
    target_arr = np.zeros(image.shape, dtype=np.uint8)
    target_arr[20:27, 14:21, 20:27] = 1
    target = image.as_labels(target_arr)
    result = ts.synthesize(image, shape=target, texture_from=(image, labels), model=tiny_bridge, **FAST)
    assert result.report["texture_requested"] == reference
    core = ts.synthesize(image, shape=target, texture_from=(image, labels, 2), texture={"glcm_Contrast": 2.0},
                         model=tiny_bridge, **FAST)
    expected = {**ts.measure_texture(image, labels, label=2, model=tiny_bridge), "original_glcm_Contrast": 2.0}
    assert core.report["texture_requested"] == expected


# ---- remove / retexture / resize / move ---------------------------------------------------------------
def test_remove_every_label_or_one(scan, tiny_bridge: Path) -> None:
    image, labels = scan
    before = snapshot(image, labels)
    tumour = np.asarray(labels.array) > 0
    removed = ts.remove(image, labels, model=tiny_bridge, margin_mm=2.0, blend_mm=2.0, **FAST)
    assert_unchanged(before, image, labels)
    assert_same_grid(removed, image)
    assert not np.asarray(removed.labels.array).any()
    out, source = np.asarray(removed.image.array), np.asarray(image.array)
    band = grown(tumour, 4.0)  # margin + blend
    np.testing.assert_array_equal(out[~band], source[~band])
    assert np.mean(out[tumour] != source[tumour]) > 0.95
    assert removed.report["path"].startswith("removal") and removed.report["removed_label"] == "all"

    core_only = ts.remove(image, labels, label=2, model=tiny_bridge, **FAST)
    kept = np.asarray(core_only.labels.array)
    np.testing.assert_array_equal(kept, np.where(np.asarray(labels.array) == 2, 0, np.asarray(labels.array)))
    assert 2 not in np.unique(kept) and (kept == 1).sum() == (np.asarray(labels.array) == 1).sum()
    assert core_only.report["removed_label"] == 2


def test_retexture_keeps_the_labels(scan, tiny_bridge: Path) -> None:
    image, labels = scan
    result = ts.retexture(image, labels, texture={"firstorder_Mean": 0.5}, model=tiny_bridge, **FAST)
    assert_same_grid(result, image)
    np.testing.assert_array_equal(np.asarray(result.labels.array), np.asarray(labels.array))
    region = np.asarray(labels.array) > 0
    out, source = np.asarray(result.image.array), np.asarray(image.array)
    band = grown(region, 2.0)
    np.testing.assert_array_equal(out[~band], source[~band])
    assert np.mean(out[region] != source[region]) > 0.95
    assert result.report["texture_requested"]["original_firstorder_Mean"] == 0.5


def test_resize_grows_the_tumour_about_its_centroid(scan, tiny_bridge: Path) -> None:
    image, labels = scan
    before = snapshot(image, labels)
    tumour = np.asarray(labels.array) > 0
    result = ts.resize(image, labels, 1.3, model=tiny_bridge, **FAST)
    assert_unchanged(before, image, labels)
    assert_same_grid(result, image)
    grown_mask = np.asarray(result.labels.array) > 0
    assert 1.8 * tumour.sum() < grown_mask.sum() < 2.6 * tumour.sum()  # 1.3^3 = 2.2
    assert np.mean(tumour[grown_mask]) < 0.6 and tumour[grown_mask].sum() > 0.95 * tumour.sum()
    np.testing.assert_allclose(np.argwhere(grown_mask).mean(axis=0), np.argwhere(tumour).mean(axis=0), atol=1.0)
    assert result.report["scale"] == 1.3 and "removal" in result.report
    assert set(np.unique(np.asarray(result.labels.array))) == {0, 2}  # one lesion, the highest label value
    far = ~grown(tumour | grown_mask, 4.0)
    np.testing.assert_array_equal(np.asarray(result.image.array)[far], np.asarray(image.array)[far])
    with pytest.raises(InvalidInputError, match="scale"):
        ts.resize(image, labels, 0.0, model=tiny_bridge, **FAST)


def test_move_puts_the_centroid_at_the_requested_centre(scan, tiny_bridge: Path) -> None:
    image, labels = scan
    tumour = np.asarray(labels.array) > 0
    centroid = np.argwhere(tumour).mean(axis=0)
    target_index = np.array([24.0, 24.0, 24.0])
    target_index[2] = 16.0 if centroid[2] > 24 else 32.0  # the other hemisphere
    target_mm = index_to_physical(image, target_index)
    result = ts.move(image, labels, tuple(target_mm), label=1, model=tiny_bridge, **FAST)
    assert_same_grid(result, image)
    moved = np.asarray(result.labels.array) == 1
    assert moved.sum() == (np.asarray(labels.array) == 1).sum()
    np.testing.assert_allclose(np.argwhere(moved).mean(axis=0), target_index, atol=1.0)
    np.testing.assert_allclose(physical_to_index(image, result.report["center_mm"]), target_index, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(result.labels.array) == 2, np.asarray(labels.array) == 2)  # stays
    with pytest.raises(InvalidInputError, match=r"The new centre \(-?[0-9.]+, -?[0-9.]+, -?[0-9.]+\) mm lies outside"):
        ts.move(image, labels, tuple(index_to_physical(image, [24.0, 24.0, 60.0])), model=tiny_bridge, **FAST)
    with pytest.raises(InvalidInputError, match="leave the image"):
        ts.move(image, labels, tuple(index_to_physical(image, [24.0, 24.0, 1.0])), model=tiny_bridge, **FAST)


# ---- bad input: a clear error, the inputs untouched -----------------------------------------------------
def _with(image: Volume, **changes: Any) -> Volume:
    return Volume(np.asarray(changes.pop("array", image.array)), changes.pop("spacing", image.spacing),
                  changes.pop("origin", image.origin), changes.pop("direction", image.direction))


def _regridded(image: Volume, labels: LabelMap, **changes: Any) -> tuple[Volume, LabelMap]:
    """The same voxels (copies) on another grid: 1 mm x 1 mm x 3 mm, or an oblique direction."""
    moved = _with(image, array=np.array(image.array), **changes)
    return moved, moved.as_labels(np.array(labels.array))


def _labels_with(image: Volume, box: tuple[slice, ...] | None) -> LabelMap:
    arr = np.zeros(image.shape, dtype=np.uint8)
    if box is not None:
        arr[box] = 1
    return image.as_labels(arr)


BAD: dict[str, tuple[Callable[..., Any], type[Exception], str]] = {
    "2D image": (lambda im, lab, m, ob: ts.synthesize(_with(im, array=np.asarray(im.array)[24:25]),
                                                      center_mm=(0, 0, 0), model=m, **FAST),
                 DimensionError, "needs a 3D scan"),
    "location outside the image": (
        lambda im, lab, m, ob: ts.synthesize(
            im, center_mm=(500.0, 0.0, 0.0),
            shape=LabelMap(np.ones((5, 5, 5), np.uint8), origin=(-2.0, -2.0, -2.0)), model=m, **FAST),
        InvalidInputError, "outside the image"),
    "empty mask": (lambda im, lab, m, ob: ts.synthesize(im, shape=_labels_with(im, None), model=m, **FAST),
                   InvalidInputError, "is empty"),
    "mask touching the border": (
        lambda im, lab, m, ob: ts.synthesize(im, shape=_labels_with(im, np.s_[20:26, 20:26, 0:6]), model=m,
                                             **FAST),
        InvalidInputError, "touches the image border"),
    "tiny mask": (lambda im, lab, m, ob: ts.synthesize(im, shape=_labels_with(im, np.s_[20:22, 20:22, 20:22]),
                                                       model=m, **FAST),
                  InvalidInputError, "only 8 voxels"),
    "label value absent": (lambda im, lab, m, ob: ts.remove(im, lab, label=3, model=m, **FAST),
                           InvalidInputError, r"Label 3 does not occur.*present: 1, 2\)"),
    "anisotropic scan": (lambda im, lab, m, ob: ts.remove(*_regridded(im, lab, spacing=(1.0, 1.0, 3.0)), model=m,
                                                          **FAST),
                         GeometryMismatchError,
                         r"spacing \(1\.0, 1\.0, 3\.0\) mm differs.*\(1\.0, 1\.0, 1\.0\) mm.*Resample"),
    "oblique scan": (lambda im, lab, m, ob: ts.remove(*_regridded(im, lab, direction=ob), model=m, **FAST),
                     GeometryMismatchError, "oblique"),
    "labels on another grid": (lambda im, lab, m, ob: ts.remove(im, lab.with_array(lab.array, origin=(0, 0, 0)),
                                                                model=m, **FAST),
                               GeometryMismatchError, "tumour mask does not lie on the image grid"),
    "checkpoint for another model": (lambda im, lab, m, ob: ts.remove(im, lab, model="seg2img-brain", **FAST),
                                     CheckpointError, "'bridge-unet'"),
    "NaN in the image": (lambda im, lab, m, ob: ts.remove(
        _with(im, array=np.where(np.arange(im.array.size).reshape(im.shape) == 100, np.nan, im.array)
              .astype(np.float32)), lab, model=m, **FAST),
        InvalidInputError, "NaN"),
    "steps 0": (lambda im, lab, m, ob: ts.synthesize(im, shape=lab, model=m, steps=0),
                InvalidInputError, "steps must be an integer from 1 to 100"),
    "too many steps": (lambda im, lab, m, ob: ts.retexture(im, lab, model=m, steps=101),
                       InvalidInputError, "steps must be an integer from 1 to 100"),
    "negative seed": (lambda im, lab, m, ob: ts.synthesize(im, shape=lab, model=m, seed=-1, **FAST),
                      InvalidInputError, "seed must be 0 or a positive integer"),
    "shape and shape features": (lambda im, lab, m, ob: ts.synthesize(im, shape=lab, shape_request={
        "VoxelVolume": 500.0}, center_mm=(0, 0, 0), model=m, **FAST), InvalidInputError, "not both"),
    "no centre and no mask": (lambda im, lab, m, ob: ts.synthesize(im, model=m, **FAST),
                              InvalidInputError, "centre"),
    "labels instead of the scan": (lambda im, lab, m, ob: ts.remove(lab, lab, model=m, **FAST),
                                   InvalidInputError, "must be a Volume"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_and_the_inputs_are_untouched(scan, tiny_bridge: Path, oblique_volume: Volume,
                                                           case: str) -> None:
    image, labels = scan
    call, error, message = BAD[case]
    before = snapshot(image, labels)
    with pytest.raises(error, match=message):
        call(image, labels, tiny_bridge, oblique_volume.direction)
    assert_unchanged(before, image, labels)


def test_cancelling_after_the_first_event_raises_and_leaves_the_input(scan, tiny_bridge: Path) -> None:
    image, labels = scan
    before = snapshot(image, labels)
    token = CancelToken()
    events: list[ProgressEvent] = []

    def callback(event: ProgressEvent) -> None:
        events.append(event)
        token.cancel()

    job = ts.synthesize_job(image, shape=labels, model=tiny_bridge, steps=5)
    with pytest.raises(CancelledError):
        run_job(job, callback=callback, cancel=token)
    assert len(events) == 1
    assert_unchanged(before, image, labels)
    with pytest.raises(StopIteration):  # the job was closed: it cannot deliver a half-made result later
        next(job)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("operation", ["synthesize", "remove"])
def test_an_absent_device_is_refused_before_any_work(scan, tiny_bridge: Path, operation: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    image, labels = scan
    before = snapshot(image, labels)
    call = {"synthesize": lambda **k: ts.synthesize_job(image, shape=labels, model=tiny_bridge, **k),
            "remove": lambda **k: ts.remove_job(image, labels, model=tiny_bridge, **k)}[operation]
    job = call(device="cuda", **FAST)
    with pytest.raises(InvalidInputError, match="'cuda' was requested but CUDA is not available"):
        next(job)
    monkeypatch.setenv("MEDGEN_DEVICE", "cuda")
    with pytest.raises(InvalidInputError, match="MEDGEN_DEVICE"):
        run_job(call(**FAST))
    assert_unchanged(before, image, labels)
