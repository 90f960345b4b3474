"""Small binary streams written field by field: LEB128 varints, float64, shapes and blobs.

Used wherever a payload needs a few side fields around it: each benchmark peer's stream (the
volume shape, its side information such as an intensity mapping, then one blob or one per slice,
so every side byte is counted) and the residual layer of the maximum-error mode. A list of blobs
stores its count and the lengths of all but the last; the last runs to the end of the stream.
"""

from __future__ import annotations

import struct
from typing import List, Sequence, Tuple

from .errors import FormatError


def zigzag(value: int) -> int:
    """A signed integer as an unsigned one: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
    return 2 * value if value >= 0 else -2 * value - 1


def unzigzag(value: int) -> int:
    """The inverse of `zigzag`."""
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


class Packer:
    """Appends fields to a stream."""

    def __init__(self) -> None:
        self._parts: List[bytes] = []

    def uint(self, value: int) -> "Packer":
        if value < 0:
            raise ValueError("varints are unsigned")
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
        self._parts.append(bytes(out))
        return self

    def sint(self, value: int) -> "Packer":
        """A signed integer (zigzag, then a varint)."""
        return self.uint(zigzag(value))

    def float64(self, value: float) -> "Packer":
        self._parts.append(struct.pack("<d", value))
        return self

    def shape(self, shape: Sequence[int]) -> "Packer":
        for n in shape:
            self.uint(int(n))
        return self

    def blobs(self, blobs: Sequence[bytes]) -> "Packer":
        """A list of blobs: count, lengths of all but the last, then the payloads."""
        self.uint(len(blobs))
        for blob in blobs[:-1]:
            self.uint(len(blob))
        self._parts.extend(bytes(b) for b in blobs)
        return self

    def blob(self, blob: bytes) -> "Packer":
        """One blob running to the end of the stream (no length needed)."""
        self._parts.append(bytes(blob))
        return self

    def bytes(self) -> bytes:
        return b"".join(self._parts)


class Unpacker:
    """Reads fields back in the order a `Packer` wrote them."""

    def __init__(self, data: bytes, what: str = "peer stream") -> None:
        self._data = memoryview(data)
        self._at = 0
        self._what = what

    def _take(self, n: int) -> memoryview:
        if self._at + n > len(self._data):
            raise FormatError(f"{self._what} is truncated")
        part = self._data[self._at : self._at + n]
        self._at += n
        return part

    def uint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self._take(1)[0]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value
            if shift > 63:
                raise FormatError(f"{self._what} has a malformed varint")

    def sint(self) -> int:
        return unzigzag(self.uint())

    def float64(self) -> float:
        return struct.unpack("<d", self._take(8))[0]

    def shape(self, expected: Tuple[int, ...]) -> Tuple[int, ...]:
        """Read a shape and check it against the volume the caller decodes onto."""
        shape = tuple(self.uint() for _ in expected)
        if shape != tuple(expected):
            raise FormatError(f"{self._what} holds a {shape} volume, expected {tuple(expected)}")
        return shape

    def blobs(self) -> List[bytes]:
        count = self.uint()
        if count == 0:
            return []
        lengths = [self.uint() for _ in range(count - 1)]
        out = [bytes(self._take(n)) for n in lengths]
        out.append(self.blob())
        return out

    def blob(self) -> bytes:
        return bytes(self._take(len(self._data) - self._at))
