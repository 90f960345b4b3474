"""`TextureStreams`: the texture code of one volume, and its byte serialisation.

Layout (little-endian): magic "DTXS", version u8, flags u8 (bit 0: full-volume mode), shape
3×u32 (z, y, x), block 3×u16, rate u16, fill f32, a bitmap of coded blocks (grid order, z
slowest), then per coded block the LEB128 lengths of its z and y strings, then the strings, then
a CRC32 of everything before it. The strings are constriction rANS words (`deepstd.rans`), each a
whole number of little-endian u32. The parser checks every field against limits and the exact
length before it allocates or decodes anything, and raises only `FormatError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from ..errors import FormatError
from ..rans import RETIRED_CODER

MAGIC = b"DTXS"
#: 2: constriction's rANS strings (`deepstd.rans`); 1 was CompressAI's (refused with `RETIRED_CODER`)
VERSION = 2
_HEAD = struct.Struct("<4sBB3I3HHf")
MAX_AXIS = 16384
MAX_BLOCK = 1024
MAX_BLOCKS = 1 << 20
#: y sits at 1/8 of a block per axis and z at 1/16, so block sides are multiples of 16
ALIGN = 16


def grid_of(shape: Tuple[int, int, int], block: Tuple[int, int, int]) -> Tuple[int, int, int]:
    """Blocks per axis: the volume is padded up to whole blocks."""
    return tuple(-(-s // b) for s, b in zip(shape, block))


@dataclass
class TextureStreams:
    """Entropy-coded texture of one volume: per coded block a z and a y rANS string."""

    shape: Tuple[int, int, int]
    block: Tuple[int, int, int]
    full: bool
    rate_q: int
    fill: float
    coded: List[bool]
    z_strings: List[bytes]
    y_strings: List[bytes]

    @property
    def n_blocks(self) -> int:
        g = grid_of(self.shape, self.block)
        return g[0] * g[1] * g[2]

    def payload_bytes(self) -> int:
        return sum(len(s) for s in self.z_strings) + sum(len(s) for s in self.y_strings)

    def validate(self) -> None:
        """Raise FormatError unless the fields are mutually consistent and within limits."""
        if len(self.shape) != 3 or len(self.block) != 3:
            raise FormatError("texture stream: shape and block must have three axes")
        if not all(1 <= s <= MAX_AXIS for s in self.shape):
            raise FormatError(f"texture stream: implausible volume shape {self.shape}")
        if not all(ALIGN <= b <= MAX_BLOCK and b % ALIGN == 0 for b in self.block):
            raise FormatError(f"texture stream: invalid block size {self.block}")
        if self.full and tuple(self.block) != tuple(-(-s // ALIGN) * ALIGN for s in self.shape):
            raise FormatError("texture stream: full-volume block does not match the shape")
        if self.n_blocks > MAX_BLOCKS or len(self.coded) != self.n_blocks:
            raise FormatError("texture stream: block count does not match the grid")
        n = sum(bool(c) for c in self.coded)
        if len(self.z_strings) != n or len(self.y_strings) != n:
            raise FormatError("texture stream: string count does not match the coded blocks")
        if not 0 <= self.rate_q <= 0xFFFF or not np.isfinite(self.fill):
            raise FormatError("texture stream: invalid rate or fill value")

    # --- serialisation -----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        self.validate()
        out = bytearray(_HEAD.pack(MAGIC, VERSION, int(self.full), *self.shape, *self.block, self.rate_q, self.fill))
        out += np.packbits(np.asarray(self.coded, dtype=bool), bitorder="little").tobytes()
        for z, y in zip(self.z_strings, self.y_strings):
            out += _leb128(len(z)) + _leb128(len(y))
        for z, y in zip(self.z_strings, self.y_strings):
            out += z + y
        out += struct.pack("<I", zlib.crc32(out))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> "TextureStreams":
        try:
            data = bytes(data)
        except TypeError as exc:
            raise FormatError("texture stream: not a byte string") from exc
        if len(data) < _HEAD.size + 4:
            raise FormatError("texture stream: truncated header")
        (crc,) = struct.unpack_from("<I", data, len(data) - 4)
        if zlib.crc32(data[:-4]) != crc:
            raise FormatError("texture stream: checksum mismatch (corrupt or truncated)")
        magic, version, flags, *rest = _HEAD.unpack_from(data, 0)
        if magic != MAGIC:
            raise FormatError("texture stream: bad magic")
        if version != VERSION:
            old = f" ({RETIRED_CODER})" if version == 1 else ""
            raise FormatError(f"texture stream: unsupported version {version}{old}")
        if flags & ~1:
            raise FormatError("texture stream: unknown flags")
        shape, block, rate_q, fill = tuple(rest[0:3]), tuple(rest[3:6]), rest[6], rest[7]
        full = bool(flags & 1)
        # check the grid before the bitmap is sized from it
        stub = cls(shape, block, full, rate_q, fill, [], [], [])
        if not all(1 <= s <= MAX_AXIS for s in shape) or not all(b >= 1 for b in block):
            raise FormatError(f"texture stream: implausible shape {shape} / block {block}")
        n = stub.n_blocks
        if n > MAX_BLOCKS:
            raise FormatError("texture stream: too many blocks")
        end = len(data) - 4
        pos = _HEAD.size
        nbytes = (n + 7) // 8
        if pos + nbytes > end:
            raise FormatError("texture stream: truncated block map")
        bits = np.unpackbits(np.frombuffer(data, np.uint8, nbytes, pos), bitorder="little")
        if bits[n:].any():
            raise FormatError("texture stream: stray bits after the block map")
        coded = [bool(b) for b in bits[:n]]
        pos += nbytes
        lengths = []
        for _ in range(2 * sum(coded)):
            value, pos = _read_leb128(data, pos, end)
            lengths.append(value)
        if pos + sum(lengths) != end:
            raise FormatError("texture stream: string lengths do not match the data size")
        strings = []
        for length in lengths:
            strings.append(data[pos : pos + length])
            pos += length
        # lengths were written as (z, y) pairs, strings as z, y, z, y ...
        out = cls(shape, block, full, rate_q, fill, coded, strings[0::2], strings[1::2])
        out.validate()
        return out


def _leb128(v: int) -> bytes:
    out = bytearray()
    while True:
        byte, v = v & 0x7F, v >> 7
        out.append(byte | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _read_leb128(data: bytes, pos: int, end: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 28:
            raise FormatError("texture stream: bad length field")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
