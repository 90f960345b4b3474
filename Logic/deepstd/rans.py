"""Exact rANS coding with integer CDF tables, through constriction (Rust, wheels everywhere).

A `CdfTable` is a set of rows of 16-bit cumulative frequencies (CompressAI's `_quantized_cdf`
layout: row r starts at 0, rises strictly and ends at 2**16 at column `length[r] − 1`; its last
symbol is the escape). The texture latents (`texture.tables`) and the max-error layer
(`residual`) code through it.

Why this is exact on every platform: constriction's `Categorical(p, perfect=False)` turns a PMF
of n float64 entries into 24-bit cumulatives c_i = ⌊P_i · (2**24 − n) / Σp⌋ + i (P_i the sum of
the first i entries). We pass a row's integer frequencies: every P_i is an integer ≤ 2**16,
Σp = 2**16, the scale (2**24 − n) / 2**16 is a dyadic rational and P_i · scale has at most 40
significant bits, so no float operation rounds, in any evaluation order. The model is therefore a
fixed integer table on every CPU, and rANS itself is integer code.

A symbol's value v = symbol − offset[row] is coded as itself when 0 ≤ v < escape (= length − 2),
otherwise as the escape followed by r = (−2v − 1 if v < 0 else 2(v − escape)) + 1 in an
Elias-gamma form: the bit length k of r (uniform over 0..K_LIMIT), then r's k − 1 low bits in
uniform chunks of ≤ 16 bits. One string decodes the main symbols (grouped by row, in the row
order, each group in array order), then every escape's k, then the escapes' lowest chunks, then
the next chunks, and so on; a valid string leaves the coder exactly empty, which the decoder
checks.
"""

from __future__ import annotations

from typing import List, Type

import constriction
import numpy as np

from .errors import FormatError

#: every CDF row ends at 2**PRECISION
PRECISION = 16
#: escaped values have at most this many bits (after the sign fold and +1)
K_LIMIT = 48
CHUNK = 16
#: offsets beyond this would let values outgrow the escape code's K_LIMIT bits
MAX_OFFSET = 1 << 30
#: counts above this could overflow the integer quantisation (far more than any voxel count)
MAX_TOTAL = 1 << 44

#: what a reader says of a section written with CompressAI's coder (texture and residual version 1)
RETIRED_CODER = (
    "was written with CompressAI's rANS coder, which only deepstd 0.1.0 and earlier read: decode the file "
    "with such a version and re-encode it with this one"
)

_ANS = constriction.stream.stack.AnsCoder
_MODEL = constriction.stream.model


def _words(data: bytes) -> np.ndarray:
    if len(data) % 4 or not data:
        raise FormatError("entropy-coded string has a length that is not a whole number of words")
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    if words[-1] == 0:  # rANS never ends on a zero word
        raise FormatError("entropy-coded string is corrupt (ends in a zero word)")
    return words


def _chunk_bits(k: np.ndarray) -> List[np.ndarray]:
    """Bits of each escape's mantissa (k − 1 in all) in chunk j = 0, 1, ..., low chunk first."""
    return [np.clip(k - 1 - CHUNK * j, 0, CHUNK) for j in range(-(-(K_LIMIT - 1) // CHUNK))]


def _push_escapes(coder, raw: np.ndarray) -> None:
    """Push escaped magnitudes (≥ 0) so that they pop after the main symbols (see module doc)."""
    if not raw.size:
        return
    r = raw.astype(np.int64) + 1
    if int(r.max()) >= 1 << K_LIMIT:
        raise ValueError("a symbol is too far outside its table to be coded")
    k = np.frexp(r.astype(np.float64))[1].astype(np.int64)  # the bit length; exact as r < 2**53
    mantissa = r - (np.int64(1) << (k - 1))
    for j, bits in reversed(list(enumerate(_chunk_bits(k)))):
        some = bits > 0
        if some.any():
            values = (mantissa[some] >> (CHUNK * j)) & ((np.int64(1) << bits[some]) - 1)
            coder.encode_reverse(values.astype(np.int32), _MODEL.Uniform(), _sizes(bits[some]))
    coder.encode_reverse(k.astype(np.int32), _MODEL.Uniform(K_LIMIT + 1))


def _pop_escapes(coder, count: int) -> np.ndarray:
    if not count:
        return np.zeros(0, np.int64)
    k = coder.decode(_MODEL.Uniform(K_LIMIT + 1), count).astype(np.int64)
    if (k < 1).any():
        raise FormatError("entropy-coded string is corrupt (bad escape length)")
    mantissa = np.zeros(count, np.int64)
    for j, bits in enumerate(_chunk_bits(k)):
        some = bits > 0
        if some.any():
            mantissa[some] |= coder.decode(_MODEL.Uniform(), _sizes(bits[some])).astype(np.int64) << (CHUNK * j)
    return (np.int64(1) << (k - 1)) + mantissa - 1


def _sizes(bits: np.ndarray) -> np.ndarray:
    return (np.int64(1) << bits).astype(np.int32)


class CdfTable:
    """Rows of integer CDFs with their offsets, as constriction models built once."""

    def __init__(self, cdf: np.ndarray, length: np.ndarray, offset: np.ndarray, name: str, error: Type[Exception]):
        check_cdf(cdf, length, offset, name, error)
        self.rows = cdf.shape[0]
        self.offset = offset.astype(np.int64)
        self.escape = length.astype(np.int64) - 2
        self.models = [
            _MODEL.Categorical(np.diff(cdf[r, : length[r]]).astype(np.float64), perfect=False) for r in range(self.rows)
        ]

    def _groups(self, rows: np.ndarray):
        # rows past the table's either end sort before or after every valid one and are left out;
        # 16-bit keys make numpy's stable sort a radix sort (5x faster than on int64, same order)
        keys = np.clip(rows, -1, self.rows).astype(np.int16 if self.rows < 1 << 15 else np.int64)
        order = np.argsort(keys, kind="stable")
        bounds = np.searchsorted(keys[order], np.arange(self.rows + 1))
        return [(r, order[bounds[r] : bounds[r + 1]]) for r in range(self.rows) if bounds[r + 1] > bounds[r]]

    def encode(self, symbols: np.ndarray, rows: np.ndarray) -> bytes:
        """Integer symbols, each coded with the model of its row, -> one string."""
        coder = writer()
        self.push(coder, symbols, rows)
        return written(coder)

    def decode(self, data: bytes, rows: np.ndarray) -> np.ndarray:
        """The inverse of `encode` for the same rows; FormatError unless `data` is exactly a string."""
        coder = reader(data)
        symbols = self.pop(coder, rows)
        finish(coder)
        return symbols

    def push(self, coder, symbols: np.ndarray, rows: np.ndarray) -> None:
        """Push one group of symbols onto `coder` (a stack: push groups last first, so that they pop
        in order, each with `pop` and the same rows)."""
        v = symbols.astype(np.int64) - self.offset[rows]
        escape = self.escape[rows]
        out = (v < 0) | (v >= escape)
        coded = np.where(out, escape, v).astype(np.int32)
        _push_escapes(coder, np.where(v < 0, -2 * v - 1, 2 * (v - escape))[out])
        for r, at in reversed(self._groups(rows)):
            coder.encode_reverse(coded[at], self.models[r])

    def pop(self, coder, rows: np.ndarray) -> np.ndarray:
        """The group `push` pushed with these rows, from `coder`."""
        coded = np.empty(rows.size, np.int64)
        escape = self.escape[rows]
        try:
            for r, at in self._groups(rows):
                coded[at] = coder.decode(self.models[r], at.size)
            out = coded == escape
            raw = _pop_escapes(coder, int(out.sum()))
        except (ValueError, RuntimeError) as exc:  # constriction's complaints about its input
            raise FormatError(f"entropy-coded string does not decode: {exc}") from None
        coded[out] = np.where(raw % 2 == 1, -(raw + 1) // 2, raw // 2 + escape[out])
        return coded + self.offset[rows]


def writer():
    """An empty coder for `CdfTable.push`; `written` gives its string."""
    return _ANS()


def written(coder) -> bytes:
    return coder.get_compressed().astype("<u4").tobytes()


def reader(data: bytes):
    """A coder holding `data` for `CdfTable.pop`; FormatError unless it is a string's words."""
    try:
        return _ANS(_words(data))
    except (ValueError, RuntimeError) as exc:
        raise FormatError(f"entropy-coded string does not decode: {exc}") from None


def finish(coder) -> None:
    """FormatError unless every word of the string was used (a valid string ends exactly)."""
    if not coder.is_empty():
        raise FormatError("entropy-coded string does not end where its symbols do (corrupt data)")


def check_cdf(cdf: np.ndarray, length: np.ndarray, offset: np.ndarray, name: str, error: Type[Exception]) -> None:
    """What the coder trusts, checked first: rows that start at 0, rise strictly and end at
    2**PRECISION within their stated length, and sane offsets (`error` otherwise)."""
    rows = cdf.shape[0] if cdf.ndim == 2 else -1
    if rows < 1 or cdf.shape[1] < 3 or length.shape != (rows,) or offset.shape != (rows,):
        raise error(f"{name} CDF tables have the wrong shape")
    if int(length.min()) < 3 or int(length.max()) > cdf.shape[1] or int(np.abs(offset).max()) > MAX_OFFSET:
        raise error(f"{name} CDF lengths or offsets are out of range")
    inside = np.arange(cdf.shape[1])[None, :] < length[:, None]
    rises = (cdf[:, 1:] > cdf[:, :-1]) | ~inside[:, 1:]
    last = np.take_along_axis(cdf, (length - 1)[:, None], 1)
    if (cdf[:, 0] != 0).any() or not rises.all() or (last != 1 << PRECISION).any():
        raise error(f"{name} CDF tables are not valid distributions")


def quantised_frequencies(counts: np.ndarray) -> np.ndarray:
    """Integer frequencies ≥ 1 summing to 2**PRECISION from counts (integer work only):
    1 + ⌊count · (2**16 − n) / total⌋ each, the remainder to the most frequent symbol."""
    counts = counts.astype(np.int64)
    n, total = counts.size, int(counts.sum())
    if not 2 <= n < 1 << PRECISION or counts.min() < 0 or not 0 < total <= MAX_TOTAL:
        raise ValueError("counts cannot be quantised")
    freq = 1 + (counts * ((1 << PRECISION) - n)) // total
    freq[int(np.argmax(counts))] += (1 << PRECISION) - int(freq.sum())
    return freq


def cdf_of(freq: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(freq)]).astype(np.int64)
