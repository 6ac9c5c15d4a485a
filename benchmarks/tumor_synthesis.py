"""Tumour synthesis, removal and texture fidelity of the latent Brownian-bridge texture generator (issue 5).

    python benchmarks/tumor_synthesis.py [--model bridge-brain-t1c] [--image-glob 'T1c*.nii.gz'] [--quick]
                                         [--no-docs] [--out benchmarks/results/tumor_synthesis.json]

Every measurement runs on the cases the model never saw (its ``hub_extra["splits"]`` val + test), seed 0,
and everything is scored on the model's normalised intensity scale ([-1, 1], the VQ-GAN normalisation of
each scan):

1. Synthesis: the tumour core (labels 1, 3, 4; the whole tumour when the core has < 300 voxels) is
   repainted from its *own* texture features (`retexture` with `measure_texture` of the real tumour);
   PSNR and SSIM inside the region against the real scan, versus a 3 mm-ring mean fill and a smoothed
   (normalised-convolution + harmonic relaxation) inpainting from the surrounding brain.
2. Removal: the tumour core of *another* case is pasted into healthy brain of this case (fully inside the
   brain, >= 10 mm from this case's tumour, at the valid position deepest inside the healthy brain); `remove`
   (``margin_mm=0``: the pasted region is healthy, there is no tumour rim to take away) is compared with the
   real healthy tissue there, against the same two baselines.
3. Texture fidelity (seed 003 Table 2: brain Pearson 0.864 / Spearman 0.906): correlation between the 74
   requested and re-extracted features (`measure_texture` of the output), on raw values and on the model's
   normalised feature scale; (a) the tumour's own features, (b) another tumour's features in this mask.
   Two references that need no model: the inpainting baseline's features and two different real tumours'
   features (what a model that ignored the request would score).
4. Steps versus quality (200 / 50 / 20 sampling steps) for 1, 2 and 3a, with seconds per call.
5. Speed of `synthesize` (shape-generator tumour, VoxelVolume 8000 mm3) and `remove` (the real tumour) in the
   full 240x240x155 scan, with the pipeline's default number of steps.

``--quick``: one case, 20 steps only, also in the speed test (a smoke test). ``--no-docs``: write neither
docs/benchmarks.md nor the results JSON (unless ``--out`` is given); the markdown section is printed instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage, stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_medgen.core.geometry import index_to_physical  # noqa: E402
from napari_medgen.core.io import read_labels, read_volume  # noqa: E402
from napari_medgen.core.volume import LabelMap, Volume  # noqa: E402
from napari_medgen.errors import MedGenError  # noqa: E402
from napari_medgen.hub import load_cached, resolve_checkpoint  # noqa: E402
from napari_medgen.pipelines import tumor_synthesis as ts  # noqa: E402
from napari_medgen.radiomics.conditioning import FeatureNormalizer  # noqa: E402

SECTION_TITLE = "## Tumour synthesis (latent Brownian bridge, issue 5)"
BEGIN_MARKER = "<!-- benchmark:tumor_synthesis:begin -->"
END_MARKER = "<!-- benchmark:tumor_synthesis:end -->"
CORE_LABELS = (1, 3, 4)
MIN_CORE_VOXELS = 300
RING_MM = 3.0
HEALTHY_DISTANCE_MM = 10.0
DATA_RANGE = 2.0  # the normalised intensities span [-1, 1]
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # window radius 5 voxels (11^3), as skimage's gaussian_weights=True
PAPER = {"pearson": 0.864, "spearman": 0.906, "source": "seed 003 (TS-Radiomics, WACV 2025) Table 2, brain"}
SEED = 0


# ---- data --------------------------------------------------------------------------------------------------
def load_case(data: Path, case: str, image_glob: str) -> tuple[Volume, LabelMap]:
    folder = data / case
    images = sorted(folder.glob(image_glob))
    if len(images) != 1:
        raise SystemExit(f"{folder}: expected one image matching {image_glob!r}, found {len(images)}")
    return read_volume(images[0]), read_labels(folder / "OTMultiClass.nii.gz")


def tumour_core(labels: np.ndarray) -> tuple[np.ndarray, str]:
    """Labels 1, 3, 4 (necrosis, non-enhancing, enhancing); the whole tumour when the core is too small."""
    core = np.isin(labels, CORE_LABELS)
    if int(core.sum()) >= MIN_CORE_VOXELS:
        return core, "core (labels 1, 3, 4)"
    return labels > 0, "whole tumour (core < 300 voxels)"


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Brain foreground of a skull-stripped scan: voxels above the background (its minimum), holes filled."""
    return ndimage.binary_fill_holes(image > image.min())


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    coords = np.argwhere(mask)
    lo = np.maximum(coords.min(axis=0) - margin, 0)
    hi = np.minimum(coords.max(axis=0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


# ---- image metrics (normalised scale) --------------------------------------------------------------------
def psnr(output: np.ndarray, reference: np.ndarray, region: np.ndarray) -> float:
    """PSNR over the region's voxels with the normalised range (2) as peak."""
    mse = float(np.mean((output[region].astype(np.float64) - reference[region]) ** 2))
    return float(10.0 * np.log10(DATA_RANGE ** 2 / max(mse, 1e-12)))


def _ssim_map_scipy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Gaussian-window SSIM map (Wang et al. 2004, population covariances), the fallback without scikit-image."""
    def blur(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def ssim(output: np.ndarray, reference: np.ndarray, region: np.ndarray) -> float:
    """3D SSIM (gaussian 11^3 window, sigma 1.5) computed on the region's bounding box (plus the window radius),
    averaged over the region's voxels, so unchanged tissue around the region does not inflate it."""
    box = bounding_box(region, margin=int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5))
    a = output[box].astype(np.float64)
    b = reference[box].astype(np.float64)
    try:
        from skimage.metrics import structural_similarity

        _, smap = structural_similarity(b, a, data_range=DATA_RANGE, gaussian_weights=True, sigma=SSIM_SIGMA,
                                        use_sample_covariance=False, full=True)
    except ImportError:
        smap = _ssim_map_scipy(b, a)
    return float(smap[region[box]].mean())


def ssim_bbox(output: np.ndarray, reference: np.ndarray, region: np.ndarray) -> float | None:
    """skimage's mean SSIM of the region's exact bounding box (tissue around the region included); None when a
    side is shorter than the 11-voxel window or scikit-image is missing. Kept in the JSON for comparison."""
    box = bounding_box(region)
    if min(s.stop - s.start for s in box) < 11:
        return None
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return None
    return float(structural_similarity(reference[box].astype(np.float64), output[box].astype(np.float64),
                                       data_range=DATA_RANGE, gaussian_weights=True, sigma=SSIM_SIGMA,
                                       use_sample_covariance=False))


def quality(output: np.ndarray, reference: np.ndarray, region: np.ndarray) -> dict[str, float | None]:
    return {"psnr": psnr(output, reference, region), "ssim": ssim(output, reference, region),
            "ssim_bounding_box": ssim_bbox(output, reference, region)}


# ---- baselines (normalised scale) -------------------------------------------------------------------------
def mean_fill(image: np.ndarray, region: np.ndarray, brain: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """The region filled with the mean of the brain tissue in a 3 mm ring around it."""
    box = bounding_box(region, margin=int(np.ceil(RING_MM / min(spacing_zyx))) + 1)
    reg = region[box]
    ring = (ndimage.distance_transform_edt(~reg, sampling=spacing_zyx) <= RING_MM) & ~reg & brain[box]
    out = image.copy()
    out[region] = float(image[box][ring].mean()) if ring.any() else float(image[brain & ~region].mean())
    return out


def smooth_inpaint(image: np.ndarray, region: np.ndarray, brain: np.ndarray, sigma: float = 2.0,
                   relax_iterations: int = 50) -> np.ndarray:
    """Inpainting from the surrounding brain: normalised convolution (gaussian of the masked image over the
    gaussian of the mask), peeled inwards until every region voxel has a value, then harmonic relaxation
    (repeated normalised smoothing of the region with the surrounding tissue held fixed)."""
    box = bounding_box(region, margin=int(4 * sigma) + 8)
    reg = region[box]
    tissue = brain[box] | reg
    known = tissue & ~reg
    if not known.any():
        raise ValueError("no brain tissue around the region to inpaint from")
    values = np.where(known, image[box], 0.0).astype(np.float64)
    have = known.astype(np.float64)
    todo = reg.copy()
    while todo.any():
        num = ndimage.gaussian_filter(values * have, sigma)
        den = ndimage.gaussian_filter(have, sigma)
        reach = todo & (den > 1e-3)
        if not reach.any():  # the front cannot advance any more (a very thin neighbourhood): take what reaches
            reach = todo & (den > 0)
            if not reach.any():
                values[todo] = float(image[box][known].mean())
                break
        values[reach] = num[reach] / den[reach]
        have[reach] = 1.0
        todo &= ~reach
    weight = tissue.astype(np.float64)
    smooth_weight = ndimage.gaussian_filter(weight, 1.0)
    for _ in range(relax_iterations):
        smoothed = ndimage.gaussian_filter(values * weight, 1.0) / np.maximum(smooth_weight, 1e-6)
        values[reg] = smoothed[reg]
    out = image.copy()
    out[box][reg] = values[reg].astype(out.dtype)
    return out


# ---- placement of a pasted mask ---------------------------------------------------------------------------
def paste_in_healthy_brain(donor: np.ndarray, brain: np.ndarray, tumour: np.ndarray,
                           spacing_zyx: Sequence[float]) -> tuple[np.ndarray, dict[str, Any]] | None:
    """``donor`` (a mask on any grid) translated into this case's healthy brain: every voxel inside the brain
    and >= 10 mm from the tumour; of the valid positions the one whose centroid is deepest inside the healthy
    brain (largest min(distance to the tumour, distance to the brain's edge)); ties go to the first. None
    when it fits nowhere."""
    from scipy.signal import fftconvolve

    kernel = donor[bounding_box(donor)]
    from_tumour = ndimage.distance_transform_edt(~tumour, sampling=spacing_zyx)
    allowed = brain & (from_tumour >= HEALTHY_DISTANCE_MM)
    allowed[[0, -1]] = False  # the pasted region must not touch the image border either
    allowed[:, [0, -1]] = False
    allowed[:, :, [0, -1]] = False
    if not allowed.any():
        return None
    area = bounding_box(allowed)
    sub = allowed[area]
    if any(s < k for s, k in zip(sub.shape, kernel.shape, strict=True)):
        return None
    # number of donor voxels that would fall outside the allowed set, for every start position (float64 FFT:
    # counts stay exact to well below 0.5)
    outside = fftconvolve((~sub).astype(np.float64), kernel[::-1, ::-1, ::-1].astype(np.float64), mode="valid")
    valid = outside < 0.5
    if not valid.any():
        return None
    depth = np.minimum(from_tumour, ndimage.distance_transform_edt(brain, sampling=spacing_zyx))[area]
    centroid = np.rint(np.argwhere(kernel).mean(axis=0)).astype(int)
    at_centroid = depth[tuple(slice(c, c + n) for c, n in zip(centroid, valid.shape, strict=True))]
    start = np.unravel_index(int(np.argmax(np.where(valid, at_centroid, -np.inf))), valid.shape)
    origin = [int(s) + a.start for s, a in zip(start, area, strict=True)]
    pasted = np.zeros_like(brain)
    pasted[tuple(slice(o, o + n) for o, n in zip(origin, kernel.shape, strict=True))] = kernel
    centre = [int(o + c) for o, c in zip(origin, centroid, strict=True)]
    return pasted, {"start_zyx": origin, "centroid_zyx": centre, "voxels": int(pasted.sum()),
                    "distance_to_tumour_mm": float(from_tumour[pasted].min()),
                    "centroid_depth_mm": float(depth[tuple(c - a.start for c, a in zip(centre, area, strict=True))])}


# ---- texture fidelity ---------------------------------------------------------------------------------------
def _correlations(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    return {"pearson": float(stats.pearsonr(a, b)[0]), "spearman": float(stats.spearmanr(a, b)[0])}


def feature_vectors(requested: Mapping[str, float], measured: Mapping[str, float],
                    normaliser: FeatureNormalizer) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(raw requested, raw measured, normalised requested, normalised measured) in the model's feature order.

    The normaliser takes log1p of features that were non-negative in training; a re-extracted value below 0
    (which it would refuse) is clipped to 0 first."""
    names = list(normaliser.names)
    raw_r = np.array([requested[n] for n in names], dtype=np.float64)
    raw_m = np.array([measured[n] for n in names], dtype=np.float64)
    log = np.asarray(normaliser.log)
    norm_r = normaliser.transform(np.where(log, np.maximum(raw_r, 0.0), raw_r))
    norm_m = normaliser.transform(np.where(log, np.maximum(raw_m, 0.0), raw_m))
    return raw_r, raw_m, norm_r, norm_m


def fidelity(requested: Mapping[str, float], measured: Mapping[str, float],
             normaliser: FeatureNormalizer) -> dict[str, Any]:
    """Pearson / Spearman over the 74 features, raw and on the model's normalised scale, and the mean absolute
    difference in normalised units (training standard deviations)."""
    raw_r, raw_m, norm_r, norm_m = feature_vectors(requested, measured, normaliser)
    return {"raw": _correlations(raw_r, raw_m), "normalised": _correlations(norm_r, norm_m),
            "mean_abs_normalised_difference": float(np.mean(np.abs(norm_r - norm_m))), "features": len(raw_r)}


def pooled_fidelity(pairs: list[tuple[Mapping[str, float], Mapping[str, float]]],
                    normaliser: FeatureNormalizer) -> dict[str, Any] | None:
    """Correlation over all cases' features together (every (case, feature) pair is one point)."""
    if not pairs:
        return None
    vectors = [feature_vectors(r, m, normaliser) for r, m in pairs]
    raw_r, raw_m, norm_r, norm_m = (np.concatenate([v[i] for v in vectors]) for i in range(4))
    return {"raw": _correlations(raw_r, raw_m), "normalised": _correlations(norm_r, norm_m),
            "mean_abs_normalised_difference": float(np.mean(np.abs(norm_r - norm_m))), "points": len(raw_r)}


# ---- one case ------------------------------------------------------------------------------------------------
def _timed(call: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = call(*args, **kwargs)
    return out, time.perf_counter() - start


def evaluate_case(case: str, donor: str, data: Path, image_glob: str, model: str, steps_list: Sequence[int],
                  normaliser: FeatureNormalizer) -> dict[str, Any]:
    """Synthesis, removal and fidelity on one unseen case; ``donor`` gives the pasted mask and swapped texture."""
    net = load_cached(model, expected_type="bridge-unet")
    image, labels = load_case(data, case, image_glob)
    donor_image, donor_labels = load_case(data, donor, image_glob)
    lab = np.asarray(labels.array)
    raw = np.asarray(image.array, dtype=np.float32)
    intensity = net.vqgan.normalizer_for(raw)  # the same per-scan map the pipeline uses
    norm = intensity.forward(raw)
    spacing = image.spacing_zyx
    brain = brain_mask(raw)
    region, region_kind = tumour_core(lab)
    region_map = image.as_labels(region.astype(np.uint8))
    own = ts.measure_texture(image, region_map, model=model)
    donor_region, donor_kind = tumour_core(np.asarray(donor_labels.array))
    donor_features = ts.measure_texture(donor_image, donor_image.as_labels(donor_region.astype(np.uint8)),
                                        model=model)
    out: dict[str, Any] = {"case": case, "donor_case": donor, "region": region_kind, "region_voxels": int(region.sum()),
                           "donor_region": donor_kind}

    # 1. synthesis from the tumour's own features, 3a. their fidelity
    filled = mean_fill(norm, region, brain, spacing)
    inpainted = smooth_inpaint(norm, region, brain)
    synthesis: dict[str, Any] = {"mean fill (3 mm ring)": quality(filled, norm, region),
                                 "smoothed inpainting": quality(inpainted, norm, region)}
    own_fid: dict[str, Any] = {}
    own_pairs: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    for steps in steps_list:
        result, seconds = _timed(ts.retexture, image, region_map, texture=own, model=model, steps=steps, seed=SEED)
        synthesis[f"model {steps} steps"] = {**quality(intensity.forward(result.image.array), norm, region),
                                             "seconds": seconds, "crop_size_zyx": result.report["crop_size_zyx"]}
        try:
            measured = ts.measure_texture(result.image, region_map, model=model)
        except MedGenError as error:  # e.g. a uniform output: no texture to measure
            own_fid[f"model {steps} steps"] = {"error": str(error)}
        else:
            own_fid[f"model {steps} steps"] = fidelity(own, measured, normaliser)
            own_pairs[f"model {steps} steps"] = (own, measured)
        print(f"{case} synthesis {steps} steps: {synthesis[f'model {steps} steps']}", flush=True)
    try:
        inpaint_features = ts.measure_texture(image.with_array(intensity.inverse(inpainted)), region_map, model=model)
        own_fid["smoothed inpainting (no model)"] = fidelity(own, inpaint_features, normaliser)
        own_pairs["smoothed inpainting (no model)"] = (own, inpaint_features)
    except MedGenError as error:
        own_fid["smoothed inpainting (no model)"] = {"error": str(error)}
    out["synthesis"] = synthesis

    # 3b. another tumour's texture in this mask
    main_steps = 50 if 50 in steps_list else steps_list[0]
    result, seconds = _timed(ts.retexture, image, region_map, texture=donor_features, model=model, steps=main_steps,
                             seed=SEED)
    swapped: dict[str, Any] = {"steps": main_steps, "seconds": seconds,
                               "chance: this tumour's real features vs the requested ones":
                                   fidelity(donor_features, own, normaliser)}
    swap_pairs = {"chance: this tumour's real features vs the requested ones": (donor_features, own)}
    try:
        measured = ts.measure_texture(result.image, region_map, model=model)
        swapped[f"model {main_steps} steps"] = fidelity(donor_features, measured, normaliser)
        swap_pairs[f"model {main_steps} steps"] = (donor_features, measured)
    except MedGenError as error:
        swapped[f"model {main_steps} steps"] = {"error": str(error)}
    out["fidelity"] = {"own features": own_fid, "swapped texture": swapped}
    out["_pairs"] = {"own features": own_pairs, "swapped texture": swap_pairs}

    # 2. removal of another case's tumour mask pasted into healthy brain
    placed = paste_in_healthy_brain(donor_region, brain, lab > 0, spacing)
    if placed is None:
        out["removal"] = {"error": f"the {donor} tumour mask fits nowhere in the healthy brain of {case}"}
        out["healthy_centre_zyx"] = None
        return out
    pasted, placement = placed
    pasted_map = image.as_labels(pasted.astype(np.uint8))
    removal: dict[str, Any] = {"placement": placement,
                               "mean fill (3 mm ring)": quality(mean_fill(norm, pasted, brain, spacing), norm, pasted),
                               "smoothed inpainting": quality(smooth_inpaint(norm, pasted, brain), norm, pasted)}
    for steps in steps_list:
        result, seconds = _timed(ts.remove, image, pasted_map, model=model, steps=steps, seed=SEED, margin_mm=0.0)
        removal[f"model {steps} steps"] = {**quality(intensity.forward(result.image.array), norm, pasted),
                                           "seconds": seconds, "crop_size_zyx": result.report["crop_size_zyx"]}
        print(f"{case} removal {steps} steps: {removal[f'model {steps} steps']}", flush=True)
    out["removal"] = removal
    out["healthy_centre_zyx"] = placement["centroid_zyx"]
    return out


def speed(case: str, data: Path, image_glob: str, model: str, centre_zyx: Sequence[int] | None,
          steps: int = ts.DEFAULT_STEPS) -> dict[str, Any]:
    """Wall time of synthesize (shape generator, VoxelVolume 8000, at a healthy brain point) and remove (the real
    tumour) in the full scan, ``steps`` sampling steps each."""
    from napari_medgen.pipelines.shape_generation import generate_shape

    image, labels = load_case(data, case, image_glob)
    raw = np.asarray(image.array)
    if centre_zyx is None:  # deepest brain voxel
        centre_zyx = np.unravel_index(int(np.argmax(ndimage.distance_transform_edt(brain_mask(raw)))), raw.shape)
    centre_mm = [float(v) for v in index_to_physical(image, np.asarray(centre_zyx, dtype=float))]
    request = {"VoxelVolume": 8000.0}
    _, shape_seconds = _timed(generate_shape, request, spacing=image.spacing, seed=SEED)  # also loads the GAN
    _, shape_seconds = _timed(generate_shape, request, spacing=image.spacing, seed=SEED)
    synthesized, synth_seconds = _timed(ts.synthesize, image, center_mm=centre_mm, shape_request=request, model=model,
                                        steps=steps, seed=SEED)
    removed, remove_seconds = _timed(ts.remove, image, labels, model=model, steps=steps, seed=SEED)
    return {
        "case": case, "scan_shape_zyx": list(raw.shape),
        "synthesize": {"seconds": synth_seconds, "shape_generation_seconds (included)": shape_seconds,
                       "center_mm": centre_mm, "region_voxels": synthesized.report["region_voxels"],
                       "crop_size_zyx": synthesized.report["crop_size_zyx"], "steps": steps},
        "remove": {"seconds": remove_seconds, "what": "the real tumour (all labels, default 2 mm margin)",
                   "region_voxels": removed.report["region_voxels"],
                   "crop_size_zyx": removed.report["crop_size_zyx"], "steps": steps},
    }


# ---- model description -------------------------------------------------------------------------------------
def card_tables(folder: Path) -> dict[str, str]:
    """The ``| key | value |`` rows of a model card (training settings and metrics)."""
    card = folder / "README.md"
    rows: dict[str, str] = {}
    if card.is_file():
        for line in card.read_text(encoding="utf-8").splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("|") and len(cells) == 2 and cells[0] not in ("key", "---"):
                rows[cells[0]] = cells[1]
    return rows


def describe_model(model: str) -> dict[str, Any]:
    net = load_cached(model, expected_type="bridge-unet")
    extra = net.hub_extra
    folder = resolve_checkpoint(model)
    card = card_tables(folder)
    splits = extra.get("splits", {})
    bridge_params = sum(p.numel() for name, p in net.named_parameters() if not name.startswith("vqgan."))
    return {
        "model": str(model), "folder": os.path.relpath(folder, ROOT),  # relative: results files are tracked
        "training_cases": len(splits.get("train", [])), "splits": splits,
        "training_steps": card.get("steps"), "effective_batch": card.get("effective_batch"),
        "hardware": next((line.strip() for line in (folder / "README.md").read_text(encoding="utf-8").splitlines()
                          if "process(es)" in line), None) if (folder / "README.md").is_file() else None,
        "card_metrics": {k: v for k, v in card.items() if k.startswith(("val_", "final "))},
        "tumour_patch_pool": extra.get("pool_size"), "patch_size": extra.get("patch_size"),
        "vqgan": extra.get("vqgan_source"), "bridge_parameters": int(bridge_params),
        "vqgan_parameters": int(sum(p.numel() for p in net.vqgan.parameters())),
        "features": len(net.feature_names),
    }


# ---- aggregation and markdown ---------------------------------------------------------------------------------
def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarise(cases: list[dict[str, Any]], normaliser: FeatureNormalizer) -> dict[str, Any]:
    """Means over cases for the image metrics; pooled correlations (all cases' features) for fidelity."""
    summary: dict[str, Any] = {}
    for task in ("synthesis", "removal"):
        rows: dict[str, dict[str, list[float]]] = {}
        for c in cases:
            for method, m in c.get(task, {}).items():
                if isinstance(m, dict) and "psnr" in m:
                    row = rows.setdefault(method, {"psnr": [], "ssim": [], "seconds": []})
                    for key in row:
                        if key in m:
                            row[key].append(m[key])
        summary[task] = {method: {k: _mean(v) for k, v in row.items() if v} | {"cases": len(row["psnr"])}
                         for method, row in rows.items()}
    for kind in ("own features", "swapped texture"):
        methods = sorted({m for c in cases for m in c["_pairs"][kind]})
        block = {}
        for m in methods:
            block[m] = pooled_fidelity([c["_pairs"][kind][m] for c in cases if m in c["_pairs"][kind]], normaliser)
            per_case = [c["fidelity"][kind][m] for c in cases if "raw" in c["fidelity"][kind].get(m, {})]
            block[m]["mean of per-case correlations"] = {
                scale: {stat: _mean([f[scale][stat] for f in per_case]) for stat in ("pearson", "spearman")}
                for scale in ("raw", "normalised")}
        summary[f"fidelity, {kind} (pooled over cases)"] = block
    return summary


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _span(values: list[int]) -> str:
    if not values:
        return "?"
    return str(min(values)) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def _method_order(names: list[str]) -> list[str]:
    models = sorted((n for n in names if n.startswith("model ")), key=lambda n: -int(n.split()[1]))
    return models + [n for n in names if not n.startswith("model ")]


def _quality_table(summary: Mapping[str, Any], cases: list[dict[str, Any]], task: str) -> list[str]:
    names = [c["case"] for c in cases if task in c and "error" not in c[task]]
    lines = ["| method | PSNR (dB), mean | SSIM, mean | " + " | ".join(f"{n} PSNR / SSIM" for n in names)
             + " | s per call |", "|---" * (4 + len(names)) + "|"]
    for method in _method_order(list(summary.get(task, {}))):
        row = summary[task][method]
        per_case = [f"{_f(c[task][method]['psnr'], 2)} / {_f(c[task][method]['ssim'])}"
                    for c in cases if task in c and method in c[task]]
        lines.append(f"| {method} | {_f(row['psnr'], 2)} | {_f(row['ssim'])} | " + " | ".join(per_case)
                     + f" | {_f(row.get('seconds'), 1)} |")
    return lines


def _fidelity_table(block: Mapping[str, Any], paper: bool) -> list[str]:
    lines = ["| requested vs re-extracted | Pearson, raw | Spearman, raw | Pearson, normalised | Spearman, normalised "
             "| mean abs. diff. (normalised) | points | per-case mean P / S, raw | per-case mean P / S, normalised |",
             "|---" * 9 + "|"]
    for method in _method_order(list(block)):
        r = block[method]
        if r is None:
            continue
        per_case = r["mean of per-case correlations"]
        lines.append(f"| {method} | {_f(r['raw']['pearson'])} | {_f(r['raw']['spearman'])} | "
                     f"{_f(r['normalised']['pearson'])} | {_f(r['normalised']['spearman'])} | "
                     f"{_f(r['mean_abs_normalised_difference'], 2)} | {r['points']} | "
                     f"{_f(per_case['raw']['pearson'])} / {_f(per_case['raw']['spearman'])} | "
                     f"{_f(per_case['normalised']['pearson'])} / {_f(per_case['normalised']['spearman'])} |")
    if paper:
        lines.append(f"| paper ({PAPER['source']}) | {PAPER['pearson']} | {PAPER['spearman']} |" + " - |" * 6)
    return lines


def _placements(cases: list[dict[str, Any]]) -> list[str]:
    out = []
    for c in cases:
        p = c.get("removal", {}).get("placement")
        if p is None:
            out.append(f"{c['case']}: {c.get('removal', {}).get('error', 'no removal result')}.")
        else:
            out.append(f"{c['case']}: the core of {c['donor_case']} ({p['voxels']} voxels) at z, y, x "
                       f"{p['start_zyx']} (centroid {p['centroid_depth_mm']:.0f} mm deep in the healthy brain, "
                       f">= {p['distance_to_tumour_mm']:.0f} mm from the tumour).")
    return [" ".join(out)] if out else []


def _verdicts(summary: Mapping[str, Any], cases: list[dict[str, Any]], main: str) -> list[str]:
    """Plain statements of where the model stands against the baselines (computed, not hand-written)."""
    out = []
    for task in ("synthesis", "removal"):
        usable = [c for c in cases if task in c and main in c[task]]
        if not usable:
            continue
        for baseline in ("mean fill (3 mm ring)", "smoothed inpainting"):
            wins_p = sum(c[task][main]["psnr"] > c[task][baseline]["psnr"] for c in usable)
            wins_s = sum(c[task][main]["ssim"] > c[task][baseline]["ssim"] for c in usable)
            delta = summary[task][main]["psnr"] - summary[task][baseline]["psnr"]
            out.append(f"{task.capitalize()}, {main} vs {baseline}: higher PSNR in {wins_p} of {len(usable)} cases, "
                       f"higher SSIM in {wins_s} of {len(usable)} (mean PSNR difference {delta:+.2f} dB).")
    return out


def render_markdown(result: Mapping[str, Any]) -> str:
    s, cases, m = result["summary"], result["cases"], result["model"]
    steps = result["steps"]
    voxels = [c["region_voxels"] for c in cases] + [c["removal"]["placement"]["voxels"] for c in cases
                                                    if "placement" in c.get("removal", {})]
    crop_sides = [side for c in cases for task in ("synthesis", "removal") for r in c.get(task, {}).values()
                  if isinstance(r, dict) and "crop_size_zyx" in r for side in r["crop_size_zyx"]]
    split_text = ", ".join(f"{len(v)} {k}" for k, v in m["splits"].items())
    main = f"model {50 if 50 in steps else steps[0]} steps"
    lines = [
        SECTION_TITLE, "",
        f"`{result['command']}` ({result['machine']}; {result['date']}). Raw numbers: "
        f"`{result['results_file']}`. Seed 0 everywhere, one run (no repeats).", "",
        f"Model `{m['model']}`: {m['training_cases']} training cases, {m['training_steps'] or '?'} training steps "
        f"(effective batch {m['effective_batch'] or '?'}, {m['hardware'] or 'hardware not recorded'}), "
        f"{m['bridge_parameters'] / 1e6:.2f} M bridge parameters + {m['vqgan_parameters'] / 1e6:.2f} M frozen VQ-GAN "
        f"(`{m['vqgan']}`), {m['patch_size']} training patches, tumour-patch pool {m['tumour_patch_pool']}, "
        f"{m['features']} texture features. Unseen cases scored here: "
        f"{', '.join(c['case'] for c in cases)} (of val + test {', '.join(result['unseen_cases'])}). "
        f"Images `{result['image_glob']}`.", "",
        "All image metrics are inside the edited region on the model's normalised intensity scale (per-scan "
        "VQ-GAN normalisation to [-1, 1]): PSNR with peak 2; SSIM is a 3D gaussian-window SSIM (11^3, sigma 1.5) "
        "on the region's bounding box, averaged over the region's voxels. Baselines: *mean fill* = the region "
        "filled with the mean of the brain tissue in a 3 mm ring around it; *smoothed inpainting* = normalised "
        "convolution from the surrounding brain (gaussian of the masked image / gaussian of the mask, peeled "
        "inwards) followed by 50 harmonic relaxation passes.", "",
        "### Synthesis: the real tumour repainted from its own texture features", "",
        f"Region: the tumour core (labels 1, 3, 4) of each case ({', '.join(str(c['region_voxels']) for c in cases)} "
        "voxels); `retexture(image, core, texture=measure_texture(image, core))`; the target is the real tumour.", "",
        *_quality_table(s, cases, "synthesis"), "",
        "### Removal: healthy tissue under another case's tumour mask", "",
        "The tumour core of another case is translated into this case's healthy brain (every voxel inside the "
        "brain and >= 10 mm from this case's tumour; the valid position whose centroid is deepest inside the "
        "healthy brain); `remove(image, pasted_mask, margin_mm=0)` must restore the real healthy tissue there.",
        *_placements(cases), "",
        *_quality_table(s, cases, "removal"), "",
        "### Texture fidelity (requested vs re-extracted features)", "",
        "Pearson and Spearman correlation between the 74 requested texture features and those `measure_texture` "
        "re-extracts from the output (same region), pooled over the cases (one point per case and feature). "
        "*Raw*: feature values as extracted (on the normalised intensities); *normalised*: the model's own "
        "feature scale (`FeatureNormalizer`: log1p of skewed non-negative features, z-score with the training "
        "statistics).", "",
        "(a) the tumour's own features:", "",
        *_fidelity_table(s["fidelity, own features (pooled over cases)"], paper=True), "",
        "(b) swapped texture: another case's tumour-core features requested in this case's core. The *chance* row "
        "correlates the requested features with this tumour's real ones, i.e. what a model that ignored the "
        "request and reproduced the real tumour would score.", "",
        *_fidelity_table(s["fidelity, swapped texture (pooled over cases)"], paper=False), "",
        "### Sampling steps versus quality", "",
        "| steps | synthesis PSNR / SSIM | removal PSNR / SSIM | fidelity (own) Pearson / Spearman, raw | "
        "fidelity (own) Pearson / Spearman, normalised | s per retexture | s per remove |",
        "|---|---|---|---|---|---|---|",
    ]
    own = s["fidelity, own features (pooled over cases)"]
    for n in sorted(steps, reverse=True):
        key = f"model {n} steps"
        syn, rem, fid = s["synthesis"].get(key, {}), s["removal"].get(key, {}), own.get(key)
        fid_raw = f"{_f(fid['raw']['pearson'])} / {_f(fid['raw']['spearman'])}" if fid else "-"
        fid_norm = f"{_f(fid['normalised']['pearson'])} / {_f(fid['normalised']['spearman'])}" if fid else "-"
        lines.append(f"| {n} | {_f(syn.get('psnr'), 2)} / {_f(syn.get('ssim'))} | {_f(rem.get('psnr'), 2)} / "
                     f"{_f(rem.get('ssim'))} | {fid_raw} | {fid_norm} | {_f(syn.get('seconds'), 1)} | "
                     f"{_f(rem.get('seconds'), 1)} |")
    sp = result.get("speed")
    lines += ["", "### Speed in a full scan", ""]
    if sp:
        lines += [
            f"Case {sp['case']}, scan {' x '.join(map(str, sp['scan_shape_zyx']))} (z, y, x) at 1 mm, "
            f"{result['cpu_count']} CPUs, {result['torch_threads']} torch threads, CPU only.", "",
            "| operation | seconds | region voxels | crop (z, y, x) |", "|---|---|---|---|",
            f"| `synthesize` (shape generator, VoxelVolume 8000 mm3, default texture, {sp['synthesize']['steps']} "
            "steps; shape generation "
            f"{_f(sp['synthesize']['shape_generation_seconds (included)'], 1)} s included) | "
            f"{_f(sp['synthesize']['seconds'], 1)} | {sp['synthesize']['region_voxels']} | "
            f"{sp['synthesize']['crop_size_zyx']} |",
            f"| `remove` ({sp['remove']['what']}, {sp['remove']['steps']} steps) | {_f(sp['remove']['seconds'], 1)} | "
            f"{sp['remove']['region_voxels']} | {sp['remove']['crop_size_zyx']} |",
        ]
    else:
        lines.append("Not measured in this run.")
    lines += [
        "", "### Notes", "",
        *[f"- {v}" for v in _verdicts(s, cases, main)],
        "- Reference numbers: seed 003 (TS-Radiomics) reports, for brain, Pearson 0.864 / Spearman 0.906 between "
        "requested and re-extracted radiomics (Table 2). The reference implementation cannot be run here: its "
        "texture U-Net has 681 M parameters, no weights are released, and it needs MONAI 1.2 "
        "(`../shared/research/refimpl.md`, section 1). Its code feeds the radiomics vectors raw (no normalisation), "
        "so the paper's numbers are most likely correlations of raw feature values; compare them with our *raw* "
        "columns.",
        "- Raw correlations over 74 features are dominated by the features' very different magnitudes (energies "
        "and non-uniformities in the thousands next to ratios below 1): two different real tumours already "
        "correlate highly (the *chance* row). The normalised columns, and the gap to the chance row, say more "
        "about whether the requested texture was followed. The *pooled* columns put every case's 74 features in "
        "one correlation (one point per case and feature); the *per-case mean* columns average one correlation per "
        "case. The paper does not say which it used; it may also have correlated each feature across many samples, "
        "which two unseen cases cannot support.",
        f"- The regions here are whole tumour cores of real glioblastomas ({_span(voxels)} voxels, network crops "
        f"of {_span(crop_sides)} voxels a side), far larger than the {m['patch_size']} training patches; the model "
        "sees them through its fully convolutional U-Net. In training, features were computed on the tumour part "
        "inside each patch.",
        f"- {len(cases)} unseen case(s) scored; the model's split is {split_text}. With so few cases, differences "
        "between methods of a fraction of a dB are within case-to-case variation.",
        "- The JSON also holds `ssim_bounding_box`: scikit-image's mean SSIM over the region's whole bounding box "
        "(unchanged tissue around the region included, so it is higher for every method).",
        "- Sampling is stochastic (eta 1) with seed 0; every number is a single draw.",
    ]
    if result.get("quick"):
        lines.append("- **Quick mode** (one case, 20 steps): a smoke test, not a result.")
    return "\n".join(lines) + "\n"


def replace_section(document: str, section: str) -> str:
    """``document`` with the tumour-synthesis section (between its markers) replaced, or appended; every other
    byte unchanged."""
    block = f"{BEGIN_MARKER}\n{section}{END_MARKER}\n"
    if BEGIN_MARKER in document and END_MARKER in document:
        head, rest = document.split(BEGIN_MARKER, 1)
        _, tail = rest.split(END_MARKER, 1)
        return head + block + tail.removeprefix("\n")
    match = re.search(rf"^{re.escape(SECTION_TITLE)}\s*$", document, flags=re.MULTILINE)
    if match:  # an unmarked section (written by hand): replace it up to the next section heading
        following = re.search(r"^## ", document[match.end():], flags=re.MULTILINE)
        end = match.end() + following.start() if following else len(document)
        return document[:match.start()] + block + ("\n" if following else "") + document[end:]
    sep = "" if not document or document.endswith("\n\n") else ("\n" if document.endswith("\n") else "\n\n")
    return document + sep + block


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=ts.DEFAULT_MODEL, help="bundled name or checkpoint folder")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "brats2015_subset"))
    parser.add_argument("--image-glob", default="T1c*.nii.gz", help="the image file in each case folder")
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 50, 20], help="sampling steps compared")
    parser.add_argument("--quick", action="store_true", help="one case, 20 steps everywhere (smoke test)")
    parser.add_argument("--no-docs", action="store_true",
                        help="write neither docs/benchmarks.md nor the results JSON (unless --out is given)")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/tumor_synthesis.json)")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    data = Path(args.data)
    steps_list = [20] if args.quick else list(dict.fromkeys(args.steps))
    start = time.perf_counter()

    net = load_cached(args.model, expected_type="bridge-unet")
    normaliser = FeatureNormalizer.from_dict(net.hub_extra["feature_normalizer"])
    splits = net.hub_extra.get("splits") or {}
    unseen = list(splits.get("val", [])) + list(splits.get("test", []))
    if not unseen:
        raise SystemExit(f"{args.model}: the checkpoint lists no val/test cases (hub_extra['splits']); nothing unseen")
    missing = [c for c in unseen if not (data / c).is_dir()]
    if missing:
        raise SystemExit(f"unseen case folder(s) {missing} not found under {data}; pass --data")
    donors = unseen if len(unseen) > 1 else unseen + list(splits.get("train", []))[:1]
    scored = unseen[:1] if args.quick else unseen

    cases = []
    for case in scored:
        donor = donors[(donors.index(case) + 1) % len(donors)]
        cases.append(evaluate_case(case, donor, data, args.image_glob, args.model, steps_list, normaliser))
    summary = summarise(cases, normaliser)
    speed_result = speed(scored[0], data, args.image_glob, args.model, cases[0].get("healthy_centre_zyx"),
                         steps=20 if args.quick else ts.DEFAULT_STEPS)
    command = shlex.join(["python", "benchmarks/tumor_synthesis.py", *sys.argv[1:]])
    result = {
        "command": command.strip(), "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
                   f"Python {platform.python_version()}",
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "quick": bool(args.quick), "steps": steps_list, "image_glob": args.image_glob, "unseen_cases": unseen,
        "model": describe_model(args.model), "paper": PAPER,
        "summary": summary,
        "cases": [{k: v for k, v in c.items() if not k.startswith("_")} for c in cases],
        "speed": speed_result, "total_seconds": None,
    }
    result["total_seconds"] = time.perf_counter() - start
    out = Path(args.out) if args.out else (None if args.no_docs else ROOT / "benchmarks" / "results"
                                           / "tumor_synthesis.json")
    if out is None:
        result["results_file"] = "not written (--no-docs)"
    else:
        resolved = out.resolve()
        result["results_file"] = str(resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved)
    markdown = render_markdown(result)
    if out is not None:
        _write_atomically(out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    if args.no_docs:
        print(markdown)
    else:
        docs = Path(args.docs)
        _write_atomically(docs, replace_section(docs.read_text(encoding="utf-8") if docs.exists() else "", markdown))
        print(f"wrote the section of {docs}")
    print(f"total {result['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
