"""MRML <-> deepstd: the one place where Slicer's RAS frame meets deepstd's LPS frame.

Everything here needs only `slicer` (MRML classes and `slicer.util`), `vtk` and numpy, so it runs
in Slicer and headless with `slicer-core`. `deepstd` is imported inside the functions that build a
`Volume`, which keeps the module importable (and Slicer starting) when the package is broken or
still missing dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import slicer
import slicer.util
import vtk
from vtk.util import numpy_support

if TYPE_CHECKING:
    from deepstd.volume import Volume

#: RAS = FLIP · LPS (and LPS = FLIP · RAS): x and y change sign, z stays.
FLIP = np.diag([-1.0, -1.0, 1.0])
FLIP4 = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Node attributes the module writes, so a node remembers where its voxels came from.
ATTR_DTYPE = "DeepSTD.dtype"
ATTR_UNITS = "DeepSTD.units"
ATTR_DIVERGING = "DeepSTD.diverging"
#: What Slicer's DICOM module records: the modality (node or subject-hierarchy item attribute)
#: and the instances a volume was loaded from (space-separated SOP Instance UIDs).
ATTR_DICOM_MODALITY = "DICOM.Modality"
ATTR_DICOM_INSTANCES = "DICOM.instanceUIDs"
MODALITY_TAG = "0008,0060"
#: UCUM code of the Hounsfield unit, which Slicer's DICOM module sets as a CT's voxel value units.
HU_CODE = "[hnsf'U]"


# --- volumes ------------------------------------------------------------------------------------


def ijk_to_ras(volume: "Volume") -> np.ndarray:
    """4x4 IJK -> RAS matrix of a deepstd volume (Slicer's index order I, J, K = x, y, z)."""
    return FLIP4 @ volume.index_to_physical()


def volume_from_node(node) -> "Volume":
    """A deepstd `Volume` (LPS) with the voxels and world geometry of a scalar volume node.

    A linear parent transform is folded into the geometry, as Slicer displays the volume; a
    non-linear one is refused because a Volume can only carry a grid, not a warp.
    """
    from deepstd.errors import InputError
    from deepstd.volume import SUPPORTED_DTYPES, Volume

    image = node.GetImageData() if node is not None else None
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"volume {_name(node)} has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"volume {_name(node)} has {image.GetNumberOfScalarComponents()} components "
            "per voxel; only scalar volumes can be compressed"
        )
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ras = slicer.util.arrayFromVTKMatrix(matrix)
    parent = node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise InputError(
                f"volume {_name(node)} is under the non-linear transform "
                f"{parent.GetName()!r}; harden it (Data module) before using it"
            )
        world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(world)
        ras = slicer.util.arrayFromVTKMatrix(world) @ ras
    lps = FLIP4 @ ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    array = slicer.util.arrayFromVolume(node)
    dtype = node.GetAttribute(ATTR_DTYPE) or array.dtype.name
    if dtype not in SUPPORTED_DTYPES:
        dtype = "int32" if array.dtype.kind in "iu" else "float32"
    return Volume(
        np.array(array, dtype=np.float32),
        tuple(spacing),
        tuple(lps[:3, 3]),
        tuple(direction.reshape(-1)),
        dtype,
        node_units(node),
        {"name": node.GetName()},
    )


def is_scalar_volume(node) -> bool:
    """A single-component scalar volume: not a vector, tensor or diffusion-weighted volume (all
    of which subclass vtkMRMLScalarVolumeNode), not a label map (a lossy codec would change
    label values)."""
    excluded = (
        "vtkMRMLLabelMapVolumeNode",
        "vtkMRMLVectorVolumeNode",
        "vtkMRMLTensorVolumeNode",
        "vtkMRMLDiffusionWeightedVolumeNode",
    )
    if not isinstance(node, slicer.vtkMRMLScalarVolumeNode):
        return False
    if any(isinstance(node, getattr(slicer, name)) for name in excluded if hasattr(slicer, name)):
        return False
    image = node.GetImageData()
    return image is None or image.GetNumberOfScalarComponents() == 1


def require_scalar_volume(node) -> None:
    """An InputError naming the node unless it is a scalar volume DeepSTD can code."""
    if not is_scalar_volume(node):
        from deepstd.errors import InputError

        kind = node.GetClassName() if node is not None else "nothing"
        raise InputError(f"{_name(node)} is a {kind}: DeepSTD compresses single-component scalar volumes only")


def node_modality(node) -> Optional[str]:
    """The DICOM modality ("CT", "MR", ...) Slicer knows for a volume node, or None.

    Looked up where Slicer keeps it, in this order: the node's `DICOM.Modality` attribute, the
    attribute of its subject-hierarchy item (or a parent item: Slicer's DICOM module sets it on
    the series), the DICOM database entry of its first instance (`DICOM.instanceUIDs`, tag
    0008,0060), then the voxel value units (Hounsfield units mean CT) and our own units attribute.
    """
    if node is None:
        return None
    value = node.GetAttribute(ATTR_DICOM_MODALITY)
    if value:
        return value.strip().upper()
    value = _subject_hierarchy_modality(node)
    if value:
        return value
    value = _database_modality(node)
    if value:
        return value
    if _voxel_units_code(node) == HU_CODE or node.GetAttribute(ATTR_UNITS) == "HU":
        return "CT"
    return None


def node_units(node) -> str:
    """deepstd's units for a node's voxels: "HU" when Slicer says the values are Hounsfield units
    (voxel value units, a CT modality) or we wrote them as such; else "unitless"."""
    if _voxel_units_code(node) == HU_CODE or node.GetAttribute(ATTR_UNITS) == "HU":
        return "HU"
    if node.GetAttribute(ATTR_UNITS):
        return node.GetAttribute(ATTR_UNITS)
    return "HU" if node_modality(node) == "CT" else "unitless"


def _voxel_units_code(node) -> str:
    get = getattr(node, "GetVoxelValueUnits", None)
    units = get() if get is not None else None
    return (units.GetCodeValue() or "") if units is not None else ""


def _subject_hierarchy_modality(node) -> str:
    scene = node.GetScene()
    if scene is None:
        return ""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return ""
    item, root = sh.GetItemByDataNode(node), sh.GetSceneItemID()
    while item and item != root:
        value = sh.GetItemAttribute(item, ATTR_DICOM_MODALITY)
        if value:
            return value.strip().upper()
        item = sh.GetItemParent(item)
    return ""


def _database_modality(node) -> str:
    """The modality tag of the node's first DICOM instance (Slicer's DICOM database, if any)."""
    uids = (node.GetAttribute(ATTR_DICOM_INSTANCES) or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return ""
    try:
        value = database.fileValue(database.fileForInstance(uids[0]), MODALITY_TAG)
    except Exception:  # a closed or foreign database: no answer, not an error
        return ""
    return str(value or "").strip().upper()


def update_node_from_volume(node, volume: "Volume", cast: bool = True):
    """Put a Volume's voxels and geometry into `node` (in the original sample type when `cast`)."""
    slicer.util.updateVolumeFromArray(node, volume.to_dtype_array() if cast else volume.array)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras(volume)))
    node.SetAttribute(ATTR_DTYPE, volume.dtype)
    node.SetAttribute(ATTR_UNITS, volume.units)
    if volume.units == "HU" and hasattr(node, "SetVoxelValueUnits"):  # as Slicer's DICOM module marks CT
        units = slicer.vtkCodedEntry()
        units.SetValueSchemeMeaning(HU_CODE, "UCUM", "Hounsfield unit")
        node.SetVoxelValueUnits(units)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def add_volume_node(
    volume: "Volume",
    name: str,
    scene=None,
    cast: bool = True,
    class_name: str = "vtkMRMLScalarVolumeNode",
    attributes: Optional[Dict[str, str]] = None,
):
    """A new volume node in `scene` (default: slicer.mrmlScene) holding `volume`."""
    scene = scene or slicer.mrmlScene
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    update_node_from_volume(node, volume, cast)
    for key, value in (attributes or {}).items():
        node.SetAttribute(key, str(value))
    return node


def show_layers(
    scene, background=None, foreground=None, foreground_opacity: Optional[float] = None, label=None
) -> None:
    """Set the layers of every slice view (what slicer.util.setSliceViewerLayers does, minus the GUI)."""
    for composite in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        if background is not None:
            composite.SetBackgroundVolumeID(background.GetID())
        if foreground is not None:
            composite.SetForegroundVolumeID(foreground.GetID())
        if foreground_opacity is not None:
            composite.SetForegroundOpacity(foreground_opacity)
        if label is not None:
            composite.SetLabelVolumeID(label.GetID())


# --- registration preview -----------------------------------------------------------------------


def update_grid_transform(
    node, displacement: np.ndarray, spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]
):
    """Show an LPS displacement field (z, y, x, 3) mm on an LPS grid as a grid transform node.

    The field follows ITK's resampling convention (template point p reads the scan at p + u(p)),
    which is Slicer's "transform from parent": a scan placed under `node` is displayed warped onto
    the template. The grid's image is reused when its size is unchanged, so a preview updated every
    few optimisation steps only copies numbers.
    """
    field = np.asarray(displacement, dtype=np.float64)
    if field.ndim != 4 or field.shape[-1] != 3:
        raise ValueError(f"expected a (z, y, x, 3) displacement field, got shape {field.shape}")
    dims = tuple(reversed(field.shape[:3]))
    grid = node.GetTransformFromParent()
    if (
        not isinstance(grid, slicer.vtkOrientedGridTransform)
        or grid.GetDisplacementGrid() is None
        or tuple(grid.GetDisplacementGrid().GetDimensions()) != dims
    ):
        image = vtk.vtkImageData()
        image.SetDimensions(*dims)
        image.AllocateScalars(vtk.VTK_DOUBLE, 3)
        grid = slicer.vtkOrientedGridTransform()
        grid.SetDisplacementGridData(image)
        grid.SetInterpolationModeToCubic()
        node.SetAndObserveTransformFromParent(grid)
    image = grid.GetDisplacementGrid()
    image.SetOrigin(*(FLIP @ np.asarray(origin, dtype=np.float64)))
    image.SetSpacing(*spacing)
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(field.shape)
    values[:] = field * np.diag(FLIP)
    grid.SetGridDirectionMatrix(_vtk3(FLIP @ np.asarray(direction, dtype=np.float64).reshape(3, 3)))
    image.GetPointData().GetScalars().Modified()
    image.Modified()
    grid.Modified()
    return node


def show_grid(node, region_node=None, mode: str = "grid", spacing_mm: float = 10.0) -> None:
    """Draw a transform node's deformation over the slice views (and the 3D view) as grid or glyphs."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetVisibility(True)
    display.SetVisibility2D(True)
    modes = {"grid": display.VIS_MODE_GRID, "glyph": display.VIS_MODE_GLYPH, "contour": display.VIS_MODE_CONTOUR}
    display.SetVisualizationMode(modes[mode])
    display.SetGridSpacingMm(spacing_mm)
    display.SetGlyphSpacingMm(spacing_mm)
    if region_node is not None:
        display.SetAndObserveRegionNode(region_node)


def folding_fraction(displacement: np.ndarray, spacing: Sequence[float], direction: Sequence[float]) -> float:
    """Fraction of grid points where x -> x + u(x) folds (det J <= 0), from a preview field in mm."""
    field = np.asarray(displacement, dtype=np.float64)
    if min(field.shape[:3]) < 2:
        return 0.0
    sx, sy, sz = spacing
    jac = np.empty(field.shape[:3] + (3, 3))
    for c in range(3):
        gz, gy, gx = np.gradient(field[..., c], sz, sy, sx)
        jac[..., c, :] = np.stack([gx, gy, gz], axis=-1)  # derivative along the grid's i, j, k
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    det = np.linalg.det(np.eye(3) + jac @ d.T)  # grid axes -> physical axes
    return float(np.mean(det <= 0))


# --- residue ------------------------------------------------------------------------------------


def show_residue(node, limit: Optional[float] = None):
    """Give a residue volume a diverging blue-white-red map, symmetric about zero (white = no loss).

    Each residue node gets its own procedural colour node, because the map's range is the
    residue's own (robust) range. Returns the colour node.
    """
    values = slicer.util.arrayFromVolume(node)
    if limit is None:
        limit = float(np.percentile(np.abs(values), 99.5)) if values.size else 1.0
    limit = max(float(limit), 1e-6)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    color = display.GetColorNode()
    if color is None or color.GetAttribute(ATTR_DIVERGING) != "1":
        scene = node.GetScene()
        color = scene.AddNewNodeByClass(
            "vtkMRMLProceduralColorNode", scene.GenerateUniqueName(f"{node.GetName()} diverging")
        )
        color.SetAttribute(ATTR_DIVERGING, "1")
        color.SetHideFromEditors(False)
    ctf = color.GetColorTransferFunction()
    ctf.RemoveAllPoints()
    ctf.AddRGBPoint(-limit, 0.23, 0.30, 0.75)
    ctf.AddRGBPoint(0.0, 0.87, 0.87, 0.87)
    ctf.AddRGBPoint(limit, 0.71, 0.02, 0.15)
    color.Modified()
    display.SetAndObserveColorNodeID(color.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(-limit, limit)
    return color


# --- segmentations and tables -------------------------------------------------------------------


def segment_masks(segmentation_node, reference_node) -> Dict[str, np.ndarray]:
    """Segment name -> boolean mask (z, y, x) on the reference volume's grid."""
    segmentation = segmentation_node.GetSegmentation()
    masks = {}
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        name = segmentation.GetSegment(segment_id).GetName()
        masks[name] = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, reference_node) > 0
    return masks


def pair_segments(names_a: Sequence[str], names_b: Sequence[str]) -> List[Tuple[str, str]]:
    """Match segments by name; what is left unmatched on both sides is paired in order."""
    pairs = [(a, a) for a in names_a if a in names_b]
    rest_a = [a for a in names_a if a not in names_b]
    rest_b = [b for b in names_b if b not in names_a]
    return pairs + list(zip(rest_a, rest_b))


def fill_table(table_node, rows: Sequence[Dict[str, object]], units: Optional[Dict[str, str]] = None):
    """Replace a table node's content with `rows` (dicts with the same keys, in column order)."""
    table_node.RemoveAllColumns()
    if not rows:
        return table_node
    for name in rows[0]:
        values = [row[name] for row in rows]
        if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
            column = vtk.vtkDoubleArray()
            for v in values:
                column.InsertNextValue(float(v))
        else:
            column = vtk.vtkStringArray()
            for v in values:
                column.InsertNextValue(str(v))
        column.SetName(name)
        table_node.AddColumn(column)
    for name, unit in (units or {}).items():
        table_node.SetColumnUnitLabel(name, unit)
    table_node.Modified()
    return table_node


# --- helpers ------------------------------------------------------------------------------------


def _vtk3(matrix: np.ndarray) -> vtk.vtkMatrix4x4:
    """A 4x4 VTK matrix holding a 3x3 rotation (what vtkOrientedGridTransform takes)."""
    out = np.eye(4)
    out[:3, :3] = matrix
    return slicer.util.vtkMatrixFromArray(out)


def _nodes(scene, class_name: str):
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def _name(node) -> str:
    return repr(node.GetName()) if node is not None else "(none)"
