"""Fixed-seed outputs of every pipeline, compared with outputs recorded before the backend refactor.

`tests/data/reference_outputs.npz` was written by the pipelines of commit cc92bfe (before jobs, result dataclasses
and the device policy) with the bundled weights on the CPU. The refactor must not change what a seed gives: on the
recording machine, with the same thread count, every array is bit-identical. Another thread count or CPU sums the
3D convolutions in another order (1 instead of 2 threads moved edited voxels by up to 3e-4 of the image range), so
floats are compared to 2e-3 of their range and masks may differ in at most 0.1 % of voxels; a real change of
behaviour moves them by far more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_medgen.core.volume import LabelMap
from napari_medgen.sample_data import make_phantom

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference_outputs.npz"
FLOAT_TOLERANCE = 2e-3  # of the array's value range
MASK_TOLERANCE = 1e-3  # fraction of voxels


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return {k: data[k] for k in data.files}


def _phantom() -> tuple[Any, LabelMap, LabelMap]:
    image, labels = make_phantom(shape=(48, 48, 48), spacing=(1.0, 1.0, 1.0), tumour_radius_mm=7.0)
    core = labels.as_labels((np.asarray(labels.array) > 0).astype(np.uint8))
    return image, labels, core


def assert_matches(name: str, got: np.ndarray, reference: dict[str, np.ndarray]) -> None:
    want = reference[name]
    got = np.asarray(got)
    assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, got.dtype, want.shape, want.dtype)
    if np.issubdtype(want.dtype, np.floating):
        span = float(np.nanmax(want) - np.nanmin(want)) or 1.0
        np.testing.assert_allclose(got, want, rtol=0, atol=FLOAT_TOLERANCE * span, err_msg=name)
    else:
        assert np.mean(got != want) <= MASK_TOLERANCE, f"{name}: {np.mean(got != want):.2%} of voxels differ"


def test_shape_generation(reference: dict[str, np.ndarray]) -> None:
    from napari_medgen.pipelines.shape_generation import generate_shape, place_shape

    lesion = generate_shape({"VoxelVolume": 4000.0, "Sphericity": 0.8}, spacing=(1.0, 1.0, 1.0), seed=3,
                            candidates=4, device="cpu")
    assert_matches("shape_lesion", lesion.mask.array, reference)
    brats = generate_shape({"VoxelVolume": 20000.0}, spacing=(2.0, 2.0, 2.0), seed=1, model="shape-gan-brats",
                           candidates=1, device="cpu")
    assert_matches("shape_brats", brats.mask.array, reference)
    image, _, _ = _phantom()
    assert_matches("place_shape", place_shape(lesion.mask, image, (0.0, 0.0, 0.0)).array, reference)


def test_slice_generation(reference: dict[str, np.ndarray]) -> None:
    from napari_medgen.pipelines.slice_generation import generate_from_labels

    lab = np.zeros((4, 40, 40), np.uint8)
    lab[:, 4:36, 4:36] = 5
    lab[:, 12:28, 12:28] = 2
    lab[:, 16:24, 16:24] = 1
    result = generate_from_labels(LabelMap(lab, spacing=(1.0, 1.0, 2.0)), model="seg2img-brain", steps=3, seed=1,
                                  device="cpu")
    assert_matches("seg2img", result.image.array, reference)


def test_paired_generation(reference: dict[str, np.ndarray]) -> None:
    from napari_medgen.pipelines.paired_generation import generate_pairs

    result = generate_pairs(2, steps=3, seed=2, sampler="ddim", device="cpu")
    assert_matches("paired_images", np.stack([np.asarray(v.array) for v in result.images]), reference)
    assert_matches("paired_masks", np.stack([np.asarray(m.array) for m in result.masks]), reference)


def test_tumour_editing(reference: dict[str, np.ndarray]) -> None:
    from napari_medgen.core.geometry import index_to_physical
    from napari_medgen.pipelines import tumor_synthesis as ts

    image, _, core = _phantom()
    bridge = {"model": "bridge-brain-t1c", "device": "cpu"}  # recorded when the bridge was the default editor
    r = ts.synthesize(image, center_mm=(2.0, -3.0, 1.0), shape_request={"VoxelVolume": 1500.0}, steps=2, seed=4,
                      **bridge)
    assert_matches("synthesize_image", r.image.array, reference)
    assert_matches("synthesize_labels", r.labels.array, reference)
    assert_matches("remove_image", ts.remove(image, core, steps=2, seed=5, **bridge).image.array, reference)
    r = ts.retexture(image, core, texture={"firstorder_Mean": 0.5}, steps=2, seed=6, **bridge)
    assert_matches("retexture_image", r.image.array, reference)
    r = ts.resize(image, core, 0.8, steps=2, seed=7, **bridge)
    assert_matches("resize_image", r.image.array, reference)
    assert_matches("resize_labels", r.labels.array, reference)
    centre = index_to_physical(image, np.argwhere(np.asarray(core.array)).mean(axis=0) + np.array([0, 2, 3]))
    r = ts.move(image, core, tuple(float(x) for x in centre), steps=2, seed=8, **bridge)
    assert_matches("move_image", r.image.array, reference)
    assert_matches("move_labels", r.labels.array, reference)


def test_radiomics(reference: dict[str, np.ndarray]) -> None:
    import json

    from napari_medgen.pipelines.radiomics_extraction import extract_features

    image, _, core = _phantom()
    result = extract_features(image, core, 1)
    names = json.loads(REFERENCE.with_suffix(".json").read_text(encoding="utf-8"))["radiomics_names"]
    assert_matches("radiomics_values", np.array([result.features[n] for n in names], dtype=np.float64), reference)


def test_augmentation_batch(reference: dict[str, np.ndarray], tmp_path: Path) -> None:
    """`medgen batch` (now `pipelines.augmentation`) through the CLI, as recorded."""
    from typer.testing import CliRunner

    from napari_medgen.cli import app
    from napari_medgen.core import io

    image, _, _ = _phantom()
    io.write_volume(image, tmp_path / "cases" / "case_a.nii.gz")
    result = CliRunner().invoke(app, [
        "batch", str(tmp_path / "cases"), "--out-dir", str(tmp_path / "aug"), "--variants", "1", "--volume-range",
        "800,1200", "--sphericity-range", "0.7,0.9", "--seed", "5", "--steps", "2", "--margin-mm", "8", "-q",
        "--device", "cpu", "--model", "bridge-brain-t1c"])
    assert result.exit_code == 0, result.output
    assert_matches("batch_image", io.read_volume(tmp_path / "aug" / "case_a_synth0.nii.gz").array, reference)
    assert_matches("batch_mask", io.read_labels(tmp_path / "aug" / "case_a_synth0_mask.nii.gz").array, reference)
