"""How well does the shape generator meet requested shape features? (issue 4 acceptance check)

    python benchmarks/shape_gan.py [--model shape-gan-lesion] [--candidates 16 1] [--no-match-axes-comparison]
                                   [--grid-limit N] [--out benchmarks/results/shape_gan.json]

Everything runs once per ``--candidates`` value (best-of-N selection in `generate_shape`, with its default
principal-axis matching); the first value is the headline result, the others are stored under ``comparison``
(e.g. ``candidates=1``, a single draw). ``--no-match-axes-comparison`` adds a run with the headline candidate
count and ``match_axes=False`` (stored as ``comparison["candidates=N, match_axes=False"]``). ``--grid-limit``
keeps only the first N grid requests (a quick smoke run, not a result).

1. A grid of requests (volume x sphericity, volume x elongation, volume x flatness, maximum diameter alone)
   is generated with `generate_shape` at 1 mm and re-measured with our radiomics engine; Pearson and
   Spearman correlation between requested and measured values per feature, and the median relative
   volume error (with the default volume matching and, for honesty, of the raw model output).
2. Requests drawn from an unseen real tumour: the model's held-out case (`HELDOUT`: KiTS19 case 4 for the
   lesion model, BRATS pat0005 for the brats model; not in the training bank) is augmented exactly like
   the training data (rotation, scale, deformation) and the features of each variant are requested (volume,
   sphericity, elongation, flatness, maximum diameter together; the tumour core for the brats model).
3. Diversity: mean pairwise Dice between masks of different seeds at equal requested features
   (masks are centred on their centroids, so this measures shape, not position, differences). Each seed
   draws its own set of candidates, so selection can make seeds agree more, which this measures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_medgen.errors import MedGenError  # noqa: E402
from napari_medgen.pipelines.shape_generation import DEFAULT_CANDIDATES, generate_shape  # noqa: E402
from napari_medgen.training.tasks.shape_gan import (  # noqa: E402
    ShapeGanDataConfig,
    _augment,
    _read_tumours,
    shape_features_of,
)

FEATURES = ("VoxelVolume", "MeshVolume", "Sphericity", "Elongation", "Flatness", "Maximum3DDiameter")
VOLUMES = (1000.0, 2500.0, 5000.0, 10000.0, 20000.0)


def grid_requests() -> list[dict[str, float]]:
    requests: list[dict[str, float]] = []
    for volume in VOLUMES:
        requests += [{"VoxelVolume": volume, "Sphericity": s} for s in (0.55, 0.62, 0.69, 0.76)]
        requests += [{"VoxelVolume": volume, "Elongation": e} for e in (0.4, 0.55, 0.7, 0.85)]
        requests += [{"VoxelVolume": volume, "Flatness": f} for f in (0.3, 0.42, 0.54, 0.66)]
    requests += [{"Maximum3DDiameter": d} for d in (16.0, 22.0, 28.0, 34.0, 40.0, 46.0, 52.0)]
    requests += [{"MeshVolume": v} for v in (1500.0, 4000.0, 8000.0, 15000.0)]
    return requests


#: per region preset of the model: the held-out tumour (file under the data root, its tumour labels, a title)
HELDOUT = {
    "lesion": ("kits19_labels_only/case_00004_segmentation.nii.gz", [2], "held-out KiTS19 tumour (case 4)"),
    "brats": ("brats2015_subset/brats_2013_pat0005_1/OTMultiClass.nii.gz", [1, 3, 4],
              "held-out BRATS tumour core (pat0005)"),
}


def model_data(model: str) -> tuple[str, float]:
    """The model's region preset ('lesion', 'brats'; it picks the held-out tumour) and base grid spacing."""
    from napari_medgen.hub import read_checkpoint_config

    extra = read_checkpoint_config(model).get("extra", {})
    return str(extra.get("region_preset", "lesion")), float(extra.get("base_spacing_mm", 2.0))


def heldout_requests(data_root: Path, count: int, preset: str = "lesion",
                     base_spacing_mm: float = 2.0) -> list[dict[str, float]]:
    """Features of augmented variants of the model's held-out tumour (never in its training bank), augmented
    on the model's own field of view."""
    path, labels, _ = HELDOUT[preset]
    data = ShapeGanDataConfig(
        sources=[{"glob": str(data_root / path), "labels": labels}], regions=preset,
        max_components_per_file=1, min_volume_mm3=150.0, base_spacing_mm=base_spacing_mm,
    )
    tumour = _read_tumours(data, [(data.sources[0]["glob"], labels)])[0]
    rng = np.random.default_rng(2024)
    out: list[dict[str, float]] = []
    while len(out) < count:
        sample = _augment(tumour, data, rng)
        if sample is None:
            continue
        feats = shape_features_of(sample[-1], (1.0, 1.0, 1.0))
        out.append({k: float(feats[k]) for k in ("VoxelVolume", "Sphericity", "Elongation", "Flatness",
                                                   "Maximum3DDiameter")})
    return out


def measure(request: dict[str, float], model: str, seed: int, candidates: int,
            match_axes: bool = True) -> dict[str, float] | None:
    """Measured features of the generated mask; None when the model failed (an empty mask), which is counted."""
    try:
        labels = generate_shape(request, seed=seed, model=model, candidates=candidates, match_axes=match_axes).mask
    except MedGenError:
        return None
    feats = shape_features_of(labels.array > 0, labels.spacing)
    out = {k: float(feats[k]) for k in FEATURES}
    out["raw_model_volume"] = float(labels.metadata["model_volume_mm3"])
    out["chosen_candidate"] = float(labels.metadata["chosen_candidate"])
    out["axis_clipped"] = float(labels.metadata["axis_clipped"])
    return out


def correlations(rows: list[tuple[dict[str, float], dict[str, float]]]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for name in FEATURES:
        pairs = [(req[name], got[name]) for req, got in rows if name in req]
        if len(pairs) < 3:
            continue
        a, b = np.asarray(pairs).T
        table[name] = {
            "n": len(pairs),
            "pearson": float(stats.pearsonr(a, b)[0]),
            "spearman": float(stats.spearmanr(a, b)[0]),
            "median_rel_error": float(np.median(np.abs(b - a) / np.abs(a))),
        }
    return table


def volume_errors(rows: list[tuple[dict[str, float], dict[str, float]]]) -> dict[str, float]:
    matched, raw = [], []
    for req, got in rows:
        target = req.get("VoxelVolume", req.get("MeshVolume"))
        if target is None:
            continue
        key = "VoxelVolume" if "VoxelVolume" in req else "MeshVolume"
        matched.append(abs(got[key] - target) / target)
        raw.append(abs(got["raw_model_volume"] - target) / target)
    return {"median_rel_volume_error": float(np.median(matched)),
            "median_rel_volume_error_raw_model": float(np.median(raw)), "n": len(matched)}


def _centred_pad(arrays: list[np.ndarray]) -> list[np.ndarray]:
    shape = np.max([a.shape for a in arrays], axis=0)
    out = []
    for a in arrays:
        pad = [((s - n) // 2, s - n - (s - n) // 2) for s, n in zip(shape, a.shape, strict=True)]
        out.append(np.pad(a, pad))
    return out


def diversity(model: str, seeds: int, candidates: int, match_axes: bool = True) -> dict[str, float]:
    scores = []
    for request in ({"VoxelVolume": 3000.0}, {"VoxelVolume": 8000.0, "Sphericity": 0.7},
                    {"VoxelVolume": 15000.0, "Elongation": 0.6}, {"VoxelVolume": 5000.0, "Flatness": 0.45}):
        made = []
        for s in range(seeds):
            try:
                made.append(generate_shape(request, seed=s, model=model, candidates=candidates,
                                           match_axes=match_axes).mask.array > 0)
            except MedGenError:
                continue
        masks = _centred_pad(made) if made else []
        for a, b in combinations(masks, 2):
            scores.append(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))
    if not scores:
        return {"mean_pairwise_dice": float("nan"), "max_pairwise_dice": float("nan"), "pairs": 0}
    return {"mean_pairwise_dice": float(np.mean(scores)), "max_pairwise_dice": float(np.max(scores)),
            "pairs": len(scores)}


def chosen_summary(rows: list[tuple[dict[str, float], dict[str, float]]]) -> dict[str, float]:
    """How often the first draw was kept (it is the ``candidates=1`` mask), the mean chosen index and how often
    the principal-axis stretch hit its limit (the requested elongation / flatness was then met less well)."""
    chosen = np.asarray([got["chosen_candidate"] for _, got in rows])
    clipped = np.asarray([got["axis_clipped"] for _, got in rows])
    return {"first_draw_kept": float(np.mean(chosen == 0)), "mean_chosen_index": float(np.mean(chosen)),
            "axis_stretch_clipped": float(np.mean(clipped))}


def run(model: str, candidates: int, data_root: Path, heldout: int, seeds: int, match_axes: bool = True,
        grid_limit: int | None = None) -> dict:
    """All three checks with ``candidates`` noise vectors per mask."""
    start = time.perf_counter()
    grid = grid_requests()[:grid_limit]
    grid_all = [(req, measure(req, model, seed=i, candidates=candidates, match_axes=match_axes))
                for i, req in enumerate(grid)]
    t_grid = time.perf_counter() - start
    grid_rows = [(req, got) for req, got in grid_all if got is not None]
    held_rows: list = []
    held_failed = 0
    preset, base_spacing = model_data(model)
    if heldout > 0 and (data_root / HELDOUT[preset][0]).is_file():
        held_all = [(req, measure(req, model, seed=i, candidates=candidates, match_axes=match_axes))
                    for i, req in enumerate(heldout_requests(data_root, heldout, preset, base_spacing))]
        held_rows = [(req, got) for req, got in held_all if got is not None]
        held_failed = len(held_all) - len(held_rows)
    div = diversity(model, seeds, candidates, match_axes)
    return {
        "candidates": candidates,
        "match_axes": match_axes,
        "masks_generated": len(grid_all) + len(held_rows) + held_failed + 4 * seeds,
        "seconds_per_mask_grid": t_grid / len(grid_all),
        "grid": {"requests": len(grid_all), "failed (empty mask)": len(grid_all) - len(grid_rows),
                 "features": correlations(grid_rows), **volume_errors(grid_rows),
                 "selection": chosen_summary(grid_rows)},
        "heldout_tumour": HELDOUT[preset][2],
        "heldout": (
            {"requests": len(held_rows) + held_failed, "failed (empty mask)": held_failed,
             "features": correlations(held_rows), **volume_errors(held_rows),
             "selection": chosen_summary(held_rows)}
            if held_rows else None
        ),
        "diversity": div,
    }


def report(result: dict) -> None:
    print(f"\n===== candidates = {result['candidates']}, match_axes = {result['match_axes']} =====")
    for title, block in (("grid", result["grid"]), (result["heldout_tumour"], result["heldout"])):
        if not block:
            continue
        print(f"\n{title}: {block['requests']} requests ({block['failed (empty mask)']} failed: empty mask)")
        print(f"{'feature':<20} {'n':>4} {'pearson':>8} {'spearman':>9} {'med.rel.err':>12}")
        for name, row in block["features"].items():
            print(f"{name:<20} {row['n']:>4} {row['pearson']:>8.3f} {row['spearman']:>9.3f} "
                  f"{row['median_rel_error']:>12.3f}")
        print(f"median relative volume error: {block['median_rel_volume_error']:.3f} "
              f"(raw model, before volume matching: {block['median_rel_volume_error_raw_model']:.3f}); "
              f"first draw kept in {100 * block['selection']['first_draw_kept']:.0f} %, axis stretch clipped in "
              f"{100 * block['selection']['axis_stretch_clipped']:.0f} %")
    div = result["diversity"]
    print(f"\ndiversity: mean pairwise Dice {div['mean_pairwise_dice']:.3f} over {div['pairs']} pairs "
          f"(max {div['max_pairwise_dice']:.3f}); {result['seconds_per_mask_grid']:.2f} s per mask")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shape-gan-lesion")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--heldout", type=int, default=24, help="requests drawn from the held-out tumour")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per request for the diversity check")
    parser.add_argument("--candidates", type=int, nargs="+", default=[DEFAULT_CANDIDATES, 1],
                        help="noise vectors per mask (best of N); the first value is the headline result")
    parser.add_argument("--no-match-axes-comparison", action="store_true",
                        help="add a run with the headline candidate count and match_axes=False")
    parser.add_argument("--grid-limit", type=int, default=None,
                        help="only the first N grid requests (smoke run; the numbers are not a result)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shape_gan.json"))
    args = parser.parse_args()

    settings = [(candidates, True) for candidates in args.candidates]
    if args.no_match_axes_comparison:
        settings.append((args.candidates[0], False))
    runs = []
    for candidates, match_axes in settings:
        runs.append(run(args.model, candidates, Path(args.data), args.heldout, args.seeds, match_axes,
                        args.grid_limit))
        report(runs[-1])
    result = {
        "model": args.model,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        **runs[0],
        "comparison": {f"candidates={r['candidates']}" + ("" if r["match_axes"] else ", match_axes=False"): r
                       for r in runs[1:]},
        "targets": {"pearson": 0.93, "spearman": 0.94, "median_rel_volume_error": 0.10, "mean_pairwise_dice": 0.8},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
