"""NIfTI, NRRD and MetaImage through SimpleITK (which reports geometry in LPS, as Volume wants)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..volume import Volume
from .integrity import check_image_file

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def suffix_of(path) -> Optional[str]:
    name = Path(path).name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def guess_units(volume: Volume) -> str:
    """ "HU" for signed scans reaching the air level of CT (≤ −900), else "unitless".

    Image files carry no modality; MR is never negative after reconstruction, while every CT that
    contains air sits near −1000 HU, so this is the one cheap, reliable cue.
    """
    return "HU" if volume.dtype.startswith("int") and float(volume.array.min()) <= -900 else "unitless"


def read_itk(path) -> Volume:
    """Read an image file whole: truncated or corrupt data is an InputError, never zeros."""
    import SimpleITK as sitk

    path = Path(path)
    check_image_file(path)  # SimpleITK reads truncated or corrupt data without complaint
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read image ({_first_line(exc)})") from None
    volume = Volume.from_sitk(image, meta={"source": str(path), "format": suffix_of(path)})
    volume.units = guess_units(volume)
    return volume


def write_itk(volume: Volume, path) -> Path:
    """Write in the path's format, voxels cast to the volume's original dtype; atomic."""
    return write_image_atomic(volume.to_sitk(), path)


def write_image_atomic(image, path) -> Path:
    """Write any SimpleITK image (scalar or vector) so that no partial file ever has the final name.

    The image (and a MetaImage's separate `.raw`) is written into a temporary folder beside the
    target and then moved into place.
    """
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".deepstd-", dir=path.parent))
    try:
        staged = staging / path.name
        try:
            sitk.WriteImage(image, str(staged), useCompression=path.name.lower().endswith(".gz"))
        except RuntimeError as exc:
            raise InputError(f"{path}: cannot write image ({_first_line(exc)})") from None
        for produced in sorted(staging.iterdir(), key=lambda p: p == staged):
            os.replace(produced, path.parent / produced.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = []
    for line in lines:
        if line.startswith("sitk::ERROR:"):
            line = line[len("sitk::ERROR:") :].strip()
        if line and not line.startswith(("/", "Exception thrown in SimpleITK")):
            useful.append(line)
    return (useful or lines or ["unknown error"])[-1][:200]
