"""Downstream use of composition (issue 17, seed 000's purpose): does a segmenter gain from composited tumours?

    python benchmarks/composition_downstream.py [--n 60] [--seg-steps 600]

A small MONAI U-Net (the auxiliary segmenter of benchmarks/slice_diffusion.py) is trained on the real BUSI training
images (with their lesion masks; normal images as negatives) and on real + N composites, each with two seeds, and
scored on the real test-split tumour images (Dice pooled over the set, and mean per image). Composites put training-
split tumours into training-split normal backgrounds at a seeded random place (so nothing of the test split is
seen), with seed 000's method ("ours") and with copy-paste as the naive control. Everything is 64x64.
Results: benchmarks/results/composition_downstream.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from composition import load_case, splits  # noqa: E402
from slice_diffusion import dice, segment, train_segmenter  # noqa: E402

from napari_medgen.pipelines.composition import compose  # noqa: E402


def composites(root: Path, train: list[str], n: int, method: str, model: str) -> tuple[np.ndarray, np.ndarray]:
    normals = [load_case(root, c)[0] for c in train if c.startswith("normal/")]
    tumours = [load_case(root, c) for c in train if not c.startswith("normal/")]
    tumours = [t for t in tumours if t[1].sum() >= 4]
    rng = np.random.default_rng(2017)
    images, masks = [], []
    for i in range(n):
        bg = normals[i % len(normals)]
        obj, mask = tumours[int(rng.integers(len(tumours)))]
        at = (float(rng.uniform(20, 44)), float(rng.uniform(20, 40)))
        r = compose(bg, obj, mask, at=at, method=method, model=model, seed=i, restore_background=False, device="cpu")
        images.append(np.clip(r.image, 0, 1))
        masks.append(r.mask > 0)
    return np.stack(images), np.stack(masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="seg2img-busi-ablation")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "busi")
    parser.add_argument("--n", type=int, default=60, help="composites added to the real training set")
    parser.add_argument("--seg-steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "composition_downstream.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    split = splits(args.model)
    # tumour cases whose mask is not on the image grid (benign (4)) would be false negatives: left out
    real = [(i, m) for c in split["train"] for i, m in [load_case(args.data, c)] if c.startswith("normal/") or m.any()]
    x_real = np.stack([i for i, _ in real]) * 2 - 1
    y_real = np.stack([m for _, m in real]).astype(np.int64)
    test = [(i, m) for c in split["test"] if not c.startswith("normal/") for i, m in [load_case(args.data, c)]
            if m.any()]
    x_test = np.stack([i for i, _ in test]) * 2 - 1
    y_test = np.stack([m for _, m in test])
    report: dict = {"model": args.model, "real_train": len(real), "test_tumours": len(test), "composites": args.n,
                    "seg_steps": args.seg_steps, "seeds": args.seeds, "runs": {}}
    sets = {"real": (x_real, y_real)}
    for method in ("ours", "copy-paste"):
        start = time.perf_counter()
        xi, yi = composites(args.data, split["train"], args.n, method, args.model)
        report[f"seconds_composites_{method}"] = time.perf_counter() - start
        sets[f"real + {method} composites"] = (np.concatenate([x_real, xi * 2 - 1]),
                                               np.concatenate([y_real, yi.astype(np.int64)]))
    for name, (x, y) in sets.items():
        runs = []
        for seed in args.seeds:
            pred = segment(train_segmenter(x.astype(np.float32), y, 2, args.seg_steps, seed=seed),
                           x_test.astype(np.float32)) > 0
            runs.append({"seed": seed, "dice_pooled": dice(pred, y_test),
                         "dice_mean_per_image": float(np.nanmean([dice(p, t) for p, t in zip(pred, y_test,
                                                                                             strict=True)]))})
            print(name, runs[-1], flush=True)
        pooled = [r["dice_pooled"] for r in runs]
        report["runs"][name] = {"per_seed": runs, "dice_pooled_mean": float(np.mean(pooled)),
                                "dice_pooled_spread": float(np.max(pooled) - np.min(pooled))}
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
