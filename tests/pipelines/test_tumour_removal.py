"""Tumour removal as inpainting: nothing under the region is read, geometry and dtype survive, scanner units and
z-scores give the same tissue, bad input is refused (tiny untrained inpainter: the contract, not the quality)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_medgen.core.progress import CancelToken, run_job
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import CancelledError, CheckpointError, DimensionError, InvalidInputError
from napari_medgen.pipelines.tumour_removal import METHODS, inpaint, inpaint_job

FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def tiny_inpainter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from napari_medgen.models.inpainter import Inpainter

    torch.manual_seed(0)
    model = Inpainter(channels=(4, 8), crop_size=16, work_mm=3.0)
    with torch.no_grad():  # make both heads matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.save_pretrained(tmp_path_factory.mktemp("inpainter") / "model")


@pytest.fixture(scope="module")
def tiny_atlas_inpainter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from napari_medgen.models.inpainter import Inpainter

    torch.manual_seed(0)
    model = Inpainter(channels=(4, 8), crop_size=16, work_mm=3.0, atlas=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.save_pretrained(tmp_path_factory.mktemp("atlas-inpainter") / "model")


@pytest.fixture
def scan() -> tuple[Volume, LabelMap]:
    from napari_medgen.sample_data import make_phantom

    image, labels = make_phantom(shape=(48, 48, 48), spacing=(1.0, 1.0, 1.0), tumour_radius_mm=7.0)
    arr = np.asarray(image.array, dtype=np.float64)
    raw = ((arr - arr.min()) / (arr.max() - arr.min()) * 900 + 100).astype(np.int16)  # scanner-like, background 100
    volume = Volume(raw, image.spacing, (12.5, -3.0, 40.0), FLIPPED, {"modality": "MR"})
    return volume, volume.as_labels((np.asarray(labels.array) > 0).astype(np.uint8))


@pytest.mark.parametrize("method", METHODS)
def test_only_the_region_changes_and_nothing_under_it_is_read(scan, tiny_inpainter: Path, method: str) -> None:
    volume, labels = scan
    region = np.asarray(labels.array) > 0
    first = inpaint(volume, labels, method=method, model=tiny_inpainter, device="cpu")
    arr = np.array(volume.array)
    rng = np.random.default_rng(1)
    for fill in (0, rng.integers(-3000, 3000, int(region.sum()))):  # the challenge's voided input, then noise
        arr[region] = fill
        other = inpaint(volume.with_array(arr.copy()), labels, method=method, model=tiny_inpainter, device="cpu")
        np.testing.assert_array_equal(other.image.array, first.image.array)
    out, source = np.asarray(first.image.array), np.asarray(volume.array)
    np.testing.assert_array_equal(out[~region], source[~region])
    assert out.dtype == np.int16 and first.image.same_grid(volume)
    assert first.image.direction == FLIPPED and first.report["method"] == method
    inside = out[region].astype(float)
    brain = source[~region & (source > 100)].astype(float)
    assert brain.min() - 1 <= inside.mean() <= brain.max() + 1  # tissue-like values, not a blob outside the range


def test_an_atlas_model_reads_nothing_under_the_region_and_reports_the_atlas(scan, tiny_atlas_inpainter: Path
                                                                             ) -> None:
    volume, labels = scan
    region = np.asarray(labels.array) > 0
    first = inpaint(volume, labels, model=tiny_atlas_inpainter)
    arr = np.array(volume.array)
    arr[region] = 0
    again = inpaint(volume.with_array(arr), labels, model=tiny_atlas_inpainter)
    np.testing.assert_array_equal(again.image.array, first.image.array)
    np.testing.assert_array_equal(np.asarray(first.image.array)[~region], np.asarray(volume.array)[~region])
    report = first.report
    assert {"atlas_weight_mean", "atlas_used", "atlas_note", "atlas_r2"} <= set(report)
    assert report["atlas_used"] == (report["atlas_note"] == "")


def test_a_model_refuses_inputs_prepared_for_another_model(scan, tiny_inpainter: Path,
                                                           tiny_atlas_inpainter: Path) -> None:
    from napari_medgen.hub import load_cached
    from napari_medgen.models.inpainter import prepare

    volume, labels = scan
    region = np.asarray(labels.array) > 0
    plain = prepare(np.asarray(volume.array), region, volume.spacing_zyx, work_mm=3.0, crop=16)
    with pytest.raises(InvalidInputError, match="this model takes 5"):
        load_cached(tiny_atlas_inpainter, expected_type="inpainter").predict(plain)
    assert load_cached(tiny_inpainter, expected_type="inpainter").predict(plain)[0].shape[0] == 1


def test_scanner_units_and_z_scores_give_the_same_tissue(scan, tiny_inpainter: Path) -> None:
    volume, labels = scan
    raw = np.asarray(volume.array).astype(np.float32)
    z = (raw - 412.0) / 97.0
    for method in ("model", "mirror-harmonic"):
        a = np.asarray(inpaint(volume.with_array(raw), labels, method=method, model=tiny_inpainter).image.array)
        b = np.asarray(inpaint(volume.with_array(z), labels, method=method, model=tiny_inpainter).image.array)
        np.testing.assert_allclose((a - 412.0) / 97.0, b, atol=1e-3)


def test_a_region_given_as_an_array_and_the_job_events(scan, tiny_inpainter: Path) -> None:
    volume, labels = scan
    events: list = []
    result = run_job(inpaint_job(volume, np.asarray(labels.array) > 0, model=tiny_inpainter), events.append)
    assert [(e.stage, e.step) for e in events] == [("loading model", 0), *[("removing tumour", s) for s in range(4)]]
    assert result.report["region_voxels"] > 0
    token = CancelToken()
    with pytest.raises(CancelledError):
        run_job(inpaint_job(volume, labels, model=tiny_inpainter), lambda e: token.cancel(), token)


def test_bad_input_is_refused_with_inputs_untouched(scan, tiny_inpainter: Path) -> None:
    volume, labels = scan
    before = np.array(volume.array)
    empty = volume.as_labels(np.zeros(volume.shape, np.uint8))
    with pytest.raises(InvalidInputError, match="empty"):
        inpaint(volume, empty, method="harmonic")
    with pytest.raises(InvalidInputError, match="whole scan"):
        inpaint(volume, volume.as_labels(np.ones(volume.shape, np.uint8)), method="harmonic")
    with pytest.raises(InvalidInputError, match="shape"):
        inpaint(volume, np.ones((3, 3, 3), bool), method="harmonic")
    with pytest.raises(InvalidInputError, match="Unknown inpainting method"):
        inpaint(volume, labels, method="magic")
    nan = np.asarray(volume.array).astype(np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="1 NaN/Inf voxels outside"):
        inpaint(volume.with_array(nan), labels, method="harmonic")
    with pytest.raises(DimensionError, match="3D"):
        inpaint(Volume(np.zeros((1, 8, 8), np.float32)), np.ones((1, 8, 8), bool), method="harmonic")
    with pytest.raises(CheckpointError, match="needs a 'inpainter' model"):
        inpaint(volume, labels, model="seg2img-brain")
    np.testing.assert_array_equal(volume.array, before)
