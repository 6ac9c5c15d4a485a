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


# ---- best-of-N candidate selection --------------------------------------------------------------------
def test_single_candidate_is_the_previous_single_draw() -> None:
    """candidates=1 is the pre-selection behaviour: numbers pinned from the single-draw implementation."""
    labels = generate_shape({"VoxelVolume": 8000.0, "Sphericity": 0.7}, seed=3, spacing=1.5, model=MODEL,
                            candidates=1)
    again = generate_shape({"VoxelVolume": 8000.0, "Sphericity": 0.7}, seed=3, spacing=1.5, model=MODEL,
                           candidates=1)
    assert np.array_equal(labels.array, again.array)
    assert labels.metadata["candidates"] == 1 and labels.metadata["chosen_candidate"] == 0
    if MODEL == "shape-gan-lesion":
        assert labels.shape == (35, 35, 35)
        assert labels.metadata["model_volume_mm3"] == pytest.approx(6863.0, abs=8.0)
        assert int((labels.array > 0).sum()) == pytest.approx(2373, abs=5)
    # the first of N candidates is that same draw (same noise; the batch changes only float rounding)
    many = generate_shape({"VoxelVolume": 8000.0, "Sphericity": 0.7}, seed=3, spacing=1.5, model=MODEL,
                          candidates=4)
    single_error = sum(labels.metadata["match_errors"].values())
    assert many.metadata["candidate_match_errors"][0] == pytest.approx(single_error, abs=1e-6)
    assert labels.metadata["candidate_match_errors"] == [pytest.approx(single_error)]


def test_noise_draws_extend_the_single_draw() -> None:
    import torch

    single = torch.randn(1, 64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(shape_generation._noise(5, 1, 64), single)
    four = shape_generation._noise(5, 4, 64)
    assert four.shape == (4, 64) and torch.equal(four[:1], single)
    assert torch.equal(shape_generation._noise(5, 8, 64)[:4], four)  # more candidates only add draws
    assert not torch.equal(shape_generation._noise(6, 4, 64)[1:], four[1:])  # another seed, another set


def test_best_of_n_is_deterministic_and_improves_the_match() -> None:
    request = {"VoxelVolume": 8000.0, "Elongation": 0.5}
    first = generate_shape(request, seed=1, model=MODEL, candidates=8)
    second = generate_shape(request, seed=1, model=MODEL, candidates=8)
    assert np.array_equal(first.array, second.array) and first.metadata == second.metadata
    meta = first.metadata
    totals = meta["candidate_match_errors"]
    assert len(totals) == 8 and meta["candidates"] == 8
    chosen = meta["chosen_candidate"]
    assert totals[chosen] == pytest.approx(min(t for t in totals if t is not None))
    assert totals[chosen] == pytest.approx(sum(meta["match_errors"].values()))
    assert set(meta["match_errors"]) == {"VoxelVolume", "Elongation"}
    assert meta["match_errors"]["VoxelVolume"] == pytest.approx(0.0, abs=1e-9)  # matched by scaling
    if MODEL == "shape-gan-lesion":
        assert chosen != 0 and totals[chosen] < totals[0] - 0.05
    # the reported error is the truth about the returned mask (re-measured at 1 mm, after volume matching)
    from napari_medgen.radiomics.shape import shape_features

    got = shape_features(first.array > 0, first.spacing)
    assert abs(np.log(got["Elongation"] / 0.5)) == pytest.approx(meta["match_errors"]["Elongation"], abs=0.05)
    other = generate_shape(request, seed=2, model=MODEL, candidates=8)
    assert not np.array_equal(other.array, first.array)


def test_volume_only_request_keeps_the_first_draw() -> None:
    labels = generate_shape({"VoxelVolume": 5000.0}, seed=2, spacing=2.0, model=MODEL, candidates=4)
    assert labels.metadata["chosen_candidate"] == 0
    assert labels.metadata["candidate_match_errors"] == [pytest.approx(0.0, abs=1e-9)] * 4


def test_match_errors_account_for_the_volume_matching_scale() -> None:
    from napari_medgen.pipelines.shape_generation import match_errors

    measured = {"Maximum3DDiameter": np.array([10.0, 20.0]), "SurfaceArea": np.array([100.0, 100.0]),
                "SurfaceVolumeRatio": np.array([1.0, 1.0]), "Sphericity": np.array([0.6, np.nan])}
    request = {"Maximum3DDiameter": 20.0, "SurfaceArea": 400.0, "SurfaceVolumeRatio": 0.5, "Sphericity": 0.6}
    errors = match_errors(request, measured, np.log([2.0, 1.0]))  # candidate 0 would be scaled by 2
    np.testing.assert_allclose([errors[k][0] for k in request], 0.0, atol=1e-12)
    np.testing.assert_allclose(errors["Maximum3DDiameter"][1], 0.0, atol=1e-12)
    np.testing.assert_allclose(errors["SurfaceArea"][1], np.log(4.0))
    np.testing.assert_allclose(errors["SurfaceVolumeRatio"][1], np.log(2.0))
    assert errors["Sphericity"][1] == np.inf  # an unmeasurable candidate never wins


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True, None])
def test_bad_candidates(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="candidates must be a whole number >= 1"):
        generate_shape({"VoxelVolume": 5000.0}, model=MODEL, candidates=bad)  # type: ignore[arg-type]


def test_cli_shape_candidates(tmp_path) -> None:
    from typer.testing import CliRunner

    from napari_medgen.cli import app
    from napari_medgen.core import io

    runner = CliRunner()
    out = tmp_path / "tumour.nii.gz"
    args = ["shape", "--out", str(out), "--set", "VoxelVolume=3000", "--set", "Elongation=0.5", "--seed", "4",
            "--spacing", "2,2,2", "--model", MODEL]
    result = runner.invoke(app, [*args, "--candidates", "3"])
    assert result.exit_code == 0, result.output
    expected = generate_shape({"VoxelVolume": 3000.0, "Elongation": 0.5}, seed=4, spacing=2.0, model=MODEL,
                              candidates=3)
    assert np.array_equal(io.read_labels(out).array, expected.array)
    bad = tmp_path / "bad.nii.gz"
    result = runner.invoke(app, [*args[:2], str(bad), *args[3:], "--candidates", "0"])
    assert result.exit_code == 2 and "candidates" in result.output and "Traceback" not in result.output
    assert not bad.exists()
