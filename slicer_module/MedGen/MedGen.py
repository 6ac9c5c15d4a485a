"""MedGen: radiomics-controlled tumour synthesis and removal, and slice-wise image generation, in 3D Slicer.

A thin scripted module over the napari-medgen backend: the GUI and the dependency install live here; conversions,
the subprocess job runner and result loading live in ``MedGenLib`` (tested headless on slicer-core). Every operation
runs in a separate ``PythonSlicer`` process, so Slicer never freezes; Cancel stops it, and the scene only changes
when an operation succeeds (its results are added as new nodes named after the operation).
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from MedGenLib import dependencies
from MedGenLib.jobs import JobState, python_executable
from MedGenLib.operations import (
    OPERATIONS,
    OperationRun,
    Selection,
    export_table_csv,
    markup_point_ras,
    options_for,
    start_operation,
)
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

DEVICES = ("auto", "cpu", "cuda")
SETTINGS_DEVICE = "MedGen/Device"
#: which option fields each operation uses (the others are disabled while it is selected)
FIELDS = {
    "shapeFeaturesLineEdit": {"shape", "synthesize"},
    "textureLineEdit": {"synthesize", "retexture", "resize", "move"},
    "scaleSpinBox": {"resize"},
    "pairsSpinBox": {"paired"},
    "similaritySlider": {"seg2img"},
    "stepsSpinBox": {"synthesize", "remove", "retexture", "resize", "move", "seg2img", "paired"},
    "seedSpinBox": set(OPERATIONS) - {"radiomics"},
    "modelLineEdit": set(OPERATIONS) - {"radiomics"},
}


class MedGenModuleError(Exception):
    """A problem in the module itself (dependencies, PyTorch) whose message is meant for the user."""


def userMessage(error: BaseException) -> str:
    """The message shown for ``error``: its text for user-facing errors, a pointer to the log otherwise."""
    try:
        from napari_medgen.errors import MedGenError
    except ImportError:
        MedGenError = MedGenModuleError  # noqa: N806 - same role as the backend's base class
    if isinstance(error, MedGenError | MedGenModuleError):
        return str(error)
    logging.error("MedGen: unexpected error", exc_info=(type(error), error, error.__traceback__))
    return f"Unexpected error ({type(error).__name__}: {error}). Details are in the Python console."


#
# MedGen
#
class MedGen(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedGen")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["napari-medgen developers"]
        self.parent.helpText = _(
            "Radiomics tables, tumour shapes at a point, tumour synthesis / removal / retexture / resize / move, "
            "image generation from a segmentation (slice-wise) and paired image + mask generation, with the "
            "napari-medgen backend running in a separate process. Results are new nodes named after the operation. "
            'See <a href="https://github.com/napari-medgen/napari-medgen/blob/main/docs/slicer.md">docs/slicer.md</a>.'
        )
        self.parent.acknowledgementText = _(
            "Built on napari-medgen (BSD-3-Clause). Bundled brain models were trained on BRATS 2015 data "
            "(CC BY-NC-SA 3.0: research, non-commercial); see each model card."
        )


#
# MedGenParameterNode
#
@parameterNodeWrapper
class MedGenParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    point: vtkMRMLMarkupsFiducialNode
    operation: Annotated[str, Choice(list(OPERATIONS))] = "radiomics"
    shapeFeatures: str = "VoxelVolume=4000, Sphericity=0.8"
    texture: str = ""
    scale: Annotated[float, WithinRange(0.2, 5.0)] = 1.5
    pairs: Annotated[int, WithinRange(1, 256)] = 4
    similarity: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    steps: Annotated[int, WithinRange(0, 1000)] = 0
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    model: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"


#
# MedGenWidget
#
class MedGenWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.run: OperationRun | None = None
        self.lastTable = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedGen.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedGenLogic()

        for key, (title, *_rest) in OPERATIONS.items():
            self.ui.operationComboBox.addItem(title, key)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.exportTableButton.connect("clicked(bool)", self.onExportTable)
        self.ui.installButton.connect("clicked(bool)", self.onInstallButton)
        self.ui.operationComboBox.connect("currentIndexChanged(int)", self.onOperationChanged)
        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)

        self.initializeParameterNode()
        self.updateDependencyStatus()

    def cleanup(self) -> None:
        if self.run is not None:
            self.run.cancel()
            self.run = None
        self.timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self.run is not None:  # the scene the job belongs to goes away: stop it
            self.onCancelButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first
        saved = qt.QSettings().value(SETTINGS_DEVICE)
        if saved in DEVICES and self._parameterNode.device == "auto":
            self._parameterNode.device = saved

    def setParameterNode(self, inputParameterNode: MedGenParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self.ui.segmentSelector.setCurrentNode(self._parameterNode.segmentation)
            index = self.ui.operationComboBox.findData(self._parameterNode.operation)
            self.ui.operationComboBox.setCurrentIndex(max(index, 0))
            self._checkCanApply()

    # ---- GUI state ------------------------------------------------------------------------------------------
    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._parameterNode is None:
            return
        operation = self._parameterNode.operation
        needsVolume = OPERATIONS[operation][1]
        running = self.run is not None
        haveVolume = self._parameterNode.inputVolume is not None or not needsVolume
        self.ui.applyButton.enabled = not running and haveVolume
        if running:
            self.ui.applyButton.toolTip = _("An operation is running; Cancel stops it.")
        elif not haveVolume:
            self.ui.applyButton.toolTip = _("Select an input volume first.")
        else:
            self.ui.applyButton.toolTip = _("Run the operation in a separate process.")
        self.ui.cancelButton.enabled = running
        for name, used in FIELDS.items():
            getattr(self.ui, name).enabled = operation in used and not running

    def onOperationChanged(self, index: int) -> None:
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.operation = self.ui.operationComboBox.itemData(index)

    def onSegmentationChanged(self, node) -> None:
        if self._parameterNode is not None:
            self._parameterNode.segmentation = node

    def onDeviceChanged(self, index: int) -> None:
        if index >= 0:
            qt.QSettings().setValue(SETTINGS_DEVICE, self.ui.deviceComboBox.itemText(index))

    def setStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.text = text
        self.ui.statusLabel.styleSheet = "color: #c03030" if error else ""

    def showError(self, message: str) -> None:
        """A user-facing message in the module's status line and a dialog: never a traceback."""
        self.setStatus(message, error=True)
        slicer.util.errorDisplay(message, windowTitle=_("MedGen"))

    def updateDependencyStatus(self) -> bool:
        missing = dependencies.missing_imports()
        self.ui.dependencyStatusLabel.text = dependencies.missing_message(missing) if missing else _(
            "napari-medgen and PyTorch are installed.")
        self.ui.installButton.enabled = bool(missing)
        return not missing

    # ---- actions ----------------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self.run is not None:
            return
        if not self.updateDependencyStatus():  # first use: offer the install (it asks before downloading)
            self.ui.settingsCollapsibleButton.collapsed = False
            self.onInstallButton()
            if not self.updateDependencyStatus():
                self.showError(dependencies.missing_message(dependencies.missing_imports()))
                return
        pn = self._parameterNode
        try:
            selection = Selection(
                volume=pn.inputVolume,
                segmentation=self.ui.segmentSelector.currentNode(),
                segment_ids=list(self.ui.segmentSelector.selectedSegmentIDs()),
                point_ras=markup_point_ras(pn.point),
            )
            self.run = self.logic.start(pn.operation, selection, self.logic.options(pn), pn.device,
                                        on_progress=self.onProgress, on_line=self.onWorkerLine)
        except Exception as error:  # noqa: BLE001 - bad input: a message in the module, nothing started
            self.showError(userMessage(error))
            return
        self.ui.progressBar.setRange(0, 0)
        self.setStatus(_("Running {title}...").format(title=OPERATIONS[pn.operation][0]))
        self._checkCanApply()
        self.timer.start()

    def onWorkerLine(self, line: str) -> None:
        logging.info("MedGen worker: %s", line)

    def onProgress(self, event) -> None:
        if event.total:
            self.ui.progressBar.setRange(0, int(event.total))
            self.ui.progressBar.setValue(int(event.step))
        else:
            self.ui.progressBar.setRange(0, 0)
        self.setStatus(f"{event.stage}: {event.message}" if event.message else event.stage)

    def onTimer(self) -> None:
        if self.run is None:
            self.timer.stop()
            return
        try:
            state = self.run.poll()
        except Exception as error:  # noqa: BLE001 - shown in the module
            state = JobState.FAILED
            self.run.error = userMessage(error)
        if state is JobState.RUNNING:
            return
        self.timer.stop()
        run, self.run = self.run, None
        self.ui.progressBar.setRange(0, 1)
        self.ui.progressBar.setValue(1 if state is JobState.DONE else 0)
        if state is JobState.DONE:
            self.showResults(run)
        elif state is JobState.CANCELLED:
            self.setStatus(_("Cancelled; the scene is unchanged."))
        else:
            tail = "\n".join(run.runner.log[-20:])
            if tail:
                logging.info("MedGen worker log (last lines):\n%s", tail)
            self.showError(run.error or _("The operation failed; the scene is unchanged."))
        self._checkCanApply()

    def onCancelButton(self) -> None:
        if self.run is None:
            return
        self.run.cancel()
        self.timer.stop()
        self.run = None
        self.ui.progressBar.setRange(0, 1)
        self.ui.progressBar.setValue(0)
        self.setStatus(_("Cancelled; the scene is unchanged."))
        self._checkCanApply()

    def showResults(self, run: OperationRun) -> None:
        names = ", ".join(node.GetName() for node in run.nodes) or _("nothing (no voxels left)")
        self.setStatus(_("Done: added {names}.").format(names=names))
        for node in run.nodes:
            if node.IsA("vtkMRMLScalarVolumeNode"):
                slicer.util.setSliceViewerLayers(background=node, fit=True)
            elif node.IsA("vtkMRMLTableNode"):
                self.lastTable = node
                self.ui.exportTableButton.enabled = True
                slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
                slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(node.GetID())
                slicer.app.applicationLogic().PropagateTableSelection()

    def onExportTable(self) -> None:
        if self.lastTable is None or slicer.mrmlScene.GetNodeByID(self.lastTable.GetID()) is None:
            self.showError(_("No radiomics table to export; run 'Radiomics table' first."))
            return
        path = qt.QFileDialog.getSaveFileName(None, _("Save radiomics table"), f"{self.lastTable.GetName()}.csv",
                                              _("CSV files (*.csv)"))
        if not path:
            return
        try:
            written = export_table_csv(self.lastTable, path)
        except Exception as error:  # noqa: BLE001 - shown in the module
            self.showError(userMessage(error))
            return
        self.setStatus(_("Wrote {path}.").format(path=written))

    def onInstallButton(self) -> None:
        try:
            message = self.logic.installDependencies(ask=True)
        except Exception as error:  # noqa: BLE001 - a message in the module (pip's own output is in the console)
            self.updateDependencyStatus()
            self.showError(_("Installing the MedGen dependencies failed: {message}").format(
                message=userMessage(error)))
            return
        self.updateDependencyStatus()
        self.setStatus(message)


#
# MedGenLogic
#
class MedGenLogic(ScriptedLoadableModuleLogic):
    """Runs MedGen operations; usable without the GUI (``slicer.util.getModuleLogic("MedGen")``)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MedGenParameterNode(super().getParameterNode())

    def options(self, pn) -> dict:
        """The worker options of the parameter node's operation (raises `InvalidInputError` for bad fields)."""
        return options_for(pn.operation, shape_features=pn.shapeFeatures, texture=pn.texture, scale=pn.scale,
                           pairs=pn.pairs, similarity=pn.similarity, steps=pn.steps, seed=pn.seed, model=pn.model)

    def start(self, operation: str, selection: Selection, options: dict, device: str = "auto", on_progress=None,
              on_line=None) -> OperationRun:
        """Check the inputs and start the worker (non-blocking); poll the returned run until it is final."""
        missing = dependencies.missing_imports()
        if missing:
            raise MedGenModuleError(dependencies.missing_message(missing))
        return start_operation(slicer.mrmlScene, operation, selection, options, device=device,
                               python=python_executable(), on_progress=on_progress, on_line=on_line)

    def runBlocking(self, operation: str, selection: Selection, options: dict, device: str = "cpu",
                    timeout: float = 900.0) -> OperationRun:
        """`start` and wait, keeping Slicer's GUI responsive (scripts and the self-test)."""
        run = self.start(operation, selection, options, device)
        begin = time.monotonic()
        while run.poll() is JobState.RUNNING:
            if time.monotonic() - begin > timeout:
                run.cancel()
                break
            slicer.app.processEvents()
            time.sleep(0.05)
        return run

    def installDependencies(self, ask: bool = True) -> str:
        """Install what is missing (asks first when ``ask``): PyTorch through the PyTorch extension, then napari-medgen
        without its GUI extra and without replacing Slicer's numpy, SimpleITK, vtk or Qt."""
        missing = dependencies.missing_imports()
        if not missing:
            return _("Everything MedGen needs is installed.")
        if ask and not slicer.util.confirmOkCancelDisplay(
                _("MedGen needs {what}. Install now? This downloads packages from PyPI and can take several minutes; "
                  "Slicer's own numpy, SimpleITK, vtk and Qt are not changed.").format(
                    what=", ".join(dependencies.REQUIRED_IMPORTS[m] for m in missing)),
                windowTitle=_("MedGen: install dependencies")):
            return _("Nothing was installed.")
        if "torch" in missing:
            self.installTorch()
        if "napari_medgen" in missing:
            source = dependencies.default_source(Path(__file__).resolve().parent)
            with tempfile.TemporaryDirectory(prefix="medgen-pip-") as folder, slicer.util.WaitCursor():
                constraints = Path(folder) / "constraints.txt"
                constraints.write_text(dependencies.constraints_text(dependencies.installed_versions()),
                                       encoding="utf-8")
                slicer.util.pip_install(dependencies.pip_commands(source, [], None)[0])
                importlib.invalidate_caches()
                for args in dependencies.pip_commands(source, dependencies.backend_requirements(), constraints)[1:]:
                    slicer.util.pip_install(args)
        importlib.invalidate_caches()
        still = dependencies.missing_imports()
        if still:
            raise MedGenModuleError(dependencies.missing_message(still))
        return _("MedGen's dependencies are installed.")

    def installTorch(self) -> None:
        """PyTorch through the PyTorch extension (it picks the CUDA build matching the GPU driver)."""
        try:
            import PyTorchUtils
        except ImportError:
            raise MedGenModuleError(_(
                "PyTorch is missing and the PyTorch extension is not installed: install 'PyTorch' from the Extensions "
                "Manager, restart Slicer, then click 'Install dependencies' again.")) from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True)
        if torch is None:
            raise MedGenModuleError(_("PyTorch was not installed; MedGen cannot run its models without it."))


#
# MedGenTest
#
class MedGenTest(ScriptedLoadableModuleTest):
    """Self-test: every operation on a small synthetic head (made in code, nothing downloaded), plus bad input and
    Cancel. Needs the dependencies (the test says so and stops when they are missing); one to two minutes on a CPU."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        missing = dependencies.missing_imports()
        if missing:
            self.delayDisplay(dependencies.missing_message(missing))
            return
        self.test_MedGen_operations()
        self.setUp()
        self.test_MedGen_bad_input_and_cancel()

    def _phantom(self):
        from MedGenLib import conversions

        from napari_medgen.sample_data import make_phantom

        image, labels = make_phantom(shape=(48, 64, 64), spacing=(1.0, 1.0, 1.0), tumour_radius_mm=9.0)
        volume = conversions.node_from_volume(image, "MedGen phantom")
        slicer.mrmlScene.AddNode(volume)
        volume.CreateDefaultDisplayNodes()
        segmentation = conversions.segmentation_from_labels(labels, "MedGen phantom tumour",
                                                            {1: "enhancing rim", 2: "necrotic core"})
        slicer.mrmlScene.AddNode(segmentation)
        segmentation.CreateDefaultDisplayNodes()
        return image, volume, segmentation

    def test_MedGen_operations(self):
        self.delayDisplay("Starting the MedGen operations test")
        from napari_medgen.core.geometry import index_to_physical

        image, volume, segmentation = self._phantom()
        logic = MedGenLogic()
        lps = index_to_physical(image, (24, 32, 20))
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "MedGen point")
        points.AddControlPoint(vtk.vtkVector3d(-lps[0], -lps[1], lps[2]))
        ras = markup_point_ras(points)
        everything = Selection(volume, segmentation, None, ras)
        cases = [
            ("radiomics", {}, 1),
            ("shape", {"features": {"VoxelVolume": 2000.0}, "candidates": 2}, 1),
            ("synthesize", {"features": {"VoxelVolume": 1500.0}}, 2),
            ("remove", {}, 1),
            ("retexture", {"texture": {"enhancing/mean": 0.9}}, 2),
            ("resize", {"scale": 0.8}, 2),
            ("move", {}, 2),
            ("seg2img", {"steps": 2}, 1),
            ("paired", {"n": 2, "steps": 2}, 2),
        ]
        for operation, options, count in cases:
            self.delayDisplay(f"MedGen: {OPERATIONS[operation][0]}")
            before = slicer.mrmlScene.GetNumberOfNodes()
            run = logic.runBlocking(operation, everything, {"seed": 0, **options}, device="cpu")
            self.assertIsNone(run.error, run.error)
            self.assertEqual(len(run.nodes), count, operation)
            self.assertGreater(slicer.mrmlScene.GetNumberOfNodes(), before)
            self.assertTrue(all(" MedGen " in n.GetName() or n.GetName().startswith("MedGen ") for n in run.nodes))
        self.delayDisplay("MedGen operations test passed")

    def test_MedGen_bad_input_and_cancel(self):
        from napari_medgen.errors import InvalidInputError

        _image, volume, segmentation = self._phantom()
        logic = MedGenLogic()
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(InvalidInputError):
            logic.start("remove", Selection(None, segmentation), {})
        empty = segmentation.GetSegmentation().AddEmptySegment("", "empty")
        with self.assertRaises(InvalidInputError):
            logic.start("remove", Selection(volume, segmentation, [empty]), {})
        segmentation.GetSegmentation().RemoveSegment(empty)
        run = logic.start("paired", Selection(), {"n": 16, "steps": 400}, "cpu")
        while run.poll() is JobState.RUNNING and run.runner.last_progress is None:
            slicer.app.processEvents()
            time.sleep(0.05)
        run.cancel()
        self.assertEqual(run.state, JobState.CANCELLED)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("MedGen bad input and cancel test passed")
