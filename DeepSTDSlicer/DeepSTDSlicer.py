"""DeepSTD for 3D Slicer: compress scans relative to a population template and inspect the result.

Thin glue: the widget wires the GUI to `DeepSTDSlicerLogic`, which owns the parameter node and
delegates all work to the Qt-free `DeepSTDSlicerLib.core.DeepSTDCore` (tested headless with
slicer-core). torch and the codec are imported on first use, never when Slicer starts.
"""

import logging
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer import (
    vtkMRMLGridTransformNode,
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
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

from DeepSTDSlicerLib import codec, dependencies, mrml
from DeepSTDSlicerLib.core import ATTR_WARNINGS, DeepSTDCore, describe_error, ensure_dependencies, is_cancel

# Slicer registers the .dstd reader/writer by looking these names up in this module.
from DeepSTDSlicerLib.io import DeepSTDSlicerFileReader, DeepSTDSlicerFileWriter  # noqa: F401

HELP = """
<p>Compress CT and MR volumes 32&ndash;512&times; relative to a template of their population
(<code>.dstd</code> files), and see what the compression changed.</p>
<ul>
<li><b>Codec</b>: choose a shipped codec bundle or load a bundle file; <i>Show template</i> loads
its template (and labels).</li>
<li><b>Registration</b>: register a scan to the template and watch the deformation converge
(grid over the slice views, scan overlaid on the template); loss, folding and time as it runs.</li>
<li><b>Compress / Decompress</b>: write a <code>.dstd</code> file at a target ratio, or open one
(File &rsaquo; Add Data and drag-and-drop open <code>.dstd</code> files too).</li>
<li><b>Quality</b>: residue map (original &minus; decompressed) with MAE / PSNR / SSIM, and Dice /
HD95 per segment between two segmentations.</li>
</ul>
<p>PyTorch and the other Python packages are installed on first use, after asking.
See <a href="https://github.com/DeepSTD/SlicerDeepSTD/blob/main/docs/SLICER_USER.md">the user guide</a>.</p>
"""


class DeepSTDSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DeepSTD")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Utilities")]
        self.parent.dependencies = []  # PyTorchUtils is imported on first use, as TotalSegmentator does
        self.parent.contributors = ["DeepSTD developers"]
        self.parent.helpText = _(HELP)
        self.parent.acknowledgementText = _(
            "Method: Yang, Xiao, Cheng et al., DeepSTD, Nature Communications 17, 1573 (2026)."
        )


@parameterNodeWrapper
class DeepSTDSlicerParameterNode:
    """GUI state. `bundle`, `ratio` and `device` are also read by the .dstd writer (core.settings)."""

    bundle: str = ""
    inputVolume: vtkMRMLScalarVolumeNode
    templateVolume: vtkMRMLScalarVolumeNode
    registrationTransform: vtkMRMLGridTransformNode
    previewMode: Annotated[str, Choice(["grid", "glyph", "contour"])] = "grid"
    compressVolume: vtkMRMLScalarVolumeNode
    ratio: Annotated[float, WithinRange(8.0, 512.0)] = 64.0
    effort: Annotated[int, WithinRange(0, 2)] = 0
    useMaxError: bool = False
    maxError: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0
    keepVolume: vtkMRMLLabelMapVolumeNode
    keepError: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0
    device: Annotated[str, Choice(list(codec.DEVICES))] = "auto"
    originalVolume: vtkMRMLScalarVolumeNode
    decodedVolume: vtkMRMLScalarVolumeNode
    residueVolume: vtkMRMLScalarVolumeNode
    qualityTable: vtkMRMLTableNode
    segmentationA: vtkMRMLSegmentationNode
    segmentationB: vtkMRMLSegmentationNode
    segmentTable: vtkMRMLTableNode


class DeepSTDSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._jobWidgets = ()
        self._timer = None
        self._pickedFor = None  # the volume the codec was last picked for (by its modality)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DeepSTDSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DeepSTDSlicerLogic()

        # Jobs run in a child Python process (PythonSlicer -m deepstd.worker): Slicer's PythonQt
        # starves Python threads. This timer reads what the child reported, without blocking,
        # and applies it (progress, previews, results, errors) on the GUI thread.
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self._pollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.bundleComboBox.connect("currentIndexChanged(int)", self.onBundleChanged)
        self.ui.loadBundleButton.connect("clicked(bool)", self.onLoadBundle)
        self.ui.showTemplateButton.connect("clicked(bool)", self.onShowTemplate)
        self.ui.dependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.cancelRegistrationButton.connect("clicked(bool)", self.onCancel)
        self.ui.compressButton.connect("clicked(bool)", self.onCompress)
        self.ui.decompressButton.connect("clicked(bool)", self.onDecompress)
        self.ui.previewRegionButton.connect("clicked(bool)", self.onPreviewRegion)
        self.ui.cancelCodingButton.connect("clicked(bool)", self.onCancel)
        self.ui.computeResidueButton.connect("clicked(bool)", self.onComputeResidue)
        self.ui.computeSegmentMetricsButton.connect("clicked(bool)", self.onComputeSegmentMetrics)
        self.ui.cancelQualityButton.connect("clicked(bool)", self.onCancel)
        self.ui.registrationProgressBar.hide()
        self.ui.codingProgressBar.hide()
        self.ui.qualityProgressBar.hide()

        self._populateBundles()
        self._showDependencyStatus()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._abandonJob()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        """The scene (and every node a job would update) is going away: end the job at once,
        without its callbacks, before any node is deleted."""
        if self._abandonJob():
            self._jobWidgets[2].text = _("Cancelled: the scene was closed.")
        self.setParameterNode(None)
        self._pickedFor = None

    def _abandonJob(self) -> bool:
        """Kill the running job without calling back into nodes; True if there was one."""
        if self._job is None:
            return False
        self._job.abandon()
        self._finishJob()
        return True

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not self._parameterNode.compressVolume:
            self._parameterNode.compressVolume = self._parameterNode.inputVolume
        if self._parameterNode.bundle:
            self._selectBundle(self._parameterNode.bundle)
        else:  # no silent default: picked by the volume's modality, or chosen by the user
            self.ui.bundleComboBox.setCurrentIndex(-1)
            self._pickBundle()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        """Enable what can run now; also picks the codec when the volume to compress changes."""
        p, idle = self._parameterNode, self._job is None
        if p is None:  # between scene close and the new parameter node
            return
        if caller is not None:
            self._pickBundle()
        self.ui.registerButton.enabled = idle and bool(p.inputVolume and p.templateVolume)
        self.ui.compressButton.enabled = idle and bool(p.compressVolume and p.bundle)
        self.ui.decompressButton.enabled = idle
        self.ui.previewRegionButton.enabled = idle
        self.ui.maxErrorSpinBox.enabled = p.useMaxError
        self.ui.ratioSliderWidget.enabled = not p.useMaxError
        self.ui.effortSpinBox.enabled = not p.useMaxError
        self.ui.showTemplateButton.enabled = bool(p.bundle)
        self.ui.computeResidueButton.enabled = idle and bool(p.originalVolume and p.decodedVolume)
        self.ui.computeSegmentMetricsButton.enabled = idle and bool(p.segmentationA and p.segmentationB)

    # --- Codec ----------------------------------------------------------------------------------
    def _populateBundles(self) -> None:
        self.ui.bundleComboBox.clear()
        for name, path in codec.bundles().shipped_bundles().items():
            self.ui.bundleComboBox.addItem(name, str(path))
        if not self.ui.bundleComboBox.count:
            self.ui.bundleDescriptionLabel.text = _(
                "No codec bundle is shipped with this version of the extension: load a bundle file."
            )

    def _selectBundle(self, value: str, why: str = "") -> None:
        index = self.ui.bundleComboBox.findData(value)
        if index < 0:
            index = self.ui.bundleComboBox.findText(value)
        if index < 0:
            self.ui.bundleComboBox.addItem(qt.QFileInfo(value).completeBaseName(), value)
            index = self.ui.bundleComboBox.count - 1
        self.ui.bundleComboBox.setCurrentIndex(index)
        self.onBundleChanged(index, why)

    def onBundleChanged(self, index, why: str = "") -> None:
        if index < 0 or not self._parameterNode:
            return
        path = self.ui.bundleComboBox.itemData(index)
        self._parameterNode.bundle = path
        try:
            text = DeepSTDCore.describe_bundle(path)
        except Exception as error:
            text = str(error)
        self.ui.bundleDescriptionLabel.text = text + (f"<br><i>{why}</i>" if why else "")

    def _pickBundle(self) -> None:
        """When the volume to compress changes, select the codec for its modality (from Slicer:
        DICOM attributes, subject hierarchy, voxel units) and say why; never a silent default."""
        p = self._parameterNode
        node = p.compressVolume if p else None
        if node is None or node is self._pickedFor:
            return
        self._pickedFor = node
        try:
            path, why = self.logic.bundleFor(node, p.bundle)
        except Exception as error:
            self.ui.bundleDescriptionLabel.text = _("Choose a codec: ") + str(error)
            return
        if path != p.bundle:
            self._selectBundle(path, why)
        else:
            self.onBundleChanged(self.ui.bundleComboBox.currentIndex, why)

    def onLoadBundle(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Load codec bundle"), "", _("DeepSTD codec bundle") + " (*.dstdb)"
        )
        if path:
            self._selectBundle(path)

    def onShowTemplate(self) -> None:
        try:
            template, _labels = self.logic.core.show_template(self._parameterNode.bundle)
        except Exception as error:
            self._showError(error, _("Could not load the template: "))
            return
        self._parameterNode.templateVolume = template
        slicer.util.resetSliceViews()

    def onInstallDependencies(self) -> None:
        try:
            self.logic.ensureDependencies()
        except Exception as error:
            self._showError(error)
        self._showDependencyStatus()

    def _showDependencyStatus(self) -> None:
        missing = dependencies.missing()
        self.ui.dependencyStatusLabel.text = (
            _("Python packages: all installed.")
            if not missing
            else _("Not installed yet (installed on first use, after asking): ") + ", ".join(missing)
        )

    # --- background jobs ------------------------------------------------------------------------
    def _startJob(self, start, progressBar, cancelButton, statusLabel) -> None:
        """Run `start()` (which returns a started Job) and drive its progress widgets (the
        progress bar and cancel button may be None)."""
        try:
            ready = self.logic.ensureDependencies()
        except Exception as error:  # a failed install, no PyTorch extension: a dialog, nothing started
            self._showError(error, statusLabel=statusLabel)
            self._showDependencyStatus()
            return
        if not ready:
            statusLabel.text = _("Cancelled: the required Python packages are not installed.")
            return
        if progressBar is not None:
            progressBar.value = 0
            progressBar.show()
        if cancelButton is not None:
            cancelButton.enabled = True
        self._jobWidgets = (progressBar, cancelButton, statusLabel)
        self.ui.codingWarningsLabel.text = ""
        try:
            self._job = start()
        except Exception as error:
            self._finishJob()
            self._onJobError(error)
            return
        self._updateButtons()
        self._timer.start()

    def _pollJob(self) -> None:
        if self._job is None:
            return
        try:
            running = self._job.poll()
        except Exception as error:  # a failing callback must not fire again every 100 ms
            running = False
            self._onJobError(error)
        if not running:
            self._finishJob()

    def _finishJob(self) -> None:
        self._timer.stop()
        self._job = None
        if self._jobWidgets:
            progressBar, cancelButton, _status = self._jobWidgets
            if progressBar is not None:
                progressBar.hide()
            if cancelButton is not None:
                cancelButton.enabled = False
        self._updateButtons()

    def onCancel(self) -> None:
        """Stops the running job: its worker process tree is terminated, nothing partial stays."""
        if self._job is not None:
            self._job.cancel()

    def _onProgress(self, event) -> None:
        progressBar, _cancel, statusLabel = self._jobWidgets
        if progressBar is not None:
            progressBar.value = int(100 * event.fraction)
        statusLabel.text = f"{event.stage}: {event.message}" if event.message else event.stage

    def _onJobError(self, error) -> None:
        statusLabel = self._jobWidgets[2] if self._jobWidgets else None
        if is_cancel(error):
            if statusLabel is not None:
                statusLabel.text = _("Cancelled.")
            return
        self._showError(error, statusLabel=statusLabel)

    def _showError(self, error, prefix: str = "", statusLabel=None) -> None:
        """Every failure the user causes or meets ends here: one clear message in a dialog, the
        traceback or the worker's output under "Show details", and the status line."""
        message, details = describe_error(error)
        if statusLabel is not None:
            statusLabel.text = _("Failed: ") + message
        logging.error(f"{prefix}{message}\n{details}" if details else prefix + message)
        slicer.util.errorDisplay(prefix + message, detailedText=details)

    # --- Registration ---------------------------------------------------------------------------
    def onRegister(self) -> None:
        p = self._parameterNode
        if not p.registrationTransform:
            p.registrationTransform = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLGridTransformNode",
                slicer.mrmlScene.GenerateUniqueName(f"{p.inputVolume.GetName()} to template"),
            )
        self._startJob(
            lambda: self.logic.core.start_registration(
                p.inputVolume,
                p.templateVolume,
                p.registrationTransform,
                on_status=self._onRegistrationStatus,
                on_error=self._onJobError,
                grid_mode=p.previewMode,
                device=p.device,
            ),
            self.ui.registrationProgressBar,
            self.ui.cancelRegistrationButton,
            self.ui.registrationStatusLabel,
        )

    def _onRegistrationStatus(self, status) -> None:
        self.ui.registrationProgressBar.value = int(100 * status.fraction)
        parts = [f"step {status.step}" if status.step is not None else status.message]
        if status.loss is not None:
            parts.append(f"loss {status.loss:.4f}")
        if status.folding is not None:
            parts.append(f"folding {100 * status.folding:.2f} %")
        parts.append(f"{status.elapsed:.0f} s")
        self.ui.registrationStatusLabel.text = " | ".join(parts)

    # --- Compress / Decompress ------------------------------------------------------------------
    def onCompress(self) -> None:
        p = self._parameterNode
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(),
            _("Compress to"),
            f"{p.compressVolume.GetName()}.dstd",
            _("DeepSTD compressed volume") + " (*.dstd)",
        )
        if not path:
            return
        if not path.endswith(".dstd"):
            path += ".dstd"
        try:
            bundle, why = self.logic.bundleFor(p.compressVolume, p.bundle)
        except Exception as error:
            self._showError(error, statusLabel=self.ui.codingStatusLabel)
            return
        self.ui.codingStatusLabel.text = _("Compressing with ") + f"{qt.QFileInfo(bundle).completeBaseName()} ({why})"
        self._startJob(
            lambda: self.logic.core.start_compress(
                p.compressVolume,
                bundle,
                p.ratio,
                p.device,
                path,
                on_progress=self._onProgress,
                on_done=self._onCompressed,
                on_error=self._onJobError,
                max_error=p.maxError if p.useMaxError else None,
                keep_node=p.keepVolume,
                keep_error=p.keepError,
                effort=p.effort,
            ),
            self.ui.codingProgressBar,
            self.ui.cancelCodingButton,
            self.ui.codingStatusLabel,
        )

    def _onCompressed(self, result) -> None:
        self.ui.codingStatusLabel.text = result.summary()
        self._showWarnings(result.warnings)

    def _showWarnings(self, warnings) -> None:
        """The codec's warnings (modality, scan unlike the template, finest rate reached)."""
        warnings = [w for w in warnings if w]
        self.ui.codingWarningsLabel.text = "\n".join(_("Warning: ") + w for w in warnings)

    def onDecompress(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Decompress"), "", _("DeepSTD compressed volume") + " (*.dstd)"
        )
        if not path:
            return
        self._startJob(
            lambda: self.logic.core.start_decompress(
                path,
                self._parameterNode.device,
                on_progress=self._onProgress,
                on_done=self._onDecompressed,
                on_error=self._onJobError,
            ),
            self.ui.codingProgressBar,
            self.ui.cancelCodingButton,
            self.ui.codingStatusLabel,
        )

    def onPreviewRegion(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(),
            _("Preview at the current slice"),
            "",
            _("DeepSTD compressed volume") + " (*.dstd)",
        )
        if not path:
            return
        slice_node = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        to_ras = slice_node.GetSliceToRAS()
        centre = [to_ras.GetElement(i, 3) for i in range(3)]
        normal = [to_ras.GetElement(i, 2) for i in range(3)]
        self._startJob(
            lambda: self.logic.core.start_slice_preview(
                path,
                centre,
                normal,
                device=self._parameterNode.device,
                on_progress=self._onProgress,
                on_done=self._onPreviewed,
                on_error=self._onJobError,
            ),
            self.ui.codingProgressBar,
            self.ui.cancelCodingButton,
            self.ui.codingStatusLabel,
        )

    def _onPreviewed(self, node) -> None:
        self.ui.codingStatusLabel.text = _("Previewing ") + node.GetName()
        self._showWarnings((node.GetAttribute(ATTR_WARNINGS) or "").split("\n"))
        slicer.util.setSliceViewerLayers(background=node)

    def _onDecompressed(self, node) -> None:
        self._parameterNode.decodedVolume = node
        self.ui.codingStatusLabel.text = _("Opened ") + node.GetName() + f" ({node.GetDescription()})"
        self._showWarnings((node.GetAttribute(ATTR_WARNINGS) or "").split("\n"))
        slicer.util.setSliceViewerLayers(background=node, fit=True)

    # --- Quality --------------------------------------------------------------------------------
    def onComputeResidue(self) -> None:
        p = self._parameterNode
        self.ui.qualityStatusLabel.text = _("Computing the residue and metrics...")
        self._startJob(
            lambda: self.logic.core.start_residue(
                p.originalVolume,
                p.decodedVolume,
                p.residueVolume,
                p.qualityTable,
                on_progress=self._onProgress,
                on_done=self._onResidue,
                on_error=self._onJobError,
            ),
            self.ui.qualityProgressBar,
            self.ui.cancelQualityButton,
            self.ui.qualityStatusLabel,
        )

    def _onResidue(self, result) -> None:
        residue, table, values = result
        self._parameterNode.residueVolume, self._parameterNode.qualityTable = residue, table
        self.ui.qualityStatusLabel.text = (
            f"MAE {values['MAE']:.3g} | PSNR {values['PSNR']:.2f} dB | SSIM {values['SSIM']:.4f}"
        )
        self._showTable(table)

    def onComputeSegmentMetrics(self) -> None:
        p = self._parameterNode
        self.ui.qualityStatusLabel.text = _("Comparing the segmentations...")
        self._startJob(
            lambda: self.logic.core.start_segment_metrics(
                p.segmentationA,
                p.segmentationB,
                p.originalVolume,
                p.segmentTable,
                on_progress=self._onProgress,
                on_done=self._onSegmentMetrics,
                on_error=self._onJobError,
            ),
            self.ui.qualityProgressBar,
            self.ui.cancelQualityButton,
            self.ui.qualityStatusLabel,
        )

    def _onSegmentMetrics(self, result) -> None:
        table, rows = result
        self._parameterNode.segmentTable = table
        self.ui.qualityStatusLabel.text = ", ".join(
            f"{r['Segment']}: Dice {r['Dice']:.3f}, HD95 {r['HD95']:.2f} mm" for r in rows
        )
        self._showTable(table)

    @staticmethod
    def _showTable(table) -> None:
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()


class DeepSTDSlicerLogic(ScriptedLoadableModuleLogic):
    """The module's logic for scripts and the Python console; the work is done by `self.core`.

    Example::

        logic = slicer.util.getModuleLogic("DeepSTDSlicer")
        result = logic.core.compress(volumeNode, "/tmp/scan.dstd", bundle="la-mr", ratio=128)
        node = logic.core.decompress("/tmp/scan.dstd")
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.core = DeepSTDCore()

    def getParameterNode(self):
        return DeepSTDSlicerParameterNode(super().getParameterNode())

    @staticmethod
    def ensureDependencies() -> bool:
        """Install missing packages after listing them and asking; False if the user declined.
        A failed install raises (the widget shows it in a dialog)."""
        return ensure_dependencies(lambda message: slicer.util.confirmOkCancelDisplay(message, windowTitle="DeepSTD"))

    def bundleFor(self, volumeNode, selected: str = ""):
        """(bundle file, why): the codec for this volume, by the modality Slicer knows for it."""
        return self.core.bundle_for_node(volumeNode, selected)


class DeepSTDSlicerTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (ctest py_DeepSTDSlicer, or Reload and Test); synthetic data, no network."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_volume_round_trip()
        self.setUp()
        self.test_registration_preview()
        self.setUp()
        self.test_residue_display()
        self.setUp()
        self.test_reader_rejects_other_files()
        self.setUp()
        self.test_worker_process()

    def _obliqueVolume(self):
        from deepstd.volume import Volume

        direction = np.array([[0.0, -0.8, 0.6], [1.0, 0.0, 0.0], [0.0, 0.6, 0.8]]).T @ np.diag([1.0, -1.0, 1.0])
        z, y, x = np.indices((7, 11, 13))
        return Volume(
            (100 * np.sin(x / 3.0) + 10 * z).astype(np.float32),
            (0.7, 0.9, 3.5),
            (-12.5, 40.25, 7.0),
            tuple(direction.reshape(-1)),
            "int16",
            "HU",
        )

    def test_volume_round_trip(self):
        volume = self._obliqueVolume()
        node = mrml.add_volume_node(volume, "oblique")
        back = mrml.volume_from_node(node)
        np.testing.assert_array_equal(back.array, volume.to_dtype_array())
        np.testing.assert_allclose(back.origin, volume.origin, atol=1e-6)
        np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)
        self.delayDisplay("Volume round trip passed")

    def test_registration_preview(self):
        import types

        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode")
        field = np.zeros((4, 5, 6, 3))
        field[..., 0] = 2.0  # LPS x: towards the left, i.e. -2 mm along RAS x
        snapshot = types.SimpleNamespace(
            displacement=field,
            spacing=(5.0, 5.0, 5.0),
            origin=(0.0, 0.0, 0.0),
            direction=tuple(np.eye(3).reshape(-1)),
            loss=-0.5,
            step=25,
        )
        DeepSTDCore().apply_snapshot(node, snapshot)
        moved = node.GetTransformFromParent().TransformPoint(-5.0, -5.0, 5.0)
        np.testing.assert_allclose(moved, (-7.0, -5.0, 5.0), atol=1e-6)
        self.delayDisplay("Registration preview passed")

    def test_residue_display(self):
        volume = self._obliqueVolume()
        node = mrml.add_volume_node(volume.with_array(volume.array - volume.array.mean()), "residue", cast=False)
        color = mrml.show_residue(node, 50.0)
        self.assertEqual(node.GetDisplayNode().GetColorNodeID(), color.GetID())
        self.assertAlmostEqual(node.GetDisplayNode().GetWindowLevelMin(), -50.0)
        self.delayDisplay("Residue display passed")

    def test_reader_rejects_other_files(self):
        import os
        import tempfile

        path = os.path.join(tempfile.mkdtemp(), "not-a-volume.dstd")
        with open(path, "wb") as stream:
            stream.write(b"not a DeepSTD file")
        self.assertEqual(DeepSTDSlicerFileReader(None).canLoadFileConfidence(path), 0.0)
        self.delayDisplay("Reader test passed")

    def test_worker_process(self):
        """A small job in the worker process (PythonSlicer -m deepstd.worker inside Slicer)."""
        import time

        from DeepSTDSlicerLib import jobs

        mask = np.zeros((4, 5, 6), bool)
        mask[1:3, 1:4, 2:5] = True
        box = {}
        job = jobs.start_worker(
            "segment_metrics",
            lambda folder: folder.add_arrays("masks", {"a0": mask, "b0": mask}),
            options={"pairs": [["a", "a"]], "spacing": [1.0, 1.0, 1.0]},
            on_done=lambda result: box.setdefault("result", result),
            on_error=lambda error: box.setdefault("error", error),
        )
        deadline = time.time() + 120
        while job.poll():
            self.assertLess(time.time(), deadline, "the worker process did not finish")
            job.wait(0.05)
        self.assertNotIn("error", box, getattr(box.get("error"), "details", box.get("error")))
        self.assertEqual(box["result"]["rows"][0]["Dice"], 1.0)
        self.delayDisplay("Worker process test passed")
