"""Peers that code a volume as independent 2-D slices, the way DICOM stores frames.

Every slice goes through the same knob value; the stream holds the shape, the intensity mapping
and each slice's codestream with its length, so per-slice headers count against the budget —
which is why such codecs cannot reach high ratios on small crops.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import List, Optional, Tuple

import numpy as np

from ..packing import Packer, Unpacker
from ..volume import Volume
from .base import Peer, PeerError
from .mapping import LevelMap

CODE_LEVELS = 1 << 16


def bits_needed(codes: np.ndarray) -> int:
    """Bits per sample that hold every code (at least 2, which the image codecs accept)."""
    return max(2, int(codes.max()).bit_length())


def narrowest(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes when they fit: libjxl rejects uint16 input declared at 8 bits or fewer, and
    CharLS codes uint16 input at 16-bit precision (about 10 % larger on 8-bit MR)."""
    return codes.astype(np.uint8) if bits <= 8 else codes


class SliceCodecPeer(Peer):
    """Maps intensities to 16-bit codes and codes each z-slice on its own."""

    #: Spread the intensity range over all 16-bit codes (for codecs with a relative quality scale).
    stretch = False

    def _prepare(self, volume: Volume) -> Tuple[Tuple[int, ...], LevelMap, np.ndarray]:
        mapping = LevelMap.fit(volume.array, volume.dtype, CODE_LEVELS, self.stretch)
        if self.lossless and not mapping.is_exact(volume.dtype):
            raise PeerError(
                f"{self.name} is lossless only for integer volumes spanning at most "
                f"{CODE_LEVELS} values; this {volume.dtype} volume spans "
                f"{volume.data_range():g}"
            )
        return volume.array.shape, mapping, mapping.codes(volume.array, CODE_LEVELS)

    def _encode_at(self, prepared, value: Optional[float]) -> bytes:
        shape, mapping, codes = prepared
        bits = bits_needed(codes)
        blobs = [self._encode_slice(np.ascontiguousarray(s), bits, value) for s in codes]
        return mapping.pack(Packer().shape(shape)).blobs(blobs).bytes()

    def decode(self, data: bytes, like: Volume) -> np.ndarray:
        reader = Unpacker(data)
        reader.shape(like.array.shape)
        mapping = LevelMap.unpack(reader)
        slices: List[np.ndarray] = [self._decode_slice(blob) for blob in reader.blobs()]
        return mapping.values(np.stack(slices))

    @abstractmethod
    def _encode_slice(self, codes: np.ndarray, bits: int, value: Optional[float]) -> bytes:
        """One 2-D uint16 slice whose codes fit in `bits`, at knob `value`."""

    @abstractmethod
    def _decode_slice(self, blob: bytes) -> np.ndarray:
        """The 2-D codes of one slice."""
