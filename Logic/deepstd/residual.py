"""The maximum-error layer: what the DeepSTD layer missed, coded so every voxel is within ±E.

The residual r = original − base (base = the decoded DeepSTD layer, in the original dtype's
values) is quantised uniformly: for integer data with step 2E + 1, q = sign(r)·⌊(|r| + E)/(2E + 1)⌋,
so |r − (2E + 1)q| ≤ E and E = 0 is lossless; for float data with step 2E (E > 0). The symbols are
coded with CompressAI's rANS under a few order-0 models, one per band of the *base* intensity
(noise in MR and CT grows with the signal; the decoder knows the base, so the bands cost nothing
but their edges). Each model's histogram travels in the section, so decoding needs nothing else.

Section bytes: version u8, step f64, band count u8, band edges f64 each, then per band: lowest
symbol (zigzag varint), alphabet size (varint), counts (varint each, the escape last), then the
slab count (varint) and per slab its string length (varint) and the rANS string. Symbols outside
a band's alphabet are coded through rANS's escape (bypass) path.
"""
from __future__ import annotations

import struct
from typing import List, Sequence, Tuple

import numpy as np

from .errors import FormatError

VERSION = 1
BANDS = 4
MAX_ALPHABET = 1024
#: voxels per rANS string: bounds the Python lists the coder needs
SLAB = 1 << 20
PRECISION = 16


def step_for(bound: float, integer: bool) -> float:
    """Quantisation step that guarantees |error| <= bound (integer data: 2E + 1, so E = 0 is lossless)."""
    if integer:
        return 2.0 * bound + 1.0
    if bound <= 0:
        raise ValueError("a lossless bound needs integer data; give a positive --max-error")
    return 2.0 * bound


def quantise(residual: np.ndarray, bound: float, step: float) -> np.ndarray:
    """Integers q with |residual − q·step| <= bound (step from `step_for`)."""
    q = np.sign(residual) * np.floor((np.abs(residual) + bound) / step)
    return q.astype(np.int64)


def dequantise(q: np.ndarray, step: float) -> np.ndarray:
    return q.astype(np.float64) * step


# --- coding ---------------------------------------------------------------------------------------
def band_edges(base: np.ndarray) -> np.ndarray:
    """Quantiles of the base intensity that split the voxels into `BANDS` equal groups."""
    return np.quantile(base, np.linspace(0, 1, BANDS + 1)[1:-1]).astype(np.float64)


def _bands(base: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.searchsorted(edges, base.ravel(), side="right").astype(np.int32)


def _model(symbols: np.ndarray) -> Tuple[int, np.ndarray]:
    """(lowest symbol, counts incl. the escape) for one band's symbols."""
    if symbols.size == 0:
        return 0, np.array([1, 1], dtype=np.int64)
    lo, hi = int(symbols.min()), int(symbols.max())
    if hi - lo + 1 > MAX_ALPHABET:          # keep the common centre, escape the tails
        lo, hi = (int(v) for v in np.quantile(symbols, [0.0005, 0.9995]))
        hi = min(hi, lo + MAX_ALPHABET - 1)
    inside = symbols[(symbols >= lo) & (symbols <= hi)]
    counts = np.bincount(inside - lo, minlength=hi - lo + 1).astype(np.int64)
    escapes = symbols.size - inside.size
    return lo, np.concatenate([counts, [max(escapes, 1)]])


def _cdf(counts: np.ndarray) -> List[int]:
    from compressai._CXX import pmf_to_quantized_cdf

    return pmf_to_quantized_cdf((counts / counts.sum()).tolist(), PRECISION)


def compress(q: np.ndarray, base: np.ndarray, step: float) -> bytes:
    """Quantised residual `q` (same shape as `base`) -> section bytes."""
    from compressai.ans import RansEncoder

    edges = band_edges(base)
    bands = _bands(base, edges)
    symbols = q.ravel()
    models = [_model(symbols[bands == b]) for b in range(BANDS)]
    out = bytearray(struct.pack("<Bd", VERSION, step)) + bytes([BANDS])
    out += struct.pack(f"<{BANDS - 1}d", *edges)
    for lo, counts in models:
        out += _varint(_zigzag(lo)) + _varint(len(counts) - 1)
        for c in counts:
            out += _varint(int(c))
    cdfs = [_cdf(counts) for _, counts in models]
    lengths = [len(c) for c in cdfs]
    offsets = [lo for lo, _ in models]
    slabs = range(0, symbols.size, SLAB)
    out += _varint(len(slabs))
    for start in slabs:
        chunk = slice(start, start + SLAB)
        string = RansEncoder().encode_with_indexes(symbols[chunk].tolist(), bands[chunk].tolist(),
                                                   cdfs, lengths, offsets)
        out += _varint(len(string)) + string
    return bytes(out)


def decompress(data: bytes, base: np.ndarray, step: float) -> np.ndarray:
    """Section bytes -> quantised residual (shape of `base`); FormatError on anything inconsistent."""
    from compressai.ans import RansDecoder

    reader = _Reader(data)
    version, stored_step = struct.unpack("<Bd", reader.take(9))
    if version != VERSION:
        raise FormatError(f"residual layer version {version} is not supported")
    if stored_step != step:
        raise FormatError("the residual layer's step does not match the header's error bound")
    if reader.take(1)[0] != BANDS:
        raise FormatError("the residual layer has an unexpected number of bands")
    edges = np.array(struct.unpack(f"<{BANDS - 1}d", reader.take(8 * (BANDS - 1))))
    if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) < 0):
        raise FormatError("the residual layer's band edges are invalid")
    cdfs, lengths, offsets = [], [], []
    for _ in range(BANDS):
        lo = _unzigzag(reader.varint())
        size = reader.varint()
        if not 1 <= size <= MAX_ALPHABET + 1:
            raise FormatError("the residual layer's alphabet size is invalid")
        counts = np.array([reader.varint() for _ in range(size + 1)], dtype=np.float64)
        if counts.sum() <= 0 or counts[-1] <= 0:
            raise FormatError("the residual layer's histogram is invalid")
        cdf = _cdf(counts)
        cdfs.append(cdf)
        lengths.append(len(cdf))
        offsets.append(lo)
    bands = _bands(base, edges)
    total = bands.size
    n_slabs = reader.varint()
    if n_slabs != -(-total // SLAB):
        raise FormatError("the residual layer's slab count does not match the volume")
    out = np.empty(total, dtype=np.int64)
    for k, start in enumerate(range(0, total, SLAB)):
        string = reader.take(reader.varint())
        index = bands[start:start + SLAB]
        # rANS decoding trusts its input: padding keeps an over-read of corrupt data in our buffer
        padded = string + bytes(4 * index.size + 16 * len(string) + 1024)
        out[start:start + index.size] = RansDecoder().decode_with_indexes(padded, index.tolist(), cdfs,
                                                                          lengths, offsets)
    if reader.remaining():
        raise FormatError("the residual layer has trailing bytes")
    return out.reshape(base.shape)


# --- bytes ----------------------------------------------------------------------------------------
def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _unzigzag(v: int) -> int:
    return v // 2 if v % 2 == 0 else -(v + 1) // 2


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        out.append(byte | (0x80 if v else 0))
        if not v:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.remaining():
            raise FormatError("the residual layer is truncated")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise FormatError("the residual layer has an overlong number")


__all__ = ["step_for", "quantise", "dequantise", "compress", "decompress"]
