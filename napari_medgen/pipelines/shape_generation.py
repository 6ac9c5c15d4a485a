"""Tumour masks from a few intuitive shape features: ``generate_shape`` and ``place_shape``.

A user asks for "about 8 cm3, fairly round" -- a couple of pyradiomics shape features by name
(`USER_FEATURES`: ``VoxelVolume``/``MeshVolume`` in mm3, ``Sphericity``, ``Elongation``, ``Flatness`` in
(0, 1], ``Maximum3DDiameter`` in mm; the other conditioning features of the model are accepted too).
Everything the model needs beyond that is filled from the training feature bank **conditional on the
given values**: the bank's normalised features (log1p + z-score, see `FeatureNormalizer`) are modelled
as one multivariate Gaussian stored with the weights, and missing features take their conditional
mean given the known ones (``mu_u + S_uk S_kk^-1 (x_k - mu_k)``). So asking only for a large volume
also gets a matching surface area and diameters, and the seed changes only the GAN's noise.

**Best of N** (``candidates``, default `DEFAULT_CANDIDATES`): the seed gives N noise vectors (the first is
the single draw of ``candidates=1``), the generator runs on all of them in one batch, each candidate's fine
mask is measured with the batched radiomics engine, and the candidate whose requested features are closest
(sum of absolute log-ratios, size features after the volume matching each candidate would get) is kept.

**Principal-axis matching** (``match_axes``, default on, only when Elongation and/or Flatness is requested):
the model follows those two ratios only loosely, but they are a property of the covariance of the voxel
centres, which a linear map changes predictably (C -> A C A^T). Every candidate, before selection, gets a
volume-preserving stretch along its own principal axes (eigenvectors of that covariance, as in pyradiomics)
that keeps the major axis and rescales the minor / least axis so that elongation / flatness become the
requested ones (`axis_stretches`: an unrequested ratio keeps its value; every stretch relative to the major
axis is limited to `MAX_AXIS_STRETCH` either way so the surface is never grossly distorted). The warped
candidates are re-sampled on the fine grid and measured in one batch, so selection judges sphericity,
diameters and any clipped remainder as the user will get them.

The generator works on a fixed physical field of view (e.g. 32^3 voxels of 2 mm). Its probabilities
are smoothed in logit space and sampled trilinearly on the requested output grid (any, also
anisotropic, spacing) and thresholded at 0.5, so masks stay smooth at every spacing. With
``match_volume`` (default) the generated (and axis-warped) shape is then scaled isotropically about its
centre so that its volume equals the requested one (a similarity transform: sphericity, elongation and
flatness are unchanged); the model's own volume error is reported in the metadata. The whole map about the
candidate's centroid is ``A = s R diag(a) R^T`` (``s``: ``volume_scale``, ``a``: ``axis_scales``, product 1);
output voxel centres are mapped back through ``A^-1`` into the generator's frame and sampled there.
Post-processing keeps the largest connected component (unless ``allow_multiple``) and fills internal holes.

The returned `LabelMap` has an odd number of voxels per axis with its centre voxel at physical
(0, 0, 0) and identity direction; `place_shape` moves it to a point of a reference image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_medgen.core.progress import Job, ProgressEvent, run_job
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import CheckpointError, InvalidInputError, MedGenError

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "shape-gan-lesion"
MODEL_TYPE = "shape-gan"

#: features users set by hand (slider / ``--set Name=value``), with units
USER_FEATURES: dict[str, str] = {
    "VoxelVolume": "mm3",
    "MeshVolume": "mm3",
    "Sphericity": "",
    "Elongation": "",
    "Flatness": "",
    "Maximum3DDiameter": "mm",
}
_RATIOS = ("Sphericity", "Elongation", "Flatness")
#: how each conditioning feature changes when the shape is scaled by s: value * s**power
_SCALE_POWER: dict[str, int] = {
    "VoxelVolume": 3, "MeshVolume": 3, "SurfaceArea": 2, "SurfaceVolumeRatio": -1, "Maximum3DDiameter": 1,
    "MajorAxisLength": 1, "MinorAxisLength": 1, "LeastAxisLength": 1, "Sphericity": 0, "Elongation": 0,
    "Flatness": 0,
}
#: progress stages of `generate_shape_job` (model, generator, measuring, output grid)
_STAGES = 4
#: noise vectors tried per mask by default (best-of-N selection, see `generate_shape`)
DEFAULT_CANDIDATES = 16
#: volume matching never scales by more than this factor (or less than its inverse)
_MAX_SCALE = 2.0
#: axis matching stretches the minor / least principal axis relative to the major one by at most this factor
#: (either way), so that the model's surface is never grossly distorted; larger requests are met less well
MAX_AXIS_STRETCH = 1.6
_AXIS_RATIOS = ("Elongation", "Flatness")
_POSITIVE = ("VoxelVolume", "MeshVolume", "SurfaceArea", "SurfaceVolumeRatio", "Maximum3DDiameter",
             "MajorAxisLength", "MinorAxisLength", "LeastAxisLength")

#: named requests for quick use (values in real units; any can be overridden by ``features``)
PRESETS: dict[str, dict[str, float]] = {
    "small-round": {"VoxelVolume": 1500.0, "Sphericity": 0.78},
    "medium": {"VoxelVolume": 8000.0},
    "medium-round": {"VoxelVolume": 8000.0, "Sphericity": 0.78},
    "medium-irregular": {"VoxelVolume": 8000.0, "Sphericity": 0.55},
    "elongated": {"VoxelVolume": 8000.0, "Elongation": 0.45},
    "large": {"VoxelVolume": 25000.0},
}


@dataclass(frozen=True)
class ShapeControl:
    """One user control: a feature name (pyradiomics), its unit, slider range and default (from the bank)."""

    name: str
    unit: str
    min: float
    max: float
    default: float


# ---- model access -----------------------------------------------------------------------------------
def _load(model: str | Path, device: Any = None) -> Any:
    """The generator (eval mode, on ``device``) of a bundled name or folder (`hub.load_cached`), with its
    statistics."""
    from napari_medgen.hub import load_cached

    net = load_cached(model, expected_type=MODEL_TYPE, device=device)
    needed = ("normalizer", "regions", "base_spacing_mm", "feature_gaussian", "field_of_view_mm")
    missing = [k for k in needed if k not in net.hub_extra]
    if missing:
        raise CheckpointError(
            f"{net.hub_path} is a shape-gan checkpoint without the statistics {missing} in config.json (extra); "
            "export it with `medgen train shape-gan`, which writes them."
        )
    return net


def shape_controls(model: str | Path = DEFAULT_MODEL) -> tuple[ShapeControl, ...]:
    """Slider descriptions (1st-99th percentile of the training bank, median as default) of a model."""
    from napari_medgen.hub import read_checkpoint_config

    extra = read_checkpoint_config(model).get("extra", {})
    controls = extra.get("controls")
    if not isinstance(controls, Mapping):
        raise CheckpointError(f"{model} has no shape controls in its config.json; it is not a shape-gan export.")
    out = []
    for name, unit in USER_FEATURES.items():
        c = controls.get(name)
        if c is not None:
            out.append(ShapeControl(name, unit, float(c["min"]), float(c["max"]), float(c["default"])))
    return tuple(out)


def __getattr__(name: str) -> Any:
    # SHAPE_CONTROLS is read from the bundled model's config.json on first access (no torch needed).
    if name == "SHAPE_CONTROLS":
        return shape_controls(DEFAULT_MODEL)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- request handling -------------------------------------------------------------------------------
def _spacing(spacing: Sequence[float] | float) -> tuple[float, float, float]:
    try:
        arr = np.broadcast_to(np.asarray(spacing, dtype=float), (3,)).copy()
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"spacing must be one number or three (x, y, z) in mm; got {spacing!r}.") from error
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InvalidInputError(f"spacing must be positive finite millimetres; got {tuple(arr)}.")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def _split_region(name: str) -> tuple[str | None, str]:
    """``"necrotic_core/VoxelVolume"`` -> ("necrotic_core", "VoxelVolume"); a plain name has no region."""
    region, _, feature = name.rpartition("/")
    return (region or None), feature.removeprefix("original_shape_")


def validate_request(
    features: Mapping[str, float] | None, preset: str | None, known: Sequence[str], field_of_view_mm: float,
    base_spacing_mm: float, inner_regions: Sequence[str] = (),
) -> dict[str, float]:
    """Merged preset + features in real units, checked; `InvalidInputError` says what is wrong.

    Plain names are features of the whole tumour (the model's outer region); ``<region>/<name>`` sets a
    feature of one of the ``inner_regions`` of a multi-region model (e.g. ``necrotic_core/VoxelVolume``).
    """
    request: dict[str, float] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise InvalidInputError(f"Unknown preset {preset!r}; choose from {sorted(PRESETS)}.")
        request.update(PRESETS[preset])
    for raw_name, raw_value in dict(features or {}).items():
        region, name = _split_region(str(raw_name))
        if region is not None and region not in inner_regions:
            inner = ", ".join(inner_regions) or "none: this model has one region"
            raise InvalidInputError(
                f"Unknown region {region!r} in {raw_name!r}. Inner regions of this model: {inner}; plain names "
                "set features of the whole tumour."
            )
        if name not in known:
            raise InvalidInputError(
                f"Unknown shape feature {raw_name!r}. Known features (pyradiomics names): {', '.join(known)}; "
                f"the intuitive ones are {', '.join(USER_FEATURES)}."
            )
        try:
            value = float(raw_value)
        except (TypeError, ValueError) as error:
            raise InvalidInputError(f"{name} must be a number; got {raw_value!r}.") from error
        request[name if region is None else f"{region}/{name}"] = value
    fov = field_of_view_mm
    max_volume = math.pi / 6.0 * (fov - 2 * base_spacing_mm) ** 3
    for key, value in request.items():
        name = _split_region(key)[1]
        if not math.isfinite(value):
            raise InvalidInputError(f"{name} is {value}; give a finite number.")
        if name in _RATIOS and not 0.0 < value <= 1.0:
            raise InvalidInputError(f"{name} must lie in (0, 1] (1 = perfectly round/isotropic); got {value}.")
        if name in _POSITIVE and value <= 0:
            raise InvalidInputError(f"{name} must be > 0; got {value}.")
        if name in ("VoxelVolume", "MeshVolume") and value > max_volume:
            raise InvalidInputError(
                f"{name} {value:.0f} mm3 is larger than this model's {fov:.0f} mm field of view can hold "
                f"(at most ~{max_volume:.0f} mm3, a sphere of {fov - 2 * base_spacing_mm:.0f} mm). Ask for a smaller "
                "tumour or train a model with a larger field of view (data.base_spacing_mm)."
            )
        if name in ("Maximum3DDiameter", "MajorAxisLength") and value > fov:
            raise InvalidInputError(
                f"{name} {value:.1f} mm exceeds this model's {fov:.0f} mm field of view; ask for a smaller tumour."
            )
    if "Elongation" in request and "Flatness" in request and request["Flatness"] > request["Elongation"] + 1e-9:
        raise InvalidInputError(
            f"Flatness ({request['Flatness']}) cannot exceed Elongation ({request['Elongation']}): flatness compares "
            "the smallest axis and elongation the middle axis with the largest one."
        )
    return request


def fill_features(request: Mapping[str, float], extra: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, float]]:
    """Normalised full conditioning vector for ``request`` (outer-region features; ``<region>/<name>`` for an
    inner region) and its real-unit view.

    Unknown entries take the conditional mean of the bank Gaussian given the known ones (clipped to +-4
    standard deviations so that extreme requests stay inside what the model has seen).
    """
    from napari_medgen.radiomics.conditioning import FeatureNormalizer

    normalizer = FeatureNormalizer.from_dict(extra["normalizer"])
    outer = extra["regions"][-1]
    names = list(normalizer.names)
    mean = np.asarray(extra["feature_gaussian"]["mean"], dtype=np.float64)
    cov = np.asarray(extra["feature_gaussian"]["cov"], dtype=np.float64)
    known_idx: list[int] = []
    known_val: list[float] = []
    for key, value in request.items():
        region, name = _split_region(key)
        i = names.index(f"{region or outer}/original_shape_{name}")
        raw = np.log1p(value) if normalizer.log[i] else value
        known_idx.append(i)
        known_val.append((raw - normalizer.mean[i]) / normalizer.std[i])
    vector = mean.copy()
    if known_idx:
        k = np.asarray(known_idx)
        u = np.setdiff1d(np.arange(len(names)), k)
        xk = np.asarray(known_val)
        if len(u):
            gain = cov[np.ix_(u, k)] @ np.linalg.solve(cov[np.ix_(k, k)], xk - mean[k])
            vector[u] = np.clip(mean[u] + gain, -4.0, 4.0)
        vector[k] = xk
    return vector, normalizer.inverse_dict(vector)


# ---- generation -------------------------------------------------------------------------------------
def _label_of(channels: np.ndarray) -> np.ndarray:
    """Nested boolean channels (inner -> outer) -> one label map: channel c (minus inner ones) = label c+1."""
    labels = np.zeros(channels.shape[1:], dtype=np.uint8)
    for c in range(channels.shape[0] - 1, -1, -1):
        labels[channels[c]] = c + 1
    return labels


def _postprocess(channels: np.ndarray, allow_multiple: bool) -> np.ndarray:
    from scipy import ndimage

    from napari_medgen.core.masks import clean_mask

    outer = channels[-1]
    outer = ndimage.binary_fill_holes(outer) if allow_multiple else clean_mask(outer)
    result = [ndimage.binary_fill_holes(channels[c] & outer) for c in range(channels.shape[0] - 1)]
    return np.stack([*result, outer])


_OUTSIDE = 20.0


def _sample_on_grid(
    logits: torch.Tensor, points_zyx_mm: np.ndarray, base_spacing: float, warp: float | np.ndarray = 1.0
) -> np.ndarray:
    """Trilinear samples of base-grid logits (1, C, S, S, S) at physical points (..., 3) in z, y, x order.

    ``warp`` maps the generator's base frame (origin at the field-of-view centre) onto the output frame: a
    number ``s`` (isotropic scaling) or a (3, 3) matrix ``A`` in z, y, x order; every output point is mapped
    back through its inverse, so the shape is deformed before thresholding and stays smooth at any spacing.
    """
    import torch
    import torch.nn.functional as F

    size = logits.shape[-1]
    shape = points_zyx_mm.shape[:-1]
    if np.ndim(warp) == 0:
        u = points_zyx_mm.reshape(-1, 3) / (float(warp) * base_spacing) + (size - 1) / 2.0  # base voxel coordinates
    else:
        base = np.linalg.solve(np.asarray(warp, dtype=np.float64), points_zyx_mm.reshape(-1, 3).T).T
        u = base / base_spacing + (size - 1) / 2.0
    g = torch.as_tensor(u / (size - 1) * 2.0 - 1.0, dtype=logits.dtype)[:, [2, 1, 0]]  # grid_sample: x, y, z
    # outside the field of view is background: shift so that zero padding means a logit of -_OUTSIDE
    out = F.grid_sample(logits + _OUTSIDE, g.view(1, 1, 1, -1, 3), mode="bilinear", padding_mode="zeros",
                        align_corners=True) - _OUTSIDE
    return out[0, :, 0, 0].reshape(logits.shape[1], *shape).numpy()


def _axis_points(n: int, spacing: float) -> np.ndarray:
    return (np.arange(n) - (n - 1) / 2.0) * spacing


def _candidate_count(candidates: int) -> int:
    if not isinstance(candidates, int | np.integer) or isinstance(candidates, bool) or candidates < 1:
        raise InvalidInputError(
            f"candidates must be a whole number >= 1 (1 = a single draw, {DEFAULT_CANDIDATES} = the default "
            f"best-of-{DEFAULT_CANDIDATES}); got {candidates!r}."
        )
    return int(candidates)


def _noise(seed: int, count: int, z_dim: int) -> torch.Tensor:
    """``count`` noise vectors from ``seed``; the first is the single draw of ``candidates=1``."""
    import torch

    generator = torch.Generator().manual_seed(int(seed) % (2**63))
    first = torch.randn(1, z_dim, generator=generator)
    if count == 1:
        return first
    return torch.cat([first, torch.randn(count - 1, z_dim, generator=generator)])


def _volume_log_scales(volumes: np.ndarray, target_volume: float | None) -> np.ndarray:
    """log of the isotropic volume-matching factor of each candidate (0 without a target), clipped."""
    if target_volume is None:
        return np.zeros(len(volumes))
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = (math.log(target_volume) - np.log(volumes)) / 3.0
    return np.clip(np.nan_to_num(raw, nan=0.0), -math.log(_MAX_SCALE), math.log(_MAX_SCALE))


def match_errors(
    request: Mapping[str, float], measured: Mapping[str, np.ndarray], log_scales: np.ndarray
) -> dict[str, np.ndarray]:
    """Per requested feature, |log(measured after scaling / requested)| of each candidate ((N,) arrays).

    ``log_scales`` are the log volume-matching factors the candidates would get: a length scales by s, an
    area by s^2, a volume by s^3, the surface-to-volume ratio by 1/s; sphericity, elongation and flatness do
    not change. Candidates that could not be measured (empty masks) get an infinite error.
    """
    out: dict[str, np.ndarray] = {}
    for name, value in request.items():
        if name not in _SCALE_POWER or name not in measured:
            continue
        got = np.asarray(measured[name], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            error = np.abs(np.log(got) + _SCALE_POWER[name] * log_scales - math.log(value))
        out[name] = np.where(np.isfinite(error), error, np.inf)
    return out


@dataclass(frozen=True)
class _AxisWarp:
    """A volume-preserving stretch of one candidate along its own principal axes, about its centroid."""

    centroid_zyx: np.ndarray  # (3,) mm, base frame
    directions_zyx: np.ndarray  # (3, 3) unit eigenvectors as columns: major, minor, least
    scales: np.ndarray  # (3,) factor along major, minor, least; product 1
    raw_elongation: float
    raw_flatness: float
    clipped: bool

    @property
    def matrix(self) -> np.ndarray:
        """A = R diag(scales) R^T (z, y, x): the linear part of the warp."""
        return self.directions_zyx @ np.diag(self.scales) @ self.directions_zyx.T


def axis_stretches(
    raw_elongation: float, raw_flatness: float, elongation: float | None, flatness: float | None
) -> tuple[float, float, bool]:
    """Stretch of the minor and the least principal axis relative to the major one, and whether it was clipped.

    A stretch ``t`` multiplies that axis' standard deviation relative to the major axis, so elongation becomes
    ``raw_elongation * t_minor`` and flatness ``raw_flatness * t_least``. Only requested ratios (not None)
    change; an unrequested one keeps its value unless that would put the least axis above the middle one
    (flatness > elongation), in which case it follows the requested ratio just far enough to keep the order.
    Stretches are limited to ``1/MAX_AXIS_STRETCH .. MAX_AXIS_STRETCH`` so the model's surface is never grossly
    distorted; a clipped request is met less well. The axis order never changes (the map is monotone).
    """
    e_target = raw_elongation if elongation is None else elongation
    f_target = raw_flatness if flatness is None else flatness
    if flatness is None:
        f_target = min(raw_flatness, e_target)
    if elongation is None:
        e_target = max(raw_elongation, f_target)
    with np.errstate(divide="ignore", invalid="ignore"):
        wanted = np.array([e_target, f_target], dtype=np.float64) / np.array([raw_elongation, raw_flatness])
    wanted = np.where(np.isnan(wanted), 1.0, wanted)  # 0 / 0: a degenerate axis that is not asked to change
    stretch = np.clip(wanted, 1.0 / MAX_AXIS_STRETCH, MAX_AXIS_STRETCH)
    clipped = bool(np.any(np.abs(np.log(wanted) - np.log(stretch)) > 1e-9))
    return float(stretch[0]), float(stretch[1]), clipped


def _axis_warp(mask: np.ndarray, coords: np.ndarray, elongation: float | None, flatness: float | None) -> _AxisWarp:
    """Principal axes of a non-empty (z, y, x) mask on the isotropic grid with 1-D coordinates ``coords`` (mm)
    (pyradiomics: eigen-decomposition of the population covariance of the voxel centres) and the
    volume-preserving warp that gives it the requested elongation / flatness (`axis_stretches`)."""
    points = coords[np.argwhere(mask)]
    centroid = points.mean(axis=0)
    centred = points - centroid
    values, vectors = np.linalg.eigh(centred.T @ centred / len(points))  # ascending
    least, minor, major = np.maximum(values, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw_e = float(np.sqrt(minor / major)) if major > 0 else 0.0
        raw_f = float(np.sqrt(least / major)) if major > 0 else 0.0
    t_minor, t_least, clipped = axis_stretches(raw_e, raw_f, elongation, flatness)
    scales = np.array([1.0, t_minor, t_least]) / (t_minor * t_least) ** (1.0 / 3.0)
    return _AxisWarp(centroid, vectors[:, ::-1].copy(), scales, raw_e, raw_f, clipped)


def _warped_fine_masks(
    logits: torch.Tensor, fine_masks: np.ndarray, coords: np.ndarray, warps: Sequence[_AxisWarp | None],
    base_spacing: float, allow_multiple: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate re-sampled through its warp on one isotropic grid of the fine step, centred on its
    (warped) centroid and large enough for the most extended of them: (1-D coordinates, (N, C, n, n, n) masks).
    Candidates without a warp (empty masks) stay empty."""
    step = float(coords[1] - coords[0])
    reach = step
    for warp, mask in zip(warps, fine_masks, strict=True):
        if warp is not None:
            offsets = (coords[np.argwhere(mask[-1])] - warp.centroid_zyx) @ warp.matrix.T
            reach = max(reach, float(np.abs(offsets).max()))
    half = int(math.ceil(reach / step)) + 3  # the surface lies within ~1 fine voxel of the outer voxel centres
    axis = _axis_points(2 * half + 1, step)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    out = np.zeros((len(warps), fine_masks.shape[1], *grid.shape[:-1]), dtype=bool)
    for i, warp in enumerate(warps):
        if warp is not None:
            points = grid + warp.matrix @ warp.centroid_zyx  # base point = centroid + A^-1 (grid point)
            out[i] = _postprocess(_sample_on_grid(logits[i:i + 1], points, base_spacing, warp.matrix) >= 0.0,
                                  allow_multiple)
    return axis, out


@dataclass(frozen=True)
class ShapeResult:
    """A generated tumour mask (centred at physical (0, 0, 0)) and what was asked and met (``report`` is the mask's
    metadata: requested and conditioning features, match errors, candidates, axis matching)."""

    mask: LabelMap
    report: dict[str, Any]


def generate_shape(features: Mapping[str, float] | None = None, **options: Any) -> ShapeResult:
    """A tumour mask with the requested shape features; see `generate_shape_job` for the options."""
    return run_job(generate_shape_job(features, **options))


def generate_shape_job(
    features: Mapping[str, float] | None = None,
    *,
    preset: str | None = None,
    spacing: Sequence[float] | float = (1.0, 1.0, 1.0),
    seed: int = 0,
    model: str | Path = DEFAULT_MODEL,
    crop_size_mm: float | None = None,
    allow_multiple: bool = False,
    match_volume: bool = True,
    candidates: int = DEFAULT_CANDIDATES,
    match_axes: bool = True,
    device: Any = None,
) -> Job[ShapeResult]:
    """A tumour mask with the requested shape features, centred at physical (0, 0, 0); yields one event per stage
    (model, generator, measuring, output grid), each a cancellation point.

    ``features``: pyradiomics shape names -> values (mm3, mm, ratios); ``preset``: a name of `PRESETS`
    (``features`` override it). ``spacing``: output voxel size (x, y, z) in mm. ``crop_size_mm``: edge of
    the output box (default: a cube just around the final tumour). ``candidates``: noise vectors tried (one
    generator batch); the one whose measured features best match the request is kept (1 = a single draw, no
    selection). ``match_volume``: scale isotropically to the requested volume. ``match_axes``: when
    Elongation and/or Flatness is requested, stretch every candidate along its own principal axes (volume
    preserving, at most `MAX_AXIS_STRETCH` relative to the major axis) so that it has them; candidates are
    judged after that warp. Same inputs and seed give the same mask. Labels: 1..C for the model's regions,
    inner first (metadata ``label_names``). ``device``: where the generator runs (`core.device.select_device`);
    smoothing, sampling on the output grid and measuring stay on the CPU in float64, so the thresholded mask is the
    same on every device up to the generator's arithmetic.
    """
    import torch

    from napari_medgen.models.shape_gan import ShapeGenerator, smooth_logits
    from napari_medgen.radiomics.shape import shape_features_batch

    spacing_xyz = _spacing(spacing)
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
        raise InvalidInputError(f"seed must be an integer; got {seed!r}.")
    count = _candidate_count(candidates)
    yield ProgressEvent(0, _STAGES, "generating shape", "loading model")
    net = _load(model, device)
    extra = net.hub_extra
    base_spacing = float(extra["base_spacing_mm"])
    fov = float(extra["field_of_view_mm"])
    known = list(extra.get("condition_features", USER_FEATURES))
    regions = list(extra["regions"])
    request = validate_request(features, preset, known, fov, base_spacing, regions[:-1])
    if crop_size_mm is not None and (not math.isfinite(float(crop_size_mm)) or float(crop_size_mm) <= 0):
        raise InvalidInputError(f"crop_size_mm must be a positive number of millimetres; got {crop_size_mm!r}.")
    vector, filled = fill_features(request, extra)

    yield ProgressEvent(1, _STAGES, "generating shape", f"running the generator ({count} candidates)")
    device_of = next(net.parameters()).device
    with torch.no_grad():  # fp32 on every device: the probabilities are thresholded at 0.5 below
        z = _noise(int(seed), count, int(net.config["z_dim"])).to(device_of)
        cond = torch.as_tensor(vector, dtype=torch.float32)[None].expand(count, -1).to(device_of)
        probs = ShapeGenerator.probabilities(net(z, cond)).cpu()
        logits = smooth_logits(probs.double(), 0.5)

    yield ProgressEvent(2, _STAGES, "generating shape", "measuring candidates")

    # each candidate's output on a fine isotropic grid of the same field of view: its volume and features
    factor = int(extra.get("hires_factor", 2))
    hires = _axis_points(factor * net.base_size, base_spacing / factor)
    fine = np.stack(np.meshgrid(hires, hires, hires, indexing="ij"), axis=-1)
    fine_step = float(hires[1] - hires[0])
    fine_masks = np.stack([_postprocess(_sample_on_grid(logits[i:i + 1], fine, base_spacing, 1.0) >= 0.0,
                                        allow_multiple) for i in range(count)])
    volumes = np.count_nonzero(fine_masks[:, -1].reshape(count, -1), axis=1) * fine_step**3
    raw_volumes = volumes
    axis_targets = {name: request[name] for name in _AXIS_RATIOS if name in request}
    fine_coords = hires  # 1-D coordinates of the fine grid the (selection) masks live on
    warps: list[_AxisWarp | None] = [None] * count
    if match_axes and axis_targets:
        # each candidate gets its own principal-axis warp; from here on it is judged (and used) warped
        warps = [_axis_warp(fine_masks[i, -1], hires, axis_targets.get("Elongation"), axis_targets.get("Flatness"))
                 if volumes[i] > 0 else None for i in range(count)]
        fine_coords, fine_masks = _warped_fine_masks(logits, fine_masks, hires, warps, base_spacing, allow_multiple)
        volumes = np.count_nonzero(fine_masks[:, -1].reshape(count, -1), axis=1) * fine_step**3
    target_volume = request.get("VoxelVolume", request.get("MeshVolume"))
    log_scales = _volume_log_scales(volumes, target_volume if match_volume else None)
    errors: dict[str, np.ndarray] = {}
    if request:  # all candidates measured in one call (also a single one, for the metadata)
        measured = shape_features_batch(fine_masks[:, -1], (fine_step,) * 3)
        errors = match_errors(request, measured, log_scales)
        for r, region in enumerate(regions[:-1]):  # inner regions asked for by name, measured the same way
            wanted = {name: v for key, v in request.items() for reg, name in [_split_region(key)] if reg == region}
            if wanted:
                inner = shape_features_batch(fine_masks[:, r], (fine_step,) * 3)
                errors.update({f"{region}/{k}": v for k, v in match_errors(wanted, inner, log_scales).items()})
    totals = np.sum(list(errors.values()), axis=0) if errors else np.zeros(count)
    totals = np.where(volumes > 0, totals, np.inf)
    # differences below 1e-9 (float noise of the volume residual) are ties, kept by the lowest index; with
    # nothing to match beyond the volume every candidate ties and the first draw is kept
    chosen = int(np.argmin(np.round(totals, 9)))
    fine_mask = fine_masks[chosen]
    generated_volume = float(volumes[chosen])
    if generated_volume <= 0:
        raise MedGenError(
            "The shape model produced an empty mask for this request; try another seed or less extreme features "
            f"(requested {request})."
        )
    warp = warps[chosen]
    # the raw (pre-warp) principal axes of the kept candidate, for the metadata
    axes = warp if warp is not None else _axis_warp(fine_masks[chosen, -1], hires, None, None)
    logits = logits[chosen:chosen + 1]
    yield ProgressEvent(3, _STAGES, "generating shape", "sampling the output grid")
    scale = 1.0
    if match_volume and target_volume is not None:
        scale = float(np.clip((target_volume / generated_volume) ** (1.0 / 3.0), 1.0 / _MAX_SCALE, _MAX_SCALE))

    # centre the output on the tumour's centroid; the default box is a cube just around the tumour
    inside = np.argwhere(fine_mask[-1])
    centroid_zyx = fine_coords[inside].mean(axis=0)
    reach = float(np.abs(fine_coords[inside] - centroid_zyx).max() + fine_step / 2.0) * scale
    if crop_size_mm is not None:
        extent = float(crop_size_mm)
        if extent < 2.0 * reach:
            raise InvalidInputError(
                f"crop_size_mm {extent:g} is too small for the generated tumour (it reaches {reach:.1f} mm from its "
                f"centre; use at least {2 * reach:.0f} mm) or leave it unset."
            )
    else:
        extent = 2.0 * reach + 4.0 * max(spacing_xyz) + 4.0
    sizes_xyz = [2 * int(math.ceil(extent / (2 * s))) + 1 for s in spacing_xyz]
    axes_mm = [_axis_points(n, s) for n, s in zip(sizes_xyz, spacing_xyz, strict=True)]
    points = np.stack(np.meshgrid(axes_mm[2], axes_mm[1], axes_mm[0], indexing="ij"), axis=-1) + centroid_zyx * scale
    transform: float | np.ndarray = scale
    if warp is not None:
        # fine_coords is the warped frame about the candidate's centroid c: output o = scale * (A (x - c) - d),
        # d the warped mask's centroid, so x = (scale A)^-1 (o + scale d + scale A c)
        transform = scale * warp.matrix
        points = points + transform @ warp.centroid_zyx
    channels = _postprocess(_sample_on_grid(logits, points, base_spacing, transform) >= 0.0, allow_multiple)
    if not channels[-1].any():
        raise InvalidInputError(
            f"The generated tumour is smaller than one voxel at spacing {spacing_xyz} mm; use a finer spacing."
        )
    origin = tuple(float(-(n - 1) / 2.0 * s) for n, s in zip(sizes_xyz, spacing_xyz, strict=True))
    metadata = {
        "generator": "napari-medgen shape-gan",
        "model": str(model),
        "seed": int(seed),
        "requested_features": dict(request),
        "conditioning_features": filled,
        # volume of the kept candidate as the model made it (before any warp or scaling)
        "model_volume_mm3": float(raw_volumes[chosen]),
        # isotropic volume-matching factor, applied after the (volume-preserving) axis warp
        "volume_scale": scale,
        "candidates": count,
        "chosen_candidate": chosen,
        # |log(measured / requested)| of the kept candidate per requested feature (after axis warp and volume
        # matching)
        "match_errors": {name: float(err[chosen]) for name, err in errors.items()},
        # summed error of every candidate (None: empty mask), in noise-draw order
        "candidate_match_errors": [float(t) if math.isfinite(t) else None for t in totals],
        # principal-axis matching: whether it ran, the model's own ratios of the kept candidate, the
        # volume-preserving factors along its major, minor and least axis (x, y, z directions; the total
        # linear map about the centroid is volume_scale * R diag(axis_scales) R^T) and whether a stretch hit
        # MAX_AXIS_STRETCH (then the requested ratio is met less well)
        "axis_matching": warp is not None,
        "model_elongation": axes.raw_elongation,
        "model_flatness": axes.raw_flatness,
        "axis_scales": [float(v) for v in axes.scales],
        "principal_axes_xyz": [[float(v) for v in axes.directions_zyx[::-1, k]] for k in range(3)],
        "axis_clipped": axes.clipped,
        "label_names": {str(i + 1): name for i, name in enumerate(extra["regions"])},
    }
    mask = LabelMap(_label_of(channels), spacing_xyz, origin, metadata=metadata)
    yield ProgressEvent(_STAGES, _STAGES, "generating shape", "done")
    return ShapeResult(mask, dict(metadata))


def place_shape(shape_mask: LabelMap, reference: Volume, center_mm: Sequence[float]) -> LabelMap:
    """``shape_mask`` (centred at the origin, as `generate_shape` returns it) moved to ``center_mm`` (x, y, z,
    physical) and resampled (nearest) onto ``reference``'s grid; parts outside the image are cut off."""
    from napari_medgen.core.geometry import physical_to_index, resample_like

    if not isinstance(shape_mask, LabelMap):
        raise InvalidInputError(
            f"shape_mask must be a LabelMap (from generate_shape); got {type(shape_mask).__name__}."
        )
    if not isinstance(reference, Volume):
        raise InvalidInputError(f"reference must be a Volume; got {type(reference).__name__}.")
    try:
        centre = np.asarray(center_mm, dtype=float).reshape(3)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"center_mm must be three numbers (x, y, z) in mm; got {center_mm!r}.") from error
    if not np.all(np.isfinite(centre)):
        raise InvalidInputError(f"center_mm contains NaN or Inf: {tuple(centre)}.")
    index = physical_to_index(reference, centre)
    if np.any(index < -0.5) or np.any(index > np.asarray(reference.shape) - 0.5):
        raise InvalidInputError(
            f"The centre {tuple(np.round(centre, 2).tolist())} mm lies outside the image (voxel z,y,x "
            f"{tuple(np.round(index, 1).tolist())}, image shape {reference.shape}); pick a point inside it."
        )
    moved = shape_mask.with_array(shape_mask.array, origin=tuple(np.asarray(shape_mask.origin) + centre))
    placed = resample_like(moved, reference, interpolator="nearest")
    if not np.any(placed.array):
        raise InvalidInputError(
            "The placed shape covers no voxel of the reference image (it is smaller than one voxel there); "
            "generate a larger tumour or use a finer image."
        )
    return LabelMap(placed.array, reference.spacing, reference.origin, reference.direction, dict(shape_mask.metadata))
