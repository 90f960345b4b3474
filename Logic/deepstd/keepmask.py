"""The keep mask of `--keep`: which voxels are coded within a tighter bound, stored in the file.

Section bytes (`deepstd.packing`): version, the mask's bounding box (x0, y0, z0, x1, y1, z1), and
the box's bits (z slowest, packed little-endian) compressed with raw LZMA2. Label maps are blobs
with smooth borders, which LZMA codes in a few hundred bytes for an organ; the bytes are counted
in the file like everything else.
"""

from __future__ import annotations

import lzma

import numpy as np

from .errors import FormatError
from .grid import Box, bounding_box
from .packing import Packer, Unpacker

VERSION = 1
_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def compress(mask: np.ndarray) -> bytes:
    """A non-empty boolean (z, y, x) mask -> section bytes."""
    box = bounding_box(mask)
    if box is None:
        raise ValueError("the keep mask is empty")
    (x0, y0, z0), (x1, y1, z1) = box
    bits = np.packbits(mask[z0:z1, y0:y1, x0:x1].astype(bool).ravel(), bitorder="little").tobytes()
    packed = Packer().uint(VERSION).shape(box[0]).shape(box[1])
    return packed.blob(lzma.compress(bits, format=lzma.FORMAT_RAW, filters=_FILTERS)).bytes()


def decompress(data: bytes, size) -> tuple:
    """Section bytes -> (box, the boolean (z, y, x) mask inside the box) on a grid of `size` (x, y, z)."""
    reader = Unpacker(data, "the keep mask")
    if reader.uint() != VERSION:
        raise FormatError("the keep mask's version is not supported")
    lo = tuple(reader.uint() for _ in range(3))
    hi = tuple(reader.uint() for _ in range(3))
    if not all(0 <= a < b <= n for a, b, n in zip(lo, hi, size)):
        raise FormatError("the keep mask's box is outside the scan")
    shape = (hi[2] - lo[2], hi[1] - lo[1], hi[0] - lo[0])
    count = int(np.prod(shape))
    want = (count + 7) // 8
    try:
        decoder = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_FILTERS)
        bits = decoder.decompress(reader.blob(), max_length=want)
    except lzma.LZMAError as exc:
        raise FormatError(f"the keep mask does not decode ({exc})") from None
    if len(bits) != want or not decoder.eof or decoder.unused_data:
        raise FormatError("the keep mask is truncated or has trailing bytes")
    mask = np.unpackbits(np.frombuffer(bits, np.uint8), count=count, bitorder="little").astype(bool)
    box: Box = (lo, hi)
    return box, mask.reshape(shape)


__all__ = ["compress", "decompress"]
