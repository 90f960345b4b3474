"""Strict stand-ins for what DeepSTDSlicer.py needs from Slicer's Qt side (qt, ctk, the scripted
module base classes, parameterNodeWrapper, slicer.app and the GUI helpers of slicer.util).

Every stand-in provides only what is declared here. Anything else raises `StandInMissing` (an
AssertionError, so `hasattr()` and `getattr(x, name, default)` cannot swallow it) and is recorded
in `MISSES`, which the fixtures check after each test: code that catches broad exceptions still
cannot hide the use of something the stand-ins do not know. Each declared member exists in
Slicer 5.10 with the same meaning (checked against Slicer's source when it was added here).
"""

from __future__ import annotations

import types
import typing
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Dict, List

import slicer
import vtk

MISSES: List[str] = []


class StandInMissing(AssertionError):
    """The code under test used something the strict stand-ins do not provide."""


def _miss(owner: str, name: str):
    text = f"{owner} has no {name!r} in the strict stand-ins: the module uses something they do not provide"
    MISSES.append(text)
    return StandInMissing(text)


class Strict:
    """Declared attributes only; any other read raises loudly."""

    _kind = "stand-in"
    _label = ""

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # Python's own protocol probes (copy, pickle, ...)
        raise _miss(f"{self._kind} {self._label}".strip(), name)


class StrictModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise _miss(f"module {self.__name__}", name)


def strict_module(name: str, **members) -> StrictModule:
    module = StrictModule(name)
    for key, value in members.items():
        setattr(module, key, value)
    return module


# --- widgets ------------------------------------------------------------------------------------


class Signals(Strict):
    """`connect(signal, slot)` as PythonQt has it, plus `emit` for tests."""

    def __init__(self):
        self._slots: Dict[str, List[Callable]] = {}

    def connect(self, signal: str, slot: Callable) -> bool:
        self._slots.setdefault(signal, []).append(slot)
        return True

    def emit(self, signal: str, *args) -> None:
        """Call the slots as PythonQt does: with as many of the signal's arguments as each takes."""
        import inspect

        for slot in self._slots.get(signal, []):
            params = inspect.signature(slot).parameters.values()
            if any(p.kind == p.VAR_POSITIONAL for p in params):
                slot(*args)
            else:
                slot(*args[: sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)])


class QWidget(Signals):
    _kind = "QWidget"

    def __init__(self, label: str = ""):
        super().__init__()
        self._label = label
        self.enabled = True
        self.visible = True
        self.toolTip = ""

    def show(self):
        self.visible = True

    def hide(self):
        self.visible = False


class QLabel(QWidget):
    _kind = "QLabel"

    def __init__(self, label=""):
        super().__init__(label)
        self.text = ""


class QPushButton(QLabel):
    _kind = "QPushButton"

    def click(self):
        if self.enabled:
            self.emit("clicked(bool)", False)


class QCheckBox(QPushButton):
    _kind = "QCheckBox"

    def __init__(self, label=""):
        super().__init__(label)
        self.checked = False


class QProgressBar(QWidget):
    _kind = "QProgressBar"

    def __init__(self, label=""):
        super().__init__(label)
        self.value = 0


class QDoubleSpinBox(QProgressBar):
    _kind = "QDoubleSpinBox"


class QSpinBox(QProgressBar):
    _kind = "QSpinBox"


class ctkSliderWidget(QProgressBar):  # noqa: N801  (Slicer's class name)
    _kind = "ctkSliderWidget"


class ctkCollapsibleButton(QWidget):  # noqa: N801
    _kind = "ctkCollapsibleButton"

    def __init__(self, label=""):
        super().__init__(label)
        self.collapsed = False


class QComboBox(QWidget):
    _kind = "QComboBox"

    def __init__(self, label=""):
        super().__init__(label)
        self._items: List[tuple] = []
        self.currentIndex = -1

    @property
    def count(self):
        return len(self._items)

    def clear(self):
        self._items.clear()
        self.setCurrentIndex(-1)

    def addItem(self, text, data=None):  # noqa: N802
        self._items.append((text, data))
        if self.currentIndex < 0:
            self.setCurrentIndex(0)

    def itemData(self, index):  # noqa: N802
        return self._items[index][1]

    def itemText(self, index):  # noqa: N802
        return self._items[index][0]

    def findData(self, data):  # noqa: N802
        return next((i for i, item in enumerate(self._items) if item[1] == data), -1)

    def findText(self, text):  # noqa: N802
        return next((i for i, item in enumerate(self._items) if item[0] == text), -1)

    def setCurrentIndex(self, index):  # noqa: N802
        if index != self.currentIndex:
            self.currentIndex = index
            self.emit("currentIndexChanged(int)", index)

    @property
    def currentText(self):
        return self._items[self.currentIndex][0] if self.currentIndex >= 0 else ""


class qMRMLNodeComboBox(QWidget):  # noqa: N801
    _kind = "qMRMLNodeComboBox"

    def __init__(self, label=""):
        super().__init__(label)
        self._node = None

    def setMRMLScene(self, scene):  # noqa: N802
        self.scene = scene

    def currentNode(self):  # noqa: N802
        return self._node

    def setCurrentNode(self, node):  # noqa: N802
        self._node = node
        self.emit("currentNodeChanged(vtkMRMLNode*)", node)


class qMRMLWidget(QWidget):  # noqa: N801
    _kind = "qMRMLWidget"

    def setMRMLScene(self, scene):  # noqa: N802
        self.scene = scene


WIDGETS = {
    cls.__name__: cls
    for cls in (
        QLabel,
        QPushButton,
        QCheckBox,
        QProgressBar,
        QDoubleSpinBox,
        QSpinBox,
        QComboBox,
        ctkSliderWidget,
        ctkCollapsibleButton,
        qMRMLNodeComboBox,
        qMRMLWidget,
    )
}


class UiNamespace(Strict):
    """What `slicer.util.childWidgetVariables` returns: one attribute per named widget of the .ui
    file, of a stand-in of that widget's class (unknown classes and names are refused)."""

    _kind = "ui"

    def __init__(self, ui_file: Path):
        self._label = ui_file.name
        for widget in ET.parse(ui_file).getroot().iter("widget"):
            cls = widget.get("class")
            if not widget.get("name"):  # unnamed containers: childWidgetVariables skips them too
                continue
            if cls not in WIDGETS:
                raise StandInMissing(f"no stand-in for the .ui widget class {cls}")
            setattr(self, widget.get("name"), WIDGETS[cls](widget.get("name")))


# --- qt ------------------------------------------------------------------------------------------


class QTimer(Signals):
    _kind = "QTimer"

    def __init__(self):
        super().__init__()
        self.active = False
        self.interval = 0

    def setInterval(self, msec):  # noqa: N802
        self.interval = msec

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def fire(self):  # tests: one tick
        if self.active:
            self.emit("timeout()")


class QFileDialog(Strict):
    """Tests put the answers the user would give in `answers` (None = Cancel)."""

    _kind = "QFileDialog"
    answers: List[Any] = []
    asked: List[tuple] = []

    @classmethod
    def _answer(cls, *args):
        cls.asked.append(args)
        return cls.answers.pop(0) if cls.answers else ""

    @classmethod
    def getSaveFileName(cls, *args):  # noqa: N802
        return cls._answer(*args)

    @classmethod
    def getOpenFileName(cls, *args):  # noqa: N802
        return cls._answer(*args)


class QFileInfo(Strict):
    _kind = "QFileInfo"

    def __init__(self, path):
        self._path = Path(str(path))

    def completeBaseName(self):  # noqa: N802
        return self._path.name.split(".")[0]


# --- Slicer's scripted-module classes and parameter node wrapper ---------------------------------


class ScriptedLoadableModule(Strict):
    _kind = "ScriptedLoadableModule"

    def __init__(self, parent):
        self.parent = parent


class ModulePanel(Strict):
    """The widget's `parent`: Slicer's module panel (isEntered) and its layout."""

    _kind = "module panel"

    def __init__(self):
        self.isEntered = True
        self.added: List[Any] = []

    def addWidget(self, widget):  # noqa: N802  (the layout's method)
        self.added.append(widget)


class ScriptedLoadableModuleWidget(Strict):
    _kind = "ScriptedLoadableModuleWidget"
    module_dir: Path = Path(".")

    def __init__(self, parent=None):
        self.parent = parent if parent is not None else ModulePanel()
        self.layout = self.parent
        self.moduleName = "DeepSTDSlicer"

    def setup(self):
        pass

    def resourcePath(self, name):  # noqa: N802
        return str(self.module_dir / "Resources" / name)


class ScriptedLoadableModuleLogic(Strict):
    _kind = "ScriptedLoadableModuleLogic"

    def __init__(self, parent=None):
        self.moduleName = "DeepSTDSlicer"

    def getParameterNode(self):  # noqa: N802
        """The module's singleton vtkMRMLScriptedModuleNode, created on first use (as Slicer does)."""
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            node.SetAttribute("ModuleName", self.moduleName)
            node = scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(Strict):
    _kind = "ScriptedLoadableModuleTest"


def parameter_node_wrapper(cls):
    """A working stand-in of `slicer.parameterNodeWrapper.parameterNodeWrapper`: fields stored in
    the scripted module node (strings as parameters, nodes as references), `connectGui`/
    `disconnectGui`, and observers delegated to the node (what VTKObservationMixin calls)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {}
    for name, hint in hints.items():
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
        fields[name] = (base, getattr(cls, name, None))

    class Wrapper(Strict):
        _kind = "parameter node"

        def __init__(self, node):
            object.__setattr__(self, "parameterNode", node)
            object.__setattr__(self, "_guis", {})

        def __getattr__(self, name):
            if name not in fields:
                return Strict.__getattr__(self, name)
            base, default = fields[name]
            node = self.parameterNode
            if isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode):
                return node.GetNodeReference(name)
            text = node.GetParameter(name)
            if not text:
                return default if default is not None else base()
            if base is bool:
                return text == "true"
            return base(text)

        def __setattr__(self, name, value):
            if name not in fields:
                raise _miss("parameter node", name)
            base, _default = fields[name]
            node = self.parameterNode
            if isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode):
                node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            elif base is bool:
                node.SetParameter(name, "true" if value else "false")
            else:
                node.SetParameter(name, str(value))

        def connectGui(self, gui):  # noqa: N802
            tag = len(self._guis) + 1
            self._guis[tag] = gui
            return tag

        def disconnectGui(self, tag):  # noqa: N802
            self._guis.pop(tag, None)

        def AddObserver(self, event, callback, priority=0.0):  # noqa: N802
            return self.parameterNode.AddObserver(event, callback, priority)

        def RemoveObserver(self, tag):  # noqa: N802
            self.parameterNode.RemoveObserver(tag)

        def __bool__(self):
            return True

    Wrapper.__name__ = cls.__name__
    return Wrapper


# --- slicer.app and the GUI helpers of slicer.util ------------------------------------------------


class LayoutManager(Strict):
    _kind = "layoutManager"

    def __init__(self):
        self.layout = None

    def setLayout(self, layout):  # noqa: N802
        self.layout = layout


class App(Strict):
    """slicer.app: temporary folder, layout manager and application logic (the headless one)."""

    _kind = "slicer.app"

    def __init__(self, headless, temporary_path: str):
        self.temporaryPath = temporary_path
        self.slicerHome = str(Path(temporary_path) / "no-slicer-home")
        self._layout = LayoutManager()
        self._app_logic = headless.app

    def layoutManager(self):  # noqa: N802
        return self._layout

    def applicationLogic(self):  # noqa: N802
        return self._app_logic


class Dialogs:
    """Records what `slicer.util.errorDisplay` / `confirmOkCancelDisplay` would show."""

    def __init__(self):
        self.errors: List[tuple] = []
        self.confirms: List[str] = []
        self.confirm_answer = True

    def errorDisplay(self, text, windowTitle=None, parent=None, standardButtons=None, **kwargs):  # noqa: N802
        unknown = set(kwargs) - {"detailedText"}
        if unknown:
            raise _miss("slicer.util.errorDisplay", ", ".join(sorted(unknown)))
        self.errors.append((text, kwargs.get("detailedText")))

    def confirmOkCancelDisplay(self, text, windowTitle=None, parent=None, **kwargs):  # noqa: N802
        if kwargs:
            raise _miss("slicer.util.confirmOkCancelDisplay", ", ".join(sorted(kwargs)))
        self.confirms.append(text)
        return self.confirm_answer


def stand_in_modules(ui_file: Path) -> Dict[str, types.ModuleType]:
    """The modules DeepSTDSlicer.py imports that slicer-core lacks, all strict."""
    qt = strict_module("qt", QTimer=QTimer, QFileDialog=QFileDialog, QFileInfo=QFileInfo)
    ctk = strict_module("ctk")
    slm = strict_module(
        "slicer.ScriptedLoadableModule",
        ScriptedLoadableModule=ScriptedLoadableModule,
        ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest=_unittest_base(),
    )
    pnw = strict_module(
        "slicer.parameterNodeWrapper",
        parameterNodeWrapper=parameter_node_wrapper,
        Choice=lambda choices: ("Choice", tuple(choices)),
        WithinRange=lambda low, high: ("WithinRange", low, high),
    )
    i18n = strict_module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text)
    return {
        "qt": qt,
        "ctk": ctk,
        "slicer.ScriptedLoadableModule": slm,
        "slicer.parameterNodeWrapper": pnw,
        "slicer.i18n": i18n,
    }


def _unittest_base():
    import unittest

    class Test(unittest.TestCase):
        def delayDisplay(self, message, msec=None):  # noqa: N802
            pass

    return Test


def util_stand_ins(dialogs: Dialogs, ui_file: Path) -> Dict[str, Callable]:
    """slicer.util functions that need the real application, replaced for the widget tests."""
    root = qMRMLWidget("DeepSTDSlicer")
    calls: Dict[str, list] = {"setSliceViewerLayers": [], "resetSliceViews": []}

    def set_layers(**kwargs):
        unknown = set(kwargs) - {"background", "foreground", "label", "foregroundOpacity", "fit"}
        if unknown:
            raise _miss("slicer.util.setSliceViewerLayers", ", ".join(sorted(unknown)))
        calls["setSliceViewerLayers"].append(kwargs)

    def load_ui(path):
        if Path(path) != ui_file:
            raise _miss("slicer.util.loadUI", str(path))
        return root

    return {
        "loadUI": load_ui,
        "childWidgetVariables": lambda widget: UiNamespace(ui_file),
        "errorDisplay": dialogs.errorDisplay,
        "confirmOkCancelDisplay": dialogs.confirmOkCancelDisplay,
        "mainWindow": lambda: None,
        "setSliceViewerLayers": set_layers,
        "resetSliceViews": lambda: calls["resetSliceViews"].append(True),
        "startupEnvironment": lambda: None,
        "_calls": calls,
    }


__all__ = ["MISSES", "StandInMissing", "Dialogs", "App", "QFileDialog", "stand_in_modules", "util_stand_ins", "vtk"]
