"""DICOM out with pydicom: a decoded volume becomes a new derived series whose lossy-compression
tags say what happened to it, carrying the patient and study of the source when it was DICOM (the
tags `dicom.CARRIED_TAGS` lists, stored in the `.dstd` header), so that it passes `dciodvfy` with no
error the source does not have (docs/CODEC.md, "DICOM output").
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .dicom import CARRIED_TAGS, MR_IMAGE_TAGS

_SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

#: Type 2 attributes (PS3.3 Patient, General Study, Frame of Reference, General Equipment modules)
#: written present-empty when the source gave no value.
_TYPE2 = (
    "PatientBirthDate",
    "PatientSex",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "Manufacturer",
)
#: Type 2 (and 2C that apply to a plain axial image) attributes of the CT / MR Image IODs.
_TYPE2_BY_MODALITY = {
    "CT": ("PositionReferenceIndicator", "PatientPosition", "KVP", "AcquisitionNumber"),
    "MR": (
        "PositionReferenceIndicator",
        "PatientPosition",
        "ScanOptions",
        "MRAcquisitionType",
        "EchoTime",
        "EchoTrainLength",
        "RepetitionTime",
    ),
}
#: BodyPartExamined terms (PS3.16 CID 4031) of unpaired parts: Laterality (Type 2C, for paired
#: parts) stays absent for them unless the source has it; any other part, or none, gets it
#: present-empty ("unknown"), as dciodvfy requires.
_UNPAIRED = frozenset(
    """ABDOMEN ABDOMENPELVIS AORTA BLADDER BRAIN CHEST CHESTABDOMEN CHESTABDPELVIS CSPINE COCCYX
    ESOPHAGUS HEAD HEADNECK HEART LIVER LSPINE NECK NECKCHEST NECKCHESTABDOMEN NECKCHESTABDPELV
    PANCREAS PELVIS PROSTATE RECTUM SACRUM SKULL SPINE SPLEEN SSPINE STOMACH THORAX TSPINE UTERUS
    WHOLEBODY""".split()
)
#: carried tags of one image IOD only: not written into another
_ONLY_IN = {
    "KVP": "CT",
    **{tag: "MR" for tag in MR_IMAGE_TAGS},
}
#: carried tags the writer sets itself (new UIDs, description, lossy history) rather than copying
_DERIVED_HERE = (
    "SpecificCharacterSet",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "ImageType",
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
)

#: (code value, scheme, meaning) of the codes the writer uses (PS3.16 DCM)
_LOSSY_COMPRESSION = ("113040", "DCM", "Lossy Compression")  # CID 7203 Image Derivation
UNCOMPRESSED_PREDECESSOR = ("121320", "DCM", "Uncompressed predecessor")  # CID 7202 purpose of reference
_LOSSY_PREDECESSOR = ("121330", "DCM", "Lossy compressed predecessor")


def write_dicom_series(
    volume: Volume,
    folder,
    lossy_ratio: Optional[float] = None,
    lossy_method: str = "DEEPSTD",
    series_description: Optional[str] = None,
) -> Path:
    """Write `volume` as a new single-frame series in `folder` (created; must be empty or absent).

    With `lossy_ratio` the series is marked as lossy-compressed (LossyImageCompression "01", the
    ratio and the method appended to any lossy history of the source) and derived (ImageType
    DERIVED\\SECONDARY plus the source's value 3 on, DerivationCodeSequence "Lossy Compression").
    Patient, study, equipment, window and acquisition tags come from `volume.meta["dicom"]` when the
    volume was read from DICOM (Type 2 attributes without a value are written empty; otherwise a
    new study is made), and each slice references the source instance it was decoded from
    (SourceImageSequence, ReferencedSeriesSequence) when the header stored them.
    Files go to a temporary folder that is renamed into place: no partial series on failure.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"{folder}: DICOM output needs a new or empty folder")
    raw = volume.meta.get("dicom", {})
    source = {k: v for k, v in (raw.items() if isinstance(raw, dict) else ()) if _valid_value(v)}
    from_dicom = bool(text_value(source.get("Modality")))  # read from DICOM (Modality is Type 1 there)
    modality = text_value(source.get("Modality")) or ("CT" if volume.units == "HU" else "OT")
    sop_class = _SOP_CLASSES.get(modality, _SECONDARY_CAPTURE)
    image_modality = modality if sop_class != _SECONDARY_CAPTURE else ""
    stored, slope, intercept, signed, bits = _stored_pixels(volume)
    series_uid = generate_uid()
    study_uid = text_value(source.get("StudyInstanceUID")) or generate_uid()
    frame_uid = text_value(source.get("FrameOfReferenceUID")) or generate_uid()
    now = _dt.datetime.now()
    direction = volume.direction_matrix
    row, col = direction[:, 0], direction[:, 1]
    nz = stored.shape[0]
    references = _slice_references(raw.get("source") if isinstance(raw, dict) else None, volume, nz)
    source_lossy = text_value(source.get("LossyImageCompression")) == "01"
    methods, ratios = _lossy_history(source) if source_lossy else ([], [])
    if lossy_ratio:
        methods, ratios = methods + [lossy_method], ratios + [f"{lossy_ratio:.4g}"]
    image_type = ["DERIVED", "SECONDARY", *_values(source.get("ImageType"))[2:]]
    if modality == "CT" and len(image_type) == 2:
        image_type.append("AXIAL")  # CT Image: value 3 is required (AXIAL or LOCALIZER)
    purpose = _LOSSY_PREDECESSOR if source_lossy else UNCOMPRESSED_PREDECESSOR

    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".deepstd-dicom-", dir=parent))
    try:
        for k in range(nz):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = UID(sop_class)
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)  # type: ignore[arg-type]
            if "SpecificCharacterSet" in source:
                set_value(ds, "SpecificCharacterSet", source["SpecificCharacterSet"])
            for tag in _TYPE2 + _TYPE2_BY_MODALITY.get(image_modality, ()):
                setattr(ds, tag, None)
            if text_value(source.get("BodyPartExamined")).upper() not in _UNPAIRED:
                ds.Laterality = None  # Type 2C: present (empty: unknown) unless the part is unpaired
            for tag, value in source.items():
                if (
                    tag in CARRIED_TAGS
                    and tag not in _DERIVED_HERE
                    and _ONLY_IN.get(tag, image_modality) == image_modality
                ):
                    set_value(ds, tag, value)
            if image_modality == "MR" and "IR" in _values(source.get("ScanningSequence")) and "InversionTime" not in ds:
                ds.InversionTime = None  # Type 2C: required for inversion recovery
            codes = source.get("DeidentificationMethodCodeSequence")
            if isinstance(codes, list) and codes:
                ds.DeidentificationMethodCodeSequence = [_code(*c) for c in _deidentification_codes(codes)]
            if not from_dicom:  # a made-up patient; a DICOM source's empty ones stay empty
                ds.PatientName, ds.PatientID = "Anonymous", "DEEPSTD"
            ds.PatientName = text_value(source.get("PatientName", ds.get("PatientName")))
            ds.PatientID = text_value(source.get("PatientID", ds.get("PatientID")))
            set_value(ds, "StudyDate", text_value(source.get("StudyDate")) or now.strftime("%Y%m%d"))
            ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.Modality = modality
            ds.SeriesNumber = int(_number(source.get("SeriesNumber"))) + 1000
            ds.InstanceNumber = k + 1
            ds.SeriesDescription = (
                series_description
                or (
                    f"{text_value(source.get('SeriesDescription'))} DeepSTD {lossy_ratio:.0f}x".strip()
                    if lossy_ratio
                    else (text_value(source.get("SeriesDescription")) or "DeepSTD")
                )
            )[-64:]  # VR LO
            ds.SeriesDate, ds.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
            ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
            ds.ImageType = image_type
            if sop_class == _SECONDARY_CAPTURE:
                ds.ConversionType = "WSD"  # SC Equipment (Type 1): workstation
                ds.PatientOrientation = None  # Type 2C without an Image Plane module
            if methods:
                ds.LossyImageCompression = "01"
                ds.LossyImageCompressionRatio = ratios
                ds.LossyImageCompressionMethod = methods
            if lossy_ratio:
                ds.DerivationDescription = f"Lossy compression by {lossy_method}, ratio {lossy_ratio:.4g}:1"
                ds.DerivationCodeSequence = [_code(*_LOSSY_COMPRESSION)]
            reference = references[k]
            if reference is not None:
                ref_series, ref_class, ref_uid, ref_frame = reference
                image = _instance_reference(ref_class, ref_uid, ref_frame)
                image.PurposeOfReferenceCodeSequence = [_code(*purpose)]
                ds.SourceImageSequence = [image]
                item = _dataset(SeriesInstanceUID=ref_series)
                item.ReferencedInstanceSequence = [_instance_reference(ref_class, ref_uid, None)]
                ds.ReferencedSeriesSequence = [item]  # Common Instance Reference (1C: same study)
            position = np.asarray(volume.origin) + direction[:, 2] * volume.spacing[2] * k
            ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
            ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
            ds.PixelSpacing = [f"{volume.spacing[1]:.8g}", f"{volume.spacing[0]:.8g}"]
            ds.SliceThickness = f"{volume.spacing[2]:.8g}"
            ds.SpacingBetweenSlices = f"{volume.spacing[2]:.8g}"
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
            ds.BitsAllocated = ds.BitsStored = bits
            ds.HighBit = bits - 1
            ds.PixelRepresentation = 1 if signed else 0
            if image_modality != "MR" or (slope, intercept) != (1.0, 0.0):  # not in the MR Image IOD
                ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
            if modality == "CT":
                ds.RescaleType = "HU"
            elif sop_class == _SECONDARY_CAPTURE:
                ds.RescaleType = "US"  # Type 1C with a rescale: unspecified units
            if "SpecificCharacterSet" not in ds and not _ascii(ds):
                ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8 for carried non-ASCII text
            ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
            ds.save_as(staging / f"IM{k + 1:05d}.dcm", enforce_file_format=True)
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _valid_value(value) -> bool:
    """A header value the writer may set: a string, or a list of strings (codes: lists)."""
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, (str, list)) for v in value))


def set_value(ds, tag: str, value) -> None:
    """Set a carried value; one its VR cannot hold (a damaged header) is left out, not fatal."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pydicom warns of a value invalid for the VR
            setattr(ds, tag, value)
    except (ValueError, TypeError, OverflowError, UserWarning):
        pass


def text_value(value) -> str:
    return value if isinstance(value, str) else ""


def _values(value) -> List[str]:
    if isinstance(value, str):
        return value.split("\\") if value else []
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _number(value) -> float:
    try:
        number = float(text_value(value) or 0)
    except ValueError:
        return 0.0
    return number if abs(number) < 1e9 else 0.0


def _ascii(ds) -> bool:
    for element in ds:
        if isinstance(element.value, str) and not element.value.isascii():
            return False
        if element.VR == "PN" and element.value is not None and not str(element.value).isascii():
            return False
    return True


def _lossy_history(source) -> tuple:
    """The source's lossy steps (methods, ratios) when it states both, one per step."""
    methods = _values(source.get("LossyImageCompressionMethod"))
    ratios = _values(source.get("LossyImageCompressionRatio"))
    return (methods, ratios) if methods and len(methods) == len(ratios) else ([], [])


def _dataset(**values):
    from pydicom.dataset import Dataset

    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def _code(value: str, scheme: str, meaning: str):
    return _dataset(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _instance_reference(sop_class: str, sop_instance: str, frame: Optional[int]):
    item = _dataset(ReferencedSOPClassUID=sop_class, ReferencedSOPInstanceUID=sop_instance)
    if frame:
        item.ReferencedFrameNumber = frame
    return item


def _deidentification_codes(codes: list) -> List[tuple]:
    """(value, scheme, meaning) of the stored de-identification codes: a DCM code value of CID 7050
    alone, any other code as [value, scheme, meaning]."""
    from ..deidentify import CONFIDENTIALITY_CODES

    out = []
    for code in codes:
        if isinstance(code, str) and code in CONFIDENTIALITY_CODES:
            out.append((code, "DCM", CONFIDENTIALITY_CODES[code]))
        elif isinstance(code, list) and len(code) == 3 and all(isinstance(c, str) and c for c in code):
            out.append(tuple(code))
    return out


def _slice_references(references, volume: Volume, nz: int) -> list:
    """Per written slice: (series, SOP class, SOP instance, frame or None) of the source image it
    was decoded from, or None. The header's list covers the read grid; a region decode starts at
    its window's first slice. No references when the volume is not on that grid."""
    none = [None] * nz
    if not isinstance(references, dict):
        return none
    try:
        series, sop_class = references["series"], references["class"]
        prefix, instances = references.get("prefix", ""), references["instances"]
        frames = references.get("frames")
        if not (isinstance(series, str) and isinstance(sop_class, str) and isinstance(prefix, str)):
            return none
        if not (series and sop_class and isinstance(instances, list) and all(isinstance(u, str) for u in instances)):
            return none
        roi = (volume.meta.get("dstd") or {}).get("roi")
        z0 = int(roi[0][2]) if roi else 0
        count = len(frames) if isinstance(frames, list) else len(instances)
        if z0 < 0 or z0 + nz > count or (roi is None and nz != count):
            return none
        out: list = []
        for j in range(z0, z0 + nz):
            if isinstance(frames, list):
                frame = int(frames[j])
                uid = prefix + instances[0] if frame > 0 and instances and instances[0] else ""
                out.append((series, sop_class, uid, frame) if uid else None)
            else:
                out.append((series, sop_class, prefix + instances[j], None) if instances[j] else None)
        return out
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return none


def _stored_pixels(volume: Volume):
    """Stored integers and rescale for the volume's dtype (8 or 16 bits; wider ranges rescaled)."""
    values = volume.to_dtype_array()
    if values.dtype in (np.uint8, np.int16, np.uint16):
        return values, 1.0, 0.0, values.dtype == np.int16, values.dtype.itemsize * 8
    if values.dtype == np.int8:
        return values.astype(np.int16), 1.0, 0.0, True, 16
    lo, hi = float(values.min()), float(values.max())
    if values.dtype.kind in "iu" and hi - lo <= 65535:
        return (values.astype(np.int64) - int(lo)).astype(np.uint16), 1.0, float(int(lo)), False, 16
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.clip(np.rint((values.astype(np.float64) - lo) / slope), 0, 65535).astype(np.uint16)
    return stored, slope, lo, False, 16


__all__ = ["write_dicom_series", "set_value", "text_value", "UNCOMPRESSED_PREDECESSOR"]
