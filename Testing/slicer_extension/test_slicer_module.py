"""DeepSTDSlicer.py itself, its Widget and Logic included, against strict stand-ins for Qt, CTK,
Slicer's scripted-module classes, the parameter node wrapper, slicer.app and the GUI helpers of
slicer.util (`slicer_standins`): anything the module uses that the stand-ins do not declare fails
the test. MRML is slicer-core's real scene; jobs run the real worker process.

Covered: module description, IO plugins, the self-test, the widget's setup and button states,
the codec picked by the volume's modality (with the choice shown), a failing and a declined
install (a dialog, nothing started, nothing else broken), a crashed worker and a corrupt file
(dialogs with and without details), the quality job with progress, and closing the scene while
a registration runs (job killed, no callback into deleted nodes, no dialog).
"""

import importlib
import sys
import time
import types
import unittest
from pathlib import Path

import numpy as np
import pytest
from conftest import MODULE_DIR, require_slicer_core

slicer = require_slicer_core()
import slicer_standins as si  # noqa: E402

UI_FILE = MODULE_DIR / "Resources" / "UI" / "DeepSTDSlicer.ui"
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "hippocampus_mr" / "images"


@pytest.fixture
def dialogs():
    return si.Dialogs()


@pytest.fixture
def module(headless, monkeypatch, dialogs, tmp_path):
    for name, stand_in in si.stand_in_modules(UI_FILE).items():
        monkeypatch.setitem(sys.modules, name, stand_in)
    import slicer.util

    util = si.util_stand_ins(dialogs, UI_FILE)
    for name, function in util.items():
        monkeypatch.setattr(slicer.util, name, function, raising=False)
    monkeypatch.setattr(slicer, "app", si.App(headless, str(tmp_path)), raising=False)
    monkeypatch.setenv("DEEPSTD_WORKER_PYTHON", sys.executable)
    monkeypatch.setattr(si.ScriptedLoadableModuleWidget, "module_dir", MODULE_DIR)
    si.QFileDialog.answers, si.QFileDialog.asked = [], []
    si.MISSES.clear()
    monkeypatch.delitem(sys.modules, "DeepSTDSlicer", raising=False)
    yield importlib.import_module("DeepSTDSlicer")
    sys.modules.pop("DeepSTDSlicer", None)
    assert not si.MISSES, si.MISSES


@pytest.fixture
def widget(module):
    w = module.DeepSTDSlicerWidget()
    w.setup()
    yield w
    w._abandonJob()
    w.cleanup()


def run_job(widget, limit=300.0):
    """Drive the widget's timer as Slicer's event loop would, until the job ends."""
    deadline = time.time() + limit
    while widget._job is not None:
        assert time.time() < deadline, "the job did not finish"
        widget._job.wait(0.05)
        widget._timer.fire()


def volume_node(name, array, spacing=(1.0, 1.0, 1.0), **attributes):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.asarray(array))
    node.SetSpacing(*spacing)
    for key, value in attributes.items():
        node.SetAttribute(key.replace("_", "."), value)
    node.CreateDefaultDisplayNodes()
    return node


# --- the module file --------------------------------------------------------------------------


def test_module_description(module):
    parent = types.SimpleNamespace()
    module.DeepSTDSlicer(parent)
    assert parent.title == "DeepSTD" and parent.categories == ["Utilities"] and parent.dependencies == []
    assert "Codec" in parent.helpText and "Quality" in parent.helpText


def test_io_plugins_are_found_by_name(module):
    """qSlicerScriptedLoadableModule::registerIO looks these names up in the module."""
    assert module.DeepSTDSlicerFileReader(None).fileType() == "DeepSTDFile"
    assert module.DeepSTDSlicerFileWriter(None).fileType() == "DeepSTDFile"


def test_self_test_passes(module):
    result = unittest.TestResult()
    module.DeepSTDSlicerTest("runTest").run(result)
    assert result.wasSuccessful(), result.errors + result.failures


def test_strict_stand_ins_fail_loudly(module):
    """The point of the stand-ins: an unknown Qt or Slicer attribute is a failure, not a no-op."""
    import qt

    with pytest.raises(si.StandInMissing):
        qt.QMessageBox  # noqa: B018
    with pytest.raises(si.StandInMissing):
        hasattr(si.QLabel("x"), "setPixmap")  # hasattr cannot swallow it
    si.MISSES.clear()


# --- the widget -------------------------------------------------------------------------------


def test_widget_setup_and_buttons(widget, headless):
    ui = widget.ui
    assert ui.bundleComboBox.count == 4 and ui.bundleComboBox.currentIndex == -1  # no silent default
    assert widget._parameterNode.bundle == ""
    assert not ui.registerButton.enabled and not ui.compressButton.enabled and ui.decompressButton.enabled
    assert not ui.registrationProgressBar.visible and not ui.qualityProgressBar.visible
    assert widget._timer.interval == 100 and not widget._timer.active
    assert "installed" in ui.dependencyStatusLabel.text
    assert ui.effortSpinBox.enabled and ui.ratioSliderWidget.enabled
    widget._parameterNode.useMaxError = True  # a bound, not a size: no ratio, no effort
    assert not ui.effortSpinBox.enabled and not ui.ratioSliderWidget.enabled


def test_codec_is_picked_by_the_modality_slicer_knows(widget, headless):
    """A CT loaded by Slicer's DICOM module (modality on its subject-hierarchy item, no module
    attribute) gets the CT codec; an MR the MR codec of the closest field of view; the panel says why."""
    p = widget._parameterNode
    ct = volume_node("chest", np.zeros((20, 64, 64), np.int16), (5.0, 5.0, 5.0))
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(headless.scene)
    series = sh.CreateFolderItem(sh.GetSceneItemID(), "series")
    sh.SetItemAttribute(series, "DICOM.Modality", "CT")
    item = sh.GetItemByDataNode(ct) or sh.CreateItem(series, ct)  # Slicer's SH plugins make the item
    sh.SetItemParent(item, series)
    p.compressVolume = ct
    assert Path(p.bundle).stem == "ct-torso"
    assert "picked for CT" in widget.ui.bundleDescriptionLabel.text
    assert widget.ui.compressButton.enabled

    mr = volume_node("atrium", np.zeros((88, 150, 200), np.uint8), (0.625, 0.625, 0.625), DICOM_Modality="MR")
    p.compressVolume = mr
    assert Path(p.bundle).stem == "la-mr"
    assert "picked for MR" in widget.ui.bundleDescriptionLabel.text

    unknown = volume_node("unknown", np.zeros((8, 8, 8), np.int16))
    p.bundle = ""
    p.compressVolume = unknown
    assert p.bundle == "" and "modality is unknown" in widget.ui.bundleDescriptionLabel.text


def test_failing_install_shows_a_dialog_and_breaks_nothing(widget, module, monkeypatch, dialogs, tmp_path):
    from DeepSTDSlicerLib import dependencies

    monkeypatch.setattr(dependencies, "missing", lambda: ["torch", "torchvision", "scipy"])

    def ensure(confirm):
        raise RuntimeError("DeepSTD needs the PyTorch extension: install it from the Extensions Manager")

    monkeypatch.setattr(dependencies, "ensure", ensure)
    p = widget._parameterNode
    p.compressVolume = volume_node("scan", np.zeros((8, 8, 8), np.int16), DICOM_Modality="MR")
    si.QFileDialog.answers = [str(tmp_path / "out.dstd")]
    widget.ui.compressButton.click()
    (message,) = dialogs.confirms  # asked first, listing what would be installed
    assert "torch" in message and "scipy" in message
    ((text, details),) = dialogs.errors
    assert "Could not install" in text and "PyTorch extension" in text and "RuntimeError" in details
    assert widget._job is None and not widget._timer.active and not (tmp_path / "out.dstd").exists()
    assert widget.ui.codingStatusLabel.text.startswith("Failed:")
    assert widget.ui.compressButton.enabled and widget.ui.decompressButton.enabled
    assert "torch" in widget.ui.dependencyStatusLabel.text

    # the Install button takes the same path
    widget.ui.dependenciesButton.click()
    assert len(dialogs.errors) == 2


def test_declined_install_starts_nothing(widget, monkeypatch, dialogs, tmp_path):
    from DeepSTDSlicerLib import dependencies

    monkeypatch.setattr(dependencies, "missing", lambda: ["compressai"])
    monkeypatch.setattr(dependencies, "ensure", lambda confirm: pytest.fail("installed without consent"))
    dialogs.confirm_answer = False
    widget.ui.decompressButton.click()  # no file chosen: nothing asked
    assert not dialogs.confirms
    si.QFileDialog.answers = [str(tmp_path / "x.dstd")]
    widget.ui.decompressButton.click()
    assert dialogs.confirms and not dialogs.errors and widget._job is None
    assert "Cancelled" in widget.ui.codingStatusLabel.text


def test_corrupt_file_is_one_clear_message(widget, dialogs, tmp_path):
    bad = tmp_path / "bad.dstd"
    bad.write_bytes(b"DSTD" + b"\0" * 40)
    si.QFileDialog.answers = [str(bad)]
    widget.ui.decompressButton.click()
    ((text, details),) = dialogs.errors
    assert text and details is None and "Traceback" not in text
    assert widget._job is None and widget.ui.decompressButton.enabled


def test_crashed_worker_is_a_dialog_with_details(widget, monkeypatch, dialogs, tmp_path):
    crash = tmp_path / "crash.py"
    crash.write_text("import sys\nsys.stderr.write('Fatal Python error: Segmentation fault\\n')\nsys.exit(139)\n")
    monkeypatch.setenv("DEEPSTD_WORKER_PYTHON", str(tmp_path / "python-crash"))
    (tmp_path / "python-crash").write_text(f"#!/bin/sh\nexec {sys.executable} {crash}\n")
    (tmp_path / "python-crash").chmod(0o755)
    p = widget._parameterNode
    array = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8)
    p.originalVolume, p.decodedVolume = volume_node("a", array), volume_node("b", array + 1)
    widget.ui.computeResidueButton.click()
    run_job(widget, 60)
    ((text, details),) = dialogs.errors
    assert "stopped unexpectedly" in text and "Segmentation fault" in details
    assert widget.ui.qualityStatusLabel.text.startswith("Failed:") and widget.ui.computeResidueButton.enabled


def test_quality_job_reports_progress_and_fills_the_table(widget, dialogs):
    p = widget._parameterNode
    rng = np.random.default_rng(0)
    array = rng.integers(0, 200, (12, 20, 24)).astype(np.int16)
    p.originalVolume = volume_node("original", array)
    p.decodedVolume = volume_node("decoded", array + rng.integers(-2, 3, array.shape).astype(np.int16))
    widget.ui.computeResidueButton.click()
    assert widget.ui.qualityProgressBar.visible and widget.ui.cancelQualityButton.enabled
    run_job(widget, 120)
    assert not dialogs.errors
    assert "MAE" in widget.ui.qualityStatusLabel.text and "SSIM" in widget.ui.qualityStatusLabel.text
    assert p.residueVolume is not None and p.qualityTable.GetNumberOfRows() == 1
    assert not widget.ui.qualityProgressBar.visible and not widget.ui.cancelQualityButton.enabled


def test_scene_close_during_a_job(widget, headless, dialogs):
    """Closing the scene while a registration runs kills the worker at once; no callback touches
    the deleted nodes, no dialog appears, the buttons come back for the new scene."""
    files = sorted(DATA.glob("*.nii.gz"))[:2] if DATA.is_dir() else []
    if len(files) < 2:
        pytest.skip(f"real data not found at {DATA}")
    from deepstd import read
    from DeepSTDSlicerLib import mrml

    p = widget._parameterNode
    p.inputVolume = mrml.add_volume_node(read(files[0]), "moving")
    p.templateVolume = mrml.add_volume_node(read(files[1]), "template")
    widget.ui.registerButton.click()
    job = widget._job
    assert job is not None and not widget.ui.registerButton.enabled
    deadline = time.time() + 120
    while not widget.ui.registrationStatusLabel.text:  # the worker has reported: it is running
        assert time.time() < deadline and widget._job is not None, "the registration did not start"
        job.wait(0.1)
        widget._timer.fire()
    job.wait(1.0)
    headless.scene.Clear(0)  # File > Close Scene: StartCloseEvent, nodes removed, EndCloseEvent
    assert job.finished and job.returncode is not None and not job.folder.exists()
    assert widget._job is None and not widget._timer.active
    assert not dialogs.errors
    assert "scene was closed" in widget.ui.registrationStatusLabel.text
    assert not widget.ui.registrationProgressBar.visible and not widget.ui.cancelRegistrationButton.enabled
    widget._timer.fire()  # a late tick is harmless
    assert widget._parameterNode is not None and widget._parameterNode.inputVolume is None
    assert widget.ui.decompressButton.enabled and not widget.ui.registerButton.enabled
