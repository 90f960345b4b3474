"""Region preview and the Compress panel's options, through the module logic with the real codec
(tiny synthetic bundle): a slab decoded around a slice lands exactly where the full decode has it,
with the same voxels, and renders in a slice view; keep masks and the maximum-error mode reach
the file."""

import os

import numpy as np
import pytest
from conftest import require_slicer_core

slicer = require_slicer_core()
import slicer.util  # noqa: E402, F811

from DeepSTDSlicerLib import codec, core, mrml  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def logic(headless, tiny_bundle, monkeypatch):
    monkeypatch.setattr(codec.bundles(), "SHIPPED_DIR", tiny_bundle.path.parent)  # holds tiny.dstdb only
    return core.DeepSTDCore(headless.scene)


@pytest.fixture(scope="module")
def coded(tiny_bundle, scan, tmp_path_factory):
    from deepstd import codec as deepstd_codec

    path = tmp_path_factory.mktemp("region") / "scan.dstd"
    path.write_bytes(deepstd_codec.encode(scan, tiny_bundle, ratio=20, device="cpu", require_texture=True))
    return path


def ras_of_voxel(volume, ijk):
    lps = np.asarray(volume.origin) + np.asarray(volume.direction).reshape(3, 3) @ (np.asarray(ijk) * volume.spacing)
    return lps * np.array([-1.0, -1.0, 1.0])


def test_slab_around_picks_the_axis_closest_to_the_normal(scan):
    from deepstd.codec.header import grid_from
    from deepstd.container import geometry_header

    grid = grid_from(geometry_header(scan))  # the grid a file's header records
    direction = np.asarray(scan.direction).reshape(3, 3)
    for axis in range(3):
        normal = direction[:, axis] * np.array([-1.0, -1.0, 1.0])  # that grid axis, in RAS
        box = core.slab_around(grid, ras_of_voxel(scan, (20, 17, 8)), normal, half_width=2)
        lo, hi = [0, 0, 0], list(scan.size)
        lo[axis], hi[axis] = (20, 17, 8)[axis] - 2, (20, 17, 8)[axis] + 3
        assert box == (tuple(lo), tuple(hi))
    edge = core.slab_around(grid, ras_of_voxel(scan, (0, 0, 0)), direction[:, 2] * [-1, -1, 1], 4)
    assert edge == ((0, 0, 0), (scan.size[0], scan.size[1], 5))


def test_slice_preview_is_the_full_decode_there_and_renders(logic, headless, coded, scan, tmp_path):
    from slicer_offscreen import OffscreenSliceView

    full = logic.decompress(str(coded), name="full")
    normal = np.asarray(scan.direction).reshape(3, 3)[:, 2] * np.array([-1.0, -1.0, 1.0])
    preview = logic.slice_preview(str(coded), ras_of_voxel(scan, (20, 17, 8)), normal, half_width=2)
    slab = slicer.util.arrayFromVolume(preview)
    np.testing.assert_array_equal(slab, slicer.util.arrayFromVolume(full)[6:11])
    assert "preview, k 6-10" in preview.GetName() and preview.GetAttribute("DeepSTD.region")
    # the slab's voxel (i, j, 0) is the full volume's voxel (i, j, 6), in RAS
    np.testing.assert_allclose(
        mrml.ijk_to_ras(mrml.volume_from_node(preview)),
        mrml.ijk_to_ras(mrml.volume_from_node(full)) @ _shift(6),
        atol=1e-6,
    )

    view = OffscreenSliceView(headless, "Red", "Axial", (256, 256))
    composite = view.logic.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(full.GetID())
    view.fit()
    background = view.render()
    composite.SetForegroundVolumeID(preview.GetID())
    composite.SetForegroundOpacity(1.0)
    for node in (full, preview):
        node.GetDisplayNode().AutoWindowLevelOff()
        node.GetDisplayNode().SetWindowLevelMinMax(0, 900)
    path = os.environ.get("DEEPSTD_RENDER_DIR", str(tmp_path)) + "/slicer_region_preview.png"
    pixels = view.render(path)
    assert os.path.getsize(path) > 1000
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20 and not np.array_equal(pixels, background)


def _shift(k):
    """IJK->RAS of a slab starting at slice k, from the full volume's: a translation by k slices."""
    shift = np.eye(4)
    shift[2, 3] = k
    return shift


def test_compress_panel_options_reach_the_file(logic, headless, scan, tmp_path):
    def read_file(path):
        with open(path, "rb") as stream:
            return codec.read_header(stream.read())

    node = mrml.add_volume_node(scan, "scan", headless.scene)
    zz, yy, xx = np.indices(scan.array.shape)
    lesion = ((xx - 20) / 4.0) ** 2 + ((yy - 17) / 4.0) ** 2 + ((zz - 8) / 2.0) ** 2 <= 1
    labels = headless.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lesion")
    mrml.update_node_from_volume(labels, scan.with_array(lesion.astype(np.float32), dtype="uint8"))
    kept = logic.compress(node, str(tmp_path / "kept.dstd"), bundle="tiny", ratio=12, device="cpu", keep_node=labels)
    assert read_file(kept.path).header.keep.voxels == int(lesion.sum())
    restored = slicer.util.arrayFromVolume(logic.decompress(kept.path))
    assert np.abs(restored.astype(float) - scan.to_dtype_array())[lesion].max() == 0
    bounded = logic.compress(node, str(tmp_path / "bounded.dstd"), bundle="tiny", device="cpu", max_error=3)
    assert read_file(bounded.path).header.max_error == 3
    restored = slicer.util.arrayFromVolume(logic.decompress(bounded.path))
    assert np.abs(restored.astype(float) - scan.to_dtype_array()).max() <= 3
