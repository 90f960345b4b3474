"""Lossless references for context: JPEG-LS per slice and zstd over the raw samples.

They ignore the budget except to check it: the output has one size, and a budget below it
raises `PeerBudgetError` carrying that size (which is the peer's lossless ratio).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..packing import Packer, Unpacker
from ..volume import Volume
from .base import Peer, imagecodecs_missing
from .slices import SliceCodecPeer, narrowest

#: zstd's strongest ordinary level (the "ultra" levels 20-22 need far more memory for little gain).
ZSTD_LEVEL = 19


class JpegLsSlices(SliceCodecPeer):
    name = "jpegls-lossless"
    summary = "JPEG-LS lossless (CharLS), each slice its own codestream"

    def unavailable_reason(self) -> Optional[str]:
        return imagecodecs_missing("JPEGLS")

    def _encode_slice(self, codes: np.ndarray, bits: int, value: Optional[float]) -> bytes:
        import imagecodecs

        return imagecodecs.jpegls_encode(narrowest(codes, bits), level=0)

    def _decode_slice(self, blob: bytes) -> np.ndarray:
        import imagecodecs

        return imagecodecs.jpegls_decode(blob)


class ZstdRaw(Peer):
    """zstd over the samples in their original type, so it is exact for every dtype."""

    name = "zstd-lossless"
    summary = f"zstd level {ZSTD_LEVEL} over the raw samples in the original sample type"

    def unavailable_reason(self) -> Optional[str]:
        return imagecodecs_missing("ZSTD")

    def _prepare(self, volume: Volume):
        return volume.array.shape, volume.to_dtype_array()

    def _encode_at(self, prepared, value: Optional[float]) -> bytes:
        import imagecodecs

        shape, samples = prepared
        return Packer().shape(shape).blob(imagecodecs.zstd_encode(samples.tobytes(), level=ZSTD_LEVEL)).bytes()

    def decode(self, data: bytes, like: Volume) -> np.ndarray:
        import imagecodecs

        reader = Unpacker(data)
        shape = reader.shape(like.array.shape)
        raw = imagecodecs.zstd_decode(reader.blob())
        return np.frombuffer(raw, dtype=like.dtype).reshape(shape).astype(np.float32)
