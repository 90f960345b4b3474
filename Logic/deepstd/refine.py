"""The refinement layer: the bytes the texture codec cannot use, spent on what it missed.

A texture codec saturates: past its finest trained rate more bytes buy almost nothing (docs/
BENCHMARK.md measured +0.2 dB for 2.3x the bytes on an LA scan), so a 32x budget on an LA scan,
or 64x on a chest CT coded at its own resolution, was left 13-70 % unused. Where the finest rate
fits with room to spare, the encoder codes the residual (original - the DeepSTD layer as the
decoder computes it) into the rest of the budget; a file of the refinement layer alone codes the
scan itself (the residual against zero).

Section bytes: version u8, then the coder's stream. Version 7, written now: the range of the coded
values (their floor and ceiling as zigzag varints; +-RANGE_LIMIT: unbounded on that side), then a
payload of the context-modelled wavelet coder of `deepstd.wavelet` (numpy and constriction, decoded
in this process; on training scans 0.3-0.7 dB closer than SPERR at equal bytes, docs/CODEC.md);
version 8, written where the layer's slices move (`deepstd.motion`), the same with the payload's
slice-motion field; version 9, written where the scan's slices change little from one to the
next, the range and a payload of `deepstd.slabs` (the transform along z taken to its end first, each
z band coded in-plane). Versions 5 and 6, written before the payload coded signs on their own, are the
same with every sign in the signed rows, and still read. The
decoded values are clipped to the range: a wavelet coder rings past sharp edges (HU below air's
-1024 around a body, negative MR magnitudes), and a file of the layer alone clips its post-filtered
scan to it too (+0.15 dB on the chest CT at 64x, docs/CODEC.md). Version 4: the payload alone,
as written before the range (unreleased, after 0.2.0), still read. Versions 1-3, written before,
hold one SPERR stream (Li, Lindstrom & Clyne, IPDPS 2023, through `imagecodecs`; 3-D, float32,
one chunk) and are still read: version 3 without SPERR's 18-byte header (the decoder rebuilds it
from the scan's shape) and with the chunk's 26-byte prelude in 18 + 2-4 bytes (its two constant
bytes, conditioner flags 0x80 and 32 bit planes, implied; its u64 bit count a varint), version 2
with the chunk whole, version 1 with SPERR's header kept and checked against the scan's shape and
the section's length. SPERR's decoder aborts the process on some crafted streams (a C++ exception
that escapes `imagecodecs`; found by fuzzing: 3 of 3 runs of 2,000 mutations), so those decode in
a child process with a memory limit and a time limit, and anything but a clean result is a
`FormatError`.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Tuple

import numpy as np

from . import memory, motion, slabs, wavelet
from .container import ByteReader, varint
from .errors import FormatError, InputError
from .packing import unzigzag, zigzag

SECTION = "refine"
VERSION = 7
#: the range and a wavelet payload with the slice-motion field: a layer coded with slice motion
MOVED_VERSION = 8
#: the range and a payload of z bands (`deepstd.slabs`): a layer coded along z first
SLABS_VERSION = 9
#: versions 7 and 8 as written before the signs were coded on their own (eleventh session), still read
UNSIGNED_VERSION, UNSIGNED_MOVED_VERSION = 5, 6
#: the versions of a value range and a wavelet payload, and those of them with slice motion
WAVELET_VERSIONS = (VERSION, MOVED_VERSION, UNSIGNED_VERSION, UNSIGNED_MOVED_VERSION, SLABS_VERSION)
MOVED_VERSIONS = (MOVED_VERSION, UNSIGNED_MOVED_VERSION)
#: the wavelet payload without a value range (written after 0.2.0, before the range), still read
UNCLIPPED_VERSION = 4
#: how a candidate codes the layer: the 3-D wavelet, with slice motion, along z first
PLAIN, MOVED, SLABBED = "plain", "moved", "slabbed"
#: a range end at +-this means no bound on that side (float scans can hold values past 2**53)
RANGE_LIMIT = 1 << 53
#: SPERR sections, still read: the chunk's prelude compacted, the chunk whole, SPERR's header kept
SPERR_VERSION, WHOLE_VERSION, HEADED_VERSION = 3, 2, 1
#: SPERR's stream header for one float32 3-D chunk: version byte, flags, x, y, z (u32), chunk length (u32)
_SPERR_HEAD = struct.Struct("<BB3II")
_SPERR_VERSION, _SPERR_FLAGS = 0x00, 0x60
#: the chunk's prelude: conditioner flags, mean (f64), a second f64 of SPERR's, bit planes, bit count (u64)
_CHUNK_HEAD = struct.Struct("<B8s8sBQ")
_CHUNK_FLAGS, _CHUNK_PLANES = 0x80, 32
#: a bit count far above any SPERR stream's (2^33 voxels x 64 bits), so that the varint stays sane
MAX_CHUNK_BITS = 1 << 40
#: the child decoder's limits: address space (bytes per voxel on top of a fixed allowance) and time
CHILD_BYTES_PER_VOXEL = 64
CHILD_BASE_BYTES = 2 << 30
CHILD_SECONDS_PER_MVOXEL = 20.0
#: what one candidate coding holds at its peak (measured: 76-81 bytes a voxel on a prostate volume,
#: tracemalloc), so that candidates coded side by side stay within the machine's memory
FIT_BYTES_PER_VOXEL = 96


def unavailable_reason() -> Optional[str]:
    """Why a SPERR section (versions 1-3) cannot be decoded here, or None."""
    try:
        import imagecodecs
    except ImportError:
        return "the imagecodecs package is not installed (pip install imagecodecs)"
    if not getattr(imagecodecs.SPERR, "available", False):
        return f"imagecodecs {imagecodecs.__version__} was built without SPERR"
    return None


def fit(
    residual: np.ndarray,
    spacing_zyx: Tuple[float, float, float],
    spare: int,
    tolerance: float,
    on_try: Callable[[int], None],
    near: Optional[bytes] = None,
    workers: int = 1,
) -> Optional[bytes]:
    """The largest section of at most `spare` bytes (within `tolerance` under it), or None; `near`,
    a section of the same residual at another size, starts the search where that one ended, with
    its axis delays, slice motion or z bands. Otherwise, where the voxel spacing makes an axis
    thick (`wavelet.delays_for`), the residual is coded both with that axis splitting later and
    with every axis splitting from the start, and where that axis is z also with slice motion
    (`deepstd.motion`) and, where the slices repeat their in-plane detail (`slabs.coherence`),
    along z first (`deepstd.slabs`); the section that decodes closest is kept. Waiting paid on
    training prostate volumes of 3-3.6 mm slices (+1.3 dB at 64x) and cost on a training CT of 2 mm
    slices (-1.3 dB at 128x); slice motion paid on the chest CT of 5 mm slices (+0.28 dB at 128x)
    and is not kept on the prostate volumes; z first paid on that training CT (+1.0 / +2.2 dB at
    64 / 512x) and lost 0.1-0.6 dB on a prostate volume (docs/CODEC.md). Up to `workers`
    candidates are coded side by side on threads (as many as the memory allows; numpy releases the
    GIL for much of a coding: two candidates of a prostate volume took 11.5 s on 2 threads against
    17.7 s one after the other), each as it would be alone, so the section is the same whatever
    `workers` is."""
    if residual.ndim != 3:
        raise ValueError("the refinement layer codes a 3-D residual")
    head = section_of(residual, b"")  # its length (a moved section's head is as long)
    written = (VERSION, MOVED_VERSION, SLABS_VERSION)
    hint = payload_of(near) if near is not None and near[:1] and near[0] in written else None
    candidates: List[Tuple[Tuple[int, int, int], str]]
    known: Optional[motion.Field] = None  # the moves of `near`: read back, not estimated again
    if near is not None and hint is not None and near[0] == SLABS_VERSION:  # the z bands chosen before
        candidates = [(slabs.IN_PLANE, SLABBED)]
    elif near is not None and hint is not None and len(hint) > 4:  # the delays and motion chosen before
        candidates = [(wavelet.delays_of(hint[4]), MOVED if near[0] == MOVED_VERSION else PLAIN)]
        known = wavelet.moves_of(hint, residual.shape) if candidates[0][1] == MOVED else None
    else:
        thick = wavelet.delays_for(spacing_zyx)
        candidates = list(dict.fromkeys([(thick, PLAIN), ((0, 0, 0), PLAIN)]))
        if thick[0] > 0 and thick[1:] == (0, 0) and residual.shape[0] >= wavelet.MIN_LENGTH:
            candidates.append(((0, 0, 0), MOVED))
            if slabs.coherence(residual) >= slabs.COHERENT:
                candidates.append((slabs.IN_PLANE, SLABBED))
    side_by_side = min(workers, len(candidates), max(1, memory.limit_bytes() // (FIT_BYTES_PER_VOXEL * residual.size)))
    tries = _Tries(on_try) if side_by_side > 1 else on_try

    def coded(candidate: Tuple[Tuple[int, int, int], str]) -> Optional[Tuple[float, bytes]]:
        delays, kind = candidate
        if kind == SLABBED:
            payload = slabs.fit(residual, spare - len(head), tolerance, tries, near=hint)
        else:
            moves = None
            if kind == MOVED:
                moves = known or motion.estimate(wavelet.Layout(residual.shape, delays).before_z_split(residual))
            payload = wavelet.fit(residual, spare - len(head), tolerance, tries, near=hint, delays=delays, moves=moves)
        if payload is None:
            return None
        section = section_of(residual, payload, kind)
        # one candidate (an isotropic scan, or the choice of `near`) needs no measuring
        error = float(np.mean((decompress(section, residual.shape) - residual) ** 2)) if candidates[1:] else 0.0
        return error, section

    if side_by_side > 1:
        with ThreadPoolExecutor(side_by_side) as pool:
            results = list(pool.map(coded, candidates))
    else:
        results = [coded(candidate) for candidate in candidates]
    closest: Optional[Tuple[float, bytes]] = None
    for result in results:  # in the candidates' order: the first of equally close ones is kept
        if result is not None and (closest is None or result[0] < closest[0]):
            closest = result
    return None if closest is None else closest[1]


class _Tries:
    """`on_try` for candidates coded side by side: one call at a time, and the count never goes
    back (each candidate counts its own tries), so a progress bar moves forward only."""

    def __init__(self, on_try: Callable[[int], None]):
        self.on_try, self.most, self.lock = on_try, -1, threading.Lock()

    def __call__(self, tries: int) -> None:
        with self.lock:
            self.most = max(self.most, tries)
            self.on_try(self.most)


def smallest(residual: np.ndarray) -> bytes:
    """The smallest section the residual codes to (every coefficient a zero)."""
    return section_of(residual, wavelet.compress(residual, wavelet.COARSEST_STEP))


def section_of(values: np.ndarray, payload: bytes, kind: str = PLAIN) -> bytes:
    """A version 7 section (8 where the payload has slice motion, 9 where it is of z bands: `kind`):
    the range of `values` (the floor of their minimum and the ceiling of their maximum,
    +-RANGE_LIMIT past it) and a wavelet payload of them."""
    low = max(math.floor(float(np.min(values))), -RANGE_LIMIT)
    high = min(math.ceil(float(np.max(values))), RANGE_LIMIT)
    version = {PLAIN: VERSION, MOVED: MOVED_VERSION, SLABBED: SLABS_VERSION}[kind]
    return bytes([version]) + varint(zigzag(low)) + varint(zigzag(high)) + payload


def _parts(section: bytes) -> Tuple[Tuple[float, float], bytes]:
    """The value range and the wavelet payload of a version 5 to 9 section."""
    reader = ByteReader(section)
    reader.take(1, "refinement layer version")
    low, high = (unzigzag(reader.varint(f"refinement layer {end}", 2 * RANGE_LIMIT)) for end in ("minimum", "maximum"))
    if low > high:
        raise FormatError(f"refinement layer: a value range from {low} to {high}")
    bounds = (-math.inf if low == -RANGE_LIMIT else low), (math.inf if high == RANGE_LIMIT else high)
    return bounds, reader.take(reader.remaining(), "refinement layer payload")


def payload_of(section: bytes) -> bytes:
    """The wavelet payload of a version 5 to 9 section (its range skipped)."""
    return _parts(section)[1]


def within_range(values: np.ndarray, section: bytes) -> np.ndarray:
    """`values`, clipped in place to the range the section's values were coded in (unbounded before
    version 5): `decompress` clips the layer, and a file of the layer alone its post-filtered scan."""
    if section[:1] and section[0] in WAVELET_VERSIONS:
        np.clip(values, *_parts(section)[0], out=values)
    return values


def check(section: bytes, shape: Tuple[int, int, int]) -> bytes:
    """The SPERR stream of a section, its header rebuilt from `shape` (z, y, x) or, in a version 1
    section, every field of the stored one checked against `shape` and the section's length."""
    if len(section) < 2:
        raise FormatError("refinement layer: truncated section")
    if section[0] in (SPERR_VERSION, WHOLE_VERSION):
        chunk = _chunk(section) if section[0] == SPERR_VERSION else section[1:]
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
    """The residual (z, y, x) float32: a version 4 to 9 section decoded here (within its range), a
    SPERR section in a child process (see the module docstring)."""
    if section[:1] and section[0] in (*WAVELET_VERSIONS, UNCLIPPED_VERSION):
        ranged = section[0] != UNCLIPPED_VERSION
        bounds, payload = _parts(section) if ranged else ((-math.inf, math.inf), section[1:])
        signed = section[0] in (VERSION, MOVED_VERSION)
        with np.errstate(over="ignore"):  # refused just below
            if section[0] == SLABS_VERSION:
                decoded = slabs.decompress(payload, shape)
            else:
                decoded = wavelet.decompress(payload, shape, section[0] in MOVED_VERSIONS, signed)
            values = decoded.astype(np.float32)
        if not np.isfinite(values).all():
            raise FormatError("refinement layer: the wavelet stream decodes to non-finite values (corrupt data)")
        return np.clip(values, *bounds, out=values)
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
