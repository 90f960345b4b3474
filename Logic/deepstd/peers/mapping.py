"""Affine maps between original intensities and a codec's unsigned integer codes.

Image and video codecs take unsigned 8/12/16-bit samples, while scans hold int16 HU, uint8 MR or
float values. `LevelMap` stores the offset and step (16 bytes, counted in every stream that
uses one). Integer volumes whose range fits the codes keep step 1, so lossless codecs stay exact;
`stretch` spreads the range over all codes instead, for codecs whose quality scale is relative
to the nominal sample range (JPEG XL distance, video CRF).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..packing import Packer, Unpacker


@dataclass(frozen=True)
class LevelMap:
    """Quantises float values to integer code levels: code = round((value - offset) / step)."""

    offset: float
    step: float

    @classmethod
    def fit(cls, array: np.ndarray, dtype: str, levels: int, stretch: bool) -> "LevelMap":
        low, high = float(array.min()), float(array.max())
        span = high - low
        integer = np.dtype(dtype).kind in "iu"
        if span == 0 or (integer and span <= levels - 1 and not stretch):
            return cls(low, 1.0)
        return cls(low, span / (levels - 1))

    def is_exact(self, dtype: str) -> bool:
        """True when codes reproduce a `dtype` volume exactly (what lossless peers need)."""
        return np.dtype(dtype).kind in "iu" and self.step == 1.0

    def codes(self, array: np.ndarray, levels: int) -> np.ndarray:
        """Unsigned codes 0..levels-1 (uint16), rounded to the nearest code."""
        q = np.rint((array.astype(np.float64) - self.offset) / self.step)
        return np.clip(q, 0, levels - 1).astype(np.uint16)

    def values(self, codes: np.ndarray) -> np.ndarray:
        return (self.offset + codes.astype(np.float64) * self.step).astype(np.float32)

    def pack(self, packer: Packer) -> Packer:
        return packer.float64(self.offset).float64(self.step)

    @classmethod
    def unpack(cls, unpacker: Unpacker) -> "LevelMap":
        return cls(unpacker.float64(), unpacker.float64())
