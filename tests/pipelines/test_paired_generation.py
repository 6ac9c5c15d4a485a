"""Paired image + mask generation (PIG lock-step sampler) on tiny untrained checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medgen.core.progress import ProgressEvent, run_job
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import CheckpointError, InvalidInputError
from napari_medgen.models.mask_diffusion import MaskDiffusionUNet
from napari_medgen.models.paired_guider import PairedGuider
from napari_medgen.pipelines.paired_generation import generate_pairs, generate_pairs_job

FAST = {"steps": 2}
TINY = {"block_out_channels": (8, 16), "norm_num_groups": 4, "num_train_timesteps": 100}


def _pairs(paired: tuple[Path, Path], n: int = 3, **kwargs: object) -> list[tuple[Volume, LabelMap]]:
    guider, image_model = paired
    return generate_pairs(n, guider=guider, image_model=image_model, **{**FAST, **kwargs}).pairs


def _arrays(pairs: list[tuple[Volume, LabelMap]]) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([p[0].array for p in pairs]), np.stack([p[1].array for p in pairs])


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp", "ddpm"])
def test_n_pairs_with_shapes_types_and_ranges(tiny_paired: tuple[Path, Path], sampler: str) -> None:
    pairs = _pairs(tiny_paired, 5, batch_size=2, sampler=sampler, spacing=(0.4, 0.7))
    assert len(pairs) == 5
    for i, (image, mask) in enumerate(pairs):
        assert type(image) is Volume and type(mask) is LabelMap
        assert image.shape == (1, 16, 16) and mask.shape == (1, 16, 16)
        assert image.array.dtype == np.float32 and np.all(np.isfinite(image.array))
        assert float(image.array.min()) >= 0.0 and float(image.array.max()) <= 1.0
        assert mask.array.dtype == np.uint8 and set(np.unique(mask.array)) <= {0, 1}
        assert image.spacing == pytest.approx((0.4, 0.7, 1.0)) and mask.spacing == image.spacing
        assert image.same_grid(mask)
        assert image.metadata["index"] == i and image.metadata["sampler"] == sampler
    images, _ = _arrays(pairs)
    assert not np.allclose(images[0], images[1])  # every pair starts from its own noise


def test_deterministic_by_seed(tiny_paired: tuple[Path, Path]) -> None:
    a = _arrays(_pairs(tiny_paired, 3, seed=11, batch_size=2))
    b = _arrays(_pairs(tiny_paired, 3, seed=11, batch_size=2))
    c = _arrays(_pairs(tiny_paired, 3, seed=12, batch_size=2))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.allclose(a[0], c[0])


def test_deterministic_samplers_do_not_depend_on_batch_size(tiny_paired: tuple[Path, Path]) -> None:
    one = _arrays(_pairs(tiny_paired, 3, seed=5, batch_size=1, sampler="ddim", eta=0.0))
    all_ = _arrays(_pairs(tiny_paired, 3, seed=5, batch_size=3, sampler="ddim", eta=0.0))
    np.testing.assert_allclose(one[0], all_[0], atol=1e-5)
    np.testing.assert_array_equal(one[1], all_[1])


def test_progress_one_event_per_lock_step(tiny_paired: tuple[Path, Path]) -> None:
    guider, image_model = tiny_paired
    events: list[ProgressEvent] = []
    pairs = run_job(generate_pairs_job(3, guider=guider, image_model=image_model, steps=3, batch_size=2),
                    events.append)
    assert len(pairs.pairs) == 3 and len(pairs.images) == len(pairs.masks) == 3
    assert (events[0].step, events[0].total) == (0, None)
    assert [e.step for e in events[1:]] == list(range(1, 7)) and {e.total for e in events[1:]} == {6}
    assert events[1].message == "batch 1/2, step 1/6" and events[-1].message == "batch 2/2, step 6/6"
    assert pairs.report["steps"] == 3 and pairs.report["n"] == 3


def test_default_steps_come_from_the_pipeline(tiny_paired: tuple[Path, Path]) -> None:
    from napari_medgen.pipelines.paired_generation import default_steps

    guider, image_model = tiny_paired
    assert default_steps(guider, "ddim") == 50 and default_steps(guider, "ddpm") == 100
    assert default_steps() == 50  # the bundled guider, DDIM


def test_multiclass_masks_use_the_class_values(tmp_path: Path) -> None:
    torch.manual_seed(0)
    kwargs = {"image_size": (16, 16), "class_values": (2, 7), **TINY}
    guider = PairedGuider(**kwargs).save_pretrained(tmp_path / "guider")
    image_model = MaskDiffusionUNet(**kwargs).save_pretrained(tmp_path / "image")
    pairs = _pairs((guider, image_model), 4, smooth=1, seed=2)
    values = set(np.unique(_arrays(pairs)[1]))
    assert values <= {0, 2, 7}
    assert values & {2, 7}  # an untrained guider's noise decodes to some foreground


def test_smoothing_changes_the_mask_not_the_count(tiny_paired: tuple[Path, Path]) -> None:
    raw = _arrays(_pairs(tiny_paired, 2, smooth=1))[1]
    smooth = _arrays(_pairs(tiny_paired, 2, smooth=5))[1]
    assert raw.shape == smooth.shape
    # a 5x5 average removes isolated pixels: fewer 4-neighbour label changes than the raw decoding
    def edges(m: np.ndarray) -> int:
        return int(np.sum(m[..., 1:, :] != m[..., :-1, :]) + np.sum(m[..., :, 1:] != m[..., :, :-1]))
    assert edges(smooth) < edges(raw)


def test_errors(tmp_path: Path, tiny_paired: tuple[Path, Path]) -> None:
    guider, image_model = tiny_paired
    for n in (0, -2, 1.5, True):
        with pytest.raises(InvalidInputError, match="n \\(number of pairs\\)"):
            _pairs(tiny_paired, n)  # type: ignore[arg-type]
    for smooth in (0, 2, 4):
        with pytest.raises(InvalidInputError, match="smooth"):
            _pairs(tiny_paired, 1, smooth=smooth)
    for seed in (1.5, True):
        with pytest.raises(InvalidInputError, match="seed"):
            _pairs(tiny_paired, 1, seed=seed)
    for spacing in ((1.0,), (1.0, 0.0), (-1.0, 1.0)):
        with pytest.raises(InvalidInputError, match="spacing"):
            _pairs(tiny_paired, 1, spacing=spacing)
    with pytest.raises(CheckpointError, match="paired-guider"):
        _pairs((image_model, guider), 1)  # swapped
    with pytest.raises(CheckpointError, match="mask-diffusion"):
        _pairs((guider, guider), 1)
    with pytest.raises(InvalidInputError, match="image model"):
        generate_pairs(1, guider=guider, steps=2)  # a non-bundled guider has no default partner
    big = MaskDiffusionUNet(image_size=(32, 32), class_values=(1,), **TINY).save_pretrained(tmp_path / "big")
    with pytest.raises(InvalidInputError, match="image_size"):
        _pairs((guider, big), 1)
    other = MaskDiffusionUNet(image_size=(16, 16), class_values=(1, 2), **TINY).save_pretrained(tmp_path / "two")
    with pytest.raises(InvalidInputError, match="class_values"):
        _pairs((guider, other), 1)
    with pytest.raises(InvalidInputError, match="sampler"):
        _pairs(tiny_paired, 1, sampler="euler")
