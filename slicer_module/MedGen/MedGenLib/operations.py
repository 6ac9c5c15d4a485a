"""The MedGen operations on a Slicer scene: inputs checked and written for the worker, results loaded back as nodes.

`start_operation` checks the selection (a 3D volume, non-empty segments, a markup point where one is needed),
writes the inputs as NRRD into a temporary job folder and starts the worker (`jobs.JobRunner`); nothing in the
scene is touched. `OperationRun.poll` reports progress; when the worker succeeds, every result node is built first
and then added to the scene together (`add_results`), so a failure at any point leaves the scene as it was.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from MedGenLib import conversions
from MedGenLib.jobs import JobRunner, JobState, new_job_folder, wait_for

#: operation -> (title shown in the module, needs a volume, needs segments, needs a point)
OPERATIONS: dict[str, tuple[str, bool, bool, str]] = {
    "radiomics": ("Radiomics table", True, True, "no"),
    "shape": ("Tumour shape at a point", True, False, "required"),
    "synthesize": ("Synthesize tumour", True, False, "optional"),
    "remove": ("Remove tumour", True, True, "no"),
    "retexture": ("Retexture tumour", True, True, "no"),
    "resize": ("Resize tumour", True, True, "no"),
    "move": ("Move tumour to a point", True, True, "required"),
    "seg2img": ("Generate image from segmentation (slice-wise)", True, True, "no"),
    "paired": ("Paired image + mask generation", False, False, "no"),
}
#: operations that edit a 3D scan and so refuse 2D volumes
THREE_D = frozenset({"shape", "synthesize", "remove", "retexture", "resize", "move"})
#: segment names of the BraTS labels the brain editor writes
BRATS_NAMES = {1: "necrotic core", 2: "edema", 3: "non-enhancing tumour", 4: "enhancing tumour"}
BRATS_COLORS = {1: (0.8, 0.2, 0.2), 2: (0.95, 0.85, 0.3), 3: (0.5, 0.3, 0.8), 4: (0.3, 0.8, 0.9)}


def _errors() -> Any:
    from napari_medgen import errors

    return errors


@dataclass
class Selection:
    """What the user picked in the module: nodes, segment IDs (None = every segment) and the markup point (RAS)."""

    volume: Any = None
    segmentation: Any = None
    segment_ids: Sequence[str] | None = None
    point_ras: Sequence[float] | None = None


def markup_point_ras(markups_node: Any) -> tuple[float, float, float] | None:
    """World (RAS) position of the first control point of a markups node, None when there is none."""
    if markups_node is None or markups_node.GetNumberOfControlPoints() < 1:
        return None
    point = [0.0, 0.0, 0.0]
    markups_node.GetNthControlPointPositionWorld(0, point)
    return (float(point[0]), float(point[1]), float(point[2]))


def ras_to_lps(point: Sequence[float]) -> list[float]:
    return [float(v) for v in conversions.RAS_TO_LPS @ np.asarray(point, dtype=float)]


def check_selection(operation: str, selection: Selection) -> None:
    """Raise `InvalidInputError` / `DimensionError` with what to pick when the selection cannot run ``operation``."""
    errors = _errors()
    if operation not in OPERATIONS:
        raise errors.InvalidInputError(f"Unknown operation {operation!r}; choose one of {', '.join(OPERATIONS)}.")
    title, needs_volume, needs_segments, point = OPERATIONS[operation]
    if needs_volume and selection.volume is None:
        raise errors.InvalidInputError(f"{title}: no input volume is selected; choose a volume first.")
    if needs_segments and selection.segmentation is None:
        raise errors.InvalidInputError(f"{title}: no segmentation is selected; choose a segmentation and its "
                                       "segment(s).")
    if point == "required" and selection.point_ras is None:
        raise errors.InvalidInputError(f"{title}: place a markup point first (Markups toolbar: point list), and "
                                       "select that point list.")
    if operation == "synthesize" and selection.point_ras is None and selection.segmentation is None:
        raise errors.InvalidInputError("Synthesize tumour: place a markup point (where the tumour goes), or select a "
                                       "segment that is the tumour's shape.")
    if selection.volume is not None and operation in THREE_D:
        image = selection.volume.GetImageData()
        dims = image.GetDimensions() if image is not None else (0, 0, 0)
        if min(dims) < 2:
            raise errors.DimensionError(
                f"{title} needs a 3D volume; '{selection.volume.GetName()}' is {dims[0]} x {dims[1]} x {dims[2]} "
                "voxels. Use a 3D scan (2D images: Generate image from segmentation or Paired generation).")


def prepare(operation: str, selection: Selection, options: Mapping[str, Any], folder: Path,
            device: str = "auto") -> dict[str, Any]:
    """Check the selection, write the inputs and ``spec.json`` into ``folder``; returns the spec.

    Raises before anything is written to the scene (nothing ever is here)."""
    check_selection(operation, selection)
    from napari_medgen.core import io

    _, needs_volume, needs_segments, point = OPERATIONS[operation]
    inputs_dir = folder / "in"
    inputs_dir.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {"operation": operation, "device": device, "options": dict(options), "inputs": {}}
    if needs_volume:
        image = conversions.volume_from_node(selection.volume, labels=False)
        io.write_volume(image, inputs_dir / "image.nrrd", compress=False)
        spec["inputs"]["image"] = "in/image.nrrd"
        spec["source"] = {"name": selection.volume.GetName(), "geometry": image.geometry()}
    use_segments = needs_segments or (operation == "synthesize" and selection.segmentation is not None
                                      and selection.point_ras is None)
    names: dict[int, str] = {}
    if use_segments:
        labels, names = conversions.labels_from_segmentation(selection.segmentation, selection.volume,
                                                             selection.segment_ids)
        io.write_volume(labels, inputs_dir / "labels.nrrd", compress=False)
        spec["inputs"]["labels"] = "in/labels.nrrd"
        spec["options"]["segment_names"] = {str(k): v for k, v in names.items()}
    if point != "no" and selection.point_ras is not None:
        spec["center_lps"] = ras_to_lps(selection.point_ras)
    (folder / "spec.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return spec


def parse_pairs(text: str, what: str) -> dict[str, float]:
    """``"VoxelVolume=4000, Sphericity=0.8"`` (commas, semicolons or new lines between pairs) as a dict."""
    out: dict[str, float] = {}
    for item in re.split(r"[,;\n]+", text or ""):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip() or not np.isfinite(number):
            raise _errors().InvalidInputError(f"{what}: '{item.strip()}' is not Name=number (e.g. "
                                              f"{'VoxelVolume=4000' if 'hape' in what else 'enhancing/mean=0.9'}).")
        out[name.strip()] = number
    return out


def options_for(operation: str, *, shape_features: str = "", texture: str = "", scale: float = 1.5, pairs: int = 4,
                similarity: float = 0.0, steps: int = 0, seed: int = 0, model: str = "") -> dict[str, Any]:
    """The worker options of ``operation`` from the module's fields (only those the operation uses)."""
    options: dict[str, Any] = {"seed": int(seed)}
    if model.strip():
        options["model"] = model.strip()
    if steps and operation not in ("radiomics", "shape"):
        options["steps"] = int(steps)
    if operation in ("shape", "synthesize"):
        options["features"] = parse_pairs(shape_features, "Shape features")
    if operation in ("synthesize", "retexture", "resize", "move"):
        options["texture"] = parse_pairs(texture, "Texture")
    if operation == "resize":
        options["scale"] = float(scale)
    if operation == "paired":
        options["n"] = int(pairs)
    if operation == "seg2img":
        options["similarity"] = float(similarity)
    return options


# ---- results ----------------------------------------------------------------------------------------------------
def result_name(scene: Any, operation: str, source: str | None, suffix: str = "") -> str:
    base = f"{source} MedGen {operation}" if source else f"MedGen {operation}"
    return scene.GenerateUniqueName(base + suffix)


def table_node_from_csv(text: str, name: str) -> Any:
    """A table node with the radiomics table: a "Feature" text column and one number column per segment."""
    import csv
    import io as _io

    import slicer
    import vtk

    rows = list(csv.reader(_io.StringIO(text)))
    header, body = rows[0], rows[1:]
    node = slicer.vtkMRMLTableNode()
    node.SetName(name)
    features = vtk.vtkStringArray()
    features.SetName(header[0])
    for row in body:
        features.InsertNextValue(row[0])
    node.AddColumn(features)
    for c, title in enumerate(header[1:], start=1):
        column = vtk.vtkDoubleArray()
        column.SetName(title)
        for row in body:
            column.InsertNextValue(float(row[c]))
        node.AddColumn(column)
    return node


def export_table_csv(table_node: Any, path: str | Path) -> Path:
    """Write a table node as CSV with Slicer's table writer (what File > Save does); returns the path."""
    import slicer

    dest = Path(path).expanduser().absolute()
    storage = slicer.vtkMRMLTableStorageNode()
    storage.SetFileName(str(dest))
    if not storage.WriteData(table_node):
        raise _errors().MedGenError(f"Could not write {dest}; check that the folder exists and is writable.")
    return dest


def _snap(volume: Any, source_geometry: Mapping[str, Any] | None) -> Any:
    """A result on the source grid takes the source's exact geometry (file headers round the last digits)."""
    if not source_geometry:
        return volume
    same = (list(volume.size_xyz) == list(source_geometry["size_xyz"])
            and np.allclose(volume.spacing, source_geometry["spacing"], atol=1e-4)
            and np.allclose(volume.origin, source_geometry["origin"], atol=1e-4)
            and np.allclose(volume.direction, source_geometry["direction"], atol=1e-4))
    if not same:
        return volume
    return volume.with_array(np.asarray(volume.array), spacing=tuple(source_geometry["spacing"]),
                             origin=tuple(source_geometry["origin"]), direction=tuple(source_geometry["direction"]))


def build_result_nodes(scene: Any, spec: Mapping[str, Any], result: Mapping[str, Any], folder: Path) -> list[Any]:
    """The result nodes of a finished job (not yet in the scene), named after the operation and its source."""
    from napari_medgen.core import io

    operation = str(spec["operation"])
    source = spec.get("source", {})
    source_name = source.get("name")
    geometry = source.get("geometry")
    input_names = {int(k): v for k, v in spec.get("options", {}).get("segment_names", {}).items()}
    nodes = []
    for output in result.get("outputs", []):
        path = folder / output["path"]
        kind = output["kind"]
        if kind == "table":
            nodes.append(table_node_from_csv(path.read_text(encoding="utf-8"), result_name(scene, operation,
                                                                                           source_name)))
        elif kind == "image":
            volume = _snap(io.read_volume(path), geometry)
            nodes.append(conversions.node_from_volume(volume, result_name(scene, operation, source_name),
                                                      labels=False))
        elif kind == "labels":
            labels = _snap(io.read_labels(path), geometry)
            if not labels.labels():
                continue  # e.g. every tumour removed: no segmentation to show
            names = {v: input_names.get(v) or _default_name(operation, v) for v in labels.labels()}
            colors = BRATS_COLORS if operation in THREE_D and set(labels.labels()) <= set(BRATS_NAMES) else None
            nodes.append(conversions.segmentation_from_labels(
                labels, result_name(scene, operation, source_name, " segmentation"), names, colors))
        else:
            raise _errors().MedGenError(f"The worker returned an unknown output kind {kind!r}.")
    return nodes


def _default_name(operation: str, value: int) -> str:
    if operation in ("synthesize", "resize", "move", "retexture") and value in BRATS_NAMES:
        return BRATS_NAMES[value]
    if operation == "paired":
        return "lesion"
    if operation == "shape":
        return "tumour" if value == 1 else f"tumour region {value}"
    return f"Label {value}"


def add_results(scene: Any, nodes: Sequence[Any]) -> list[Any]:
    """Add every node (with default display nodes) to the scene, all or none."""
    added = []
    try:
        for node in nodes:
            scene.AddNode(node)
            added.append(node)
            if hasattr(node, "CreateDefaultDisplayNodes"):
                node.CreateDefaultDisplayNodes()
    except Exception:
        for node in added:
            for i in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0):
                display = node.GetNthDisplayNode(i)
                if display is not None:
                    scene.RemoveNode(display)
            scene.RemoveNode(node)
        raise
    return added


# ---- one run ----------------------------------------------------------------------------------------------------
@dataclass
class OperationRun:
    """One operation from start to nodes in the scene: `poll` until final, `cancel` at any time."""

    scene: Any
    spec: dict[str, Any]
    runner: JobRunner
    nodes: list[Any] = field(default_factory=list)
    error: str | None = None

    @property
    def folder(self) -> Path:
        return self.runner.folder

    @property
    def state(self) -> JobState:
        return self.runner.state

    def poll(self) -> JobState:
        """Advance: forward progress, and when the worker is done load its results into the scene."""
        if self.nodes or self.error is not None or self.runner.state in (JobState.CANCELLED,):
            return self.runner.state
        state = self.runner.poll()
        if state is JobState.RUNNING:
            return state
        try:
            if state is JobState.DONE:
                built = build_result_nodes(self.scene, self.spec, self.runner.result, self.folder)
                self.nodes = add_results(self.scene, built)
            else:
                self.error = self.runner.error
        except Exception as error:  # noqa: BLE001 - reported in the module, the scene is left unchanged
            self.error = f"Could not load the results: {error}"
            self.runner.state = JobState.FAILED
        finally:
            self.runner.cleanup()
        return self.runner.state

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> JobState:
        """Poll until the operation ends (scripts, tests, the self-test); after ``timeout`` seconds cancel it."""
        return wait_for(self, timeout, interval)

    def cancel(self) -> None:
        """Stop the worker and remove its files; the scene is not touched."""
        self.runner.cancel()
        self.error = self.runner.error


def start_operation(scene: Any, operation: str, selection: Selection, options: Mapping[str, Any] | None = None, *,
                    device: str = "auto", python: str | None = None,
                    on_progress: Callable[[Any], None] | None = None,
                    on_line: Callable[[str], None] | None = None) -> OperationRun:
    """Check and write the inputs, then start the worker; raises `MedGenError` (nothing started) on bad input."""
    folder = new_job_folder()
    try:
        spec = prepare(operation, selection, dict(options or {}), folder, device)
        runner = JobRunner(folder / "spec.json", python=python, on_progress=on_progress, on_line=on_line)
        runner.start()
    except BaseException:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        raise
    return OperationRun(scene, spec, runner)


__all__ = [
    "BRATS_NAMES",
    "OPERATIONS",
    "OperationRun",
    "Selection",
    "add_results",
    "build_result_nodes",
    "check_selection",
    "export_table_csv",
    "markup_point_ras",
    "options_for",
    "parse_pairs",
    "prepare",
    "ras_to_lps",
    "start_operation",
    "table_node_from_csv",
]
