"""Is an image file complete? Checked before SimpleITK reads it, because SimpleITK does not.

SimpleITK 2.5 reads a truncated `.nii.gz` or `.nii` without complaint (the missing voxels come
back as zeros), accepts NRRD and MetaImage files whose compressed data has a flipped byte (wrong
voxels, no error), and reports a truncated MetaImage as "No such file or directory". So before
SimpleITK sees a file, this module checks what the header promises against what is there:

* compressed data (gzip for `.nii.gz` and NRRD `gzip`, bzip2 for NRRD `bzip2`, zlib for MetaImage
  `CompressedData = True`) is decompressed to its end-of-stream marker, which verifies its
  checksum (CRC-32 and length for gzip, Adler-32 for zlib, CRC for bzip2);
* the data (decompressed, or as stored) must hold at least the bytes the header declares
  (voxel count x sample size, after the header / `vox_offset` / `byte skip` / `HeaderSize`).

Decompression streams in 1 MiB pieces with bounded output and keeps nothing but a byte count
(and the first bytes of a `.nii.gz`, for its header), so memory stays small whatever the file
size; the cost is one extra pass of zlib, well under a second per 100 MB of voxels.

Only a positive finding refuses a file: a header this module does not understand (detached data
lists, ASCII/hex encodings, odd types) is left to SimpleITK, as before. Every refusal is an
`InputError` "<file>: cannot read image (...)" that says what is wrong.
"""

from __future__ import annotations

import bz2
import os
import struct
import zlib
from pathlib import Path
from typing import Dict, Optional, Tuple

from ..errors import InputError

CHUNK = 1 << 20  # compressed bytes read at a time
OUT = 4 << 20  # most decompressed bytes produced at a time (a decompression bomb stays bounded)
_HEADER_LIMIT = 1 << 20  # an NRRD/MetaImage text header larger than this is not checked


def check_image_file(path) -> None:
    """Raise InputError if the image file at `path` is truncated or its compressed data corrupt."""
    path = Path(path)
    name = path.name.lower()
    if path.is_file() and os.path.getsize(path) == 0:
        _refuse(path, "empty file")
    if name.endswith(".nii.gz"):
        _check_nifti_gz(path)
    elif name.endswith(".nii"):
        _check_nifti(path)
    elif name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(path)


# --- streams ------------------------------------------------------------------------------------
class _Stream:
    """What decompressing a stream found: bytes out, the first bytes, and whether it ended well."""

    def __init__(self) -> None:
        self.total = 0
        self.head = b""
        self.complete = False
        self.error: Optional[str] = None
        self.at = 0  # compressed bytes read when the stream ended or failed


def _inflate(path: Path, offset: int, kind: str, keep: int = 0) -> _Stream:
    """Decompress `kind` ("gzip", "zlib" or "bzip2") from `offset` of `path` to its end marker.

    Concatenated gzip (or bzip2) members are followed, as gunzip does; bytes after the last
    member that do not start a new one are ignored (they are not image data).
    """
    result = _Stream()
    magic = {"gzip": b"\x1f\x8b", "bzip2": b"BZh", "zlib": None}[kind]

    def fresh():
        if kind == "bzip2":
            return bz2.BZ2Decompressor()
        return zlib.decompressobj(31 if kind == "gzip" else 47)  # 47: zlib or gzip, auto-detected

    def take(out: bytes) -> None:
        if len(result.head) < keep:
            result.head += out[: keep - len(result.head)]
        result.total += len(out)

    decoder = fresh()
    pending = b""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            while True:
                data = pending or handle.read(CHUNK)
                result.at += 0 if pending else len(data)
                pending = b""
                if not data:
                    break
                if kind == "bzip2":
                    take(decoder.decompress(data, max_length=OUT))
                    while not decoder.eof and not decoder.needs_input:
                        take(decoder.decompress(b"", max_length=OUT))
                    rest = decoder.unused_data if decoder.eof else b""
                else:
                    out = decoder.decompress(data, OUT)
                    while out and not decoder.eof:  # drain: output was capped, input or output may remain
                        take(out)
                        out = decoder.decompress(decoder.unconsumed_tail, OUT)
                    take(out)
                    rest = decoder.unused_data if decoder.eof else b""
                if decoder.eof:
                    if not rest:
                        rest = handle.read(CHUNK)
                        result.at += len(rest)
                    if magic is not None and rest.startswith(magic):
                        decoder, pending = fresh(), rest  # another member follows
                        continue
                    result.complete = True
                    break
    except (zlib.error, OSError, EOFError, ValueError) as exc:
        message = str(exc)
        result.error = message.split("decompressing data: ", 1)[-1] or type(exc).__name__
    return result


def _stream_problem(stream: _Stream, kind: str, expected: Optional[int], declared: str) -> Optional[str]:
    if stream.error is not None:
        return f"corrupt {kind} data: {stream.error} (found by compressed byte {stream.at:,})"
    if not stream.complete:
        if expected is not None and stream.total >= expected:
            got = f"all {expected:,} bytes present but its end-of-stream checksum missing"
        else:
            got = f"{stream.total:,} of {expected:,} bytes present" if expected else f"{stream.total:,} bytes present"
        return f"truncated file: the {kind} stream stops before its end ({got}{declared})"
    if expected is not None and stream.total < expected:
        return (
            f"incomplete data: the {kind} stream holds {stream.total:,} bytes, "
            f"the header declares {expected:,}{declared}"
        )
    return None


def _refuse(path: Path, problem: Optional[str]) -> None:
    if problem:
        raise InputError(f"{path}: cannot read image ({problem})")


def _short_file(size: int, expected: int, declared: str) -> Optional[str]:
    if size < expected:
        return f"truncated file: {size:,} of the {expected:,} bytes the header declares are present{declared}"
    return None


def _product(values) -> Optional[int]:
    total = 1
    for v in values:
        if v <= 0:
            return None
        total *= int(v)
    return total


# --- NIfTI --------------------------------------------------------------------------------------
_NIFTI_TYPES = {
    2: "uint8", 4: "int16", 8: "int32", 16: "float32", 64: "float64", 256: "int8", 512: "uint16",
    768: "uint32", 1024: "int64", 1280: "uint64",
}  # fmt: skip


def _nifti_layout(head: bytes) -> Optional[Tuple[int, str]]:
    """(bytes a single-file NIfTI-1/2 must hold, "36x50x31 x 16 bit"), or None if not understood."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            offset = struct.unpack(endian + "f", head[108:112])[0]
            if not 0 <= offset < 2**31:  # also NaN: not a header we understand
                return None
            vox_offset = int(offset)
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dims = struct.unpack(endian + "8q", head[16:80])
            vox_offset = struct.unpack(endian + "q", head[168:176])[0]
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    voxels = _product(dims[1 : ndim + 1])
    if voxels is None:
        return None
    data = (voxels * bitpix + 7) // 8
    declared = "x".join(str(d) for d in dims[1 : ndim + 1]) + " " + _NIFTI_TYPES.get(datatype, f"{bitpix}-bit")
    return max(vox_offset, 348) + data, declared


def _check_nifti_gz(path: Path) -> None:
    with open(path, "rb") as handle:
        if not b"\x1f\x8b".startswith(handle.read(2)):  # SimpleITK reads a mislabelled uncompressed .nii.gz
            _check_nifti(path, gzip_name=True)
            return
    stream = _inflate(path, 0, "gzip", keep=540)
    layout = _nifti_layout(stream.head)
    expected, declared = layout if layout else (None, "")
    _refuse(path, _stream_problem(stream, "gzip", expected, f"; header: {declared}" if declared else ""))


def _check_nifti(path: Path, gzip_name: bool = False) -> None:
    with open(path, "rb") as handle:
        head = handle.read(540)
    layout = _nifti_layout(head)
    if layout is None:
        if len(head) < 348 and not gzip_name:
            _refuse(path, f"truncated file: {len(head)} bytes, shorter than a NIfTI header (348)")
        return
    expected, declared = layout
    _refuse(path, _short_file(os.path.getsize(path), expected, f"; header: {declared}"))


# --- NRRD ---------------------------------------------------------------------------------------
_NRRD_SIZES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(
        (
            "short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
            "unsigned short", "unsigned short int", "uint16", "uint16_t",
        ),
        2,
    ),
    **dict.fromkeys(
        ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"), 4
    ),
    **dict.fromkeys(
        (
            "longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
            "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double",
        ),
        8,
    ),
}  # fmt: skip
_COMPRESSED = {"gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}


def _text_header(path: Path, magic: bytes, parse_line) -> Optional[Tuple[Dict[str, str], Optional[int], bool]]:
    """(fields, offset of the first data byte or None, whole file read) of a text header."""
    with open(path, "rb") as handle:
        raw = handle.read(_HEADER_LIMIT)
    if not raw.startswith(magic):
        return None
    fields: Dict[str, str] = {}
    offset = 0
    for line in raw.split(b"\n"):
        start, offset = offset, offset + len(line) + 1
        if offset > len(raw):  # the last piece has no newline: the header was cut (or is all there is)
            parse_line(line.decode("latin-1").strip(), fields, start == 0)
            break
        if parse_line(line.decode("latin-1").strip(), fields, start == 0):
            return fields, offset, True
    return fields, None, len(raw) < _HEADER_LIMIT


def _nrrd_line(text: str, fields: Dict[str, str], first: bool) -> bool:
    """Collect one NRRD header line; True at the blank line that ends the header."""
    if first or text.startswith("#"):
        return False
    if not text:
        return True
    key, sep, value = text.partition(":")
    if sep and not value.startswith("="):  # "key:=value" pairs are metadata, not fields
        fields[key.strip().lower()] = value.strip()
    return False


def _check_nrrd(path: Path) -> None:
    parsed = _text_header(path, b"NRRD", _nrrd_line)
    if parsed is None:
        return
    fields, data_offset, whole = parsed
    detached = fields.get("data file") or fields.get("datafile")
    if data_offset is None and not detached:
        if whole:
            _refuse(path, "truncated file: the NRRD header ends without data")
        return
    size = _NRRD_SIZES.get(fields.get("type", "").lower())
    encoding = fields.get("encoding", "").lower()
    try:
        sizes = [int(v) for v in fields.get("sizes", "").split()]
        byte_skip = int(fields.get("byte skip", "0") or 0)
        line_skip = int(fields.get("line skip", "0") or 0)
    except ValueError:
        return
    voxels = _product(sizes) if sizes else None
    if size is None or voxels is None or line_skip or (encoding != "raw" and encoding not in _COMPRESSED):
        return
    expected = voxels * size
    declared = f"; header: {'x'.join(map(str, sizes))} {fields['type']}"
    if detached:
        if detached.upper().startswith("LIST") or len(detached.split()) > 1:
            return  # a list or pattern of data files: left to SimpleITK
        source = Path(detached) if Path(detached).is_absolute() else path.parent / detached
        if not source.is_file():
            raise InputError(f"{path}: cannot read image (its data file {detached} is missing)")
        data_offset = 0
    else:
        assert data_offset is not None  # checked above: an attached header ends at a blank line
        source = path
    if encoding == "raw":
        have = os.path.getsize(source) - data_offset
        need = expected if byte_skip == -1 else expected + max(byte_skip, 0)
        _refuse(path, _short_file(max(have, 0), need, declared))
        return
    if byte_skip < 0:
        return
    kind = _COMPRESSED[encoding]
    _refuse(path, _stream_problem(_inflate(source, data_offset, kind), kind, expected + byte_skip, declared))


# --- MetaImage ----------------------------------------------------------------------------------
_MET_SIZES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}  # fmt: skip


def _meta_line(text: str, fields: Dict[str, str], first: bool) -> bool:
    """Collect one MetaImage header line; True after ElementDataFile, the header's last field."""
    key, sep, value = text.partition("=")
    if not sep:
        return False
    key = key.strip().lower()
    fields[key] = value.strip()
    return key == "elementdatafile"


def _check_metaimage(path: Path) -> None:
    with open(path, "rb") as handle:
        start = handle.read(64).lstrip()
    if not start[:1].isalpha():
        return
    parsed = _text_header(path, b"", _meta_line)
    if parsed is None:
        return
    fields, data_offset, whole = parsed
    if "elementdatafile" not in fields:
        if whole:
            _refuse(path, "truncated file: the MetaImage header ends before ElementDataFile")
        return
    size = _MET_SIZES.get(fields.get("elementtype", "").upper())
    try:
        dims = [int(v) for v in fields.get("dimsize", "").split()]
        channels = int(fields.get("elementnumberofchannels", "1") or 1)
        header_size = int(fields.get("headersize", "0") or 0)
    except ValueError:
        return
    voxels = _product(dims) if dims else None
    if size is None or voxels is None or channels < 1:
        return
    expected = voxels * channels * size
    declared = f"; header: {'x'.join(map(str, dims))} {fields['elementtype']}"
    compressed = fields.get("compresseddata", "false").lower() in ("true", "1", "yes")
    element_file = fields["elementdatafile"]
    if element_file.upper() == "LOCAL":
        source = path
        if data_offset is None:
            data_offset = os.path.getsize(path)
    else:
        if element_file.upper().startswith("LIST") or "%" in element_file or len(element_file.split()) > 1:
            return  # a list or pattern of data files: left to SimpleITK
        source = Path(element_file) if Path(element_file).is_absolute() else path.parent / element_file
        if not source.is_file():
            raise InputError(f"{path}: cannot read image (its data file {element_file} is missing)")
        data_offset = 0
    if compressed:
        _refuse(path, _stream_problem(_inflate(source, data_offset, "zlib"), "zlib", expected, declared))
        return
    have = os.path.getsize(source) - data_offset
    need = expected if header_size == -1 else expected + max(header_size, 0)
    _refuse(path, _short_file(max(have, 0), need, declared))


__all__ = ["check_image_file"]
