"""Motion-compensated lifting across thick slices: the refinement layer's first split along z.

Slices 3-5 mm apart are not smooth along z, so the wavelet's high-pass band along z (each odd slice
against the mean of its neighbours) holds the anatomy's shift from slice to slice; a video coder
predicts a slice from its neighbours moved (VVC was 1.8-3.4 dB ahead of this coder on the 5 mm
chest CT). Here the first z split of a thick-slice scan is a 5/3 lifting step whose prediction
takes each B x B block of the two neighbouring even slices moved by a vector (+v from the slice
before, -v from the one after: a straight path through the odd slice), and whose update moves the
high-pass slices back along the same vectors: motion-compensated temporal filtering (Secker &
Taubman, IEEE TIP 2003, "LIMAT"). Lifting is invertible whatever its predictions are, so the
decoder undoes it exactly with the same vectors. On the chest CT at 128x, 32-pixel blocks moved by
up to 3 pixels decode +0.28 dB closer than the coder's best coding without motion, and the file
+0.16 to +0.36 dB closer at 64-512x (docs/CODEC.md, docs/BENCHMARK.md).

The encoder picks the vectors by block matching on the values it codes (`estimate`); the wavelet
payload sends them (`deepstd.wavelet`). Exactness: the moves are integer index shifts and the
lifting float64 additions and multiplications in a fixed order, the same on every machine.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

import numpy as np

#: the block side (pixels) and the largest move along y or x, in the block's pixels
BLOCK, RADIUS = 32, 3
#: what a payload may hold: these block sides, moves up to MAX_RADIUS
BLOCKS, MAX_RADIUS = (8, 16, 32, 64), 8
#: a move has to lower a block's prediction error by this share over no move to be kept: a move
#: costs bits, and near-ties between moves are noise
KEEP = 0.01
_SQRT2 = float(np.sqrt(2.0))


class Field(NamedTuple):
    """The moves of one scan: `vectors[k, i, j]` = (dy, dx) of block (i, j) for odd slice 2k + 1."""

    block: int
    vectors: np.ndarray  # int64, (odd slices, blocks along y, blocks along x, 2)


def grid(shape: Tuple[int, ...], block: int) -> Tuple[int, int, int]:
    """The field's shape for a (z, y, x) scan: odd slices, blocks along y, blocks along x."""
    return shape[0] // 2, -(-shape[1] // block), -(-shape[2] // block)


def _moved(plane: np.ndarray, vectors: np.ndarray, block: int, sign: int) -> np.ndarray:
    """`plane` (y, x) with each block's pixels taken from `sign` x its vector away (edges repeated)."""
    padded = np.pad(plane, MAX_RADIUS, mode="edge")
    out = np.empty_like(plane)
    height, width = plane.shape
    for i in range(vectors.shape[0]):
        y0, y1 = i * block, min(height, (i + 1) * block)
        for j in range(vectors.shape[1]):
            x0, x1 = j * block, min(width, (j + 1) * block)
            dy, dx = (sign * int(v) + MAX_RADIUS for v in vectors[i, j])
            out[y0:y1, x0:x1] = padded[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    return out


def _predict(s: np.ndarray, d: np.ndarray, field: Field, sign: float) -> None:
    for k in range(len(d)):
        after = s[k + 1] if k + 1 < len(s) else s[k]  # whole-sample symmetric extension
        moves = field.vectors[k]
        d[k] -= sign * 0.5 * (_moved(s[k], moves, field.block, 1) + _moved(after, moves, field.block, -1))


def _update(s: np.ndarray, d: np.ndarray, field: Field, sign: float) -> None:
    for k in range(len(s)):
        before, after = max(k - 1, 0), min(k, len(d) - 1)
        back = _moved(d[before], field.vectors[before], field.block, 1)
        back += _moved(d[after], field.vectors[after], field.block, -1)
        s[k] += sign * 0.25 * back


def split(x: np.ndarray, field: Field) -> np.ndarray:
    """The forward lifting along axis 0 of a (z, y, x) block: low-pass slices, then high-pass."""
    s, d = x[0::2].copy(), x[1::2].copy()
    _predict(s, d, field, 1.0)
    _update(s, d, field, 1.0)
    return np.concatenate([s * _SQRT2, d / _SQRT2])


def merge(y: np.ndarray, field: Field) -> np.ndarray:
    """The inverse of `split`."""
    low = (len(y) + 1) // 2
    s, d = y[:low] / _SQRT2, y[low:] * _SQRT2
    _update(s, d, field, -1.0)
    _predict(s, d, field, -1.0)
    x = np.empty_like(y)
    x[0::2], x[1::2] = s, d
    return x


def estimate(values: np.ndarray, block: int = BLOCK, radius: int = RADIUS) -> Field:
    """The moves that best predict each odd slice from its neighbours (least squared error per
    block, no move unless it gains KEEP), searched over every vector up to `radius`."""
    z, height, width = values.shape
    slices, rows, columns = grid(values.shape, block)
    vectors = np.zeros((slices, rows, columns, 2), np.int64)
    pad = ((0, rows * block - height), (0, columns * block - width))
    for k in range(slices):
        before = np.pad(values[2 * k].astype(np.float64), radius, mode="edge")
        after_slice = values[2 * k + 2] if 2 * k + 2 < z else values[2 * k]
        after = np.pad(after_slice.astype(np.float64), radius, mode="edge")
        target = values[2 * k + 1].astype(np.float64)
        best, unmoved = np.full((rows, columns), np.inf), np.zeros((rows, columns))
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                forward = before[radius + dy : radius + dy + height, radius + dx : radius + dx + width]
                backward = after[radius - dy : radius - dy + height, radius - dx : radius - dx + width]
                error = np.pad((target - 0.5 * (forward + backward)) ** 2, pad)
                cost = error.reshape(rows, block, columns, block).sum(axis=(1, 3))
                if dy == dx == 0:
                    unmoved = cost
                better = cost < best
                best[better] = cost[better]
                vectors[k][better] = (dy, dx)
        vectors[k][best >= (1 - KEEP) * unmoved] = 0
    return Field(block, vectors)
