"""Data augmentation with the texture bridge (`medgen batch`): N synthesized-tumour variants per case.

For every case (input order; folders contribute their image files, sorted) and variant ``k``: a random centre
at least ``margin_mm`` inside the foreground (voxels above the image minimum; skull-stripped scans store their
background as the minimum) and the image border, a random shape request (log-uniform volume, uniform
sphericity) and the model's default texture. Case ``i``, variant ``k`` always get the same centre, shape and
noise for a seed (``numpy.random.default_rng([seed, i, k])``), whichever process runs them.

Sharding: process ``r`` of ``num_processes`` (e.g. under ``accelerate launch``) takes the cases ``i`` with
``i % num_processes == r`` and writes ``manifest-rank<r>.json``. Each image/mask pair is written atomically
(`core.io.write_outputs`) as soon as it is made; the manifest lists the pairs written so far and says
``"complete": true`` at the end, so an interrupted run leaves only whole pairs and a truthful manifest. A case
that fails (`MedGenError` or `OSError`) is listed in the manifest's ``"failed"`` and the other cases are still made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medgen.core.naming import looks_like_labels, split_name
from napari_medgen.core.progress import Job, ProgressEvent, run_job
from napari_medgen.core.volume import Volume
from napari_medgen.errors import CancelledError, InvalidInputError, MedGenError

#: image files a folder contributes (single files, so that every output can be staged and renamed)
INPUT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")
#: shape requests (log-uniform volume in mm3, uniform sphericity) and the centre margin in mm
VOLUME_RANGE = (2000.0, 15000.0)
SPHERICITY_RANGE = (0.6, 0.85)
MARGIN_MM = 15.0


@dataclass(frozen=True)
class AugmentationResult:
    """What one process wrote: its manifest (also on disk) and the pairs as manifest items."""

    manifest_path: Path
    manifest: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def steps(self) -> int | None:
        """Sampling steps of the texture bridge (None with the brain editor, which has none)."""
        steps = self.manifest["steps"]
        return None if steps is None else int(steps)

    @property
    def cases(self) -> list[str]:
        return list(self.manifest["cases"])

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The cases (or variants) that failed: ``{"case", "source", "variant" (None: the whole case), "error"}``."""
        return list(self.manifest.get("failed", []))


def case_name(path: Path) -> str:
    """A case's name: its file name without the image extension."""
    parsed = split_name(path)
    return parsed[0] if parsed and parsed[1] in INPUT_EXTENSIONS else path.name


def find_cases(inputs: Sequence[str | Path], out_dir: str | Path) -> list[tuple[str, Path]]:
    """(case name, image) in a fixed order: files as given, folders expanded to their image files (sorted;
    label files (`core.naming.looks_like_labels`) and files inside ``out_dir`` skipped). Names must be unique."""
    out = Path(out_dir).expanduser().absolute()
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".")
                and p.name.lower().endswith(INPUT_EXTENSIONS)
                and not looks_like_labels(p)
                and p.absolute().parent != out
            )
            if not found:
                raise InvalidInputError(
                    f"No images in {path}: a folder contributes its {', '.join(INPUT_EXTENSIONS)} files whose names "
                    "do not mark them as label maps (label, mask, seg)."
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InvalidInputError(f"{item} does not exist; give image files or folders of images.")
    cases = [(case_name(p), p) for p in files]
    names = [name for name, _ in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidInputError(
            f"Several inputs are named {', '.join(duplicates)}; outputs are named after the input, so give each case "
            "a unique file name."
        )
    return cases


def centre_candidates(volume: Volume, margin_mm: float) -> np.ndarray:
    """Voxel indices (z, y, x) at least ``margin_mm`` inside the foreground (voxels above the image minimum)
    and the image border."""
    from scipy import ndimage

    arr = np.asarray(volume.array)
    inside = np.pad(arr > arr.min(), 1)  # beyond the image counts as background
    distance = ndimage.distance_transform_edt(inside, sampling=volume.spacing_zyx)[1:-1, 1:-1, 1:-1]
    return np.argwhere(distance >= margin_mm)


def random_request(rng: np.random.Generator, volumes: Sequence[float],
                   sphericities: Sequence[float]) -> dict[str, float]:
    """A random shape request: log-uniform volume (small and large tumours equally often), uniform sphericity."""
    volume = float(np.exp(rng.uniform(np.log(volumes[0]), np.log(volumes[1]))))
    return {"VoxelVolume": round(volume, 1), "Sphericity": round(float(rng.uniform(*sphericities)), 3)}


def _check_options(variants: int, volumes: Sequence[float], sphericities: Sequence[float], margin_mm: float,
                   seed: int, steps: int | None, out: Path) -> None:
    if variants < 1:
        raise InvalidInputError(f"variants must be a positive integer; got {variants}.")
    if seed < 0:
        raise InvalidInputError(f"seed must be 0 or a positive integer; got {seed}.")
    if steps is not None and steps < 1:
        raise InvalidInputError(f"steps must be at least 1; got {steps}.")
    if not (len(volumes) == 2 and 0 < volumes[0] <= volumes[1] < float("inf")):
        raise InvalidInputError(f"volume_range needs 0 < MIN <= MAX mm3; got {tuple(volumes)}.")
    if not (len(sphericities) == 2 and 0 < sphericities[0] <= sphericities[1] <= 1):
        raise InvalidInputError(f"sphericity_range needs 0 < MIN <= MAX <= 1; got {tuple(sphericities)}.")
    if not (np.isfinite(margin_mm) and margin_mm >= 0):
        raise InvalidInputError(f"margin_mm must be 0 or a positive number of millimetres; got {margin_mm}.")
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} is a file; the output must be a folder.")


def augment_job(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    variants: int,
    volume_range: Sequence[float] = VOLUME_RANGE,
    sphericity_range: Sequence[float] = SPHERICITY_RANGE,
    margin_mm: float = MARGIN_MM,
    model: str | Path | None = None,
    steps: int | None = None,
    seed: int = 0,
    process_index: int = 0,
    num_processes: int = 1,
    device: Any = None,
    on_written: Callable[[dict[str, Any], Any], None] | None = None,
) -> Job[AugmentationResult]:
    """Write ``variants`` synthesized-tumour variants of every case of this process (see the module docstring)
    into ``out_dir``: ``<case>_synth<k>.nii.gz``, ``<case>_synth<k>_mask.nii.gz`` and ``manifest-rank<r>.json``.

    ``on_written(item, result)`` is called after each pair is on disk (``item``: its manifest entry, ``result``:
    the `EditResult`). A case that fails (unreadable file, refused scan, a failing variant: `MedGenError` or
    `OSError`) is recorded in the manifest's ``"failed"`` (``case``, ``source``, ``variant`` or None, ``error``)
    and the other cases are still made; `AugmentationResult.failures` lists them. Cancelling (or any other
    exception) stops the run: pairs written before stay, listed in the manifest (``"complete": false``).
    Progress events are those of each synthesis, their stage prefixed with the case and variant."""
    from napari_medgen.core import io
    from napari_medgen.core.atomic import atomic_write_text, json_text
    from napari_medgen.core.device import select_device
    from napari_medgen.core.geometry import index_to_physical
    from napari_medgen.hub import load_cached
    from napari_medgen.pipelines.tumor_synthesis import (
        DEFAULT_MODEL,
        EDITOR_TYPE,
        check_scan,
        model_type,
        resolve_steps,
        synthesize_job,
    )

    target = select_device(device)
    model_name = model or DEFAULT_MODEL
    out = Path(out_dir).expanduser().absolute()
    volumes = tuple(float(v) for v in volume_range)
    sphericities = tuple(float(v) for v in sphericity_range)
    _check_options(variants, volumes, sphericities, margin_mm, seed, steps, out)
    cases = find_cases(inputs, out)
    editor = model_type(model_name) == EDITOR_TYPE  # the brain editor paints in one pass: no steps
    net = load_cached(model_name, expected_type=EDITOR_TYPE if editor else "bridge-unet", device=target)
    if editor and steps is not None:
        raise InvalidInputError("steps apply to the texture bridge; leave them unset with the brain editor.")
    n_steps = None if editor else resolve_steps(net, steps)
    mine = [(index, name, path) for index, (name, path) in enumerate(cases) if index % num_processes == process_index]
    manifest_path = out / f"manifest-rank{process_index}.json"
    manifest: dict[str, Any] = {
        "command": "medgen batch", "model": str(model_name), "steps": n_steps, "seed": seed, "variants": variants,
        "volume_range_mm3": list(volumes), "sphericity_range": list(sphericities), "margin_mm": margin_mm,
        "process_index": process_index, "num_processes": num_processes, "cases": [name for _, name, _ in mine],
        "complete": False, "items": [], "failed": [],
    }
    atomic_write_text(manifest_path, json_text(manifest))
    def record_failure(name: str, path: Path, variant: int | None, error: BaseException) -> None:
        where = path.name if variant is None else f"{path.name}, variant {variant}"
        message = str(error) if isinstance(error, MedGenError) else f"{type(error).__name__}: {error}"
        manifest["failed"].append({"case": name, "source": str(path), "variant": variant,
                                   "error": f"{where}: {message}"})
        atomic_write_text(manifest_path, json_text(manifest))

    for index, name, path in mine:
        try:
            volume = io.read_volume(path)
            if not editor:
                check_scan(volume, net)
            candidates = centre_candidates(volume, margin_mm)
            if len(candidates) == 0:
                raise InvalidInputError(
                    f"no voxel lies {margin_mm:g} mm inside the foreground (voxels above the image minimum) and the "
                    "image border; lower the margin or use a larger scan."
                )
        except CancelledError:
            raise
        except (MedGenError, OSError) as error:  # one bad case does not stop the others
            record_failure(name, path, None, error)
            continue
        for k in range(variants):
            rng = np.random.default_rng([seed, index, k])
            centre = index_to_physical(volume, candidates[rng.integers(len(candidates))].astype(float))
            request = random_request(rng, volumes, sphericities)
            job_seed = int(rng.integers(0, 2**31 - 1))
            try:
                job = synthesize_job(volume, center_mm=tuple(float(v) for v in centre), shape_request=request,
                                     model=model_name, steps=n_steps, seed=job_seed, device=target)
                result = yield from _prefixed(job, f"{name} variant {k}")
                image_name, mask_name = f"{name}_synth{k}.nii.gz", f"{name}_synth{k}_mask.nii.gz"
                io.write_outputs([(result.image, out / image_name), (result.labels, out / mask_name)])
            except CancelledError:
                raise
            except (MedGenError, OSError) as error:
                record_failure(name, path, k, error)
                continue
            item = {
                "case": name, "case_index": index, "source": str(path), "variant": k,
                "image": image_name, "mask": mask_name, "center_mm": [float(v) for v in centre],
                "shape_request": request, "seed": job_seed, "report": result.report,
            }
            manifest["items"].append(item)
            atomic_write_text(manifest_path, json_text(manifest))
            if on_written is not None:
                on_written(item, result)
    manifest["complete"] = True
    atomic_write_text(manifest_path, json_text(manifest))
    return AugmentationResult(manifest_path, manifest, list(manifest["items"]))


def _prefixed(job: Job[Any], prefix: str) -> Job[Any]:
    """``job``'s events with their stage prefixed (which case and variant is being made)."""
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            yield ProgressEvent(event.step, event.total, f"{prefix}: {event.stage}", event.message)
    finally:
        job.close()


def augment(inputs: Sequence[str | Path], out_dir: str | Path, **options: Any) -> AugmentationResult:
    """`augment_job` run to the end (no progress display)."""
    return run_job(augment_job(inputs, out_dir, **options))
