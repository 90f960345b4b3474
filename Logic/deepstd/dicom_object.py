"""`.dstd` inside DICOM: a compressed series stored as ONE DICOM instance a PACS can hold.

The object is a Raw Data Storage instance (SOP class 1.2.840.10008.5.1.4.1.1.66) in the patient and
study of the source series, in a new series that names DeepSTD and the ratio, with the source series
referenced (RelatedSeriesSequence, purpose "Uncompressed predecessor") and the `.dstd` bytes in a
private block whose creator is "DEEPSTD 1". docs/FORMAT.md (".dstd inside DICOM") is the normative
text: every tag, VR and private element is listed there.

    wrap(dstd, source_meta) -> Dataset      unwrap(ds_or_path) -> bytes (the .dstd)
    write_object(dstd, source_meta, path)   is_deepstd_object(path) -> bool
    encode_object(source, output, bundle, ratio=…) -> report   decode_object(object, folder) -> Volume
    source_tags(ds_or_path) -> dict (what decoded DICOM output carries)

`source_meta` is what `deepstd.io.read` puts in `Volume.meta` ({"dicom": carried tags, "series_uid":
…}), or a flat dict of DICOM keywords (PatientID, StudyInstanceUID, SeriesInstanceUID, …). Optional
extras: "voxel_sha256" (of the decoded voxels, stored so a later decode can be checked against it).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from .errors import FormatError, InputError
from .io.dicom_writer import UNCOMPRESSED_PREDECESSOR, set_value, text_value

#: Raw Data Storage: a non-image instance whose IOD accepts the patient/study/series modules and
#: private data, so every PACS stores it and no viewer tries to render the payload.
RAW_DATA_STORAGE = "1.2.840.10008.5.1.4.1.1.66"
PRIVATE_GROUP = 0x0009
PRIVATE_CREATOR = "DEEPSTD 1"
#: element offsets within the private block (tag (0009,xxEE), xx = the block's slot, usually 10)
PAYLOAD, PAYLOAD_LENGTH, PAYLOAD_SHA256, SOURCE_JSON, VOXEL_SHA256, BUNDLE_NAME, RATIO = (
    0x10,
    0x11,
    0x12,
    0x13,
    0x14,
    0x15,
    0x16,
)
#: SeriesNumber of the object: the source's plus this (a restored series gets the source's + 1000)
SERIES_NUMBER_OFFSET = 2000
#: PurposeOfReferenceCodeSequence of the source reference (DICOM CID 7202 "Source Image Purposes of
#: Reference"): the referenced series is the uncompressed predecessor of this one.
#: Carried from the source into the object (standard attributes; all of them also in the source JSON).
PATIENT_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
STUDY_TAGS = ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
#: Identity the PACS may have corrected since the object was stored (patient merge, reconciliation):
#: on decoding, these are taken from the object's own attributes, not from its source JSON.
IDENTITY_TAGS = PATIENT_TAGS + STUDY_TAGS + ("PatientAge", "StudyDescription")
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as `generate_uid` uses


# --- making ---------------------------------------------------------------------------------------
def _source(source_meta: Optional[dict], header: dict) -> Tuple[Dict[str, Any], Optional[str]]:
    """(carried tags, source SeriesInstanceUID). The carried tags are the `.dstd` header's `dicom`
    entry when it has one (what decoding writes anyway; a de-identified file's replacement values
    are never swapped back for the real ones), else those of `source_meta`: `Volume.meta`
    ({"dicom": …, "series_uid": …}) or a flat dict of DICOM keywords."""
    meta = dict(source_meta or {})
    given: Dict[str, Any] = dict(meta.get("dicom") or {})
    given.update({k: v for k, v in meta.items() if k[:1].isupper()})
    stored = header.get("dicom")
    from_header = isinstance(stored, dict) and bool(stored)
    chosen = dict(stored) if from_header else given  # type: ignore[arg-type]
    carried = {k: v for k, v in chosen.items() if isinstance(k, str) and v is not None}
    reference = carried.get("source")
    series = (reference.get("series") if isinstance(reference, dict) else None) or carried.get("SeriesInstanceUID")
    if not series and not from_header:
        series = meta.get("series_uid")
    return carried, (str(series) if series else None)


def _put(ds, tag: str, value) -> None:
    """Set a carried value when it is one (a string or a list of strings); absent stays absent."""
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        set_value(ds, tag, value)


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(_UID_ROOT, entropy_srcs=[str(p) for p in parts]))


def object_uids(dstd_sha256: str, source_series_uid: Optional[str]) -> tuple:
    """(SeriesInstanceUID, SOPInstanceUID) of the object for this payload and source: derived from
    both, so storing the same bytes twice stores the same instance (a PACS keeps one copy)."""
    source = source_series_uid or ""
    return _uid("DeepSTD object series", source, dstd_sha256), _uid("DeepSTD object", source, dstd_sha256)


def _parsed(dstd: bytes):
    from .container import unpack

    if not isinstance(dstd, (bytes, bytearray, memoryview)):
        raise InputError(f"wrap needs the .dstd bytes, got {type(dstd).__name__}")
    try:
        return unpack(bytes(dstd))
    except FormatError as exc:
        raise FormatError(f"cannot wrap these bytes in a DICOM object: {exc}") from None


def _code(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def wrap(
    dstd: bytes,
    source_meta: Optional[dict] = None,
    series_uid: Optional[str] = None,
    sop_instance_uid: Optional[str] = None,
    voxel_sha256: Optional[str] = None,
):
    """The `.dstd` bytes as one Raw Data Storage instance (a `pydicom.FileDataset`, explicit VR
    little endian, ready to save or send) in the patient and study of `source_meta`, with a new
    series that references the source series. UIDs default to ones derived from the payload and
    the source series (`object_uids`). A FormatError if `dstd` is not a valid `.dstd`."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

    from . import __version__

    parsed = _parsed(dstd)
    data = bytes(dstd)
    digest = hashlib.sha256(data).hexdigest()
    source, source_series = _source(source_meta, parsed.header)
    voxel_sha256 = voxel_sha256 or (source_meta or {}).get("voxel_sha256")
    default_series, default_sop = object_uids(digest, source_series)
    series_uid, sop_instance_uid = series_uid or default_series, sop_instance_uid or default_sop
    ratio = parsed.achieved_ratio
    now = _dt.datetime.now()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(RAW_DATA_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)  # type: ignore[arg-type]
    _put(ds, "SpecificCharacterSet", source.get("SpecificCharacterSet"))
    ds.SOPClassUID, ds.SOPInstanceUID = RAW_DATA_STORAGE, sop_instance_uid
    # Patient and General Study modules (type 2 attributes present, empty when the source had none)
    for tag in PATIENT_TAGS + STUDY_TAGS:
        setattr(ds, tag, None)
        _put(ds, tag, source.get(tag))
    if not text_value(source.get("Modality")):  # not from DICOM: a made-up patient, as decoded output gets
        ds.PatientName, ds.PatientID = "Anonymous", "DEEPSTD"
    ds.StudyInstanceUID = text_value(source.get("StudyInstanceUID")) or generate_uid()
    if not ds.StudyDate:
        ds.StudyDate = now.strftime("%Y%m%d")
    for tag in ("StudyDescription", "PatientAge", "PatientIdentityRemoved", "DeidentificationMethod"):
        _put(ds, tag, source.get(tag))
    # General Series module: a new series, the source's modality, the source series referenced
    ds.Modality = text_value(source.get("Modality")) or "OT"
    ds.SeriesInstanceUID = series_uid
    try:
        number = int(float(text_value(source.get("SeriesNumber")) or 0))
    except ValueError:
        number = 0
    ds.SeriesNumber = number + SERIES_NUMBER_OFFSET if abs(number) < 10**9 else SERIES_NUMBER_OFFSET
    ds.SeriesDescription = f"DeepSTD {ratio:.0f}x {text_value(source.get('SeriesDescription'))}".strip()[:64]  # LO
    ds.SeriesDate, ds.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    _put(ds, "BodyPartExamined", source.get("BodyPartExamined"))
    if "BodyPartExamined" not in ds:
        ds.Laterality = None  # type 2C: unknown, since the body part is not known to be unpaired
    elif "Laterality" in source:
        _put(ds, "Laterality", source.get("Laterality"))
    if source_series:
        related = Dataset()
        related.StudyInstanceUID = ds.StudyInstanceUID
        related.SeriesInstanceUID = source_series
        related.PurposeOfReferenceCodeSequence = Sequence([_code(*UNCOMPRESSED_PREDECESSOR)])
        ds.RelatedSeriesSequence = Sequence([related])
    # Frame of Reference module: the decoded volume lies in the source's frame
    if text_value(source.get("FrameOfReferenceUID")):
        ds.FrameOfReferenceUID = source["FrameOfReferenceUID"]
        ds.PositionReferenceIndicator = None
        _put(ds, "PositionReferenceIndicator", source.get("PositionReferenceIndicator"))
    # General Equipment, Acquisition Context and Raw Data modules
    ds.Manufacturer = "DeepSTD"
    ds.ManufacturerModelName = "deepstd"
    ds.SoftwareVersions = str(__version__)
    ds.AcquisitionContextSequence = Sequence([])
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.CreatorVersionUID = _uid("DeepSTD", __version__)
    if "SpecificCharacterSet" not in ds and not all(
        str(e.value).isascii() for e in ds if isinstance(e.value, str) or e.VR == "PN"
    ):
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8 for carried non-ASCII text
    # the private block: the payload and what a reader needs to trust and describe it
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(PAYLOAD, "OB", data)
    block.add_new(PAYLOAD_LENGTH, "UL", len(data))
    block.add_new(PAYLOAD_SHA256, "LO", digest)
    recorded = dict(source)
    if source_series:
        recorded.setdefault("SeriesInstanceUID", source_series)
    block.add_new(SOURCE_JSON, "UT", json.dumps(recorded, sort_keys=True, ensure_ascii=True, separators=(",", ":")))
    if voxel_sha256:
        block.add_new(VOXEL_SHA256, "LO", str(voxel_sha256))
    bundle = parsed.header.get("bundle") or {}
    if bundle.get("name"):
        block.add_new(BUNDLE_NAME, "LO", str(bundle["name"])[:64])
    block.add_new(RATIO, "DS", f"{ratio:.6g}")
    return ds


def to_bytes(ds) -> bytes:
    """A dataset as DICOM file bytes (preamble, file meta, explicit VR little endian)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_object(dstd: bytes, source_meta: Optional[dict], path, **wrap_options) -> Path:
    """Wrap `dstd` (`wrap`) and write the DICOM file to `path` atomically (temporary file and
    rename in the same folder: a reader never sees half an object)."""
    from .container import write_atomic

    return write_atomic(path, to_bytes(wrap(dstd, source_meta, **wrap_options)))


# --- reading --------------------------------------------------------------------------------------
def _dataset(ds_or_path, defer: bool = False):
    """A pydicom Dataset from a Dataset, a path, or DICOM file bytes; FormatError if not DICOM."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.errors import InvalidDicomError

    if isinstance(ds_or_path, Dataset):
        return ds_or_path, "the dataset"
    source: Any = ds_or_path
    name = "the bytes"
    if isinstance(ds_or_path, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(ds_or_path))
    else:
        name = str(ds_or_path)
    try:
        return pydicom.dcmread(source, defer_size="64 KB" if defer else None), name
    except InvalidDicomError:
        raise FormatError(f"{name}: not a DICOM file") from None
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: a folder, not a DICOM object") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # pydicom raises assorted errors on damaged files
        raise FormatError(f"{name}: not a readable DICOM file ({type(exc).__name__}: {exc})") from None


def _block(ds):
    """The DEEPSTD private block of `ds`, or None."""
    try:
        return ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None


def _raw(block, offset: int):
    """An element's value; None if absent. Values a PACS stored as UN (implicit VR, unknown
    private tags) come back as bytes and are read here by the VR this format gives them."""
    try:
        element = block[offset]
    except KeyError:
        return None
    return element.value


def _text(value) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", "replace")
    return str(value).strip("\0 ")


def _integer(value) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return int.from_bytes(bytes(value)[:4], "little") if len(value) >= 4 else None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def unwrap(ds_or_path) -> bytes:
    """The `.dstd` bytes a DeepSTD object holds (a Dataset, a path or DICOM file bytes), checked:
    length and SHA-256 as recorded, and a valid `.dstd` (every CRC). A FormatError for a DICOM
    object that is not a DeepSTD object, or whose payload is damaged."""
    from .container import unpack

    ds, name = _dataset(ds_or_path)
    block = _block(ds)
    if block is None:
        sop = getattr(ds, "SOPClassUID", "?")
        raise FormatError(f"{name}: not a DeepSTD object (no {PRIVATE_CREATOR!r} private block; SOP class {sop})")
    payload = _raw(block, PAYLOAD)
    if not isinstance(payload, (bytes, bytearray)) or not payload:
        raise FormatError(f"{name}: DeepSTD object without its payload element (0009,xx10)")
    length = _integer(_raw(block, PAYLOAD_LENGTH))
    data = bytes(payload)
    if length is not None:
        if not (len(data) - 1 <= length <= len(data)):  # OB values are padded to even length
            raise FormatError(f"{name}: DeepSTD payload holds {len(data)} bytes, the object records {length}")
        data = data[:length]
    expected = _text(_raw(block, PAYLOAD_SHA256))
    if expected and hashlib.sha256(data).hexdigest() != expected.lower():
        raise FormatError(f"{name}: DeepSTD payload is corrupt (SHA-256 mismatch)")
    try:
        unpack(data)
    except FormatError as exc:
        raise FormatError(f"{name}: DeepSTD payload: {exc}") from None
    return data


def is_deepstd_object(path) -> bool:
    """True when `path` is a DICOM file with the DeepSTD private block (reads the header only;
    the payload is not checked: `unwrap` does that)."""
    try:
        ds, _ = _dataset(path, defer=True)
    except Exception:
        return False
    return _block(ds) is not None


def object_info(ds_or_path) -> dict:
    """What a DeepSTD object says about itself, without decoding: UIDs, source series, payload
    size and SHA-256, ratio, bundle name, voxel SHA-256 (when recorded)."""
    ds, name = _dataset(ds_or_path, defer=True)
    block = _block(ds)
    if block is None:
        raise FormatError(f"{name}: not a DeepSTD object (no {PRIVATE_CREATOR!r} private block)")
    related = getattr(ds, "RelatedSeriesSequence", None) or []
    ratio = _text(_raw(block, RATIO))
    return {
        "sop_instance_uid": str(getattr(ds, "SOPInstanceUID", "")),
        "series_uid": str(getattr(ds, "SeriesInstanceUID", "")),
        "study_uid": str(getattr(ds, "StudyInstanceUID", "")),
        "source_series_uid": str(related[0].SeriesInstanceUID) if related else None,
        "payload_bytes": _integer(_raw(block, PAYLOAD_LENGTH)),
        "payload_sha256": _text(_raw(block, PAYLOAD_SHA256)),
        "voxel_sha256": _text(_raw(block, VOXEL_SHA256)),
        "bundle": _text(_raw(block, BUNDLE_NAME)),
        "ratio": float(ratio) if ratio else None,
        "series_description": str(getattr(ds, "SeriesDescription", "")),
    }


def source_tags(ds_or_path) -> Dict[str, Any]:
    """The carried tags a decoded series should get (`volume.meta["dicom"]`, as `deepstd.io.read`
    makes it: strings, lists, the `source` instance references): the source's, as recorded in the
    object, with patient and study identity taken from the object's own attributes (a PACS may
    have corrected them since it stored the object)."""
    ds, name = _dataset(ds_or_path, defer=True)
    block = _block(ds)
    if block is None:
        raise FormatError(f"{name}: not a DeepSTD object (no {PRIVATE_CREATOR!r} private block)")
    try:
        tags = json.loads(_text(_raw(block, SOURCE_JSON)) or "{}")
    except ValueError:
        raise FormatError(f"{name}: the DeepSTD object's source tags (0009,xx13) are not JSON") from None
    if not isinstance(tags, dict):
        raise FormatError(f"{name}: the DeepSTD object's source tags (0009,xx13) are not a JSON object")
    for tag in IDENTITY_TAGS:
        value = getattr(ds, tag, None)
        if value not in (None, "") and not isinstance(value, (bytes, list)):
            tags[tag] = str(value)
    tags.pop("SeriesInstanceUID", None)  # the decoded series is a new series
    return tags


# --- files in, files out (what the CLI calls) -------------------------------------------------
def voxel_sha256(volume) -> str:
    """SHA-256 of a volume's voxels in its original sample type (what DICOM output stores)."""
    return hashlib.sha256(volume.to_dtype_array().tobytes()).hexdigest()


def encode_object(
    source,
    output,
    bundle,
    ratio: Optional[float] = None,
    budget_bytes: Optional[int] = None,
    max_error: Optional[float] = None,
    keep: Optional[str] = None,
    series_uid: Optional[str] = None,
    allow_gaps: bool = False,
    deidentify: Union[bool, str] = False,
    check: bool = True,
    **encode_options,
) -> dict:
    """`encode_file`, but the output is one DeepSTD DICOM object (written atomically) instead of
    a `.dstd`: read a scan (a DICOM series normally; any format works), encode it, wrap it in the
    source's patient and study (`deidentify`: the replacement identity, as `encode_file` makes
    it). With `check` the `.dstd` is decoded once first and the decoded voxels' SHA-256 is stored
    in the object. Returns a report with `encode_file`'s keys plus `dstd_bytes`, `series_uid`
    (the source's), `object_series_uid`, `object_sop_uid`, `voxel_sha256`."""
    from .bundle import resolve_bundle
    from .codec import budget_for, decode
    from .codec.files import encode_report, encode_scan

    started = time.perf_counter()
    bundle = resolve_bundle(bundle)
    volume, data = encode_scan(
        source, bundle, ratio, budget_bytes, max_error, keep=keep, series_uid=series_uid, allow_gaps=allow_gaps,
        deidentify=deidentify, **encode_options,
    )  # fmt: skip
    digest = None
    if check:
        decoded = decode(
            data, bundle, device=encode_options.get("device", "auto"), workers=encode_options.get("workers")
        )
        digest = voxel_sha256(decoded)
    path = write_object(data, volume.meta, output, voxel_sha256=digest)
    info = object_info(path)
    budget = None if max_error is not None else budget_for(volume, ratio, budget_bytes)
    size = path.stat().st_size
    return {
        **encode_report(source, path, volume, data, budget, started),
        "bytes": size,
        "dstd_bytes": len(data),
        "ratio": volume.raw_bytes / size,
        "dstd_ratio": volume.raw_bytes / len(data),
        "series_uid": volume.meta.get("series_uid"),
        "object_series_uid": info["series_uid"],
        "object_sop_uid": info["sop_instance_uid"],
        "voxel_sha256": digest,
    }


def decode_object(ds_or_path, output, bundle=None, **decode_options):
    """Decode a DeepSTD object (Dataset, path or bytes) and write the volume to `output`: a
    folder gets a DICOM series in the source's patient and study, marked lossy (ratio and method
    DEEPSTD); an image path (.nii.gz, .nrrd, …) gets that file. Returns the Volume."""
    from .codec import decode
    from .io import itk, write

    ds, _ = _dataset(ds_or_path)
    data = unwrap(ds)
    volume = decode(data, bundle, **decode_options)
    volume.meta["dicom"] = source_tags(ds)
    if itk.suffix_of(Path(output)) is None:
        write(volume, output, lossy_ratio=volume.raw_bytes / len(data), lossy_method="DEEPSTD")
    else:
        write(volume, output)
    return volume


__all__ = [
    "RAW_DATA_STORAGE",
    "PRIVATE_CREATOR",
    "wrap",
    "unwrap",
    "write_object",
    "is_deepstd_object",
    "object_info",
    "object_uids",
    "source_tags",
    "to_bytes",
    "voxel_sha256",
    "encode_object",
    "decode_object",
]
