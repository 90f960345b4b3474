"""A headless Slicer for tests: MRML scene + module logics, and offscreen slice/3D views.

Slicer's Qt views are rebuilt on plain VTK (slice logic + image actor + displayable managers),
rendering through EGL/llvmpipe without a display (docs/SLICER.md, section 6).
"""

import os

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # before any render window

import types  # noqa: E402

import numpy as np  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

SLICE_DMS = [
    "vtkMRMLModelSliceDisplayableManager",
    "vtkMRMLSegmentationsDisplayableManager2D",
    "vtkMRMLTransformsDisplayableManager2D",
    "vtkMRMLCrosshairDisplayableManager",
    "vtkMRMLOrientationMarkerDisplayableManager",
    "vtkMRMLRulerDisplayableManager",
    "vtkMRMLScalarBarDisplayableManager",
    "vtkMRMLColorLegendDisplayableManager",
]
THREED_DMS = [
    "vtkMRMLCameraDisplayableManager",
    "vtkMRMLViewDisplayableManager",
    "vtkMRMLModelDisplayableManager",
    "vtkMRMLThreeDReformatDisplayableManager",
    "vtkMRMLSegmentationsDisplayableManager3D",
    "vtkMRMLTransformsDisplayableManager3D",
    "vtkMRMLVolumeRenderingDisplayableManager",
    "vtkMRMLColorLegendDisplayableManager",
]


class HeadlessApp:
    """Scene + application logic + module logics, published as slicer.mrmlScene/slicer.modules."""

    def __init__(self):
        self.scene = slicer.vtkMRMLScene()
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetCrosshairName("default")
        self.scene.AddNode(crosshair)
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(self.scene)
        self.colors = self.app.GetColorLogic()
        self.colors.SetMRMLScene(self.scene)
        self.app.SetModuleLogic("Colors", self.colors)
        self.app.SetSliceLogics(vtk.vtkCollection())
        self.app.SetViewLogics(vtk.vtkCollection())
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)
        self.volumes = self._register(slicer.vtkSlicerVolumesLogic(), "Volumes")
        self.segmentations = self._register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
        slicer.mrmlScene = self.scene
        slicer.modules = types.SimpleNamespace(
            volumes=types.SimpleNamespace(logic=lambda: self.volumes),
            segmentations=types.SimpleNamespace(logic=lambda: self.segmentations),
        )

    def _register(self, logic, name):
        logic.SetMRMLApplicationLogic(self.app)
        logic.SetMRMLScene(self.scene)
        self.app.SetModuleLogic(name, logic)
        return logic


class _View:
    def __init__(self, size):
        self.size = size
        self.renderWindow = vtk.vtkRenderWindow()
        self.renderWindow.SetOffScreenRendering(1)
        self.renderWindow.SetSize(*size)
        self.renderer = vtk.vtkRenderer()
        self.renderWindow.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()  # some displayable managers expect one
        self.interactor.SetRenderWindow(self.renderWindow)
        self.dmGroup = slicer.vtkMRMLDisplayableManagerGroup()

    def _initDMs(self, factoryClass, appLogic, names):
        factory = factoryClass.GetInstance()
        factory.SetMRMLApplicationLogic(appLogic)
        for name in names:
            if not factory.IsDisplayableManagerRegistered(name):
                factory.RegisterDisplayableManager(name)
        self.dmGroup.Initialize(factory, self.renderer)

    def render(self, path=None) -> np.ndarray:
        """Render; write a PNG if `path`; return the RGB pixels (rows from the top)."""
        self.renderWindow.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.renderWindow)
        grab.ReadFrontBufferOff()
        grab.Update()
        if path is not None:
            writer = vtk.vtkPNGWriter()
            writer.SetFileName(str(path))
            writer.SetInputConnection(grab.GetOutputPort())
            writer.Write()
        image = grab.GetOutput()
        w, h, _ = image.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        return pixels.reshape(h, w, -1)[::-1, :, :3]


class OffscreenSliceView(_View):
    def __init__(self, app, name="Red", orientation="Axial", size=(400, 400)):
        super().__init__(size)
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self._initDMs(slicer.vtkMRMLSliceViewDisplayableManagerFactory, app.app, SLICE_DMS)
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(app.app)
        app.app.GetSliceLogics().AddItem(self.logic)
        self.logic.SetMRMLScene(app.scene)
        self.sliceNode = self.logic.AddSliceNode(name)
        self.sliceNode.SetOrientation(orientation)
        self.dmGroup.SetMRMLDisplayableNode(self.sliceNode)
        self.imageMapper = vtk.vtkImageMapper()
        self.imageMapper.SetColorWindow(255)
        self.imageMapper.SetColorLevel(127.5)
        self.imageActor = vtk.vtkActor2D()
        self.imageActor.SetMapper(self.imageMapper)
        self.imageActor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.imageActor)
        self.logic.ResizeSliceNode(*size)

    def fit(self):
        self.logic.ResizeSliceNode(*self.size)
        self.logic.FitSliceToBackground()
        self.logic.SnapSliceOffsetToIJK()

    def render(self, path=None) -> np.ndarray:
        self.imageMapper.SetInputConnection(self.logic.GetImageDataConnection())
        return super().render(path)


class OffscreenThreeDView(_View):
    def __init__(self, app, name="1", size=(400, 400)):
        super().__init__(size)
        self._initDMs(slicer.vtkMRMLThreeDViewDisplayableManagerFactory, app.app, THREED_DMS)
        self.logic = slicer.vtkMRMLViewLogic()
        self.logic.SetMRMLApplicationLogic(app.app)
        app.app.GetViewLogics().AddItem(self.logic)
        self.logic.SetMRMLScene(app.scene)
        self.viewNode = self.logic.AddViewNode(name)
        self.dmGroup.SetMRMLDisplayableNode(self.viewNode)

    def resetCamera(self, azimuth=30, elevation=20):
        self.renderer.ResetCamera()
        camera = self.renderer.GetActiveCamera()
        camera.Azimuth(azimuth)
        camera.Elevation(elevation)
        camera.OrthogonalizeViewUp()
        self.renderer.ResetCamera()
