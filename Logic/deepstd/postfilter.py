"""The post-filter: a Wiener filter the encoder fits to each scan and sends in a few hundred bytes.

A wavelet coder at 32-512x leaves ringing along edges and smooths texture; the least-squares
filter from the decoded scan to the original undoes part of it. This is the adaptive loop filter of
VVC (Karczewicz et al., IEEE TCSVT 2021) on a 3-D volume: a point-symmetric diamond of radius 2 (25
voxels, 13 coefficients), one filter per class. A voxel's class is its band of activity (rank by
local gradient) crossed with its band of intensity (rank by decoded value), each band an equal
share of the scan, so the decoder derives the classes from what it decoded and nothing is sent for
them; a class whose fitted filter does not help keeps the identity. Intensity bands matter on CT
(air, fat, soft tissue, bone blur differently): on a training CT at 512x, 4 x 8 classes gained
+0.99 dB where 8 activity classes alone gained less than half of that (docs/CODEC.md).

Section bytes: version u8, activity bands u8, intensity bands u8, then per class (activity band
major) 13 int16 coefficients (little-endian) in units of 1/4096: the centre's, then each pair of
opposite neighbours'. The decoder's sums run in a fixed order in float64, so a filtered scan is
the same bit for bit on every machine and thread count.
"""

from __future__ import annotations

import struct
from typing import Iterator, List, Optional, Tuple

import numpy as np

from .errors import FormatError

SECTION = "filter"
VERSION = 1
RADIUS = 2
#: one of each pair of opposite neighbours within the diamond |dz| + |dy| + |dx| <= RADIUS
PAIRS: Tuple[Tuple[int, int, int], ...] = tuple(
    (dz, dy, dx)
    for dz in range(-RADIUS, RADIUS + 1)
    for dy in range(-RADIUS, RADIUS + 1)
    for dx in range(-RADIUS, RADIUS + 1)
    if 0 < abs(dz) + abs(dy) + abs(dx) <= RADIUS and (dz, dy, dx) > (0, 0, 0)
)
TAPS = 1 + len(PAIRS)
SCALE = 4096
MAX_ACTIVITY_BANDS, MAX_INTENSITY_BANDS = 8, 16
RIDGE = 1e-6
_COEFFICIENT = struct.Struct("<h")
#: z-slices filtered at a time: the terms of a slab are temporaries, the whole scan is not copied
SLAB = 8
#: working memory per voxel of `fit` and `apply` besides their input: class (u8), the ranked
#: quantity (f32) and its ranking (i64) while the classes are drawn, then the float64 output
BYTES_PER_VOXEL = 24
#: a section takes at most this share of the file's budget (tuned on training scans: docs/CODEC.md)
MAX_SHARE = 1 / 24
#: (activity bands, intensity bands), fewest classes first: the encoder takes the last one the
#: budget affords (on training scans more classes kept paying up to 4 x 16, docs/CODEC.md)
SCHEDULE: Tuple[Tuple[int, int], ...] = ((1, 1), (2, 1), (2, 2), (2, 4), (4, 4), (4, 8), (4, 16))


def section_size(bands: Tuple[int, int]) -> int:
    return 3 + bands[0] * bands[1] * TAPS * _COEFFICIENT.size


def bands_for(budget: int) -> Optional[Tuple[int, int]]:
    """The classes a file of `budget` bytes affords: the most of SCHEDULE whose section takes at
    most MAX_SHARE of it, or None (no filter: a 500-byte file has no 29 bytes to spare)."""
    fitting = [bands for bands in SCHEDULE if section_size(bands) <= MAX_SHARE * budget]
    return fitting[-1] if fitting else None


def choices_for(budget: int) -> List[Optional[Tuple[int, int]]]:
    """The post-filters the encoder tries for a file of `budget` bytes, keeping the one whose file
    decodes closer: the most classes the budget affords and the next fewer (or no filter). On
    training scans neither share won everywhere: CT kept more classes (up to +0.27 dB), LA and
    prostate the fewer classes and more SPERR bytes (up to +0.07 dB) (docs/CODEC.md)."""
    most = bands_for(budget)
    if most is None:
        return [None]
    fewer = SCHEDULE.index(most) - 1
    return [most, SCHEDULE[fewer] if fewer >= 0 else None]


def _slabs(decoded: np.ndarray, halo: int) -> Iterator[Tuple[int, int, np.ndarray]]:
    """(z0, z1, float64 slices z0-halo .. z1+halo) over the scan, the z halo repeating the edge."""
    depth = decoded.shape[0]
    for z0 in range(0, depth, SLAB):
        z1 = min(depth, z0 + SLAB)
        rows = np.clip(np.arange(z0 - halo, z1 + halo), 0, depth - 1)
        yield z0, z1, decoded[rows].astype(np.float64)


def _terms(block: np.ndarray) -> List[np.ndarray]:
    """The filter's inputs on a slab (its z halo RADIUS): the centre, then each pair of opposite
    neighbours summed (edges repeat)."""
    r = RADIUS
    padded = np.pad(block, ((0, 0), (r, r), (r, r)), mode="edge")
    shape = (block.shape[0] - 2 * r, block.shape[1], block.shape[2])

    def view(dz: int, dy: int, dx: int) -> np.ndarray:
        return padded[r + dz : r + dz + shape[0], r + dy : r + dy + shape[1], r + dx : r + dx + shape[2]]

    terms = [view(0, 0, 0)]
    for dz, dy, dx in PAIRS:
        terms.append(view(dz, dy, dx) + view(-dz, -dy, -dx))
    return terms


def _ranked(values: np.ndarray, bands: int) -> np.ndarray:
    """Each voxel's band (uint8) when `values` are ranked, ties in scan order, and the ranking is
    split as `np.array_split` splits it. Computed without sorting: the value at each band's first
    rank (`np.partition`), then among the voxels equal to it, those early in scan order stay below."""
    flat = values.ravel()
    labels = np.zeros(flat.size, dtype=np.uint8)
    if bands > 1:
        starts = np.cumsum([len(part) for part in np.array_split(np.empty(flat.size, np.bool_), bands)])[:-1]
        thresholds = np.partition(flat, starts)[starts]
        labels += np.searchsorted(thresholds, flat, side="left").astype(np.uint8)  # bands whose value < this
        for start, threshold in zip(starts, thresholds):
            tied = np.flatnonzero(flat == threshold)
            below = int(np.count_nonzero(flat < threshold))
            labels[tied[start - below :]] += 1  # the tied voxels at ranks >= start
    return labels.reshape(values.shape)


def _activity(decoded: np.ndarray) -> np.ndarray:
    """Summed absolute gradient (central differences, one-sided at the ends) as float32."""
    activity = np.empty(decoded.shape, dtype=np.float32)
    depth = decoded.shape[0]
    axes = tuple(axis for axis in range(3) if decoded.shape[axis] > 1)
    for z0 in range(0, depth, SLAB):
        z1 = min(depth, z0 + SLAB)
        lo, hi = max(z0 - 1, 0), min(z1 + 1, depth)  # a slice of halo: the same differences as whole
        block = decoded[lo:hi].astype(np.float64)
        total = np.zeros(block.shape)
        for axis in axes:
            total += np.abs(np.gradient(block, axis=axis))
        activity[z0:z1] = total[z0 - lo : z1 - lo]
    return activity


def _classes(decoded: np.ndarray, bands: Tuple[int, int]) -> np.ndarray:
    """Each voxel's class: activity band x intensity bands + intensity band."""
    activity_bands, intensity_bands = bands
    labels = _ranked(_activity(decoded), activity_bands) if activity_bands > 1 else np.zeros(decoded.shape, np.uint8)
    if intensity_bands > 1:
        labels = labels * np.uint8(intensity_bands) + _ranked(decoded.astype(np.float32), intensity_bands)
    return labels


def fit(decoded: np.ndarray, original: np.ndarray, bands: Tuple[int, int]) -> bytes:
    """The section whose filter takes `decoded` closest to `original` (least squares per class)."""
    return _fit(decoded, original, bands, _classes(decoded, bands))


def fit_and_apply(decoded: np.ndarray, original: np.ndarray, bands: Tuple[int, int]) -> Tuple[bytes, np.ndarray]:
    """`fit`'s section and `decoded` filtered by it, exactly as `apply` filters it, the classes drawn
    once (the encoder measures every file it tries)."""
    labels = _classes(decoded, bands)
    section = _fit(decoded, original, bands, labels)
    return section, _filtered(decoded, labels, parse(section)[1])


def _fit(decoded: np.ndarray, original: np.ndarray, bands: Tuple[int, int], labels: np.ndarray) -> bytes:
    classes = bands[0] * bands[1]
    gram = np.zeros((classes, TAPS, TAPS))
    moment = np.zeros((classes, TAPS))
    squares = np.zeros(classes)  # |target|^2 per class: the error of any weights from the sums alone
    for z0, z1, block in _slabs(decoded, RADIUS):
        order = np.argsort(labels[z0:z1].ravel(), kind="stable")  # the slab's voxels class by class
        ends = np.cumsum(np.bincount(labels[z0:z1].ravel(), minlength=classes))
        terms = [t.ravel()[order] for t in _terms(block)]
        target = original[z0:z1].astype(np.float64).ravel()[order]
        for c in range(classes):
            part = slice(ends[c - 1] if c else 0, ends[c])
            a = [t[part] for t in terms]
            b = target[part]
            gram[c] += [[np.sum(ai * aj) for aj in a] for ai in a]
            moment[c] += [np.sum(ai * b) for ai in a]
            squares[c] += np.sum(b * b)
    identity = np.eye(TAPS)[0]
    out = bytearray([VERSION, *bands])
    for c in range(classes):
        q = np.round(identity * SCALE)
        if np.trace(gram[c]) > 0:
            # ridge towards the identity: a flat class's nearly collinear terms give no wild weights
            ridge = RIDGE * np.trace(gram[c]) / TAPS
            weights = np.linalg.solve(gram[c] + ridge * np.eye(TAPS), moment[c] + ridge * identity)
            fitted = np.clip(np.round(weights * SCALE), -32768, 32767)
            error = lambda w: w @ gram[c] @ w - 2 * w @ moment[c] + squares[c]  # noqa: E731
            if error(fitted / SCALE) < error(identity):
                q = fitted
        for value in q.astype(np.int64):
            out += _COEFFICIENT.pack(int(value))
    return bytes(out)


def parse(section: bytes) -> Tuple[Tuple[int, int], np.ndarray]:
    """The bands and the coefficients (classes x TAPS, float64), every field checked."""
    if len(section) < 3 or section[0] != VERSION:
        raise FormatError("post-filter: unsupported or truncated section")
    bands = (section[1], section[2])
    if not (1 <= bands[0] <= MAX_ACTIVITY_BANDS and 1 <= bands[1] <= MAX_INTENSITY_BANDS):
        raise FormatError(
            f"post-filter: {bands[0]} x {bands[1]} classes (1 to {MAX_ACTIVITY_BANDS} activity bands, "
            f"1 to {MAX_INTENSITY_BANDS} intensity bands allowed)"
        )
    if len(section) != section_size(bands):
        raise FormatError(
            f"post-filter: {len(section)} bytes, {section_size(bands)} expected for {bands[0]} x {bands[1]} classes"
        )
    q = np.frombuffer(section, dtype="<i2", offset=3).astype(np.float64)
    return bands, q.reshape(bands[0] * bands[1], TAPS) / SCALE


def apply(decoded: np.ndarray, section: bytes) -> np.ndarray:
    """`decoded` (z, y, x) filtered as the section says, float64."""
    bands, weights = parse(section)
    return _filtered(decoded, _classes(decoded, bands), weights)


def _filtered(decoded: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    out = np.empty(decoded.shape)
    for z0, z1, block in _slabs(decoded, RADIUS):
        classes = labels[z0:z1]
        filtered = np.zeros(classes.shape)
        for k, term in enumerate(_terms(block)):
            filtered += weights[classes, k] * term
        out[z0:z1] = filtered
    return out


__all__ = ["SECTION", "fit", "fit_and_apply", "apply", "parse", "section_size", "bands_for", "choices_for"]
