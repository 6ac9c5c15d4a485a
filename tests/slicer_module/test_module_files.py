"""The extension's files follow 3D Slicer's scripted-module conventions, and MedGen.py's logic runs on slicer-core
with the Qt-only parts of Slicer stubbed (the GUI itself needs a real Slicer: its self-test, MedGenTest)."""

from __future__ import annotations

import ast
import re
import sys
import types
import unittest
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from conftest import MODULE_DIR, REPO_ROOT

MODULE = MODULE_DIR / "MedGen.py"
UI = MODULE_DIR / "Resources" / "UI" / "MedGen.ui"
LIB = MODULE_DIR / "MedGenLib"


def _tree() -> ast.Module:
    return ast.parse(MODULE.read_text(encoding="utf-8"))


def _classes() -> dict[str, ast.ClassDef]:
    return {node.name: node for node in _tree().body if isinstance(node, ast.ClassDef)}


def _bases(cls: ast.ClassDef) -> list[str]:
    return [ast.unparse(b) for b in cls.bases]


def _ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def test_scripted_module_classes() -> None:
    classes = _classes()
    assert _bases(classes["MedGen"]) == ["ScriptedLoadableModule"]
    assert _bases(classes["MedGenWidget"]) == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert _bases(classes["MedGenLogic"]) == ["ScriptedLoadableModuleLogic"]
    assert _bases(classes["MedGenTest"]) == ["ScriptedLoadableModuleTest"]
    decorators = [ast.unparse(d) for d in classes["MedGenParameterNode"].decorator_list]
    assert decorators == ["parameterNodeWrapper"]
    module_init = ast.unparse(classes["MedGen"])
    for attribute in ("title", "categories", "contributors", "helpText", "acknowledgementText"):
        assert f"self.parent.{attribute} =" in module_init


def test_widget_setup_loads_the_ui_and_uses_the_parameter_node() -> None:
    widget = _classes()["MedGenWidget"]
    methods = {f.name: ast.unparse(f) for f in widget.body if isinstance(f, ast.FunctionDef)}
    setup = methods["setup"]
    assert "slicer.util.loadUI(self.resourcePath('UI/MedGen.ui'))" in setup
    assert "slicer.util.childWidgetVariables(uiWidget)" in setup and "uiWidget.setMRMLScene(slicer.mrmlScene)" in setup
    assert "self.logic = MedGenLogic()" in setup and "self.initializeParameterNode()" in setup
    assert "connectGui(self.ui)" in methods["setParameterNode"]
    for name in ("cleanup", "enter", "exit", "onSceneStartClose", "onSceneEndClose", "initializeParameterNode"):
        assert name in methods
    assert "MedGenParameterNode(super().getParameterNode())" in ast.unparse(_classes()["MedGenLogic"])
    test = {f.name: ast.unparse(f) for f in _classes()["MedGenTest"].body if isinstance(f, ast.FunctionDef)}
    assert "slicer.mrmlScene.Clear()" in test["setUp"] and "runTest" in test
    # every operation is exercised by the self-test
    from MedGenLib.operations import OPERATIONS

    for operation in OPERATIONS:
        assert f"('{operation}'" in test["test_MedGen_operations"], operation


def test_errors_are_messages_not_tracebacks() -> None:
    """Every action handler catches errors and shows a message; no handler lets an exception reach Qt."""
    widget = _classes()["MedGenWidget"]
    for f in widget.body:
        if isinstance(f, ast.FunctionDef) and f.name in ("onApplyButton", "onExportTable", "onInstallButton"):
            handlers = [h for h in ast.walk(f) if isinstance(h, ast.ExceptHandler)]
            assert handlers and all("userMessage" in ast.unparse(h) for h in handlers), f.name
    # tracebacks go to the log (logging), never to a dialog
    assert "import traceback" not in MODULE.read_text(encoding="utf-8")


def test_ui_is_valid_designer_xml_matching_the_module() -> None:
    root = ET.parse(UI).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0" and root.findtext("class") == "MedGen"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "MedGen"
    widgets = _ui_widgets()
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= custom
    # every self.ui.<name> the module uses exists in the .ui
    referenced = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text(encoding="utf-8")))
    from_fields = set(re.findall(r'"(\w+(?:LineEdit|SpinBox|Slider))"', MODULE.read_text(encoding="utf-8")))
    assert referenced | from_fields <= set(widgets), (referenced | from_fields) - set(widgets)
    # every SlicerParameterName is a field of the parameter node
    params = {p.findtext("string") for p in root.iter("property") if p.get("name") == "SlicerParameterName"}
    fields = {n.target.id for n in _classes()["MedGenParameterNode"].body if isinstance(n, ast.AnnAssign)}
    assert params and params <= fields, params - fields
    # MRML widgets get the scene from the module widget
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml = {w.get("name") for w in root.iter("widget") if w.get("class", "").startswith("qMRML")} - {"MedGen"}
    assert mrml <= receivers
    assert widgets["deviceComboBox"].findall("item")  # auto / cpu / cuda


def test_cmake_lists_every_file_and_they_exist() -> None:
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    blocks = re.findall(r"set\((MODULE_PYTHON_SCRIPTS|MODULE_PYTHON_RESOURCES)(.*?)\)", text, re.S)
    paths = [p.replace("${MODULE_NAME}", "MedGen") for _, body in blocks for p in body.split()]
    assert "MedGen.py" in paths and "Resources/UI/MedGen.ui" in paths and "Resources/Icons/MedGen.png" in paths
    for path in paths:
        assert (MODULE_DIR / path).is_file(), path
    for script in LIB.glob("*.py"):
        assert f"${{MODULE_NAME}}Lib/{script.name}" in text, script.name
    top = (REPO_ROOT / "slicer_module" / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_DEPENDS",
                "find_package(Slicer REQUIRED)", "add_subdirectory(MedGen)", "Slicer_EXTENSION_GENERATE_CONFIG"):
        assert key in top
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text and "WITH_GENERIC_TESTS" in text


def test_lib_is_headless_and_modules_are_short() -> None:
    """MedGenLib must run without Slicer's GUI: no qt, ctk, slicer.util, slicer.app or slicer.modules."""
    for path in [*LIB.glob("*.py"), MODULE]:
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 700, path.name
    for path in LIB.glob("*.py"):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("qt", "ctk") or n.startswith("slicer.util") for n in names), (
                    path.name, ast.unparse(node))
        used = {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not {u for u in used if u.split(".")[:2] in (["slicer", "util"], ["slicer", "app"],
                                                             ["slicer", "modules"])}, path.name


# ---- MedGen.py on slicer-core, with the Qt-only Slicer parts stubbed -------------------------------------------
@pytest.fixture
def medgen_module(scene, monkeypatch):
    import slicer

    def passthrough(cls=None, **_kwargs):
        return cls

    class _Annotation:
        def __init__(self, *args, **kwargs) -> None:
            self.args = args

    stubs = {
        "qt": types.ModuleType("qt"),
        "slicer.i18n": types.ModuleType("slicer.i18n"),
        "slicer.parameterNodeWrapper": types.ModuleType("slicer.parameterNodeWrapper"),
        "slicer.ScriptedLoadableModule": types.ModuleType("slicer.ScriptedLoadableModule"),
    }
    stubs["slicer.i18n"].tr = lambda text: text
    stubs["slicer.i18n"].translate = lambda _context, text: text
    stubs["slicer.parameterNodeWrapper"].parameterNodeWrapper = passthrough
    stubs["slicer.parameterNodeWrapper"].Choice = _Annotation
    stubs["slicer.parameterNodeWrapper"].WithinRange = _Annotation
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget"):
        setattr(stubs["slicer.ScriptedLoadableModule"], name, type(name, (), {"__init__": lambda self, *a: None}))

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None) -> None:  # noqa: N802 - Slicer's name
            print(message)

    stubs["slicer.ScriptedLoadableModule"].ScriptedLoadableModuleTest = ScriptedLoadableModuleTest

    class ScriptedLoadableModuleLogic:
        def __init__(self) -> None:
            pass

    stubs["slicer.ScriptedLoadableModule"].ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(processEvents=lambda: None), raising=False)
    monkeypatch.delitem(sys.modules, "MedGen", raising=False)
    import MedGen

    yield MedGen
    sys.modules.pop("MedGen", None)


def test_logic_runs_an_operation_into_the_scene_and_reports_bad_input(medgen_module, scene) -> None:
    from MedGenLib import conversions
    from MedGenLib.jobs import JobState
    from MedGenLib.operations import Selection

    from napari_medgen.core.volume import Volume
    from napari_medgen.errors import InvalidInputError

    logic = medgen_module.MedGenLogic()
    parameters = types.SimpleNamespace(operation="shape", shapeFeatures="VoxelVolume=2500", texture="", scale=1.5,
                                       pairs=4, similarity=0.0, steps=0, seed=2, model="")
    options = logic.options(parameters)
    assert options == {"seed": 2, "features": {"VoxelVolume": 2500.0}}
    vol = Volume(np.zeros((30, 32, 34), np.int16), spacing=(1.0, 1.0, 1.0))
    node = conversions.node_from_volume(vol, "grid")
    scene.AddNode(node)
    run = logic.start("shape", Selection(node, point_ras=(-16.0, -15.0, 15.0)), {**options, "candidates": 2}, "cpu")
    assert run.wait(240) is JobState.DONE, run.error
    assert [n.GetName() for n in run.nodes] == ["grid MedGen shape segmentation"]
    assert scene.GetNodeByID(run.nodes[0].GetID()) is run.nodes[0]
    with pytest.raises(InvalidInputError, match="Shape features: 'VoxelVolume=big' is not Name=number"):
        logic.options(types.SimpleNamespace(**{**vars(parameters), "shapeFeatures": "VoxelVolume=big"}))
    assert medgen_module.userMessage(InvalidInputError("pick a volume")) == "pick a volume"
    assert "Python console" in medgen_module.userMessage(ZeroDivisionError("x"))


def test_self_test_passes_headless(medgen_module, scene) -> None:
    """MedGenTest (what Slicer's Reload and Test runs) on slicer-core: every operation on the synthetic head made in
    code, bad input and Cancel."""
    test = medgen_module.MedGenTest("runTest")
    test.runTest()
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") >= 1  # the phantom of the last part
