"""The maximum-error layer: what the DeepSTD layer missed, coded so every voxel is within ±E.

The residual r = original − base (base = the decoded DeepSTD layer, in the original dtype's
values) is quantised uniformly: for integer data with step 2E + 1, q = sign(r)·⌊(|r| + E)/(2E + 1)⌋,
so |r − (2E + 1)q| ≤ E and E = 0 is lossless; for float data with step 2E (E > 0). The symbols are
rANS-coded (`deepstd.rans`) under a few order-0 models, one per band of the *base* intensity
(noise in MR and CT grows with the signal; the decoder knows the base, so the bands cost nothing
but their edges). Each model's histogram travels in the section, so decoding needs nothing else;
both sides turn it into the same 16-bit table with integer arithmetic only.

Section bytes (`deepstd.packing`): version, step (f64), band count, band edges (f64 each), then per
band: lowest symbol (signed), alphabet size, counts (the escape last), then the rANS strings, one
per slab of voxels, as a list of blobs. Symbols outside a band's alphabet are coded as the escape
followed by their value (`deepstd.rans`).
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from .errors import FormatError
from .packing import Packer, Unpacker
from .rans import MAX_TOTAL, RETIRED_CODER, CdfTable, cdf_of, quantised_frequencies

#: 2: constriction's rANS; 1 was CompressAI's (refused with `RETIRED_CODER`)
VERSION = 2
BANDS = 4
MAX_ALPHABET = 1024
#: a residual symbol (in steps) beyond this is corrupt data: the coder works in int32
MAX_SYMBOL = 1 << 30
#: voxels per rANS string: bounds the coder's working arrays
SLAB = 1 << 20


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
    if hi - lo + 1 > MAX_ALPHABET:  # keep the common centre, escape the tails
        lo, hi = (int(v) for v in np.quantile(symbols, [0.0005, 0.9995]))
        hi = min(hi, lo + MAX_ALPHABET - 1)
    inside = symbols[(symbols >= lo) & (symbols <= hi)]
    counts = np.bincount(inside - lo, minlength=hi - lo + 1).astype(np.int64)
    escapes = symbols.size - inside.size
    return lo, np.concatenate([counts, [max(escapes, 1)]])


def _table(models: List[Tuple[int, np.ndarray]]) -> CdfTable:
    """One CDF row per band, from its (lowest symbol, counts)."""
    cdfs = [cdf_of(quantised_frequencies(counts)) for _, counts in models]
    width = max(len(c) for c in cdfs)
    rows = np.zeros((len(cdfs), width), np.int64)
    for r, c in enumerate(cdfs):
        rows[r, : len(c)] = c
    lengths = np.array([len(c) for c in cdfs], np.int64)
    offsets = np.array([lo for lo, _ in models], np.int64)
    return CdfTable(rows, lengths, offsets, "the residual layer's", FormatError)


def compress(q: np.ndarray, base: np.ndarray, step: float) -> bytes:
    """Quantised residual `q` (same shape as `base`) -> section bytes."""
    edges = band_edges(base)
    bands = _bands(base, edges)
    symbols = q.ravel()
    models = [_model(symbols[bands == b]) for b in range(BANDS)]
    out = Packer().uint(VERSION).float64(step).uint(BANDS)
    for edge in edges:
        out.float64(float(edge))
    for lo, counts in models:
        out.sint(lo).uint(len(counts) - 1)
        for c in counts:
            out.uint(int(c))
    table = _table(models)
    strings = [
        table.encode(symbols[start : start + SLAB], bands[start : start + SLAB])
        for start in range(0, symbols.size, SLAB)
    ]
    return out.blobs(strings).bytes()


def decompress(data: bytes, base: np.ndarray, step: float) -> np.ndarray:
    """Section bytes -> quantised residual (shape of `base`); FormatError on anything inconsistent."""
    reader = Unpacker(data, "the residual layer")
    version = reader.uint()
    if version != VERSION:
        old = f" ({RETIRED_CODER})" if version == 1 else ""
        raise FormatError(f"residual layer version {version} is not supported{old}")
    if reader.float64() != step:
        raise FormatError("the residual layer's step does not match the header's error bound")
    if reader.uint() != BANDS:
        raise FormatError("the residual layer has an unexpected number of bands")
    edges = np.array([reader.float64() for _ in range(BANDS - 1)])
    if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) < 0):
        raise FormatError("the residual layer's band edges are invalid")
    models = []
    for _ in range(BANDS):
        lo = reader.sint()
        size = reader.uint()
        if not 1 <= size <= MAX_ALPHABET + 1:
            raise FormatError("the residual layer's alphabet size is invalid")
        if not -MAX_SYMBOL <= lo <= MAX_SYMBOL - size:
            raise FormatError("the residual layer's lowest symbol is out of range")
        counts = [reader.uint() for _ in range(size + 1)]
        if sum(counts) > MAX_TOTAL or counts[-1] <= 0:
            raise FormatError("the residual layer's histogram is invalid")
        models.append((lo, np.array(counts, dtype=np.int64)))
    table = _table(models)
    bands = _bands(base, edges)
    total = bands.size
    strings = reader.blobs()
    if len(strings) != -(-total // SLAB):
        raise FormatError("the residual layer's slab count does not match the volume")
    out = np.empty(total, dtype=np.int64)
    for string, start in zip(strings, range(0, total, SLAB)):
        index = bands[start : start + SLAB]
        out[start : start + index.size] = table.decode(string, index)
    return out.reshape(base.shape)


__all__ = ["step_for", "quantise", "dequantise", "compress", "decompress"]
