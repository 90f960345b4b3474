"""3-D compressors for scientific floating-point fields: SPERR, SZ3, ZFP (through imagecodecs).

They take the voxels as float32 in original units, so no intensity mapping is needed; the stream
holds the shape and the codec payload. Knobs, per the imagecodecs signatures:
* SPERR `mode="bpp"`: `level` is the target bits per voxel (the codec's own rate control);
* SZ3 `mode="abs"`: `abs` is the absolute error bound;
* ZFP `mode="rate"`: `level` is bits per voxel (fixed rate). Fixed-accuracy mode has a better
  rate-distortion curve at low ratios but its sizes move in whole bit planes (up to 2x apart), so
  it under-fills a budget by more than it gains; at 32x and above the two modes are within about
  a dB of each other (measured on a left-atrium scan). ZFP needs at least 9 bits per 4x4x4 block
  (the exponent), about 0.14 bits per voxel, which caps its ratio.
SZ3's error bound is searched as a fraction of the volume's data range, on a log scale. ZFP's own
header is dropped (`header=False`) because our stream already carries shape and type.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Optional

import numpy as np

from ..packing import Packer, Unpacker
from ..volume import Volume
from .base import Peer, imagecodecs_missing
from .budget import Knob


class FloatFieldPeer(Peer):
    """Shared framing: shape, then one codec payload over the float32 volume."""

    def _prepare(self, volume: Volume):
        return volume.array, max(volume.data_range(), 1e-12)

    def _encode_at(self, prepared, value: Optional[float]) -> bytes:
        array, data_range = prepared
        return Packer().shape(array.shape).blob(self._compress(array, data_range, value)).bytes()

    def decode(self, data: bytes, like: Volume) -> np.ndarray:
        reader = Unpacker(data)
        shape = reader.shape(like.array.shape)
        return np.asarray(self._decompress(reader.blob(), shape), dtype=np.float32).reshape(shape)

    @abstractmethod
    def _compress(self, array: np.ndarray, data_range: float, value: float) -> bytes:
        """The codec payload at knob `value` (error bounds as fractions of `data_range`)."""

    @abstractmethod
    def _decompress(self, payload: bytes, shape) -> np.ndarray:
        """The float32 voxels back from the payload."""


class Sperr3d(FloatFieldPeer):
    name = "sperr3d"
    summary = "SPERR 3-D wavelet + SPECK coding, bits-per-voxel rate target"
    knob = Knob(smallest=0.002, largest=16.0, log=True)

    def unavailable_reason(self) -> Optional[str]:
        return imagecodecs_missing("SPERR")

    def _compress(self, array, data_range, value):
        import imagecodecs

        return imagecodecs.sperr_encode(array, value, "bpp", numthreads=1)

    def _decompress(self, payload, shape):
        import imagecodecs

        return imagecodecs.sperr_decode(payload, numthreads=1)


class Sz3(FloatFieldPeer):
    name = "sz3"
    summary = "SZ3 prediction-based error-bounded compressor, absolute error bound"
    knob = Knob(smallest=1.0, largest=1e-6, log=True)

    def unavailable_reason(self) -> Optional[str]:
        return imagecodecs_missing("SZ3")

    def _compress(self, array, data_range, value):
        import imagecodecs

        return imagecodecs.sz3_encode(array, mode="abs", abs=value * data_range)

    def _decompress(self, payload, shape):
        import imagecodecs

        return imagecodecs.sz3_decode(payload, shape=shape, dtype=np.float32)


class Zfp(FloatFieldPeer):
    name = "zfp"
    summary = "ZFP block-transform compressor, fixed-rate mode (bits per voxel)"
    knob = Knob(smallest=0.05, largest=32.0, log=True)

    def unavailable_reason(self) -> Optional[str]:
        return imagecodecs_missing("ZFP")

    def _compress(self, array, data_range, value):
        import imagecodecs

        return imagecodecs.zfp_encode(array, level=value, mode="rate", header=False, numthreads=1)

    def _decompress(self, payload, shape):
        import imagecodecs

        return imagecodecs.zfp_decode(payload, shape=shape, dtype=np.float32)
