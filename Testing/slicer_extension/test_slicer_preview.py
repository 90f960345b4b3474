"""The live registration preview: grid transform nodes fed with displacement snapshots."""

import time
import types

import numpy as np
import pytest
from conftest import require_slicer_core

slicer = require_slicer_core()
import slicer.util  # noqa: E402, F811

from DeepSTDSlicerLib import core, mrml  # noqa: E402

DIRECTION = np.array([[0.0, -0.8, 0.6], [1.0, 0.0, 0.0], [0.0, 0.6, 0.8]]).T @ np.diag([1.0, -1.0, 1.0])
SPACING, ORIGIN = (4.0, 5.0, 6.0), (-20.0, 10.0, 3.0)


def snapshot(field, step=25, loss=-0.5):
    """What deepstd.shape reports: a coarse forward field (z, y, x, 3), LPS mm, ITK convention."""
    return types.SimpleNamespace(
        displacement=field,
        spacing=SPACING,
        origin=ORIGIN,
        direction=tuple(DIRECTION.reshape(-1)),
        loss=loss,
        omega=10.0,
        step=step,
    )


def smooth_field(shape=(6, 7, 8), amplitude=3.0):
    z, y, x = np.indices(shape).astype(float)
    return np.stack([amplitude * np.sin(y / 2.0), amplitude * np.cos(x / 3.0), 0.5 * amplitude * np.sin(z)], -1)


def lps_point(index):
    return np.asarray(ORIGIN) + DIRECTION @ (np.asarray(SPACING) * np.asarray(index))


def test_grid_nodes_move_by_the_snapshot_field_in_ras(headless):
    field = smooth_field()
    node = headless.scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    mrml.update_grid_transform(node, field, SPACING, ORIGIN, DIRECTION.reshape(-1))
    flip = np.array([-1.0, -1.0, 1.0])
    transform = node.GetTransformFromParent()
    for k, j, i in [(0, 0, 0), (2, 3, 4), (5, 6, 7), (1, 5, 2)]:
        ras = lps_point((i, j, k)) * flip
        moved = np.array(transform.TransformPoint(*ras))
        np.testing.assert_allclose(moved, (lps_point((i, j, k)) + field[k, j, i]) * flip, atol=1e-6)


def test_same_convention_as_simpleitk_displacement_field_between_nodes(headless):
    """Off the grid nodes too (linear interpolation on both sides): Slicer's from-parent transform
    in RAS is ITK's displacement transform in LPS."""
    import SimpleITK as sitk

    field = smooth_field()
    node = headless.scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    mrml.update_grid_transform(node, field, SPACING, ORIGIN, DIRECTION.reshape(-1))
    transform = node.GetTransformFromParent()
    transform.SetInterpolationModeToLinear()
    image = sitk.GetImageFromArray(field, isVector=True)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(tuple(DIRECTION.reshape(-1)))
    itk = sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))
    flip = np.array([-1.0, -1.0, 1.0])
    for index in [(1.5, 2.25, 3.5), (4.2, 0.7, 2.9), (6.5, 5.5, 4.5)]:
        p = lps_point(index)
        expected = np.array(itk.TransformPoint(tuple(p)))
        np.testing.assert_allclose(np.array(transform.TransformPoint(*(p * flip))) * flip, expected, atol=1e-4)


def test_preview_updates_in_place_and_notifies_observers(headless):
    node = headless.scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    mrml.update_grid_transform(node, smooth_field(), SPACING, ORIGIN, DIRECTION.reshape(-1))
    image = node.GetTransformFromParent().GetDisplacementGrid()
    events = []
    node.AddObserver(slicer.vtkMRMLTransformableNode.TransformModifiedEvent, lambda *a: events.append(1))
    mrml.update_grid_transform(node, 2 * smooth_field(), SPACING, ORIGIN, DIRECTION.reshape(-1))
    assert node.GetTransformFromParent().GetDisplacementGrid() is image  # no reallocation
    assert events, "views must be told that the transform changed"
    np.testing.assert_allclose(slicer.util.arrayFromGridTransform(node)[..., 2], 2 * smooth_field()[..., 2])
    mrml.update_grid_transform(node, smooth_field((3, 3, 3)), SPACING, ORIGIN, DIRECTION.reshape(-1))
    assert node.GetTransformFromParent().GetDisplacementGrid().GetDimensions() == (3, 3, 3)


def test_apply_snapshot_shows_a_grid_over_the_views(headless):
    node = headless.scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    core.DeepSTDCore().apply_snapshot(node, snapshot(smooth_field()))
    display = node.GetDisplayNode()
    assert display.GetVisibility2D() and display.GetVisualizationMode() == display.VIS_MODE_GRID


def test_folding_fraction():
    identity = np.zeros((5, 6, 7, 3))
    assert mrml.folding_fraction(identity, SPACING, DIRECTION.reshape(-1)) == 0.0
    z, y, x = np.indices((5, 6, 7)).astype(float)
    folded = identity.copy()
    # u along the grid's i axis = -2 * (distance along i): d(x+u)/dx = -1 everywhere
    folded[...] = (-2.0 * x * SPACING[0])[..., None] * DIRECTION[:, 0]
    assert mrml.folding_fraction(folded, SPACING, DIRECTION.reshape(-1)) == 1.0


def real_pair(headless):
    """Two real hippocampus MR scans as volume nodes (moving, template)."""
    from conftest import REPO

    pytest.importorskip("deepstd.shape", reason="deepstd.shape (registration) is not importable")
    import SimpleITK as sitk

    from deepstd.volume import Volume

    folder = REPO.parent / "shared" / "data" / "hippocampus_mr" / "images"
    files = sorted(folder.glob("*.nii.gz"))[:2] if folder.is_dir() else []
    if len(files) < 2:
        pytest.skip(f"real data not found at {folder}")
    return [mrml.add_volume_node(Volume.from_sitk(sitk.ReadImage(str(f))), f.name[:-7]) for f in files]


def test_real_cycle_inr_registration_streams_previews_and_status(headless):
    """deepstd.shape on two real hippocampus MR crops, in the worker process: its snapshots reach
    the grid node on the polling thread, the status follows, the input is left alone."""
    from deepstd.shape import CycleSettings

    moving, template = real_pair(headless)
    statuses, done = [], []
    logic = core.DeepSTDCore()
    job = logic.start_registration(
        moving,
        template,
        on_status=lambda s: statuses.append((s.step, s.folding, s.fraction)),
        on_done=done.append,
        options={"settings": CycleSettings(steps=50, preview_every=25, probe_steps=25), "threads": 1},
    )
    deadline = time.time() + 300
    while job.poll():
        job.wait(0.05)
        assert time.time() < deadline, "registration did not finish in 5 minutes"
    assert done, "registration failed"
    steps = [step for step, _, _ in statuses if step is not None]
    assert 25 in steps and steps[-1] == 50 and statuses[-1][2] == 1.0
    assert all(0.0 <= f <= 1.0 for _, f, _ in statuses if f is not None)
    result = logic.last_registration
    assert isinstance(result, core.RegistrationResult) and result.steps == 50 and np.isfinite(result.loss)
    transform = done[0]
    field = slicer.util.arrayFromGridTransform(transform)
    assert np.isfinite(field).all() and np.abs(field).max() > 0
    # the result is the full-resolution field on the template grid, not the coarse preview
    assert field.shape == tuple(reversed(template.GetImageData().GetDimensions())) + (3,)
    assert transform.GetAttribute("DeepSTD.field").startswith("full resolution")
    preview = headless.scene.GetFirstNodeByName(f"{moving.GetName()} (registration preview)")
    assert preview.GetParentTransformNode() is transform
    assert preview.GetImageData() is moving.GetImageData()  # shares the voxels
    assert moving.GetParentTransformNode() is None  # input left untouched
    composite = headless.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    if composite is not None:
        assert composite.GetForegroundVolumeID() == preview.GetID()


def test_cancelled_registration_reaches_the_main_thread(headless):
    from deepstd.errors import Cancelled
    from deepstd.shape import CycleSettings

    moving, template = real_pair(headless)
    errors, statuses = [], []
    job = core.DeepSTDCore().start_registration(
        moving,
        template,
        on_status=statuses.append,
        on_error=errors.append,
        options={"settings": CycleSettings(steps=100000, preview_every=25, probe_steps=25), "threads": 1},
    )
    deadline = time.time() + 120
    while not statuses:
        assert job.poll() and time.time() < deadline
        job.wait(0.05)
    job.cancel()
    started = time.time()
    while job.poll():
        job.wait(0.05)
    assert time.time() - started < 10
    assert isinstance(errors[0], Cancelled) and job.returncode != 0


def test_registration_result_equals_deepstd_register_out_field(headless, tmp_path):
    """The transform node the module leaves holds exactly what `deepstd register --out-field`
    writes for the same scans and settings (LPS -> RAS: x and y change sign), at full resolution."""
    import SimpleITK as sitk
    from conftest import REPO

    from deepstd.shape import CycleSettings, register_files

    folder = REPO.parent / "shared" / "data" / "hippocampus_mr" / "images"
    files = sorted(folder.glob("*.nii.gz"))[:2]
    moving, template = real_pair(headless)
    settings = dict(steps=30, preview_every=15, probe_steps=15)
    transform = core.DeepSTDCore().register(
        moving, template, options={"settings": CycleSettings(**settings), "threads": 1}
    )
    out = tmp_path / "field.nrrd"
    register_files(str(files[0]), str(files[1]), out_field=str(out), threads=1, **settings)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    field = slicer.util.arrayFromGridTransform(transform)
    assert field.shape == expected.shape
    np.testing.assert_allclose(field, expected * np.array([-1.0, -1.0, 1.0]), atol=1e-4)
    grid = transform.GetTransformFromParent().GetDisplacementGrid()
    reference = sitk.ReadImage(str(out))
    np.testing.assert_allclose(grid.GetSpacing(), reference.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(grid.GetOrigin(), np.array(reference.GetOrigin()) * [-1, -1, 1], atol=1e-6)
