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

Section bytes (version 2): version u8, activity bands u8, intensity bands u8, the Exp-Golomb
orders of the gain codes and of the pair codes u8 (high, low nibble), then per class (activity
band major) its gain code and its 12 pair codes, each signed integer zigzagged and Exp-Golomb coded
MSB first, zero bits to the byte. A class's filter is 1 + gain/512 on the voxel's level and each
pair's weight/128 on that pair's difference from the centre (x_a + x_b - 2 x_0): the differences
are small, so coarse steps cost little (on training scans <= 0.003 dB against the 1/4096 int16
coefficients of version 1, which are still read) and a class takes 8-11 bytes instead of 26. The
decoder's sums run in a fixed order in float64, so a filtered scan is the same bit for bit on
every machine and thread count.
"""

from __future__ import annotations

import struct
from typing import Iterator, List, Optional, Tuple

import numpy as np

from .errors import FormatError
from .packing import unzigzag, zigzag

SECTION = "filter"
VERSION = 2
#: sections written before the coded coefficients: 13 int16 per class in units of 1/4096
INT16_VERSION = 1
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
_UPPER = tuple((i, j) for i in range(TAPS) for j in range(i, TAPS))
INT16_SCALE = 4096
#: units of a class's gain code and of a pair's code (steps 1/512 and 1/128, docs/CODEC.md)
GAIN_STEPS, PAIR_STEPS = 512, 128
#: codes stay within +-MAX_CODE, so an Exp-Golomb prefix has at most MAX_PREFIX zeros
MAX_CODE = 1 << 15
MAX_ORDER = 7
MAX_PREFIX = (2 * MAX_CODE).bit_length()
MAX_ACTIVITY_BANDS, MAX_INTENSITY_BANDS = 8, 16
RIDGE = 1e-6
_INT16 = struct.Struct("<h")
#: z-slices filtered at a time: the terms of a slab are temporaries, the whole scan is not copied
SLAB = 8
#: working memory per voxel of `fit` and `apply` besides their input: class (u8), the ranked
#: quantity (f32) and its ranking (i64) while the classes are drawn, then the float64 output
BYTES_PER_VOXEL = 24
#: bytes held for a class before its filter is fitted (8.5-11.3 measured on training scans); the
#: encoder then refits the rest of the file to the section's real size
RESERVED_BYTES_PER_CLASS = 11
#: a file affords a class per CLASS_BUDGET bytes of its budget past the first BASE_BUDGET (the classes
#: 1/24 of the budget paid for at 26 bytes a class, tuned on training scans; affording 2.4 times
#: as many now that a class takes ~11 bytes gained 0.02 dB on hippocampus crops but lost SSIM and
#: PSNR on LA scans, docs/CODEC.md)
CLASS_BUDGET, BASE_BUDGET = 624, 72
#: (activity bands, intensity bands), fewest classes first: the encoder takes the last one the
#: budget affords (on training scans more classes kept paying up to 4 x 16, docs/CODEC.md)
SCHEDULE: Tuple[Tuple[int, int], ...] = ((1, 1), (2, 1), (2, 2), (2, 4), (4, 4), (4, 8), (4, 16))


def reserved_size(bands: Tuple[int, int]) -> int:
    """The bytes the encoder holds for a section of `bands` classes before fitting it."""
    return 4 + bands[0] * bands[1] * RESERVED_BYTES_PER_CLASS


def bands_for(budget: int) -> Optional[Tuple[int, int]]:
    """The classes a file of `budget` bytes affords: the most of SCHEDULE it pays for, or None (no
    filter: a 600-byte file is better spent on the wavelet stream)."""
    fitting = [bands for bands in SCHEDULE if BASE_BUDGET + CLASS_BUDGET * bands[0] * bands[1] <= budget]
    return fitting[-1] if fitting else None


def choices_for(budget: int) -> List[Optional[Tuple[int, int]]]:
    """The post-filters the encoder tries for a file of `budget` bytes, keeping the one whose file
    decodes closer: the most classes the budget affords and the next fewer (or no filter). On
    training scans neither share won everywhere: CT kept more classes (up to +0.27 dB), LA and
    prostate the fewer classes and more bytes for the layer (up to +0.07 dB) (docs/CODEC.md)."""
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
            for i, j in _UPPER:  # the gram is symmetric: each product once, the same sums
                gram[c, i, j] += np.sum(a[i] * a[j])
            moment[c] += [np.sum(ai * b) for ai in a]
            squares[c] += np.sum(b * b)
    gram = np.triu(gram) + np.transpose(np.triu(gram, 1), (0, 2, 1))
    identity = np.eye(TAPS)[0]
    codes = np.zeros((classes, TAPS), dtype=np.int64)  # zeros: the identity
    for c in range(classes):
        if np.trace(gram[c]) > 0:
            # ridge towards the identity: a flat class's nearly collinear terms give no wild weights
            ridge = RIDGE * np.trace(gram[c]) / TAPS
            fitted = _codes(np.linalg.solve(gram[c] + ridge * np.eye(TAPS), moment[c] + ridge * identity))
            error = lambda w: w @ gram[c] @ w - 2 * w @ moment[c] + squares[c]  # noqa: E731
            if error(_weights(fitted)) < error(identity):
                codes[c] = fitted
    return _coded(bands, codes)


def _codes(weights: np.ndarray) -> np.ndarray:
    """A class's codes for `weights` (centre, pairs): its gain, then each pair's weight."""
    gain = weights[0] + 2 * np.sum(weights[1:])
    codes = np.concatenate([[(gain - 1) * GAIN_STEPS], weights[1:] * PAIR_STEPS])
    return np.clip(np.round(codes), -MAX_CODE, MAX_CODE).astype(np.int64)


def _weights(codes: np.ndarray) -> np.ndarray:
    """The weights (centre, pairs; float64, exact) of one class's codes, or of each row's."""
    pairs = codes[..., 1:] / PAIR_STEPS
    centre = 1 + codes[..., 0] / GAIN_STEPS - 2 * np.sum(pairs, axis=-1)
    return np.concatenate([centre[..., None], pairs], axis=-1)


def _exp_golomb(value: int, order: int) -> str:
    """`value` (signed) zigzagged and Exp-Golomb coded of `order`, as a string of bits."""
    bits = format(zigzag(value) + (1 << order), "b")
    return "0" * (len(bits) - 1 - order) + bits


def _coded(bands: Tuple[int, int], codes: np.ndarray) -> bytes:
    """The version 2 section of `codes` (classes x TAPS), each column kind at its cheapest order."""

    def stream(column: slice, order: int) -> List[str]:
        return [_exp_golomb(int(v), order) for v in codes[:, column].ravel()]

    orders = [
        min(range(MAX_ORDER + 1), key=lambda order: sum(map(len, stream(column, order))))
        for column in (slice(0, 1), slice(1, TAPS))
    ]
    bits = "".join(_exp_golomb(int(v), orders[k > 0]) for row in codes for k, v in enumerate(row))
    bits += "0" * (-len(bits) % 8)
    payload = int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""
    return bytes([VERSION, *bands, orders[0] << 4 | orders[1]]) + payload


def parse(section: bytes) -> Tuple[Tuple[int, int], np.ndarray]:
    """The bands and the weights (classes x TAPS, float64), every field checked."""
    if len(section) < 3 or section[0] not in (VERSION, INT16_VERSION):
        raise FormatError("post-filter: unsupported or truncated section")
    bands = (section[1], section[2])
    if not (1 <= bands[0] <= MAX_ACTIVITY_BANDS and 1 <= bands[1] <= MAX_INTENSITY_BANDS):
        raise FormatError(
            f"post-filter: {bands[0]} x {bands[1]} classes (1 to {MAX_ACTIVITY_BANDS} activity bands, "
            f"1 to {MAX_INTENSITY_BANDS} intensity bands allowed)"
        )
    classes = bands[0] * bands[1]
    if section[0] == INT16_VERSION:
        expected = 3 + classes * TAPS * _INT16.size
        if len(section) != expected:
            raise FormatError(
                f"post-filter: {len(section)} bytes, {expected} expected for {bands[0]} x {bands[1]} classes"
            )
        q = np.frombuffer(section, dtype="<i2", offset=3).astype(np.float64)
        return bands, q.reshape(classes, TAPS) / INT16_SCALE
    return bands, _weights(_decoded_codes(section, classes))


def _decoded_codes(section: bytes, classes: int) -> np.ndarray:
    """A version 2 section's codes (classes x TAPS): orders, prefixes, values and padding checked."""
    longest = 1 + 2 * (MAX_PREFIX + MAX_ORDER)  # bits of one code at most
    if len(section) < 4 or len(section) > 4 + (classes * TAPS * longest + 7) // 8:
        raise FormatError("post-filter: the section's length does not fit its classes")
    orders = (section[3] >> 4, section[3] & 15)
    if max(orders) > MAX_ORDER:
        raise FormatError(f"post-filter: Exp-Golomb orders {orders} (0 to {MAX_ORDER} allowed)")
    bits = "".join(format(byte, "08b") for byte in section[4:])
    at = 0
    codes = np.zeros(classes * TAPS, dtype=np.int64)
    for i in range(codes.size):
        order = orders[i % TAPS > 0]
        prefix = 0
        while at + prefix < len(bits) and bits[at + prefix] == "0" and prefix <= MAX_PREFIX:
            prefix += 1
        if prefix > MAX_PREFIX:
            raise FormatError("post-filter: a coefficient's code is too long")
        end = at + 2 * prefix + order + 1
        if end > len(bits):
            raise FormatError("post-filter: truncated coefficients")
        value = unzigzag(int(bits[at + prefix : end], 2) - (1 << order))
        if abs(value) > MAX_CODE:
            raise FormatError(f"post-filter: a coefficient code of {value} (at most {MAX_CODE} either way)")
        codes[i] = value
        at = end
    if len(bits) - at >= 8 or "1" in bits[at:]:
        raise FormatError("post-filter: bytes or bits past the coefficients")
    return codes.reshape(classes, TAPS)


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


__all__ = ["SECTION", "fit", "fit_and_apply", "apply", "parse", "reserved_size", "bands_for", "choices_for"]
