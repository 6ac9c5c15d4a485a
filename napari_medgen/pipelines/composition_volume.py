"""Tumour composition into a volume, slice by slice on the slices the object spans (seed 000 applied to 3D data).

The object volume's tumour occupies slices k0..k1 along ``axis``; they are composed into background slices centred on
``at``'s slice index, each with the 2D method, sharing one crop box (the union of the tumour's in-plane extent) so the
tumour stays aligned across slices. Slices outside the span are the background, bit for bit; the result lives on the
background's grid (spacing, origin, direction kept) and the placed tumour comes back as a `LabelMap` on that grid.
Inter-slice options are those of the slice-wise generator: ``noise`` = independent / shared / correlated starting
noise for the methods that draw any (tf-icon, sdedit, blended), with ``correlation`` between neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medgen.core.progress import Job, ProgressEvent, run_job
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import DimensionError, InvalidInputError


@dataclass(frozen=True)
class VolumeCompositionResult:
    """The composite volume and the placed tumour's label map, both on the background's grid."""

    image: Volume
    mask: LabelMap
    report: dict[str, Any] = field(default_factory=dict)


def compose_volume_job(
    background: Volume,
    object_image: Volume,
    object_mask: Volume,
    *,
    at: Sequence[float],
    axis: int = 0,
    noise: str = "independent",
    correlation: float = 0.9,
    margin: float = 0.15,
    seed: int = 0,
    **kwargs: Any,
) -> Job[VolumeCompositionResult]:
    """Job form of `compose_volume`: ``at`` = (x, y, slice) with x, y in the slice plane (columns, rows of the array
    with ``axis`` removed) and ``slice`` the background slice the tumour's middle slice lands on."""
    import torch

    from napari_medgen.pipelines.composition import check_settings, compose_job
    from napari_medgen.pipelines.slice_generation import NOISE_MODES, slice_noise

    for what, vol in (("background", background), ("object image", object_image), ("object mask", object_mask)):
        if not isinstance(vol, Volume):
            raise InvalidInputError(f"The {what} must be a Volume for slice-wise composition; got "
                                    f"{type(vol).__name__}.")
    if isinstance(axis, bool) or axis not in (0, 1, 2):
        raise InvalidInputError(f"axis must be 0, 1 or 2 (array axes z, y, x); got {axis!r}.")
    if noise not in NOISE_MODES:
        raise InvalidInputError(f"noise must be one of {', '.join(NOISE_MODES)}; got {noise!r}.")
    if len(at) != 3:
        raise InvalidInputError(f"For a volume give the target as x, y, slice (three numbers); got {list(at)}.")
    check_settings(kwargs.get("method", "ours"), kwargs.get("steps", 20), kwargs.get("t_prime", 6),
                   kwargs.get("tau", 3), kwargs.get("strength"))
    if object_mask.shape != object_image.shape:
        raise DimensionError(f"The object mask {object_mask.shape} must have the object image's shape "
                             f"{object_image.shape}.")
    bg = np.moveaxis(np.asarray(background.array, np.float32), axis, 0)
    obj = np.moveaxis(np.asarray(object_image.array, np.float32), axis, 0)
    msk = np.moveaxis(np.asarray(object_mask.array) != 0, axis, 0)
    if not msk.any():
        raise InvalidInputError("The object mask is empty: draw or load the tumour's segmentation (non-zero voxels).")
    span = np.nonzero(msk.any(axis=(1, 2)))[0]
    k0, k1 = int(span[0]), int(span[-1])
    centre = int(round(float(at[2])))
    first = centre - (k1 - k0) // 2
    if not 0 <= centre < bg.shape[0]:
        raise InvalidInputError(f"Slice {centre} is outside the background's {bg.shape[0]} slices along axis {axis}.")
    if first < 0 or first + (k1 - k0) >= bg.shape[0]:
        raise InvalidInputError(f"The tumour spans {k1 - k0 + 1} slices; centred on slice {centre} it would leave the "
                                f"background's {bg.shape[0]} slices. Move it to a slice in "
                                f"[{(k1 - k0) // 2}, {bg.shape[0] - 1 - (k1 - k0 - (k1 - k0) // 2)}].")
    ys, xs = np.nonzero(msk.any(axis=0))
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    my, mx = max(1, round(margin * (y1 - y0))), max(1, round(margin * (x1 - x0)))
    crop = (max(0, y0 - my), min(msk.shape[1], y1 + my), max(0, x0 - mx), min(msk.shape[2], x1 + mx))
    out = bg.copy()
    labels = np.zeros(bg.shape, np.uint8)
    todo = [k for k in range(k0, k1 + 1) if msk[k].any()]
    latent_shape = None
    starts = None
    reports = []
    for n, k in enumerate(todo):
        target = first + (k - k0)
        extra: dict[str, Any] = {}
        if kwargs.get("method", "ours") in ("tf-icon", "sdedit", "blended"):
            if starts is None:
                latent_shape = _latent_shape(kwargs.get("model"), kwargs.get("device"))
                starts = slice_noise(k1 - k0 + 1, latent_shape, int(seed), noise, correlation)
            extra["noise"] = torch.from_numpy(np.ascontiguousarray(starts[k - k0]))[None]
        slice_seed = int(seed) if noise == "shared" else int(seed) * 1_000_003 + target
        job = compose_job(bg[target], obj[k], msk[k], at=(float(at[0]), float(at[1])), margin=margin,
                          crop_box=crop, seed=slice_seed, **extra, **kwargs)
        try:
            while True:
                event = next(job)
                what = event.message or event.stage
                yield ProgressEvent(n, len(todo), "composing slices", f"slice {target} ({what})")
        except StopIteration as stop:
            result = stop.value
        out[target] = result.image
        labels[target] = result.mask
        reports.append(result.report)
    yield ProgressEvent(len(todo), len(todo), "composing slices")
    report = dict(reports[0]) if reports else {}
    report.update({"axis": int(axis), "slices": [first + (k - k0) for k in todo], "noise": noise,
                   "at": [float(v) for v in at], "seed": int(seed)})
    image = background.with_array(np.moveaxis(out, 0, axis).astype(np.float32), metadata=report)
    mask = background.as_labels(np.moveaxis(labels, 0, axis))
    return VolumeCompositionResult(image, mask, report)


def _latent_shape(model: Any, device: Any) -> tuple[int, ...]:
    from napari_medgen.pipelines.composition import DEFAULT_MODEL
    from napari_medgen.pipelines.composition_backbones import load_backbone

    backbone = load_backbone(DEFAULT_MODEL if model is None else model, device=device)
    h, w = backbone.working_size()
    f = backbone.latent_factor()
    channels = backbone.channels if f == 1 else int(backbone.pipe.vae.config.latent_channels)
    return (channels, h // f, w // f)


def compose_volume(background: Volume, object_image: Volume, object_mask: Volume, **kwargs: Any
                   ) -> VolumeCompositionResult:
    """Compose a tumour volume into ``background`` slice by slice (see `compose_volume_job` and `compose`)."""
    return run_job(compose_volume_job(background, object_image, object_mask, **kwargs))


__all__ = ["VolumeCompositionResult", "compose_volume", "compose_volume_job"]
