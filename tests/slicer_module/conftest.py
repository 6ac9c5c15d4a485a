"""Headless 3D Slicer for the MedGen module's tests: slicer-core's MRML scene with the logics Slicer itself sets up.

Run by ``make slicer-test`` in ``.venv-slicer`` (slicer-core pins vtk); the main test run never collects this folder
(``norecursedirs`` in pyproject.toml). Not named ``tests/slicer``: slicer-core's ``slicer`` package extends its
path over every ``slicer`` folder on sys.path and would import these files as Slicer modules.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "slicer_module" / "MedGen"
if str(MODULE_DIR) not in sys.path:  # Slicer puts a scripted module's folder on sys.path the same way
    sys.path.insert(0, str(MODULE_DIR))

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed: run `make slicer-test`")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed `slicer` package is not slicer-core (name clash with PyPI `slicer`); run "
                "`make slicer-test`", allow_module_level=True)


@pytest.fixture
def scene():
    """A fresh MRML scene with the application and segmentations logics attached (registers converter rules),
    as Slicer has at start-up."""
    mrml = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(mrml)
    seg_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    seg_logic.SetMRMLApplicationLogic(app)
    seg_logic.SetMRMLScene(mrml)
    mrml._medgen_keep = (app, seg_logic)  # keep the logics alive with the scene
    yield mrml
    mrml.Clear(1)


def shared_data_dir() -> Path | None:
    import os

    env = os.environ.get("MEDGEN_TEST_DATA")
    for cand in ([Path(env)] if env else []) + [REPO_ROOT.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("real data not found: set MEDGEN_TEST_DATA or place the shared/ folder beside the repo")
    return root


def read_with_slicer(scene, path: Path, labels: bool = False):
    """A volume node read by Slicer's own reader (vtkMRMLVolumeArchetypeStorageNode), added to ``scene``."""
    node = slicer.vtkMRMLLabelMapVolumeNode() if labels else slicer.vtkMRMLScalarVolumeNode()
    node.SetName(path.name.split(".")[0])
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(node), f"Slicer could not read {path}"
    return node


def scene_snapshot(scene) -> list[tuple[str, str, int]]:
    """(class, name, modified time of the data) of every data node: what "the scene is unchanged" compares."""
    out = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        if node.IsA("vtkMRMLStorableNode") or node.IsA("vtkMRMLTableNode"):
            out.append((node.GetClassName(), node.GetName(), int(node.GetMTime())))
    return out


def sphere(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2
