"""`encode_file(…, deidentify=True)`: the `.dstd` header holds no patient identity (PS3.15 basic
profile through dicognito), replacement UIDs agree across the files of a run, and `deepstd info`
says what a file holds.

The header plumbing is tested with the codec's `encode` replaced by a stub that writes a valid
`.dstd` of the same header (fast); one real encode with the shipped ct-torso bundle checks the
whole path, decode to DICOM included.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from shared_data import data_path
from test_dicom_out import decoded_series, validator_errors

import deepstd
from deepstd import deidentify
from deepstd.alignment import IntensityMap
from deepstd.codec import files
from deepstd.codec.header import BundleRef, CodecKeys, DstdHeader
from deepstd.container import pack, unpack
from deepstd.describe import describe

#: an identity written into a copy of the chest CT (the shared copy is already pseudonymised)
IDENTITY = {
    "PatientName": "Doe^Jane^Quincy",
    "PatientID": "MRN8675309",
    "PatientBirthDate": "19470312",
    "AccessionNumber": "ACC4242424",
    "ReferringPhysicianName": "House^Gregory",
    "InstitutionName": "St Elsewhere Hospital",
    "StudyDescription": "CT THORAX Jane Doe follow-up",
}
SECRETS = [b"Doe", b"Jane", b"8675309", b"19470312", b"4242424", b"House", b"Elsewhere"]


def stub_encode(volume, bundle, **_):
    """A valid `.dstd` with the header the encoder would write (no shape or texture coding)."""
    header = DstdHeader.for_volume(
        volume,
        intensity=IntensityMap(-1024.0, 3071.0),
        bundle=BundleRef("stub", "0" * 64),
        codec=CodecKeys((0, 0, 0)),
        dicom=volume.meta.get("dicom") or None,
    )
    return pack(header.to_dict(), {"shape": b"", "texture": b""})


@pytest.fixture
def stub_codec(monkeypatch):
    monkeypatch.setattr(files, "encode", stub_encode)


def with_identity(source: Path, target: Path, every: int = 1, **extra) -> Path:
    """A copy of a series with IDENTITY (and `extra`) written into its headers."""
    target.mkdir(parents=True)
    for k, file in enumerate(sorted(source.iterdir())):
        if k % every or file.suffix != ".dcm":
            continue
        ds = pydicom.dcmread(file)
        for key, value in {**IDENTITY, **extra}.items():
            setattr(ds, key, value)
        ds.save_as(target / file.name)
    return target


def header_text(path: Path) -> bytes:
    """Everything a `.dstd` says outside its coded sections: the file bytes and the inflated header."""
    data = path.read_bytes()
    return data + json.dumps(unpack(data).header).encode()


def originals(folder: Path) -> list:
    uids = set()
    for file in folder.iterdir():
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        uids |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID}
    return [u.encode() for u in uids]


def test_deidentified_header_holds_no_identity(stub_codec, tmp_path):
    source = with_identity(data_path("ct", "chest_ct_dicom"), tmp_path / "chest", every=4)
    plain, clean = tmp_path / "plain.dstd", tmp_path / "clean.dstd"
    files.encode_file(source, plain, "stub", ratio=100)
    report = files.encode_file(source, clean, "stub", ratio=100, deidentify=True)
    assert all(s in header_text(plain) for s in SECRETS)  # the check sees identity where there is one
    text = header_text(clean)
    assert not [s for s in SECRETS + originals(source) if s in text]
    tags = unpack(clean.read_bytes()).header["dicom"]
    assert tags["PatientIdentityRemoved"] == "YES" and deidentify.is_deepstd_method(tags["DeidentificationMethod"])
    assert tags["DeidentificationMethod"][-1] == report["deidentified"][-1] == deidentify.method()
    assert tags["DeidentificationMethodCodeSequence"][:2] == ["113100", "113107"]
    for removed in deidentify.PROFILE_REMOVES:
        assert removed not in tags
    assert tags["StudyDate"] < "20070404" and tags["Modality"] == "CT" and tags["KVP"] == "120"
    assert len(tags["source"]["instances"]) == 16 and tags["source"]["class"] == pydicom.uid.CTImageStorage

    info = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in describe(clean).splitlines()[1:]}
    assert info["identity"].startswith(f"removed ({deidentify.method()})")
    plain_info = describe(plain)
    assert "identity:  PatientName, PatientID, PatientBirthDate, PatientSex, PatientAge, AccessionNumber" in plain_info
    assert "(the source says de-identified: Per DICOM PS 3.15 AnnexE" in plain_info


def test_two_series_of_one_study_get_one_replacement_study(stub_codec, tmp_path):
    folder = data_path("dicom_edge", "multi_series")
    series = sorted({pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in folder.iterdir()})
    study = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).StudyInstanceUID
    assert len(series) == 2

    def tags(uid, name, salt):
        files.encode_file(folder, tmp_path / name, "stub", ratio=50, series_uid=uid, deidentify=salt)
        return unpack((tmp_path / name).read_bytes()).header["dicom"]

    first, second = tags(series[0], "a.dstd", True), tags(series[1], "b.dstd", True)  # one run: one salt
    assert first["StudyInstanceUID"] == second["StudyInstanceUID"] != study
    assert first["FrameOfReferenceUID"] == second["FrameOfReferenceUID"]
    assert first["PatientID"] == second["PatientID"] and first["StudyDate"] == second["StudyDate"]
    assert first["source"]["series"] != second["source"]["series"]
    # a given salt reproduces a run's replacements in another process or run; another salt does not
    salted = [tags(series[0], "c.dstd", "hospital-secret"), tags(series[1], "d.dstd", "hospital-secret")]
    assert salted[0]["StudyInstanceUID"] == salted[1]["StudyInstanceUID"] != first["StudyInstanceUID"]
    again = deidentify.deidentify_meta(deepstd.read(folder, series_uid=series[0]).meta, "hospital-secret")
    assert again["dicom"]["StudyInstanceUID"] == salted[0]["StudyInstanceUID"]


def test_deidentified_decode_is_valid_dicom_marked_deidentified(tmp_path):
    source = with_identity(data_path("dicom_edge", "unsigned_12bit"), tmp_path / "mr")
    volume = deepstd.read(source)
    volume.meta.update(deidentify.deidentify_meta(volume.meta, deidentify.new_salt()))
    out = tmp_path / "decoded"
    decoded_series(source, out, volume=volume)
    first = sorted(out.iterdir())[len(volume.meta["dicom"]["source"]["instances"]) // 2]
    ds = pydicom.dcmread(first)
    assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod[-1] == deidentify.method()
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence][:2] == ["113100", "113107"]
    assert ds.PatientBirthDate == "" and ds.PatientSex == "" and "PatientAge" not in ds
    assert ds.StudyInstanceUID == volume.meta["dicom"]["StudyInstanceUID"]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.meta["dicom"]["source"]["series"]
    written = b"".join(f.read_bytes() for f in out.iterdir())
    assert not [s for s in SECRETS + originals(source) if s in written]
    assert validator_errors(first) <= validator_errors(sorted(source.iterdir())[7])


def test_uids_in_warnings_and_burned_in_annotation():
    meta = {
        "warnings": ["2 series found; read the largest, 1.2.826.0.1.3680043.2.1125.7 (512x512x5); choose another"],
        "series_uid": "1.2.826.0.1.3680043.2.1125.7",
        "dicom": {"PatientName": "Doe^Jane", "BurnedInAnnotation": "YES", "StudyInstanceUID": "1.2.3.4.5"},
    }
    out = deidentify.deidentify_meta(meta, "salt")
    assert "1.2.826.0.1.3680043.2.1125.7" not in json.dumps(out) and out["series_uid"] in out["warnings"][0]
    assert "512x512x5" in out["warnings"][0]
    assert out["dicom"]["PatientIdentityRemoved"] == "NO" and "BurnedInAnnotation YES" in out["warnings"][-1]
    assert deidentify.identity_line(out["dicom"]).startswith("removed from tags, not from pixels")
    assert deidentify.identity_line(None) == "none stored (not a DICOM source)"
    # a non-DICOM source: nothing to remove, the file still says it was de-identified
    assert deidentify.deidentify_meta({"warnings": []})["dicom"]["PatientIdentityRemoved"] == "YES"


@pytest.mark.slow
def test_real_deidentified_encode_of_chest_ct(tmp_path, one_thread):
    """The shipped ct-torso bundle at 256x on every other slice of the chest CT (about 30-60 s),
    then a region decode of two slices to DICOM."""
    source = with_identity(data_path("ct", "chest_ct_dicom"), tmp_path / "chest", every=2)
    dstd = tmp_path / "chest.dstd"
    report = files.encode_file(source, dstd, "ct-torso", ratio=256, deidentify=True)
    assert report["ratio"] >= 256 and report["deidentified"][-1] == deidentify.method()
    assert not [s for s in SECRETS + originals(source) if s in header_text(dstd)]
    assert f"identity:  removed ({deidentify.method()})" in describe(dstd)

    out = tmp_path / "decoded"
    files.decode_file(dstd, out, roi="0:512,0:512,15:17")
    decoded = sorted(out.iterdir())
    assert len(decoded) == 2
    written = b"".join(f.read_bytes() for f in decoded)
    assert not [s for s in SECRETS + originals(source) if s in written]
    ds = pydicom.dcmread(decoded[0])
    assert ds.PatientIdentityRemoved == "YES" and ds.LossyImageCompression == "01"
    refs = unpack(dstd.read_bytes()).header["dicom"]["source"]
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == refs["prefix"] + refs["instances"][15]
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(source.iterdir())]
    by_z = sorted(sources, key=lambda s: float(s.ImagePositionPatient[2]))
    assert float(by_z[15].ImagePositionPatient[2]) == pytest.approx(float(ds.ImagePositionPatient[2]))
    if shutil.which("dciodvfy"):
        assert validator_errors(decoded[0]) <= validator_errors(by_z[15].filename)
    assert np.isfinite(deepstd.read(out).array).all()
