"""The `.dstd` container: a self-describing, checksummed file of named byte sections.

Layout (docs/FORMAT.md is the normative text) of format 1.2, the compact layout (flag 4):

    "DSTD"  major:u8  minor:u8  flags:u8
    header_length:varint  header:bytes            (a binary geometry record — dtype, units, size,
                                                   spacing, origin, direction — then the other keys
                                                   as a JSON object, raw-deflated if flag 1, with
                                                   HEADER_DICTIONARY if also flag 2; empty if none)
    section_count:varint
    section_count × [ name:u8 (128 + index in KNOWN_SECTIONS, or the length of an ASCII name that
                               follows)  length:varint  payload ]
    crc32:u32le                                   (of every byte before it)

Format 1.1 and earlier (no flag 4) keep the whole header as JSON with its own CRC-32 and a CRC-32
and a length-prefixed name per section; they are still read.

Small scans are coded in a few hundred bytes, so every fixed byte counts: lengths are LEB128
varints, a spacing of 0.625 mm takes 3 bytes, a section name 1, and one checksum covers the file
(format 1.1 spent 62 bytes of a 267-byte file on framing; 1.2 spends 27). The parser trusts
nothing: the checksum is verified first, every length and count is checked against the bytes that
remain and against hard limits before anything is allocated, and every failure is a `FormatError`
that names what is wrong.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from .errors import FormatError, InputError
from .numbers import is_number
from .packing import unzigzag, zigzag
from .volume import SUPPORTED_DTYPES, Volume

MAGIC = b"DSTD"
#: the minor version this code writes and the newest it reads (1.2: the compact layout; a file may
#: hold the refinement layer alone)
MAJOR, MINOR = 1, 2
FLAG_DEFLATED_HEADER = 1
#: the header was deflated with `HEADER_DICTIONARY` as the preset dictionary (since 1.1)
FLAG_DICTIONARY = 2
#: the compact layout of format 1.2 (module docstring)
FLAG_COMPACT = 4
KNOWN_FLAGS = FLAG_DEFLATED_HEADER | FLAG_DICTIONARY | FLAG_COMPACT
#: section names a compact file writes as one byte (128 + index); part of the format: append only
KNOWN_SECTIONS = ("shape", "texture", "refine", "filter", "residual", "keep/mask", "keep/residual")
#: dtypes the geometry record names by index; part of the format: append only (a test checks that
#: it names every dtype `volume.SUPPORTED_DTYPES` allows)
RECORD_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
#: units the geometry record names by code; code 15: the header's JSON keys hold them, if anything does
KNOWN_UNITS = ("unitless", "HU")
UNITS_ELSEWHERE = 15
#: direction matrices the record names by code: the 48 signed permutations (row i is ±e_perm[i]);
#: code 255: nine numbers follow
SIGNED_PERMUTATIONS = tuple(
    tuple(float(sign[row]) if column == perm[row] else 0.0 for row in range(3) for column in range(3))
    for perm in itertools.permutations(range(3))
    for sign in itertools.product((1.0, -1.0), repeat=3)
)
DIRECTION_FOLLOWS = 255
_PERMUTATION_BITS = [struct.pack("<9d", *matrix) for matrix in SIGNED_PERMUTATIONS]
#: a number in the record is ±mantissa × 10^exponent, the shortest decimal that reads back as the
#: same float64 (Python's repr): 17 significant digits at most, exponents far beyond float64's
MAX_MANTISSA = 10**17
MAX_EXPONENT = 400
#: Deflate's preset dictionary for headers: the keys and phrases every header repeats, so a lean
#: header's JSON keys (intensity, bundle id, margin) cost ~47 bytes instead of ~110. It is part
#: of the format: changing one byte of it needs a new minor version and the old text kept for reading.
HEADER_DICTIONARY = (
    b'"warnings":["the finest texture rate of this bundle fits in bytes; the budget allows more",'
    b"\"registration loss is above the bundle's calibrated threshold : the scan is unlike the template; "
    b'the texture carries the difference","only % of the scan lies inside the bundle\'s texture frame (its '
    b"template plus a margin, widened up to 16 Mvoxel); the rest decodes as background: this bundle's "
    b"template does not cover scans "
    b'with this field of view"]}"dicom":{"encoder_version":"0.1.0","keep":{"max_error":0.0,"voxels":'
    b'"max_error":"budget_bytes":"bundle":{"name":"la-mr","sha256":"ct-torso","prostate-t2","hippocampus-mr",'
    b'"codec":{"margin":[8,8,8],"omega":12.0,"registration_loss":-0.,"shape_bits":8,"shape_width":'
    b'"texture_rate":"target_ratio":"units":"HU"},"dtype":"uint8","uint16","int16","float32",'
    b'"geometry":{"direction":[1.0,0.0,0.0,0.0,1.0,0.0,0.0,0.0,1.0],"origin":[-0.0,"size":[512,512,'
    b'"spacing":[1.0,1.0,1.0]},"intensity":{"hi":1.0,"lo":0.0},"units":"unitless"}'
)

MAX_HEADER_BYTES = 1 << 20  # a header is a few hundred bytes; 1 MiB is generous
MAX_SECTIONS = 1 << 16  # block-coded CT: thousands of blocks at most
MAX_SECTION_BYTES = 1 << 32
MAX_DIM = 1 << 16  # voxels along one axis
MAX_VOXELS = 1 << 33  # 8 Gvoxel: far above any CT
#: a scanner's patient coordinates stay within a few metres; beyond this an origin is corrupt
MAX_ORIGIN_MM = 1e6


@dataclass
class DstdFile:
    """A parsed `.dstd`: the JSON header, the sections in file order, and the file's length."""

    header: dict
    sections: Dict[str, bytes] = field(default_factory=dict)
    file_bytes: int = 0
    version: Tuple[int, int] = (MAJOR, MINOR)

    @property
    def raw_bytes(self) -> int:
        """Bytes of the original voxels in their original dtype (the ratio's numerator)."""
        return geometry_voxels(self.header) * np.dtype(self.header["dtype"]).itemsize

    @property
    def achieved_ratio(self) -> float:
        """Raw bytes ÷ bytes of the whole file, headers included.

        Derived rather than stored: a stored ratio would change the file size it describes.
        """
        return self.raw_bytes / max(self.file_bytes, 1)


# --- varints ------------------------------------------------------------------------------------
def varint_size(value: int) -> int:
    """Bytes of the LEB128 varint of `value` (a section's length field, for sizing a file ahead)."""
    return len(varint(value))


def varint(value: int) -> bytes:
    """The unsigned LEB128 bytes of `value`."""
    if value < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class ByteReader:
    """Bounds-checked cursor over untrusted bytes (the container, and sections that reuse its
    varints); every overrun or oversized value is a `FormatError` naming `what`."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, count: int, what: str) -> bytes:
        if count < 0 or count > self.remaining():
            raise FormatError(
                f"truncated file: {what} needs {count} bytes at offset {self.pos}, {self.remaining()} remain"
            )
        chunk = bytes(self.data[self.pos : self.pos + count])
        self.pos += count
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def varint(self, what: str, limit: int) -> int:
        value, shift = 0, 0
        for _ in range(10):
            byte = self.u8(what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if value > limit:
                    raise FormatError(f"{what} is {value}, above the limit {limit}")
                return value
            shift += 7
        raise FormatError(f"{what}: malformed length field at offset {self.pos}")


# --- writing ------------------------------------------------------------------------------------
def pack(header: dict, sections: Dict[str, bytes]) -> bytes:
    """Serialise a header and named sections into `.dstd` bytes of format 1.2 (compact), validating
    both first."""
    validate_header(header)
    if len(sections) > MAX_SECTIONS:
        raise FormatError(f"too many sections ({len(sections)})")
    flags, body = _stored_header(header)
    out = bytearray(MAGIC)
    out += bytes([MAJOR, MINOR, flags | FLAG_COMPACT])
    out += varint(len(body)) + body + varint(len(sections))
    for name, payload in sections.items():
        out += _section_name(name) + varint(len(payload)) + payload
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def _section_name(name: str) -> bytes:
    if name in KNOWN_SECTIONS:
        return bytes([0x80 + KNOWN_SECTIONS.index(name)])
    if not 0 < len(name) < 0x80 or not name.isascii() or not name.isprintable():
        raise FormatError(f"invalid section name {name!r}")
    return bytes([len(name)]) + name.encode("ascii")


def _stored_header(header: dict) -> Tuple[int, bytes]:
    """(flags, bytes) of the header: the geometry record, then the other keys as the smallest of the
    JSON text, deflated, deflated with the dictionary (nothing when there are none)."""
    record, rest = _geometry_record(header)
    if not rest:
        return 0, record
    text = json.dumps(rest, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    choices = [(0, text)]
    for flags, deflater in (
        (FLAG_DEFLATED_HEADER, zlib.compressobj(9, zlib.DEFLATED, -15, 9)),
        (FLAG_DEFLATED_HEADER | FLAG_DICTIONARY, zlib.compressobj(9, zlib.DEFLATED, -15, 9, zdict=HEADER_DICTIONARY)),
    ):
        choices.append((flags, deflater.compress(text) + deflater.flush()))
    flags, stored = min(choices, key=lambda choice: len(choice[1]))
    return flags, record + stored


def _geometry_record(header: dict) -> Tuple[bytes, dict]:
    """The binary record of a validated header's dtype, units and geometry, and its other keys."""
    geometry = header["geometry"]
    if set(geometry) != {"size", "spacing", "origin", "direction"}:
        raise FormatError(f"geometry keys {sorted(geometry)} are not size, spacing, origin, direction")
    rest = {key: value for key, value in header.items() if key not in ("geometry", "dtype")}
    units = UNITS_ELSEWHERE
    if rest.get("units") in KNOWN_UNITS:
        units = KNOWN_UNITS.index(rest.pop("units"))
    out = bytearray([RECORD_DTYPES.index(header["dtype"]) | units << 4])
    out += b"".join(varint(n) for n in geometry["size"])
    out += b"".join(_decimal(v) for v in (*geometry["spacing"], *geometry["origin"]))
    direction = struct.pack("<9d", *geometry["direction"])
    if direction in _PERMUTATION_BITS:
        out.append(_PERMUTATION_BITS.index(direction))
    else:
        out.append(DIRECTION_FOLLOWS)
        out += b"".join(_decimal(v) for v in geometry["direction"])
    return bytes(out), rest


def _decimal(value: float) -> bytes:
    """`value` as varint(32 × (2 × mantissa + sign) + min(z, 31)), z the zigzag of the exponent,
    then varint(z − 31) where z ≥ 31: the shortest decimal that reads back as the same float64
    (repr's digits; -0.0 keeps its sign). 1.0 and -1.0 take one byte, 0.625 three."""
    sign, digits, exponent = Decimal(repr(float(value))).as_tuple()
    mantissa = int("".join(map(str, digits)))
    while mantissa and mantissa % 10 == 0:
        mantissa, exponent = mantissa // 10, int(exponent) + 1
    exponent = int(exponent) if mantissa else 0
    folded = zigzag(exponent)
    head = varint(32 * (2 * mantissa + sign) + min(folded, 31))
    return head + (varint(folded - 31) if folded >= 31 else b"")


def header_cost(header: dict) -> int:
    """Bytes the header takes in a file (its length field included)."""
    body = _stored_header(header)[1]
    return len(varint(len(body))) + len(body)


def _current_umask() -> int:
    """The process umask; read once at import, since os.umask can only read it by setting it."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def write_atomic(path, data: bytes) -> Path:
    """Write bytes to `path` through a temporary file in the same folder and an atomic rename.

    The file gets the permissions a plain `open(path, "wb")` would give (0666 less the umask), not
    mkstemp's private 0600, so colleagues and services can read the result.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temp, 0o666 & ~_UMASK)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


# --- reading ------------------------------------------------------------------------------------
def unpack(data: bytes) -> DstdFile:
    """Parse and verify `.dstd` bytes; raises `FormatError` naming the first problem found."""
    reader = ByteReader(data)
    minor, flags = _read_prelude(reader)
    compact = bool(flags & FLAG_COMPACT)
    if compact:
        if reader.remaining() < 4:
            raise FormatError(f"truncated file: {len(data)} bytes cannot hold a header and a checksum")
        if zlib.crc32(reader.data[:-4]) != struct.unpack("<I", reader.data[-4:])[0]:
            raise FormatError("file is corrupt or truncated (CRC32 mismatch)")
        reader.data = reader.data[:-4]
    header = _read_header(reader, flags)
    count = reader.varint("section count", MAX_SECTIONS)
    # every section needs at least 2 (compact) or 7 bytes: refuse absurd counts before looping
    if count * (2 if compact else 7) > reader.remaining():
        raise FormatError(f"truncated file: {count} sections cannot fit in {reader.remaining()} bytes")
    sections: Dict[str, bytes] = {}
    for index in range(count):
        raw_name, name = _read_section_name(reader, index, compact)
        if name in sections:
            raise FormatError(f"section {name!r} appears twice")
        length = reader.varint(f"length of section {name!r}", min(MAX_SECTION_BYTES, reader.remaining()))
        crc = None if compact else reader.u32(f"checksum of section {name!r}")
        payload = reader.take(length, f"section {name!r}")
        if crc is not None and zlib.crc32(payload, zlib.crc32(raw_name)) != crc:
            raise FormatError(f"section {name!r} is corrupt (CRC32 mismatch)")
        sections[name] = payload
    if reader.remaining():
        raise FormatError(f"{reader.remaining()} unexpected bytes after the last section")
    return DstdFile(header, sections, len(data), (MAJOR, minor))


def _read_prelude(reader: ByteReader) -> Tuple[int, int]:
    """(minor version, flags) after checking the magic and the major version."""
    magic = reader.take(4, "magic") if reader.remaining() >= 4 else b""
    if magic != MAGIC:
        raise FormatError("not a .dstd file (bad magic)")
    major = reader.u8("format version")
    if major != MAJOR:
        raise FormatError(f"unsupported .dstd format version {major} (this DeepSTD reads {MAJOR}.x); upgrade deepstd")
    minor = reader.u8("minor version")  # minor versions only add what older readers may ignore
    flags = reader.u8("flags")
    if flags & ~KNOWN_FLAGS or flags & 3 == FLAG_DICTIONARY:
        raise FormatError(f"unknown header flags 0x{flags:02x}")
    if flags & FLAG_COMPACT and minor < 2:
        raise FormatError(f"flag 0x{FLAG_COMPACT:02x} (compact layout) in a format 1.{minor} file")
    return minor, flags


def _read_section_name(reader: ByteReader, index: int, compact: bool) -> Tuple[bytes, str]:
    code = reader.u8(f"section {index} name")
    if compact and code & 0x80:
        if code - 0x80 >= len(KNOWN_SECTIONS):
            raise FormatError(f"section {index} has an unknown name code {code}")
        name = KNOWN_SECTIONS[code - 0x80]
        return name.encode("ascii"), name
    if code == 0:
        raise FormatError(f"section {index} has an empty name")
    raw_name = reader.take(code, f"section {index} name")
    try:
        name = raw_name.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(f"section {index} has a non-ASCII name") from None
    if not name.isprintable():
        raise FormatError(f"section {index} has an unprintable name")
    return raw_name, name


def _read_header(reader: ByteReader, flags: int) -> dict:
    length = reader.varint("header length", min(MAX_HEADER_BYTES, reader.remaining()))
    body = reader.take(length, "header")
    if flags & FLAG_COMPACT:
        record = ByteReader(body)
        header = _read_geometry_record(record)
        keys = record.take(record.remaining(), "header keys")
        if keys or flags & FLAG_DEFLATED_HEADER:  # a deflate flag without keys is refused there
            more = _json_object(_inflated(keys, flags), "header keys")
            if set(more) & set(header):
                raise FormatError(f"header keys {sorted(set(more) & set(header))} repeat the geometry record's")
            header.update(more)
    else:
        if zlib.crc32(body) != reader.u32("header checksum"):
            raise FormatError("header is corrupt (CRC32 mismatch)")
        header = _json_object(_inflated(body, flags), "header")
    validate_header(header)
    return header


def _inflated(body: bytes, flags: int) -> bytes:
    if not flags & FLAG_DEFLATED_HEADER:
        return body
    inflater = zlib.decompressobj(-15, **({"zdict": HEADER_DICTIONARY} if flags & FLAG_DICTIONARY else {}))
    try:
        body = inflater.decompress(body, MAX_HEADER_BYTES)
    except zlib.error as exc:
        raise FormatError(f"header cannot be inflated ({exc})") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise FormatError("header is not a complete deflate stream within the size limit")
    return body


def _json_object(text: bytes, what: str) -> dict:
    try:
        value = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FormatError(f"{what}: not valid JSON") from None
    if not isinstance(value, dict):
        raise FormatError(f"{what}: not a JSON object")
    return value


def _read_geometry_record(record: ByteReader) -> dict:
    """dtype, units and geometry from a compact header's binary record (ranges checked afterwards
    by `validate_header`)."""
    code = record.u8("dtype and units")
    dtype, units = code & 0x0F, code >> 4
    if dtype >= len(RECORD_DTYPES) or not (units < len(KNOWN_UNITS) or units == UNITS_ELSEWHERE):
        raise FormatError(f"unknown dtype/units code 0x{code:02x}")
    size = [record.varint("volume size", MAX_DIM) for _ in range(3)]
    spacing = [_read_decimal(record, "spacing") for _ in range(3)]
    origin = [_read_decimal(record, "origin") for _ in range(3)]
    direction_code = record.u8("direction code")
    if direction_code == DIRECTION_FOLLOWS:
        direction = [_read_decimal(record, "direction") for _ in range(9)]
    elif direction_code < len(SIGNED_PERMUTATIONS):
        direction = list(SIGNED_PERMUTATIONS[direction_code])
    else:
        raise FormatError(f"unknown direction code {direction_code}")
    header = {
        "dtype": RECORD_DTYPES[dtype],
        "geometry": {"size": size, "spacing": spacing, "origin": origin, "direction": direction},
    }
    if units != UNITS_ELSEWHERE:
        header["units"] = KNOWN_UNITS[units]
    return header


def _read_decimal(record: ByteReader, what: str) -> float:
    coded = record.varint(what, 64 * MAX_MANTISSA - 1)
    folded = coded % 32
    if folded == 31:
        folded += record.varint(f"{what} exponent", 2 * MAX_EXPONENT - 31)
    exponent = unzigzag(folded)
    value = float(f"{'-' if coded & 32 else ''}{coded >> 6}e{exponent}")
    if not math.isfinite(value):
        raise FormatError(f"{what} overflows a float64")
    return value


def read_file(path) -> DstdFile:
    """Read and verify a `.dstd` file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return unpack(data)
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None


# --- header content -----------------------------------------------------------------------------
def geometry_header(volume: Volume) -> dict:
    """The header fields that restore the original grid exactly: geometry, dtype and units."""
    return {
        "geometry": {
            "size": list(volume.size),
            "spacing": list(volume.spacing),
            "origin": list(volume.origin),
            "direction": list(volume.direction),
        },
        "dtype": volume.dtype,
        "units": volume.units,
    }


def geometry_voxels(header: dict) -> int:
    x, y, z = header["geometry"]["size"]
    return int(x) * int(y) * int(z)


def grid_of(header: dict) -> Tuple[tuple, tuple, tuple, tuple]:
    """(size, spacing, origin, direction) from a validated header."""
    g = header["geometry"]
    return (tuple(g["size"]), tuple(g["spacing"]), tuple(g["origin"]), tuple(g["direction"]))


def validate_header(header) -> None:
    """Check the fields every reader relies on: an object with a sane geometry and a known dtype."""
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    geometry = header.get("geometry")
    if not isinstance(geometry, dict):
        raise FormatError("header has no geometry")
    size = _numbers(geometry, "size", 3, integer=True)
    if any(not 1 <= n <= MAX_DIM for n in size) or size[0] * size[1] * size[2] > MAX_VOXELS:
        raise FormatError(f"implausible volume size {size}")
    spacing = _numbers(geometry, "spacing", 3)
    if any(not 0 < s < 1e4 for s in spacing):
        raise FormatError(f"implausible spacing {spacing}")
    origin = _numbers(geometry, "origin", 3)
    if any(abs(o) > MAX_ORIGIN_MM for o in origin):
        raise FormatError(f"implausible origin {origin} (beyond ±{MAX_ORIGIN_MM:g} mm)")
    direction = np.asarray(_numbers(geometry, "direction", 9)).reshape(3, 3)
    if abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
        raise FormatError("direction matrix is not orthonormal")
    if header.get("dtype") not in SUPPORTED_DTYPES:
        raise FormatError(f"unsupported dtype {header.get('dtype')!r}")


def _numbers(obj: dict, key: str, count: int, integer: bool = False) -> list:
    values = obj.get(key)
    if not isinstance(values, list) or len(values) != count or not all(is_number(v) for v in values):
        raise FormatError(f"geometry field {key!r} must be {count} finite numbers")
    if integer:
        if not all(isinstance(v, int) for v in values):
            raise FormatError(f"geometry field {key!r} must be integers")
        return values
    return [float(v) for v in values]  # an integer too large for int64 would make an object array


__all__ = [
    "DstdFile",
    "pack",
    "unpack",
    "read_file",
    "write_atomic",
    "geometry_header",
    "grid_of",
    "validate_header",
    "header_cost",
    "ByteReader",
    "varint",
    "MAGIC",
    "MAJOR",
    "MINOR",
]
