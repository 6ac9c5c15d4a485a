"""GPU check (issue 12): CUDA-only tests, every pipeline timed on CUDA and on the CPU, agreement and determinism.

    python benchmarks/gpu_check.py --out DIR [--no-docs] [--skip-tests] [--no-large] [--quick]
    python benchmarks/gpu_check.py --out DIR --cpu-only [--quick]    # dry run of the CPU half (no GPU needed)
    python benchmarks/gpu_check.py --out DIR --device mps|cpu        # compare another device with the CPU

Steps (under 8 minutes on one GPU with the bundled weights):

1. ``pytest -k cuda``: every test marked ``cuda`` or named after CUDA (``-k`` matches marker names too); on a
   GPU machine none of the tests marked ``cuda`` may be skipped.
2. Every pipeline on one standard input, same seed, once on the CPU and twice on CUDA: ``generate_shape``
   (shape-gan-lesion), ``generate_from_labels`` (seg2img-brain), ``generate_pairs`` (busi-paired-guider),
   ``synthesize`` + ``remove`` (bridge-brain-t1c) on the 48^3 1 mm phantom (`sample_data.make_phantom`), the
   same two on a 240 x 240 x 155 phantom head if the time budget allows, and radiomics (CPU only, reference).
3. Agreement of the CUDA output with the CPU output (tolerances in `TOLERANCES`, reasons in docs/benchmarks.md,
   "GPU check") and bitwise identity of the two CUDA runs (same seed and device give the same output).
4. A markdown table into docs/benchmarks.md between `START` / `END` and ``DIR/gpu_check.json``.

Without CUDA it prints one line and exits with status 2, writing nothing. ``--cpu-only`` runs the CPU half and
the agreement code on the CPU output against itself (a dry run of this script); it never touches the docs.
Exit status: 0 all checks passed, 1 a test, an agreement or a determinism check failed, 2 no CUDA.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- gpu-check:start -->", "<!-- gpu-check:end -->"
SEED = 0
#: agreement of a CUDA output with the CPU output (see docs/benchmarks.md, "GPU check", for the reasons)
TOLERANCES = {
    "mask_dice": 0.99,  # foreground Dice of each mask, CUDA vs CPU
    "mask_labels": 0.99,  # fraction of the foreground (either side) with the same label value
    "image_p99": 2e-2,  # 99th percentile of |CUDA - CPU| / intensity range of the CPU output
    "image_mean": 5e-3,  # mean |CUDA - CPU| / range
}
LARGE_SHAPE = (155, 240, 240)  # (z, y, x): a BraTS-sized head at 1 mm
SMALL_SHAPE = (48, 48, 48)


# ---- standard inputs -----------------------------------------------------------------------------------------
def phantom(shape: tuple[int, int, int], tumour_radius_mm: float) -> tuple[Any, Any]:
    from napari_medgen.sample_data import make_phantom

    return make_phantom(shape=shape, spacing=(1.0, 1.0, 1.0), seed=SEED, tumour_radius_mm=tumour_radius_mm)


def brats_labels(image: Any, labels: Any) -> Any:
    """seg2img-brain's label convention on the phantom: 5 head tissue, 2 a 3 mm shell around the tumour,
    4 the enhancing rim (phantom label 1), 1 the necrotic core (phantom label 2)."""
    from scipy import ndimage

    arr, lab = np.asarray(image.array), np.asarray(labels.array)
    tumour = lab > 0
    tissue = ndimage.binary_fill_holes(arr > 0.2 * float(arr.max()))
    out = np.where(tissue, 5, 0).astype(np.uint8)
    out[(ndimage.distance_transform_edt(~tumour) <= 3.0) & ~tumour & tissue] = 2
    out[lab == 1] = 4
    out[lab == 2] = 1
    return labels.with_array(out)


def free_centre_mm(volume: Any, tumour: Any, distance_mm: float) -> tuple[float, float, float]:
    """A point ``distance_mm`` from the head's centre along x (left-right), in the hemisphere without the tumour."""
    from napari_medgen.core.geometry import index_to_physical

    centre = np.asarray(index_to_physical(volume, [(s - 1) / 2.0 for s in np.asarray(volume.array).shape]))
    lesion = np.asarray(index_to_physical(tumour, np.argwhere(np.asarray(tumour.array) > 0).mean(axis=0)))
    side = -1.0 if lesion[0] >= centre[0] else 1.0
    return tuple(float(v) for v in centre + np.array([side * distance_mm, 0.0, 0.0]))


# ---- cases ---------------------------------------------------------------------------------------------------
Outputs = dict[str, tuple[str, np.ndarray]]  # name -> ("mask" | "image", array)


@dataclass
class Case:
    name: str
    model: str
    what: str  # the standard input, for the table
    run: Callable[[str], Outputs]
    gpu: bool = True
    large: bool = False


def cases(quick: bool) -> list[Case]:
    from napari_medgen.pipelines import paired_generation, shape_generation, slice_generation
    from napari_medgen.pipelines import tumor_synthesis as ts

    fast: dict[str, Any] = {"steps": 2} if quick else {}
    image, labels = phantom(SMALL_SHAPE, 8.0)
    brats = brats_labels(image, labels)
    shape_request = {"VoxelVolume": 2000.0, "Sphericity": 0.75}

    def shape(device: str) -> Outputs:
        result = shape_generation.generate_shape(
            {"VoxelVolume": 8000.0, "Sphericity": 0.75},
            model="shape-gan-lesion",
            seed=SEED,
            device=device,
            **({"candidates": 1} if quick else {}),
        )
        return {"mask": ("mask", result.mask.array)}

    def seg2img(device: str) -> Outputs:
        result = slice_generation.generate_from_labels(
            brats, model="seg2img-brain", seed=SEED, reference=image, similarity=0.4, device=device, **fast
        )
        return {"image": ("image", result.image.array)}

    def pairs(device: str) -> Outputs:
        result = paired_generation.generate_pairs(
            2 if quick else 8, guider="busi-paired-guider", seed=SEED, device=device, **fast
        )
        return {
            "images": ("image", np.stack([np.asarray(v.array) for v in result.images])),
            "masks": ("mask", np.stack([np.asarray(m.array) for m in result.masks])),
        }

    def edit(inputs: Callable[[], tuple[Any, Any]], request: dict[str, float], distance_mm: float):
        def run(device: str) -> Outputs:
            volume, tumour = inputs()  # built on first use (the large head only when it runs), then cached
            centre = free_centre_mm(volume, tumour, distance_mm)
            synth = ts.synthesize(
                volume,
                center_mm=centre,
                shape_request=request,
                model="bridge-brain-t1c",
                seed=SEED,
                device=device,
                **fast,
            )
            removed = ts.remove(volume, tumour, model="bridge-brain-t1c", seed=SEED, device=device, **fast)
            return {
                "synth_image": ("image", synth.image.array),
                "synth_labels": ("mask", synth.labels.array),
                "removed_image": ("image", removed.image.array),
            }

        return run

    def radiomics(device: str) -> Outputs:
        from napari_medgen.pipelines.radiomics_extraction import extract_features

        features = extract_features(image, labels, label=1).features
        return {"features": ("image", np.array([features[k] for k in sorted(features)], dtype=np.float64))}

    found = [
        Case("generate_shape", "shape-gan-lesion", "8000 mm3, sphericity 0.75, 1 mm", shape),
        Case("generate_from_labels", "seg2img-brain", "48^3 phantom labels, axis 0, similarity 0.4", seg2img),
        Case("generate_pairs", "busi-paired-guider", f"{2 if quick else 8} pairs of 64x64", pairs),
        Case(
            "synthesize + remove",
            "bridge-brain-t1c",
            "48^3 phantom, 2000 mm3 tumour; remove the phantom's",
            edit(lambda: (image, labels), shape_request, 9.0),
        ),
        Case("radiomics", "-", "48^3 phantom, label 1, 7 classes", radiomics, gpu=False),
    ]
    if not quick:
        found.insert(
            4,
            Case(
                "synthesize + remove",
                "bridge-brain-t1c",
                "240x240x155 phantom, 8000 mm3 tumour; remove the phantom's",
                edit(functools.cache(lambda: phantom(LARGE_SHAPE, 18.0)), {"VoxelVolume": 8000.0}, 35.0),
                large=True,
            ),
        )
    return found


# ---- agreement -----------------------------------------------------------------------------------------------
def compare(kind: str, ref: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Agreement numbers of ``other`` (CUDA) with ``ref`` (CPU) and whether they are within `TOLERANCES`."""
    ref, other = np.asarray(ref), np.asarray(other)
    if ref.shape != other.shape:
        return {"ok": False, "why": f"shape {other.shape} vs {ref.shape}"}
    if kind == "mask":
        a, b = ref != 0, other != 0
        total = int(a.sum() + b.sum())
        dice = 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
        either = a | b
        same = 1.0 if not either.any() else float((ref[either] == other[either]).mean())
        ok = dice >= TOLERANCES["mask_dice"] and same >= TOLERANCES["mask_labels"]
        return {"ok": ok, "dice": round(dice, 5), "label_agreement": round(same, 5)}
    ref64, other64 = ref.astype(np.float64), other.astype(np.float64)
    if not np.all(np.isfinite(other64)):
        return {"ok": False, "why": "non-finite values"}
    value_range = float(ref64.max() - ref64.min()) or 1.0
    diff = np.abs(other64 - ref64) / value_range
    p99, mean, worst = float(np.percentile(diff, 99)), float(diff.mean()), float(diff.max())
    ok = p99 <= TOLERANCES["image_p99"] and mean <= TOLERANCES["image_mean"]
    return {"ok": ok, "p99_rel": p99, "mean_rel": mean, "max_rel": worst}


def agreement(ref: Outputs, other: Outputs) -> dict[str, dict[str, Any]]:
    return {name: compare(kind, array, other[name][1]) for name, (kind, array) in ref.items()}


def identical(a: Outputs, b: Outputs) -> bool:
    return all(np.array_equal(np.asarray(a[k][1]), np.asarray(b[k][1])) for k in a)


def summary(checks: dict[str, dict[str, Any]]) -> str:
    parts = []
    for name, c in checks.items():
        if "why" in c:
            parts.append(f"{name}: {c['why']}")
        elif "dice" in c:
            parts.append(f"{name} Dice {c['dice']:.4f}")
        else:
            parts.append(f"{name} p99 {c['p99_rel']:.1e}, max {c['max_rel']:.1e}")
    return ("ok: " if all(c["ok"] for c in checks.values()) else "FAIL: ") + "; ".join(parts)


# ---- running -------------------------------------------------------------------------------------------------
@dataclass
class Timing:
    seconds: float
    outputs: Outputs
    peak_mib: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def timed(case: Case, device: str) -> Timing:
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    outputs = case.run(device)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return Timing(seconds, outputs, peak)


def _junit_key(node_id: str) -> tuple[str, str]:
    """A pytest node id as JUnit names it: ``a/b/test_c.py::Cls::test_d[x]`` -> (``a.b.test_c.Cls``, ``test_d[x]``)."""
    parts = node_id.split("::")
    return ".".join([parts[0].removesuffix(".py").replace("/", "."), *parts[1:-1]]), parts[-1]


def run_cuda_tests(out: Path) -> dict[str, Any]:
    """``pytest -k cuda`` (tests marked ``cuda`` or named after it; ``-k`` matches marker names too), junit XML in
    ``out``; ``marked_skipped`` lists the tests marked ``cuda`` that were skipped (a GPU machine must run them all)."""
    xml = out / "cuda_tests.xml"
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    command = [*base, "-q", "-k", "cuda", f"--junitxml={xml}"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False, timeout=300)
    listed = subprocess.run(
        [*base, "-q", "--collect-only", "-m", "cuda"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    marked = {_junit_key(line.strip()) for line in listed.stdout.splitlines() if "::" in line}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    skipped: list[str] = []
    marked_skipped: list[str] = []
    if xml.is_file():
        root = ET.parse(xml).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        if suite is not None:
            counts = {k: int(suite.get(k, 0)) for k in counts}
            for case in suite.iter("testcase"):
                skip = case.find("skipped")
                if skip is not None:
                    key = (case.get("classname", ""), case.get("name", ""))
                    text = f"{key[0]}::{key[1]}: {skip.get('message', '')}"
                    skipped.append(text)
                    if key in marked:
                        marked_skipped.append(text)
    return {
        "command": " ".join(command[1:]),
        "exit_code": done.returncode,  # 5 = no test selected
        "seconds": round(time.perf_counter() - start, 1),
        **counts,
        "marked_cuda": len(marked),
        "skipped_tests": skipped,
        "marked_skipped": marked_skipped,
        "tail": done.stdout[-1500:],
    }


def check(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from napari_medgen.core.device import describe_device, dtype_policy

    gpu = None if args.cpu_only else args.device
    result: dict[str, Any] = {
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
        "mode": "cpu-only dry run" if args.cpu_only else args.device,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(),
            "gpu": describe_device(torch.device(gpu)) if gpu else None,
            "cuda": torch.version.cuda if gpu and gpu.startswith("cuda") else None,
            "autocast": str(dtype_policy(torch.device(gpu)).autocast_dtype) if gpu else None,
            "tf32_conv": bool(torch.backends.cudnn.allow_tf32),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        },
        "seed": SEED,
        "quick": bool(args.quick),
        "tolerances": TOLERANCES,
    }
    start = time.perf_counter()
    failed = False
    if not args.skip_tests:
        tests = run_cuda_tests(args.out)
        result["cuda_tests"] = tests
        failed |= tests["failures"] + tests["errors"] > 0 or tests["exit_code"] not in (0, 5)
        if gpu and gpu.startswith("cuda"):  # every test marked cuda must really run here
            failed |= tests["marked_cuda"] == 0 or bool(tests["marked_skipped"])
        print(
            f"cuda tests: {tests['tests']} run, {tests['failures']} failed, {tests['errors']} errors, "
            f"{tests['skipped']} skipped ({len(tests['marked_skipped'])} of the {tests['marked_cuda']} marked cuda), "
            f"{tests['seconds']} s",
            flush=True,
        )
    rows = []
    for case in cases(args.quick):
        elapsed = time.perf_counter() - start
        if case.large and (args.no_large or elapsed > args.budget_s / 2):
            reason = "--no-large" if args.no_large else f"{elapsed:.0f} s spent, over half the {args.budget_s} s budget"
            rows.append({"pipeline": case.name, "model": case.model, "input": case.what, "skipped": reason})
            print(f"{case.name} ({case.what}): skipped, {reason}", flush=True)
            continue
        cpu = timed(case, "cpu")
        row: dict[str, Any] = {
            "pipeline": case.name,
            "model": case.model,
            "input": case.what,
            "cpu_s": round(cpu.seconds, 2),
        }
        if case.gpu and gpu:
            first, second = timed(case, gpu), timed(case, gpu)
            checks = agreement(cpu.outputs, second.outputs)
            same = identical(first.outputs, second.outputs)
            row.update(
                {
                    "cuda_first_s": round(first.seconds, 2),
                    "cuda_s": round(second.seconds, 2),
                    "speed_up": round(cpu.seconds / second.seconds, 1),
                    "cuda_peak_mib": None if second.peak_mib is None else round(second.peak_mib),
                    "agreement": checks,
                    "agreement_ok": all(c["ok"] for c in checks.values()),
                    "deterministic": same,
                }
            )
            failed |= not (row["agreement_ok"] and same)
        elif case.gpu:  # dry run: the agreement code on the CPU output against itself
            checks = agreement(cpu.outputs, cpu.outputs)
            row.update({"agreement": checks, "agreement_ok": all(c["ok"] for c in checks.values())})
            failed |= not row["agreement_ok"]
        rows.append(row)
        print(
            f"{case.name} ({case.what}): cpu {row['cpu_s']} s"
            + (f", cuda {row['cuda_s']} s" if "cuda_s" in row else "")
            + (f", {summary(row['agreement'])}" if "agreement" in row else "")
            + (f", deterministic {row['deterministic']}" if "deterministic" in row else ""),
            flush=True,
        )
    result["pipelines"] = rows
    result["seconds_total"] = round(time.perf_counter() - start, 1)
    result["passed"] = not failed
    return result


# ---- reporting -----------------------------------------------------------------------------------------------
def table(result: dict[str, Any]) -> str:
    lines = [
        "| pipeline (model) | input | CPU s | CUDA s | speed-up | agreement (CUDA vs CPU) | deterministic |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["pipelines"]:
        label = f"{r['pipeline']} ({r['model']})" if r["model"] != "-" else f"{r['pipeline']} (CPU only)"
        if "skipped" in r:
            lines.append(f"| {label} | {r['input']} | - | - | - | skipped: {r['skipped']} | - |")
            continue
        cuda = f"{r['cuda_s']} (first {r['cuda_first_s']})" if "cuda_s" in r else "-"
        speed = f"{r['speed_up']}x" if "speed_up" in r else "-"
        agree = summary(r["agreement"]) if "agreement" in r else "-"
        same = ("yes" if r["deterministic"] else "**NO**") if "deterministic" in r else "-"
        lines.append(f"| {label} | {r['input']} | {r['cpu_s']} | {cuda} | {speed} | {agree} | {same} |")
    return "\n".join(lines)


def docs_block(result: dict[str, Any]) -> str:
    m = result["machine"]
    tests = result.get("cuda_tests")
    test_line = (
        f"CUDA tests (`pytest -k cuda`): {tests['tests']} collected, {tests['failures']} failed, "
        f"{tests['errors']} errors, {tests['skipped']} skipped ({len(tests['marked_skipped'])} of the "
        f"{tests['marked_cuda']} marked `cuda`)."
        if tests
        else "CUDA tests: not run."
    )
    return "\n".join(
        [
            START,
            f"`{result['command']}` on {m['gpu']} (CUDA {m['cuda']}, torch {m['torch']}, autocast {m['autocast']}, "
            f"TF32 convolutions {m['tf32_conv']}), CPU side {m['cpu']} with {m['cpu_threads']} torch threads; "
            f"seed {result['seed']}, {result['seconds_total']} s in all. Overall: "
            f"**{'passed' if result['passed'] else 'FAILED'}**.",
            "",
            test_line,
            "",
            table(result),
            "",
            "CUDA s is the second of two runs (weights on the GPU, kernels loaded; the first run in brackets); "
            "CPU s is one run. Raw numbers: the JSON written to `--out`.",
            END,
        ]
    )


def write_docs(block: str) -> None:
    text = DOCS.read_text(encoding="utf-8")
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## GPU check\n\n" + block + "\n"
    tmp = DOCS.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, DOCS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and the test report")
    parser.add_argument("--cpu-only", action="store_true", help="dry run without a GPU: CPU half + agreement code")
    parser.add_argument(
        "--device",
        default="cuda",
        help="the device compared with the CPU (default cuda; cuda:N, mps; cpu checks this script)",
    )
    parser.add_argument("--quick", action="store_true", help="2 sampling steps, 1 shape candidate, no large head")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the CUDA tests")
    parser.add_argument("--no-large", action="store_true", help="skip the 240x240x155 head")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone (print the table)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="the large head runs only while under half of this has been spent (default 420)",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    if not args.cpu_only and args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device (torch.cuda.is_available() is False); run it on a CUDA machine, "
            "or add --cpu-only for a dry run of the CPU half.",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    result = check(args)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    print(table(result))
    if not (args.cpu_only or args.no_docs or not args.device.startswith("cuda")):  # the docs hold CUDA runs only
        write_docs(docs_block(result))
        print(f"wrote {DOCS.relative_to(ROOT)} (section GPU check)")
    print(f"wrote {args.out / 'gpu_check.json'}; {'passed' if result['passed'] else 'FAILED'}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
