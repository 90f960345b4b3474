"""JPEG XL (libjxl) through imagecodecs, 16-bit grayscale, one codestream per slice.

The lossy knob is the Butteraugli `distance` (0.01..25; larger = smaller output). The distance is
relative to the nominal sample range, so the lossy peer stretches intensities over all 16-bit
codes. The lossless peer keeps integer codes unchanged (`lossless=True`) and declares the bits
actually used.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .base import imagecodecs_missing
from .budget import Knob
from .slices import SliceCodecPeer, narrowest


class JpegXlSlices(SliceCodecPeer):
    name = "jpegxl-slices"
    summary = "JPEG XL (libjxl) 16-bit, each slice its own codestream, Butteraugli distance"
    knob = Knob(smallest=25.0, largest=0.01, log=True)
    stretch = True

    def unavailable_reason(self) -> Optional[str]:
        return imagecodecs_missing("JPEGXL")

    def _encode_slice(self, codes: np.ndarray, bits: int, value: Optional[float]) -> bytes:
        import imagecodecs

        return imagecodecs.jpegxl_encode(codes, distance=value, numthreads=1)

    def _decode_slice(self, blob: bytes) -> np.ndarray:
        import imagecodecs

        return imagecodecs.jpegxl_decode(blob, numthreads=1)


class JpegXlLossless(SliceCodecPeer):
    name = "jpegxl-lossless"
    summary = "JPEG XL lossless (modular mode), each slice its own codestream"

    def unavailable_reason(self) -> Optional[str]:
        return imagecodecs_missing("JPEGXL")

    def _encode_slice(self, codes: np.ndarray, bits: int, value: Optional[float]) -> bytes:
        import imagecodecs

        return imagecodecs.jpegxl_encode(narrowest(codes, bits), lossless=True, bitspersample=bits, numthreads=1)

    def _decode_slice(self, blob: bytes) -> np.ndarray:
        import imagecodecs

        return imagecodecs.jpegxl_decode(blob, numthreads=1)
