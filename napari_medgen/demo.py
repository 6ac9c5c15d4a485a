"""The job behind ``medgen demo`` / ``make demo``: the main workflow on bundled defaults.

It exercises the geometry-true IO on the two sample scans (the MNI152 T1 brain shipped in nilearn
and the synthetic tumour phantom): each is written as NIfTI and NRRD, re-read, checked against its
source geometry, and drawn as an axial / coronal / sagittal montage. Then it generates a tumour shape
in the brain (shape GAN), turns brain + tumour into BRATS-style labels and generates FLAIR-like slices
from them (seg2img, MNI brain as similarity reference), and makes a few breast-ultrasound image + mask
pairs (PIG). A JSON report records geometry, checks, requested vs measured features and timings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_medgen.core import io
from napari_medgen.core.atomic import atomic_file, atomic_write_text
from napari_medgen.core.montage import save_montage, save_montage_rows
from napari_medgen.core.progress import Job, ProgressEvent
from napari_medgen.core.volume import GEOMETRY_TOLERANCE, LabelMap, Volume


def _round_trip_check(source: Volume, path: Path, labels: bool) -> dict[str, Any]:
    """Re-read a written file and compare voxels and geometry with the source."""
    back = io.read_labels(path) if labels else io.read_volume(path)
    return {
        "file": path.name,
        "voxels_identical": bool(np.array_equal(back.array, source.array)),
        "geometry_identical": bool(source.same_grid(back, GEOMETRY_TOLERANCE)),
    }


DEMO_SHAPE_REQUEST = {"VoxelVolume": 8000.0, "Sphericity": 0.75}
DEMO_SHAPE_CENTER_MM = (-25.0, 10.0, 15.0)  # LPS, right frontal white matter of the MNI152 template


def _shape_demo(brain: Volume, out: Path, outputs: list[str]) -> tuple[dict[str, Any], LabelMap]:
    """Generate a tumour mask with requested features, place it in the brain, re-extract its features."""
    from napari_medgen.pipelines.shape_generation import generate_shape, place_shape
    from napari_medgen.radiomics import extract_features

    t0 = time.perf_counter()
    shape = generate_shape(DEMO_SHAPE_REQUEST, spacing=brain.spacing, seed=0).mask
    placed = place_shape(shape, brain, DEMO_SHAPE_CENTER_MM)
    seconds = time.perf_counter() - t0
    io.write_volume(placed, out / "mni152_tumour_mask.nii.gz")
    save_montage(out / "mni152_tumour_montage.png", brain, placed)
    outputs.extend(["mni152_tumour_mask.nii.gz", "mni152_tumour_montage.png"])
    measured = extract_features(brain, placed, 1, feature_classes=["shape"])
    return {
        "center_mm": list(DEMO_SHAPE_CENTER_MM),
        "requested": DEMO_SHAPE_REQUEST,
        "re_extracted": {name: measured[f"original_shape_{name}"] for name in DEMO_SHAPE_REQUEST},
        "seconds": round(seconds, 3),
    }, placed


DEMO_SEG2IMG = {"steps": 20, "sampler": "dpmpp", "seed": 0, "similarity": 0.4}
DEMO_PAIRS = {"n": 8, "steps": 25, "sampler": "ddim", "seed": 0}


def brats_labels_around(brain: Volume, tumour: LabelMap) -> LabelMap:
    """BRATS-convention labels of ``seg2img-brain`` from a brain image and one lesion mask: 5 brain (non-zero
    voxels of a skull-stripped scan), 2 edema (a 4 mm shell around the lesion), 4 enhancing rim, 1 necrotic core
    (the lesion eroded by 3 mm)."""
    from scipy import ndimage

    spacing_zyx = np.asarray(brain.spacing[::-1])
    lesion = tumour.array > 0
    outside = ndimage.distance_transform_edt(~lesion, sampling=spacing_zyx)
    inside = ndimage.distance_transform_edt(lesion, sampling=spacing_zyx)
    tissue = ndimage.binary_fill_holes(np.asarray(brain.array) > 0)
    labels = np.where(tissue, 5, 0).astype(np.uint8)
    labels[(outside > 0) & (outside <= 4.0) & tissue] = 2
    labels[lesion] = 4
    labels[lesion & (inside > 3.0)] = 1
    return brain.as_labels(labels)


def _slab(volume: Volume, z0: int, z1: int) -> Volume:
    """Slices ``z0:z1`` of a volume with the origin moved to its first slice (same grid otherwise)."""
    from napari_medgen.core.geometry import index_to_physical

    origin = tuple(float(v) for v in index_to_physical(volume, (z0, 0, 0)))
    return volume.with_array(np.asarray(volume.array)[z0:z1], origin=origin)


def _slice_diffusion_demo(brain: Volume, tumour: LabelMap, out: Path, outputs: list[str]) -> dict[str, Any]:
    """FLAIR-like slices generated from labels around the demo tumour (bundled seg2img-brain, with the MNI brain
    as similarity reference), and a few new breast-ultrasound image + mask pairs (bundled PIG guider)."""
    from napari_medgen.pipelines.paired_generation import generate_pairs
    from napari_medgen.pipelines.slice_generation import generate_from_labels

    labels = brats_labels_around(brain, tumour)
    rows = np.flatnonzero((np.isin(labels.array, (1, 2, 4))).reshape(labels.shape[0], -1).any(1))
    z0, z1 = max(0, int(rows[0]) - 4), min(labels.shape[0], int(rows[-1]) + 5)
    labels_slab, brain_slab = _slab(labels, z0, z1), _slab(brain, z0, z1)
    t0 = time.perf_counter()
    synthetic = generate_from_labels(labels_slab, reference=brain_slab, **DEMO_SEG2IMG).image
    seconds = time.perf_counter() - t0
    io.write_volume(labels_slab, out / "seg2img_labels.nii.gz")
    io.write_volume(synthetic, out / "seg2img_flair.nii.gz")
    save_montage(out / "seg2img_montage.png", synthetic, labels_slab.as_labels(
        np.where(np.isin(labels_slab.array, (1, 2, 4)), labels_slab.array, 0)))
    outputs.extend(["seg2img_labels.nii.gz", "seg2img_flair.nii.gz", "seg2img_montage.png"])

    t0 = time.perf_counter()
    pairs = generate_pairs(**DEMO_PAIRS).pairs
    pair_seconds = time.perf_counter() - t0
    _save_pairs_sheet(out / "paired_busi.png", pairs)
    outputs.append("paired_busi.png")
    return {
        "seg2img": {"model": "seg2img-brain", "slices": int(z1 - z0), "grid_identical": synthetic.same_grid(
            labels_slab), **DEMO_SEG2IMG, "seconds": round(seconds, 3)},
        "paired": {"guider": "busi-paired-guider", **DEMO_PAIRS, "pairs_with_a_lesion": int(sum(
            bool(m.array.any()) for _, m in pairs)), "seconds": round(pair_seconds, 3)},
    }


DEMO_EDIT = {"seed": 0, "edema_mm": (4.0, 10.0)}  # brain editor: necrotic core, enhancing rim, edema shell


def _feature_agreement(requested: dict[str, float], measured: dict[str, float], normalizer: Any) -> dict[str, Any]:
    """Pearson / Spearman between requested and re-extracted texture features (seed 003 Table 2), on the
    model's normalised feature scale (raw values span orders of magnitude and would let a few dominate)."""
    from scipy import stats

    names = [n for n in requested if np.isfinite(measured.get(n, np.nan))]
    a = normalizer.transform({n: requested[n] for n in normalizer.names})
    b = normalizer.transform({n: measured[n] for n in normalizer.names})
    keep = np.isfinite(a) & np.isfinite(b)
    return {
        "features": len(names),
        "pearson": float(stats.pearsonr(a[keep], b[keep])[0]),
        "spearman": float(stats.spearmanr(a[keep], b[keep])[0]),
        "examples": {n.removeprefix("original_"): {"requested": round(requested[n], 4), "re_extracted":
                     round(measured[n], 4)} for n in names if n.endswith(("firstorder_Mean", "firstorder_Entropy",
                                                                          "glcm_Contrast", "glszm_ZoneEntropy"))},
    }


def _texture_demo(brain: Volume, tumour: LabelMap, out: Path, outputs: list[str]) -> dict[str, Any]:
    """The shape-GAN tumour turned into a glioma with sub-regions by the brain editor (necrotic core, enhancing rim,
    edema; fitted T1c appearance), then removed again by learned inpainting; volumes, masks, a montage (rows: before,
    synthesized, synthesized with its sub-regions, removed) and the intensities of each sub-region."""
    from scipy import ndimage

    from napari_medgen.pipelines import tumor_synthesis as ts

    t0 = time.perf_counter()
    synth = ts.synthesize(brain, shape=tumour, **DEMO_EDIT)
    synth_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    removed = ts.remove(synth.image, synth.labels)
    remove_seconds = time.perf_counter() - t0
    io.write_volume(synth.image, out / "mni152_synth.nii.gz")
    io.write_volume(synth.labels, out / "mni152_synth_mask.nii.gz")
    io.write_volume(removed.image, out / "mni152_removed.nii.gz")
    save_montage_rows(out / "mni152_synth_montage.png",
                      [(brain, None), (synth.image, None), (synth.image, synth.labels), (removed.image, None)])
    outputs.extend(["mni152_synth.nii.gz", "mni152_synth_mask.nii.gz", "mni152_removed.nii.gz",
                    "mni152_synth_montage.png"])
    labels = np.asarray(synth.labels.array)
    region = labels > 0
    image = np.asarray(synth.image.array, dtype=float)
    before, after = np.asarray(brain.array, dtype=float), np.asarray(removed.image.array, dtype=float)
    brain_voxels = before[(before > before.min()) & ~region]
    changed = np.asarray(synth.image.array) != np.asarray(brain.array)
    beyond = ndimage.distance_transform_edt(~region, sampling=brain.spacing_zyx) > synth.report["blend_mm"]
    voxel_cm3 = float(np.prod(brain.spacing)) / 1000.0
    return {
        "model": ts.DEFAULT_MODEL,
        **DEMO_EDIT,
        "synthesize_seconds": round(synth_seconds, 3),
        "remove_seconds": round(remove_seconds, 3),
        "requested_shape": DEMO_SHAPE_REQUEST,
        "subregions_cm3": {name: round(count * voxel_cm3, 2) for name, count in
                           synth.report["subregion_voxels"].items()},
        # brightness of each painted sub-region relative to the healthy brain (median, IQR units): a T1c glioma has
        # a bright enhancing rim, a dark necrotic core and slightly dark edema
        "subregion_contrast": {name: round(float((np.median(image[labels == value]) - np.median(brain_voxels))
                                                 / np.subtract(*np.percentile(brain_voxels, [75, 25]))), 3)
                               for name, value in (("necrotic_core", 1), ("edema", 2), ("enhancing_tumour", 4))
                               if np.any(labels == value)},
        "removal": {"region_mean_before_synthesis": float(before[region].mean()),
                    "region_mean_synthesized": float(image[region].mean()),
                    "region_mean_after_removal": float(after[region].mean()),
                    "mean_abs_difference_to_original_in_region": float(np.abs(after - before)[region].mean())},
        "voxels_changed_beyond_blend_band": int(np.sum(changed & beyond)),
        "grid_identical": synth.image.same_grid(brain) and removed.image.same_grid(brain),
    }


def _save_pairs_sheet(path: Path, pairs: list[tuple[Volume, LabelMap]]) -> None:
    """One PNG: the generated images on top, the same images with their mask outline (red) below."""
    from PIL import Image
    from scipy import ndimage

    tiles_top, tiles_bottom = [], []
    for image, mask in pairs:
        grey = (np.clip(image.array[0], 0, 1) * 255).astype(np.uint8)
        rgb = np.stack([grey] * 3, axis=-1)
        m = mask.array[0] > 0
        edge = m & ~ndimage.binary_erosion(m)
        outlined = rgb.copy()
        outlined[edge] = (255, 40, 40)
        tiles_top.append(rgb)
        tiles_bottom.append(outlined)
    sheet = np.concatenate([np.concatenate(tiles_top, 1), np.concatenate(tiles_bottom, 1)], 0)
    img = Image.fromarray(sheet).resize((sheet.shape[1] * 3, sheet.shape[0] * 3), Image.NEAREST)
    with atomic_file(path) as tmp:
        img.save(tmp, format="PNG")


def run_demo(out_dir: str | Path) -> Job[dict[str, Any]]:
    """Write sample volumes, label maps, montages and ``report.json`` into ``out_dir``."""
    from napari_medgen.sample_data import load_mni152_t1, make_phantom

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = 10
    timings: dict[str, float] = {}
    checks: list[dict[str, Any]] = []
    outputs: list[str] = []

    t0 = time.perf_counter()
    yield ProgressEvent(0, total, "demo", "loading the MNI152 T1 sample")
    brain = load_mni152_t1()
    timings["load_mni152_s"] = time.perf_counter() - t0

    yield ProgressEvent(1, total, "demo", "writing the brain as NIfTI and NRRD")
    t0 = time.perf_counter()
    for name in ("mni152_t1.nii.gz", "mni152_t1.nrrd"):
        path = io.write_volume(brain, out / name)
        checks.append(_round_trip_check(brain, path, labels=False))
        outputs.append(name)
    timings["write_brain_s"] = time.perf_counter() - t0

    yield ProgressEvent(2, total, "demo", "brain montage")
    save_montage(out / "mni152_t1_montage.png", brain)
    outputs.append("mni152_t1_montage.png")

    yield ProgressEvent(3, total, "demo", "making the tumour phantom")
    t0 = time.perf_counter()
    phantom, tumour = make_phantom()
    timings["make_phantom_s"] = time.perf_counter() - t0

    yield ProgressEvent(4, total, "demo", "writing the phantom and its tumour labels")
    for name, volume in (("phantom.nii.gz", phantom), ("phantom_tumour.nii.gz", tumour),
                         ("phantom.nrrd", phantom), ("phantom_tumour.seg.nrrd", tumour)):
        path = io.write_volume(volume, out / name)
        checks.append(_round_trip_check(volume, path, labels=isinstance(volume, LabelMap)))
        outputs.append(name)

    yield ProgressEvent(5, total, "demo", "phantom montage")
    save_montage(out / "phantom_montage.png", phantom, tumour)
    outputs.append("phantom_montage.png")

    yield ProgressEvent(6, total, "demo", "generating a tumour shape in the brain (shape GAN)")
    shape_report, placed = _shape_demo(brain, out, outputs)
    yield ProgressEvent(7, total, "demo", "images from labels around the tumour (seg2img) and paired generation")
    diffusion_report = _slice_diffusion_demo(brain, placed, out, outputs)
    yield ProgressEvent(8, total, "demo", "painting the tumour into the brain and removing it (brain editor)")
    texture_report = _texture_demo(brain, placed, out, outputs)
    yield ProgressEvent(9, total, "demo", "writing the report")

    report = {
        "shape_generation": shape_report,
        "slice_diffusion": diffusion_report,
        "tumour_synthesis": texture_report,
        "samples": {
            "mni152_t1": brain.geometry(),
            "phantom": phantom.geometry(),
            "phantom_tumour_labels": {str(v): int((tumour.array == v).sum()) for v in tumour.labels()},
        },
        "round_trip_checks": checks,
        "all_round_trips_exact": all(c["voxels_identical"] and c["geometry_identical"] for c in checks),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "outputs": outputs + ["report.json"],
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    yield ProgressEvent(total, total, "demo", "done")
    return report
