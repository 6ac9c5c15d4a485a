"""The 3D tumour editor with the brain editor checkpoint: learned inpainting for removal, a fitted glioma
appearance model for synthesis (the default of `pipelines.tumor_synthesis` for brain scans).

Why not the texture bridge alone: painted into 32^3 patches from a flat fill, its edits lost to a plain harmonic fill
on unseen scans and its tumours were uniform blobs. Here

* **removal** is healthy-tissue inpainting (`pipelines.tumour_removal`): the `Inpainter` network modulates a
  brain-aware harmonic fill and the contralateral tissue blended in the gradient domain, seeing the whole region
  with context on a coarse grid; nothing under the region is read;
* **synthesis** paints glioma sub-regions (necrotic core, enhancing tumour, edema) with the appearance statistics
  stored in the same checkpoint (`models.tumour_appearance`, fitted on the training tumours by
  ``medgen train inpainter``) or measured on a reference tumour: per-region intensity quantiles, a depth profile
  (bright enhancing rim, dark centre) and a spatial correlation length, as a Gaussian random field mapped through the
  region's quantile function. Under the tumour the healthy tissue is first inpainted, so edema keeps anatomy.

Everything works in brain-normalised units (`models.inpainter.brain_range` of the scan), so raw and z-scored scans
both work and results come back in the scan's units and dtype. Voxels beyond the labels and the blend band are
bit-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_medgen.core.progress import Job, ProgressEvent
from napari_medgen.core.volume import LabelMap, Volume


def grown(region: np.ndarray, spacing_zyx: tuple[float, float, float], margin_mm: float) -> np.ndarray:
    """``region`` grown by ``margin_mm`` (the tumour's partial-volume rim goes with it)."""
    from scipy import ndimage

    if margin_mm <= 0:
        return region
    return ndimage.distance_transform_edt(~region, sampling=spacing_zyx) <= margin_mm


def remove_job(volume: Volume, labels: LabelMap, tumour: np.ndarray, *, model: str | Path, margin_mm: float,
               device: Any, removed_label: str | int) -> Job[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """Inpaint ``tumour`` (grown by ``margin_mm``): (new array, remaining labels, report)."""
    from napari_medgen.pipelines.tumour_removal import inpaint_job

    region = grown(tumour, tuple(float(s) for s in volume.spacing_zyx), float(margin_mm))
    result = yield from inpaint_job(volume, region, model=model, device=device)
    remaining = np.where(tumour, 0, np.asarray(labels.array))
    report = {**result.report, "removed_label": removed_label, "margin_mm": float(margin_mm)}
    return np.asarray(result.image.array), remaining, report



# ---- synthesis ------------------------------------------------------------------------------------------------
#: BraTS label values the editor writes: necrotic core, edema, enhancing tumour
NECROTIC, EDEMA, ENHANCING = 1, 2, 4
#: the two-region shape model for brain scans (necrotic core inside tumour core)
SHAPE_MODEL = "shape-gan-brats"
DEFAULT_SEQUENCE = "T1c"
DEFAULT_EDEMA_MM = (4.0, 12.0)
#: share of a one-label core that becomes necrotic when the shape has no sub-regions (deepest voxels)
DEFAULT_NECROTIC_FRACTION = 0.3
#: texture controls: per-region statistics a user can set (brain-normalised units: 0 / 1 = the healthy brain's
#: 0.5 / 99.5 percentiles); keys ``"<region>/<control>"`` with region ``necrotic``, ``edema``, ``enhancing``
TEXTURE_CONTROLS = ("mean", "spread")
REGION_KEYS = {"necrotic": NECROTIC, "edema": EDEMA, "enhancing": ENHANCING}


def appearance_of(net: Any, sequence: str) -> dict[str, Any]:
    """The fitted appearance of ``sequence`` stored in the editor checkpoint."""
    from napari_medgen.errors import CheckpointError, InvalidInputError

    table = net.hub_extra.get("appearance")
    if not isinstance(table, dict) or not table:
        raise CheckpointError(f"{net.hub_path} has no tumour appearance statistics; export it with "
                              "`medgen train inpainter`, which fits them on the training tumours.")
    if sequence not in table:
        raise InvalidInputError(f"This editor knows the sequences {sorted(table)}; got {sequence!r}. Pick the one "
                                "your scan is (e.g. T1c for post-contrast T1).")
    return table[sequence]


def normalised(volume: Volume, region: np.ndarray) -> tuple[np.ndarray, float, float, np.ndarray]:
    """(brain-normalised scan, low, high, brain): units as the appearance was fitted in; nothing under ``region``
    is read."""
    from napari_medgen.models.inpainter import healthy_brain

    _, low, high, brain = healthy_brain(np.asarray(volume.array), region)
    return (np.asarray(volume.array, dtype=np.float32) - low) / (high - low), low, high, brain


def split_core(core: np.ndarray, spacing_zyx: tuple[float, float, float], necrotic_fraction: float) -> np.ndarray:
    """A one-label tumour core as BraTS labels: its deepest ``necrotic_fraction`` necrotic, the rest enhancing."""
    from scipy import ndimage

    labels = np.where(core, ENHANCING, 0).astype(np.uint8)
    if necrotic_fraction > 0:
        depth = ndimage.distance_transform_edt(core, sampling=spacing_zyx)
        cut = np.quantile(depth[core], 1.0 - float(necrotic_fraction))
        labels[core & (depth > cut)] = NECROTIC
    return labels


def brats_labels(labels: np.ndarray, spacing_zyx: tuple[float, float, float], necrotic_fraction: float
                 ) -> np.ndarray:
    """Any tumour label map as BraTS sub-regions: BraTS-valued maps (1, 2, 3, 4) are kept, a one-label map is split
    by depth (`split_core`), the two-region shape model's (1 necrotic core, 2 rest of the core) is renamed."""
    values = {int(v) for v in np.unique(labels) if v}
    if not values:
        from napari_medgen.errors import InvalidInputError

        raise InvalidInputError("The tumour shape is empty.")
    if len(values) == 1:
        return split_core(labels > 0, spacing_zyx, necrotic_fraction)
    if values <= {1, 2} and 4 not in values:  # the shape model's nesting: 1 inside 2
        return np.select([labels == 1, labels == 2], [NECROTIC, ENHANCING], 0).astype(np.uint8)
    return np.asarray(labels, dtype=np.uint8)


def with_edema(labels: np.ndarray, spacing_zyx: tuple[float, float, float], brain: np.ndarray,
               edema_mm: tuple[float, float] | None, rng: np.random.Generator) -> np.ndarray:
    """``labels`` plus an irregular edema shell (`models.tumour_appearance.grow_edema`) unless it has edema already
    or ``edema_mm`` is None."""
    from napari_medgen.models.tumour_appearance import grow_edema

    if edema_mm is None or EDEMA in labels or max(edema_mm) <= 0:
        return labels
    shell = grow_edema(labels > 0, spacing_zyx, rng, thickness_mm=tuple(edema_mm), brain=brain)
    out = labels.copy()
    out[shell & (out == 0)] = EDEMA
    return out


def texture_stats(base: dict[str, Any], texture: dict[str, float] | None) -> dict[str, Any]:
    """``base`` appearance with user controls applied: ``<region>/mean`` shifts a region's intensity quantiles to
    that mean, ``<region>/spread`` scales them about their median (1 = unchanged)."""
    from napari_medgen.errors import InvalidInputError

    if not texture:
        return base
    labels = {k: dict(v) for k, v in base["labels"].items()}
    for key, value in texture.items():
        region, _, control = str(key).partition("/")
        if region not in REGION_KEYS or control not in TEXTURE_CONTROLS:
            raise InvalidInputError(
                f"Unknown texture control {key!r}; use '<region>/<control>' with region one of "
                f"{', '.join(REGION_KEYS)} and control one of {', '.join(TEXTURE_CONTROLS)} (e.g. enhancing/mean=0.9)."
            )
        number = float(value)
        if not np.isfinite(number) or (control == "spread" and number <= 0):
            raise InvalidInputError(f"Texture control {key} needs a finite{' positive' if control == 'spread' else ''} "
                                    f"number; got {value!r}.")
        entry = labels.get(str(REGION_KEYS[region]))
        if entry is None:
            raise InvalidInputError(f"The appearance has no {region} statistics to change.")
        q = np.asarray(entry["quantiles"], dtype=float)
        if control == "mean":
            q = q + (number - float(q.mean()))
        else:
            q = float(np.median(q)) + (q - float(np.median(q))) * number
        entry["quantiles"] = q.tolist()
        entry["mean"] = float(q.mean())
    return {**base, "labels": labels}


def reference_stats(reference: tuple[Any, ...], defaults: dict[str, Any], necrotic_fraction: float) -> dict[str, Any]:
    """Appearance measured on a reference tumour (image, labels[, label]); sub-regions it lacks keep the defaults."""
    from napari_medgen.errors import InvalidInputError
    from napari_medgen.models.tumour_appearance import measure

    if len(reference) not in (2, 3):
        raise InvalidInputError("texture_from must be (image, labels) or (image, labels, label).")
    image, labels = reference[0], reference[1]
    if not isinstance(image, Volume) or not isinstance(labels, LabelMap):
        raise InvalidInputError("texture_from needs an image Volume and its LabelMap.")
    image.require_same_grid(labels, "reference labels")
    arr = np.asarray(labels.array)
    if len(reference) == 3 and reference[2] is not None:
        if int(reference[2]) not in labels.labels():
            raise InvalidInputError(f"Label {reference[2]} does not occur in the reference labels "
                                    f"(present: {labels.labels()}).")
        arr = np.where(arr == int(reference[2]), arr, 0)
    tumour = arr > 0
    if not tumour.any():
        raise InvalidInputError("The reference tumour is empty.")
    spacing = tuple(float(s) for s in image.spacing_zyx)
    norm, _, _, _ = normalised(image, tumour)
    measured = measure(norm, brats_labels(arr, spacing, necrotic_fraction), spacing)
    return {**defaults, **measured, "labels": {**defaults["labels"], **measured["labels"]}}


def paint_job(volume: Volume, labels: np.ndarray, stats: dict[str, Any], *, background: np.ndarray | None,
              seed: int, blend_mm: float) -> Job[tuple[np.ndarray, dict[str, Any]]]:
    """Paint ``labels`` (BraTS values on the scan's grid) into ``background`` (default: the scan): (array, report)."""
    from napari_medgen.models.tumour_appearance import paint
    from napari_medgen.pipelines.tumour_removal import to_scan_dtype

    yield ProgressEvent(0, 1, "painting tumour", "sub-region textures")
    region = labels > 0
    spacing = tuple(float(s) for s in volume.spacing_zyx)
    base = volume if background is None else volume.with_array(background)
    norm, low, high, _ = normalised(base, region)
    painted = paint(norm, labels, stats, spacing, np.random.default_rng(int(seed)), blend_mm=float(blend_mm))
    changed = painted != norm
    out = np.asarray(base.array).copy()
    out[changed] = to_scan_dtype(painted[changed].astype(np.float64) * (high - low) + low, out.dtype)
    counts = {name: int(np.count_nonzero(labels == value)) for name, value in
              (("necrotic_core", NECROTIC), ("edema", EDEMA), ("enhancing_tumour", ENHANCING))}
    report = {"subregion_voxels": counts, "normalisation": {"low": float(low), "high": float(high)},
              "blend_mm": float(blend_mm), "seed": int(seed)}
    yield ProgressEvent(1, 1, "painting tumour", "done")
    return out, report


def place_labels_job(volume: Volume, shape: LabelMap | None, shape_request: dict[str, float] | None,
                     center_mm: Any, seed: int, device: Any) -> Job[tuple[np.ndarray, dict[str, Any]]]:
    """The tumour's label map on the scan's grid (sub-region values kept) and where it came from: a mask on the
    grid, any mask placed with its centroid at ``center_mm``, or the two-region shape model at ``center_mm``."""
    from napari_medgen.core.geometry import index_to_physical
    from napari_medgen.errors import InvalidInputError
    from napari_medgen.pipelines.shape_generation import generate_shape_job, place_shape

    if shape is not None and shape_request is not None:
        raise InvalidInputError("Give either a shape mask or shape features, not both.")
    if shape is not None and not isinstance(shape, LabelMap):
        raise InvalidInputError(f"The shape must be a LabelMap; got {type(shape).__name__}.")
    if shape is not None and shape.same_grid(volume) and center_mm is None:
        if not np.any(shape.array):
            raise InvalidInputError("The shape mask is empty: draw or load a tumour mask first.")
        return np.asarray(shape.array).astype(np.uint8), {"shape_from": "mask on the scan's grid"}
    if center_mm is None:
        raise InvalidInputError("Give the tumour centre (center_mm = x, y, z in mm, physical coordinates), or a "
                                "shape mask already on the scan's grid.")
    if shape is None:
        request = dict(shape_request or {"VoxelVolume": 20000.0})
        result = yield from generate_shape_job(request, model=SHAPE_MODEL, spacing=volume.spacing, seed=int(seed),
                                               device=device)
        shape = result.mask
        source: dict[str, Any] = {"shape_from": f"shape generator ({SHAPE_MODEL})", "shape_request": request}
    else:
        if not np.any(shape.array):
            raise InvalidInputError("The shape mask is empty: draw or load a tumour mask first.")
        centroid = index_to_physical(shape, np.argwhere(np.asarray(shape.array) != 0).mean(axis=0))
        shape = shape.with_array(np.asarray(shape.array), origin=tuple(np.asarray(shape.origin) - centroid))
        source = {"shape_from": "mask placed with its centroid at the centre"}
    placed = place_shape(shape, volume, center_mm)
    source["center_mm"] = [float(v) for v in np.asarray(center_mm, dtype=float).reshape(3)]
    return np.asarray(placed.array).astype(np.uint8), source


def synthesize_job(volume: Volume, net: Any, *, center_mm: Any, shape: LabelMap | None,
                   shape_request: dict[str, float] | None, texture: dict[str, float] | None,
                   texture_from: tuple[Any, ...] | None, seed: int, blend_mm: float, device: Any, sequence: str,
                   edema_mm: tuple[float, float] | None, necrotic_fraction: float
                   ) -> Job[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """A glioma with sub-regions at ``center_mm`` (or in ``shape``): (array, BraTS labels, report)."""
    spacing = tuple(float(s) for s in volume.spacing_zyx)
    raw, source = yield from place_labels_job(volume, shape, shape_request, center_mm, seed, device)
    yield ProgressEvent(0, 1, "sub-regions", "necrotic core, enhancing rim and edema")
    labels = brats_labels(raw, spacing, necrotic_fraction)
    _, _, _, brain = normalised(volume, labels > 0)
    labels = with_edema(labels, spacing, brain, edema_mm, np.random.default_rng([int(seed), 0xED]))
    stats = stats_for(net, sequence, texture, texture_from, necrotic_fraction)
    array, report = yield from paint_job(volume, labels, stats, background=None, seed=seed, blend_mm=blend_mm)
    report.update(source)
    report.update({"sequence": sequence, "edema_mm": None if edema_mm is None else list(edema_mm),
                   "texture_from": "reference tumour" if texture_from is not None else "fitted defaults",
                   "texture_controls": dict(texture or {})})
    return array, labels, report


def stats_for(net: Any, sequence: str, texture: dict[str, float] | None, texture_from: tuple[Any, ...] | None,
              necrotic_fraction: float) -> dict[str, Any]:
    """The appearance to paint: the checkpoint's fitted one, or a reference tumour's, with user controls applied."""
    stats = appearance_of(net, sequence)
    if texture_from is not None:
        stats = reference_stats(texture_from, stats, necrotic_fraction)
    return texture_stats(stats, texture)


def retexture_job(volume: Volume, labels: LabelMap, tumour: np.ndarray, net: Any, *, model: str | Path,
                  texture: dict[str, float] | None, texture_from: tuple[Any, ...] | None, seed: int,
                  blend_mm: float, device: Any, sequence: str, necrotic_fraction: float
                  ) -> Job[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """The tumour repainted with another appearance, its shape (and sub-regions) exactly kept: the old tumour is
    inpainted first so none of its intensities leak into the new texture."""
    from napari_medgen.pipelines.tumour_removal import inpaint_job

    spacing = tuple(float(s) for s in volume.spacing_zyx)
    kept = np.where(tumour, np.asarray(labels.array), 0)
    healthy = yield from inpaint_job(volume, tumour, model=model, device=device)
    stats = stats_for(net, sequence, texture, texture_from, necrotic_fraction)
    sub = brats_labels(kept, spacing, necrotic_fraction)
    array, report = yield from paint_job(volume, sub, stats, background=np.asarray(healthy.image.array), seed=seed,
                                         blend_mm=blend_mm)
    report.update({"sequence": sequence, "texture_controls": dict(texture or {}),
                   "texture_from": "reference tumour" if texture_from is not None else "fitted defaults"})
    return array, np.where(tumour, kept, np.asarray(labels.array)), report


def transformed_job(volume: Volume, labels: LabelMap, tumour: np.ndarray, moved_labels: np.ndarray, net: Any, *,
                    model: str | Path, texture: dict[str, float] | None, seed: int, blend_mm: float, device: Any,
                    sequence: str, necrotic_fraction: float, margin_mm: float
                    ) -> Job[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """Resize / move: the tumour is removed (inpainted) and its sub-regions (``moved_labels``, already transformed)
    are painted with the appearance measured on the original tumour."""
    from napari_medgen.pipelines.tumour_removal import inpaint_job

    spacing = tuple(float(s) for s in volume.spacing_zyx)
    own = reference_stats((volume, labels.with_array(np.where(tumour, np.asarray(labels.array), 0))),
                          appearance_of(net, sequence), necrotic_fraction)
    region = grown(tumour, spacing, float(margin_mm))
    removed = yield from inpaint_job(volume, region, model=model, device=device)
    moved_labels = brats_labels(moved_labels, spacing, necrotic_fraction)
    array, report = yield from paint_job(volume, moved_labels, texture_stats(own, texture),
                                         background=np.asarray(removed.image.array), seed=seed, blend_mm=blend_mm)
    remaining = np.where(tumour, 0, np.asarray(labels.array))
    out_labels = np.where(moved_labels > 0, moved_labels, remaining)
    report.update({"removal": removed.report, "sequence": sequence, "texture_from": "the tumour itself"})
    return array, out_labels, report


__all__ = ["DEFAULT_SEQUENCE", "EDEMA", "ENHANCING", "NECROTIC", "SHAPE_MODEL", "TEXTURE_CONTROLS", "appearance_of",
           "brats_labels", "grown", "normalised", "paint_job", "place_labels_job", "reference_stats", "remove_job",
           "retexture_job", "split_core", "stats_for", "synthesize_job", "texture_stats", "transformed_job",
           "with_edema"]
