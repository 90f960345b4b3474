"""The views a DeepSTD user sees, built with the module's own logic and rendered offscreen.

Used by the render test and by scripts/render_slicer_views.py (the pictures in docs/images).
Until the codec exists, the "decompressed" volume is a stand-in (the scan smoothed and
re-quantised) and the deformation is a synthetic smooth field shaped like a registration snapshot.
"""

import os
import types
from pathlib import Path

import numpy as np
from slicer_offscreen import HeadlessApp, OffscreenSliceView, OffscreenThreeDView

from DeepSTDSlicerLib import core, mrml

SHARED_DATA = Path(os.environ.get("DEEPSTD_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
LA_SUBJECT = "LA_1D7CUD1955YZPGK8XHJX"


def load_scan():
    """A real left-atrium MR scan and its mask (Volumes), or a synthetic pair if the data is absent."""
    from deepstd.volume import Volume

    image = SHARED_DATA / "left_atrium_mr" / "images" / f"{LA_SUBJECT}.nii.gz"
    if image.is_file():
        import SimpleITK as sitk

        labels = SHARED_DATA / "left_atrium_mr" / "labels" / f"{LA_SUBJECT}.nii.gz"
        return (Volume.from_sitk(sitk.ReadImage(str(image))), Volume.from_sitk(sitk.ReadImage(str(labels))), True)
    z, y, x = np.mgrid[0:40, 0:96, 0:112].astype(np.float32)
    body = ((x - 56) / 50) ** 2 + ((y - 48) / 40) ** 2 < 1
    organ = ((x - 60) / 16) ** 2 + ((y - 44) / 13) ** 2 + ((z - 20) / 12) ** 2 < 1
    scan = body * 60.0 + organ * 120 + np.random.default_rng(0).normal(0, 6, x.shape) * body
    geometry = dict(spacing=(0.8, 0.8, 1.5), origin=(-45.0, -38.0, -30.0))
    return (
        Volume(np.clip(scan, 0, 255), dtype="uint8", **geometry),
        Volume(organ.astype(np.float32), dtype="uint8", **geometry),
        False,
    )


def stand_in_decoded(scan):
    """What a lossy decode looks like: smoothed (1 mm) and re-quantised to the scan's dtype."""
    import SimpleITK as sitk

    from deepstd.volume import cast_to_dtype

    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(scan.to_sitk(cast=False), 1.0))
    return scan.with_array(cast_to_dtype(smooth, scan.dtype).astype(np.float32))


def synthetic_snapshot(scan, points=17, amplitude=4.0):
    """A registration progress snapshot: smooth LPS field (z, y, x, 3) in mm over the scan's box."""
    extent = np.asarray(scan.extent_mm)
    spacing = tuple(extent / (points - 1))
    k, j, i = np.indices((points, points, points)).astype(float) / (points - 1)
    field = np.stack(
        [amplitude * np.sin(2 * np.pi * j), amplitude * np.cos(2 * np.pi * i), 0.5 * amplitude * np.sin(np.pi * k)],
        axis=-1,
    )
    return types.SimpleNamespace(
        displacement=field,
        spacing=spacing,
        origin=scan.origin,
        direction=scan.direction,
        loss=-0.62,
        omega=12.0,
        step=150,
    )


def dilated(labels):
    import SimpleITK as sitk

    image = sitk.BinaryDilate(sitk.Cast(labels.to_sitk(), sitk.sitkUInt8), [1, 1, 1])
    return labels.with_array(sitk.GetArrayFromImage(image).astype(np.float32))


class DemoScene:
    """Scan, registration preview, residue and two segmentations in one headless scene."""

    def __init__(self, size=(420, 420)):
        self.app = HeadlessApp()
        self.logic = core.DeepSTDCore(self.app.scene)
        scan, labels, self.real = load_scan()
        self.scan = mrml.add_volume_node(scan, "scan", self.app.scene)
        self.decoded = mrml.add_volume_node(stand_in_decoded(scan), "decoded (stand-in)", self.app.scene)
        self.transform = self.app.scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "scan to template")
        self.logic.apply_snapshot(self.transform, synthetic_snapshot(scan), self.scan)
        self.transform.GetDisplayNode().SetGridSpacingMm(8.0)
        self.preview = self.logic.preview_volume(self.scan, self.transform)  # the scan as it aligns
        original = mrml.volume_from_node(self.scan)
        residue = original.with_array(original.array - mrml.volume_from_node(self.decoded).array, dtype="float32")
        self.residue = mrml.add_volume_node(residue, "residue", self.app.scene, cast=False)
        mrml.show_residue(self.residue)
        self.segA = self.logic.labels_to_segmentation(labels, "on original", self.scan)
        self.segB = self.logic.labels_to_segmentation(dilated(labels), "on decoded", self.scan)
        self.segA.GetSegmentation().GetNthSegment(0).SetColor(0.95, 0.75, 0.1)
        self.segB.GetSegmentation().GetNthSegment(0).SetColor(0.2, 0.8, 1.0)
        for seg in (self.segA, self.segB):
            seg.GetDisplayNode().SetOpacity2DFill(0.0)
            seg.GetDisplayNode().SetSliceIntersectionThickness(2)
        self.view = OffscreenSliceView(self.app, "Red", "Axial", size)
        low, high = np.percentile(original.array, [1, 99.5])
        for node in (self.scan, self.preview):
            node.GetDisplayNode().AutoWindowLevelOff()
            node.GetDisplayNode().SetWindowLevelMinMax(low, high)

    def _layers(self, foreground=None, opacity=0.0, grid=False, segments=False):
        composite = self.view.logic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(self.scan.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(opacity)
        self.transform.GetDisplayNode().SetVisibility(grid)
        self.transform.GetDisplayNode().SetVisibility2D(grid)
        for seg in (self.segA, self.segB):
            seg.GetDisplayNode().SetVisibility(segments)
        self.view.fit()

    def render_registration(self, path=None, grid=True):
        """Live preview (Registration section): deformation grid, and the warped scan at 50 % over
        the background (here the scan itself stands in for the template)."""
        self._layers(self.preview, 0.5, grid=grid)
        return self.view.render(path)

    def render_plain(self, path=None):
        self._layers()
        return self.view.render(path)

    def render_residue(self, path=None):
        """Residue (original − decoded) as a diverging overlay (Quality section)."""
        self._layers(self.residue, 0.6)
        return self.view.render(path)

    def render_3d(self, path=None, size=(420, 420)):
        """3D view: segment surfaces on the original (yellow) and decoded (cyan, translucent)."""
        if not hasattr(self, "view3d"):
            for seg, opacity in ((self.segA, 1.0), (self.segB, 0.3)):
                seg.CreateClosedSurfaceRepresentation()
                seg.GetDisplayNode().SetOpacity3D(opacity)
            self.view3d = OffscreenThreeDView(self.app, "1", size)
        self.transform.GetDisplayNode().SetVisibility(False)
        for seg in (self.segA, self.segB):
            seg.GetDisplayNode().SetVisibility(True)
            seg.GetDisplayNode().SetVisibility3D(True)
        self.view3d.resetCamera(azimuth=40, elevation=25)
        self.view3d.renderer.GetActiveCamera().Zoom(1.5)
        return self.view3d.render(path)

    def render_segments(self, path=None):
        """Segment outlines made on the original (yellow) and the decoded volume (cyan)."""
        self._layers(segments=True)
        return self.view.render(path)
