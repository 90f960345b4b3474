"""What the DeepSTD DICOM plugin does, without Qt or DICOMLib: find DeepSTD objects among DICOM
files and load one as a decoded volume node.

A DeepSTD object is one DICOM instance (Raw Data Storage, SOP class 1.2.840.10008.5.1.4.1.1.66)
holding a `.dstd` file in a private block ("DEEPSTD 1", group 0009): `deepstd.dicom_object` and
docs/FORMAT.md (".dstd inside DICOM") define it. `DeepSTDDICOMPlugin.py` (next to the module) is
the thin DICOMLib plugin Slicer's DICOM browser calls; it turns `Candidate`s into DICOMLoadables
and calls `load_object`. Examining reads DICOM headers only (the payload is neither read nor
checked), so a damaged object is still listed; loading checks it and decodes in this process, as
the `.dstd` reader does (Slicer waits for a DICOM load anyway), into a node with the reader's
attributes and the lossy note (`core.DeepSTDCore.add_decoded_node`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

RAW_DATA_STORAGE = "1.2.840.10008.5.1.4.1.1.66"
#: What the DICOM browser shows in its "Reader" column.
LOAD_TYPE = "DeepSTD compressed volume"
#: Above the generic plugins (scalar volume: 0.5 and below), so the browser selects this reading
#: of a DeepSTD object by default.
CONFIDENCE = 0.95
DEFAULT_NAME = "DeepSTD volume"

#: SOP Class UID: the tag the plugin asks the DICOM database for (listed in DICOMPlugin.tags, so cached).
SOP_CLASS_TAG = "0008,0016"

SopClassOf = Callable[[str], Optional[str]]


class LoadError(RuntimeError):
    """Loading a DeepSTD object failed; the message says why, for the user, without a traceback."""


@dataclass
class Candidate:
    """One DeepSTD object found by `examine_files`: what its DICOMLoadable shows."""

    files: List[str]
    name: str
    tooltip: str
    warning: str
    confidence: float = CONFIDENCE
    selected: bool = True
    info: Dict[str, object] = field(default_factory=dict)


def _dicom_object():
    from . import codec

    return codec.require("deepstd.dicom_object", "Reading DeepSTD DICOM objects")


def format_ratio(ratio: Optional[float]) -> str:
    if not ratio:
        return "?"
    return f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.1f}"


def might_be_object(path: str, sop_class_of: Optional[SopClassOf]) -> bool:
    """False when the DICOM database already says the file is not Raw Data Storage (ordinary
    image series are then never opened here); True when it is, or when the class is unknown."""
    if sop_class_of is None:
        return True
    try:
        sop = (sop_class_of(path) or "").strip()
    except Exception:  # a database that cannot answer: look at the file itself
        return True
    return not sop or sop == RAW_DATA_STORAGE


def describe(path: str, info: Dict[str, object]) -> Candidate:
    """The loadable's texts for one object, from `deepstd.dicom_object.object_info`."""
    ratio = info.get("ratio")
    shown = format_ratio(ratio)  # type: ignore[arg-type]
    bundle = info.get("bundle")
    # the encoder names the bundle in every file that needs one; a file of the refinement layer
    # alone needs none
    needs = f"the codec bundle '{bundle}'" if bundle else "no codec bundle (the refinement layer alone)"
    name = str(info.get("series_description") or "").strip() or DEFAULT_NAME
    lines = [
        f"{name}: DeepSTD compressed volume (one DICOM object, decoded on loading)",
        f"compression ratio {shown}:1, {needs}",
    ]
    if info.get("payload_bytes"):
        lines.append(f"{info['payload_bytes']:,} bytes of .dstd data")
    if info.get("source_series_uid"):
        lines.append(f"compressed from series {info['source_series_uid']}")
    warning = (
        f"Lossy compressed (DeepSTD, {shown}:1): the decoded voxels approximate the original scan "
        f"and may differ from it. Decoding needs {needs}."
    )
    return Candidate([path], name, "\n".join(lines), warning, info=dict(info))


def examine_files(files: Sequence[str], sop_class_of: Optional[SopClassOf] = None) -> List[Candidate]:
    """One Candidate per DeepSTD object among `files` (a series' files); others are not claimed.

    `sop_class_of(path)`: the SOP class UID the DICOM database has cached for a file (Slicer's
    `dicomDatabase.fileValue`), used to skip non-Raw-Data files without opening them. An object
    whose description cannot be read is still listed, with a warning saying why.
    """
    found: List[Candidate] = []
    for path in files:
        if not might_be_object(path, sop_class_of):
            continue
        try:
            objects = _dicom_object()
        except Exception as error:  # deepstd missing or broken: nothing can be claimed
            logging.warning(f"DeepSTD DICOM plugin cannot examine files: {error}")
            return []
        if not objects.is_deepstd_object(path):
            continue
        try:
            candidate = describe(path, objects.object_info(path))
        except Exception as error:
            candidate = Candidate(
                [path],
                DEFAULT_NAME,
                f"DeepSTD object {os.path.basename(path)}",
                f"DeepSTD object whose description cannot be read ({error}); it may not load.",
            )
        found.append(candidate)
    return found


def load_object(path: str, name: Optional[str] = None, scene=None, device: Optional[str] = None):
    """Decode the DeepSTD object `path` and add it as a scalar volume node (returned) named `name`,
    with the `.dstd` reader's attributes (ratio, bundle, encoder version, warnings, lossy note)
    plus the object's SOP instance UID. Every failure is a LoadError whose message names the file
    and the reason (not a DeepSTD object, damaged payload, missing bundle, missing dependency)."""
    from .core import DeepSTDCore

    label = os.path.basename(path)
    try:
        objects = _dicom_object()
        data = objects.unwrap(path)
        info = objects.object_info(path)
        core = DeepSTDCore(scene)
        decoded = core.decode_data(data, device or core.settings()["device"])
        node = core.add_decoded_node(decoded, path, name or info.get("series_description") or DEFAULT_NAME)
    except ImportError as error:  # a dependency deepstd imports on use (pydicom, torch, ...)
        raise LoadError(
            f"Could not load the DeepSTD object {label}: {error}. Install the DeepSTD module's "
            "dependencies (DeepSTD module, Codec section)."
        ) from None
    except Exception as error:  # any failure reaches the user as one clear line
        raise LoadError(f"Could not load the DeepSTD object {label}: {error}") from None
    node.SetAttribute("DeepSTD.dicomInstanceUID", str(info.get("sop_instance_uid") or ""))
    return node


__all__ = [
    "RAW_DATA_STORAGE",
    "LOAD_TYPE",
    "CONFIDENCE",
    "SOP_CLASS_TAG",
    "Candidate",
    "LoadError",
    "describe",
    "examine_files",
    "load_object",
    "might_be_object",
]
