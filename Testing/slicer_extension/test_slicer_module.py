"""DeepSTDSlicer.py itself, imported headless: Qt, CTK and Slicer's scripted-module base classes are
replaced by minimal stand-ins, so this checks that the module file imports with slicer-core's real
MRML classes, exposes the IO plugins by name, and that its self-test (DeepSTDSlicerTest) passes."""

import importlib
import sys
import types
import unittest

import pytest
from conftest import require_slicer_core

slicer = require_slicer_core()


def _stand_ins():
    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule, slm.ScriptedLoadableModuleWidget = ScriptedLoadableModule, ScriptedLoadableModuleWidget
    slm.ScriptedLoadableModuleLogic, slm.ScriptedLoadableModuleTest = (
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    )
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.Choice = pnw.WithinRange = lambda *args: None
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    return {
        "qt": types.ModuleType("qt"),
        "slicer.ScriptedLoadableModule": slm,
        "slicer.parameterNodeWrapper": pnw,
        "slicer.i18n": i18n,
    }


@pytest.fixture
def module(headless, monkeypatch):
    for name, stand_in in _stand_ins().items():
        monkeypatch.setitem(sys.modules, name, stand_in)
    monkeypatch.delitem(sys.modules, "DeepSTDSlicer", raising=False)
    yield importlib.import_module("DeepSTDSlicer")
    sys.modules.pop("DeepSTDSlicer", None)


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
