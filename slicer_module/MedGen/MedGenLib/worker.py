"""The MedGen backend process: ``python worker.py SPEC.json`` runs one napari-medgen pipeline job.

Slicer starts this script with its Python launcher (``PythonSlicer``) so that a long job never blocks the GUI. The
spec (written by `operations.prepare`) names the operation, the input files (NRRD written from the scene), the
options and the device. While the job runs, every `ProgressEvent` is printed as one ``MEDGEN-PROGRESS`` line
(`napari_medgen.core.progress.format_progress_line`); at the end ``result.json`` says what was written or what went
wrong. Outputs are written all or none (`core.io.write_outputs`), so a failed or cancelled job leaves no result.

Exit codes: 0 done, 2 a `MedGenError` (bad input: the message is for the user), 1 an unexpected error (traceback on
stderr, which the module keeps in its log).
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

OPERATIONS = ("radiomics", "shape", "synthesize", "remove", "retexture", "resize", "move", "seg2img", "paired")


def _progress(event: Any) -> None:
    from napari_medgen.core.progress import format_progress_line

    print(format_progress_line(event), flush=True)


def _drive(job: Any) -> Any:
    from napari_medgen.core.progress import run_job

    return run_job(job, _progress)


def _read_inputs(spec: dict[str, Any], base: Path) -> dict[str, Any]:
    from napari_medgen.core import io

    inputs = spec.get("inputs", {})
    out: dict[str, Any] = {}
    if inputs.get("image"):
        out["image"] = io.read_volume(base / inputs["image"])
    if inputs.get("labels"):
        reference = out.get("image")
        labels = io.read_labels(base / inputs["labels"], reference=reference)
        out["labels"] = labels
    return out


def _steps(options: dict[str, Any]) -> int | None:
    steps = options.get("steps")
    return int(steps) if steps else None


def _model(options: dict[str, Any], default: str) -> str:
    return str(options.get("model") or default)


def _texture(options: dict[str, Any]) -> dict[str, float] | None:
    return {str(k): float(v) for k, v in (options.get("texture") or {}).items()} or None


def _edit_options(options: dict[str, Any], model: str) -> dict[str, Any]:
    """Options of the tumour editor that depend on the model type (steps: texture bridge only)."""
    from napari_medgen.pipelines.tumor_synthesis import EDITOR_TYPE, model_type

    extra: dict[str, Any] = {"model": model, "seed": int(options.get("seed", 0))}
    if model_type(model) != EDITOR_TYPE:
        extra["steps"] = _steps(options)
    return extra


# ---- operations: each returns (outputs, report); outputs are (kind, Volume or text, file name) -------------------
def _radiomics(spec: dict[str, Any], data: dict[str, Any], device: Any) -> tuple[list, dict]:
    from napari_medgen.pipelines.radiomics_extraction import extract_features_job

    names = {int(k): str(v) for k, v in spec["options"].get("segment_names", {}).items()}
    labels = data["labels"]
    columns: dict[str, dict[str, float]] = {}
    for value in labels.labels():
        result = _drive(extract_features_job(data["image"], labels, value))
        columns[names.get(value, f"Label {value}")] = result.features
    features = list(next(iter(columns.values())))
    header = ["Feature", *columns]
    lines = [",".join(_csv(h) for h in header)]
    for name in features:
        lines.append(",".join([_csv(name), *(repr(float(columns[c].get(name, float("nan")))) for c in columns)]))
    report = {"segments": list(columns), "n_features": len(features)}
    return [("table", "\n".join(lines) + "\n", "radiomics.csv")], report


def _csv(text: str) -> str:
    return '"' + str(text).replace('"', '""') + '"'


def _shape(spec: dict[str, Any], data: dict[str, Any], device: Any) -> tuple[list, dict]:
    from napari_medgen.pipelines.shape_generation import (
        DEFAULT_CANDIDATES,
        DEFAULT_MODEL,
        generate_shape_job,
        place_shape,
    )

    options = spec["options"]
    image = data["image"]
    result = _drive(generate_shape_job(
        {str(k): float(v) for k, v in (options.get("features") or {}).items()} or None,
        spacing=image.spacing, seed=int(options.get("seed", 0)), model=_model(options, DEFAULT_MODEL),
        candidates=int(options.get("candidates") or DEFAULT_CANDIDATES), device=device))
    placed = place_shape(result.mask, image, spec["center_lps"])
    return [("labels", placed, "labels.nrrd")], _jsonable(result.report)


def _synthesize(spec: dict[str, Any], data: dict[str, Any], device: Any) -> tuple[list, dict]:
    from napari_medgen.pipelines.tumor_synthesis import DEFAULT_MODEL, synthesize_job

    options = spec["options"]
    model = _model(options, DEFAULT_MODEL)
    features = {str(k): float(v) for k, v in (options.get("features") or {}).items()} or None
    shape = data.get("labels")
    result = _drive(synthesize_job(data["image"], center_mm=spec.get("center_lps"), shape=shape,
                                   shape_request=None if shape is not None else features, texture=_texture(options),
                                   device=device, **_edit_options(options, model)))
    return _edit_outputs(result)


def _edit_outputs(result: Any) -> tuple[list, dict]:
    return [("image", result.image, "image.nrrd"), ("labels", result.labels, "labels.nrrd")], _jsonable(result.report)


def _remove(spec: dict[str, Any], data: dict[str, Any], device: Any) -> tuple[list, dict]:
    from napari_medgen.pipelines.tumor_synthesis import DEFAULT_MODEL, remove_job

    model = _model(spec["options"], DEFAULT_MODEL)
    result = _drive(remove_job(data["image"], data["labels"], None, device=device,
                               **_edit_options(spec["options"], model)))
    return _edit_outputs(result)


def _retexture(spec: dict[str, Any], data: dict[str, Any], device: Any) -> tuple[list, dict]:
    from napari_medgen.pipelines.tumor_synthesis import DEFAULT_MODEL, retexture_job

    options = spec["options"]
    model = _model(options, DEFAULT_MODEL)
    result = _drive(retexture_job(data["image"], data["labels"], None, texture=_texture(options), device=device,
                                  **_edit_options(options, model)))
    return _edit_outputs(result)


def _resize(spec: dict[str, Any], data: dict[str, Any], device: Any) -> tuple[list, dict]:
    from napari_medgen.pipelines.tumor_synthesis import DEFAULT_MODEL, resize_job

    options = spec["options"]
    model = _model(options, DEFAULT_MODEL)
    result = _drive(resize_job(data["image"], data["labels"], float(options.get("scale", 1.0)), None,
                               texture=_texture(options), device=device, **_edit_options(options, model)))
    return _edit_outputs(result)


def _move(spec: dict[str, Any], data: dict[str, Any], device: Any) -> tuple[list, dict]:
    from napari_medgen.pipelines.tumor_synthesis import DEFAULT_MODEL, move_job

    options = spec["options"]
    model = _model(options, DEFAULT_MODEL)
    result = _drive(move_job(data["image"], data["labels"], spec["center_lps"], None, texture=_texture(options),
                             device=device, **_edit_options(options, model)))
    return _edit_outputs(result)


def _seg2img(spec: dict[str, Any], data: dict[str, Any], device: Any) -> tuple[list, dict]:
    from napari_medgen.pipelines.slice_generation import DEFAULT_MODEL, DEFAULT_SAMPLER, generate_from_labels_job

    options = spec["options"]
    similarity = float(options.get("similarity") or 0.0)
    result = _drive(generate_from_labels_job(
        data["labels"], model=_model(options, DEFAULT_MODEL), axis=int(options.get("axis", 0)),
        steps=_steps(options), sampler=str(options.get("sampler") or DEFAULT_SAMPLER),
        seed=int(options.get("seed", 0)), reference=data.get("image") if similarity > 0 else None,
        similarity=similarity, device=device))
    return [("image", result.image, "image.nrrd")], _jsonable(result.report)


def _paired(spec: dict[str, Any], data: dict[str, Any], device: Any) -> tuple[list, dict]:
    import numpy as np

    from napari_medgen.core.volume import LabelMap, Volume
    from napari_medgen.pipelines.paired_generation import DEFAULT_GUIDER, generate_pairs_job

    options = spec["options"]
    result = _drive(generate_pairs_job(int(options.get("n", 4)), guider=_model(options, DEFAULT_GUIDER),
                                       steps=_steps(options), seed=int(options.get("seed", 0)), device=device))
    images = np.concatenate([np.asarray(image.array) for image, _ in result.pairs])
    masks = np.concatenate([np.asarray(mask.array) for _, mask in result.pairs])
    first = result.pairs[0][0]
    metadata = {"generated_by": "napari-medgen paired", "pairs": "one pair per slice (k = pair index)"}
    image = Volume(images, first.spacing, first.origin, first.direction, metadata)
    labels = LabelMap(masks, first.spacing, first.origin, first.direction, metadata)
    return [("image", image, "image.nrrd"), ("labels", labels, "labels.nrrd")], _jsonable(result.report)


RUNNERS: dict[str, Callable[[dict[str, Any], dict[str, Any], Any], tuple[list, dict]]] = {
    "radiomics": _radiomics, "shape": _shape, "synthesize": _synthesize, "remove": _remove, "retexture": _retexture,
    "resize": _resize, "move": _move, "seg2img": _seg2img, "paired": _paired,
}


def _jsonable(value: Any) -> Any:
    """``value`` with numpy scalars / arrays / tuples made JSON-friendly (reports go into result.json)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"array{value.shape}"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def run(spec: dict[str, Any], base: Path) -> dict[str, Any]:
    """Run the spec's operation and write its outputs under ``base``/out; returns the result record."""
    from napari_medgen.core import io
    from napari_medgen.core.device import select_device
    from napari_medgen.errors import InvalidInputError

    operation = spec.get("operation")
    if operation not in RUNNERS:
        raise InvalidInputError(f"Unknown operation {operation!r}; choose one of {', '.join(OPERATIONS)}.")
    device = select_device(spec.get("device") or None) if operation != "radiomics" else None
    data = _read_inputs(spec, base)
    outputs, report = RUNNERS[operation](spec, data, device)
    out_dir = base / "out"
    writes = [(content, out_dir / name) for _, content, name in outputs]
    for content, path in writes:
        if not isinstance(content, str):
            path.parent.mkdir(parents=True, exist_ok=True)
    io.write_outputs(writes)
    files = [{"kind": kind, "path": str(Path("out") / name)} for kind, _, name in outputs]
    return {"status": "ok", "operation": operation, "outputs": files, "report": report,
            "device": None if device is None else str(device)}


def _write_result(base: Path, record: dict[str, Any]) -> None:
    tmp = base / "result.json.part"
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    tmp.replace(base / "result.json")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: worker.py SPEC.json", file=sys.stderr)
        return 2
    spec_path = Path(args[0]).resolve()
    base = spec_path.parent
    try:
        from napari_medgen.errors import MedGenError
    except ImportError as error:  # the module checks this before starting a job; keep the message clear anyway
        _write_result(base, {"status": "error", "type": "MissingDependency",
                             "error": f"napari-medgen is not installed in this Python ({error}). Use the MedGen "
                             "module's 'Install dependencies' button."})
        return 2
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        record = run(spec, base)
    except MedGenError as error:
        _write_result(base, {"status": "error", "type": type(error).__name__, "error": str(error)})
        print(f"MEDGEN-ERROR {type(error).__name__}: {error}", flush=True)
        return 2
    except Exception as error:  # noqa: BLE001 - the parent shows one message; the traceback goes to its log
        traceback.print_exc()
        _write_result(base, {"status": "error", "type": type(error).__name__,
                             "error": f"The job failed unexpectedly: {type(error).__name__}: {error}"})
        return 1
    _write_result(base, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
