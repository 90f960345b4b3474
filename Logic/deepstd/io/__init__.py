"""Reading and writing volumes: NIfTI, NRRD, MHA/MHD through SimpleITK, DICOM through pydicom.

`read(path)` and `write(volume, path)` pick the format from the path: a folder (or a `.dcm` file)
is DICOM, a known suffix is an ITK format. Every failure is an `InputError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..volume import Volume
from . import dicom, dicom_writer, itk

ITK_SUFFIXES = itk.SUFFIXES


def format_of(path) -> str:
    """ "dicom" for folders, `.dcm` and extension-less files that are DICOM, else "itk"."""
    path = Path(path)
    if itk.suffix_of(path) is not None:
        return "itk"
    if path.is_dir() or path.suffix.lower() in (".dcm", ".dicom", "") or dicom.is_dicom_file(path):
        return "dicom"
    raise InputError(
        f"{path}: unknown volume format (expected {', '.join(ITK_SUFFIXES)}, a .dcm file or a DICOM folder)"
    )


def read(path, series_uid: Optional[str] = None, allow_gaps: bool = False) -> Volume:
    """Read a volume from an image file, a DICOM file or a DICOM folder (one series of it).

    Input is complete or refused: a truncated or corrupt image file, a DICOM series with missing
    slices, or a folder whose series cannot be told apart without `series_uid` is an InputError.
    `allow_gaps` (DICOM only) interpolates missing slices instead, with a warning in
    `volume.meta["warnings"]`.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if format_of(path) == "dicom":
        return dicom.read_dicom(path, series_uid=series_uid, allow_gaps=allow_gaps)
    if series_uid is not None:
        raise InputError(f"{path}: a series UID only applies to DICOM input")
    return itk.read_itk(path)


def write(volume: Volume, path, **dicom_options) -> Path:
    """Write a volume atomically; a folder path (no image suffix) gets a DICOM series.

    `dicom_options` (lossy_ratio, lossy_method, series_description) only apply to DICOM output.
    """
    path = Path(path)
    if itk.suffix_of(path) is not None:
        if dicom_options:
            raise InputError(f"{path}: DICOM options given for a non-DICOM output")
        return itk.write_itk(volume, path)
    if path.suffix:
        raise InputError(
            f"{path}: unknown output format {path.suffix!r} (use "
            f"{', '.join(ITK_SUFFIXES)}, or a folder name for a DICOM series)"
        )
    return dicom_writer.write_dicom_series(volume, path, **dicom_options)


__all__ = ["read", "write", "format_of", "dicom", "itk"]
