"""Training-free tumour composition (issue 17) on 2D brain MRI: BRATS FLAIR slices of the held-out patient.

    python benchmarks/composition_brain.py [--model seg2img-brain]

Backgrounds: tumour-free axial slices of the held-out BRATS patient of `seg2img-brain` (brain covering at least 15 %
of the slice, no tumour label); objects: tumour slices of the same patient (tumour = BRATS classes 1-4), both never
seen by the model. Each volume is percentile-normalised as in training and its slices resized to 64x64; the tumour
goes at scale 1 to a seeded random point inside the background's brain. Object and background come from one scan,
so every method runs with ``same_units=True`` (a hyperintense tumour stays hyperintense). The same methods and
metrics as benchmarks/composition.py; the realism reference is the tumour slices of the four training patients.
Results: benchmarks/results/composition_brain.json, montage docs/images/composition_brain.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from composition import METHODS, frechet, inversion_accuracy, montage, radiomics_rows, side_by_side, splits  # noqa: E402

from napari_medgen.core import io  # noqa: E402
from napari_medgen.core.intensity import normalize_intensity  # noqa: E402
from napari_medgen.core.slices import resize_slices  # noqa: E402
from napari_medgen.pipelines.composition import place_object  # noqa: E402


def patient_slices(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images in [0, 1], tumour masks, brain masks), all (Z, 64, 64)."""
    flair = np.asarray(io.read_volume(next(folder.glob("Flair*.nii.gz"))).array, np.float32)
    labels = np.asarray(io.read_labels(folder / "OTMultiClass.nii.gz").array)
    brain = np.asarray(io.read_labels(folder / "brainmask.nii.gz").array) > 0
    unit = np.clip(normalize_intensity(flair, "percentile"), 0, 1)
    images, tumour = resize_slices(unit, ((labels > 0) & (labels < 5)).astype(np.uint8), (64, 64))
    _, brain_small = resize_slices(None, brain.astype(np.uint8), (64, 64))
    return np.clip(images, 0, 1), tumour > 0, brain_small > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="seg2img-brain")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "brats2015_subset")
    parser.add_argument("--backgrounds", type=int, default=4)
    parser.add_argument("--tumours", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "composition_brain.json")
    args = parser.parse_args()
    import torch
    from scipy import ndimage

    torch.set_num_threads(1)
    split = splits(args.model)
    images, tumour, brain = patient_slices(args.data / split["test"][0])
    free = [k for k in range(len(images)) if brain[k].mean() > 0.15 and not tumour[k].any()]
    with_tumour = [k for k in range(len(images)) if tumour[k].sum() >= 20]
    bgs = [free[i] for i in np.linspace(0, len(free) - 1, args.backgrounds).round().astype(int)]
    objs = [with_tumour[i] for i in np.linspace(0, len(with_tumour) - 1, args.tumours).round().astype(int)]
    rng = np.random.default_rng(17)
    pairs: list[dict[str, Any]] = []
    for b in bgs:
        inside = np.argwhere(ndimage.binary_erosion(brain[b], iterations=6))
        for o in objs:
            y, x = inside[int(rng.integers(len(inside)))]
            pairs.append({"background": f"slice {b}", "tumour": f"slice {o}", "bg": images[b], "obj": images[o],
                          "mask": tumour[o], "at": (float(x), float(y)), "options": {"same_units": True}})
    ref_imgs, ref_masks = [], []
    for case in split["train"]:
        imgs, tum, _ = patient_slices(args.data / case)
        for k in range(len(imgs)):
            if tum[k].sum() >= 20:
                ref_imgs.append(imgs[k])
                ref_masks.append(tum[k])
    reference = radiomics_rows(ref_imgs, ref_masks)
    print(f"{len(pairs)} pairs, {len(ref_imgs)} reference tumour slices", flush=True)
    report: dict[str, Any] = {"model": args.model, "patient": split["test"][0], "backgrounds": bgs, "tumours": objs,
                              "pairs": len(pairs), "reference_tumour_slices": len(ref_imgs)}
    report["fd_radiomics_real_test_tumours"] = frechet(radiomics_rows([images[o] for o in objs],
                                                                      [tumour[o] for o in objs]), reference, reference)
    side = side_by_side(pairs, args.model, reference)
    shown = side.pop("_images")
    report["methods"] = side
    show = list(range(0, len(pairs), max(1, len(pairs) // 5)))[:5]
    sel = [pairs[i] for i in show]
    montage(ROOT / "docs" / "images" / "composition_brain.png", sel,
            [("background", [p["bg"] for p in sel]), ("tumour", [p["obj"] for p in sel]),
             ("outline", [shown["copy-paste"][i] for i in show])]
            + [(m, [shown[m][i] for i in show]) for m in (*METHODS, "ours +mask")],
            outline=[place_object(p["bg"], p["obj"], p["mask"], p["at"]).object_mask for p in sel])
    report["inversion"] = inversion_accuracy([images[k] for k in bgs + objs], [tumour[k] for k in bgs + objs],
                                             args.model)
    args.out.write_text(json.dumps(report, indent=1, default=float))
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
