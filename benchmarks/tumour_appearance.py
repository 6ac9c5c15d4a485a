"""Glioma-like synthesis in T1c by the classical sub-region appearance model (issue 13): radiomics envelope,
nearest-real-tumour check and a montage.

Usage: OMP_NUM_THREADS=1 python benchmarks/tumour_appearance.py [--data ../shared/data/brats2015_subset]

Protocol. The default appearance is fitted (`fit_appearance`) on the training cases pat0002, pat0003, pat0005 (T1c,
brain-normalised). For each held-out case (pat0001, pat0004) the case's own label map is the shape; the labelled
region is first filled by `harmonic_fill(..., brain_aware=True)` (nothing of the real tumour survives), then painted
with (i) the default appearance, (ii) the appearance `measure`d from each other real tumour (reference), (iii) one
flat value (the fitted mean, the old "uniform blob"). Radiomics (`extract_features`, binWidth 0.025 on the
brain-normalised image) of the core (labels 1 + 4) and each sub-region are compared with the [min, max] of the 5 real
tumours; reference-textured cores are ranked by z-scored feature distance against the 5 real cores.
Outputs: benchmarks/results/tumour_appearance.{md,json}, tumour_appearance_model.json, tumour_appearance.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_medgen.core.inpainting import default_brain_mask, harmonic_fill  # noqa: E402
from napari_medgen.core.io import read_labels, read_volume  # noqa: E402
from napari_medgen.core.volume import LabelMap, Volume  # noqa: E402
from napari_medgen.models import tumour_appearance as ta  # noqa: E402
from napari_medgen.models.inpainter import brain_range  # noqa: E402
from napari_medgen.radiomics import extract_features  # noqa: E402

TRAIN = ("pat0002", "pat0003", "pat0005")
HELD_OUT = ("pat0001", "pat0004")
ALL = ("pat0001", "pat0002", "pat0003", "pat0004", "pat0005")
MONTAGE_REFERENCE = "pat0005"
SETTINGS = {"binWidth": 0.025}
FEATURES = ("firstorder_10Percentile", "firstorder_90Percentile", "firstorder_InterquartileRange",
            "firstorder_Entropy", "firstorder_Skewness", "firstorder_Kurtosis", "glcm_Contrast", "glcm_Correlation",
            "glcm_Idm", "glcm_JointEntropy")
REGIONS = {"core": (1, 4), "necrosis": (1,), "edema": (2,), "enhancing": (4,)}
SPACING = (1.0, 1.0, 1.0)
SEED = 0
MONTAGE_MM = 130
OUT = ROOT / "benchmarks" / "results"


def load(data: Path, case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(brain-normalised T1c, labels, brain mask) of one case."""
    folder = data / f"brats_2013_{case}_1"
    img = np.asarray(read_volume(folder / "T1c_subtrMeanDivStd.nii.gz").array, dtype=np.float32)
    lab = np.asarray(read_labels(folder / "OTMultiClass.nii.gz").array).astype(np.uint8)
    region = lab > 0
    brain = default_brain_mask(img, region)
    low, high = brain_range(img, region, brain)
    return ((img - low) / (high - low)).astype(np.float32), lab, brain


def features(norm: np.ndarray, lab: np.ndarray) -> dict[str, dict[str, float]]:
    """The 10 benchmark features of the core and each sub-region."""
    out = {}
    for name, labels in REGIONS.items():
        mask = np.isin(lab, labels).astype(np.uint8)
        if mask.sum() < 10:
            out[name] = {f: float("nan") for f in FEATURES}
            continue
        vals = extract_features(Volume(norm), LabelMap(mask), 1, settings=SETTINGS,
                                feature_classes=["firstorder", "glcm"])
        out[name] = {f: float(vals[f"original_{f}"]) for f in FEATURES}
    return out


def flat_value(model: dict[str, Any]) -> float:
    """The old baseline's single value: the voxel-weighted fitted mean of the tumour labels."""
    entries = model["labels"].values()
    return float(sum(e["mean"] * e["voxels"] for e in entries) / sum(e["voxels"] for e in entries))


def inside(value: float, lo: float, hi: float) -> bool:
    return bool(np.isfinite(value) and lo <= value <= hi)


def montage(path: Path, rows: list[tuple[str, list[tuple[str, np.ndarray, np.ndarray]], tuple[float, float]]]
            ) -> None:
    """Axial + coronal slices through each tumour's centre (MONTAGE_MM crop, 2x), one window per case row."""
    from PIL import Image, ImageDraw

    half = MONTAGE_MM // 2
    tiles = []
    for case, columns, (lo, hi) in rows:
        for view in ("axial", "coronal"):
            row = []
            for title, img, lab in columns:
                core = np.isin(lab, (1, 4))
                z, y, x = (int(v) for v in np.argwhere(core).mean(axis=0))
                pad = np.pad(img, half, mode="constant", constant_values=float(img.min()))
                z, y, x = z + half, y + half, x + half
                if view == "axial":
                    sl = pad[z, y - half:y + half, x - half:x + half]
                else:
                    sl = pad[z - half:z + half, y, x - half:x + half][::-1]
                g = np.clip((sl - lo) / (hi - lo), 0, 1)
                tile = Image.fromarray((g * 255).astype(np.uint8)).convert("RGB")
                tile = tile.resize((tile.width * 2, tile.height * 2), Image.BILINEAR)
                ImageDraw.Draw(tile).text((3, 2), f"{case} {view} | {title}", fill=(255, 255, 0))
                row.append(tile)
            tiles.append(row)
    w = max(sum(t.width for t in r) for r in tiles)
    h = sum(max(t.height for t in r) for r in tiles)
    canvas = Image.new("RGB", (w, h))
    yy = 0
    for r in tiles:
        xx = 0
        for t in r:
            canvas.paste(t, (xx, yy))
            xx += t.width
        yy += max(t.height for t in r)
    canvas.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "brats2015_subset")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    cases = {c: load(args.data, c) for c in ALL}
    t0 = time.perf_counter()
    model = ta.fit_appearance([(cases[c][0], cases[c][1], SPACING) for c in TRAIN])
    fit_s = time.perf_counter() - t0
    (OUT / "tumour_appearance_model.json").write_text(json.dumps(model, indent=1))
    real = {c: features(cases[c][0], cases[c][1]) for c in ALL}
    envelope = {r: {f: (min(real[c][r][f] for c in ALL), max(real[c][r][f] for c in ALL)) for f in FEATURES}
                for r in REGIONS}
    core_mat = np.array([[real[c]["core"][f] for f in FEATURES] for c in ALL])
    mu, sd = core_mat.mean(axis=0), core_mat.std(axis=0) + 1e-12
    refs = {c: ta.measure(cases[c][0], cases[c][1], SPACING) for c in ALL}
    results: dict[str, Any] = {"settings": SETTINGS, "train": TRAIN, "held_out": HELD_OUT, "fit_s": fit_s,
                               "real": real, "envelope": envelope, "synthetic": {}, "nearest": []}
    montage_rows = []
    for case in HELD_OUT:
        norm, lab, brain = cases[case]
        region = lab > 0
        filled = harmonic_fill(norm, region, spacing_zyx=SPACING, brain=brain, brain_aware=True).astype(np.float32)
        variants: dict[str, np.ndarray] = {}
        t0 = time.perf_counter()
        variants["default"] = ta.paint(filled, lab, model, SPACING, np.random.default_rng(SEED))
        paint_s = time.perf_counter() - t0
        variants["default rel"] = ta.paint(filled, lab, model, SPACING, np.random.default_rng(SEED),
                                           relative_to_brain=True)
        for ref in ALL:
            if ref != case:
                for rel in (False, True):
                    variants[f"ref {ref}" + (" rel" if rel else "")] = ta.paint(
                        filled, lab, refs[ref], SPACING, np.random.default_rng(SEED), relative_to_brain=rel)
        flat = filled.copy()
        flat[region] = flat_value(model)
        variants["flat"] = flat
        for name, img in variants.items():
            feats = features(img, lab)
            results["synthetic"][f"{case} {name}"] = {"features": feats, "inside": {
                r: {f: inside(feats[r][f], *envelope[r][f]) for f in FEATURES} for r in REGIONS}}
            if name.startswith("ref "):
                ref = name.split(" ")[1]
                vec = (np.array([feats["core"][f] for f in FEATURES]) - mu) / sd
                dist = {c: float(np.linalg.norm(vec - (core_mat[i] - mu) / sd)) for i, c in enumerate(ALL)}
                order = sorted(dist, key=dist.get)
                results["nearest"].append({"case": case, "reference": ref, "variant": name, "distances": dist,
                                           "nearest": order[0], "reference_rank": order.index(ref) + 1})
        results["synthetic"][f"{case} default"]["paint_s"] = paint_s
        window = (0.0, float(np.percentile(norm[brain], 99.8)))
        montage_rows.append((case, [("real", norm, lab), ("default", variants["default"], lab),
                                    ("default rel", variants["default rel"], lab),
                                    (f"ref {MONTAGE_REFERENCE} rel", variants[f"ref {MONTAGE_REFERENCE} rel"], lab),
                                    ("flat", flat, lab),
                                    (f"real {MONTAGE_REFERENCE}", cases[MONTAGE_REFERENCE][0],
                                     cases[MONTAGE_REFERENCE][1])], window))
    (OUT / "tumour_appearance.json").write_text(json.dumps(results, indent=1))
    montage(OUT / "tumour_appearance.png", montage_rows)
    write_markdown(results)


def write_markdown(results: dict[str, Any]) -> None:
    env = results["envelope"]
    lines = ["# Tumour appearance model (issue 13): synthetic tumours vs the 5 real BRATS 2013 tumours (T1c)", "",
             f"Fitted on {', '.join(results['train'])}; shapes = held-out cases' own label maps over a brain-aware "
             "harmonic fill; features on the brain-normalised image, binWidth 0.025. Cell = value, `*` = outside "
             "the [min, max] of the 5 real tumours for that region.", ""]
    for region in REGIONS:
        lines += [f"## {region} (labels {'+'.join(map(str, REGIONS[region]))})", "",
                  "| variant | " + " | ".join(FEATURES) + " | inside |",
                  "|---" * (len(FEATURES) + 2) + "|",
                  "| real min..max | " + " | ".join(f"{env[region][f][0]:.3g}..{env[region][f][1]:.3g}"
                                                     for f in FEATURES) + " | |"]
        for name, res in results["synthetic"].items():
            feats, ok = res["features"][region], res["inside"][region]
            cells = [f"{feats[f]:.3g}" + ("" if ok[f] else "*") for f in FEATURES]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(ok.values())}/{len(FEATURES)} |")
        lines.append("")
    lines += ["## Reference texture: is the synthetic core nearest its reference? (z-scored distance, 10 features)",
              "", "| held-out shape | variant | rank of reference (1 = nearest) | nearest real core |",
              "|---|---|---|---|"]
    for n in results["nearest"]:
        lines.append(f"| {n['case']} | {n['variant']} | {n['reference_rank']} / 5 | {n['nearest']} |")
    for rel in ("", " rel"):
        sel = [n for n in results["nearest"] if n["variant"].endswith("rel") == bool(rel)]
        hits = sum(n["reference_rank"] == 1 for n in sel)
        lines += ["", f"ref{rel}: reference nearest in {hits}/{len(sel)} trials."]
    lines.append("")
    summary = {}
    for name, res in results["synthetic"].items():
        parts = name.split(" ")[1:]
        kind = " ".join(p for p in parts if not p.startswith("pat"))
        tot = summary.setdefault(kind, [0, 0])
        for region in REGIONS:
            tot[0] += sum(res["inside"][region].values())
            tot[1] += len(FEATURES)
    lines += ["## Inside the real envelope, all regions and features", "", "| variant | inside |", "|---|---|"]
    lines += [f"| {k} | {v[0]}/{v[1]} ({100 * v[0] / v[1]:.0f} %) |" for k, v in summary.items()]
    (OUT / "tumour_appearance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
