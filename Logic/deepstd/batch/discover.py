"""What a batch works on: every scan under a folder (or named by a CSV/JSON list), each with the
path of its `.dstd` inside the output tree and a SHA-256 of exactly the bytes it was read from.

Image files (NIfTI, NRRD, MHA/MHD) become `<name>.dstd` beside where they sat (the full name is
kept, so `a.nii.gz` and `a.nrrd` never collide); each DICOM series becomes
`<its folder>/<SeriesInstanceUID>.dstd`, so a folder holding several series gives several files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from ..errors import InputError
from ..io import dicom, itk

SUFFIX = ".dstd"
LIST_SUFFIXES = (".csv", ".json")


@dataclass(frozen=True)
class Scan:
    """One scan to compress: where to read it, and its `.dstd` path relative to the output tree."""

    source: str
    series_uid: Optional[str]
    output: str
    files: Tuple[str, ...]  # the bytes the scan is read from (hashed for the manifest)

    def task(self) -> dict:
        """What a worker needs to read the scan (paths only; it opens them itself)."""
        return {"source": self.source, "series_uid": self.series_uid, "output": self.output}


def find_scans(source) -> Tuple[Path, List[Scan]]:
    """The root the output tree mirrors, and every scan under a folder or in a CSV/JSON list."""
    source = Path(source).resolve()
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    if source.is_file() and source.suffix.lower() in LIST_SUFFIXES:
        entries = read_list(source)
        root = common_root([path for path, _ in entries])
        return root, [scan for path, uid in entries for scan in scans_at(path, uid, root)]
    if not source.is_dir():
        raise InputError(f"{source}: give a folder of scans or a .csv/.json list of them")
    return source, scans_under(source)


def scans_under(root: Path) -> List[Scan]:
    """Image files anywhere under `root`, and every series of every top-most DICOM folder."""
    scans: List[Scan] = []
    dicom_roots: List[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        here = Path(folder)
        inside_dicom = any(here.is_relative_to(d) for d in dicom_roots)
        for name in sorted(names):
            path = here / name
            if itk.suffix_of(path) is not None:
                scans.append(image_scan(path, root))
            elif not inside_dicom and looks_like_dicom(path):
                dicom_roots.append(here)
                inside_dicom = True
    for folder in dicom_roots:
        scans += series_scans(folder, root)
    return sorted(scans, key=lambda s: s.output)


def looks_like_dicom(path: Path) -> bool:
    return path.suffix.lower() in (".dcm", ".dicom") or dicom.is_dicom_file(path)


def scans_at(path: Path, series_uid: Optional[str], root: Path) -> List[Scan]:
    """The scans one list entry names: an image file, one series, or every series of a folder."""
    if itk.suffix_of(path) is not None:
        if series_uid:
            raise InputError(f"{path}: a series UID only applies to DICOM input")
        return [image_scan(path, root)]
    folder = path if path.is_dir() else path.parent
    return series_scans(folder, root, only=series_uid)


def image_scan(path: Path, root: Path) -> Scan:
    relative = path.relative_to(root).as_posix()
    return Scan(str(path), None, relative + SUFFIX, (str(path),))


def series_scans(folder: Path, root: Path, only: Optional[str] = None) -> List[Scan]:
    """One scan per series in a DICOM folder (an unreadable folder is one scan that will fail)."""
    relative = folder.relative_to(root).as_posix()
    prefix = "" if relative == "." else relative + "/"
    try:
        series = dicom.list_series(folder)
    except InputError:
        return [Scan(str(folder), only, f"{prefix}{only or 'series'}{SUFFIX}", ())]
    scans = []
    for index, s in enumerate(series):
        if only and only not in (s.uid, s.key):
            continue
        name = s.uid or f"series-{index + 1}"
        files = tuple(sorted(str(ds.filename) for ds in s.datasets))
        # Every scan names its series: reading a folder of several without one is refused when
        # two share the largest size. A series without a UID is named by its grouping key (only
        # needed when it has neighbours; alone in its folder it is read as before, by None).
        selector = s.uid or (s.key if len(series) > 1 else None)
        scans.append(Scan(str(folder), selector, f"{prefix}{name}{SUFFIX}", files))
    if only and not scans:
        raise InputError(f"{folder}: no DICOM series {only}")
    return scans


def read_list(path: Path) -> List[Tuple[Path, Optional[str]]]:
    """(path, series UID or None) per entry; relative paths are relative to the list's folder.

    CSV: a header row with a `path` column and optionally `series_uid`. JSON: a list of paths or of
    objects with `path` (and optionally `series_uid`).
    """
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="") as stream:
                rows = list(csv.DictReader(stream))
        else:
            rows = [r if isinstance(r, dict) else {"path": r} for r in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a readable scan list ({exc})") from None
    if not rows or any(not isinstance(r, dict) or not r.get("path") for r in rows):
        raise InputError(f"{path}: every entry needs a 'path'")
    entries = []
    for row in rows:
        entry = (path.parent / str(row["path"])).resolve()
        if not entry.exists():
            raise InputError(f"{path}: listed scan {row['path']} does not exist")
        entries.append((entry, str(row.get("series_uid") or "") or None))
    return entries


def common_root(paths: Sequence[Path]) -> Path:
    """The deepest folder holding every listed scan (a DICOM folder entry counts as its parent's)."""
    parents = [p.parent for p in paths]
    return Path(os.path.commonpath([str(p) for p in parents]))


def check_disjoint(source_root: Path, out_dir: Path, what: str = "output") -> None:
    """Refuse an output tree inside the sources (or the sources inside it): nothing is overwritten."""
    source_root, out_dir = Path(source_root).resolve(), Path(out_dir).resolve()
    if out_dir.is_relative_to(source_root):
        raise InputError(
            f"the {what} folder {out_dir} is inside the source folder {source_root}; choose a folder outside it"
        )
    if source_root.is_relative_to(out_dir):
        raise InputError(
            f"the source folder {source_root} is inside the {what} folder {out_dir}; choose a folder outside it"
        )


def sha256_of(files: Iterable[str]) -> str:
    """SHA-256 of one file, or of a series: its files' names and digests in sorted order."""
    files = list(files)
    if len(files) == 1:
        return file_sha256(files[0])
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{Path(name).name}\0{file_sha256(name)}\n".encode())
    return digest.hexdigest()


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
