"""Attention-map lesion-mask pairs with layout guidance (issue 18; thesis DiDGen, seed 001, ch. 4).

    python benchmarks/attention_pairs.py [--model outputs/token-diffusion-ph2/model] [--n 64]

Thesis Table 4.7 protocol at our scale, on the token-conditioned PH2 model: >= 50 generations, each
conditioned on a layout mask taken from the model's *held-out* PH2 test split (flipped / rotated to get
enough distinct layouts), with and without layout guidance (L_CA + L_SA, eta 20, first 50 % of 50 DDIM
steps). From the same generations the mask is read out three ways: A_C only, A_CS matrix power and A_CS
element-wise (tau = 4), plus "auto" (A_CS only when self-attention is local). Reported per setting:

* IoU(extracted mask, layout)              -- does the attention mask follow the layout (thesis 0.67 +- 0.21)
* IoU(extracted mask, auxiliary segmenter) -- does the mask match the lesion actually drawn in the image
* IoU(auxiliary segmenter, layout)         -- does the *image* follow the layout
* share of the <lesion> attention inside the layout (final step)
* layout diversity: mean pairwise 1 - IoU among the extracted masks (thesis uses LPIPS among masks)

The auxiliary segmenter is the project's MONAI `Segmenter` trained here on the PH2 training split of the
same model (64x64 RGB), scored on the real test images for reference. Everything is 64x64 and CPU-sized.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_medgen.hub import load_cached  # noqa: E402
from napari_medgen.models.attention_masks import extract_mask, mask_iou  # noqa: E402
from napari_medgen.models.segmenter import Segmenter  # noqa: E402
from napari_medgen.pipelines.lesion_pairs import generate_lesion_pairs  # noqa: E402
from napari_medgen.training.lesion_token_dataset import find_cases, load_case  # noqa: E402

READOUTS = ("none", "matrix", "elementwise", "auto")


def split_arrays(model: object, data_root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, H, W) in [-1, 1], masks (N, H, W)) of one split of the model's own case lists."""
    extra = model.hub_extra
    wanted = set(extra["splits"][split])
    cases = [c for c in find_cases(data_root / "ph2", extra.get("layout", "ph2")) if c.case_id in wanted]
    loaded = [load_case(c, model.image_size, 3) for c in cases]
    return np.stack([i for i, _ in loaded]), np.stack([m for _, m in loaded])


def train_segmenter(images: np.ndarray, masks: np.ndarray, steps: int, seed: int) -> Segmenter:
    """A small MONAI U-Net (Dice + CE) on RGB images in [-1, 1], flips as augmentation."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = Segmenter(spatial_dims=2, in_channels=3, num_classes=2, channels=(16, 32, 64), strides=(2, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    x_all, y_all = torch.from_numpy(images).float(), torch.from_numpy(masks).long()
    net.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(x_all), 16))
        x, y = x_all[idx], y_all[idx]
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if rng.random() < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        logits = net(x)
        prob = logits.softmax(1)[:, 1]
        dice = 1 - (2 * (prob * y).sum((1, 2)) + 1) / (prob.sum((1, 2)) + y.sum((1, 2)) + 1)
        loss = F.cross_entropy(logits, y) + dice.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def segment(net: Segmenter, images: np.ndarray) -> np.ndarray:
    """Binary lesion masks of (N, 3, H, W) images in [-1, 1]."""
    with torch.no_grad():
        return net(torch.from_numpy(images).float()).argmax(1).numpy().astype(np.uint8)


def layouts_from(masks: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` layouts: the test masks, then their flips and rotations (distinct layouts, none from training)."""
    variants = [lambda m: m, np.fliplr, np.flipud, lambda m: np.rot90(m, 1), lambda m: np.rot90(m, 3)]
    out = []
    for v in variants:
        for m in masks:
            mm = np.ascontiguousarray(v(m)).astype(np.uint8)
            if 0 < mm.sum() < mm.size:
                out.append(mm)
            if len(out) == n:
                return out
    return out


def diversity(masks: list[np.ndarray]) -> float:
    """Mean pairwise 1 - IoU among masks."""
    vals = [1 - mask_iou(masks[i], masks[j]) for i in range(len(masks)) for j in range(i + 1, len(masks))]
    return float(np.mean(vals)) if vals else float("nan")


def stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(a.mean()), 4), "std": round(float(a.std()), 4), "median": round(float(np.median(a)), 4)}


def montage(path: Path, rows: list[tuple[str, list]], count: int = 6) -> None:
    """One row per setting; per pair the plain image, then the same image with the layout outline (green) and the
    extracted-mask outline (red), each 3x enlarged."""
    from PIL import Image
    from scipy import ndimage

    tiles = []
    for _, pairs in rows:
        row = []
        for p in pairs[:count]:
            rgb = (np.clip(p.image, 0, 1) * 255).astype(np.uint8).copy()
            plain = np.kron(rgb, np.ones((3, 3, 1), np.uint8))
            big = plain.copy()
            for mask, colour in ((p.layout, (0, 255, 0)), (p.mask, (255, 0, 0))):
                if mask is None:
                    continue
                m = np.kron(mask, np.ones((3, 3), np.uint8)) > 0
                edge = m & ~ndimage.binary_erosion(m)
                big[edge] = colour
            row.append(np.pad(np.concatenate([plain, big], axis=1), ((3, 3), (3, 3), (0, 0)), constant_values=255))
        tiles.append(np.concatenate(row, axis=1))
    Image.fromarray(np.concatenate(tiles, axis=0)).save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--model", default="token-diffusion-ph2")
    parser.add_argument("--n", type=int, default=64, help="generations per setting (>= 50)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seg-steps", type=int, default=600)
    parser.add_argument("--downstream", action="store_true",
                        help="also train segmenters on real vs real + generated (guided, auto read-out) pairs, 2 seeds")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attention_pairs.json"))
    parser.add_argument("--images", default=str(ROOT / "docs" / "images"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = Path(args.data)
    model = load_cached(args.model, expected_type="token-diffusion", device="cpu")
    t0 = time.time()
    train_x, train_y = split_arrays(model, data, "train")
    test_x, test_y = split_arrays(model, data, "test")
    seg = train_segmenter(train_x, train_y, args.seg_steps, seed=0)
    real_iou = [mask_iou(p, t) for p, t in zip(segment(seg, test_x), test_y, strict=True)]
    seg_time = time.time() - t0
    layouts = layouts_from(test_y, args.n)
    results: dict[str, object] = {
        "model": str(args.model), "n": len(layouts), "steps": args.steps, "image_size": list(model.image_size),
        "segmenter": {"train_images": len(train_x), "steps": args.seg_steps, "test_iou_real": stats(real_iou),
                      "seconds": round(seg_time, 1)},
        "layout_diversity": round(diversity(layouts), 4), "settings": {},
        "machine": f"{platform.processor() or platform.machine()}, torch threads 1",
    }
    rows = []
    for guided in (True, False):
        start = time.time()
        res = generate_lesion_pairs(len(layouts), layouts=layouts, model=model, guidance=guided, steps=args.steps,
                                    seed=0, batch_size=8, keep_maps=True)
        seconds = time.time() - start
        images = np.stack([p.image.transpose(2, 0, 1) * 2 - 1 for p in res.pairs]).astype(np.float32)
        predicted = segment(seg, images)
        name = "guided" if guided else "unguided"
        rows.append((name, res.pairs))
        block: dict[str, object] = {
            "seconds": round(seconds, 1),
            "segmenter_vs_layout": stats([mask_iou(s, p.layout) for s, p in zip(predicted, res.pairs, strict=True)]),
            "attention_mass_in_layout": stats([p.mass_in_layout for p in res.pairs]),
            "locality": stats([p.locality for p in res.pairs]),
            "segmenter_mask_diversity": round(diversity(list(predicted)), 4),
        }
        for readout in READOUTS:
            masks = [extract_mask(torch.from_numpy(p.cross_map), torch.from_numpy(p.self_attention),
                                  model.image_size, refine=readout).mask for p in res.pairs]
            block[f"readout_{readout}"] = {
                "vs_layout": stats([mask_iou(m, p.layout) for m, p in zip(masks, res.pairs, strict=True)]),
                "vs_segmenter": stats([mask_iou(m, s) for m, s in zip(masks, predicted, strict=True)]),
                "diversity": round(diversity(masks), 4),
                "mean_area": round(float(np.mean([m.mean() for m in masks])), 4),
            }
        results["settings"][name] = block
        print(name, json.dumps(block), flush=True)
    if args.downstream:
        guided = rows[0][1]
        gen_x = np.stack([p.image.transpose(2, 0, 1) * 2 - 1 for p in guided]).astype(np.float32)
        gen_y = np.stack([p.mask for p in guided]).astype(np.uint8)
        down: dict[str, list[float]] = {"real": [], "real+generated": []}
        for seed in (0, 1):
            for name, (x, y) in {"real": (train_x, train_y),
                                 "real+generated": (np.concatenate([train_x, gen_x]),
                                                    np.concatenate([train_y, gen_y]))}.items():
                net = train_segmenter(x, y, args.seg_steps, seed=seed + 10)
                down[name].append(float(np.mean([mask_iou(a, b) for a, b in
                                                 zip(segment(net, test_x), test_y, strict=True)])))
        results["downstream"] = {k: {"per_seed": [round(v, 4) for v in vals], "mean": round(float(np.mean(vals)), 4),
                                     "spread": round(float(np.ptp(vals)), 4)} for k, vals in down.items()}
        results["downstream"]["generated_pairs"] = len(guided)
        print("downstream", json.dumps(results["downstream"]), flush=True)
    images_dir = Path(args.images)
    images_dir.mkdir(parents=True, exist_ok=True)
    montage(images_dir / "attention_pairs_montage.png", rows)
    results["montage"] = "docs/images/attention_pairs_montage.png (rows: guided, unguided; green = layout, "
    results["montage"] += "red = extracted mask)"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
