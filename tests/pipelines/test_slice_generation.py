"""Slice-wise mask-guided generation over a labels volume (tiny untrained model: geometry, determinism,
noise modes, reference intensities and errors; no image quality)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_medgen.core.progress import ProgressEvent, run_job
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import CheckpointError, GeometryMismatchError, InvalidInputError
from napari_medgen.pipelines.slice_generation import generate_from_labels, generate_from_labels_job, slice_noise

FAST = {"steps": 2}


def _gen(labels: LabelMap, model: Path, **kwargs: object) -> Volume:
    return generate_from_labels(labels, model=model, **{**FAST, **kwargs}).image


# ---- geometry, axes, determinism --------------------------------------------------------------------
def test_output_lies_exactly_on_the_oblique_labels_grid(oblique_labels: LabelMap, tiny_seg2img: Path) -> None:
    out = _gen(oblique_labels, tiny_seg2img)
    assert type(out) is Volume
    assert out.shape == oblique_labels.shape
    assert out.spacing == oblique_labels.spacing
    assert out.origin == oblique_labels.origin
    assert out.direction == oblique_labels.direction
    assert out.array.dtype == np.float32 and np.all(np.isfinite(out.array))
    assert float(out.array.min()) >= 0.0 and float(out.array.max()) <= 1.0  # normalised units without reference
    meta = out.metadata
    assert meta["seed"] == 0 and meta["steps"] == 2 and meta["axis"] == 0 and meta["units"] == "normalised [0, 1]"


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_every_axis_gives_the_labels_shape(oblique_labels: LabelMap, tiny_seg2img: Path, axis: int) -> None:
    out = _gen(oblique_labels, tiny_seg2img, axis=axis, skip_empty=False)
    assert out.shape == oblique_labels.shape
    assert out.metadata["axis"] == axis
    # slices along the chosen axis are generated independently: not all the same
    per_slice = np.moveaxis(out.array, axis, 0).reshape(out.shape[axis], -1)
    assert not np.allclose(per_slice[0], per_slice[-1])


def test_two_d_labels(tiny_seg2img: Path) -> None:
    arr = np.zeros((1, 20, 24), np.uint8)
    arr[0, 4:12, 6:18] = 5
    arr[0, 6:9, 8:12] = 1
    out = _gen(LabelMap(arr, spacing=(0.5, 0.25, 1.0)), tiny_seg2img)
    assert out.shape == (1, 20, 24) and out.spacing == (0.5, 0.25, 1.0)


def test_same_seed_same_output_different_seed_different(oblique_labels: LabelMap, tiny_seg2img: Path) -> None:
    a = _gen(oblique_labels, tiny_seg2img, seed=3)
    b = _gen(oblique_labels, tiny_seg2img, seed=3)
    c = _gen(oblique_labels, tiny_seg2img, seed=4)
    np.testing.assert_array_equal(a.array, b.array)
    assert not np.allclose(a.array, c.array)


def test_batch_size_does_not_change_deterministic_samplers(oblique_labels: LabelMap, tiny_seg2img: Path) -> None:
    one = _gen(oblique_labels, tiny_seg2img, batch_size=1, sampler="ddim", eta=0.0)
    many = _gen(oblique_labels, tiny_seg2img, batch_size=16, sampler="ddim", eta=0.0)
    np.testing.assert_allclose(one.array, many.array, atol=1e-5)


def test_inputs_are_not_mutated(oblique_labels: LabelMap, oblique_volume: Volume, tiny_seg2img: Path) -> None:
    labels_before = oblique_labels.array.copy()
    ref_before = oblique_volume.array.copy()
    flags = (oblique_labels.array.flags.writeable, oblique_volume.array.flags.writeable)
    _gen(oblique_labels, tiny_seg2img, reference=oblique_volume, similarity=0.5, axis=1)
    np.testing.assert_array_equal(oblique_labels.array, labels_before)
    np.testing.assert_array_equal(oblique_volume.array, ref_before)
    assert (oblique_labels.array.flags.writeable, oblique_volume.array.flags.writeable) == flags


def test_progress_one_event_per_step_of_each_batch(oblique_labels: LabelMap, tiny_seg2img: Path) -> None:
    events: list[ProgressEvent] = []
    # labels occupy z slices 2, 3, 4: three slices in batches of 2 -> 2 batches x 3 steps
    run_job(generate_from_labels_job(oblique_labels, model=tiny_seg2img, steps=3, batch_size=2), events.append)
    assert (events[0].step, events[0].total, events[0].message) == (0, None, "loading model")
    assert [e.step for e in events[1:]] == list(range(1, 7)) and {e.total for e in events[1:]} == {6}


def test_result_report_and_default_steps(oblique_labels: LabelMap, tiny_seg2img: Path) -> None:
    from napari_medgen.pipelines.slice_generation import SliceResult, default_steps

    assert default_steps(tiny_seg2img, "dpmpp") == 20 and default_steps(tiny_seg2img, "ddpm") == 100  # schedule: 100
    assert default_steps() == 20 and default_steps(sampler="ddim") == 50
    result = generate_from_labels(oblique_labels, model=tiny_seg2img, sampler="ddim", steps=None, batch_size=8)
    assert isinstance(result, SliceResult) and result.report["steps"] == 50
    assert result.report == dict(result.image.metadata)
    with pytest.raises(InvalidInputError, match="Unknown sampler"):
        default_steps(tiny_seg2img, "euler")


# ---- empty slices, dropped classes, references -------------------------------------------------------
def test_skip_empty_leaves_empty_slices_at_the_minimum(oblique_labels: LabelMap, tiny_seg2img: Path) -> None:
    labelled = {int(z) for z in np.nonzero(oblique_labels.array)[0]}
    assert labelled == {2, 3, 4}
    out = _gen(oblique_labels, tiny_seg2img, eta=0.0)
    for z in range(oblique_labels.shape[0]):
        if z in labelled:
            assert float(out.array[z].max()) > 0.0
        else:
            assert np.all(out.array[z] == 0.0)
    full = _gen(oblique_labels, tiny_seg2img, skip_empty=False, eta=0.0)
    assert float(full.array[0].max()) > 0.0
    np.testing.assert_allclose(full.array[3], out.array[3], atol=1e-5)  # generated slices do not depend on skipping
    # with a class left unconstrained every slice is generated (the class may appear anywhere)
    dropped = _gen(oblique_labels, tiny_seg2img, drop_classes=[5])
    assert float(dropped.array[0].max()) > 0.0
    assert dropped.metadata["dropped_classes"] == [5]


def test_dropping_a_class_changes_the_image(oblique_labels: LabelMap, tiny_seg2img: Path) -> None:
    kept = _gen(oblique_labels, tiny_seg2img, skip_empty=False)
    dropped = _gen(oblique_labels, tiny_seg2img, skip_empty=False, drop_classes=[1])
    assert not np.allclose(kept.array, dropped.array)


def test_reference_maps_into_the_reference_range(oblique_labels: LabelMap, oblique_volume: Volume,
                                                 tiny_seg2img: Path) -> None:
    out = _gen(oblique_labels, tiny_seg2img, reference=oblique_volume)
    low, high = np.percentile(oblique_volume.array.astype(np.float64), [0.5, 99.5])
    assert float(out.array.min()) >= low - 1e-3 and float(out.array.max()) <= high + 1e-3
    assert float(out.array.min()) == pytest.approx(low, abs=1e-3)  # skipped slices sit at the reference's floor
    assert out.metadata["units"] == "reference intensities"
    assert out.same_grid(oblique_labels)
    # similarity 1 makes the labelled slices follow the reference far more than similarity 0
    ref = oblique_volume.array
    rows = slice(2, 5)
    err = {s: float(np.abs(_gen(oblique_labels, tiny_seg2img, reference=oblique_volume, similarity=s,
                                steps=4).array[rows] - ref[rows]).mean()) for s in (0.0, 1.0)}
    assert err[1.0] < err[0.0]


# ---- noise modes ---------------------------------------------------------------------------------------
def test_slice_noise_modes() -> None:
    shape = (1, 32, 32)
    shared = slice_noise(6, shape, 1, "shared")
    assert shared.shape == (6, *shape) and shared.dtype == np.float32
    assert all(np.array_equal(shared[0], shared[i]) for i in range(6))
    independent = slice_noise(40, shape, 1, "independent")
    flat = independent.reshape(40, -1)
    lag1 = np.mean([np.corrcoef(flat[i], flat[i + 1])[0, 1] for i in range(39)])
    assert abs(lag1) < 0.05
    corr = slice_noise(40, shape, 1, "correlated", correlation=0.8).reshape(40, -1)
    lag1 = np.mean([np.corrcoef(corr[i], corr[i + 1])[0, 1] for i in range(39)])
    lag2 = np.mean([np.corrcoef(corr[i], corr[i + 2])[0, 1] for i in range(38)])
    assert lag1 == pytest.approx(0.8, abs=0.03)
    assert lag2 == pytest.approx(0.64, abs=0.04)  # AR(1): correlation decays geometrically
    assert np.allclose(corr.std(axis=1), 1.0, atol=0.1)  # unit variance at every slice
    assert abs(float(corr.mean())) < 0.1
    np.testing.assert_array_equal(slice_noise(5, shape, 2, "correlated"), slice_noise(5, shape, 2, "correlated"))
    assert not np.array_equal(slice_noise(5, shape, 2, "independent"), slice_noise(5, shape, 3, "independent"))
    with pytest.raises(InvalidInputError, match="noise"):
        slice_noise(3, shape, 0, "smooth")
    for bad in (1.0, -0.1):
        with pytest.raises(InvalidInputError, match="correlation"):
            slice_noise(3, shape, 0, "correlated", correlation=bad)


def test_shared_noise_gives_equal_slices_for_equal_masks(tiny_seg2img: Path) -> None:
    arr = np.zeros((4, 12, 12), np.uint8)
    arr[:, 3:9, 2:10] = 5
    arr[:, 5:7, 4:7] = 2
    labels = LabelMap(arr)
    shared = _gen(labels, tiny_seg2img, noise="shared", eta=0.0).array  # deterministic: noise = start only
    assert all(np.allclose(shared[0], shared[i], atol=1e-5) for i in range(1, 4))
    independent = _gen(labels, tiny_seg2img, noise="independent", eta=0.0).array
    assert not np.allclose(independent[0], independent[1])
    correlated = _gen(labels, tiny_seg2img, noise="correlated", correlation=0.95, eta=0.0).array
    # neighbours generated from correlated noise are closer than independent ones
    assert np.abs(correlated[0] - correlated[1]).mean() < np.abs(independent[0] - independent[1]).mean()


# ---- errors ------------------------------------------------------------------------------------------
def test_request_errors(oblique_labels: LabelMap, oblique_volume: Volume, tiny_seg2img: Path,
                        tiny_seg2img_standard: Path, tiny_paired: tuple[Path, Path]) -> None:
    with pytest.raises(InvalidInputError, match="LabelMap"):
        _gen(oblique_volume, tiny_seg2img)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="LabelMap"):
        _gen(oblique_labels.array, tiny_seg2img)  # type: ignore[arg-type]
    for axis in (3, -1, True):
        with pytest.raises(InvalidInputError, match="axis"):
            _gen(oblique_labels, tiny_seg2img, axis=axis)
    unknown = oblique_labels.with_array(np.where(oblique_labels.array == 2, 3, oblique_labels.array))
    with pytest.raises(InvalidInputError, match=r"\[3\]"):
        _gen(unknown, tiny_seg2img)
    with pytest.raises(InvalidInputError, match="mask ablation"):
        _gen(oblique_labels, tiny_seg2img_standard, drop_classes=[1])
    with pytest.raises(InvalidInputError, match=r"Cannot drop classes \[4\]"):
        _gen(oblique_labels, tiny_seg2img, drop_classes=[4])
    with pytest.raises(InvalidInputError, match="reference"):
        _gen(oblique_labels, tiny_seg2img, similarity=0.5)
    with pytest.raises(InvalidInputError, match="reference must be an image"):
        _gen(oblique_labels, tiny_seg2img, reference=oblique_labels)
    moved = Volume(oblique_volume.array, oblique_volume.spacing, (0.0, 0.0, 0.0), oblique_volume.direction)
    with pytest.raises(GeometryMismatchError):
        _gen(oblique_labels, tiny_seg2img, reference=moved)
    for seed in (1.5, True, "1"):
        with pytest.raises(InvalidInputError, match="seed"):
            _gen(oblique_labels, tiny_seg2img, seed=seed)
    with pytest.raises(InvalidInputError, match="batch_size"):
        _gen(oblique_labels, tiny_seg2img, batch_size=0)
    with pytest.raises(InvalidInputError, match="noise"):
        _gen(oblique_labels, tiny_seg2img, noise="smooth")
    with pytest.raises(CheckpointError, match="mask-diffusion"):
        _gen(oblique_labels, tiny_paired[0])
    # a standard model still generates when nothing is dropped
    assert _gen(oblique_labels, tiny_seg2img_standard).shape == oblique_labels.shape
