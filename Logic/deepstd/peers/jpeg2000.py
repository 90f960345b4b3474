"""JPEG 2000 (OpenJPEG) and HTJ2K (OpenJPH) through imagecodecs.

`jpeg2k_encode`'s `level` is OpenJPEG's target PSNR in dB for the single quality layer (0 means
lossless), relative to the precision we declare, so we declare the bits the codes really use.
`htj2k_encode`'s `level` is the base quantisation step of the irreversible path (0 = lossless),
searched on a log scale. Both write raw codestreams (J2K), not the larger JP2 wrapper.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..packing import Packer, Unpacker
from ..volume import Volume
from .base import Peer, imagecodecs_missing
from .budget import Knob
from .mapping import LevelMap
from .slices import CODE_LEVELS, SliceCodecPeer, bits_needed

#: OpenJPEG PSNR targets (dB): 10 dB is the coarsest useful layer, 110 dB is near-lossless.
PSNR_KNOB = Knob(smallest=10.0, largest=110.0)


class Jpeg2000Slices(SliceCodecPeer):
    name = "jpeg2000-slices"
    summary = "JPEG 2000 (OpenJPEG), each slice its own codestream, like DICOM frames"
    knob = PSNR_KNOB

    def unavailable_reason(self) -> Optional[str]:
        return imagecodecs_missing("JPEG2K")

    def _encode_slice(self, codes: np.ndarray, bits: int, value: Optional[float]) -> bytes:
        import imagecodecs

        return imagecodecs.jpeg2k_encode(codes, level=value, codecformat="J2K", bitspersample=bits, numthreads=1)

    def _decode_slice(self, blob: bytes) -> np.ndarray:
        import imagecodecs

        return imagecodecs.jpeg2k_decode(blob, numthreads=1)


class Jpeg2000Components(Peer):
    """All slices as the components of one image: one rate allocation over the whole volume."""

    name = "jpeg2000-components"
    summary = "JPEG 2000 (OpenJPEG), slices as components of one image, one rate allocation"
    knob = PSNR_KNOB

    def unavailable_reason(self) -> Optional[str]:
        return imagecodecs_missing("JPEG2K")

    def _prepare(self, volume: Volume):
        mapping = LevelMap.fit(volume.array, volume.dtype, CODE_LEVELS, stretch=False)
        codes = mapping.codes(volume.array, CODE_LEVELS)
        return volume.array.shape, mapping, np.ascontiguousarray(np.moveaxis(codes, 0, -1))

    def _encode_at(self, prepared, value: Optional[float]) -> bytes:
        import imagecodecs

        shape, mapping, components = prepared
        stream = imagecodecs.jpeg2k_encode(
            components,
            level=value,
            codecformat="J2K",
            mct=False,
            colorspace="UNSPECIFIED",
            bitspersample=bits_needed(components),
            numthreads=1,
        )
        return mapping.pack(Packer().shape(shape)).blob(stream).bytes()

    def decode(self, data: bytes, like: Volume) -> np.ndarray:
        import imagecodecs

        reader = Unpacker(data)
        reader.shape(like.array.shape)
        mapping = LevelMap.unpack(reader)
        components = imagecodecs.jpeg2k_decode(reader.blob(), numthreads=1)
        return mapping.values(np.moveaxis(components.reshape(*components.shape[:2], -1), -1, 0))


class Htj2kSlices(SliceCodecPeer):
    name = "htj2k-slices"
    summary = "High-throughput JPEG 2000 (OpenJPH), each slice its own codestream"
    knob = Knob(smallest=1.0, largest=1e-6, log=True)

    def unavailable_reason(self) -> Optional[str]:
        return imagecodecs_missing("HTJ2K")

    def _encode_slice(self, codes: np.ndarray, bits: int, value: Optional[float]) -> bytes:
        import imagecodecs

        return imagecodecs.htj2k_encode(codes, level=value)

    def _decode_slice(self, blob: bytes) -> np.ndarray:
        import imagecodecs

        return imagecodecs.htj2k_decode(blob)
