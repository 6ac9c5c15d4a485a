"""Faithfulness of the slice-wise 2D diffusion models and the value of paired synthetic data (issue 6).

    python benchmarks/slice_diffusion.py [--standard-model outputs/seg2img-brain-standard/model]

Seed 002 protocol (Table 1): an auxiliary segmenter trained on *real* slices segments images generated
from *unseen* masks; its Dice against those masks measures how faithfully the generator followed them.
The same segmenter on the real images of those masks is the ceiling. Brain: BRATS FLAIR slices, the
held-out patient of `configs/seg2img_brain_cpu.yaml`; whole-tumour and per-class Dice. Breast
ultrasound: the BUSI test split of `configs/seg2img_busi_cpu.yaml`.

Samplers side by side on the same slices: DPM-Solver++ 20 and 50 steps (SDE form), DDIM 50 (eta 1), DDPM
1000, and the deterministic DDIM 50 / DPM-Solver++ 20 (eta 0) (time per slice and Dice).
Seed 004 protocol (Table 2) at our scale: a segmenter trained on the real BUSI training
images versus real + synthetic pairs from the paired sampler, both scored on the real test images.
All segmenters are the same small MONAI U-Net with the same steps and seed; everything is 64x64.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_medgen.core.progress import run_job  # noqa: E402
from napari_medgen.hub import load_cached  # noqa: E402
from napari_medgen.models.mask_code import encode_mask  # noqa: E402
from napari_medgen.pipelines.diffusion_sampling import sample_mask_guided  # noqa: E402
from napari_medgen.pipelines.paired_generation import generate_pairs  # noqa: E402
from napari_medgen.training.config import load_config  # noqa: E402
from napari_medgen.training.tasks.mask_diffusion import MaskDiffusionTask  # noqa: E402


def split_slices(config: Path, data_root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images in [-1, 1], labels) of one split, exactly as the model's training config made them."""
    cfg = load_config(config, {"data.root": str(data_root / Path(load_config(config).data["root"]).name)})
    slices = MaskDiffusionTask(cfg).slices(split)
    if slices is None:
        raise SystemExit(f"{config}: the {split} split is empty")
    return slices.images, slices.labels


def train_segmenter(images: np.ndarray, labels: np.ndarray, num_classes: int, steps: int, seed: int) -> torch.nn.Module:
    """A small MONAI U-Net (Dice + cross-entropy) on 64x64 slices with random flips."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = UNet(2, 1, num_classes, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1, norm="instance")
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    x_all = torch.from_numpy(images[:, None].astype(np.float32))
    y_all = torch.from_numpy(labels[:, None].astype(np.int64))
    net.train()
    for _ in range(steps):
        idx = rng.integers(0, len(images), 16)
        x, y = x_all[idx], y_all[idx]
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def segment(net: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([net(torch.from_numpy(images[i:i + 32, None].astype(np.float32))).argmax(1)
                          for i in range(0, len(images), 32)]).numpy()


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    denom = int(pred.sum()) + int(truth.sum())
    return float("nan") if denom == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / denom


def scores(pred: np.ndarray, truth: np.ndarray, classes: list[int]) -> dict[str, float]:
    """Dice over the whole set: all foreground together, and per class."""
    out = {"dice_all": dice(pred > 0, truth > 0)}
    for c in classes:
        out[f"dice_class_{c}"] = dice(pred == c, truth == c)
    out["mean_slice_dice_all"] = float(np.nanmean([dice(p > 0, t > 0) for p, t in zip(pred, truth, strict=True)]))
    return out


def generate(model: str, labels: np.ndarray, *, sampler: str, steps: int, seed: int, drop: tuple[int, ...] = (),
             batch: int = 32, eta: float = 1.0) -> tuple[np.ndarray, float]:
    """Images in [-1, 1] for 64x64 label slices; seconds per slice."""
    net = load_cached(model, expected_type="mask-diffusion")
    out = []
    start = time.perf_counter()
    for i in range(0, len(labels), batch):
        lab = torch.from_numpy(labels[i:i + batch].astype(np.int64))
        g = torch.Generator().manual_seed(seed * 1000 + i)
        noise = torch.randn((len(lab), 1, *net.image_size), generator=g)
        job = sample_mask_guided(net, encode_mask(lab, net.class_values, drop), noise, sampler=sampler, steps=steps,
                                 generator=g, eta=eta)
        out.append(run_job(job)[:, 0].numpy())
    return np.concatenate(out), (time.perf_counter() - start) / len(labels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--brain-model", default="seg2img-brain")
    parser.add_argument("--standard-model", default=str(ROOT / "outputs" / "seg2img-brain-standard" / "model"),
                        help="the same model trained without mask ablation (skipped when absent)")
    parser.add_argument("--busi-model", default="seg2img-busi")
    parser.add_argument("--guider", default="busi-paired-guider")
    parser.add_argument("--seg-steps", type=int, default=800, help="training steps of each auxiliary segmenter")
    parser.add_argument("--sampler-slices", type=int, default=12, help="slices of the sampler comparison")
    parser.add_argument("--ddpm-steps", type=int, default=1000, help="steps of the DDPM row (1000 = as trained)")
    parser.add_argument("--pairs", type=int, default=130, help="synthetic BUSI pairs added to the real training set")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "slice_diffusion.json"))
    args = parser.parse_args()
    data = Path(args.data)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result: dict = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, Python "
                               f"{platform.python_version()}"}

    # ---- brain: faithfulness ---------------------------------------------------------------------
    brain_cfg = ROOT / "configs" / "seg2img_brain_cpu.yaml"
    tr_img, tr_lab = split_slices(brain_cfg, data, "train")
    te_img, te_lab = split_slices(brain_cfg, data, "test")
    tumour = te_lab.copy()
    tumour[tumour == 5] = 0
    keep = tumour.reshape(len(tumour), -1).max(1) > 0
    te_img, te_lab, tumour = te_img[keep], te_lab[keep], tumour[keep]
    seg_lab = tr_lab.copy()
    seg_lab[seg_lab == 5] = 0
    t0 = time.perf_counter()
    brain_seg = train_segmenter(tr_img, seg_lab, 5, args.seg_steps, seed=0)
    classes = [1, 2, 3, 4]
    brain: dict = {"test_slices": int(len(te_img)), "segmenter_train_slices": int(len(tr_img)),
                   "segmenter_seconds": time.perf_counter() - t0}
    brain["real images (ceiling)"] = scores(segment(brain_seg, te_img), tumour, classes)
    runs = [("mask-ablated model, all classes constrained", args.brain_model, ()),
            ("mask-ablated model, brain class dropped", args.brain_model, (5,))]
    if Path(args.standard_model).exists():
        runs.insert(1, ("standard model (no ablation)", args.standard_model, ()))
    for name, model, drop in runs:
        images, per_slice = generate(model, te_lab, sampler="dpmpp", steps=20, seed=1, drop=drop)
        brain[name] = {**scores(segment(brain_seg, images), tumour, classes), "seconds_per_slice": per_slice}
        print(name, brain[name], flush=True)
    # samplers side by side on the same slices (largest tumours first, so every class is present)
    order = np.argsort(-(tumour > 0).reshape(len(tumour), -1).sum(1))[: args.sampler_slices]
    samplers = {}
    for sampler, steps, eta in (("dpmpp", 20, 1.0), ("dpmpp", 50, 1.0), ("ddim", 50, 1.0), ("ddim", 50, 0.0),
                                ("dpmpp", 20, 0.0), ("ddpm", args.ddpm_steps, 1.0)):
        images, per_slice = generate(args.brain_model, te_lab[order], sampler=sampler, steps=steps, seed=2, eta=eta)
        name = f"{sampler} {steps}" + (" (deterministic)" if eta == 0 else "")
        samplers[name] = {**scores(segment(brain_seg, images), tumour[order], classes), "seconds_per_slice": per_slice}
        print(name, samplers[name], flush=True)
    samplers["real images (ceiling)"] = scores(segment(brain_seg, te_img[order]), tumour[order], classes)
    brain["samplers"] = {"slices": int(len(order)), **samplers}
    result["brain_flair"] = brain

    # ---- breast ultrasound: faithfulness and paired augmentation -------------------------------------------
    print(f"BUSI part starts at {time.time():.0f}", flush=True)
    busi_cfg = ROOT / "configs" / "seg2img_busi_cpu.yaml"
    b_tr_img, b_tr_lab = split_slices(busi_cfg, data, "train")
    b_te_img, b_te_lab = split_slices(busi_cfg, data, "test")
    busi_seg = train_segmenter(b_tr_img, b_tr_lab, 2, args.seg_steps, seed=0)
    busi: dict = {"test_images": int(len(b_te_img)), "train_images": int(len(b_tr_img))}
    busi["real images (ceiling)"] = scores(segment(busi_seg, b_te_img), b_te_lab, [1])
    images, per_slice = generate(args.busi_model, b_te_lab, sampler="dpmpp", steps=20, seed=1)
    busi["seg2img-busi dpmpp 20"] = {**scores(segment(busi_seg, images), b_te_lab, [1]),
                                     "seconds_per_slice": per_slice}
    t0 = time.perf_counter()
    pairs = generate_pairs(args.pairs, guider=args.guider, image_model=args.busi_model, steps=25, sampler="ddim",
                           seed=0, batch_size=26).pairs
    pair_seconds = (time.perf_counter() - t0) / args.pairs
    syn_img = np.stack([p[0].array[0] * 2.0 - 1.0 for p in pairs]).astype(np.float32)
    syn_lab = np.stack([p[1].array[0] for p in pairs]).astype(np.int64)
    with_lesion = int((syn_lab.reshape(len(syn_lab), -1).max(1) > 0).sum())
    paired = {"synthetic_pairs": args.pairs, "pairs_with_a_lesion": with_lesion,
              "seconds_per_pair (ddim 25, both models)": pair_seconds,
              "synthetic lesion area fraction (mean)": float((syn_lab > 0).mean()),
              "real lesion area fraction (mean)": float((b_tr_lab > 0).mean())}
    for name, (x, y) in {
        "real only": (b_tr_img, b_tr_lab),
        "real + synthetic": (np.concatenate([b_tr_img, syn_img]), np.concatenate([b_tr_lab, syn_lab])),
        "synthetic only": (syn_img, syn_lab),
    }.items():
        scores_seeds = [scores(segment(train_segmenter(x, y, 2, args.seg_steps, seed=s), b_te_img), b_te_lab, [1])
                        for s in (0, 1)]
        paired[name] = {"dice_all (mean of 2 seeds)": float(np.mean([s["dice_all"] for s in scores_seeds])),
                        "per_seed": [s["dice_all"] for s in scores_seeds]}
        print(name, paired[name], flush=True)
    busi["paired augmentation (segmenter trained on ..., tested on real test images)"] = paired
    result["busi"] = busi

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
