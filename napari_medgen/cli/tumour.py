"""Tumour editing: `medgen synth`, `medgen remove` (the brain editor checkpoint -- learned inpainting + glioma
appearance -- or the latent texture bridge, whichever the model is) and `medgen batch` (data augmentation; its logic
is `napari_medgen.pipelines.augmentation`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from napari_medgen.cli._common import (
    DeviceOption,
    OverwriteInputOption,
    QuietOption,
    app,
    check_seed,
    console,
    fail,
    feature_settings,
    floats,
    named_floats,
    preflight,
    refuse_bad_seed,
    refuse_input_overwrite,
    run_with_progress,
    tumour_summary,
    use_device,
)
from napari_medgen.errors import MedGenError
from napari_medgen.pipelines.augmentation import MARGIN_MM, SPHERICITY_RANGE, VOLUME_RANGE

if TYPE_CHECKING:
    from napari_medgen.core.volume import LabelMap, Volume
    from napari_medgen.pipelines.tumor_synthesis import EditResult

#: file formats the tumour commands write (single files, so that every output can be staged and renamed)
_EDIT_OUTPUTS = (".nii.gz", ".nii", ".nrrd", ".mha")


def _check_edit_output(path: Path, option: str, allowed: tuple[str, ...] = _EDIT_OUTPUTS) -> Path:
    """Refuse an output name the tumour commands cannot write *before* the model runs, not after it."""
    dest = path.expanduser().absolute()
    if dest.is_dir():
        raise MedGenError(f"{option} {path} is a folder; give a file name such as {dest / 'out.nii.gz'}.")
    if not any(dest.name.lower().endswith(ext) and len(dest.name) > len(ext) for ext in allowed):
        raise MedGenError(f"{option} {path.name}: use a file name ending in {', '.join(allowed)}.")
    return dest


def _check_edit_outputs(out: Path, mask_out: Path | None, report: Path | None) -> None:
    """The scan, mask and report outputs of a tumour command: writable kinds, and all different."""
    _check_edit_output(out, "--out")
    if mask_out is not None:
        _check_edit_output(mask_out, "--mask-out", (*_EDIT_OUTPUTS, ".seg.nrrd"))
    if report is not None:
        _check_edit_output(report, "--report", (".json",))
    given = [p.expanduser().absolute() for p in (out, mask_out, report) if p is not None]
    if len(set(given)) != len(given):
        raise MedGenError("The output files must all be different (--out, --mask-out, --report).")


def _check_edit_counts(seed: int, steps: int | None, label_value: int = 1) -> None:
    check_seed(seed)
    if steps is not None and steps < 1:
        raise MedGenError(f"--steps must be at least 1; got {steps}.")
    if not 1 <= label_value <= 255:
        raise MedGenError(f"--label-value must be 1..255; got {label_value}.")


def _texture_settings(items: list[str] | None) -> dict[str, float]:
    """``--texture Name=value`` pairs as floats: ``region/control`` for the brain editor, texture feature names
    (``original_`` prefix optional) for the bridge; the pipeline checks the names."""
    return named_floats(items, "--texture", "enhancing/mean=0.9 (editor) or firstorder_Mean=0.2 (bridge)")


#: BraTS sub-regions the brain editor writes, in the order the summaries name them
_SUBREGIONS = ((1, "necrotic core"), (4, "enhancing"), (2, "edema"))


def _is_editor(model: str) -> bool:
    """Whether ``model`` is a brain editor checkpoint (its config.json is read, nothing loaded)."""
    from napari_medgen.pipelines.tumor_synthesis import EDITOR_TYPE, model_type

    return model_type(model) == EDITOR_TYPE


def _subregion_summary(labels: LabelMap, where: object = None) -> str:
    """cm3 of each BraTS sub-region in ``labels`` (necrotic core, enhancing, edema; absent ones left out), only
    where ``where`` (a boolean array) is true when given."""
    import numpy as np

    arr = np.asarray(labels.array)
    if where is not None:
        arr = np.where(np.asarray(where), arr, 0)
    cm3 = float(np.prod(labels.spacing)) / 1000.0
    parts = [f"{name} ({value}) {np.count_nonzero(arr == value) * cm3:.2f} cm3" for value, name in _SUBREGIONS
             if np.any(arr == value)]
    return ", ".join(parts) or "no BraTS sub-region"


def _edema_range(edema_mm: str | None, no_edema: bool) -> tuple[float, float] | None | str:
    """``--edema-mm MIN,MAX`` / ``--no-edema`` as the pipeline's ``edema_mm`` ("default" when neither is given)."""
    if no_edema and edema_mm is not None:
        raise MedGenError("--edema-mm and --no-edema exclude each other.")
    if no_edema:
        return None
    if edema_mm is None:
        return "default"
    low, high = floats(edema_mm, "--edema-mm", count=2)
    if not (0 <= low <= high < float("inf")):
        raise MedGenError(f"--edema-mm needs MIN,MAX millimetres with 0 <= MIN <= MAX; got '{edema_mm}'.")
    return low, high


def _write_edit(result: EditResult, inputs: dict[str, str], out: Path, mask_out: Path | None,
                report: Path | None) -> None:
    """The edited scan, the mask (where asked for) and the JSON report (inputs, outputs, the pipeline's report),
    all or none."""
    from napari_medgen.core import io
    from napari_medgen.core.atomic import json_text

    outputs: list[tuple[Volume | str, Path]] = [(result.image, out)]
    if mask_out is not None:
        outputs.append((result.labels, mask_out))
    if report is not None:
        where = {"out": str(out), "mask_out": None if mask_out is None else str(mask_out)}
        outputs.append((json_text({**inputs, **where, **result.report}), report))
    io.write_outputs(outputs)


def _shape_mask(path: Path, volume: Volume) -> LabelMap:
    """A ``--shape`` mask: snapped to the scan's grid when it lies on it (float header rounding); otherwise the
    backend places it with its centroid at ``--center-mm``, whatever grid the mask came from."""
    from napari_medgen.core import io
    from napari_medgen.core.volume import LabelMap

    mask = io.read_labels(path)
    if volume.same_grid(mask, tol=1e-4):
        return LabelMap(mask.array, volume.spacing, volume.origin, volume.direction, mask.metadata)
    return mask


# options shared by the tumour commands (synth, remove, batch)
BridgeStepsOption = Annotated[int | None, typer.Option(
    "--steps", help="Texture bridge only: sampling steps (default 25, at most the model's training schedule). The "
    "brain editor paints in one pass: leave it out."
)]
BridgeModelOption = Annotated[str | None, typer.Option(
    "--model", help="Bundled name or checkpoint folder: the brain editor (inpainter, e.g. inpainter-brain) or a "
    "texture bridge (e.g. bridge-brain-t1c). Default: the pipeline's default model."
)]
EditReportOption = Annotated[Path | None, typer.Option("--report", help="Write what was done as JSON (.json).")]


_SYNTH_HELP = (
    "Synthesize a new tumour in a 3D scan; voxels away from it stay bit-identical.\n\n"
    "With the brain editor (model type inpainter) the tumour is a glioma with BraTS sub-regions in --mask-out (1 "
    "necrotic core, 2 edema, 4 enhancing tumour): shape from the two-region shape model shape-gan-brats (--set, e.g. "
    "VoxelVolume=20000, necrotic_core/VoxelVolume=4000) or a mask (--shape; several labels kept, one label split by "
    "--necrotic-fraction), edema from --edema-mm / --no-edema, texture from the editor's fitted appearance for "
    "--sequence, a reference tumour (--texture-from) and/or --texture region/control=value.\n\n"
    "With a texture bridge: shape from the shape generator (--set; default VoxelVolume=4000, Sphericity=0.8) or a "
    "mask, texture features (--texture firstorder_Mean=0.2), --steps and --label-value."
)


@app.command(help=_SYNTH_HELP)
def synth(
    image: Annotated[Path, typer.Argument(help="3D scan to edit (.nii.gz, .nrrd, .mha, DICOM folder).")],
    out: Annotated[Path, typer.Option("--out", help="Edited scan (.nii.gz, .nii, .nrrd or .mha), on the input grid.")],
    mask_out: Annotated[Path, typer.Option(
        "--mask-out", help="Mask of the new tumour (.nii.gz, .nii, .nrrd, .seg.nrrd or .mha), on the input grid."
    )],
    center_mm: Annotated[str | None, typer.Option(
        "--center-mm", help="Tumour centre X,Y,Z in physical (LPS) mm. Needed unless --shape lies on the scan's grid."
    )] = None,
    shape_mask: Annotated[Path | None, typer.Option(
        "--shape", help="Tumour mask: on the scan's grid (used where it is, or moved to --center-mm), or an unplaced "
        "mask such as `medgen shape` writes (its centre goes to --center-mm). Excludes --set."
    )] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Shape feature for the shape generator (names as in `medgen shape`), e.g. --set VoxelVolume=8000 "
        "--set Sphericity=0.8. Brain editor (shape-gan-brats): also the necrotic core, e.g. "
        "--set necrotic_core/VoxelVolume=3000 (mm3). Without --shape and --set: the model's default size."
    )] = None,
    texture_from: Annotated[tuple[Path, Path] | None, typer.Option(
        "--texture-from", metavar="IMAGE LABEL",
        help="Copy the texture of a reference tumour: two paths, its scan and its label file (--texture-from "
        "scan.nii.gz seg.nii.gz). Default texture: the model's median training tumour."
    )] = None,
    texture_from_label: Annotated[int | None, typer.Option(
        "--texture-from-label", help="Label value of the reference tumour (default: every non-zero label)."
    )] = None,
    texture: Annotated[list[str] | None, typer.Option(
        "--texture", help="Brain editor: REGION/CONTROL=value with REGION necrotic, edema or enhancing and CONTROL "
        "mean (brain-normalised: 0 and 1 = the healthy brain's 0.5th and 99.5th percentiles) or spread (factor, 1 = "
        "unchanged), e.g. --texture enhancing/mean=0.9. Texture bridge: one texture feature (model units), e.g. "
        "--texture firstorder_Mean=0.3 (original_ prefix optional)."
    )] = None,
    sequence: Annotated[str | None, typer.Option(
        "--sequence", help="Brain editor only: the scan's MR sequence whose fitted tumour appearance is painted "
        "(default T1c)."
    )] = None,
    edema_mm: Annotated[str | None, typer.Option(
        "--edema-mm", metavar="MIN,MAX", help="Brain editor only: thickness range of the edema grown around the "
        "tumour core, in mm (default 4,12). Ignored when --shape already has edema (label 2)."
    )] = None,
    no_edema: Annotated[bool, typer.Option("--no-edema", help="Brain editor only: no edema around the core.")] = False,
    necrotic_fraction: Annotated[float | None, typer.Option(
        "--necrotic-fraction", help="Brain editor only: share of a one-label --shape mask that becomes necrotic core "
        "(its deepest voxels), 0 <= f < 1 (default 0.3)."
    )] = None,
    label_value: Annotated[int, typer.Option(
        "--label-value", help="Texture bridge only: value of the tumour in --mask-out (1..255). The brain editor "
        "writes BraTS labels."
    )] = 1,
    steps: BridgeStepsOption = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same tumour).")] = 0,
    model: BridgeModelOption = None,
    report: EditReportOption = None,
    device: DeviceOption = None,
    quiet: QuietOption = False,
    overwrite_input: OverwriteInputOption = False,
) -> None:
    """Synthesize a new tumour in a 3D scan; voxels away from it stay bit-identical."""
    target = preflight(seed, [("--out", out), ("--mask-out", mask_out), ("--report", report)],
                           [image, shape_mask, *(texture_from or ()), model], overwrite_input, device)
    from napari_medgen.core import io
    from napari_medgen.pipelines import tumor_synthesis
    from napari_medgen.pipelines.tumor_synthesis import synthesize_job

    model_name = model or tumor_synthesis.DEFAULT_MODEL
    try:
        _check_edit_counts(seed, steps, label_value)
        editor = _is_editor(model_name)
        edema = _edema_range(edema_mm, no_edema)
        editor_options: dict[str, object] = {}
        if sequence is not None:
            editor_options["sequence"] = sequence
        if edema != "default":
            editor_options["edema_mm"] = edema
        if necrotic_fraction is not None:
            editor_options["necrotic_fraction"] = necrotic_fraction
        if editor_options and not editor:
            given = {"sequence": "--sequence", "edema_mm": "--edema-mm/--no-edema",
                     "necrotic_fraction": "--necrotic-fraction"}
            raise MedGenError(f"{', '.join(given[k] for k in editor_options)} apply to the brain editor; "
                              f"{model_name} is a texture bridge.")
        shape_request = feature_settings(set_) or None
        texture_request = _texture_settings(texture) or None
        if shape_mask is not None and shape_request is not None:
            raise MedGenError("--shape and --set exclude each other: give a mask or shape features, not both.")
        if texture_from_label is not None and texture_from is None:
            raise MedGenError("--texture-from-label picks a label of the --texture-from reference; add --texture-from.")
        centre = floats(center_mm, "--center-mm") if center_mm is not None else None
        _check_edit_outputs(out, mask_out, report)
        volume = io.read_volume(image)
        shape = _shape_mask(shape_mask, volume) if shape_mask is not None else None
        if centre is None and (shape is None or not shape.same_grid(volume)):
            raise MedGenError(
                "Give --center-mm X,Y,Z (the tumour centre in physical LPS mm, e.g. read off napari or Slicer), or a "
                "--shape mask that lies on the scan's grid."
            )
        reference = None
        if texture_from is not None:
            ref_image = io.read_volume(texture_from[0])
            reference = (ref_image, io.read_labels(texture_from[1], reference=ref_image), texture_from_label)
        job = synthesize_job(volume, center_mm=centre, shape=shape, shape_request=shape_request,
                             texture=texture_request, texture_from=reference, model=model_name, steps=steps,
                             seed=seed, label_value=label_value, device=target, **editor_options)
        result = run_with_progress(job, "synth", quiet=quiet)
        _write_edit(result, {"image": str(image)}, out, mask_out, report)
    except MedGenError as error:
        fail(error)
    where = result.report.get("center_mm")
    place = f" at {tuple(round(v, 1) for v in where)} mm" if where else ""
    if editor:
        console.print(f"wrote {out} and {mask_out}: new glioma of {tumour_summary(result.labels)}{place}: "
                      f"{_subregion_summary(result.labels)} ("
                      f"{result.report['shape_from']}; {result.report.get('sequence')}, seed {seed})")
    else:
        console.print(f"wrote {out} and {mask_out}: new tumour of {tumour_summary(result.labels)}{place} "
                      f"({result.report['shape_from']}; {result.report['steps']} steps, seed {seed})")


@app.command("remove")
def remove_tumour(
    image: Annotated[Path, typer.Argument(help="3D scan to edit (.nii.gz, .nrrd, .mha, DICOM folder).")],
    labels: Annotated[Path, typer.Argument(help="Label map of the tumour on the scan's grid.")],
    out: Annotated[Path, typer.Option("--out", help="Edited scan (.nii.gz, .nii, .nrrd or .mha), on the input grid.")],
    label: Annotated[int | None, typer.Option(
        "--label", help="Label value to remove (default: every non-zero label)."
    )] = None,
    mask_out: Annotated[Path | None, typer.Option(
        "--mask-out", help="The labels that remain (removed ones set to 0), on the input grid."
    )] = None,
    steps: BridgeStepsOption = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same result).")] = 0,
    model: BridgeModelOption = None,
    report: EditReportOption = None,
    device: DeviceOption = None,
    quiet: QuietOption = False,
    overwrite_input: OverwriteInputOption = False,
) -> None:
    """Remove a tumour: its region (plus a 2 mm rim) is replaced by healthy-looking tissue."""
    target = preflight(seed, [("--out", out), ("--mask-out", mask_out), ("--report", report)],
                           [image, labels, model], overwrite_input, device)
    import numpy as np

    from napari_medgen.core import io
    from napari_medgen.pipelines import tumor_synthesis
    from napari_medgen.pipelines.tumor_synthesis import remove_job

    model_name = model or tumor_synthesis.DEFAULT_MODEL
    try:
        _check_edit_counts(seed, steps)
        editor = _is_editor(model_name)
        if editor and steps is not None:
            raise MedGenError("--steps applies to the texture bridge; the brain editor inpaints in one pass (leave "
                              "--steps out, or pass a bridge model such as bridge-brain-t1c).")
        _check_edit_outputs(out, mask_out, report)
        volume = io.read_volume(image)
        label_map = io.read_labels(labels, reference=volume)
        job = remove_job(volume, label_map, label, model=model_name, steps=steps, seed=seed, device=target)
        result = run_with_progress(job, "remove", quiet=quiet)
        _write_edit(result, {"image": str(image), "labels": str(labels)}, out, mask_out, report)
    except MedGenError as error:
        fail(error)
    removed = "every label" if label is None else f"label {label}"
    remaining = ", ".join(map(str, result.labels.labels())) or "none"
    how = (f"{result.report.get('method', 'model')} inpainting" if editor
           else f"{result.report['steps']} steps, seed {seed}")
    console.print(f"wrote {out}: removed {removed} "
                  f"({_subregion_summary(label_map, np.asarray(result.labels.array) != np.asarray(label_map.array))}; "
                  f"{result.report['region_voxels']} voxels with the rim; {how}); labels left: {remaining}"
                  + (f", written to {mask_out}" if mask_out is not None else ""))


_BATCH_HELP = (
    "Write N synthesized-tumour variants per case for data augmentation (random centres and shapes).\n\n"
    "Centres: random voxels at least --margin-mm inside the foreground; shapes: random requests from --volume-range "
    "and --sphericity-range; texture: the model's default. Case i (input order, folders sorted), variant k always "
    "gets the same result for a --seed.\n\n"
    "Under `accelerate launch` process r takes the cases i with i % num_processes == r and writes "
    "manifest-rank<r>.json. Each pair is written atomically; the manifest lists the pairs written so far "
    "(\"complete\": true at the end). A case that fails (unreadable file, refused scan, failing variant) is listed "
    "in the manifest's \"failed\" and at the end, the other cases are still made, and the exit code is 1."
)


@app.command("batch", help=_BATCH_HELP)
def batch_synth(
    inputs: Annotated[list[Path], typer.Argument(
        help="Image files, or folders: a folder contributes every .nii.gz, .nii, .nrrd and .mha file in it (not "
        "recursive) except names containing 'label', 'mask' or 'seg'."
    )],
    out_dir: Annotated[Path, typer.Option(
        "--out-dir", help="Output folder: <case>_synth<k>.nii.gz, <case>_synth<k>_mask.nii.gz, manifest-rank<r>.json."
    )],
    variants: Annotated[int, typer.Option("--variants", help="Synthesized variants per case.")],
    volume_range: Annotated[str, typer.Option(
        "--volume-range", help="Tumour volume MIN,MAX in mm3, drawn log-uniformly."
    )] = f"{VOLUME_RANGE[0]:g},{VOLUME_RANGE[1]:g}",
    sphericity_range: Annotated[str, typer.Option(
        "--sphericity-range", help="Tumour sphericity MIN,MAX, drawn uniformly."
    )] = f"{SPHERICITY_RANGE[0]:g},{SPHERICITY_RANGE[1]:g}",
    margin_mm: Annotated[float, typer.Option(
        "--margin-mm", help="Tumour centres lie at least this far inside the foreground (voxels above the image "
        "minimum) and the image border."
    )] = MARGIN_MM,
    steps: BridgeStepsOption = None,
    seed: Annotated[int, typer.Option(
        "--seed", help="Base seed; case i, variant k always get the same centre, shape and noise."
    )] = 0,
    model: BridgeModelOption = None,
    device: DeviceOption = None,
    quiet: QuietOption = False,
    overwrite_input: OverwriteInputOption = False,
) -> None:
    """Write N synthesized-tumour variants per case for data augmentation (random centres and shapes)."""
    refuse_bad_seed(seed)
    _refuse_batch_overwrite(inputs, out_dir, variants, model, overwrite_input)
    target = use_device(device)
    from accelerate import PartialState
    from rich.markup import escape

    from napari_medgen.pipelines.augmentation import augment_job

    # cpu=True: the processes never communicate, so the process group is gloo on any machine; without it a
    # GPU-less `accelerate launch` would give every process rank 0. Each process uses its own GPU (local rank).
    state = PartialState(cpu=True)
    rank, world = int(state.process_index), int(state.num_processes)
    target = _local_device(target, world, int(getattr(state, "local_process_index", rank)))
    prefix = escape(f"[rank {rank}] ") if world > 1 else ""  # not rich markup
    dest = out_dir.expanduser().absolute()
    written: list[str] = []

    def report(item: dict, result: object) -> None:
        written.append(item["image"])
        if not quiet:
            console.print(f"{prefix}wrote {item['image']} + {item['mask']}: {tumour_summary(result.labels)}")

    try:
        _check_edit_counts(seed, steps)
        if variants < 1:
            raise MedGenError(f"--variants must be a positive integer; got {variants}.")
        volumes = _range(volume_range, "--volume-range", 0.0, float("inf"))
        sphericities = _range(sphericity_range, "--sphericity-range", 0.0, 1.0)
        if not (margin_mm >= 0 and margin_mm != float("inf")):
            raise MedGenError(f"--margin-mm must be 0 or a positive number of millimetres; got {margin_mm}.")
        if dest.exists() and not dest.is_dir():
            raise MedGenError(f"{dest} is a file; --out-dir must be a folder.")
        job = augment_job(inputs, dest, variants=variants, volume_range=volumes, sphericity_range=sphericities,
                          margin_mm=margin_mm, model=model, steps=steps, seed=seed, process_index=rank,
                          num_processes=world, device=target, on_written=report)
        result = run_with_progress(job, "batch", quiet=quiet)
    except MedGenError as error:
        if written:
            console.print(f"{prefix}{len(written)} pair(s) were written before the error; {dest} has them and their "
                          "manifest.")
        fail(error)
    for failure in result.failures:
        console.print(f"{prefix}[bold red]failed:[/bold red] {escape(failure['error'])}", soft_wrap=True)
    failed_cases = len({f["case"] for f in result.failures})
    console.print(f"{prefix}wrote {len(written)} image/mask pair(s) for {len(result.cases)} case(s) to {dest} "
                  f"({'brain editor' if result.steps is None else f'{result.steps} steps'}, seed {seed}); manifest "
                  f"{result.manifest_path.name}"
                  + (f"; {len(result.failures)} failure(s) in {failed_cases} case(s), listed in the manifest's "
                     '"failed"' if result.failures else ""), soft_wrap=True)
    if result.failures:
        raise typer.Exit(code=1)


def _refuse_batch_overwrite(inputs: list[Path], out_dir: Path, variants: int, model: str | None,
                             overwrite_input: bool) -> None:
    """`batch` writes *into* --out-dir: refuse it only where an input file (or the model) lies there under the name
    of a planned output (``<case>_synth<k>[_mask].nii.gz``, ``manifest-rank<r>.json``), or is the folder itself."""
    import re

    from napari_medgen.pipelines.augmentation import find_cases

    refuse_input_overwrite([("--out-dir", out_dir)], [*inputs, model], overwrite_input, replaces_folder=False)
    if overwrite_input:
        return
    try:
        cases = [name for name, _ in find_cases(inputs, out_dir)]
    except (MedGenError, OSError):
        return  # the job reports bad inputs
    planned = {f"{name}_synth{k}{tail}.nii.gz" for name in cases for k in range(max(variants, 0))
               for tail in ("", "_mask")}
    sources = [Path(p).expanduser() for p in [*inputs, model] if p is not None]
    clashes = [out_dir / p.name for p in sources if p.is_file() and (p.name in planned or re.fullmatch(
        r"manifest-rank\d+\.json", p.name))]
    refuse_input_overwrite([("--out-dir", c) for c in clashes], sources, overwrite_input)


def _range(text: str, option: str, low: float, high: float) -> tuple[float, float]:
    lo, hi = floats(text, option, count=2)
    if not (low < lo <= hi <= high):
        raise MedGenError(f"{option} needs MIN,MAX with {low:g} < MIN <= MAX <= {high:g}; got '{text}'.")
    return lo, hi


def _local_device(device: object, world: int, local_rank: int) -> object:
    """Under `accelerate launch`, process r of a multi-GPU machine runs on GPU ``local_rank`` (when the device
    is plain ``cuda``); one process, or an explicit ``cuda:N``, keeps the device as chosen."""
    import torch

    if world > 1 and getattr(device, "type", None) == "cuda" and getattr(device, "index", 0) is None:
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return device
