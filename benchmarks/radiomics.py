"""Time napari_medgen.radiomics against pyradiomics, print a table, write JSON and docs/benchmarks.md "Radiomics".

Usage: python benchmarks/radiomics.py [--data ../shared/data] [--crops 256] [--ref-crops 32] [--repeats 3]
pyradiomics on the batch is timed on ``--ref-crops`` crops and scaled per crop (it is a plain loop, so its
time is linear in the number of crops); the table says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

CLASSES = ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
ROOT = Path(__file__).resolve().parents[1]
# This file is called radiomics.py: drop its own folder from the import path so `import radiomics` finds the
# pyradiomics package, and make the project importable when run from a checkout.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))


def _best(fn, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _pyrad_extractor(settings: dict):  # noqa: ANN202
    import radiomics
    from radiomics import featureextractor

    radiomics.setVerbosity(logging.ERROR)
    ext = featureextractor.RadiomicsFeatureExtractor(**settings)
    ext.disableAllFeatures()
    for cls in CLASSES:
        ext.enableFeatureClassByName(cls)
    return ext


def bench_lung2(data: Path, repeats: int) -> dict:
    import SimpleITK as sitk

    from napari_medgen.core.volume import LabelMap, Volume
    from napari_medgen.radiomics import extract_features

    root = data / "pyradiomics" / "data"
    im = sitk.ReadImage(str(root / "lung2_image.nrrd"))
    lb = sitk.ReadImage(str(root / "lung2_label.nrrd"))
    geo = {"spacing": im.GetSpacing(), "origin": im.GetOrigin(), "direction": im.GetDirection()}
    image, labels = Volume(sitk.GetArrayFromImage(im), **geo), LabelMap(sitk.GetArrayFromImage(lb), **geo)
    settings = {"binWidth": 25, "label": 1}
    ext = _pyrad_extractor(settings)
    n_feats = len(extract_features(image, labels, settings=settings))
    ours = _best(lambda: extract_features(image, labels, settings=settings), repeats)
    ref = _best(lambda: ext.execute(im, lb), repeats)
    return {"case": "lung2 (default settings, 7 classes)", "features": n_feats, "ours_s": ours,
            "pyradiomics_s": ref, "speedup": ref / ours}


def _crops(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:size, :size, :size].astype(np.float32) - size / 2
    images = np.empty((n, size, size, size), np.float32)
    masks = np.empty((n, size, size, size), bool)
    for k in range(n):
        a, b, c = rng.uniform(5, 13, 3)
        blob = (zz / a) ** 2 + (yy / b) ** 2 + (xx / c) ** 2
        noise = rng.normal(0, 0.15, blob.shape)
        masks[k] = blob + noise < 1
        images[k] = np.round(rng.normal(60, 25, blob.shape) + 40 * np.exp(-blob))
    return images, masks


def bench_batch(n: int, n_ref: int, repeats: int) -> dict:
    import SimpleITK as sitk

    from napari_medgen.radiomics import extract_features_batch

    images, masks = _crops(n)
    spacing = (1.0, 1.0, 1.0)
    settings = {"binWidth": 10}
    ours = _best(lambda: extract_features_batch(images, masks, spacing, settings), max(1, repeats - 2))
    ext = _pyrad_extractor(settings)

    def loop() -> None:
        for k in range(n_ref):
            ext.execute(sitk.GetImageFromArray(images[k]), sitk.GetImageFromArray(masks[k].astype(np.uint8)))

    ref_part = _best(loop, 1)
    ref = ref_part * n / n_ref
    return {"case": f"batch of {n} crops 32^3 (7 classes)", "ours_s": ours, "pyradiomics_s": ref,
            "pyradiomics_measured_crops": n_ref, "pyradiomics_measured_s": ref_part, "speedup": ref / ours}


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _update_doc(doc: Path, section: str) -> None:
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    start = text.find("## Radiomics")
    if start >= 0:
        end = text.find("\n## ", start + 3)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    _write_atomic(doc, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--crops", type=int, default=256)
    parser.add_argument("--ref-crops", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "radiomics.json")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)
    rows = [bench_lung2(args.data, args.repeats), bench_batch(args.crops, args.ref_crops, args.repeats)]
    header = f"| {'case':45s} | ours (s) | pyradiomics (s) | speed-up |"
    lines = [header, "|" + "---|" * 4]
    for r in rows:
        lines.append(f"| {r['case']:45s} | {r['ours_s']:.3f} | {r['pyradiomics_s']:.3f} | {r['speedup']:.1f}x |")
    table = "\n".join(lines)
    print(table)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    result = {"machine": machine, "rows": rows}
    _write_atomic(args.json, json.dumps(result, indent=2))
    section = (
        "## Radiomics\n\n"
        f"`python benchmarks/radiomics.py` on {machine} (best of {args.repeats} runs; CPU only, numpy).\n"
        "Same settings on both sides; pyradiomics is `pyradiomics-bhklab` with its C extensions.\n\n"
        f"{table}\n\n"
        f"pyradiomics on the batch was timed on {rows[1]['pyradiomics_measured_crops']} crops "
        f"({rows[1]['pyradiomics_measured_s']:.2f} s) and scaled linearly to {args.crops} (it is a per-crop loop).\n"
    )
    _update_doc(args.doc, section)


if __name__ == "__main__":
    main()
