"""`.dstd` reader and writer plugins: File › Add Data, drag-and-drop, and Save.

Slicer finds these classes by name as attributes of the DeepSTDSlicer module (it imports them),
creates them at start-up with a `parent` (qSlicerScriptedFileReader/Writer) and calls the
methods below. Construction must stay cheap: deepstd is imported only when a file is read or
written. Errors go to `parent.userMessages()`, which Slicer shows to the user. Opening a file
while DeepSTD's Python packages are missing offers to install them (listing them, asking first)
instead of failing with "cannot be imported".
"""

from __future__ import annotations

import logging
import os

import vtk

FILE_TYPE = "DeepSTDFile"
MAGIC = b"DSTD"


def _report(parent, error: BaseException, action: str) -> bool:
    text = f"{action}: {error}"
    logging.error(text)
    parent.userMessages().AddMessage(vtk.vtkCommand.ErrorEvent, text)
    return False


def offer_install() -> bool:
    """True when DeepSTD's packages are installed, or were just installed after the user agreed
    (inside Slicer: a dialog lists them first). False if they declined or there is no GUI to ask."""
    from . import dependencies
    from .core import ensure_dependencies

    if not dependencies.missing():
        return True
    import slicer

    util = getattr(slicer, "util", None)
    if getattr(slicer, "app", None) is None or util is None:  # headless: nobody to ask
        return False
    return ensure_dependencies(lambda message: util.confirmOkCancelDisplay(message, windowTitle="DeepSTD"))


class DeepSTDSlicerFileReader:
    """Opens a `.dstd` file as a scalar volume, exactly as `deepstd decode` would write it."""

    def __init__(self, parent):
        self.parent = parent

    def description(self):
        return "DeepSTD compressed volume"

    def fileType(self):
        return FILE_TYPE

    def extensions(self):
        return ["DeepSTD compressed volume (*.dstd)"]

    def canLoadFileConfidence(self, filePath):
        """Above the extension-based default (0.55) when the file starts with the .dstd magic."""
        try:
            with open(filePath, "rb") as stream:
                return 0.9 if stream.read(len(MAGIC)) == MAGIC else 0.0
        except OSError:
            return 0.0

    def load(self, properties):
        from .core import DeepSTDCore

        path = properties["fileName"]
        try:
            if not offer_install():
                raise RuntimeError(
                    "opening .dstd files needs DeepSTD's Python packages, which are not installed: "
                    "install them when asked, or with 'Install dependencies...' in the DeepSTD module"
                )
            core = DeepSTDCore()
            decoded = core.decode_file(path, core.settings()["device"])
            node = core.add_decoded_node(decoded, path, properties.get("name"))
        except Exception as error:  # any failure must reach the user as a message, not a traceback
            return _report(self.parent, error, f"Could not open {os.path.basename(path)}")
        self.parent.loadedNodes = [node.GetID()]
        return True


class DeepSTDSlicerFileWriter:
    """Saves a scalar volume as `.dstd` with the bundle, ratio and device chosen in the module."""

    def __init__(self, parent):
        self.parent = parent

    def description(self):
        return "DeepSTD compressed volume"

    def fileType(self):
        return FILE_TYPE

    def extensions(self, obj):
        return ["DeepSTD compressed volume (.dstd)"]

    def canWriteObjectConfidence(self, obj):
        """Offered for single-component scalar volumes only (not label maps, vector, tensor or
        diffusion volumes, which the codec cannot represent), below Slicer's lossless formats."""
        from . import mrml

        return 0.3 if mrml.is_scalar_volume(obj) else 0.0

    def write(self, properties):
        import slicer

        from . import codec, mrml
        from .core import DeepSTDCore

        path = properties["fileName"]
        try:
            node = slicer.mrmlScene.GetNodeByID(properties["nodeID"])
            mrml.require_scalar_volume(node)
            if not offer_install():
                raise codec.CodecUnavailable("saving .dstd files needs DeepSTD's Python packages (not installed)")
            core = DeepSTDCore()
            settings = core.settings()
            bundle, why = core.bundle_for_node(node, settings["bundle"])  # by modality, never a silent default
            logging.info(f"Saving {node.GetName()} as .dstd with {bundle} ({why})")
            data = codec.encode(mrml.volume_from_node(node), bundle, settings["ratio"], settings["device"])
            codec.write_atomic(path, data)
        except Exception as error:  # any failure must reach the user as a message, not a traceback
            return _report(self.parent, error, f"Could not save {os.path.basename(path)}")
        self.parent.writtenNodes = [node.GetID()]
        return True
