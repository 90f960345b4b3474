"""The codec seam and the Codec section: bundle files (read by deepstd.bundle), template and
labels into the scene, finding the bundle a file needs, atomic writes, clear unavailability."""
import numpy as np
import pytest

from conftest import require_slicer_core

slicer = require_slicer_core()
import slicer.util  # noqa: E402

from DeepSTDSlicerLib import codec, core  # noqa: E402


@pytest.fixture
def bundle(tmp_path, oblique_volume, monkeypatch):
    """A shipped bundle in a stand-in package folder: config, template (oblique) and 2 labels."""
    from deepstd import Volume
    from deepstd.bundle import save_bundle

    folder = tmp_path / "deepstd" / "bundles"
    labels = np.zeros(oblique_volume.array.shape, np.float32)
    labels[1:4, 2:6, 3:8], labels[4:6, 6:9, 8:11] = 1, 2
    label_volume = Volume(labels, oblique_volume.spacing, oblique_volume.origin, oblique_volume.direction,
                          dtype="uint8")
    path = save_bundle(folder / "ct-torso.dstdb", {"name": "ct-torso", "modality": "CT", "region": "torso",
                                                    "training": {"scans": 3}}, oblique_volume, label_volume)
    monkeypatch.setattr(codec, "shipped_bundle_dir", lambda: folder)
    return path


def test_shipped_bundles_are_listed_and_described(bundle):
    assert codec.shipped_bundles() == {"ct-torso": bundle}
    assert core.DeepSTDCore.bundle_names() == ["ct-torso"]
    text = core.DeepSTDCore.describe_bundle("ct-torso")
    assert "modality: CT" in text and "region: torso" in text and "trained on: 3 scans" in text
    assert codec.bundle_path(str(bundle)) == bundle


def test_show_template_loads_scan_and_labels(headless, bundle, oblique_volume):
    node, segmentation = core.DeepSTDCore().show_template("ct-torso")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), oblique_volume.to_dtype_array())
    assert node.GetAttribute("DeepSTD.units") == "HU"
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0   # temporary removed
    composite = headless.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    if composite is not None:
        assert composite.GetBackgroundVolumeID() == node.GetID()


def test_unknown_and_broken_bundles_are_bundle_errors(bundle, tmp_path):
    from deepstd.errors import BundleError

    with pytest.raises(BundleError, match="'prostate-t2' not found.*ct-torso"):
        codec.bundle_path("prostate-t2")
    broken = tmp_path / "broken.dstdb"
    broken.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="broken.dstdb: not a codec bundle"):
        codec.describe_bundle(broken)


def test_the_bundle_a_file_needs_is_found_by_id_then_name(bundle, tmp_path):
    from deepstd.errors import BundleError

    other = tmp_path / "mine.dstdb"
    other.write_bytes(b"weights")
    assert codec.find_bundle("anything", codec.bundle_sha256(other), [other]) == other
    assert codec.find_bundle("ct-torso", codec.bundle_sha256(bundle)) == bundle
    assert codec.find_bundle("ct-torso") == bundle
    with pytest.raises(BundleError, match="needs the codec bundle 'ct-torso'.*Codec"):
        codec.find_bundle("ct-torso", "0" * 64)


def test_write_atomic_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    import os

    target = tmp_path / "out.dstd"
    codec.write_atomic(str(target), b"DSTD1")
    assert target.read_bytes() == b"DSTD1"

    def failing_rename(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_rename)
    with pytest.raises(OSError, match="disk full"):
        codec.write_atomic(str(tmp_path / "bad.dstd"), b"DSTD2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dstd"]


def test_read_header_verifies_the_container_and_adds_the_ratio(oblique_volume):
    container = pytest.importorskip("deepstd.container", reason="deepstd.container not importable yet")
    header = {**container.geometry_header(oblique_volume), "bundle": {"name": "la-mr", "sha256": "ab" * 32}}
    data = container.pack(header, {"shape": b"s" * 10, "texture": b"t" * 30})
    read = codec.read_header(data)
    assert read["bundle"]["name"] == "la-mr" and read["dtype"] == "int16"
    assert read["achieved_ratio"] == pytest.approx(oblique_volume.raw_bytes / len(data), abs=0.01)
    from deepstd.errors import FormatError
    with pytest.raises(FormatError):
        codec.read_header(data[:-3])


def test_unavailable_parts_raise_a_message_the_gui_can_show():
    with pytest.raises(codec.CodecUnavailable, match="Compression needs deepstd.not_there"):
        codec.require("deepstd.not_there", "Compression")


def test_header_bundle_reads_name_and_id():
    assert codec.header_bundle({"bundle": {"name": "la-mr", "sha256": "ab"}}) == ("la-mr", "ab")
    assert codec.header_bundle({"bundle": "la-mr", "bundle_sha256": "cd"}) == ("la-mr", "cd")
