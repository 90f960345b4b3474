"""DICOM in with pydicom: series discovery, geometry, rescale, multi-frame, the tags output carries.

A folder is scanned for DICOM files (headers only), files are grouped into series by
SeriesInstanceUID (files without one are grouped by study, orientation and matrix size, with a
warning), one series is chosen (by UID, or the largest; a tie for largest is refused), its slices
are sorted by position along the slice normal (never by file name or InstanceNumber), checked to lie
on a regular grid (a missing slice is refused, or interpolated on request) and rescaled to real
units (HU for CT).
Enhanced (multi-frame) files take their geometry from the functional groups. Writing is
`dicom_writer`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..volume import Volume

#: attributes of the MR Image module a decoded MR series carries (and only an MR series)
MR_IMAGE_TAGS = (
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "RepetitionTime",
    "EchoTime",
    "EchoTrainLength",
    "InversionTime",
    "MagneticFieldStrength",
    "FlipAngle",
)

#: Tags carried from a DICOM source into decoded output (`volume.meta["dicom"]`, stored in the
#: `.dstd` header): what the decoded series needs to be a valid CT/MR Image of the same patient,
#: study and frame of reference (the Type 1/2 attributes of those IODs that a writer cannot make up),
#: plus display (window), equipment and de-identification status. Values are the first file's;
#: only CT or MR tags the source has are stored, empty values are not (the writer writes Type 2
#: attributes present-empty). Docs: FORMAT.md ("The dicom entry").
CARRIED_TAGS = (
    # patient
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    # study
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    # series and frame of reference
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "BodyPartExamined",
    "Laterality",
    "PatientPosition",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    # equipment
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "StationName",
    # image
    "SpecificCharacterSet",
    "ImageType",
    "AcquisitionNumber",
    "BurnedInAnnotation",
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    "ContrastBolusAgent",
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
    # CT Image module
    "KVP",
    # MR Image module
    *MR_IMAGE_TAGS,
)

#: Carried even when present-empty in the source: a Type 2C attribute whose presence matters
#: (Laterality must be absent for an unpaired body part and present, perhaps empty, otherwise).
_KEEP_EMPTY = ("Laterality",)

_MAX_FILES = 100_000


def is_dicom_file(path) -> bool:
    """True when the file has the DICM preamble marker (cheap; reads 132 bytes)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


@dataclass
class Series:
    """One series found in a folder: its files (headers read) and what `deepstd info` lists."""

    uid: str
    datasets: list = field(repr=False)
    warnings: List[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """What selects this series: its SeriesInstanceUID, or (without one) its grouping key."""
        return self.uid or _fallback_key(self.datasets[0])

    def summary(self) -> str:
        """UID, modality, size, file count and description, as a refusal lists a series."""
        description = f" {self.description!r}" if self.description else ""
        return (
            f"{self.key} ({self.modality or '?'} {'x'.join(map(str, self.size))}, "
            f"{len(self.datasets)} files{description})"
        )

    @property
    def description(self) -> str:
        return str(getattr(self.datasets[0], "SeriesDescription", "") or "")

    @property
    def modality(self) -> str:
        return str(getattr(self.datasets[0], "Modality", "") or "")

    @property
    def frames(self) -> int:
        return sum(int(getattr(ds, "NumberOfFrames", 1) or 1) for ds in self.datasets)

    @property
    def size(self):
        ds = self.datasets[0]
        return (int(ds.Columns), int(ds.Rows), self.frames)

    @property
    def voxels(self) -> int:
        x, y, z = self.size
        return x * y * z


# --- discovery ----------------------------------------------------------------------------------
def _candidate_files(path: Path) -> List[Path]:
    if path.is_file():
        return [path]
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            files.append(Path(root) / name)
            if len(files) > _MAX_FILES:
                raise InputError(f"{path}: more than {_MAX_FILES} files; point at one series folder")
    return files


def _read_header(file: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():  # odd files are expected here; they are skipped, not shouted about
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(file, stop_before_pixels=True, force=file.suffix.lower() in (".dcm", ".dicom"))
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if "Rows" not in ds or "Columns" not in ds:
        return None  # DICOMDIR, structured reports, presentation states: not images
    ds.filename = str(file)
    return ds


def list_series(path) -> List[Series]:
    """Every image series under `path` (a folder or one file), largest first."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    groups: Dict[str, Series] = {}
    for file in _candidate_files(path):
        ds = _read_header(file)
        if ds is None:
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "").strip()
        key = uid or _fallback_key(ds)
        if key not in groups:
            groups[key] = Series(uid=uid, datasets=[])
            if not uid:
                groups[key].warnings.append(
                    "SeriesInstanceUID missing or empty: slices grouped by study, orientation and matrix size"
                )
        groups[key].datasets.append(ds)
    if not groups:
        raise InputError(f"{path}: no DICOM images found")
    return sorted(groups.values(), key=lambda s: (-s.voxels, s.uid, s.key))


def _fallback_key(ds) -> str:
    orientation = tuple(round(float(v), 4) for v in getattr(ds, "ImageOrientationPatient", []) or [])
    return "|".join(
        ["no-uid", str(getattr(ds, "StudyInstanceUID", "")), str(orientation), str(ds.Rows), str(ds.Columns)]
    )


# --- reading ------------------------------------------------------------------------------------
class SeriesChoiceError(InputError):
    """A folder holds several series and none is clearly the one meant: `series_uid` must choose.

    `series` lists them (largest first), so a caller such as `deepstd info` can show them.
    """

    def __init__(self, message: str, series: List[Series]):
        super().__init__(message)
        self.series = series


def read_dicom(path, series_uid: Optional[str] = None, allow_gaps: bool = False) -> Volume:
    """Read one series of a DICOM folder (or one file) as a Volume in real units.

    `series_uid` picks a series (a SeriesInstanceUID, or the grouping key `list_series` gives a
    series without one). Without it the largest series is read; when two or more series share the
    largest size the choice would be a guess, so it is refused with the series listed.
    A series with missing slices (a gap in positions) is refused, unless `allow_gaps`: then the
    missing slices are interpolated linearly from their neighbours onto the regular grid (the
    slices that exist keep their values and positions) and a warning says so.
    """
    path = Path(path)
    series = list_series(path)
    warnings: List[str] = []
    if series_uid is not None:
        chosen = [s for s in series if series_uid in (s.uid, s.key)]
        if not chosen:
            raise InputError(
                f"{path}: no series with SeriesInstanceUID {series_uid} "
                f"(found: {'; '.join(s.summary() for s in series)})"
            )
        picked = chosen[0]
    else:
        picked = series[0]
        tied = [s for s in series if s.voxels == picked.voxels]
        if len(tied) > 1:
            raise SeriesChoiceError(
                f"{path}: {len(series)} series found, {len(tied)} of the same size "
                f"({'x'.join(map(str, picked.size))}); choose one with series_uid (--series): "
                + "; ".join(s.summary() for s in series),
                series,
            )
        if len(series) > 1:
            warnings.append(
                f"{len(series)} series found; read the largest, {picked.uid or '<no UID>'} "
                f"({'x'.join(map(str, picked.size))}); choose another with --series"
            )
    warnings += picked.warnings
    references: Dict[str, object] = {}
    if len(picked.datasets) == 1 and int(getattr(picked.datasets[0], "NumberOfFrames", 1) or 1) > 1:
        volume = _read_multiframe(picked.datasets[0], warnings, allow_gaps, references)
    else:
        volume = _read_slices(picked.datasets, warnings, allow_gaps, references)
    carried = _carried(picked.datasets[0])
    if references:
        carried["source"] = references
    volume.meta.update(
        {
            "source": str(path),
            "format": "dicom",
            "series_uid": picked.uid,
            "dicom": carried,
            "warnings": warnings,
            "series_count": len(series),
        }
    )
    return volume


#: Slice positions must lie on a regular grid. Within `_EXACT_*` of it (DS decimal rounding of
#: ImagePositionPatient, float noise) the series is regular and read silently, as SimpleITK does.
_EXACT_FRACTION, _EXACT_MM = 0.01, 1e-3
#: Up to a tenth of the slice spacing off the grid (scanner jitter in reported table positions) the
#: series is still read, with a warning giving the largest offset: a tenth of a slice is below the
#: slice's own partial-volume extent (thickness >= spacing in contiguous acquisitions) and an order
#: of magnitude below the one-slice error of a missing slice, and it keeps steps of 0.8..1.2
#: spacings apart from gaps (about 2 spacings). Anything further off is refused: the voxels could
#: only be placed on a grid by moving them.
_JITTER_FRACTION = 0.1


def _mm(value: float) -> str:
    text = f"{value:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _slice_grid(along: np.ndarray, normal, where, allow_gaps: bool, warnings: List[str]):
    """(spacing, grid index of each slice) for sorted, distinct slice positions along the normal.

    The spacing is the series' regular step (the median step: most steps are regular when only a
    few slices are missing); each step must be a whole number of spacings (1, or 2+ for missing
    slices) and every slice within `_JITTER_FRACTION` of a spacing of the grid through the first and
    last slice. Missing slices are refused with their positions unless `allow_gaps`; more missing
    slices than present ones are refused even then (that is not a gap to bridge).
    """
    steps = np.diff(along)
    base = float(np.median(steps))
    counts = np.maximum(1, np.rint(steps / base)).astype(np.int64)
    index = np.concatenate([[0], np.cumsum(counts)])
    dz = float((along[-1] - along[0]) / index[-1])
    offsets = along - (along[0] + dz * index)
    worst = float(np.max(np.abs(offsets)))
    missing = int(index[-1] + 1 - len(along))
    axis = "z" if abs(float(normal[2])) > 0.99 else "position (along the slice normal)"
    if worst > _JITTER_FRACTION * dz:
        raise InputError(
            f"{where}: irregular slice spacing (steps {_mm(steps.min())}..{_mm(steps.max())} mm): the "
            f"slices do not lie on a regular grid (one is {_mm(worst)} mm off a {_mm(dz)} mm grid); refused"
        )
    if worst > _EXACT_FRACTION * dz + _EXACT_MM:
        warnings.append(
            f"irregular slice spacing ({_mm(steps.min())}..{_mm(steps.max())} mm): slices lie within "
            f"{_mm(worst)} mm of the regular {_mm(dz)} mm grid used"
        )
    if missing:
        gaps = np.nonzero(counts > 1)[0]
        spans = [f"{_mm(along[i])} and {_mm(along[i + 1])} mm" for i in gaps[:3]]
        more = f" (and {len(gaps) - 3} more gaps)" if len(gaps) > 3 else ""
        text = f"{missing} missing slice(s) between {axis} = " + ", between ".join(spans) + more
        if not allow_gaps:
            raise InputError(
                f"{where}: {text} (spacing {_mm(dz)} mm); a series with a gap is refused "
                "(allow_gaps / --allow-gaps interpolates the missing slices)"
            )
        if missing > len(along):
            raise InputError(
                f"{where}: {text} (spacing {_mm(dz)} mm): more slices missing than present ({len(along)}); "
                "refused even with allow_gaps"
            )
        warnings.append(
            f"{text}: interpolated linearly from the neighbouring slices onto the regular {_mm(dz)} mm grid"
        )
    return dz, index


def _fill_gaps(values: np.ndarray, index: np.ndarray, dtype: str) -> np.ndarray:
    """`values` (one slice per entry of `index`) on the full grid; missing slices interpolated
    linearly between their neighbours (rounded for integer types). Existing slices are copied."""
    if index[-1] + 1 == len(index):
        return values
    full = np.empty((int(index[-1]) + 1, *values.shape[1:]), np.float32)
    full[index] = values
    integer = np.dtype(dtype).kind in "iu"
    for k in np.nonzero(np.diff(index) > 1)[0]:
        lo, hi = int(index[k]), int(index[k + 1])
        below, above = values[k].astype(np.float64), values[k + 1].astype(np.float64)
        for j in range(lo + 1, hi):
            t = (j - lo) / (hi - lo)
            slab = (1.0 - t) * below + t * above
            full[j] = np.rint(slab) if integer else slab
    return full


def _carried(ds) -> Dict[str, object]:
    """The CARRIED_TAGS `ds` has, as JSON: a string, or a list of strings for a multi-valued one."""
    out: Dict[str, object] = {}
    for tag in CARRIED_TAGS:
        if tag not in ds:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an odd value is carried as read, or not at all
                value = _json_value(ds[tag].value)
        except Exception:  # a value pydicom cannot convert: not carried
            continue
        if value is not None:
            out[tag] = value
        elif tag in _KEEP_EMPTY:
            out[tag] = ""
    try:
        codes = [_stored_code(item) for item in getattr(ds, "DeidentificationMethodCodeSequence", None) or []]
    except Exception:  # a damaged sequence: not carried
        codes = []
    if any(codes):
        out["DeidentificationMethodCodeSequence"] = [c for c in codes if c]
    return out


def _stored_code(item):
    """A code as the header stores it: a DCM code value alone, else [value, scheme, meaning]."""
    from ..deidentify import CONFIDENTIALITY_CODES

    value, scheme = str(getattr(item, "CodeValue", "") or ""), str(getattr(item, "CodingSchemeDesignator", "") or "")
    if not value or not scheme:
        return None
    if scheme == "DCM" and value in CONFIDENTIALITY_CODES:
        return value
    return [value, scheme, str(getattr(item, "CodeMeaning", "") or "")]


def _json_value(value):
    """A DICOM value as JSON (its string form; a list for VM > 1), or None when empty."""
    from pydicom.multival import MultiValue
    from pydicom.sequence import Sequence as DicomSequence

    if value is None or isinstance(value, (DicomSequence, bytes)):
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        items = ["" if v is None else str(v) for v in value]
        return items if any(items) else None
    text = str(value)
    return text or None


def _instance_uid(ds) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(ds, "SOPInstanceUID", "") or getattr(meta, "MediaStorageSOPInstanceUID", "") or "")


def _class_uid(ds) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(ds, "SOPClassUID", "") or getattr(meta, "MediaStorageSOPClassUID", "") or "")


def _references(references: Dict[str, object], datasets: Sequence, uids: List[str], frames=None) -> None:
    """Fill `references` (the header's `dicom.source`): the source series and, per slice of the
    read grid, the instance it came from ("" for an interpolated slice), the UIDs' common prefix
    stored once. Nothing when the source lacks a SeriesInstanceUID or an instance UID (the decoded
    series could not reference it validly)."""
    series = str(getattr(datasets[0], "SeriesInstanceUID", "") or "").strip()
    present = [u for u in uids if u]
    sop_class = _class_uid(datasets[0])
    if not series or not sop_class or any(not _instance_uid(ds) for ds in datasets):
        return
    prefix = os.path.commonprefix(present) if len(present) > 1 else ""
    prefix = prefix[: prefix.rfind(".") + 1]
    references.update(
        {"series": series, "class": sop_class, "prefix": prefix, "instances": [u[len(prefix) :] for u in uids]}
    )
    if frames is not None:
        references["frames"] = frames


def _pixels(ds) -> np.ndarray:
    """Decoded stored values (sign-extended for signed data), or an InputError naming the syntax."""
    import pydicom

    file = Path(ds.filename)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            full = pydicom.dcmread(file, force=True)
            array = full.pixel_array
    except Exception as exc:  # decoders raise many types; all mean "cannot decode this file"
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise InputError(
            f"{file}: cannot decode pixel data (transfer syntax {name}): "
            f"{str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"
        ) from None
    if int(getattr(full, "SamplesPerPixel", 1) or 1) != 1:
        raise InputError(f"{file}: colour images (SamplesPerPixel > 1) are not supported")
    return array


def _rescale(ds):
    """(slope, intercept) of the linear Modality transform; a Modality LUT Sequence is not applied."""
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return slope, intercept


def _orientation(ds) -> Optional[np.ndarray]:
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None or len(iop) != 6:
        return None
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 0.5:
        return None
    return np.stack([row, col, normal / np.linalg.norm(normal)], axis=1)  # columns: x, y, z axes


def _pixel_spacing(ds) -> Optional[tuple]:
    spacing = getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None)
    if spacing is None or len(spacing) != 2:
        return None
    dy, dx = float(spacing[0]), float(spacing[1])  # DICOM: row spacing (y) first, then column (x)
    return (dx, dy) if dx > 0 and dy > 0 else None


def _read_slices(
    datasets: Sequence, warnings: List[str], allow_gaps: bool = False, references: Optional[Dict[str, object]] = None
) -> Volume:
    first = datasets[0]
    shape = (int(first.Rows), int(first.Columns))
    if any((int(ds.Rows), int(ds.Columns)) != shape for ds in datasets):
        raise InputError(f"{Path(first.filename).parent}: slices of different sizes in one series")
    direction = _orientation(first)
    positions = [getattr(ds, "ImagePositionPatient", None) for ds in datasets]
    if direction is None or any(p is None or len(p) != 3 for p in positions):
        if len(datasets) > 1:
            raise InputError(
                f"{Path(first.filename).parent}: slices lack ImagePositionPatient/"
                "ImageOrientationPatient; cannot order them"
            )
        direction, positions = np.eye(3), [(0.0, 0.0, 0.0)]
        warnings.append("geometry missing (no position/orientation): identity direction used")
    points = np.asarray(positions, dtype=float)
    along = points @ direction[:, 2]
    order = np.argsort(along, kind="stable")
    along = along[order]
    if len(along) > 1 and np.min(np.diff(along)) < 1e-4:
        raise InputError(
            f"{Path(first.filename).parent}: {len(along) - len(np.unique(along.round(4)))} "
            "slices share a position; the files mix acquisitions (choose one series)"
        )
    pixel_spacing = _pixel_spacing(first)
    if pixel_spacing is None:
        pixel_spacing = (1.0, 1.0)
        warnings.append("PixelSpacing missing: 1 mm assumed")
    grid = np.arange(len(along))
    if len(along) > 1:
        dz, grid = _slice_grid(along, direction[:, 2], Path(first.filename).parent, allow_gaps, warnings)
    else:
        dz = float(getattr(first, "SpacingBetweenSlices", 0) or getattr(first, "SliceThickness", 0) or 1.0)
    stored = []
    slopes = []
    for index in order:
        ds = datasets[index]
        pixels = _pixels(ds)
        if pixels.shape != shape:
            raise InputError(f"{ds.filename}: pixel data of shape {pixels.shape}, expected {shape}")
        stored.append(pixels)
        slopes.append(_rescale(ds))
    stored = np.stack(stored)
    if "ModalityLUTSequence" in first:
        warnings.append("Modality LUT Sequence present but not applied: stored values are kept")
    values = _apply_rescale(stored, slopes)
    dtype = _output_dtype(stored, slopes, values, warnings)
    if references is not None:
        uids = [""] * (int(grid[-1]) + 1)
        for slot, index in zip(grid, order):
            uids[int(slot)] = _instance_uid(datasets[index])
        _references(references, datasets, uids)
    return Volume(
        _fill_gaps(values, grid, dtype),
        spacing=(pixel_spacing[0], pixel_spacing[1], dz),
        origin=tuple(positions[order[0]]),
        direction=tuple(direction.reshape(-1)),
        dtype=dtype,
        units=_units(first),
    )


def _read_multiframe(
    ds, warnings: List[str], allow_gaps: bool = False, references: Optional[Dict[str, object]] = None
) -> Volume:
    """Enhanced CT/MR: spacing, positions and orientation from the functional groups."""
    frames = int(ds.NumberOfFrames)
    shared = (getattr(ds, "SharedFunctionalGroupsSequence", None) or [None])[0]
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []

    def group(item, name):
        seq = getattr(item, name, None) if item is not None else None
        return seq[0] if seq else None

    def lookup(frame, seq_name, attr):
        for item in ((per_frame[frame] if frame < len(per_frame) else None), shared):
            sub = group(item, seq_name)
            if sub is not None and getattr(sub, attr, None) is not None:
                return getattr(sub, attr)
        return getattr(ds, attr, None)

    spacing = lookup(0, "PixelMeasuresSequence", "PixelSpacing")
    iop = lookup(0, "PlaneOrientationSequence", "ImageOrientationPatient")
    positions = [lookup(i, "PlanePositionSequence", "ImagePositionPatient") for i in range(frames)]
    rescales = [
        (
            float(lookup(i, "PixelValueTransformationSequence", "RescaleSlope") or 1),
            float(lookup(i, "PixelValueTransformationSequence", "RescaleIntercept") or 0),
        )
        for i in range(frames)
    ]
    pixels = _pixels(ds)
    if pixels.ndim != 3 or pixels.shape[0] != frames:
        raise InputError(f"{ds.filename}: expected {frames} frames, decoded shape {pixels.shape}")
    direction = None
    if iop is not None and len(iop) == 6:
        direction = _orientation(type("G", (), {"ImageOrientationPatient": iop})())
    geometry_known = direction is not None and all(p is not None and len(p) == 3 for p in positions)
    if geometry_known:
        assert direction is not None
        points = np.asarray(positions, float)
        along = points @ direction[:, 2]
        order = np.argsort(along, kind="stable")
        gaps = np.diff(along[order])
        if frames > 1 and np.min(gaps) < 1e-4:
            raise InputError(f"{ds.filename}: frames share a position (a 4-D or multi-stack file); not supported")
        index = np.arange(frames)
        if frames > 1:
            dz, index = _slice_grid(along[order], direction[:, 2], ds.filename, allow_gaps, warnings)
        else:
            dz = float(lookup(0, "PixelMeasuresSequence", "SliceThickness") or 1.0)
        origin = tuple(points[order[0]])
    else:
        warnings.append(
            "geometry missing (no per-frame position/orientation): frames stacked in "
            "file order with 1 mm spacing and identity direction"
        )
        direction, order, dz, origin = np.eye(3), np.arange(frames), 1.0, (0.0, 0.0, 0.0)
        index = np.arange(frames)
    if spacing is None or len(spacing) != 2:
        warnings.append("PixelSpacing missing: 1 mm assumed")
        spacing = (1.0, 1.0)
    assert direction is not None
    stored = pixels[order]
    rescales = [rescales[i] for i in order]
    values = _apply_rescale(stored, rescales)
    dtype = _output_dtype(stored, rescales, values, warnings)
    if references is not None:
        frame_numbers = [0] * (int(index[-1]) + 1)
        for slot, frame in zip(index, order):
            frame_numbers[int(slot)] = int(frame) + 1
        _references(references, [ds], [_instance_uid(ds)], frame_numbers)
    return Volume(
        _fill_gaps(values, index, dtype),
        spacing=(float(spacing[1]), float(spacing[0]), dz),
        origin=origin,
        direction=tuple(direction.reshape(-1)),
        dtype=dtype,
        units=_units(ds),
    )


def _apply_rescale(stored: np.ndarray, rescales) -> np.ndarray:
    out = stored.astype(np.float64)
    for k, (slope, intercept) in enumerate(rescales):
        if slope != 1.0 or intercept != 0.0:
            out[k] = out[k] * slope + intercept
    return out.astype(np.float32)


def _output_dtype(stored: np.ndarray, rescales, values: np.ndarray, warnings: List[str]) -> str:
    """The smallest integer type holding the rescaled values, or float32 for fractional rescale."""
    integral = all(float(s).is_integer() and float(i).is_integer() for s, i in rescales)
    if not integral:
        warnings.append("non-integer rescale slope/intercept: values are kept as float32")
        return "float32"
    lo, hi = float(values.min()), float(values.max())
    if stored.dtype.kind in "iu" and lo >= np.iinfo(stored.dtype).min and hi <= np.iinfo(stored.dtype).max:
        return stored.dtype.name
    for name in ("uint8", "int16", "uint16", "int32"):
        info = np.iinfo(name)
        if info.min <= lo and hi <= info.max:
            return name
    return "float32"


def _units(ds) -> str:
    if str(getattr(ds, "Modality", "")) == "CT" or str(getattr(ds, "RescaleType", "")) == "HU":
        return "HU"
    return "unitless"


__all__ = [
    "Series",
    "SeriesChoiceError",
    "list_series",
    "read_dicom",
    "is_dicom_file",
    "CARRIED_TAGS",
    "MR_IMAGE_TAGS",
]
