"""The refinement layer: the bytes the texture codec cannot use, spent on what it missed.

A texture codec saturates: past its finest trained rate more bytes buy almost nothing (docs/
BENCHMARK.md measured +0.2 dB for 2.3x the bytes on an LA scan), so a 32x budget on an LA scan,
or 64x on a chest CT coded at its own resolution, was left 13-70 % unused. Where the finest rate
fits with room to spare, the encoder codes the residual (original - the DeepSTD layer as the
decoder computes it) with SPERR (Li, Lindstrom & Clyne, IPDPS 2023: a 3-D wavelet + SPECK coder
with its own rate control, through `imagecodecs`) into the rest of the budget.

Section bytes: version u8 = 3, then one SPERR stream (3-D, float32, one chunk) without SPERR's own
18-byte header, which holds nothing the file does not already say (the scan's shape, the stream's
length): the decoder rebuilds it. The chunk's own 26-byte prelude is stored in 18 + 2-4 bytes: its
two constant bytes (conditioner flags 0x80, 32 bit planes) are implied and its u64 bit count is a
varint. A 512x hippocampus crop has ~240 bytes for everything, so those ~24 bytes are a tenth of
what the layer can spend. A stream of another prelude (SPERR codes a constant field in 17 bytes)
is stored whole as version 2, as files written before this did; version 1 sections (SPERR's
header kept) are still read, the header checked against the scan's shape and the section's
length. SPERR's decoder aborts the process on some crafted streams (a C++ exception that escapes
`imagecodecs`; found by fuzzing: 3 of 3 runs of 2,000 mutations), so decoding runs in a child
process with a memory limit and a time limit, and anything but a clean result is a `FormatError`.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from typing import Callable, Optional, Tuple

import numpy as np

from .container import ByteReader, varint
from .errors import FormatError, InputError

SECTION = "refine"
VERSION = 3
#: sections whose SPERR stream is stored whole, less SPERR's header (written before format 1.2's
#: compact layout, and still for a stream of another prelude)
WHOLE_VERSION = 2
#: sections written before 0.6 (SPERR's header kept in the stream)
HEADED_VERSION = 1
#: SPERR's stream header for one float32 3-D chunk: version byte, flags, x, y, z (u32), chunk length (u32)
_SPERR_HEAD = struct.Struct("<BB3II")
_SPERR_VERSION, _SPERR_FLAGS = 0x00, 0x60
#: the chunk's prelude: conditioner flags, mean (f64), a second f64 of SPERR's, bit planes, bit count (u64)
_CHUNK_HEAD = struct.Struct("<B8s8sBQ")
_CHUNK_FLAGS, _CHUNK_PLANES = 0x80, 32
#: a bit count far above any SPERR stream's (2^33 voxels x 64 bits), so that the varint stays sane
MAX_CHUNK_BITS = 1 << 40
#: bits per voxel SPERR is asked for at most (a refinement past this is near-lossless coding)
MAX_BPP = 16.0
#: the child decoder's limits: address space (bytes per voxel on top of a fixed allowance) and time
CHILD_BYTES_PER_VOXEL = 64
CHILD_BASE_BYTES = 2 << 30
CHILD_SECONDS_PER_MVOXEL = 20.0


def unavailable_reason() -> Optional[str]:
    """Why the refinement layer cannot be coded or decoded here, or None."""
    try:
        import imagecodecs
    except ImportError:
        return "the imagecodecs package is not installed (pip install imagecodecs)"
    if not getattr(imagecodecs.SPERR, "available", False):
        return f"imagecodecs {imagecodecs.__version__} was built without SPERR"
    return None


def compress(residual: np.ndarray, bits_per_voxel: float) -> bytes:
    """The section for `residual` (z, y, x) at about `bits_per_voxel` (SPERR's own rate control)."""
    import imagecodecs

    if residual.ndim != 3:
        raise ValueError("the refinement layer codes a 3-D residual")
    bpp = float(np.clip(bits_per_voxel, 1e-4, MAX_BPP))
    data = np.ascontiguousarray(residual, dtype=np.float32)
    stream = bytes(imagecodecs.sperr_encode(data, bpp, mode="bpp", chunks=data.shape, numthreads=1))
    return _stored(stream[_SPERR_HEAD.size :])


def _stored(chunk: bytes) -> bytes:
    """The section of one chunk: its prelude compacted (version 3) where it has the usual form."""
    if len(chunk) >= _CHUNK_HEAD.size:
        flags, mean, second, planes, bits = _CHUNK_HEAD.unpack_from(chunk)
        if (flags, planes) == (_CHUNK_FLAGS, _CHUNK_PLANES) and bits < MAX_CHUNK_BITS:
            return bytes([VERSION]) + mean + second + varint(bits) + chunk[_CHUNK_HEAD.size :]
    return bytes([WHOLE_VERSION]) + chunk


def fit(residual: np.ndarray, spare: int, tolerance: float, on_try: Callable[[int], None]) -> Optional[bytes]:
    """The largest section of at most `spare` bytes (within `tolerance` under it), or None."""
    from .ratecontrol import largest_by_target

    voxels = residual.size
    return largest_by_target(lambda target: compress(residual, target * 8 / voxels), spare, tolerance, on_try=on_try)


def check(section: bytes, shape: Tuple[int, int, int]) -> bytes:
    """The SPERR stream of a section, its header rebuilt from `shape` (z, y, x) or, in a version 1
    section, every field of the stored one checked against `shape` and the section's length."""
    if len(section) < 2:
        raise FormatError("refinement layer: truncated section")
    if section[0] in (VERSION, WHOLE_VERSION):
        chunk = _chunk(section) if section[0] == VERSION else section[1:]
        z, y, x = shape
        return _SPERR_HEAD.pack(_SPERR_VERSION, _SPERR_FLAGS, x, y, z, len(chunk)) + chunk
    if section[0] != HEADED_VERSION:
        raise FormatError(f"refinement layer: unsupported version {section[0]}")
    if len(section) < 1 + _SPERR_HEAD.size:
        raise FormatError("refinement layer: truncated section")
    stream = section[1:]
    version, flags, x, y, z, length = _SPERR_HEAD.unpack_from(stream, 0)
    if (version, flags) != (_SPERR_VERSION, _SPERR_FLAGS):
        raise FormatError("refinement layer: not a single-chunk float32 3-D SPERR stream")
    if (z, y, x) != tuple(shape):
        raise FormatError(
            f"refinement layer: coded for {x}x{y}x{z} voxels, the scan has {shape[2]}x{shape[1]}x{shape[0]}"
        )
    if length != len(stream) - _SPERR_HEAD.size:
        raise FormatError("refinement layer: the stream's length does not match the section")
    return stream


def _chunk(section: bytes) -> bytes:
    """The whole chunk of a version 3 section, its prelude rebuilt."""
    reader = ByteReader(section)
    reader.take(1, "refinement layer version")
    mean = reader.take(8, "refinement layer mean")
    second = reader.take(8, "refinement layer prelude")
    bits = reader.varint("refinement layer bit count", MAX_CHUNK_BITS - 1)
    rest = reader.take(reader.remaining(), "refinement layer stream")
    return _CHUNK_HEAD.pack(_CHUNK_FLAGS, mean, second, _CHUNK_PLANES, bits) + rest


def decompress(section: bytes, shape: Tuple[int, int, int]) -> np.ndarray:
    """The residual (z, y, x) float32, decoded in a child process (see the module docstring)."""
    reason = unavailable_reason()
    if reason is not None:
        raise InputError(f"this file has a refinement layer, and decoding it needs SPERR: {reason}")
    stream = check(section, shape)
    voxels = int(np.prod(shape, dtype=np.int64))
    limit = CHILD_BASE_BYTES + CHILD_BYTES_PER_VOXEL * voxels
    command = [sys.executable, "-m", "deepstd.refine", str(limit), *map(str, shape)]
    try:
        done = subprocess.run(
            command, input=stream, capture_output=True, timeout=30 + CHILD_SECONDS_PER_MVOXEL * voxels / 1e6
        )
    except subprocess.TimeoutExpired:
        raise FormatError("refinement layer: the SPERR stream did not decode in time (corrupt data)") from None
    if done.returncode != 0 or len(done.stdout) != 4 * voxels:
        raise FormatError("refinement layer: the SPERR stream does not decode (corrupt data)")
    values = np.frombuffer(done.stdout, dtype="<f4").reshape(shape)
    if not np.isfinite(values).all():
        raise FormatError("refinement layer: the SPERR stream decodes to non-finite values (corrupt data)")
    return values


def _child(limit: int, shape: Tuple[int, int, int]) -> None:
    """Decode stdin's checked SPERR stream to stdout as float32, within `limit` bytes of memory."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # Windows has no RLIMIT_AS; the time limit still holds
        pass
    import imagecodecs

    values = imagecodecs.sperr_decode(sys.stdin.buffer.read(), numthreads=1)
    if values.shape != tuple(shape):
        sys.exit(3)
    sys.stdout.buffer.write(np.ascontiguousarray(values, dtype="<f4").tobytes())


if __name__ == "__main__":
    _child(int(sys.argv[1]), (int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
