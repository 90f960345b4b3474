"""The codec seam and the Codec section: bundle files (read by deepstd.bundle), template and
labels into the scene, finding the bundle a file needs, the typed header, atomic writes, clear
unavailability."""

import numpy as np
import pytest
from conftest import require_slicer_core

slicer = require_slicer_core()
import slicer.util  # noqa: E402, F811

from DeepSTDSlicerLib import codec, core  # noqa: E402


@pytest.fixture
def bundle(tmp_path, oblique_volume, monkeypatch):
    """A shipped bundle in a stand-in package folder: config, template (oblique) and 2 labels."""
    from deepstd import Volume
    from deepstd.bundle import save_bundle

    folder = tmp_path / "deepstd" / "bundles"
    labels = np.zeros(oblique_volume.array.shape, np.float32)
    labels[1:4, 2:6, 3:8], labels[4:6, 6:9, 8:11] = 1, 2
    label_volume = Volume(
        labels, oblique_volume.spacing, oblique_volume.origin, oblique_volume.direction, dtype="uint8"
    )
    path = save_bundle(
        folder / "ct-torso.dstdb",
        {
            "name": "ct-torso",
            "modality": "CT",
            "region": "torso",
            "description": "whole-body CT, arms down",
            "training": {"scans": 3},
        },
        oblique_volume,
        label_volume,
    )
    monkeypatch.setattr(codec.bundles(), "SHIPPED_DIR", folder)
    return path


def test_the_bundle_seam_is_the_package_and_torch_free():
    import deepstd.bundle

    assert codec.bundles() is deepstd.bundle
    for copy in ("shipped_bundle_dir", "shipped_bundles", "bundle_path", "find_bundle", "bundle_sha256"):
        assert not hasattr(codec, copy), f"codec.{copy} duplicates deepstd.bundle"


def test_shipped_bundles_are_listed_and_described(bundle, tmp_path):
    assert codec.bundles().shipped_bundles() == {"ct-torso": bundle}
    assert core.DeepSTDCore.bundle_names() == ["ct-torso"]
    for name_or_path in ("ct-torso", str(bundle)):
        text = core.DeepSTDCore.describe_bundle(name_or_path)
        assert text.startswith("<b>ct-torso</b>")
        assert "modality: CT" in text and "region: torso" in text and "trained on: 3 scans" in text
        assert text.endswith("<br>whole-body CT, arms down")
    from deepstd import Volume
    from deepstd.bundle import save_bundle

    bare = save_bundle(
        tmp_path / "bare.dstdb",
        {"name": "bare", "modality": "MR", "region": "knee"},
        Volume(np.zeros((4, 4, 4), np.float32)),
    )
    assert codec.describe_bundle(bare) == "<b>bare</b> | modality: MR | region: knee | trained on: ? scans"


def test_show_template_loads_scan_and_labels(headless, bundle, oblique_volume):
    node, segmentation = core.DeepSTDCore().show_template("ct-torso")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), oblique_volume.to_dtype_array())
    assert node.GetAttribute("DeepSTD.units") == "HU"
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0  # temporary removed
    composite = headless.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    if composite is not None:
        assert composite.GetBackgroundVolumeID() == node.GetID()


def test_unknown_and_broken_bundles_are_bundle_errors(bundle, tmp_path):
    from deepstd.errors import BundleError

    with pytest.raises(BundleError, match="'prostate-t2' not found.*ct-torso"):
        core.DeepSTDCore.describe_bundle("prostate-t2")
    broken = tmp_path / "broken.dstdb"
    broken.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="broken.dstdb: not a codec bundle"):
        codec.describe_bundle(broken)


def _header(volume, bundle_ref, **keys):
    """The typed header of a file coded with `bundle_ref` (a `deepstd.codec.header.BundleRef`)."""
    from deepstd.alignment import IntensityMap
    from deepstd.codec.header import CodecKeys, DstdHeader

    return DstdHeader.for_volume(
        volume, intensity=IntensityMap(-1000.0, 1000.0), bundle=bundle_ref, codec=CodecKeys((0, 0, 0)), **keys
    )


def test_the_bundle_a_file_needs_is_found_by_id(bundle, tmp_path, oblique_volume):
    from deepstd.bundle import bundle_sha256
    from deepstd.codec.header import LEAN_BUNDLE_ID, BundleRef
    from deepstd.errors import BundleError

    other = tmp_path / "mine.dstdb"
    other.write_bytes(b"weights")
    find = core.DeepSTDCore.bundle_file_for
    assert find(_header(oblique_volume, BundleRef("anything", bundle_sha256(other))), [other]) == other
    assert find(_header(oblique_volume, BundleRef("anything", bundle_sha256(other))), [tmp_path]) == other
    shipped_id = bundle_sha256(bundle)
    assert find(_header(oblique_volume, BundleRef("ct-torso", shipped_id)), []) == bundle
    full = _header(oblique_volume, BundleRef("ct-torso", shipped_id))
    assert find(full.lean(), [other]) == bundle  # a lean header: 16 hex digits
    assert len(full.lean().bundle.sha256) == LEAN_BUNDLE_ID
    with pytest.raises(BundleError, match="needs the codec bundle 'ct-torso'.*not available.*Codec section"):
        find(_header(oblique_volume, BundleRef("ct-torso", "0" * 64)), [other])  # the name alone is not enough


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


def test_read_header_types_the_header_and_adds_the_ratio(oblique_volume):
    from deepstd.codec.header import BundleRef, KeepInfo
    from deepstd.container import pack
    from deepstd.errors import FormatError
    from deepstd.grid import Frame

    header = _header(
        oblique_volume,
        BundleRef("la-mr", "ab" * 32),
        encoder_version="1.2.3",
        target_ratio=64.0,
        keep=KeepInfo(0.0, 12),
        warnings=("clipped",),
    )
    data = pack(header.to_dict(), {"shape": b"s" * 10, "texture": b"t" * 30})
    read = codec.read_header(data)
    assert read.header == header
    assert read.header.grid == Frame.of(oblique_volume) and read.header.dtype == "int16"
    assert read.header.units == "HU" and read.header.keep.voxels == 12 and read.header.warnings == ("clipped",)
    assert read.header.bundle == BundleRef("la-mr", "ab" * 32) and read.header.encoder_version == "1.2.3"
    assert read.achieved_ratio == pytest.approx(oblique_volume.raw_bytes / len(data), abs=0.01)
    lean = codec.read_header(pack(header.lean().to_dict(), {"shape": b"s", "texture": b"t"})).header
    assert lean.encoder_version is None and lean.bundle.sha256 == "ab" * 8
    with pytest.raises(FormatError):
        codec.read_header(data[:-3])
    with pytest.raises(FormatError, match="intensity"):  # the container alone would accept it
        codec.read_header(pack({k: v for k, v in header.to_dict().items() if k != "intensity"}, {"texture": b"t"}))


def test_unavailable_parts_raise_a_message_the_gui_can_show():
    with pytest.raises(codec.CodecUnavailable, match="Compression needs deepstd.not_there"):
        codec.require("deepstd.not_there", "Compression")
