"""`.dstd` inside DICOM (deepstd.dicom_object): one Raw Data Storage instance per compressed series,
in the source's patient and study, valid for dciodvfy, the payload exact and checked."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from shared_data import REQUIRE_DATA, data_path

from deepstd import dicom_object as obj
from deepstd import read
from deepstd.container import pack
from deepstd.errors import FormatError, InputError


def fake_dstd(extra: int = 0, header_dicom=None) -> bytes:
    """A valid `.dstd` container (not decodable: wrapping only needs the container to parse)."""
    header = {
        "geometry": {
            "size": [4, 4, 4],
            "spacing": [1, 1, 1],
            "origin": [0, 0, 0],
            "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
        },
        "dtype": "int16",
        "bundle": {"name": "ct-torso", "sha256": "ab" * 32},
    }
    if header_dicom is not None:
        header["dicom"] = header_dicom
    return pack(header, {"shape": b"s" * (3 + extra), "texture": b"t" * 7})


@pytest.fixture(scope="module")
def chest():
    return read(data_path("ct", "chest_ct_dicom"))


@pytest.fixture(scope="module")
def prostate():
    return read(data_path("dicom_edge", "unsigned_12bit"))


def dciodvfy(path) -> list:
    """dciodvfy's Error lines for a file (dicom3tools); skipped without it unless data is required."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        if REQUIRE_DATA:
            pytest.fail("dciodvfy (dicom3tools) is not installed and DEEPSTD_REQUIRE_DATA=1")
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    assert "RawData" in lines, lines  # it recognised the IOD
    return [line for line in lines if line.startswith("Error")]


def test_wrap_keeps_identity_new_series_and_exact_payload(chest, tmp_path):
    for odd in (0, 1):  # odd and even payload lengths (OB values are padded to even length)
        data = fake_dstd(odd)
        path = obj.write_object(data, chest.meta, tmp_path / f"o{odd}.dcm")
        ds = pydicom.dcmread(path)
        source = chest.meta["dicom"]
        assert ds.SOPClassUID == obj.RAW_DATA_STORAGE == ds.file_meta.MediaStorageSOPClassUID
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        for tag in ("PatientID", "StudyInstanceUID", "StudyDate", "FrameOfReferenceUID", "Modality"):
            assert str(getattr(ds, tag)) == source[tag], tag
        assert str(ds.PatientName) == source["PatientName"]
        assert ds.SeriesInstanceUID != chest.meta["series_uid"]
        assert ds.SeriesDescription.startswith("DeepSTD ") and "x 5mm" in ds.SeriesDescription
        assert int(ds.SeriesNumber) == int(source["SeriesNumber"]) + obj.SERIES_NUMBER_OFFSET
        related = ds.RelatedSeriesSequence[0]
        assert related.SeriesInstanceUID == chest.meta["series_uid"]
        assert related.StudyInstanceUID == source["StudyInstanceUID"]
        assert related.PurposeOfReferenceCodeSequence[0].CodeValue == "121320"
        block = ds.private_block(0x0009, "DEEPSTD 1")
        assert block[0x10].VR == "OB" and len(block[0x10].value) % 2 == 0
        assert obj.unwrap(path) == data and obj.unwrap(ds) == data and obj.unwrap(path.read_bytes()) == data
        assert obj.is_deepstd_object(path)
    info = obj.object_info(path)
    assert info["source_series_uid"] == chest.meta["series_uid"] and info["payload_bytes"] == len(data)
    assert info["bundle"] == "ct-torso" and info["ratio"] > 0
    tags = obj.source_tags(path)  # what decoded output carries: the source's, references included
    assert tags["source"]["series"] == chest.meta["series_uid"] and len(tags["source"]["instances"]) == 64
    assert "SeriesInstanceUID" not in tags and tags["SeriesDescription"] == "5mm"


def test_uids_follow_the_payload(chest, tmp_path):
    """The same bytes from the same series wrap to the same instance (a re-sent object is one
    instance on the server); other bytes to another."""
    a, b = obj.wrap(fake_dstd(), chest.meta), obj.wrap(fake_dstd(), chest.meta)
    c = obj.wrap(fake_dstd(2), chest.meta)
    assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (b.SeriesInstanceUID, b.SOPInstanceUID)
    assert a.SOPInstanceUID != c.SOPInstanceUID and a.SeriesInstanceUID != c.SeriesInstanceUID


@pytest.mark.parametrize("which", ["chest", "prostate", "nifti"])
def test_dciodvfy_finds_no_errors(which, chest, prostate, tmp_path):
    meta = {"chest": chest.meta, "prostate": prostate.meta, "nifti": {}}[which]
    path = obj.write_object(fake_dstd(), meta, tmp_path / "object.dcm")
    assert dciodvfy(path) == []
    ds = pydicom.dcmread(path)
    if which == "prostate":  # a body part: Laterality left out (prostate is unpaired)
        assert ds.BodyPartExamined == "PROSTATE" and ds.Modality == "MR"
    if which == "nifti":  # no DICOM source: a new study, Modality OT, no reference
        assert ds.Modality == "OT" and "RelatedSeriesSequence" not in ds and ds.PatientID == "DEEPSTD"


def test_a_de_identified_header_wins_over_the_source_meta(chest):
    """A `.dstd` whose header carries (de-identified) DICOM tags is wrapped with those, never with
    the identity in `source_meta`."""
    header_dicom = {"PatientID": "ANON-1", "PatientName": "ANON", "StudyInstanceUID": "1.2.3.4", "Modality": "CT"}
    ds = obj.wrap(fake_dstd(header_dicom=header_dicom), chest.meta)
    assert ds.PatientID == "ANON-1" and ds.StudyInstanceUID == "1.2.3.4"
    assert "RelatedSeriesSequence" not in ds  # the header names no source series


def test_non_ascii_names_get_a_character_set(tmp_path):
    meta = {"dicom": {"PatientName": "Müller^Jürgen", "PatientID": "X1", "Modality": "MR"}, "series_uid": "1.2.3"}
    path = obj.write_object(fake_dstd(), meta, tmp_path / "o.dcm")
    ds = pydicom.dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192" and str(ds.PatientName) == "Müller^Jürgen"
    assert obj.source_tags(path)["PatientName"] == "Müller^Jürgen"


def test_unwrap_refuses_what_is_not_a_deepstd_object(tmp_path):
    ct_slice = data_path("ct", "chest_ct_dicom", "1-01.dcm")
    with pytest.raises(FormatError, match="not a DeepSTD object") as info:
        obj.unwrap(ct_slice)
    assert "\n" not in str(info.value)
    assert not obj.is_deepstd_object(ct_slice)
    text = tmp_path / "notes.dcm"
    text.write_text("hello")
    with pytest.raises(FormatError, match="not a DICOM file"):
        obj.unwrap(text)
    assert not obj.is_deepstd_object(text) and not obj.is_deepstd_object(tmp_path / "absent.dcm")
    with pytest.raises(InputError, match="no such file"):
        obj.unwrap(tmp_path / "absent.dcm")
    with pytest.raises(FormatError, match="cannot wrap"):
        obj.wrap(b"not a dstd", {})


def test_unwrap_catches_a_damaged_payload(chest, tmp_path):
    ds = obj.wrap(fake_dstd(), chest.meta)
    block = ds.private_block(0x0009, "DEEPSTD 1")
    payload = bytearray(block[0x10].value)
    payload[-2] ^= 0xFF
    block[0x10].value = bytes(payload)
    with pytest.raises(FormatError, match="SHA-256 mismatch"):
        obj.unwrap(ds)
    block[0x11].value = 3
    with pytest.raises(FormatError, match="records 3"):
        obj.unwrap(ds)


def test_survives_a_pacs_that_stores_implicit_vr(chest, tmp_path):
    """A PACS may transcode to implicit VR little endian: the private elements then come back as UN
    (raw bytes); unwrap still reads length, SHA-256 and payload."""
    data = fake_dstd(1)
    ds = obj.wrap(data, chest.meta)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    path = tmp_path / "implicit.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.private_block(0x0009, "DEEPSTD 1")[0x11].VR in ("UN", "UL")
    assert obj.unwrap(path) == data and obj.object_info(path)["payload_bytes"] == len(data)


def test_write_object_is_atomic(chest, tmp_path, monkeypatch):
    target = tmp_path / "out" / "object.dcm"
    obj.write_object(fake_dstd(), chest.meta, target)
    before = target.read_bytes()

    def broken(ds):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(obj, "to_bytes", broken)
    with pytest.raises(OSError):
        obj.write_object(fake_dstd(2), chest.meta, target)
    assert target.read_bytes() == before and sorted(p.name for p in target.parent.iterdir()) == ["object.dcm"]


@pytest.mark.slow
def test_encode_object_and_decode_object_round_trip(tiny_bundle, tmp_path, one_thread):
    """File in, DeepSTD object out, and back to a lossy-marked DICOM series in the same study with
    exactly the voxels a plain decode of the payload gives."""
    from codec_helpers import blob_volume

    from deepstd import codec, write

    source = tmp_path / "source"
    write(blob_volume((40, 36, 10), (1.0, 1.0, 2.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)), source)
    report = obj.encode_object(source, tmp_path / "object.dcm", tiny_bundle, ratio=8)
    assert report["bytes"] > report["dstd_bytes"] > 0 and report["voxel_sha256"]
    original = read(source)
    restored = tmp_path / "restored"
    volume = obj.decode_object(tmp_path / "object.dcm", restored, bundle=tiny_bundle)
    plain = codec.decode(obj.unwrap(tmp_path / "object.dcm"), tiny_bundle)
    assert obj.voxel_sha256(volume) == obj.voxel_sha256(plain) == report["voxel_sha256"]
    back = read(restored)
    assert np.array_equal(back.to_dtype_array(), plain.to_dtype_array())
    assert back.size == original.size and np.allclose(back.spacing, original.spacing)
    assert np.allclose(back.origin, original.origin, atol=1e-4)
    first = pydicom.dcmread(sorted(restored.iterdir())[0])
    src = pydicom.dcmread(sorted(source.iterdir())[0])
    assert first.StudyInstanceUID == src.StudyInstanceUID and first.PatientID == src.PatientID
    assert first.SeriesInstanceUID not in (src.SeriesInstanceUID, report["series_uid"])
    assert first.LossyImageCompression == "01" and "DEEPSTD" in first.LossyImageCompressionMethod
