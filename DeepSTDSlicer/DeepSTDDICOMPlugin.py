"""DICOM plugin: DeepSTD objects in Slicer's DICOM database load as decoded volumes.

A DeepSTD object (one Raw Data Storage instance holding a `.dstd` file, see
deepstd.dicom_object) is listed in the DICOM browser under its series description, selected over
the generic readers, with a lossy-compression warning; loading decodes it into a scalar volume
node that carries the `.dstd` reader's attributes and the note "lossy compressed (DeepSTD, N:1)".

Slicer discovers this file as a hidden scripted module (class `DeepSTDDICOMPlugin`); its
constructor registers `DeepSTDDICOMPluginClass` in `slicer.modules.dicomPlugins`, where the DICOM
module finds its plugins (as Slicer's own DICOMScalarVolumePlugin does). The work is done by the
Qt-free `DeepSTDSlicerLib.dicom_plugin` (tested headless); this file only adapts it to DICOMLib.
"""

import logging

import slicer
from DICOMLib import DICOMLoadable, DICOMPlugin

from DeepSTDSlicerLib import dicom_plugin


class DeepSTDDICOMPluginClass(DICOMPlugin):
    """Examines DICOM files for DeepSTD objects and loads them (DICOMLib plugin interface)."""

    def __init__(self):
        super().__init__()
        self.loadType = dicom_plugin.LOAD_TYPE
        # the SOP class is asked of the database for every file: cached with the other tags
        self.tags["sopClassUID"] = dicom_plugin.SOP_CLASS_TAG

    def examineForImport(self, fileLists):
        """One loadable per DeepSTD object in each list of files (results cached per list)."""
        loadables = []
        for files in fileLists:
            cached = self.getCachedLoadables(files)
            if cached is None:
                cached = self.examineFiles(files)
                self.cacheLoadables(files, cached)
            loadables += cached
        return loadables

    def examine(self, fileLists):
        """The name older Slicer versions call."""
        return self.examineForImport(fileLists)

    def examineFiles(self, files):
        loadables = []
        for candidate in dicom_plugin.examine_files(list(files), self._sopClass):
            loadable = DICOMLoadable()
            loadable.files = list(candidate.files)
            loadable.name = candidate.name
            loadable.tooltip = candidate.tooltip
            loadable.warning = candidate.warning
            loadable.selected = candidate.selected
            loadable.confidence = candidate.confidence
            loadables.append(loadable)
        return loadables

    def _sopClass(self, path):
        """The SOP class UID the DICOM database has for `path` (None without a database)."""
        database = getattr(slicer, "dicomDatabase", None)
        if database is None:
            return None
        return database.fileValue(path, self.tags["sopClassUID"])

    def load(self, loadable):
        """Decode the object into a volume node; on failure say why (log and message box) and
        return False, so the browser lists it under "Could not load"."""
        try:
            node = dicom_plugin.load_object(loadable.files[0], loadable.name)
        except dicom_plugin.LoadError as error:
            logging.error(str(error))
            slicer.util.errorDisplay(str(error), windowTitle="DeepSTD")
            return False
        self.addSeriesInSubjectHierarchy(loadable, node)
        return node


class DeepSTDDICOMPlugin:
    """The hook that makes Slicer load this file as a (hidden) module and register the plugin."""

    def __init__(self, parent):
        parent.title = "DeepSTD DICOM Plugin"
        parent.categories = ["Developer Tools.DICOM Plugins"]
        parent.contributors = ["DeepSTD developers"]
        parent.helpText = (
            "Plugin to the DICOM module: loads DeepSTD objects (compressed series stored as one DICOM "
            "instance) as decoded volumes. No module interface here, only in the DICOM module."
        )
        parent.acknowledgementText = "Method: Yang, Xiao, Cheng et al., DeepSTD, Nature Communications 17, 1573 (2026)."
        parent.dependencies = []
        parent.hidden = True
        # The DICOM module reads its plugins from this dictionary. This module may be created
        # before the DICOM module, so create the dictionary if it is not there yet.
        if not hasattr(slicer.modules, "dicomPlugins"):
            slicer.modules.dicomPlugins = {}
        slicer.modules.dicomPlugins["DeepSTDDICOMPlugin"] = DeepSTDDICOMPluginClass
