"""Tumour removal (healthy-tissue inpainting) under the BraTS inpainting challenge protocol and metric (issue 13).

    python benchmarks/tumor_synthesis.py [--model outputs/inpainter-brain/model] [--quick] [--docs]

Protocol (as the challenge builds its test set; merged from the former ``benchmarks/inpainting_removal.py``):

- held-out BRATS cases of the project's split (pat0001, pat0004: never trained on), T1c and FLAIR; for each case
  ``--masks`` masks (seeded): ANOTHER case's tumour core (labels 1, 3, 4), randomly flipped along each axis and
  rotated about the z axis, placed where every voxel is >= 6 voxels from this case's tumour (labels > 0, i.e. a gap
  of >= 5 voxels) and >= 75 % of it inside the brain, then cut to the brain;
- the voided image (every masked voxel = 0) is the ONLY input of every method (the truth is never passed);
- two intensity conventions: "raw-like" (the z-scored scan shifted so the background is 0 and the brain positive,
  scaled so the brain's 99.5th percentile is 3000, int16: what BraTS 2023 challenge scans look like) and "z-scored"
  (as stored, float32; background = the minimum, the voided region = 0 = the brain mean);
- scored with ``inpainting.challenge_metrics_2023.generate_metrics(prediction, target, normalization_tensor=voided,
  mask)`` on ``[1, x, y, z]`` tensors (SSIM map and PSNR inside the mask, both images scaled by the 0.5 / 99.5
  percentiles of the voided image and clipped below at 0). The call is cut to the mask's bounding box + 12 voxels
  (same numbers, checked once per run against the full call: ``crop_check`` in the JSON).

Methods: ``mean``, ``harmonic`` (brain-aware), ``atlas-harmonic`` (the MNI152 atlas registered to the voided scan,
`core.atlas`), ``mirror``, ``mirror-harmonic``, ``model`` (the learned `Inpainter`, ``--model``) and ``model v1``
(the first inpainter, without the atlas estimate, ``--v1-model``, when its checkpoint is present) all through
``pipelines.tumour_removal.inpaint`` as a user calls it; ``previous`` = the
previously bundled latent Brownian bridge (``pipelines.tumor_synthesis.remove``, bridge-brain-t1c, margin 0) at each
of ``--bridge-steps`` (the first on everything, the others on T1c raw-like only: steps vs quality).

Scans the project has never seen: the MNI152 T1 template (nilearn; healthy, symmetric: mirror fills are trivially
exact there, and it IS the atlas, so only mean / harmonic / model v1 / previous are run) and the pyradiomics
brain1 / brain2 T1c scans (raw int16, 6.5 mm slices, skull not stripped; the bridge refuses the spacing). The MONAI
and MedPy brain files are listed with why they cannot be used.

Also: the speed of one edit of a 240x240x155 scan with a 60-100 cm3 region (model on 1 and 2 threads, the bridge at
its default steps), montages (axial + coronal crops around the mask, one window per row), and the synthesis
(glioma appearance) section from ``benchmarks/tumour_appearance.py`` / its results JSON when present.

Writes benchmarks/results/tumor_synthesis.{json,md} and tumor_synthesis_*.png. ``--docs`` also replaces the
``<!-- benchmark:tumor_synthesis:begin/end -->`` section of docs/benchmarks.md. ``--quick``: one case, one mask, T1c
only, one mask per unseen scan (a smoke test, < 5 min). ``--render``: re-render the markdown from the JSON only.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_medgen.core.io import read_labels, read_volume  # noqa: E402
from napari_medgen.core.volume import Volume  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SECTION_TITLE = "## Tumour removal and synthesis (issue 13)"
BEGIN_MARKER = "<!-- benchmark:tumor_synthesis:begin -->"
END_MARKER = "<!-- benchmark:tumor_synthesis:end -->"
CORE_LABELS = (1, 3, 4)
HELD_OUT = ("brats_2013_pat0001_1", "brats_2013_pat0004_1")
TRAINING = ("brats_2013_pat0002_1", "brats_2013_pat0003_1", "brats_2013_pat0005_1")
SEQUENCES = {"T1c": "T1c_subtrMeanDivStd.nii.gz", "FLAIR": "Flair_subtrMeanDivStd.nii.gz"}
CLASSICAL = ("mean", "harmonic", "atlas-harmonic", "mirror", "mirror-harmonic")
ALL_METHODS = (*CLASSICAL, "model", "model v1", "previous")
MONTAGE_COLUMNS = ("truth", "voided", "harmonic", "atlas-harmonic", "mirror-harmonic", "model v1", "model", "previous")
V1_MODEL: str | None = None  # the first inpainter (no atlas estimate), set by main() from --v1-model
BRIDGE = "bridge-brain-t1c"
RAW_TOP = 3000.0  # the brain's 99.5th percentile in the raw-like convention
GAP_MM = 6.0  # every mask voxel >= 6 voxels (1 mm) from the tumour: a gap of >= 5 voxels
REFERENCES = [  # published on the BraTS 2023 inpainting test set (not measured here, different data)
    ("BraTS 2023 inpainting, 2nd place (2D DDPM)", 0.827, 20.5, None),
    ("fastWDM3D (2 steps)", 0.857, 22.3, 1.8),
    ("BraTS 2025 inpainting winner (3D U-Net)", 0.919, 26.9, None),
]
CROP_CHECK: dict | None = None


# ---- masks (challenge protocol) ----------------------------------------------------------------------------
def random_shape(core: np.ndarray, rng: np.random.Generator, zoom: Sequence[float] | None = None) -> np.ndarray:
    """The donor's tumour core cropped, flipped along random axes, rotated about z by a random angle and (``zoom``)
    resampled from the donor's 1 mm grid to the target's."""
    box = ndimage.find_objects(core.astype(np.uint8))[0]
    shape = core[box]
    for axis in range(3):
        if rng.random() < 0.5:
            shape = np.flip(shape, axis)
    angle = float(rng.uniform(0, 360))
    shape = ndimage.rotate(shape.astype(np.float32), angle, axes=(1, 2), order=1, reshape=True) > 0.5
    if zoom is not None and not np.allclose(zoom, 1.0):
        shape = ndimage.zoom(shape.astype(np.float32), zoom, order=1) > 0.5
    found = ndimage.find_objects(shape.astype(np.uint8))
    return shape[found[0]] if found else shape


def place(shape: np.ndarray, brain: np.ndarray, gap: np.ndarray, rng: np.random.Generator,
          tries: int = 3000) -> np.ndarray | None:
    """``shape`` at a random brain position with every voxel >= `GAP_MM` from the tumour (``gap``: distance in mm)
    and >= 75 % inside the brain, cut to the brain; None if no try succeeds."""
    candidates = np.argwhere(brain)
    n = np.array(shape.shape)
    for _ in range(tries):
        centre = candidates[rng.integers(len(candidates))]
        start = centre - n // 2
        if np.any(start < 0) or np.any(start + n > np.array(brain.shape)):
            continue
        sl = tuple(slice(s, s + k) for s, k in zip(start, n, strict=True))
        if not np.all(gap[sl][shape] >= GAP_MM) or brain[sl][shape].mean() < 0.75:
            continue
        mask = np.zeros(brain.shape, bool)
        mask[sl] = shape
        return mask & brain
    return None


def make_masks(brain: np.ndarray, tumour: np.ndarray | None, donors: Sequence[tuple[str, np.ndarray]], n_masks: int,
               rng: np.random.Generator, spacing: Sequence[float] = (1.0, 1.0, 1.0),
               min_cm3: float = 1.0) -> list[tuple[np.ndarray, str]]:
    """``n_masks`` challenge masks from the donors' (name, 1 mm core) shapes."""
    spacing = tuple(float(s) for s in spacing)
    gap = (np.full(brain.shape, np.inf) if tumour is None or not tumour.any()
           else ndimage.distance_transform_edt(~tumour, sampling=spacing))
    zoom = tuple(1.0 / s for s in spacing)
    masks: list[tuple[np.ndarray, str]] = []
    attempts = 0
    while len(masks) < n_masks and attempts < 20 * n_masks:
        attempts += 1
        name, core = donors[int(rng.integers(len(donors)))]
        mask = place(random_shape(core, rng, zoom), brain, gap, rng)
        if mask is not None and mask.sum() * np.prod(spacing) / 1000 > min_cm3:
            masks.append((mask, name))
    return masks


# ---- scoring ---------------------------------------------------------------------------------------------------
def challenge_scores(prediction: np.ndarray, truth: np.ndarray, voided: np.ndarray, mask: np.ndarray, *,
                     crop: bool = True) -> dict[str, float]:
    """``generate_metrics`` called as the challenge's ``compute_image_quality_metrics`` does.

    A full 240x240x155 call takes ~20 s on one thread (the SSIM map of the whole volume). With ``crop`` the
    prediction, truth and mask are cut to the mask's bounding box + 12 voxels while the normalisation tensor stays
    the whole voided image: the percentiles are unchanged, every voxel outside the mask is 0 after masking in both,
    and 12 voxels cover the 11-tap SSIM window plus its reflect padding, so SSIM inside the mask, MSE and PSNR are
    the same (checked once per run, ``crop_check``)."""
    import torch
    from inpainting.challenge_metrics_2023 import generate_metrics

    box = tuple(slice(None) for _ in range(3))
    if crop:
        found = ndimage.find_objects(mask.astype(np.uint8))[0]
        box = tuple(slice(max(b.start - 12, 0), min(b.stop + 12, n)) for b, n in zip(found, mask.shape, strict=True))

    def tensor(a: np.ndarray) -> torch.Tensor:  # (z, y, x) -> nibabel's (x, y, z), then [1, x, y, z]
        return torch.from_numpy(np.ascontiguousarray(np.transpose(a, (2, 1, 0)))).unsqueeze(0)

    metrics = generate_metrics(
        prediction=tensor(prediction[box].astype(np.float32)),
        target=tensor(truth[box].astype(np.float32)),
        normalization_tensor=tensor(voided.astype(np.float32)),
        mask=tensor(mask[box]).bool(),
    )
    return {k: float(metrics[k]) for k in ("ssim", "psnr", "mse")}


# ---- data ------------------------------------------------------------------------------------------------------
def raw_like(z: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The z-scored scan as BraTS 2023 ships scans: background 0, brain positive, int16 (99.5th brain pct = 3000)."""
    background = float(z[~brain].min()) if (~brain).any() else float(z.min())
    top = float(np.percentile(z[brain], 99.5))
    return np.rint(np.clip((z - background) / (top - background) * RAW_TOP, 0, 32767)).astype(np.int16)


def load_brats_case(data: Path, name: str, sequences: Sequence[str]) -> dict[str, Any]:
    folder = data / "brats2015_subset" / name
    labels = np.asarray(read_labels(folder / "OTMultiClass.nii.gz").array).astype(np.int16)
    brain = np.asarray(read_volume(folder / "brainmask.nii.gz").array) > 0
    images = {seq: read_volume(folder / SEQUENCES[seq]) for seq in sequences}
    return {"name": name, "labels": labels, "brain": brain, "images": images}


def brats_cores(data: Path) -> list[tuple[str, np.ndarray]]:
    cores = []
    for folder in sorted((data / "brats2015_subset").glob("brats_*")):
        labels = np.asarray(read_labels(folder / "OTMultiClass.nii.gz").array)
        cores.append((folder.name, np.isin(labels, CORE_LABELS)))
    return cores


def crude_brain(image: np.ndarray, spacing: Sequence[float], erode_mm: float = 12.0) -> np.ndarray:
    """A rough intracranial mask of a scan whose skull is not stripped: per slice, the head (above 10 % of the 99th
    percentile, holes filled) eroded by ``erode_mm`` in plane (removes scalp and skull, not exactly)."""
    threshold = 0.1 * float(np.percentile(image, 99))
    iterations = max(1, int(round(erode_mm / float(spacing[1]))))
    out = np.zeros(image.shape, bool)
    for z in range(image.shape[0]):
        head = ndimage.binary_fill_holes(ndimage.binary_opening(image[z] > threshold, iterations=2))
        out[z] = ndimage.binary_erosion(head, iterations=iterations)
    return out


# ---- methods ---------------------------------------------------------------------------------------------------
def method_key(method: str, steps: int) -> str:
    return f"previous ({steps} steps)" if method == "previous" else method


def run_method(method: str, voided: Volume, mask: np.ndarray, model: str, steps: int = 20) -> np.ndarray:
    """One removal edit on the voided scan; returns the result array (scan units and dtype)."""
    if method == "previous":
        from napari_medgen.pipelines.tumor_synthesis import remove

        labels = voided.as_labels(mask.astype(np.uint8))
        return np.asarray(remove(voided, labels, model=BRIDGE, steps=int(steps), margin_mm=0.0, seed=0).image.array)
    from napari_medgen.pipelines.tumour_removal import inpaint

    if method == "model v1":
        return np.asarray(inpaint(voided, mask, method="model", model=V1_MODEL).image.array)
    return np.asarray(inpaint(voided, mask, method=method, model=model).image.array)


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = call()
    return out, time.perf_counter() - t0


def evaluate(dataset: str, sequence: str, convention: str, case: str, index: int, donor: str, truth_volume: Volume,
             mask: np.ndarray, methods: Sequence[tuple[str, int]], model: str, records: list[dict],
             keep: dict | None = None) -> None:
    """Every method on the voided scan of one mask, scored; appends one record per method (``keep``: fills kept
    for a montage)."""
    global CROP_CHECK
    truth = np.asarray(truth_volume.array)
    voided_arr = np.where(mask, 0, truth).astype(truth.dtype)
    voided = truth_volume.with_array(voided_arr)
    cm3 = float(mask.sum() * np.prod(truth_volume.spacing_zyx) / 1000)
    line = []
    for method, steps in methods:
        key = method_key(method, steps)
        record = {"dataset": dataset, "sequence": sequence, "convention": convention, "case": case, "mask": index,
                  "donor": donor, "mask_cm3": cm3, "method": key}
        try:
            fill, seconds = timed(lambda m=method, s=steps: run_method(m, voided, mask, model, s))
        except Exception as error:  # a method that refuses this scan (e.g. the bridge on 6.5 mm slices)
            record.update({"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
            records.append(record)
            line.append(f"{key}: refused")
            continue
        scores = challenge_scores(fill, truth, voided_arr, mask)
        record.update({"seconds": seconds, **scores})
        records.append(record)
        if keep is not None:
            keep[key] = fill
        if CROP_CHECK is None:
            CROP_CHECK = {"method": key, "cropped": scores, "full": challenge_scores(fill, truth, voided_arr, mask,
                                                                                     crop=False)}
        line.append(f"{key} {scores['ssim']:.3f}/{scores['psnr']:.1f} dB {seconds:.1f}s")
    print(f"[{dataset} {sequence} {convention}] {case} #{index} ({cm3:.0f} cm3, from {donor}): " + "; ".join(line),
          flush=True)


# ---- aggregation -----------------------------------------------------------------------------------------------
def _stat(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarise(records: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["sequence"], r["convention"], r["method"]), []).append(r)
    rows = []
    for (dataset, sequence, convention, method), sel in groups.items():
        ok = [r for r in sel if "error" not in r]
        row = {"dataset": dataset, "sequence": sequence, "convention": convention, "method": method, "n": len(ok)}
        if not ok:
            row["error"] = sel[0]["error"]
        for k in ("ssim", "psnr", "mse", "seconds"):
            row[k], row[k + "_sd"] = _stat([r[k] for r in ok])
        row["psnr_inf"] = int(sum(not np.isfinite(r["psnr"]) for r in ok))
        rows.append(row)
    return rows


def paired(records: list[dict], challenger: str = "model") -> list[dict]:
    """Per (dataset, sequence, convention): the challenger minus each other method on the same masks (mean
    difference of SSIM and PSNR, and on how many masks the challenger is better)."""
    by_mask: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if "error" not in r:
            key = (r["dataset"], r["sequence"], r["convention"], r["case"], r["mask"])
            by_mask.setdefault(key, {})[r["method"]] = r
    out: dict[tuple, dict[str, list]] = {}
    for key, methods in by_mask.items():
        if challenger not in methods:
            continue
        for other, r in methods.items():
            if other == challenger:
                continue
            entry = out.setdefault((*key[:3], other), {"ssim": [], "psnr": []})
            for k in ("ssim", "psnr"):
                entry[k].append(methods[challenger][k] - r[k])
    rows = []
    for (dataset, sequence, convention, other), d in out.items():
        ds, dp = np.asarray(d["ssim"]), np.asarray(d["psnr"])
        finite = np.isfinite(dp)
        rows.append({"dataset": dataset, "sequence": sequence, "convention": convention, "versus": other,
                     "n": int(ds.size), "d_ssim": float(ds.mean()), "ssim_wins": int((ds > 0).sum()),
                     "d_psnr": float(dp[finite].mean()) if finite.any() else float("nan"),
                     "psnr_wins": int((dp > 0).sum())})
    return rows


# ---- montages --------------------------------------------------------------------------------------------------
def _crop_box(mask2d: np.ndarray, margin: int = 18, minimum: int = 56) -> tuple[slice, slice]:
    rows, cols = np.nonzero(mask2d)
    centre = [(rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2]
    half = max(minimum, rows.max() - rows.min() + 1 + 2 * margin, cols.max() - cols.min() + 1 + 2 * margin) // 2
    out = []
    for c, n in zip(centre, mask2d.shape, strict=True):
        lo = int(round(c)) - half
        lo = min(max(lo, 0), max(n - 2 * half, 0))
        out.append(slice(lo, min(lo + 2 * half, n)))
    return out[0], out[1]


def montage_rows(title: str, truth: np.ndarray, voided: np.ndarray, mask: np.ndarray, brain: np.ndarray,
                 fills: dict[str, np.ndarray], spacing: Sequence[float], tile: int = 150) -> list[tuple[str, Any]]:
    """Axial and coronal crops around the mask's centroid, one window (1-99 % of the truth's brain) for the row;
    the mask outline is drawn on the truth panel only."""
    from PIL import Image

    c = [int(round(v)) for v in np.argwhere(mask).mean(axis=0)]
    lo, hi = np.percentile(truth[brain].astype(np.float64), [1, 99])
    columns = {"truth": truth, "voided": voided, **fills}
    rows = []
    for view in ("axial", "coronal"):
        if view == "axial":
            def cut(a: np.ndarray) -> np.ndarray:
                return a[c[0]]
            aspect = float(spacing[1]) / float(spacing[2])
        else:
            def cut(a: np.ndarray) -> np.ndarray:
                return a[:, c[1], :][::-1]
            aspect = float(spacing[0]) / float(spacing[2])
        m2 = cut(mask)
        box = _crop_box(m2)
        outline = m2 & ~ndimage.binary_erosion(m2)
        panels = []
        for name in MONTAGE_COLUMNS:
            if name not in columns:
                panels.append(Image.new("RGB", (tile, tile), (40, 0, 0)))
                continue
            sl = cut(columns[name]).astype(np.float64)[box]
            g = (np.clip((sl - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
            rgb = np.stack([g, g, g], axis=-1)
            if name == "truth":
                rgb[outline[box]] = (255, 40, 40)
            h, w = g.shape
            scale = tile / max(h * aspect, w)
            img = Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * aspect * scale))),
                                              Image.Resampling.NEAREST)
            canvas = Image.new("RGB", (tile, tile))
            canvas.paste(img, ((tile - img.width) // 2, (tile - img.height) // 2))
            panels.append(canvas)
        rows.append((f"{title} {view} (z={c[0]}, y={c[1]}), window {lo:.3g}..{hi:.3g}", panels))
    return rows


def save_montage(path: Path, rows: list[tuple[str, Any]], tile: int = 150) -> None:
    from PIL import Image, ImageDraw

    header, gap = 14, 3
    width = len(MONTAGE_COLUMNS) * (tile + gap)
    canvas = Image.new("RGB", (width, header + len(rows) * (tile + header)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, t in enumerate(MONTAGE_COLUMNS):
        draw.text((i * (tile + gap) + 4, 1), t, fill=(255, 255, 255))
    y = header
    for label, panels in rows:
        draw.text((4, y), label, fill=(255, 255, 0))
        for i, p in enumerate(panels):
            canvas.paste(p, (i * (tile + gap), y + header - 2))
        y += tile + header
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)


# ---- synthesis section hook ----------------------------------------------------------------------------------
def synthesis_section(run: bool = False) -> tuple[str, dict | None]:
    """The glioma-appearance results of ``benchmarks/tumour_appearance.py`` (radiomics envelope of the real tumour
    cores, nearest-real-tumour check). With ``run`` that script is executed first (its ``main()`` parses its own
    command line, so it runs as a subprocess); then ``benchmarks/results/tumour_appearance.{json,md}`` are read when
    present. Returns (markdown with headings demoted under this section, results or None)."""
    import subprocess

    script = ROOT / "benchmarks" / "tumour_appearance.py"
    if run and script.is_file():
        subprocess.run([sys.executable, str(script)], check=True, cwd=ROOT)
    path, md_path = RESULTS / "tumour_appearance.json", RESULTS / "tumour_appearance.md"
    lines = ["### Synthesis: glioma appearance", ""]
    if not path.is_file():
        lines.append("Not measured: `benchmarks/tumour_appearance.py` (radiomics envelope of real tumour cores, "
                     "nearest-real-tumour distance) has no results yet (`benchmarks/results/tumour_appearance.json` "
                     "absent); run it, or this benchmark with `--run-appearance`.")
        return "\n".join(lines) + "\n", None
    result = json.loads(path.read_text(encoding="utf-8"))
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
    lines.append(f"From `benchmarks/tumour_appearance.py` (results of {when}"
                 + (", re-run by this benchmark" if run else ", not re-run by this benchmark")
                 + "); montage `benchmarks/results/tumour_appearance.png`.")
    lines.append("")
    if md_path.is_file():
        for line in md_path.read_text(encoding="utf-8").strip().splitlines():
            lines.append("###" + line if line.startswith("#") else line)  # '#' -> '####': below this section
    else:
        rows = result.get("summary") or result.get("rows") or []
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            keys = list(rows[0])
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            for r in rows:
                lines.append("| " + " | ".join(_cell(r.get(k)) for k in keys) + " |")
        else:
            lines.append("(results present but in no tabular form known here; see the JSON)")
    return "\n".join(lines) + "\n", result


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


# ---- markdown --------------------------------------------------------------------------------------------------
def _pm(mean: float, sd: float, digits: int) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def quality_table(rows: list[dict], dataset: str) -> list[str]:
    sel = [r for r in rows if r["dataset"] == dataset]
    lines = ["| sequence | intensities | method | n | SSIM | PSNR (dB) | MSE | s / edit |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sel:
        if r.get("error") and not r["n"]:
            lines.append(f"| {r['sequence']} | {r['convention']} | {r['method']} | 0 | refused: "
                         f"{r['error'].split('. ')[0]} | | | |")
            continue
        best = max((x["ssim"] for x in sel if (x["sequence"], x["convention"]) == (r["sequence"], r["convention"])
                    and x["n"]), default=None)
        ssim = _pm(r["ssim"], r["ssim_sd"], 3)
        if best is not None and r["ssim"] == best:
            ssim = f"**{ssim}**"
        psnr = _pm(r["psnr"], r["psnr_sd"], 2) + (f" ({r['psnr_inf']} inf)" if r["psnr_inf"] else "")
        lines.append(f"| {r['sequence']} | {r['convention']} | {r['method']} | {r['n']} | {ssim} | {psnr} "
                     f"| {_pm(r['mse'], r['mse_sd'], 4)} | {_pm(r['seconds'], r['seconds_sd'], 1)} |")
    return lines


def best_lines(rows: list[dict], dataset: str) -> list[str]:
    out = []
    groups = dict.fromkeys((r["sequence"], r["convention"]) for r in rows if r["dataset"] == dataset)
    for seq, conv in groups:
        sel = [r for r in rows if (r["dataset"], r["sequence"], r["convention"]) == (dataset, seq, conv) and r["n"]]
        if sel:
            s = max(sel, key=lambda r: r["ssim"])
            p = max(sel, key=lambda r: r["psnr"] if np.isfinite(r["psnr"]) else -1e9)
            out.append(f"{seq} {conv}: SSIM {s['method']} ({s['ssim']:.3f}), PSNR {p['method']} ({p['psnr']:.2f} dB)")
    return out


def render_markdown(result: dict) -> str:
    rows = result["summary"]
    lines = [
        SECTION_TITLE,
        "",
        f"Made by `{result['command']}` on {result['date']} ({result['machine']}; {result['total_seconds'] / 60:.1f} "
        "min). Learned model: " + result["model"]["description"] + ".",
        "",
        "Protocol (BraTS inpainting challenge): each mask is another case's tumour core, flipped / rotated, placed "
        ">= 5 voxels from this case's tumour and >= 75 % inside the brain (seeded); every method gets only the "
        "**voided** scan (mask = 0) and the mask; scores from `inpainting.challenge_metrics_2023.generate_metrics` "
        "(SSIM / PSNR / MSE inside the mask after scaling by the voided scan's 0.5 / 99.5 percentiles, clipped at "
        "0). Mean ± sd over masks; s / edit = wall clock of one `inpaint` / `remove` call on "
        f"{result['torch_threads']} thread(s). *raw-like*: background 0, brain positive, int16 (as BraTS 2023 "
        "scans); *z-scored*: as stored (background = the minimum, so the challenge's clip at 0 flattens everything "
        "darker than the brain mean: harder and noisier, not comparable with the references).",
        "",
        "Published references (BraTS 2023 inpainting **test set**, raw-intensity T1n, other data than here; quoted, "
        "not measured):",
        "",
        "| reference | SSIM | PSNR (dB) | s / volume |",
        "|---|---|---|---|",
    ]
    for name, ssim, psnr, sec in REFERENCES:
        lines.append(f"| {name} | {ssim:.3f} | {psnr:.1f} | {sec if sec is not None else '-'} |")
    lines += ["", "### Held-out BRATS cases (" + ", ".join(result["held_out"]) + "; never trained on)", "",
              "Masks (cm3): " + "; ".join(f"{k}: {v}" for k, v in result["mask_cm3"].items()
                                          if k in result["held_out"]),
              ""]
    lines += quality_table(rows, "BRATS held-out")
    lines += ["", "Best per group (mean over masks): " + "; ".join(best_lines(rows, "BRATS held-out")) + ". "
              "The previous model (bridge-brain-t1c) was trained on T1c only; its FLAIR rows show it applied out of "
              "its domain, as a user could."]
    pr = [p for p in result["paired"] if p["dataset"] == "BRATS held-out"]
    if pr:
        lines += ["", "Model minus each other method on the same masks (mean difference; masks where the model is "
                  "better / n):", "",
                  "| sequence | intensities | versus | ΔSSIM | SSIM wins | ΔPSNR (dB) | PSNR wins |",
                  "|---|---|---|---|---|---|---|"]
        for p in pr:
            lines.append(f"| {p['sequence']} | {p['convention']} | {p['versus']} | {p['d_ssim']:+.3f} | "
                         f"{p['ssim_wins']}/{p['n']} | {p['d_psnr']:+.2f} | {p['psnr_wins']}/{p['n']} |")
    lines += ["", "### Scans the project has never seen", ""]
    for name, note in result["unseen_notes"].items():
        lines.append(f"- **{name}**: {note}")
    lines.append("")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        if dataset == "BRATS held-out":
            continue
        lines += [f"{dataset} (masks, cm3: {result['mask_cm3'].get(dataset, '?')}):", ""]
        lines += quality_table(rows, dataset)
        lines.append("")
    sp = result.get("speed")
    if sp:
        lines += ["### Speed: one edit of a 240x240x155 scan", "",
                  f"{sp['case']} {sp['sequence']} raw-like, a challenge mask of {sp['mask_cm3']:.0f} cm3 (from "
                  f"{sp['donor']}); load average at the start {sp['loadavg']} (a training run shared the machine).",
                  "", "| method | threads | seconds |", "|---|---|---|"]
        for t in sp["timings"]:
            lines.append(f"| {t['method']} | {t['threads']} | {t['seconds']:.1f} |")
        lines.append("")
    lines += [result["synthesis_markdown"].rstrip(), "", "### Montages", ""]
    for m in result["montages"]:
        lines.append(f"- `{m}`")
    lines += ["", "Columns: " + " | ".join(MONTAGE_COLUMNS).replace("truth", "truth (mask outlined in red)")
              .replace("previous", "previous (bridge)") + "; axial and coronal crops around the mask, "
              "nearest-neighbour zoom, one window per row (1-99 % of the truth's brain). A dark-red tile = method "
              "not run on that scan.", ""]
    if result.get("quick"):
        lines.append("**Quick mode** (one case, one mask, T1c only): a smoke test, not a result.")
        lines.append("")
    return "\n".join(lines)


def replace_section(document: str, section: str) -> str:
    """``document`` with the section between the markers replaced (or appended); every other byte unchanged."""
    block = f"{BEGIN_MARKER}\n{section.rstrip()}\n{END_MARKER}\n"
    if BEGIN_MARKER in document and END_MARKER in document:
        head, rest = document.split(BEGIN_MARKER, 1)
        _, tail = rest.split(END_MARKER, 1)
        return head + block + tail.removeprefix("\n")
    match = re.search(rf"^{re.escape(SECTION_TITLE)}\s*$", document, flags=re.MULTILINE)
    if match:
        following = re.search(r"^## ", document[match.end():], flags=re.MULTILINE)
        end = match.end() + following.start() if following else len(document)
        return document[:match.start()] + block + ("\n" if following else "") + document[end:]
    sep = "" if not document or document.endswith("\n\n") else ("\n" if document.endswith("\n") else "\n\n")
    return document + sep + block


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ---- model -------------------------------------------------------------------------------------------------------
def resolve_model(requested: str | None) -> str | None:
    from napari_medgen.hub import resolve_checkpoint

    candidates = [requested] if requested else ["inpainter-brain", str(ROOT / "outputs" / "inpainter-brain" / "model")]
    for c in candidates:
        try:
            return str(resolve_checkpoint(c))
        except Exception:
            continue
    return None


def describe_model(path: str | None, label: str | None) -> dict[str, Any]:
    if path is None:
        return {"path": None, "description": "not run (no checkpoint found)"}
    folder = Path(path)
    config = {}
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    card_steps = None
    if (folder / "README.md").is_file():
        m = re.search(r"\|\s*steps\s*\|\s*([^|]+)\|", (folder / "README.md").read_text(encoding="utf-8"))
        card_steps = m.group(1).strip() if m else None
    rel = os.path.relpath(folder, ROOT) if folder.is_relative_to(ROOT) else str(folder)
    text = f"`{rel}`" + (f" ({label})" if label else "") + (f", {card_steps} training steps" if card_steps else "")
    return {"path": rel, "label": label, "config": config, "training_steps": card_steps, "description": text}


# ---- main --------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--model", default=None, help="Inpainter checkpoint (default: bundled inpainter-brain, "
                        "else outputs/inpainter-brain/model)")
    parser.add_argument("--v1-model", default=str(ROOT / "outputs" / "inpainter-brain" / "model"),
                        help="the first inpainter (no atlas estimate) for the 'model v1' rows; skipped if absent")
    parser.add_argument("--model-label", default=None, help="free text describing the checkpoint (e.g. 'untrained')")
    parser.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS)
    parser.add_argument("--bridge-steps", type=int, nargs="+", default=[20, 50],
                        help="previous model's steps: the first everywhere, the others on T1c raw-like only")
    parser.add_argument("--masks", type=int, default=3, help="masks per held-out case")
    parser.add_argument("--unseen-masks", type=int, default=3, help="masks per unseen scan")
    parser.add_argument("--sequences", nargs="+", default=list(SEQUENCES), choices=list(SEQUENCES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke test: one case, one mask, T1c, < 5 min")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--run-appearance", action="store_true",
                        help="call benchmarks/tumour_appearance.py instead of reading its results JSON")
    parser.add_argument("--docs", action="store_true", help="also replace the section in docs/benchmarks.md")
    parser.add_argument("--prefix", default="tumor_synthesis", help="results file prefix under benchmarks/results")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: re-render the markdown (and --docs) from the existing results JSON")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads((RESULTS / f"{args.prefix}.json").read_text(encoding="utf-8"))
        result["synthesis_markdown"], result["synthesis"] = synthesis_section()
        return publish(result, args.prefix, args.docs)
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    if args.quick:
        args.masks, args.unseen_masks, args.sequences, args.bridge_steps = 1, 1, ["T1c"], args.bridge_steps[:1]
    model = resolve_model(args.model) if "model" in args.methods else None
    methods = [m for m in args.methods if m != "model" or model is not None]
    if "model" in args.methods and model is None:
        print("no Inpainter checkpoint found: the model row is skipped (pass --model FOLDER)", flush=True)
    global V1_MODEL
    V1_MODEL = resolve_model(args.v1_model) if "model v1" in methods and (Path(args.v1_model) / "config.json"
                                                                          ).is_file() else None
    if V1_MODEL is None:
        methods = [m for m in methods if m != "model v1"]
    from napari_medgen.hub import load_cached

    if model is not None:
        load_cached(model, expected_type="inpainter")  # loaded once, outside the timings
    if V1_MODEL is not None:
        load_cached(V1_MODEL, expected_type="inpainter")
    if "previous" in methods:
        load_cached(BRIDGE, expected_type="bridge-unet")
    first = [(m, args.bridge_steps[0]) for m in methods]
    extra = [("previous", s) for s in args.bridge_steps[1:]] if "previous" in methods else []

    data = args.data
    cores = brats_cores(data)
    records: list[dict] = []
    mask_cm3: dict[str, str] = {}
    montage_files: list[str] = []
    held_out = list(HELD_OUT[:1] if args.quick else HELD_OUT)
    speed_candidate = None
    for case_index, name in enumerate(held_out):
        case = load_brats_case(data, name, args.sequences)
        rng = np.random.default_rng([args.seed, case_index])
        donors = [(n, c) for n, c in cores if n != name]
        masks = make_masks(case["brain"], case["labels"] > 0, donors, args.masks, rng)
        mask_cm3[name] = ", ".join(f"{m.sum() / 1000:.0f}" for m, _ in masks)
        rows: list = []
        for seq in args.sequences:
            z_volume = case["images"][seq]
            z = np.asarray(z_volume.array).astype(np.float32)
            conventions = {"raw-like": z_volume.with_array(raw_like(z, case["brain"])),
                           "z-scored": z_volume.with_array(z)}
            for convention, volume in conventions.items():
                for index, (mask, donor) in enumerate(masks):
                    want_montage = convention == "raw-like" and (index < 2 if seq == "T1c" else index < 1)
                    keep: dict | None = {} if want_montage else None
                    todo = first + (extra if (seq, convention) == ("T1c", "raw-like") else [])
                    evaluate("BRATS held-out", seq, convention, name, index, donor, volume, mask, todo, model,
                             records, keep)
                    if keep is not None:
                        truth = np.asarray(volume.array)
                        fills = {("previous" if k.startswith(f"previous ({args.bridge_steps[0]} ") else k): v
                                 for k, v in keep.items()}
                        rows += montage_rows(f"{name} {seq} raw-like mask {index}", truth,
                                             np.where(mask, 0, truth), mask, case["brain"], fills, (1, 1, 1))
        if rows:
            path = RESULTS / f"{args.prefix}_{name.replace('brats_2013_', '').removesuffix('_1')}.png"
            save_montage(path, rows)
            montage_files.append(os.path.relpath(path, ROOT))
        if speed_candidate is None:
            speed_candidate = (case, donors)

    # ---- scans never seen -----------------------------------------------------------------------------------
    unseen_notes: dict[str, str] = {}
    unseen_rows: list = []
    from napari_medgen.sample_data import load_mni152_t1

    mni = load_mni152_t1()
    mni_arr = np.asarray(mni.array)
    mni_brain = ndimage.binary_fill_holes(mni_arr > 0)
    rng = np.random.default_rng([args.seed, 100])
    masks = make_masks(mni_brain, None, cores, args.unseen_masks, rng, mni.spacing_zyx)
    mask_cm3["MNI152 T1"] = ", ".join(f"{m.sum() / 1000:.0f}" for m, _ in masks)
    mni_methods = [(m, s) for m, s in first if m in ("mean", "harmonic", "model v1", "previous")]
    largest = int(np.argmax([m.sum() for m, _ in masks])) if masks else -1
    for index, (mask, donor) in enumerate(masks):
        keep = {} if index == largest else None
        evaluate("MNI152 T1", "T1", "template (uint8)", "MNI152 2009", index, donor, mni, mask, mni_methods, model,
                 records, keep)
        if keep is not None:
            fills = {("previous" if k.startswith("previous") else k): v for k, v in keep.items()}
            unseen_rows += montage_rows(f"MNI152 T1 mask {index}", mni_arr, np.where(mask, 0, mni_arr), mask, mni_brain,
                                        fills, mni.spacing_zyx)
    unseen_notes["MNI152 T1 (nilearn)"] = (
        "healthy 1 mm template, so the whole mask is truth; it is left-right symmetric, so mirror and "
        "mirror-harmonic copy the exact answer (not run, meaningless); it is an average of 152 brains, smoother "
        "than any scan, and uint8: it shows whether a method reproduces smooth anatomy, not scanner texture. It is "
        "also the atlas that atlas-harmonic and the model register to the scan, so they would copy the answer: not "
        "run. model v1's inputs include the mirror-harmonic estimate, which is near-exact on a symmetric template, so "
        "its advantage over harmonic here is partly that symmetry, not learned anatomy.")
    for scan in ("brain1", "brain2"):
        folder = data / "pyradiomics" / "data"
        if not (folder / f"{scan}_image.nrrd").is_file():
            continue
        vol = read_volume(folder / f"{scan}_image.nrrd")
        arr = np.asarray(vol.array)
        lesion = np.asarray(read_labels(folder / f"{scan}_label.nrrd").array) > 0
        brain = crude_brain(arr.astype(np.float32), vol.spacing_zyx)
        rng = np.random.default_rng([args.seed, 200 + int(scan[-1])])
        masks = make_masks(brain, lesion, cores, args.unseen_masks, rng, vol.spacing_zyx)
        mask_cm3[f"pyradiomics {scan}"] = ", ".join(f"{m.sum() * np.prod(vol.spacing_zyx) / 1000:.0f}"
                                                      for m, _ in masks)
        largest = int(np.argmax([m.sum() for m, _ in masks])) if masks else -1
        for index, (mask, donor) in enumerate(masks):
            keep = {} if (scan == "brain1" and index == largest) else None
            evaluate(f"pyradiomics {scan}", "T1c", "raw (int16)", scan, index, donor, vol, mask, first, model,
                     records, keep)
            if keep is not None:
                fills = {("previous" if k.startswith("previous") else k): v for k, v in keep.items()}
                unseen_rows += montage_rows(f"pyradiomics {scan} mask {index}", arr, np.where(mask, 0, arr), mask,
                                            brain, fills, vol.spacing_zyx)
    unseen_notes["pyradiomics brain1 / brain2"] = (
        "real patient T1c (raw int16, 0.78 x 0.78 x 6.5 mm, skull NOT stripped, each with a labelled lesion): masks "
        "are the BRATS cores resampled to this grid, >= 6 mm from the lesion label, >= 75 % inside a crude "
        "intracranial mask (head eroded by 12 mm in plane; the methods themselves only see the voided scan). Shows "
        "behaviour on another scanner / resolution; the challenge's 3D SSIM window spans 11 slices = 71 mm here, so "
        "SSIM is not comparable with 1 mm data. The previous model refuses anything but 1 mm isotropic.")
    unseen_notes["MONAI anatomical.nii"] = ("not used: a 33x41x25 crop at 2 mm (66 x 82 x 50 mm), too small to place "
                                            "a tumour-sized mask >= 75 % in brain with context around it.")
    unseen_notes["MedPy flair.nii.gz"] = ("not used: a single 2D FLAIR slice (181x217x1); every method here is 3D "
                                          "(the challenge protocol too).")
    if unseen_rows:
        path = RESULTS / f"{args.prefix}_unseen.png"
        save_montage(path, unseen_rows)
        montage_files.append(os.path.relpath(path, ROOT))

    # ---- speed ------------------------------------------------------------------------------------------------
    speed = None
    if not args.no_speed and speed_candidate is not None:
        case, donors = speed_candidate
        rng = np.random.default_rng([args.seed, 300])
        big = [(n, c) for n, c in donors if c.sum() >= 55000] or donors
        mask, donor = None, None
        for _ in range(40):
            found = make_masks(case["brain"], case["labels"] > 0, big, 1, rng)
            if found and 60 <= found[0][0].sum() / 1000 <= 100:
                mask, donor = found[0]
                break
        if mask is not None:
            z_volume = case["images"]["T1c"] if "T1c" in case["images"] else next(iter(case["images"].values()))
            volume = z_volume.with_array(raw_like(np.asarray(z_volume.array).astype(np.float32), case["brain"]))
            voided = volume.with_array(np.where(mask, 0, np.asarray(volume.array)).astype(np.int16))
            from napari_medgen.pipelines.tumor_synthesis import DEFAULT_STEPS

            loadavg = " ".join(f"{v:.2f}" for v in os.getloadavg())
            timings = []
            plan = [(m, 1) for m in ("harmonic", "atlas-harmonic", "mirror-harmonic") if m in methods]
            if model is not None:
                plan += [("model", 1), ("model", min(2, os.cpu_count() or 1))]
            if "previous" in methods:
                plan += [("previous", 1), ("previous", min(2, os.cpu_count() or 1))]
            for method, threads in plan:
                torch.set_num_threads(threads)
                _, seconds = timed(lambda m=method: run_method(m, voided, mask, model or "", DEFAULT_STEPS))
                timings.append({"method": method_key(method, DEFAULT_STEPS), "threads": threads, "seconds": seconds})
                print(f"speed: {timings[-1]}", flush=True)
            torch.set_num_threads(1)
            speed = {"case": case["name"], "sequence": "T1c", "mask_cm3": float(mask.sum() / 1000), "donor": donor,
                     "scan_shape_zyx": list(mask.shape), "loadavg": loadavg, "timings": timings}

    synthesis_md, synthesis = synthesis_section(run=args.run_appearance)
    command = shlex.join(["python", "benchmarks/tumor_synthesis.py", *(sys.argv[1:] if argv is None else argv)])
    result = {
        "command": command, "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "torch_threads": 1, "quick": bool(args.quick), "seed": args.seed, "held_out": held_out,
        "training_cases": list(TRAINING), "methods": methods, "bridge_steps": args.bridge_steps,
        "model": describe_model(model, args.model_label), "references": [
            {"name": n, "ssim": s, "psnr": p, "seconds": t} for n, s, p, t in REFERENCES],
        "mask_cm3": mask_cm3, "crop_check": CROP_CHECK, "unseen_notes": unseen_notes,
        "summary": summarise(records), "paired": paired(records), "speed": speed, "montages": montage_files,
        "synthesis": synthesis, "synthesis_markdown": synthesis_md, "records": records,
    }
    result["total_seconds"] = time.perf_counter() - start
    return publish(result, args.prefix, args.docs)


def publish(result: dict, prefix: str, docs: bool) -> dict:
    """Write the results JSON and markdown (and with ``docs`` the section of docs/benchmarks.md)."""
    markdown = render_markdown(result)
    _write(RESULTS / f"{prefix}.json", json.dumps(result, indent=1, default=float) + "\n")
    _write(RESULTS / f"{prefix}.md", markdown + "\n")
    if docs:
        path = ROOT / "docs" / "benchmarks.md"
        _write(path, replace_section(path.read_text(encoding="utf-8") if path.exists() else "", markdown + "\n"))
        print(f"replaced the section of {path}")
    print(markdown)
    print(f"total {result['total_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
