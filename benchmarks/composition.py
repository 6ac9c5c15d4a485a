"""Training-free tumour composition (issue 17, seed 000) on unseen real BUSI pairs, every method side by side.

    python benchmarks/composition.py [--model seg2img-busi-ablation] [--quick]

Pairs: every tumour-free background of the BUSI *test* split (normal/) with every benign/malignant tumour of the test
split (image + mask), at the model's 64x64 (each image percentile-normalised and resized as in training; the model
never saw any of them). Each tumour is placed at scale 1 at a seeded random place in the central part of the
background. Measured per method (all at 64x64, intensities in [0, 1]):

* background fidelity outside the user box: PSNR and SSIM to the input background (seed 000: LPIPS_bg);
* object fidelity inside the tumour mask: SSIM to the placed tumour (seed 000: LPIPS_fg / CLIP_image);
* seam visibility: mean squared gradient on the tumour boundary ring relative to copy-paste (no seed-000 metric);
* realism: Frechet distance between radiomics features (firstorder + GLCM + GLRLM of the tumour and a 3-pixel rim)
  of the composites and of real BUSI tumour images of the training split (seed 000: CLIP_text / visual judgement);
* cost: seconds, network evaluations and peak resident-memory increase per composite (seed 000 quotes TF-ICON's
  ~30 s and 20-25 GB per composite on an A100).

Ablations as seed 000's tables 2 / fig. 9 (T' with tau = min(3, T'); tau at T' = 6), and inversion accuracy:
reconstruction error of DPM-Solver++ vs DDIM inversion at 20 steps, under the content-free (all-unconstrained) mask
condition and under a content condition (the image's own lesion mask; the 'normal prompt' analogue).
Results go to benchmarks/results/composition.json and montages to docs/images/composition_*.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_medgen.core import io  # noqa: E402
from napari_medgen.core.intensity import normalize_intensity  # noqa: E402
from napari_medgen.core.progress import run_job  # noqa: E402
from napari_medgen.core.slices import resize_slices  # noqa: E402
from napari_medgen.pipelines.composition import compose, place_object  # noqa: E402

METHODS = ("copy-paste", "poisson", "sdedit", "blended", "tf-icon", "ours")
SIZE = (64, 64)


# ---- data ---------------------------------------------------------------------------------------------------
def load_case(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(image in [0, 1] at 64x64, lesion mask at 64x64) of one BUSI case ('benign/benign (5)')."""
    folder, stem = (root / name).parent, (root / name).name
    image = np.asarray(io.read_volume(folder / f"{stem}.png").array, np.float32)[0]
    mask = np.zeros(image.shape, bool)
    for path in sorted(folder.glob(f"{stem}_mask*.png")):
        m = np.asarray(io.read_labels(path).array)[0]
        if m.shape == image.shape:
            mask |= m > 0
    unit = np.clip(normalize_intensity(image, "percentile"), 0, 1)
    small, labels = resize_slices(unit[None], mask[None].astype(np.uint8), SIZE)
    return np.clip(small[0], 0, 1), labels[0] > 0


def splits(model: str) -> dict[str, list[str]]:
    from napari_medgen.hub import read_checkpoint_config

    return read_checkpoint_config(model)["extra"]["splits"]


def make_pairs(root: Path, test: list[str], limit: int | None) -> list[dict[str, Any]]:
    backgrounds = [n for n in test if n.startswith("normal/")]
    tumours = [n for n in test if not n.startswith("normal/")]
    rng = np.random.default_rng(17)
    pairs = []
    for b in backgrounds:
        bg, _ = load_case(root, b)
        for t in tumours:
            obj, mask = load_case(root, t)
            if mask.sum() < 4:
                continue
            at = (float(rng.uniform(20, 44)), float(rng.uniform(20, 40)))
            pairs.append({"background": b, "tumour": t, "bg": bg, "obj": obj, "mask": mask, "at": at})
    return pairs[:limit] if limit else pairs


# ---- measuring ----------------------------------------------------------------------------------------------
class PeakMemory:
    """Peak resident-set growth of this process while the block runs (sampled every 2 ms)."""

    def __enter__(self) -> PeakMemory:
        import psutil

        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from skimage.metrics import structural_similarity

    return structural_similarity(a, b, data_range=1.0, win_size=7, full=True)[1]


def metrics(image: np.ndarray, pair: dict[str, Any], placement: Any, copy_paste: np.ndarray | None) -> dict[str, float]:
    from scipy import ndimage

    bg = pair["bg"]
    out_user = ~placement.user_mask
    mse = float(np.mean((image[out_user] - bg[out_user]) ** 2))
    obj_mask = placement.object_mask
    ring = ndimage.binary_dilation(obj_mask) & ~ndimage.binary_erosion(obj_mask)
    gy, gx = np.gradient(image)
    seam = float(np.mean((gy**2 + gx**2)[ring]))
    result = {
        "bg_psnr": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse)),
        "bg_ssim": float(ssim_map(image, bg)[out_user].mean()),
        "obj_ssim": float(ssim_map(image, placement.object_canvas)[obj_mask].mean()),
        "seam_energy": seam,
    }
    if copy_paste is not None:
        cy, cx = np.gradient(copy_paste)
        result["seam_vs_copy_paste"] = seam / max(float(np.mean((cy**2 + cx**2)[ring])), 1e-12)
    return result


FEATURES = ("firstorder", "glcm", "glrlm")


def radiomics_rows(images: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """Radiomics features (0..255 intensities, bin width 16) of each tumour with a 3-pixel rim (the seam region)."""
    import warnings

    from scipy import ndimage

    from napari_medgen.radiomics.extractor import extract_features_batch

    rims = [ndimage.binary_dilation(m, iterations=3) for m in masks]
    crops_i, crops_m = [], []
    for img, m in zip(images, rims, strict=True):
        ys, xs = np.nonzero(m)
        y0, y1, x0, x1 = max(0, ys.min() - 2), min(64, ys.max() + 3), max(0, xs.min() - 2), min(64, xs.max() + 3)
        ci = np.zeros((1, 64, 64), np.float32)
        cm = np.zeros((1, 64, 64), bool)
        ci[0, : y1 - y0, : x1 - x0] = img[y0:y1, x0:x1] * 255
        cm[0, : y1 - y0, : x1 - x0] = m[y0:y1, x0:x1]
        crops_i.append(ci)
        crops_m.append(cm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        feats = extract_features_batch(np.stack(crops_i), np.stack(crops_m), settings={"binWidth": 16, "force2D": True},
                                       feature_classes=FEATURES, workers=1)
    names = sorted(feats)
    return np.stack([feats[n] for n in names], axis=1)


def frechet(a: np.ndarray, b: np.ndarray, reference: np.ndarray) -> float:
    """Frechet distance of two feature sets after z-scoring with the reference's statistics (shrunk covariances:
    few samples, many correlated features)."""
    from scipy import linalg

    keep = np.all(np.isfinite(reference), axis=0) & (np.nanstd(reference, axis=0) > 0)
    mu, sd = np.nanmean(reference[:, keep], axis=0), np.nanstd(reference[:, keep], axis=0)
    za = (a[:, keep] - mu) / sd
    zb = (b[:, keep] - mu) / sd
    za, zb = za[np.all(np.isfinite(za), axis=1)], zb[np.all(np.isfinite(zb), axis=1)]

    def cov(z: np.ndarray) -> np.ndarray:
        c = np.cov(z, rowvar=False)
        return 0.5 * c + 0.5 * np.diag(np.diag(c))

    ca, cb = cov(za), cov(zb)
    root = linalg.sqrtm(ca @ cb).real
    return float(np.sum((za.mean(0) - zb.mean(0)) ** 2) + np.trace(ca + cb - 2 * root))


# ---- running ------------------------------------------------------------------------------------------------
def run(pair: dict[str, Any], method: str, model: str, **settings: Any) -> tuple[np.ndarray, dict[str, float]]:
    settings = {**pair.get("options", {}), **settings}
    with PeakMemory() as mem:
        start = time.perf_counter()
        r = compose(pair["bg"], pair["obj"], pair["mask"], at=pair["at"], method=method, model=model, seed=0,
                    restore_background=False, device="cpu", **settings)
        seconds = time.perf_counter() - start
    return r.image, {"seconds": seconds, "peak_mib": mem.mib}


#: (label, method, settings): the six methods at their defaults plus variants that matter for a fair comparison
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("copy-paste", "copy-paste", {}),
    ("poisson", "poisson", {}),
    ("sdedit", "sdedit", {}),
    ("sdedit s=0.3", "sdedit", {"strength": 0.3}),
    ("blended", "blended", {}),
    ("blended +mask", "blended", {"guide": True}),
    ("tf-icon", "tf-icon", {}),
    ("ours", "ours", {}),
    ("ours from inversion", "ours", {"start_from": "inversion"}),
    ("ours +mask", "ours", {"guide": True}),
)


def side_by_side(pairs: list[dict[str, Any]], model: str, reference_feats: np.ndarray) -> dict[str, Any]:
    from napari_medgen.pipelines.composition_methods import Settings, model_calls

    out: dict[str, Any] = {}
    images: dict[str, list[np.ndarray]] = {label: [] for label, _, _ in VARIANTS}
    masks = [place_object(p["bg"], p["obj"], p["mask"], p["at"]).object_mask for p in pairs]
    for label, method, settings in VARIANTS:
        rows = []
        for i, pair in enumerate(pairs):
            placement = place_object(pair["bg"], pair["obj"], pair["mask"], pair["at"])
            image, cost = run(pair, method, model, **settings)
            images[label].append(image)
            rows.append({**metrics(image, pair, placement, images["copy-paste"][i]), **cost})
        feats = radiomics_rows(images[label], masks)
        strength = settings.get("strength", {"sdedit": 0.5, "blended": 0.8}.get(method, 0.5))
        calls = 0 if method in ("copy-paste", "poisson") else model_calls(
            method, Settings(strength=strength, start_from=settings.get("start_from", "reconstruction")))
        out[label] = summarise(rows) | {"fd_radiomics": frechet(feats, reference_feats, reference_feats),
                                        "network_evaluations": calls, "method": method, "settings": settings}
        print(label, {k: round(v, 4) for k, v in out[label].items() if isinstance(v, float) and
                      not k.endswith("_std")}, flush=True)
    out["_images"] = images
    return out


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys()
    out = {}
    for k in keys:
        vals = np.array([r[k] for r in rows], float)
        vals = vals[np.isfinite(vals)]
        out[k] = float(vals.mean()) if len(vals) else float("inf")
        out[k + "_std"] = float(vals.std()) if len(vals) else 0.0
    out["n"] = len(rows)
    return out


def ablations(pairs: list[dict[str, Any]], model: str, reference_feats: np.ndarray) -> dict[str, Any]:
    configs = [("t_prime", tp, {"t_prime": tp, "tau": min(3, tp)}) for tp in (2, 4, 6, 9, 12, 18)]
    configs += [("tau", ta, {"t_prime": 6, "tau": ta}) for ta in (0, 1, 3, 5, 6)]
    out: dict[str, Any] = {"t_prime": {}, "tau": {}}
    cps = [run(p, "copy-paste", model)[0] for p in pairs]
    for kind, value, settings in configs:
        rows, imgs = [], []
        for pair, cp in zip(pairs, cps, strict=True):
            placement = place_object(pair["bg"], pair["obj"], pair["mask"], pair["at"])
            image, cost = run(pair, "ours", model, **settings)
            imgs.append(image)
            rows.append({**metrics(image, pair, placement, cp), **cost})
        feats = radiomics_rows(imgs, [place_object(p["bg"], p["obj"], p["mask"], p["at"]).object_mask for p in pairs])
        out[kind][str(value)] = summarise(rows) | {"fd_radiomics": frechet(feats, reference_feats, reference_feats)}
        print(kind, value, {k: round(v, 4) for k, v in out[kind][str(value)].items()
                            if isinstance(v, float) and not k.endswith("_std")}, flush=True)
    return out


def inversion_accuracy(images: list[np.ndarray], masks: list[np.ndarray], model: str) -> dict[str, Any]:
    import torch

    from napari_medgen.pipelines.composition_backbones import load_backbone
    from napari_medgen.pipelines.composition_solvers import denoise, invert, make_grid

    bb = load_backbone(model, device="cpu")
    out: dict[str, Any] = {}
    for solver in ("dpmpp", "ddim"):
        for cond in ("content-free", "own lesion mask"):
            errs, psnrs = [], []
            for img, m in zip(images, masks, strict=True):
                x0 = torch.from_numpy(img * 2 - 1)[None, None].float()
                c = bb.content_free(1) if cond == "content-free" else bb.guided(m, None, 1)
                grid = make_grid(bb, solver, 20)
                latents = run_job(invert(bb, grid, x0, c))
                rec = run_job(denoise(bb, grid, latents[-1], c, 20, 0))
                err = float(((rec - x0) / 2).abs().mean())
                mse = float((((rec - x0) / 2) ** 2).mean())
                errs.append(err)
                psnrs.append(10 * np.log10(1 / mse))
            out[f"{solver} / {cond}"] = {"mae": float(np.mean(errs)), "mae_std": float(np.std(errs)),
                                         "psnr": float(np.mean(psnrs)), "n": len(errs)}
            print("inversion", solver, cond, out[f"{solver} / {cond}"], flush=True)
    return out


# ---- montage ------------------------------------------------------------------------------------------------
def montage(path: Path, pairs: list[dict[str, Any]], columns: list[tuple[str, list[np.ndarray]]], zoom: int = 3,
            outline: list[np.ndarray] | None = None) -> Path:
    """Rows = pairs, columns = named image lists; the tumour outline in orange on the copy-paste column only."""
    from PIL import Image, ImageDraw

    h, w = SIZE[0] * zoom, SIZE[1] * zoom
    head = 14
    canvas = Image.new("RGB", (w * len(columns) + 2 * (len(columns) - 1), head + len(pairs) * (h + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, (name, imgs) in enumerate(columns):
        draw.text((c * (w + 2) + 2, 1), name, fill="black")
        for r in range(len(pairs)):
            arr = (np.clip(imgs[r], 0, 1) * 255).astype(np.uint8)
            rgb = np.repeat(np.kron(arr, np.ones((zoom, zoom), np.uint8))[..., None], 3, axis=2)
            if outline is not None and name == "outline":
                from scipy import ndimage

                edge = outline[r] & ~ndimage.binary_erosion(outline[r])
                big = np.kron(edge.astype(np.uint8), np.ones((zoom, zoom), np.uint8)) > 0
                rgb[big] = (230, 159, 0)
            canvas.paste(Image.fromarray(rgb), (c * (w + 2), head + r * (h + 2)))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="seg2img-busi-ablation")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "busi")
    parser.add_argument("--quick", action="store_true", help="4 pairs, 2 ablation pairs: a smoke run")
    parser.add_argument("--ablation-pairs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "composition.json")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ablations", "inversion"])
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    split = splits(args.model)
    pairs = make_pairs(args.data, split["test"], 4 if args.quick else None)
    tumour_train = [n for n in split["train"] if not n.startswith("normal/")]
    ref = [load_case(args.data, n) for n in tumour_train]
    ref = [(i, m) for i, m in ref if m.sum() >= 4]
    reference_feats = radiomics_rows([i for i, _ in ref], [m for _, m in ref])
    print(f"{len(pairs)} pairs, {len(ref)} real reference tumours", flush=True)
    report: dict[str, Any] = {"model": args.model, "pairs": len(pairs), "reference_tumours": len(ref),
                              "backgrounds": sorted({p["background"] for p in pairs}),
                              "tumours": sorted({p["tumour"] for p in pairs}),
                              "machine": f"{platform.processor() or platform.machine()}, torch threads 1",
                              "settings": {"steps": 20, "t_prime": 6, "tau": 3, "solver": "dpmpp",
                                           "restore_background": False}}
    # the real tumours' own rim features against the training reference: the floor of the realism distance
    test_real = [(p["obj"], p["mask"]) for p in pairs if p["background"] == pairs[0]["background"]]
    report["fd_radiomics_real_test_tumours"] = frechet(radiomics_rows([i for i, _ in test_real],
                                                                      [m for _, m in test_real]),
                                                       reference_feats, reference_feats)
    side = side_by_side(pairs, args.model, reference_feats)
    images = side.pop("_images")
    report["methods"] = side
    show = list(range(0, len(pairs), max(1, len(pairs) // 6)))[:6]
    sel = [pairs[i] for i in show]
    montage(ROOT / "docs" / "images" / "composition_methods.png", sel,
            [("background", [p["bg"] for p in sel]), ("tumour", [p["obj"] for p in sel]),
             ("outline", [images["copy-paste"][i] for i in show])]
            + [(m, [images[m][i] for i in show]) for m in (*METHODS, "ours +mask")],
            outline=[place_object(p["bg"], p["obj"], p["mask"], p["at"]).object_mask for p in sel])
    if "ablations" not in args.skip:
        ab_pairs = pairs[:: max(1, len(pairs) // (2 if args.quick else args.ablation_pairs))][
            : 2 if args.quick else args.ablation_pairs]
        report["ablations"] = ablations(ab_pairs, args.model, reference_feats)
        report["ablation_pairs"] = len(ab_pairs)
        sel = ab_pairs[:4]
        cols = [(f"T'={tp}", [run(p, "ours", args.model, t_prime=tp, tau=min(3, tp))[0] for p in sel])
                for tp in (2, 6, 12, 18)]
        cols += [(f"tau={ta}", [run(p, "ours", args.model, t_prime=6, tau=ta)[0] for p in sel]) for ta in (0, 1, 5)]
        montage(ROOT / "docs" / "images" / "composition_ablations.png", sel,
                [("background", [p["bg"] for p in sel]), ("tumour", [p["obj"] for p in sel]), *cols])
    if "inversion" not in args.skip:
        cases = [load_case(args.data, n) for n in split["test"]][: 4 if args.quick else None]
        report["inversion"] = inversion_accuracy([c[0] for c in cases], [c[1] for c in cases], args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=float))
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
