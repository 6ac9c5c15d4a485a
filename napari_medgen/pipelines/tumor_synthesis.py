"""Synthesize, remove, retexture, resize and move tumours in 3D scans with the latent texture bridge (seed 003).

Every operation edits one region of a `Volume` and leaves every other voxel bit-identical:

1. the scan is normalised the way the model was trained (the VQ-GAN's per-scan spec, e.g. foreground
   percentiles for MR), so raw-intensity scans of the same modality work, not only the training format;
2. a crop around the region (plus context, rounded to the network's size multiple) is encoded with the
   region filled (the checkpoint's ``fill_value``), the bridge is sampled from that condition latent to the
   edited latent -- with texture-feature tokens (synthesis, retexture) or without (removal: self-attention
   path) -- and decoded;
3. the decoded crop replaces the region, feathered over ``blend_mm`` outside it so there is no seam, and is
   mapped back to the scan's units (and dtype).

``synthesize`` takes its shape from the shape generator (features or a preset), a mask already on the
scan's grid (a labels layer), or an unplaced mask placed at a physical point; its texture from features
(missing ones default to the training median), from a reference tumour (features re-extracted on the
model's normalised intensities) or from the defaults. ``resize`` and ``move`` remove the tumour first,
then synthesize the scaled / shifted mask with the tumour's own texture features.

All operations are jobs (`napari_medgen.core.progress`): one progress event per sampling step, cancel
at any step, nothing built before the end. Same inputs and seed give the same output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medgen.core.progress import Job, ProgressEvent, run_job
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import DimensionError, GeometryMismatchError, InvalidInputError

DEFAULT_MODEL = "inpainter-brain"  # the brain editor; "bridge-brain-t1c" is the seed-003 texture bridge
#: model type of the brain editor checkpoint (learned inpainting + glioma appearance, `pipelines.appearance_editing`)
EDITOR_TYPE = "inpainter"
#: measured on held-out BRATS cases (docs/benchmarks.md): 20-50 steps are as good as 200 for this model
DEFAULT_STEPS = 25
DEFAULT_SHAPE_REQUEST: dict[str, float] = {"VoxelVolume": 4000.0, "Sphericity": 0.8}
#: voxels of context around the region that the network sees (each side)
CONTEXT_VOXELS = 8
SPACING_TOLERANCE = 0.1  # relative difference to the training spacing that is still accepted
ORIENTATION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class EditResult:
    """The edited scan, the label map of the result and a JSON-ready report of what was done."""

    image: Volume
    labels: LabelMap
    report: dict[str, Any] = field(default_factory=dict)


# ---- checks ---------------------------------------------------------------------------------------------
def model_type(model: str | Path) -> str:
    """The checkpoint's model type (read from its config, nothing loaded): which editor runs."""
    from napari_medgen.hub import read_checkpoint_config

    return str(read_checkpoint_config(model)["model_type"])


def _load(model: str | Path, device: Any = None) -> Any:
    from napari_medgen.hub import load_cached

    return load_cached(model, expected_type="bridge-unet", device=device)


def _fill_value(net: Any) -> float:
    """The condition fill of the region: as the checkpoint was trained (its ``fill_value``), else the default."""
    from napari_medgen.models.bridge_unet import FILL_VALUE

    return float(net.hub_extra.get("fill_value", FILL_VALUE))


def check_3d_scan(volume: Volume) -> None:
    """Cheap checks every edit makes before a model loads: a real-valued 3D scan (not one slice), all finite."""
    if not isinstance(volume, Volume) or isinstance(volume, LabelMap):
        raise InvalidInputError(f"The image must be a Volume (a scan); got {type(volume).__name__}.")
    arr = np.asarray(volume.array)
    if arr.ndim != 3 or min(arr.shape) < 2:
        raise DimensionError(
            f"Tumour synthesis needs a 3D scan; got an array of shape {arr.shape}. For 2D images use the "
            "slice-wise generators (Generate from labels)."
        )
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InvalidInputError(f"The image must hold real numbers; got dtype {arr.dtype}.")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("The image contains NaN/Inf voxels; replace them before editing it.")


def check_scan(volume: Volume, net: Any) -> None:
    """Refuse inputs the model cannot edit faithfully: non-3D, non-finite, off-spacing or oblique scans."""
    check_3d_scan(volume)
    trained = np.asarray(net.hub_extra.get("spacing_mm", [1.0, 1.0, 1.0]), dtype=float)
    spacing = np.asarray(volume.spacing, dtype=float)
    if np.any(np.abs(spacing - trained) > SPACING_TOLERANCE * trained):
        got, want = tuple(round(float(v), 3) for v in spacing), tuple(float(v) for v in trained)
        raise GeometryMismatchError(
            f"The scan's voxel spacing {got} mm differs from the model's training spacing {want} mm (anisotropic "
            f"or other resolution). Resample the scan to {want} mm first (e.g. SimpleITK ResampleImageFilter, or "
            "Slicer's Resample Scalar Volume)."
        )
    direction = volume.direction_matrix
    if not np.allclose(np.abs(direction), np.round(np.abs(direction)), atol=ORIENTATION_TOLERANCE):
        raise GeometryMismatchError(
            "The scan is oblique (its direction cosines are not axis-aligned); the texture model works on "
            "axis-aligned voxel grids. Resample it to an axis-aligned grid first; results then keep that grid."
        )


def _region(labels: LabelMap, volume: Volume, label: int | None, what: str) -> np.ndarray:
    """The boolean region of ``label`` (every non-zero label when None) on the scan's grid, checked for the bridge
    (enough voxels for texture features, not touching the border)."""
    region = _region_on_grid(labels, volume, label, what)
    _check_region(region, what)
    return region


def _region_on_grid(labels: LabelMap, volume: Volume, label: int | None, what: str) -> np.ndarray:
    """The boolean region of ``label`` (every non-zero label when None) on the scan's grid; not empty."""
    if not isinstance(labels, LabelMap):
        raise InvalidInputError(f"The {what} must be a LabelMap (labels layer or mask file); got "
                                f"{type(labels).__name__}.")
    volume.require_same_grid(labels, what)
    present = labels.labels()
    if label is None:
        region = np.asarray(labels.array) != 0
    else:
        if int(label) not in present:
            raise InvalidInputError(
                f"Label {label} does not occur in the {what} (labels present: {labels.labels_text()}); pick one of "
                "those, or leave the label out to use every non-zero label."
            )
        region = np.asarray(labels.array) == int(label)
    if not region.any():
        raise InvalidInputError(f"The {what} is empty: draw or load a tumour region first.")
    return region


def _check_region(region: np.ndarray, what: str) -> None:
    from napari_medgen.radiomics.texture_condition import MIN_TEXTURE_VOXELS

    count = int(region.sum())
    if count == 0:
        raise InvalidInputError(f"The {what} is empty: draw or load a tumour region first.")
    if count < MIN_TEXTURE_VOXELS:
        raise InvalidInputError(f"The {what} has only {count} voxels (at least {MIN_TEXTURE_VOXELS} are needed); "
                                "use a larger region.")
    touching = [axis for axis in range(3) if region.take(0, axis).any() or region.take(-1, axis).any()]
    if touching:
        raise InvalidInputError(
            f"The {what} touches the image border (axis {', '.join('zyx'[a] for a in touching)}); the model needs "
            "tissue around the region. Move it inward or pad the image."
        )


# ---- texture features -----------------------------------------------------------------------------------
def texture_feature_defaults(model: str | Path = DEFAULT_MODEL) -> dict[str, float]:
    """The model's default texture (median of its training tumours), in normalised-intensity units."""
    from napari_medgen.hub import read_checkpoint_config

    extra = read_checkpoint_config(model).get("extra", {})
    return {k: float(v) for k, v in extra["default_features"].items()}


def _full_name(name: str, names: Sequence[str]) -> str:
    for candidate in (name, f"original_{name}"):
        if candidate in names:
            return candidate
    raise InvalidInputError(
        f"Unknown texture feature {name!r}; this model knows {len(names)} features such as "
        f"{', '.join(n.removeprefix('original_') for n in names[:4])} (see `medgen info` or the model card)."
    )


def _crop_size(region: np.ndarray, multiple: int, minimum: Sequence[int], context: int) -> tuple[int, int, int]:
    """Crop size (z, y, x): the region's bounding box + ``context`` each side, rounded up to ``multiple``."""
    coords = np.argwhere(region)
    extent = coords.max(axis=0) - coords.min(axis=0) + 1 + 2 * context
    return tuple(max(int(m), -(-int(e) // multiple) * multiple) for e, m in zip(extent, minimum, strict=True))


def _normalised(volume: Volume, net: Any) -> tuple[Any, np.ndarray]:
    arr = np.asarray(volume.array, dtype=np.float32)
    try:
        normalizer = net.vqgan.normalizer_for(arr)
    except InvalidInputError as error:
        raise InvalidInputError(f"The scan cannot be normalised for the texture model: {error}") from error
    return normalizer, normalizer.forward(arr).astype(np.float32)


def measure_texture(image: Volume, labels: LabelMap, label: int | None = None,
                    model: str | Path = DEFAULT_MODEL, device: Any = None) -> dict[str, float]:
    """Texture features of a tumour as the model sees them (on its normalised intensities): use them to copy
    the texture of a reference tumour, or to check what a synthesized one received."""
    from napari_medgen.radiomics.texture_condition import texture_feature_names, texture_features

    net = _load(model, device)
    check_scan(image, net)
    region = _region(labels, image, label, "reference mask")
    _, normalised = _normalised(image, net)
    coords = np.argwhere(region)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(coords.min(axis=0), coords.max(axis=0), strict=True))
    values = texture_features(normalised[box][None], region[box][None], tuple(float(s) for s in image.spacing),
                              net.hub_extra.get("texture_settings"))[0]
    if not np.all(np.isfinite(values)):
        raise InvalidInputError("Texture features of the reference region could not be computed (is it uniform?).")
    return dict(zip(texture_feature_names(), (float(v) for v in values), strict=True))


def resolve_texture(
    net: Any,
    texture: Mapping[str, float] | None = None,
    texture_from: tuple[Volume, LabelMap] | tuple[Volume, LabelMap, int | None] | None = None,
    model: str | Path = DEFAULT_MODEL,
    device: Any = None,
) -> dict[str, float]:
    """The full feature request: reference tumour's features (or the defaults), overridden by ``texture``."""
    names = list(net.config["feature_names"])
    if texture_from is not None:
        if len(texture_from) not in (2, 3):
            raise InvalidInputError("texture_from must be (image, labels) or (image, labels, label).")
        ref_label = texture_from[2] if len(texture_from) == 3 else None
        base = measure_texture(texture_from[0], texture_from[1], ref_label, model, device)
    else:
        base = {k: float(v) for k, v in net.hub_extra["default_features"].items()}
    for name, value in (texture or {}).items():
        full = _full_name(str(name), names)
        try:
            number = float(value)
        except (TypeError, ValueError) as error:
            raise InvalidInputError(f"Texture feature {name!r} needs a number; got {value!r}.") from error
        if not np.isfinite(number):
            raise InvalidInputError(f"Texture feature {name!r} must be finite; got {value!r}.")
        base[full] = number
    return {n: base[n] for n in names}


# ---- the edit ------------------------------------------------------------------------------------------
def resolve_steps(model: Any, steps: int | None = None) -> int:
    """``steps`` checked against the model's training schedule, or (None) `DEFAULT_STEPS` capped by it.
    ``model`` is a loaded bridge or a checkpoint name / folder."""
    if isinstance(model, str | Path):
        from napari_medgen.hub import read_checkpoint_config

        config = read_checkpoint_config(model)["config"]
    else:
        config = model.config
    total = int(config["num_train_timesteps"])
    if steps is None:
        return min(DEFAULT_STEPS, total)
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or not 1 <= steps <= total:
        raise InvalidInputError(f"steps must be an integer from 1 to {total}; got {steps!r}.")
    return int(steps)


def _edit_job(
    volume: Volume,
    region: np.ndarray,
    net: Any,
    features: Mapping[str, float] | None,
    *,
    steps: int | None,
    seed: int,
    eta: float,
    blend_mm: float,
    stage: str,
) -> Job[tuple[np.ndarray, dict[str, Any]]]:
    """Repaint ``region`` of ``volume`` (features: synthesis path; None: removal path). Returns the new array."""
    import torch

    from napari_medgen.core.device import cpu_generator

    steps = resolve_steps(net, steps)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidInputError(f"seed must be 0 or a positive integer; got {seed!r}.")
    if not (np.isfinite(blend_mm) and blend_mm >= 0) or not (np.isfinite(eta) and eta >= 0):
        raise InvalidInputError(f"blend_mm and eta must be finite and >= 0; got {blend_mm!r}, {eta!r}.")
    from scipy import ndimage

    from napari_medgen.core.geometry import Crop, crop_around, index_to_physical, paste

    normalizer, normalised = _normalised(volume, net)
    spacing_zyx = volume.spacing_zyx
    grown = ndimage.distance_transform_edt(~region, sampling=spacing_zyx) <= blend_mm  # region + blend band
    margin = int(np.ceil(blend_mm / min(spacing_zyx)))
    size = _crop_size(grown, net.size_multiple, net.hub_extra.get("patch_size", [32, 32, 32]),
                      CONTEXT_VOXELS + margin)
    coords = np.argwhere(grown)
    centre_mm = index_to_physical(volume, (coords.min(axis=0) + coords.max(axis=0)) / 2.0)
    background = float(normalised.min())
    crop = crop_around(volume.with_array(normalised), centre_mm, size, pad_value=background)
    crop_region = crop_around(volume.as_labels(region.astype(np.uint8)), centre_mm, size).volume.array > 0
    condition = np.where(crop_region, np.float32(_fill_value(net)), crop.volume.array).astype(np.float32)
    yield ProgressEvent(0, int(steps), stage, "encoding")
    on = next(net.parameters()).device  # inputs go to the model's device, the result comes back to the CPU
    y = net.encode(torch.from_numpy(condition)[None, None].to(on))
    feature_t = None
    if features is not None:
        from napari_medgen.radiomics.conditioning import FeatureNormalizer

        normaliser = FeatureNormalizer.from_dict(net.hub_extra["feature_normalizer"])
        feature_t = torch.from_numpy(normaliser.transform(dict(features)).astype(np.float32))[None].to(on)
    mask_t = torch.from_numpy(crop_region.astype(np.float32))[None, None].to(on)
    generator = cpu_generator(int(seed))
    job = net.sample_job(y, net.region_latent(mask_t), feature_t, steps=int(steps), eta=float(eta),
                         generator=generator)
    while True:
        try:
            done = next(job)
        except StopIteration as stop:
            latent = stop.value
            break
        yield ProgressEvent(done, int(steps), stage, f"bridge step {done}/{steps}")
    generated = normalizer.inverse(net.decode(latent)[0, 0].cpu().numpy().astype(np.float64))
    patch = Crop(crop.volume.with_array(generated), crop.start_zyx)
    grown_crop = crop_around(volume.as_labels(grown.astype(np.uint8)), centre_mm, size).volume.array
    # weights ramp from 0 at the outer edge of the blend band to 1 at the region; other voxels stay bit-identical
    out = paste(volume, patch, mask=grown_crop, feather_mm=float(blend_mm)).array
    start = crop.start_zyx
    report = {
        "crop_start_zyx": [int(s) for s in start], "crop_size_zyx": [int(s) for s in size],
        "region_voxels": int(region.sum()), "edited_voxels": int(grown.sum()),
        "steps": int(steps), "eta": float(eta), "seed": int(seed), "blend_mm": float(blend_mm),
        "path": "synthesis (cross-attention)" if features is not None else "removal (self-attention)",
    }
    return out, report


def _result(volume: Volume, array: np.ndarray, labels: np.ndarray, operation: str, model: str | Path,
            report: dict[str, Any]) -> EditResult:
    metadata = {**dict(volume.metadata), "generated_by": f"napari-medgen {operation}", "model": str(model)}
    image = volume.with_array(array, metadata=metadata)
    label_map = LabelMap(labels.astype(np.uint8) if labels.max(initial=0) < 256 else labels, volume.spacing,
                         volume.origin, volume.direction, {"generated_by": f"napari-medgen {operation}"})
    return EditResult(image, label_map, {"operation": operation, "model": str(model), **report})


def _place_job(volume: Volume, net: Any, shape: LabelMap | None, shape_request: Mapping[str, float] | None,
               center_mm: Sequence[float] | None, seed: int,
               device: Any = None) -> Job[tuple[np.ndarray, dict[str, Any]]]:
    """The synthesis region on the scan's grid, and what it came from (the shape generator's progress included)."""
    from napari_medgen.pipelines.shape_generation import generate_shape_job, place_shape

    if shape is not None and shape_request is not None:
        raise InvalidInputError("Give either a shape mask or shape features, not both.")
    if shape is not None and shape.same_grid(volume) and center_mm is None:
        return _region(shape, volume, None, "shape mask"), {"shape_from": "mask on the scan's grid"}
    if center_mm is None:
        raise InvalidInputError("Give the tumour centre (center_mm = x, y, z in mm, physical coordinates), or a "
                                "shape mask already on the scan's grid.")
    if shape is None:
        request = dict(shape_request or DEFAULT_SHAPE_REQUEST)
        shape = (yield from generate_shape_job(request, spacing=volume.spacing, seed=int(seed), device=device)).mask
        source: dict[str, Any] = {"shape_from": "shape generator", "shape_request": request}
    else:  # any mask (this scan's or another grid's) is recentred at its centroid, then placed at center_mm
        from napari_medgen.core.geometry import index_to_physical

        if not np.any(shape.array):
            raise InvalidInputError("The shape mask is empty: draw or load a tumour mask first.")
        centroid = index_to_physical(shape, np.argwhere(np.asarray(shape.array) != 0).mean(axis=0))
        shape = shape.with_array(np.asarray(shape.array), origin=tuple(np.asarray(shape.origin) - centroid))
        source = {"shape_from": "mask placed with its centroid at the centre"}
    placed = place_shape(shape.as_labels((np.asarray(shape.array) != 0).astype(np.uint8)), volume, center_mm)
    source["center_mm"] = [float(v) for v in center_mm]
    return _region(placed, volume, None, "placed shape"), source


def _editor(operation: str, volume: Volume, model: str | Path, device: Any, *, steps: int | None,
            label_value: int = 1, **options: Any) -> Job[EditResult]:
    """The brain editor checkpoint's path (`pipelines.appearance_editing`) of an operation."""
    from napari_medgen.hub import load_cached
    from napari_medgen.pipelines import appearance_editing as editor

    if steps is not None:
        raise InvalidInputError("steps apply to the texture bridge; the brain editor inpaints and paints in one pass "
                                "(leave steps unset, or pass a bridge model such as bridge-brain-t1c).")
    if label_value != 1:
        raise InvalidInputError("label_value applies to the one-region texture bridge; the brain editor writes BraTS "
                                "labels (1 necrotic core, 2 edema, 4 enhancing tumour).")
    if not (np.isfinite(options["blend_mm"]) and options["blend_mm"] >= 0):
        raise InvalidInputError(f"blend_mm must be finite and >= 0; got {options['blend_mm']!r}.")
    if not 0.0 <= float(options.get("necrotic_fraction", 0.0)) < 1.0:
        raise InvalidInputError(f"necrotic_fraction must be in [0, 1); got {options['necrotic_fraction']!r}.")
    seed = options["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidInputError(f"seed must be 0 or a positive integer; got {seed!r}.")
    check_3d_scan(volume)
    yield ProgressEvent(0, 1, "loading model", str(model))
    net = load_cached(model, expected_type=EDITOR_TYPE, device=device)
    yield ProgressEvent(1, 1, "loading model", "done")
    if operation == "synthesize":
        array, labels, report = yield from editor.synthesize_job(volume, net, device=device, **options)
    else:
        source = options.pop("labels")
        tumour = _region_on_grid(source, volume, options.pop("label"), "tumour mask")
        if operation == "retexture":
            array, labels, report = yield from editor.retexture_job(volume, source, tumour, net, model=model,
                                                                    device=device, **options)
        else:
            moved = options.pop("moved")
            array, labels, report = yield from editor.transformed_job(volume, source, tumour, moved, net, model=model,
                                                                      device=device, **options)
    return _result(volume, array, labels, operation, model, report)


def synthesize_job(
    volume: Volume,
    *,
    center_mm: Sequence[float] | None = None,
    shape: LabelMap | None = None,
    shape_request: Mapping[str, float] | None = None,
    texture: Mapping[str, float] | None = None,
    texture_from: tuple[Any, ...] | None = None,
    model: str | Path = DEFAULT_MODEL,
    steps: int | None = None,
    seed: int = 0,
    eta: float = 1.0,
    blend_mm: float = 2.0,
    label_value: int = 1,
    device: Any = None,
    sequence: str = "T1c",
    edema_mm: tuple[float, float] | None = (4.0, 12.0),
    necrotic_fraction: float = 0.3,
) -> Job[EditResult]:
    """Job form of `synthesize`."""
    if model_type(model) == EDITOR_TYPE:
        return (yield from _editor("synthesize", volume, model, device, steps=steps, label_value=label_value,
                                   center_mm=center_mm, shape=shape, shape_request=shape_request, texture=texture,
                                   texture_from=texture_from, seed=seed, blend_mm=blend_mm, sequence=sequence,
                                   edema_mm=edema_mm, necrotic_fraction=necrotic_fraction))
    if not 1 <= int(label_value) <= 255:
        raise InvalidInputError(f"label_value must be 1..255; got {label_value!r}.")
    check_3d_scan(volume)
    net = _load(model, device)
    check_scan(volume, net)
    region, source = yield from _place_job(volume, net, shape, shape_request, center_mm, seed, device)
    features = resolve_texture(net, texture, texture_from, model, device)
    array, report = yield from _edit_job(volume, region, net, features, steps=steps, seed=seed, eta=eta,
                                         blend_mm=blend_mm, stage="synthesizing tumour")
    report.update(source)
    report["texture_requested"] = features
    return _result(volume, array, region * int(label_value), "synthesize", model, report)


def remove_job(
    volume: Volume,
    labels: LabelMap,
    label: int | None = None,
    *,
    model: str | Path = DEFAULT_MODEL,
    steps: int | None = None,
    seed: int = 0,
    eta: float = 1.0,
    margin_mm: float = 2.0,
    blend_mm: float = 2.0,
    device: Any = None,
) -> Job[EditResult]:
    """Job form of `remove`."""
    from scipy import ndimage

    if model_type(model) == EDITOR_TYPE:  # learned inpainting (steps, seed, eta and blend_mm do not apply)
        from napari_medgen.pipelines.appearance_editing import remove_job as inpaint_region

        tumour = _region_on_grid(labels, volume, label, "tumour mask")
        array, remaining, report = yield from inpaint_region(
            volume, labels, tumour, model=model, margin_mm=margin_mm, device=device,
            removed_label="all" if label is None else int(label))
        return _result(volume, array, remaining, "remove", model, report)
    net = _load(model, device)
    check_scan(volume, net)
    tumour = _region(labels, volume, label, "tumour mask")
    region = tumour
    if margin_mm > 0:  # the partial-volume rim of the tumour goes too
        spacing_zyx = tuple(float(s) for s in volume.spacing[::-1])
        region = ndimage.distance_transform_edt(~tumour, sampling=spacing_zyx) <= margin_mm
        _check_region(region, f"tumour mask grown by {margin_mm} mm")
    array, report = yield from _edit_job(volume, region, net, None, steps=steps, seed=seed, eta=eta,
                                         blend_mm=blend_mm, stage="removing tumour")
    remaining = np.where(tumour, 0, np.asarray(labels.array))
    report.update({"removed_label": "all" if label is None else int(label), "margin_mm": float(margin_mm)})
    return _result(volume, array, remaining, "remove", model, report)


def retexture_job(
    volume: Volume,
    labels: LabelMap,
    label: int | None = None,
    *,
    texture: Mapping[str, float] | None = None,
    texture_from: tuple[Any, ...] | None = None,
    model: str | Path = DEFAULT_MODEL,
    steps: int | None = None,
    seed: int = 0,
    eta: float = 1.0,
    blend_mm: float = 2.0,
    device: Any = None,
    sequence: str = "T1c",
    necrotic_fraction: float = 0.3,
) -> Job[EditResult]:
    """Job form of `retexture`."""
    if model_type(model) == EDITOR_TYPE:
        return (yield from _editor("retexture", volume, model, device, steps=steps, labels=labels, label=label,
                                   texture=texture, texture_from=texture_from, seed=seed, blend_mm=blend_mm,
                                   sequence=sequence, necrotic_fraction=necrotic_fraction))
    net = _load(model, device)
    check_scan(volume, net)
    region = _region(labels, volume, label, "tumour mask")
    features = resolve_texture(net, texture, texture_from, model, device)
    array, report = yield from _edit_job(volume, region, net, features, steps=steps, seed=seed, eta=eta,
                                         blend_mm=blend_mm, stage="retexturing tumour")
    report["texture_requested"] = features
    return _result(volume, array, np.asarray(labels.array).copy(), "retexture", model, report)


def _own_texture(volume: Volume, labels: LabelMap, label: int | None, model: str | Path,
                 texture: Mapping[str, float] | None, device: Any) -> dict[str, float]:
    base = measure_texture(volume, labels, label, model, device)
    for name, value in (texture or {}).items():
        base[_full_name(str(name), list(base))] = float(value)
    return base


def _transformed_job(volume: Volume, labels: LabelMap, label: int | None, moved: np.ndarray, operation: str,
                     model: str | Path, texture: Mapping[str, float] | None, steps: int, seed: int, eta: float,
                     blend_mm: float, extra: dict[str, Any], device: Any) -> Job[EditResult]:
    """Remove the tumour, then synthesize ``moved`` (its new region) with the tumour's own texture."""
    features = _own_texture(volume, labels, label, model, texture, device)
    _check_region(moved, f"{operation}d tumour")
    removed = yield from remove_job(volume, labels, label, model=model, steps=steps, seed=seed, eta=eta,
                                    blend_mm=blend_mm, device=device)
    net = _load(model, device)
    array, report = yield from _edit_job(removed.image, moved, net, features, steps=steps, seed=seed + 1, eta=eta,
                                         blend_mm=blend_mm, stage=f"{operation[:-1]}ing tumour")
    value = int(label) if label is not None else int(np.max(np.asarray(labels.array)))
    out_labels = np.where(moved, value, np.asarray(removed.labels.array))
    report.update({"removal": removed.report, "texture_requested": features, **extra})
    return _result(volume, array, out_labels, operation, model, report)


def resize_job(
    volume: Volume,
    labels: LabelMap,
    scale: float,
    label: int | None = None,
    *,
    texture: Mapping[str, float] | None = None,
    model: str | Path = DEFAULT_MODEL,
    steps: int | None = None,
    seed: int = 0,
    eta: float = 1.0,
    blend_mm: float = 2.0,
    device: Any = None,
    sequence: str = "T1c",
    necrotic_fraction: float = 0.3,
) -> Job[EditResult]:
    """Job form of `resize`: ``scale`` multiplies the tumour's linear size about its centroid."""
    from scipy import ndimage

    editor = model_type(model) == EDITOR_TYPE
    if not editor:
        check_scan(volume, _load(model, device))
    if not (np.isfinite(scale) and 0.2 <= float(scale) <= 5.0):
        raise InvalidInputError(f"scale must be between 0.2 and 5 (linear size factor); got {scale!r}.")
    tumour = (_region_on_grid if editor else _region)(labels, volume, label, "tumour mask")
    centroid = np.argwhere(tumour).mean(axis=0)
    inverse = np.eye(3) / float(scale)
    offset = centroid - inverse @ centroid
    if editor:  # the sub-regions are scaled with the tumour
        moved_labels = ndimage.affine_transform(np.where(tumour, np.asarray(labels.array), 0).astype(np.uint8),
                                                inverse, offset=offset, order=0)
        return (yield from _editor("resize", volume, model, device, steps=steps, labels=labels, label=label,
                                   moved=moved_labels, texture=texture, seed=seed, blend_mm=blend_mm,
                                   sequence=sequence, necrotic_fraction=necrotic_fraction, margin_mm=2.0))
    moved = ndimage.affine_transform(tumour.astype(np.float32), inverse, offset=offset, order=1) >= 0.5
    return (yield from _transformed_job(volume, labels, label, moved, "resize", model, texture, steps, seed, eta,
                                        blend_mm, {"scale": float(scale)}, device))


def move_job(
    volume: Volume,
    labels: LabelMap,
    center_mm: Sequence[float],
    label: int | None = None,
    *,
    texture: Mapping[str, float] | None = None,
    model: str | Path = DEFAULT_MODEL,
    steps: int | None = None,
    seed: int = 0,
    eta: float = 1.0,
    blend_mm: float = 2.0,
    device: Any = None,
    sequence: str = "T1c",
    necrotic_fraction: float = 0.3,
) -> Job[EditResult]:
    """Job form of `move`: the tumour's centroid goes to ``center_mm`` (x, y, z physical)."""
    from napari_medgen.core.geometry import index_to_physical, physical_to_index

    editor = model_type(model) == EDITOR_TYPE
    if not editor:
        check_scan(volume, _load(model, device))
    tumour = (_region_on_grid if editor else _region)(labels, volume, label, "tumour mask")
    try:
        target = np.asarray(center_mm, dtype=float).reshape(3)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"center_mm must be three numbers (x, y, z) in mm; got {center_mm!r}.") from error
    index = physical_to_index(volume, target)
    if np.any(index < 0) or np.any(index > np.asarray(volume.shape) - 1):
        raise InvalidInputError(f"The new centre {tuple(round(float(v), 2) for v in target)} mm lies outside the "
                                "image; pick a point inside it.")
    centroid = np.argwhere(tumour).mean(axis=0)
    shift = np.rint(index - centroid).astype(int)
    moved = np.zeros_like(tumour)
    coords = np.argwhere(tumour) + shift
    inside = np.all((coords >= 0) & (coords < np.asarray(tumour.shape)), axis=1)
    if not inside.all():
        raise InvalidInputError("The moved tumour would leave the image; pick a centre further inside.")
    moved[tuple(coords.T)] = True
    old_centre = index_to_physical(volume, centroid)
    if editor:  # the sub-regions move with the tumour
        moved_labels = np.zeros(tumour.shape, dtype=np.uint8)
        moved_labels[tuple(coords.T)] = np.asarray(labels.array)[tumour]
        return (yield from _editor("move", volume, model, device, steps=steps, labels=labels, label=label,
                                   moved=moved_labels, texture=texture, seed=seed, blend_mm=blend_mm,
                                   sequence=sequence, necrotic_fraction=necrotic_fraction, margin_mm=2.0))
    return (yield from _transformed_job(volume, labels, label, moved, "move", model, texture, steps, seed, eta,
                                        blend_mm, {"from_mm": [float(v) for v in old_centre],
                                                   "center_mm": [float(v) for v in target]}, device))


def synthesize(volume: Volume, **options: Any) -> EditResult:
    """A new tumour in ``volume``: shape from ``shape`` / ``shape_request`` at ``center_mm``, texture from
    ``texture`` / ``texture_from`` / the defaults. See `synthesize_job`."""
    return run_job(synthesize_job(volume, **options))


def remove(volume: Volume, labels: LabelMap, label: int | None = None, **options: Any) -> EditResult:
    """The scan with the tumour (``label``, or every non-zero label) replaced by healthy-looking tissue."""
    return run_job(remove_job(volume, labels, label, **options))


def retexture(volume: Volume, labels: LabelMap, label: int | None = None, **options: Any) -> EditResult:
    """The tumour repainted with another texture (features, a reference tumour or the defaults)."""
    return run_job(retexture_job(volume, labels, label, **options))


def resize(volume: Volume, labels: LabelMap, scale: float, label: int | None = None, **options: Any) -> EditResult:
    """The tumour removed and re-synthesized ``scale`` times larger (linear) at the same place, same texture."""
    return run_job(resize_job(volume, labels, scale, label, **options))


def move(volume: Volume, labels: LabelMap, center_mm: Sequence[float], label: int | None = None,
         **options: Any) -> EditResult:
    """The tumour removed and re-synthesized with its texture centred at ``center_mm``."""
    return run_job(move_job(volume, labels, center_mm, label, **options))


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_STEPS",
    "EditResult",
    "check_3d_scan",
    "check_scan",
    "measure_texture",
    "move",
    "move_job",
    "remove",
    "remove_job",
    "resize",
    "resize_job",
    "resolve_steps",
    "resolve_texture",
    "retexture",
    "retexture_job",
    "synthesize",
    "synthesize_job",
    "texture_feature_defaults",
]
