"""The DeepSTD DICOM plugin, on real files: a DeepSTD object made from a real scan (hippocampus MR,
bundle hippocampus-mr, 64:1) next to a real CT slice and a look-alike Raw Data object.

Slicer's DICOMLib (Qt, CTK, the DICOM database) cannot be imported headless, so the examine/load
logic is tested in the Qt-free `DeepSTDSlicerLib.dicom_plugin`, and the thin DICOMLib subclass
(DeepSTDDICOMPlugin.py) against a strict stand-in of DICOMLib's DICOMPlugin/DICOMLoadable: it has
only the members of the real base class, and any other attribute fails the test loudly.
"""

import importlib
import shutil
import sys
import types

import numpy as np
import pytest
import vtk
from conftest import require_slicer_core
from shared_data import data_path

slicer = require_slicer_core()
import slicer.util  # noqa: E402, F811

from DeepSTDSlicerLib import core, dicom_plugin, mrml  # noqa: E402
from DeepSTDSlicerLib.io import DeepSTDSlicerFileReader  # noqa: E402

BUNDLE = "hippocampus-mr"


# --- real files -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory, one_thread):
    """A real DeepSTD object (and its .dstd bytes) from a real scan, encoded once per module."""
    import deepstd
    from deepstd.bundle import load_bundle, shipped_bundles
    from deepstd.codec import encode
    from deepstd.dicom_object import write_object

    if BUNDLE not in shipped_bundles():
        pytest.skip(f"needs the shipped bundle {BUNDLE}")
    scan = deepstd.read(data_path("hippocampus_mr", "images", "hippocampus_338.nii.gz"))
    dstd = encode(scan, load_bundle(BUNDLE), ratio=64, require_texture=True)  # a file that needs its bundle
    folder = tmp_path_factory.mktemp("deepstd_object")
    path = write_object(dstd, scan.meta, folder / "object.dcm")
    # the series is named by the achieved ratio (64x asked, up to 2 % less bytes written)
    ratio = f"{scan.raw_bytes / len(dstd):.0f}"
    return types.SimpleNamespace(path=path, dstd=dstd, scan=scan, name=f"DeepSTD {ratio}x", ratio=f"{ratio}:1")


@pytest.fixture
def folder(made, tmp_path):
    """A folder as the DICOM database would list it: the DeepSTD object, a CT slice, a Raw Data
    object of another vendor (same group and offsets, another private creator) and a damaged
    DeepSTD object (payload bytes changed)."""
    import pydicom

    obj = tmp_path / "object.dcm"
    shutil.copy(made.path, obj)
    ct = tmp_path / "ct.dcm"
    shutil.copy(data_path("ct", "chest_ct_dicom", "1-01.dcm"), ct)

    other = pydicom.dcmread(made.path)
    for tag in [t for t in other.keys() if t.group == 0x0009]:
        del other[tag]
    other.private_block(0x0009, "OTHERVENDOR 1", create=True).add_new(0x10, "OB", made.dstd)
    other.SeriesDescription = "vendor raw data"
    raw = tmp_path / "raw.dcm"
    other.save_as(raw, enforce_file_format=True)

    data = bytearray(made.path.read_bytes())
    at = data.find(made.dstd)
    assert at > 0
    data[at + len(made.dstd) // 2] ^= 0xFF
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(bytes(data))
    return types.SimpleNamespace(object=str(obj), ct=str(ct), raw=str(raw), corrupt=str(corrupt))


def sop_class_from_file(path):
    """What Slicer's DICOM database answers for tag 0008,0016 (read here with pydicom)."""
    import pydicom

    return str(pydicom.dcmread(path, specific_tags=["SOPClassUID"]).get("SOPClassUID", ""))


def array_and_matrix(node):
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVolume(node).copy(), slicer.util.arrayFromVTKMatrix(matrix)


# --- examining ------------------------------------------------------------------------------------


def test_examine_lists_the_deepstd_object_and_nothing_else(folder, made, monkeypatch):
    from deepstd import dicom_object

    opened = []
    real = dicom_object.is_deepstd_object
    monkeypatch.setattr(dicom_object, "is_deepstd_object", lambda p: opened.append(p) or real(p))
    for sop_class_of in (None, sop_class_from_file):
        opened.clear()
        found = dicom_plugin.examine_files([folder.ct, folder.raw, folder.object], sop_class_of)
        assert [c.files for c in found] == [[folder.object]]
        # with the database's SOP class the CT slice is never opened by the plugin
        assert (folder.ct in opened) == (sop_class_of is None)
    (candidate,) = found
    assert candidate.name == made.name  # the object's SeriesDescription
    assert made.ratio in candidate.tooltip and f"'{BUNDLE}'" in candidate.tooltip
    assert candidate.warning.startswith(f"Lossy compressed (DeepSTD, {made.ratio})")
    assert candidate.selected and candidate.confidence > 0.5  # above DICOMScalarVolumePlugin's


def test_an_object_of_the_refinement_layer_alone_says_it_needs_no_bundle():
    candidate = dicom_plugin.describe("/x/object.dcm", {"ratio": 512.3, "bundle": None, "payload_bytes": 240})
    assert "512:1, no codec bundle (the refinement layer alone)" in candidate.tooltip
    assert candidate.warning.endswith("Decoding needs no codec bundle (the refinement layer alone).")


def test_a_raw_data_object_of_another_vendor_is_not_claimed(folder):
    from deepstd.dicom_object import RAW_DATA_STORAGE

    assert sop_class_from_file(folder.raw) == RAW_DATA_STORAGE == dicom_plugin.RAW_DATA_STORAGE
    assert dicom_plugin.examine_files([folder.raw], sop_class_from_file) == []
    assert dicom_plugin.examine_files([folder.ct]) == []


def test_a_damaged_object_is_listed_but_fails_to_load_with_a_clear_message(folder, made, headless):
    (candidate,) = dicom_plugin.examine_files([folder.corrupt], sop_class_from_file)
    assert candidate.name == made.name
    with pytest.raises(dicom_plugin.LoadError) as caught:
        dicom_plugin.load_object(folder.corrupt, candidate.name)
    text = str(caught.value)
    assert "corrupt.dcm" in text and "corrupt (SHA-256 mismatch)" in text and "Traceback" not in text
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


# --- loading --------------------------------------------------------------------------------------


def test_load_decodes_exactly_as_the_package_and_the_dstd_reader(folder, made, headless, tmp_path):
    import deepstd.codec
    from deepstd.bundle import load_bundle
    from deepstd.dicom_object import unwrap

    node = dicom_plugin.load_object(folder.object, made.name)
    assert node.GetName() == made.name and node.IsA("vtkMRMLScalarVolumeNode")
    voxels, matrix = array_and_matrix(node)

    # what the package decodes from the unwrapped bytes, put in RAS as the module does
    payload = unwrap(folder.object)
    assert payload == made.dstd
    direct = deepstd.codec.decode(payload, load_bundle(BUNDLE))
    np.testing.assert_array_equal(voxels, direct.to_dtype_array())
    assert voxels.dtype == direct.to_dtype_array().dtype
    np.testing.assert_allclose(matrix, mrml.ijk_to_ras(direct), atol=1e-9)

    # the .dstd reader's node from the same bytes: same voxels, geometry and attributes
    path = tmp_path / "same.dstd"
    path.write_bytes(payload)
    parent = types.SimpleNamespace(loadedNodes=[], userMessages=lambda: None)
    assert DeepSTDSlicerFileReader(parent).load({"fileName": str(path)})
    reader = headless.scene.GetNodeByID(parent.loadedNodes[0])
    reader_voxels, reader_matrix = array_and_matrix(reader)
    np.testing.assert_array_equal(voxels, reader_voxels)
    np.testing.assert_array_equal(matrix, reader_matrix)
    for attribute in (
        core.ATTR_RATIO,
        core.ATTR_BUNDLE,
        core.ATTR_BUNDLE_ID,
        core.ATTR_ENCODER,
        core.ATTR_WARNINGS,
        core.ATTR_LOSSY,
        mrml.ATTR_DTYPE,
        mrml.ATTR_UNITS,
    ):
        assert node.GetAttribute(attribute) == reader.GetAttribute(attribute), attribute
    assert node.GetAttribute(core.ATTR_BUNDLE) == BUNDLE
    assert 60 < float(node.GetAttribute(core.ATTR_RATIO)) < 70
    header = deepstd.codec.header.DstdHeader.from_dict(deepstd.container.unpack(payload).header)
    assert node.GetAttribute(core.ATTR_ENCODER) == (header.encoder_version or "")  # a lean header has none
    assert node.GetAttribute(core.ATTR_WARNINGS) == "\n".join(header.warnings)
    assert node.GetAttribute(core.ATTR_LOSSY) == f"lossy compressed (DeepSTD, {made.ratio})" == node.GetDescription()
    assert node.GetAttribute(core.ATTR_SOURCE) == folder.object
    assert node.GetAttribute("DeepSTD.dicomInstanceUID") == str(
        __import__("pydicom").dcmread(folder.object, stop_before_pixels=True).SOPInstanceUID
    )


def test_a_missing_bundle_is_a_clear_error(folder, headless, tmp_path, monkeypatch):
    from deepstd import bundle

    monkeypatch.setattr(bundle, "SHIPPED_DIR", tmp_path / "no bundles")
    (candidate,) = dicom_plugin.examine_files([folder.object])  # listed: examining needs no bundle
    with pytest.raises(dicom_plugin.LoadError) as caught:
        dicom_plugin.load_object(folder.object, candidate.name)
    text = str(caught.value)
    assert "object.dcm" in text and f"'{BUNDLE}'" in text and "not available" in text and "Codec section" in text
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


def test_missing_dependencies_are_a_clear_error(folder, headless, monkeypatch):
    # the codec (torch & co.) not importable: listing still works, loading says what is missing
    monkeypatch.setitem(sys.modules, "deepstd.codec", None)
    assert len(dicom_plugin.examine_files([folder.object])) == 1
    with pytest.raises(dicom_plugin.LoadError) as caught:
        dicom_plugin.load_object(folder.object)
    assert "Decompression needs deepstd.codec" in str(caught.value) and "Codec section" in str(caught.value)
    # deepstd itself not importable: nothing is claimed, loading says so
    monkeypatch.setitem(sys.modules, "deepstd.dicom_object", None)
    assert dicom_plugin.examine_files([folder.object]) == []
    with pytest.raises(dicom_plugin.LoadError) as caught:
        dicom_plugin.load_object(folder.object)
    assert "Reading DeepSTD DICOM objects needs deepstd.dicom_object" in str(caught.value)
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


# --- the DICOMLib plugin class, against a strict stand-in of DICOMLib ------------------------------


class StrictDICOMLoadable:
    """DICOMLib.DICOMLoadable's fields (files, name, tooltip, warning, selected, confidence)."""

    FIELDS = ("files", "name", "tooltip", "warning", "selected", "confidence")

    def __init__(self, qLoadable=None):
        assert qLoadable is None
        self.files, self.name, self.tooltip, self.warning = [], "Unknown", "No further information available", ""
        self.selected, self.confidence = False, 0.5

    def __setattr__(self, name, value):
        assert name in self.FIELDS, f"DICOMLoadable has no field {name!r}"
        object.__setattr__(self, name, value)


class StrictDICOMPlugin:
    """The members of DICOMLib.DICOMPlugin a plugin may use; anything else fails loudly."""

    subject_hierarchy = []

    def __init__(self):
        self.loadType = "Generic DICOM"
        self.loadableCache = {}
        self.tags = {"seriesDescription": "0008,103E", "seriesNumber": "0020,0011"}

    def __getattr__(self, name):
        raise AssertionError(f"DICOMPlugin has no attribute {name!r}: the plugin uses something the base lacks")

    def hashFiles(self, files):
        return tuple(files)

    def getCachedLoadables(self, files):
        return self.loadableCache.get(self.hashFiles(files))

    def cacheLoadables(self, files, loadables):
        self.loadableCache[self.hashFiles(files)] = loadables

    def examineForImport(self, fileLists):
        return []

    def examine(self, fileLists):
        return self.examineForImport(fileLists)

    def load(self, loadable):
        return True

    def examineForExport(self, subjectHierarchyItemID):
        return []

    def export(self, exportables):
        return ""

    def defaultSeriesNodeName(self, seriesUID):
        return "Unnamed Series"

    def addSeriesInSubjectHierarchy(self, loadable, dataNode):
        StrictDICOMPlugin.subject_hierarchy.append((loadable, dataNode))


class FakeDICOMDatabase:
    """slicer.dicomDatabase.fileValue for the SOP class tag, counting what it is asked."""

    def __init__(self):
        self.asked = []

    def fileValue(self, path, tag):
        assert tag == "0008,0016", tag
        self.asked.append(path)
        return sop_class_from_file(path)


@pytest.fixture
def plugin_module(headless, monkeypatch):
    """DeepSTDDICOMPlugin.py imported against the stand-in DICOMLib, with a DICOM database."""
    stub = types.ModuleType("DICOMLib")
    stub.DICOMPlugin, stub.DICOMLoadable = StrictDICOMPlugin, StrictDICOMLoadable
    monkeypatch.setitem(sys.modules, "DICOMLib", stub)
    monkeypatch.delitem(sys.modules, "DeepSTDDICOMPlugin", raising=False)
    database = FakeDICOMDatabase()
    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)
    shown = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: shown.append(text), raising=False)
    StrictDICOMPlugin.subject_hierarchy = []
    module = importlib.import_module("DeepSTDDICOMPlugin")
    yield types.SimpleNamespace(module=module, database=database, shown=shown)
    sys.modules.pop("DeepSTDDICOMPlugin", None)


def test_the_module_hook_registers_the_plugin_where_the_dicom_module_looks(plugin_module):
    parent = types.SimpleNamespace()
    plugin_module.module.DeepSTDDICOMPlugin(parent)
    assert slicer.modules.dicomPlugins["DeepSTDDICOMPlugin"] is plugin_module.module.DeepSTDDICOMPluginClass
    assert parent.hidden is True and parent.categories == ["Developer Tools.DICOM Plugins"]
    other = object()
    slicer.modules.dicomPlugins["DICOMScalarVolumePlugin"] = other
    plugin_module.module.DeepSTDDICOMPlugin(types.SimpleNamespace())  # keeps the others' entries
    assert slicer.modules.dicomPlugins["DICOMScalarVolumePlugin"] is other


def test_the_plugin_class_examines_and_loads_through_the_helper(plugin_module, folder, made):
    plugin = plugin_module.module.DeepSTDDICOMPluginClass()
    assert plugin.loadType == "DeepSTD compressed volume" and plugin.tags["sopClassUID"] == "0008,0016"
    lists = [[folder.ct, folder.object], [folder.raw]]
    loadables = plugin.examineForImport(lists)
    assert len(loadables) == 1
    (loadable,) = loadables
    assert isinstance(loadable, StrictDICOMLoadable)
    assert loadable.files == [folder.object] and loadable.name == made.name
    assert loadable.selected and loadable.confidence == dicom_plugin.CONFIDENCE
    assert made.ratio in loadable.tooltip and loadable.warning.startswith("Lossy compressed")
    assert sorted(plugin_module.database.asked) == sorted([folder.ct, folder.object, folder.raw])
    assert plugin.examine(lists)[0] is loadable  # cached per file list; the old name answers too
    assert len(plugin_module.database.asked) == 3

    node = plugin.load(loadable)
    assert node and node.GetName() == made.name and node.GetAttribute(core.ATTR_LOSSY)
    assert StrictDICOMPlugin.subject_hierarchy == [(loadable, node)]
    assert plugin_module.shown == []


def test_the_plugin_class_reports_a_failed_load_without_raising(plugin_module, folder, headless, caplog):
    plugin = plugin_module.module.DeepSTDDICOMPluginClass()
    (loadable,) = plugin.examineForImport([[folder.corrupt]])
    assert plugin.load(loadable) is False
    (text,) = plugin_module.shown
    assert "corrupt.dcm" in text and "SHA-256 mismatch" in text
    assert text in caplog.text and "Traceback" not in caplog.text
    assert StrictDICOMPlugin.subject_hierarchy == []
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
