"""Mask-guided generation over a labels volume, slice by slice (seed 002 applied to 3D data).

A `LabelMap` (a labels layer, a segmentation file) is cut into 2D slices along any axis, each slice is
resized to the model's size, encoded (classes the user drops are left unconstrained), generated in
batches, resized back and stacked: the result is a `Volume` on exactly the labels' grid. With a
reference scan the output is mapped back to the reference's intensity units, and ``similarity``
makes each slice resemble the matching reference slice (seed 002 section 3.2.2).

Inter-slice consistency: a 2D model knows nothing of the neighbouring slices. ``noise`` chooses how
the starting noise of the slices relates: ``independent`` (every slice its own sample; most varied,
visible jumps between slices), ``shared`` (the same noise for all slices: smooth along the axis where
the masks change slowly, but textures repeat), ``correlated`` (an AR(1) sequence with correlation
``correlation`` between neighbours, in between). ``similarity`` to a reference gives the strongest
consistency, because the anatomy then comes from the real scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medgen.core.progress import Job, ProgressEvent, run_job
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import InvalidInputError

DEFAULT_MODEL = "seg2img-brain"
DEFAULT_SAMPLER = "dpmpp"
NOISE_MODES = ("independent", "shared", "correlated")


@dataclass(frozen=True)
class SliceResult:
    """The generated image on the labels' grid and a JSON-ready report of how it was made (also its metadata)."""

    image: Volume
    report: dict[str, Any] = field(default_factory=dict)


def default_steps(model: str | Path = DEFAULT_MODEL, sampler: str = DEFAULT_SAMPLER) -> int:
    """The step count used when none is given: the sampler's usual count, capped by the model's schedule."""
    from napari_medgen.hub import read_checkpoint_config
    from napari_medgen.pipelines.diffusion_sampling import default_steps as sampler_steps

    return sampler_steps(read_checkpoint_config(model)["config"], sampler)


def slice_noise(n: int, shape: Sequence[int], seed: int, mode: str, correlation: float = 0.9) -> np.ndarray:
    """(n, *shape) standard normal starting noise for ``n`` consecutive slices (see the module docstring)."""
    if mode not in NOISE_MODES:
        raise InvalidInputError(f"noise must be one of {', '.join(NOISE_MODES)}; got {mode!r}.")
    if not 0.0 <= correlation < 1.0:
        raise InvalidInputError(f"correlation must be in [0, 1); got {correlation}.")
    rng = np.random.default_rng(seed)
    if mode == "shared":
        return np.broadcast_to(rng.standard_normal(tuple(shape)), (n, *shape)).astype(np.float32)
    fresh = rng.standard_normal((n, *shape))
    if mode == "independent":
        return fresh.astype(np.float32)
    out = np.empty_like(fresh)
    out[0] = fresh[0]
    keep = np.sqrt(1.0 - correlation**2)
    for i in range(1, n):  # unit variance at every slice, neighbour correlation = correlation
        out[i] = correlation * out[i - 1] + keep * fresh[i]
    return out.astype(np.float32)


def _check_request(labels: Any, model: Any, axis: int, drop_classes: Sequence[int], reference: Any,
                   similarity: float) -> np.ndarray:
    from napari_medgen.models.mask_code import check_labels

    if not isinstance(labels, LabelMap):
        raise InvalidInputError(
            f"labels must be a LabelMap (a labels layer or a label-map file); got {type(labels).__name__}."
        )
    if isinstance(axis, bool) or axis not in (0, 1, 2):
        raise InvalidInputError(f"axis must be 0, 1 or 2 (array axes z, y, x); got {axis!r}.")
    arr = check_labels(labels.array, model.class_values, "labels")
    if labels.shape[axis] < 1 or min(s for i, s in enumerate(labels.shape) if i != axis) < 2:
        raise InvalidInputError(
            f"Slices along axis {axis} of a {labels.shape} volume are too small; pick another axis."
        )
    unknown = sorted({int(c) for c in drop_classes} - set(model.class_values))
    if unknown:
        raise InvalidInputError(
            f"Cannot drop classes {unknown}: the model's classes are {model.class_values} "
            f"({', '.join(model.config['class_names'])})."
        )
    if drop_classes and not model.config.get("trained_with_ablation", False):
        raise InvalidInputError(
            "This model was trained on complete masks (no mask ablation), so it cannot leave classes "
            "unconstrained; use a mask-ablated model (e.g. the bundled seg2img-brain) or drop nothing."
        )
    if reference is not None:
        if not isinstance(reference, Volume) or isinstance(reference, LabelMap):
            raise InvalidInputError("reference must be an image Volume (the scan the labels belong to).")
        reference.require_same_grid(labels, "labels")
    elif similarity > 0:
        raise InvalidInputError("similarity > 0 needs a reference image; give the scan the labels were drawn on.")
    return arr


def generate_from_labels_job(
    labels: LabelMap,
    *,
    model: str | Path = DEFAULT_MODEL,
    axis: int = 0,
    drop_classes: Sequence[int] = (),
    steps: int | None = None,
    sampler: str = DEFAULT_SAMPLER,
    seed: int = 0,
    reference: Volume | None = None,
    similarity: float = 0.0,
    mix_at: float = 0.24,
    noise: str = "independent",
    correlation: float = 0.9,
    skip_empty: bool = True,
    batch_size: int = 16,
    eta: float = 1.0,
    device: Any = None,
) -> Job[SliceResult]:
    """Job form of `generate_from_labels`: yields one event per sampling step of each slice batch."""
    import torch

    from napari_medgen.core.device import cpu_generator
    from napari_medgen.core.slices import resize_slices, to_unit_range
    from napari_medgen.hub import load_cached
    from napari_medgen.models.mask_code import encode_mask
    from napari_medgen.pipelines.diffusion_sampling import default_steps as sampler_steps
    from napari_medgen.pipelines.diffusion_sampling import sample_mask_guided

    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidInputError(f"seed must be 0 or a positive integer; got {seed!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1; got {batch_size}.")
    yield ProgressEvent(0, None, "generating slices", "loading model")
    net = load_cached(model, expected_type="mask-diffusion", device=device)
    steps = sampler_steps(net.config, sampler) if steps is None else steps
    arr = _check_request(labels, net, axis, drop_classes, reference, similarity)
    size = net.image_size
    stack = np.moveaxis(arr, axis, 0)
    n, h, w = stack.shape
    dropped = {int(c) for c in drop_classes}
    todo = [i for i in range(n) if not skip_empty or dropped or stack[i].any()]
    start_noise = slice_noise(n, (net.config["image_channels"], *size), int(seed), noise, correlation)
    ref_small = None
    imap = None
    if reference is not None:
        from napari_medgen.core.intensity import fit_normalizer, normalize_intensity

        ref = np.asarray(reference.array, dtype=np.float32)
        imap = fit_normalizer(ref, net.config["normalization"])
        ref_unit = np.moveaxis(to_unit_range(normalize_intensity(ref, net.config["normalization"])), axis, 0)
        ref_small, _ = resize_slices(ref_unit, None, size)
    _, small_labels = resize_slices(None, stack, size)
    out = np.full((n, *size), -1.0, dtype=np.float32)  # background of the model's [-1, 1] range
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    total_steps = len(batches) * int(steps)
    done = 0
    for b, rows in enumerate(batches):
        code = encode_mask(torch.from_numpy(small_labels[rows].astype(np.int64)), net.class_values, dropped)
        generator = cpu_generator(int(seed) * 1_000_003 + rows[0])
        job = sample_mask_guided(
            net, code, torch.from_numpy(start_noise[rows]), sampler=sampler, steps=int(steps),
            generator=generator, similarity=float(similarity), mix_at=mix_at, eta=float(eta),
            reference=None if ref_small is None else torch.from_numpy(ref_small[rows][:, None]),
        )
        try:
            while True:
                next(job)
                done += 1
                yield ProgressEvent(done, total_steps, "generating slices", f"batch {b + 1}/{len(batches)}")
        except StopIteration as stop:
            out[rows] = stop.value[:, 0].cpu().numpy()
    # back to the slice size (bilinear) and the volume's axis order
    from scipy import ndimage

    full = ndimage.zoom(out, (1.0, h / size[0], w / size[1]), order=1, grid_mode=True, mode="nearest")
    unit = np.moveaxis((np.clip(full, -1.0, 1.0) + 1.0) / 2.0, 0, axis).astype(np.float32)
    values = imap.inverse(unit).astype(np.float32) if imap is not None else unit
    metadata = {
        "generated_by": "napari-medgen seg2img", "model": str(model), "seed": int(seed), "sampler": sampler,
        "steps": int(steps), "eta": float(eta), "axis": int(axis), "dropped_classes": sorted(dropped), "noise": noise,
        "similarity": float(similarity), "units": "reference intensities" if imap is not None else "normalised [0, 1]",
    }
    return SliceResult(Volume(values, labels.spacing, labels.origin, labels.direction, metadata), dict(metadata))


def generate_from_labels(labels: LabelMap, **kwargs: Any) -> SliceResult:
    """An image that follows ``labels`` slice by slice, on the labels' grid (same seed, same image).

    ``drop_classes``: label values left unconstrained (mask-ablated models only). ``reference`` (the
    scan the labels belong to, same grid) maps intensities back to its units and enables ``similarity``.
    ``steps=None``: `default_steps` of the model and sampler. ``device``: where the network runs
    (`core.device.select_device`). See `generate_from_labels_job` for every option.
    """
    return run_job(generate_from_labels_job(labels, **kwargs))
