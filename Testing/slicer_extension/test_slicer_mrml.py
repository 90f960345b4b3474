"""MRML <-> deepstd.Volume through the module's own helpers, checked against SimpleITK and
Slicer's NRRD storage (LPS on disk), with an oblique and flipped direction matrix."""

import numpy as np
import pytest
from conftest import require_slicer_core

slicer = require_slicer_core()
import slicer.util  # noqa: E402, F811
import vtk  # noqa: E402

from DeepSTDSlicerLib import mrml  # noqa: E402

OBLIQUE = np.array([[0.0, -0.8, 0.6], [1.0, 0.0, 0.0], [0.0, 0.6, 0.8]]).T
FLIPPED_OBLIQUE = OBLIQUE @ np.diag([1.0, -1.0, 1.0])  # det -1: a mirrored axis


@pytest.fixture
def flipped_volume(oblique_volume):
    return oblique_volume.with_array(oblique_volume.array, direction=tuple(FLIPPED_OBLIQUE.reshape(-1)))


def test_volume_to_node_matches_simpleitk_physical_points(headless, flipped_volume):
    node = mrml.add_volume_node(flipped_volume, "oblique")
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(m)
    image = flipped_volume.to_sitk()
    for index in [(0, 0, 0), (12, 0, 0), (0, 10, 0), (0, 0, 6), (5, 7, 3)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = ijk_to_ras @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)
    # numpy (K, J, I) order is deepstd's (z, y, x): same voxels, original sample type
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), flipped_volume.to_dtype_array())
    assert slicer.util.arrayFromVolume(node).dtype == np.int16


def test_node_to_volume_round_trip(headless, flipped_volume):
    node = mrml.add_volume_node(flipped_volume, "oblique")
    back = mrml.volume_from_node(node)
    np.testing.assert_array_equal(back.array, flipped_volume.array)
    np.testing.assert_allclose(back.spacing, flipped_volume.spacing, atol=1e-9)
    np.testing.assert_allclose(back.origin, flipped_volume.origin, atol=1e-9)
    np.testing.assert_allclose(back.direction, flipped_volume.direction, atol=1e-9)
    assert (back.dtype, back.units) == ("int16", "HU")


def test_slicer_nrrd_storage_agrees_with_the_lps_geometry(headless, flipped_volume, tmp_path):
    """Slicer writes NRRD in LPS: reading it with SimpleITK must give the Volume's own geometry."""
    import SimpleITK as sitk

    node = mrml.add_volume_node(flipped_volume, "oblique")
    node.AddDefaultStorageNode()
    node.GetStorageNode().SetFileName(str(tmp_path / "v.nrrd"))
    assert node.GetStorageNode().WriteData(node)
    image = sitk.ReadImage(str(tmp_path / "v.nrrd"))
    np.testing.assert_allclose(image.GetOrigin(), flipped_volume.origin, atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), flipped_volume.spacing, atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), flipped_volume.direction, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), flipped_volume.to_dtype_array())


def test_slicer_loaded_volume_converts_to_the_simpleitk_geometry(headless, flipped_volume, tmp_path):
    """The other direction: a file Slicer reads (RAS inside) gives the same physical image as
    SimpleITK reads. Slicer may reorder a mirrored axis on load, so compare voxel by voxel at
    the same physical points rather than arrays."""
    import SimpleITK as sitk

    sitk.WriteImage(flipped_volume.to_sitk(), str(tmp_path / "v.nrrd"))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    headless.scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "v.nrrd"))
    node = headless.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "loaded")
    assert storage.ReadData(node)
    back = mrml.volume_from_node(node)
    assert back.dtype == "int16" and back.array.shape == flipped_volume.array.shape
    # index of `back` -> LPS -> index of the original: must be an exact integer relabelling
    to_original = np.linalg.inv(flipped_volume.index_to_physical()) @ back.index_to_physical()
    z, y, x = np.indices(back.array.shape).reshape(3, -1)
    mapped = to_original @ np.stack([x, y, z, np.ones_like(x)]).astype(float)
    ijk = np.rint(mapped[:3]).astype(int)
    np.testing.assert_allclose(mapped[:3], ijk, atol=1e-4)
    np.testing.assert_array_equal(back.array[z, y, x], flipped_volume.array[ijk[2], ijk[1], ijk[0]])


def test_linear_parent_transform_is_folded_in_and_nonlinear_refused(headless, oblique_volume):
    from deepstd.errors import InputError

    node = mrml.add_volume_node(oblique_volume, "moved")
    shift = headless.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = np.eye(4)
    matrix[:3, 3] = [10.0, -5.0, 2.0]  # RAS
    shift.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    node.SetAndObserveTransformNodeID(shift.GetID())
    moved = mrml.volume_from_node(node)
    np.testing.assert_allclose(np.subtract(moved.origin, oblique_volume.origin), [-10.0, 5.0, 2.0], atol=1e-9)
    grid = headless.scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    mrml.update_grid_transform(grid, np.zeros((2, 2, 2, 3)), (10, 10, 10), (0, 0, 0), np.eye(3).reshape(-1))
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match="non-linear"):
        mrml.volume_from_node(node)


def test_empty_node_is_an_input_error(headless):
    from deepstd.errors import InputError

    node = headless.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxels"):
        mrml.volume_from_node(node)


# --- units and modality as Slicer knows them ----------------------------------------------------


def _plain_node(scene, name="scan"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.zeros((4, 5, 6), np.int16))
    return node


def test_units_and_modality_come_from_slicer_not_only_our_attribute(headless, monkeypatch):
    """A CT loaded by Slicer's DICOM module has Hounsfield voxel value units and a DICOM modality,
    but none of the module's own attributes: it must arrive as HU / CT."""
    scene = headless.scene
    plain = _plain_node(scene)
    assert mrml.node_modality(plain) is None and mrml.volume_from_node(plain).units == "unitless"

    hu = _plain_node(scene, "hu")
    units = slicer.vtkCodedEntry()
    units.SetValueSchemeMeaning("[hnsf'U]", "UCUM", "Hounsfield unit")
    hu.SetVoxelValueUnits(units)
    assert mrml.volume_from_node(hu).units == "HU" and mrml.node_modality(hu) == "CT"

    tagged = _plain_node(scene, "tagged")
    tagged.SetAttribute("DICOM.Modality", "ct")
    assert mrml.node_modality(tagged) == "CT" and mrml.volume_from_node(tagged).units == "HU"

    mr = _plain_node(scene, "series item")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    series = sh.CreateFolderItem(sh.GetSceneItemID(), "series")
    sh.SetItemAttribute(series, "DICOM.Modality", "MR")
    sh.CreateItem(series, mr)
    assert mrml.node_modality(mr) == "MR" and mrml.volume_from_node(mr).units == "unitless"

    class Database:  # slicer.dicomDatabase: instance -> file -> tag value
        def fileForInstance(self, uid):
            return {"1.2.3": "/db/ct1.dcm"}[uid]

        def fileValue(self, path, tag):
            return {("/db/ct1.dcm", "0008,0060"): "CT"}[(path, tag)]

    monkeypatch.setattr(slicer, "dicomDatabase", Database(), raising=False)
    from_db = _plain_node(scene, "from database")
    from_db.SetAttribute("DICOM.instanceUIDs", "1.2.3 1.2.4")
    assert mrml.node_modality(from_db) == "CT" and mrml.volume_from_node(from_db).units == "HU"


def test_hu_volumes_get_slicers_voxel_value_units(headless, oblique_volume):
    node = mrml.add_volume_node(oblique_volume.with_array(oblique_volume.array, units="HU"), "ct")
    assert node.GetVoxelValueUnits().GetCodeValue() == "[hnsf'U]"
    mr = mrml.add_volume_node(oblique_volume.with_array(oblique_volume.array, units="unitless"), "mr")
    assert mr.GetVoxelValueUnits() is None


def test_only_single_component_scalar_volumes_are_codable(headless, oblique_volume):
    from deepstd.errors import InputError

    scene = headless.scene
    assert mrml.is_scalar_volume(mrml.add_volume_node(oblique_volume, "v"))
    for cls in (
        "vtkMRMLVectorVolumeNode",
        "vtkMRMLDiffusionTensorVolumeNode",
        "vtkMRMLDiffusionWeightedVolumeNode",
        "vtkMRMLLabelMapVolumeNode",
        "vtkMRMLTableNode",
    ):
        node = scene.AddNewNodeByClass(cls)
        assert not mrml.is_scalar_volume(node), cls
        with pytest.raises(InputError, match="scalar volumes only"):
            mrml.require_scalar_volume(node)
    rgb = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "rgb in a scalar node")
    image = vtk.vtkImageData()
    image.SetDimensions(4, 3, 2)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    rgb.SetAndObserveImageData(image)
    assert not mrml.is_scalar_volume(rgb)
