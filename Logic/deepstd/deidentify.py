"""De-identification of what a `.dstd` header says about the patient (`encode_file(deidentify=…)`).

A `.dstd` file of a DICOM series carries the patient, study and equipment tags the decoded series
needs (`volume.meta["dicom"]`, see `deepstd.io.dicom.CARRIED_TAGS`) and references to the source
instances. `deidentify_meta` rewrites them following the DICOM Basic Application Level
Confidentiality Profile (PS3.15 Annex E, Table E.1-1) with the Retain Longitudinal Temporal
Information with Modified Dates option:

- dicognito (a maintained de-identifier; its `Anonymizer` on a dataset made of the carried tags)
  replaces every UID (study, frame of reference, source series and instances: action U), person
  name, patient ID, accession number, study ID, station and institution name with pseudonyms
  (Z/D), and shifts dates and times into the past by an offset fixed per salt (modified dates);
- the carried tags dicognito keeps but the basic profile removes or empties are dropped:
  `PROFILE_REMOVES` (Type 2 ones are written empty by the DICOM writer);
- PatientIdentityRemoved YES, DeidentificationMethod (`METHOD`, after any earlier method of the
  source) and DeidentificationMethodCodeSequence (113100 basic profile, 113107 modified dates) are
  set, and original UIDs quoted in the header's warnings are replaced the same way.

Pixel data are not cleaned: when the source says BurnedInAnnotation YES, PatientIdentityRemoved is
NO and a warning says why.

Consistency: dicognito derives every replacement from an MD5 of salt + original value, so one salt
maps one original study (patient, frame of reference, instance) to one replacement everywhere. With
`salt=None` a random per-process salt (`run_salt()`) is used: every file de-identified by one
process (one `deepstd encode`/`batch` run) gets consistent replacements; a run spread over several
processes, or files that must match an earlier run, pass one salt (`new_salt()` once, then the same
string to every call). The salt is never stored; anyone holding it can test guesses of the
original values (e.g. a patient ID), so keep a user-given salt secret.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Dict, List, Optional

#: PS3.16 CID 7050 "De-identification Method" (scheme DCM): the codes a header may store by value
CONFIDENTIALITY_CODES = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113102": "Clean Recognizable Visual Features Option",
    "113103": "Clean Graphics Option",
    "113104": "Clean Structured Content Option",
    "113105": "Clean Descriptors Option",
    "113106": "Retain Longitudinal Temporal Information Full Dates Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113109": "Retain Device Identity Option",
    "113110": "Retain UIDs Option",
    "113111": "Retain Safe Private Option",
    "113112": "Retain Institution Identity Option",
}
#: what DeepSTD applies: the basic profile, dates shifted (dicognito) rather than emptied
PROFILE_CODES = ("113100", "113107")
#: earlier cleaning of the source (pixels, descriptors) that stays true after ours
_KEPT_EARLIER = ("113101", "113102", "113103", "113104", "113105")

#: carried tags dicognito keeps that Table E.1-1 removes (X) or empties (Z) without options
PROFILE_REMOVES = (
    "PatientBirthDate",  # Z (dicognito shifts it; Retain Patient Characteristics is not claimed)
    "PatientSex",  # Z
    "PatientAge",  # X
    "StudyDescription",  # X
    "SeriesDescription",  # X
    "ContrastBolusAgent",  # Z/D (free text)
)

#: the carried tags that identify the patient (what `deepstd info` reports)
IDENTITY_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "AccessionNumber",
    "ReferringPhysicianName",
    "InstitutionName",
)

_UID = re.compile(r"(?<![\d.])[0-2](?:\.\d+){3,}(?![\d.])")
_RUN_SALT: Optional[str] = None


def dicognito_version() -> str:
    import dicognito

    return str(getattr(dicognito, "__version__", "?"))


def method() -> str:
    """The DeidentificationMethod value DeepSTD writes (LO: at most 64 characters)."""
    return f"DeepSTD PS3.15 E.1 basic, modified dates; dicognito {dicognito_version()}"[:64]


def is_deepstd_method(value) -> bool:
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, str) and v.startswith("DeepSTD PS3.15") for v in values)


def new_salt() -> str:
    """A random salt (128 bits, hex): generate once per run and pass to every encode of the run."""
    return secrets.token_hex(16)


def run_salt() -> str:
    """This process's salt, made on first use: `deidentify=True` files of one process agree."""
    global _RUN_SALT
    if _RUN_SALT is None:
        _RUN_SALT = new_salt()
    return _RUN_SALT


def deidentify_meta(meta: Dict[str, Any], salt: Optional[str] = None) -> Dict[str, Any]:
    """`volume.meta` with its `dicom` tags de-identified (see the module doc), its warnings' UIDs
    replaced and `series_uid` replaced. `salt`: None for this process's `run_salt()`."""
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer(seed=run_salt() if salt is None else str(salt))
    out = dict(meta)
    tags, notes = deidentify_tags(meta.get("dicom") or {}, anonymizer)
    out["dicom"] = tags
    out["warnings"] = [_replace_uids(str(w), anonymizer) for w in meta.get("warnings", [])] + notes
    if meta.get("series_uid"):
        out["series_uid"] = _replace_uids(str(meta["series_uid"]), anonymizer)
    return out


def deidentify_tags(tags: Dict[str, Any], anonymizer) -> tuple:
    """(de-identified copy of a header's `dicom` entry, warnings to add)."""
    from pydicom.dataset import Dataset, FileMetaDataset

    from .io.dicom import CARRIED_TAGS, _json_value

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    for key in CARRIED_TAGS:
        value = tags.get(key)
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            try:
                setattr(ds, key, value)
            except (ValueError, TypeError, OverflowError):
                continue  # a value its VR cannot hold is dropped, never kept un-anonymised
    references = tags.get("source")
    uids = _reference_uids(references)
    if uids is not None:
        item = Dataset()
        item.SeriesInstanceUID = uids[0]
        item.ReferencedSOPInstanceUID = [u for u in uids[1] if u] or None
        ds.ReferencedSeriesSequence = [item]
    anonymizer.anonymize(ds)

    out: Dict[str, Any] = {}
    for element in ds:
        if element.keyword in CARRIED_TAGS and element.keyword not in PROFILE_REMOVES:
            value = _json_value(element.value)
            if value is not None or element.keyword == "Laterality":
                out[element.keyword] = "" if value is None else value
    notes: List[str] = []
    earlier = [m for m in _as_list(tags.get("DeidentificationMethod")) if m and not is_deepstd_method(m)]
    out["DeidentificationMethod"] = earlier + [method()]
    burned = tags.get("BurnedInAnnotation") == "YES"
    out["PatientIdentityRemoved"] = "NO" if burned else "YES"
    if burned:
        notes.append(
            "the source says BurnedInAnnotation YES: text in the pixel data may identify the patient "
            "(not cleaned); PatientIdentityRemoved is NO"
        )
    kept = [c for c in tags.get("DeidentificationMethodCodeSequence") or [] if c in _KEPT_EARLIER]
    out["DeidentificationMethodCodeSequence"] = list(PROFILE_CODES) + [c for c in kept if c not in PROFILE_CODES]
    if uids is not None and isinstance(references, dict):
        item = ds.ReferencedSeriesSequence[0]
        replaced = iter(_as_list(item.get("ReferencedSOPInstanceUID")))
        full = [next(replaced) if u else "" for u in uids[1]]
        out["source"] = _compact(references, str(item.SeriesInstanceUID), full)
    return out, notes


def _as_list(value) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _reference_uids(references) -> Optional[tuple]:
    """(series UID, full instance UIDs) of a header's `dicom.source`, or None when malformed."""
    if not isinstance(references, dict):
        return None
    series, prefix, instances = references.get("series"), references.get("prefix", ""), references.get("instances")
    if not (isinstance(series, str) and series and isinstance(prefix, str) and isinstance(instances, list)):
        return None
    if not all(isinstance(u, str) for u in instances):
        return None
    return series, [prefix + u if u else "" for u in instances]


def _compact(references: Dict[str, Any], series: str, uids: List[str]) -> Dict[str, Any]:
    import os

    present = [u for u in uids if u]
    prefix = os.path.commonprefix(present) if len(present) > 1 else ""
    prefix = prefix[: prefix.rfind(".") + 1]
    out = dict(references, series=series, prefix=prefix, instances=[u[len(prefix) :] for u in uids])
    return out


def _replace_uids(text: str, anonymizer) -> str:
    """`text` with every UID in it replaced as the anonymizer replaces UIDs (same salt, same UID)."""
    from pydicom.dataset import Dataset, FileMetaDataset

    found = sorted(set(_UID.findall(text)))
    if not found:
        return text
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.ReferencedSOPInstanceUID = found
    anonymizer.anonymize(ds)
    mapping = dict(zip(found, _as_list(ds.ReferencedSOPInstanceUID)))
    return _UID.sub(lambda m: mapping.get(m.group(0), m.group(0)), text)


def identity_line(tags: Optional[Dict[str, Any]]) -> str:
    """What `deepstd info` says about the identity a `.dstd` header holds."""
    tags = tags if isinstance(tags, dict) else {}
    present = [t for t in IDENTITY_TAGS if isinstance(tags.get(t), (str, list)) and tags.get(t)]
    methods = [m for m in _as_list(tags.get("DeidentificationMethod")) if m]
    if is_deepstd_method(methods):
        ours = next(m for m in methods if is_deepstd_method(m))
        status = "removed" if tags.get("PatientIdentityRemoved") == "YES" else "removed from tags, not from pixels"
        pseudonyms = f"; pseudonyms: {', '.join(present)}" if present else ""
        return f"{status} ({ours}){pseudonyms}"
    if not tags:
        return "none stored (not a DICOM source)"
    text = f"{', '.join(present)} present" if present else "no patient identity tags stored"
    if tags.get("PatientIdentityRemoved") == "YES":
        text += f" (the source says de-identified: {'; '.join(methods) or 'method not stated'})"
    return text


__all__ = [
    "CONFIDENTIALITY_CODES",
    "IDENTITY_TAGS",
    "PROFILE_CODES",
    "PROFILE_REMOVES",
    "deidentify_meta",
    "deidentify_tags",
    "identity_line",
    "method",
    "new_salt",
    "run_salt",
]
