"""Quality section: residue node with its diverging display, MAE/PSNR/SSIM and Dice/HD95 tables
from real MRML volume and segmentation nodes."""

import importlib

import numpy as np
import pytest
from conftest import require_slicer_core

slicer = require_slicer_core()
import slicer.util  # noqa: E402, F811

from DeepSTDSlicerLib import core, mrml  # noqa: E402


@pytest.fixture
def metrics():
    """The metrics are computed by deepstd.metrics in the worker process (deepstd.worker)."""
    try:
        return importlib.import_module("deepstd.metrics")
    except ImportError as error:
        pytest.skip(f"deepstd.metrics not importable ({error})")


@pytest.fixture
def pair(headless, oblique_volume):
    rng = np.random.default_rng(1)
    decoded = oblique_volume.with_array(oblique_volume.array + rng.normal(0, 5, oblique_volume.array.shape).round())
    return mrml.add_volume_node(oblique_volume, "original"), mrml.add_volume_node(decoded, "decoded")


def test_residue_display_is_diverging_and_symmetric(headless, pair):
    original, _ = pair
    values = slicer.util.arrayFromVolume(original).astype(np.float32)
    residue = mrml.add_volume_node(
        mrml.volume_from_node(original).with_array(values - values.mean(), dtype="float32"), "residue", cast=False
    )
    color = mrml.show_residue(residue, 40.0)
    display = residue.GetDisplayNode()
    assert display.GetColorNodeID() == color.GetID() and color.IsA("vtkMRMLProceduralColorNode")
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (-40.0, 40.0)
    ctf = color.GetColorTransferFunction()
    low, mid, high = (np.array(ctf.GetColor(v)) for v in (-40.0, 0.0, 40.0))
    assert low[2] > low[0] and high[0] > high[2]  # blue below, red above
    assert np.allclose(mid, mid[0]) and mid[0] > 0.8  # zero residue is near white
    assert mrml.show_residue(residue, 10.0) is color  # updated, not duplicated
    assert color.GetColorTransferFunction().GetRange() == (-10.0, 10.0)


def test_residue_and_image_metrics_into_a_table(headless, pair, metrics):
    original, decoded = pair
    residue, table, values = core.DeepSTDCore().compute_residue(original, decoded)
    expected = slicer.util.arrayFromVolume(original).astype(np.float32) - slicer.util.arrayFromVolume(decoded)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(residue), expected, atol=1e-4)
    assert slicer.util.arrayFromVolume(residue).dtype == np.float32
    assert residue.GetDisplayNode().GetColorNode().GetAttribute(mrml.ATTR_DIVERGING) == "1"
    assert 3.0 < values["MAE"] < 5.0 and values["PSNR"] > 20
    assert table.GetNumberOfRows() == 1
    assert table.GetTable().GetColumnByName("PSNR").GetValue(0) == pytest.approx(values["PSNR"])
    assert table.GetColumnUnitLabel("PSNR") == "dB"
    composite = headless.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    if composite is not None:
        assert composite.GetForegroundVolumeID() == residue.GetID()


def test_residue_refuses_volumes_on_different_grids(headless, pair, metrics, oblique_volume):
    from deepstd.errors import InputError

    original, _ = pair
    shifted = mrml.add_volume_node(oblique_volume.with_array(oblique_volume.array, origin=(0.0, 0.0, 0.0)), "shifted")
    with pytest.raises(InputError, match="not on the grid"):
        core.DeepSTDCore().compute_residue(original, shifted)


def _segmentation(scene, reference, labels, names):
    from deepstd.volume import Volume

    volume = mrml.volume_from_node(reference)
    seg = core.DeepSTDCore(scene).labels_to_segmentation(
        Volume(labels.astype(np.float32), volume.spacing, volume.origin, volume.direction, "uint8"), "seg", reference
    )
    segmentation = seg.GetSegmentation()
    for i, name in enumerate(names):
        segmentation.GetNthSegment(i).SetName(name)
    return seg


def test_segment_masks_come_back_on_the_reference_grid(headless, pair):
    original, _ = pair
    labels = np.zeros(slicer.util.arrayFromVolume(original).shape, np.uint8)
    labels[1:5, 2:8, 3:9] = 1
    labels[2:6, 7:10, 9:12] = 2
    seg = _segmentation(headless.scene, original, labels, ["atrium", "vein"])
    masks = mrml.segment_masks(seg, original)
    np.testing.assert_array_equal(masks["atrium"], labels == 1)
    np.testing.assert_array_equal(masks["vein"], labels == 2)
    assert mrml.pair_segments(["a", "b", "x"], ["b", "y", "a"]) == [("a", "a"), ("b", "b"), ("x", "y")]


def test_dice_and_hd95_per_segment_into_a_table(headless, pair, metrics):
    original, _ = pair
    shape = slicer.util.arrayFromVolume(original).shape
    a = np.zeros(shape, np.uint8)
    a[1:5, 2:8, 3:9] = 1
    a[2:6, 7:10, 9:12] = 2
    b = a.copy()
    b[1:5, 2:8, 3] = 0  # one face of "atrium" eroded
    seg_a = _segmentation(headless.scene, original, a, ["atrium", "vein"])
    seg_b = _segmentation(headless.scene, original, b, ["atrium", "vein"])
    table, rows = core.DeepSTDCore().compute_segment_metrics(seg_a, seg_b, original)
    by_name = {r["Segment"]: r for r in rows}
    assert by_name["vein"]["Dice"] == pytest.approx(1.0)
    expected = 2 * (b == 1).sum() / ((a == 1).sum() + (b == 1).sum())
    assert by_name["atrium"]["Dice"] == pytest.approx(expected)
    assert by_name["atrium"]["HD95"] > 0 and by_name["vein"]["HD95"] >= 0
    assert table.GetNumberOfRows() == 2 and table.GetColumnUnitLabel("HD95") == "mm"
    assert table.GetTable().GetColumnByName("Segment").GetValue(0) == "atrium"
    voxel_ml = np.prod(original.GetSpacing()) / 1000
    assert by_name["atrium"]["Volume A"] == pytest.approx((a == 1).sum() * voxel_ml)
