"""Decoded DICOM series are PACS-clean: `dciodvfy` (Debian dicom3tools) finds no error in a decoded
slice that it does not also find in the source slice at the same position.

The decoded series is made the way `decode_file` makes it, without running the codec: the source
series is read, its carried tags go through JSON (as the `.dstd` header stores them) into a new
Volume's meta, and `deepstd.write(…, lossy_ratio=…, lossy_method="DEEPSTD")` writes the folder.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from shared_data import REQUIRE_DATA, data_path

import deepstd
from deepstd.volume import Volume

SERIES = {
    "chest_ct": ("ct", "chest_ct_dicom"),
    "ct_jpeg2000": ("ct", "abdomen", "TotalSeg_example_ct_dicom_j2k"),
    "mr": ("dicom_edge", "unsigned_12bit"),
}
#: what dciodvfy said of a decoded chest CT slice before this work (its Error lines)
OLD_ERRORS = (
    "PatientBirthDate",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "Laterality",
    "PatientPosition",
    "PositionReferenceIndicator",
    "Manufacturer",
    "KVP",
    "AcquisitionNumber",
)


def dciodvfy() -> str:
    """The validator's path; skips (fails under DEEPSTD_REQUIRE_DATA=1) when it is not installed."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        reason = "dciodvfy not installed (Debian/Ubuntu package dicom3tools)"
        if REQUIRE_DATA:
            pytest.fail(reason + " and DEEPSTD_REQUIRE_DATA=1")
        pytest.skip(reason)
    return exe


def _normalise(line: str) -> str:
    line = re.sub(r" = <[^>]*>", " = <>", line)  # quoted values go; attribute names (<Name>) stay
    line = re.sub(r"\[\d+\]", "[n]", line)
    return " ".join(line.split())


def validator_errors(file: Path) -> set:
    """dciodvfy's Error lines for one file, normalised (quoted values and value indices dropped)."""
    result = subprocess.run([dciodvfy(), str(file)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    return {_normalise(line) for line in lines if re.search(r"(^|- )Error - ", line)}


def decoded_series(source: Path, out: Path, ratio: float = 40.0, dstd=None, volume=None) -> Volume:
    """Write `source` (or `volume`, read from it) as decode_file writes a decoded `.dstd`: the
    header-stored tags through JSON. Returns the volume read."""
    volume = deepstd.read(source) if volume is None else volume
    stored = json.loads(json.dumps(volume.meta["dicom"], separators=(",", ":"), sort_keys=True))
    meta = {"warnings": [], "dstd": dict(dstd or {"bundle": "ct-torso", "coverage": 1.0}), "dicom": stored}
    decoded = Volume(
        volume.array, volume.spacing, volume.origin, volume.direction, dtype=volume.dtype, units=volume.units, meta=meta
    )
    deepstd.write(decoded, out, lossy_ratio=ratio, lossy_method="DEEPSTD")
    return volume


def _floats(value) -> list:
    return [float(v) for v in (value if isinstance(value, (list, pydicom.multival.MultiValue)) else [value])]


def _position(ds) -> np.ndarray:
    return np.asarray([float(v) for v in ds.ImagePositionPatient])


def same_position(files, ds) -> Path:
    """The file among `files` whose ImagePositionPatient is nearest to `ds`'s."""
    target = _position(ds)
    return min(files, key=lambda f: np.linalg.norm(_position(pydicom.dcmread(f, stop_before_pixels=True)) - target))


@pytest.mark.parametrize("name", sorted(SERIES))
def test_decoded_slice_has_no_validator_error_the_source_lacks(name, tmp_path):
    dciodvfy()
    folder = data_path(*SERIES[name])
    volume = decoded_series(folder, tmp_path / "decoded")
    sources = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
    source = sources[len(sources) // 2]
    source_ds = pydicom.dcmread(source, stop_before_pixels=True)
    decoded = same_position(sorted((tmp_path / "decoded").iterdir()), source_ds)
    ds = pydicom.dcmread(decoded, stop_before_pixels=True)
    assert np.allclose(_position(ds), _position(source_ds), atol=1e-3)

    before, after = validator_errors(source), validator_errors(decoded)
    assert after <= before, f"new errors: {sorted(after - before)}"
    assert not [e for e in after if any(f"<{tag}>" in e for tag in OLD_ERRORS)]

    # what a PACS and a viewer read
    assert list(ds.ImageType[:3]) == ["DERIVED", "SECONDARY", source_ds.ImageType[2]]
    assert ds.LossyImageCompression == "01" and float(ds.LossyImageCompressionRatio) == pytest.approx(40.0)
    assert ds.LossyImageCompressionMethod == "DEEPSTD"
    assert ds.DerivationCodeSequence[0].CodeValue == "113040"
    assert ds.SpecificCharacterSet == source_ds.SpecificCharacterSet
    assert ds.Manufacturer == source_ds.Manufacturer
    for tag in ("WindowCenter", "WindowWidth"):  # one window for the series: the first file's
        assert _floats(ds[tag].value) == _floats(volume.meta["dicom"][tag]) and tag in source_ds
    for tag in ("PatientID", "StudyDate", "PatientPosition"):
        assert str(ds.get(tag, "")) == str(source_ds.get(tag, "")), tag
    if str(source_ds.get("SeriesInstanceUID", "")):
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source_ds.SOPInstanceUID
        assert ds.SourceImageSequence[0].ReferencedSOPClassUID == source_ds.SOPClassUID
        assert ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121320"
        item = ds.ReferencedSeriesSequence[0]
        assert item.SeriesInstanceUID == source_ds.SeriesInstanceUID
        assert item.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source_ds.SOPInstanceUID
        assert ds.StudyInstanceUID == source_ds.StudyInstanceUID
    else:  # the JPEG 2000 series has empty UIDs: nothing valid to reference
        assert "SourceImageSequence" not in ds and "ReferencedSeriesSequence" not in ds


def test_every_decoded_slice_references_the_source_slice_at_its_position(tmp_path):
    folder = data_path("dicom_edge", "unsorted_slices")
    volume = decoded_series(folder, tmp_path / "decoded")
    by_uid = {}
    for f in folder.iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        by_uid[ds.SOPInstanceUID] = ds
    refs = volume.meta["dicom"]["source"]
    assert len(refs["instances"]) == volume.size[2] and refs["prefix"].endswith(".")
    for f in sorted((tmp_path / "decoded").iterdir()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        source = by_uid[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert np.allclose(_position(ds), _position(source), atol=1e-3)


def test_region_decode_references_the_slices_of_its_window(tmp_path):
    folder = data_path("dicom_edge", "unsigned_12bit")
    volume = deepstd.read(folder)
    z0, z1 = 4, 9
    part = Volume(
        volume.array[z0:z1, 10:50, 20:60],
        volume.spacing,
        tuple(np.asarray(volume.origin) + volume.direction_matrix @ (np.array([20, 10, z0]) * volume.spacing)),
        volume.direction,
        dtype=volume.dtype,
        units=volume.units,
        meta={
            "dicom": json.loads(json.dumps(volume.meta["dicom"])),
            "dstd": {"roi": [[20, 10, z0], [60, 50, z1]]},
        },
    )
    deepstd.write(part, tmp_path / "roi", lossy_ratio=64.0)
    by_uid = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in folder.iterdir()}
    files = sorted((tmp_path / "roi").iterdir())
    assert len(files) == z1 - z0
    for f in files:
        ds = pydicom.dcmread(f)
        source = by_uid[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        # the window's corner voxel lies in the referenced slice's plane
        offset = _position(ds) - _position(source)
        normal = np.cross(*np.asarray(source.ImageOrientationPatient, float).reshape(2, 3))
        assert abs(offset @ normal) < 1e-3


def test_lossy_history_of_a_lossy_source_is_kept(tmp_path):
    volume = deepstd.read(data_path("dicom_edge", "unsigned_12bit"))
    tags = dict(volume.meta["dicom"])
    tags.update(LossyImageCompression="01", LossyImageCompressionRatio="9.5", LossyImageCompressionMethod="ISO_10918_1")
    deepstd.write(volume.with_array(volume.array, meta={"dicom": tags}), tmp_path / "out", lossy_ratio=120.0)
    ds = pydicom.dcmread(sorted((tmp_path / "out").iterdir())[0])
    assert list(ds.LossyImageCompressionMethod) == ["ISO_10918_1", "DEEPSTD"]
    assert [float(r) for r in ds.LossyImageCompressionRatio] == [9.5, 120.0]
    assert ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121330"
    # written again without a ratio (a conversion), the source's lossy marking stays
    deepstd.write(volume.with_array(volume.array, meta={"dicom": tags}), tmp_path / "again")
    ds = pydicom.dcmread(sorted((tmp_path / "again").iterdir())[0])
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"


def test_volume_without_dicom_source_is_valid_ct_or_secondary_capture(tmp_path, oblique_volume):
    dciodvfy()
    for units in ("HU", "unitless"):
        out = deepstd.write(
            oblique_volume.with_array(oblique_volume.array, units=units), tmp_path / units, lossy_ratio=50.0
        )
        ds = pydicom.dcmread(sorted(out.iterdir())[0])
        assert ds.Modality == ("CT" if units == "HU" else "OT")
        assert validator_errors(sorted(out.iterdir())[0]) == set()


def test_damaged_header_tags_do_not_break_the_writer(tmp_path, oblique_volume):
    tags = {
        "PatientName": 7,
        "AcquisitionNumber": "not a number",
        "WindowCenter": [1, 2],
        "SeriesNumber": "nan",
        "ImageType": {"x": 1},
        "source": {"series": 5, "class": "1.2", "instances": "abc"},
        "DeidentificationMethodCodeSequence": ["113100", ["x"], ["1", "L", ""], "999"],
    }
    out = deepstd.write(oblique_volume.with_array(oblique_volume.array, meta={"dicom": tags}), tmp_path / "out")
    ds = pydicom.dcmread(sorted(out.iterdir())[0])
    assert "SourceImageSequence" not in ds and ds.SeriesNumber == 1000 and ds.AcquisitionNumber is None
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100"]
    np.testing.assert_array_equal(deepstd.read(out).array, oblique_volume.array)
