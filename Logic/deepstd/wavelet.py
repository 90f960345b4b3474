"""A context-modelled 3-D wavelet coder: what the refinement layer codes with since version 4.

SPERR (the layer's coder before) codes its CDF 9/7 coefficients bit plane by bit plane with SPECK's
set partitioning and no arithmetic coding. This coder keeps the transform and codes each
coefficient once, quantised by rate and distortion (the nearest magnitude, one less or zero,
whichever costs least in squared error + LAMBDA x bits), by rANS under a Laplace model whose scale
is predicted from what the decoder already has: the coefficient's parent one level coarser (its
3 x 3 x 3 neighbourhood), the bands of the same level decoded before it and, for the second half of
a band's checkerboard, its six decoded neighbours of the first half (the estimation-quantisation
coder of LoPresto, Ramchandran & Orchard, DCC 1997, with the checkerboard split of He et al., CVPR
2021, in 3-D). The predictors' weights are fitted per level by the encoder and sent. The second
half's signs are coded on their own: its face neighbours in the first half predict each sign (a
high-pass band alternates in sign across an edge, a low-pass one keeps it), and a binary row per
level and strength of that prediction codes whether the sign was kept (the sign contexts of
EBCOT, Taubman, IEEE TIP 2000, here from the checkerboard's first half): on training scans the
layer decodes +0.1 to +0.3 dB closer at equal bytes (docs/CODEC.md step 9). On training
scans, at equal bytes and before the post-filter: +0.61 / +0.65 dB PSNR and +0.012 / +0.023 SSIM
over SPERR on an LA scan at 64 / 128x, +0.32 to +0.83 dB on a hippocampus crop at 32-256x
(docs/CODEC.md step 9).

Exactness: the transform's lifting steps are float64 additions and multiplications, the same on
every machine; everything the model decides (which CDF row codes a coefficient) is integer
arithmetic on decoded integers and integer weights; the CDF rows are computed with `decimal`
(correctly rounded on every platform) and coded through `rans` (exact integer tables).

Payload (inside `refine` sections of versions 4 to 8): the quantiser step (float32), the axes'
delays (u8, base 6), with slice motion (`deepstd.motion`; refine sections 6 and 8) its block side
(u8) and the moves' CDF row (u8), the LL band's CDF row (u8; in sections 7 and 8 bit 7 says sign
rows follow), per detail level coarse to fine the anchor weights (3) and the other half's (4) as
zigzag varints, where sign rows follow a mask of the levels that send them and three for each,
then one rANS string: the moves (dy, dx per block, slice by slice), the LL band (differences along x), then each
level's bands, each band's checkerboard anchors, then the rest (with signs on their own: the
magnitudes, then the nonzero ones' signs kept or flipped; docs/FORMAT.md).
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal, localcontext
from functools import lru_cache
from itertools import product
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from . import motion, rans
from .container import ByteReader, varint
from .errors import FormatError
from .packing import unzigzag, zigzag

# CDF 9/7 lifting (Daubechies & Sweldens 1998), JPEG 2000's irreversible transform
_ALPHA, _BETA, _GAMMA, _DELTA = -1.586134342059924, -0.052980118572961, 0.882911075530934, 0.443506852043971
_KAPPA = 1.230174104914001
#: an axis is split while it is at least this long, at most MAX_LEVELS times; an axis whose spacing
#: is over THICK times the finest waits until the others' coarser bands are as coarse (`delays_for`)
MIN_LENGTH, MAX_LEVELS, THICK = 8, 5, 2.0
#: dead zone: |c| / step + ROUNDING is floored (0.5: plain rounding, 0.28 dB worse on a training LA
#: scan at 128x, docs/CODEC.md); a value decodes at (|q| + RECONSTRUCTION) steps, halfway between
#: the bin's start and its middle (not tuned). The dead zone only fits the predictors' weights:
#: what is coded is chosen by rate and distortion (`_chosen`)
ROUNDING, RECONSTRUCTION = 0.35, 0.075
#: the rate-distortion trade-off, squared steps per bit (tuned on training scans of four bundles:
#: 0.06 and 0.1 both paid, 0.14 lost SSIM on LA scans; docs/CODEC.md)
LAMBDA = 0.08
#: CDF rows: Laplace scales 2**((row - ROW_ZERO) / ROWS_PER_OCTAVE) steps
ROWS, ROW_ZERO, ROWS_PER_OCTAVE = 64, 24, 4
#: a row codes -MAX_SYMBOL..MAX_SYMBOL directly, the rest through the escape
MAX_SYMBOL = 96
#: sign rows (`sign_rows`) and the strengths of a sign prediction with a row of their own
#: (`_sign_context`: 1 to 3 of the axes agree; 0, no prediction, is coded in row 0, one bit)
SIGN_ROWS, SIGN_STRENGTHS = 32, 3
#: the sign rows of a level that sends none: every sign in row 0 (one bit)
_ROW_ZERO = np.zeros(SIGN_STRENGTHS + 1, np.int64)
_ROW_ZERO.flags.writeable = False
#: set in the LL row's byte where some level sends sign rows (a payload of a few hundred bytes
#: whose levels all code their signs in row 0 then spends no byte on them)
SIGN_ROWS_FOLLOW = 0x80
#: weights are sent in units of 1/WEIGHT_UNITS; |weight code| stays below MAX_WEIGHT
WEIGHT_UNITS, MAX_WEIGHT = 16, 1 << 20
#: the integer scale a row is chosen by: scale x WEIGHT_UNITS x 27 x 6
_DENOMINATOR = WEIGHT_UNITS * 162
#: codings the step search makes at most, and the power the size falls with as the step grows
#: (about: the search only starts from it)
TRIES, SIZE_POWER = 12, 1.2
#: a payload's size can jump between two steps a hair apart (a level's integer weights round the
#: other way, and the quantiser then zeroes far more or fewer coefficients): where the search's
#: bracket closes to within JUMP of a step, or the size falls across it more than JUMP_SLOPE times
#: as fast as the step grows (log against log; about 1.2 without a jump), without a payload within
#: the tolerance, it codes on with the larger side's model, for at most FROZEN_TRIES more codings
JUMP, JUMP_SLOPE, FROZEN_TRIES = 1e-3, 8.0, 6
#: the predictors' weights are fitted on at most about this many coefficients of a level
FIT_SAMPLES = 1 << 18
#: the search never goes past this step (float32 holds it; the coarsest payload of any scan)
COARSEST_STEP = 1e30
_STEP = struct.Struct("<f")


# --- the transform ------------------------------------------------------------------------------
def _lift(s: np.ndarray, d: np.ndarray, inverse: bool) -> None:
    """The four lifting steps on even samples `s` and odd samples `d` (first axis), in place, with
    whole-sample symmetric extension at both ends."""
    ns, nd = len(s), len(d)

    def around_s() -> np.ndarray:  # s[i] + s[i + 1] for each d[i], the last s repeated past the end
        out = np.empty_like(d)
        np.add(s[: ns - 1], s[1:], out=out[: ns - 1])
        if ns == nd:
            np.add(s[-1:], s[-1:], out=out[-1:])
        return out

    def around_d() -> np.ndarray:  # d[i - 1] + d[i] for each s[i], the end d repeated past either end
        out = np.empty_like(s)
        np.add(d[:1], d[:1], out=out[:1])
        np.add(d[: nd - 1], d[1:], out=out[1:nd])
        if ns > nd:
            np.add(d[-1:], d[-1:], out=out[-1:])
        return out

    steps = [(d, _ALPHA, True), (s, _BETA, False), (d, _GAMMA, True), (s, _DELTA, False)]
    for target, weight, odd in reversed(steps) if inverse else steps:
        update = around_s() if odd else around_d()
        update *= weight  # the same products and sums as before, without the copies
        if inverse:
            target -= update
        else:
            target += update


def forward_axis(x: np.ndarray, axis: int) -> np.ndarray:
    x = np.moveaxis(x, axis, 0)
    s, d = x[0::2].copy(), x[1::2].copy()
    _lift(s, d, inverse=False)
    return np.moveaxis(np.concatenate([s * _KAPPA, d / _KAPPA]), 0, axis)


def inverse_axis(y: np.ndarray, axis: int) -> np.ndarray:
    y = np.moveaxis(y, axis, 0)
    ns = (len(y) + 1) // 2
    s, d = y[:ns] / _KAPPA, y[ns:] * _KAPPA
    _lift(s, d, inverse=True)
    x = np.empty_like(y)
    x[0::2], x[1::2] = s, d
    return np.moveaxis(x, 0, axis)


def delays_for(spacing_zyx: Tuple[float, ...]) -> Tuple[int, int, int]:
    """At which level each axis might begin to split: the first where its spacing is at most THICK
    times the finest axis's spacing at that level (doubled by each split). A candidate, not a rule
    (`refine.fit` also tries no delay): on training prostate volumes (3-3.6 mm slices of 0.6 mm
    pixels: z waits 2 levels) it gained +0.67 / +0.32 dB over SPERR at 64 / 256x where splitting z
    from the start lost 0.6-0.9 dB, but on a training CT of 2 mm slices (z waits 1 level) it cost
    1.3 dB at 128x (docs/CODEC.md)."""
    finest = min(spacing_zyx)
    return tuple(  # type: ignore[return-value]
        next(level for level in range(MAX_LEVELS + 1) if level == MAX_LEVELS or s <= THICK * finest * 2**level)
        for s in spacing_zyx
    )


def delays_of(packed: int) -> Tuple[int, int, int]:
    """The delays a payload's second field holds (d_z + 6 d_y + 36 d_x)."""
    if packed >= 6**3:
        raise FormatError(f"refinement layer: axis delays {packed} (3 digits of base 6)")
    return packed % 6, packed // 6 % 6, packed // 36


class Layout:
    """The dyadic decomposition of a shape: which axes split at each level, and the bands. Axis a
    splits from level `delays[a]` on while it is at least MIN_LENGTH long; a level where none does is
    left out."""

    def __init__(
        self, shape: Tuple[int, ...], delays: Tuple[int, ...] = (0, 0, 0), moves: Optional[motion.Field] = None
    ):
        self.shape = tuple(int(n) for n in shape)
        self.delays = tuple(int(d) for d in delays)
        self.moves = moves
        self.sizes: List[Tuple[int, ...]] = [self.shape]  # the low-pass region before each level
        self.splits: List[Tuple[bool, ...]] = []
        for stage in range(MAX_LEVELS):
            split = tuple(n >= MIN_LENGTH and stage >= d for n, d in zip(self.sizes[-1], self.delays))
            if not any(split):
                continue
            self.splits.append(split)
            self.sizes.append(tuple((n + 1) // 2 if a else n for n, a in zip(self.sizes[-1], split)))
        self.levels = len(self.splits)
        #: the level of the first z split, the motion-compensated one where there are moves
        self.z_level = next((level for level, split in enumerate(self.splits) if split[0]), None)
        if moves is not None and self.z_level is None:
            raise FormatError("refinement layer: slice motion, but z is never split")
        if moves is not None and moves.vectors.shape != (*motion.grid(self.z_slices(), moves.block), 2):
            raise FormatError("refinement layer: a slice-motion field of the wrong shape")

    def z_slices(self) -> Tuple[int, ...]:
        """The shape of the low-pass region the first z split lifts (its slices are what moves)."""
        assert self.z_level is not None
        return self.sizes[self.z_level]

    def before_z_split(self, x: np.ndarray) -> np.ndarray:
        """That region of `x` transformed up to the first z split: the slices motion is estimated on."""
        assert self.z_level is not None
        return self.forward(x, self.z_level)[tuple(slice(0, n) for n in self.z_slices())]

    def bands(self) -> List[Tuple[int, Tuple[int, ...], Tuple[slice, ...]]]:
        """(level, orientation, region) of every band, the LL band first, then level by level from
        the coarsest (level = levels - 1) to the finest (0); orientation bits mark high-pass axes."""
        out = [(self.levels, (0, 0, 0), tuple(slice(0, n) for n in self.sizes[self.levels]))]
        for level in reversed(range(self.levels)):
            low, whole, split = self.sizes[level + 1], self.sizes[level], self.splits[level]
            for bits in product((0, 1), repeat=3):
                if any(bits) and all(a or not b for a, b in zip(split, bits)):
                    region = tuple(slice(lo, hi) if b else slice(0, lo) for lo, hi, b in zip(low, whole, bits))
                    out.append((level, bits, region))
        return out

    def forward(self, x: np.ndarray, levels: Optional[int] = None) -> np.ndarray:
        """The coefficients of `x` (its first `levels` levels only, where given)."""
        y = np.array(x, dtype=np.float64)
        for level, split in enumerate(self.splits[:levels]):
            region = tuple(slice(0, n) for n in self.sizes[level])
            block = y[region]
            for axis in range(3):
                if split[axis]:
                    block = motion.split(block, self.moves) if self._moved(level, axis) else forward_axis(block, axis)
            y[region] = block
        return y

    def inverse(self, y: np.ndarray) -> np.ndarray:
        x = np.array(y, dtype=np.float64)
        for level in reversed(range(self.levels)):
            region = tuple(slice(0, n) for n in self.sizes[level])
            block = x[region]
            for axis in reversed(range(3)):
                if self.splits[level][axis]:
                    block = motion.merge(block, self.moves) if self._moved(level, axis) else inverse_axis(block, axis)
            x[region] = block
        return x

    def _moved(self, level: int, axis: int) -> bool:
        """Whether this split is the motion-compensated one (the first z split, with moves)."""
        return self.moves is not None and level == self.z_level and axis == 0

    def step_scale(self, level: int, bits: Tuple[int, ...]) -> float:
        """1 / the norm of a coefficient's synthesis function in this band (a product over axes:
        along each, low-pass or high-pass after as many splits as that axis has had)."""
        norm = 1.0
        for axis in range(3):
            splits = sum(self.splits[k][axis] for k in range(min(level + 1, self.levels)))
            norm *= norm_1d(splits, bool(bits[axis]), self.moves is not None and axis == 0)
        return 1.0 / norm


@lru_cache(maxsize=None)
def norm_1d(splits: int, high: bool, moved: bool = False) -> float:
    """The L2 norm of the 1-D synthesis function after `splits` splits, the last one high-pass or
    low-pass (an impulse in the middle of a long signal, inverted); `moved`: the first split is
    the motion-compensated one, taken without moves (its norm as a plain 5/3 split)."""
    if splits == 0:
        return 1.0
    n = 1024
    y = np.zeros(n)
    low = n >> splits
    y[(low + low // 2) if high else low // 2] = 1.0
    for k in reversed(range(splits)):
        if moved and k == 0:
            y = motion.merge(y.reshape(n, 1, 1), motion.Field(1, np.zeros((n // 2, 1, 1, 2), np.int64))).ravel()
        else:
            y[: n >> k] = inverse_axis(y[: n >> k], 0)
    return float(np.sqrt(np.sum(y * y)))


# --- the model ----------------------------------------------------------------------------------
def symbols_of(row: int) -> int:
    """The largest |value| a row codes directly: 12 scales, at least 2, at most MAX_SYMBOL (a row
    of tiny scale has a small alphabet, so that its zero costs ~1e-4 bits, not 4e-3: most of a
    scan's coefficients are zeros)."""
    return int(min(MAX_SYMBOL, max(2, math.ceil(12 * 2 ** ((row - ROW_ZERO) / ROWS_PER_OCTAVE)))))


@lru_cache(maxsize=1)
def _table() -> rans.CdfTable:
    return rans.CdfTable(*cdf_rows(), "wavelet", FormatError)


@lru_cache(maxsize=1)
def _magnitude_table() -> rans.CdfTable:
    return rans.CdfTable(*magnitude_rows(), "wavelet magnitude", FormatError)


@lru_cache(maxsize=1)
def _sign_table() -> rans.CdfTable:
    return rans.CdfTable(*sign_rows(), "wavelet sign", FormatError)


def _row_counts(row: int) -> np.ndarray:
    """The row's dead-zone Laplace masses on -M..M and the escape (both tails), as integers x 2**40,
    computed with `decimal` so that every platform builds the same integers."""
    top = symbols_of(row)
    keep = 1 - Decimal(str(ROUNDING))
    with localcontext() as ctx:
        ctx.prec = 40
        b = Decimal(2) ** (Decimal(row - ROW_ZERO) / ROWS_PER_OCTAVE)
        mass = [Decimal(0)] * (2 * top + 2)
        mass[top] = 1 - (-keep / b).exp()
        step = 1 - (-1 / b).exp()
        for k in range(1, top + 1):
            mass[top + k] = mass[top - k] = (-(k - 1 + keep) / b).exp() * step / 2
        mass[-1] = (-(top + keep) / b).exp()
        return np.array([int(m * (1 << 40)) for m in mass], np.int64)


def _rows_of(counts: List[np.ndarray], offsets: List[int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [rans.cdf_of(rans.quantised_frequencies(c)) for c in counts]
    cdf = np.zeros((len(rows), max(r.size for r in rows)), np.int64)
    for r, row_cdf in enumerate(rows):
        cdf[r, : row_cdf.size] = row_cdf
    return cdf, np.array([r.size for r in rows], np.int64), np.array(offsets, np.int64)


@lru_cache(maxsize=1)
def cdf_rows() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cdf, length, offset) of the rows: dead-zone Laplace of scale 2**((row - ROW_ZERO) /
    ROWS_PER_OCTAVE) steps on -M..M (M = `symbols_of(row)`) plus the escape."""
    return _rows_of([_row_counts(row) for row in range(ROWS)], [-symbols_of(row) for row in range(ROWS)])


@lru_cache(maxsize=1)
def magnitude_rows() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same rows folded onto magnitudes 0..M (each the mass of +m and -m): where the sign is
    coded on its own (`sign_rows`)."""
    folded = []
    for row in range(ROWS):
        counts, top = _row_counts(row), symbols_of(row)
        folded.append(np.concatenate([counts[top : top + 1], counts[top + 1 : 2 * top + 1] * 2, counts[-1:]]))
    return _rows_of(folded, [0] * ROWS)


@lru_cache(maxsize=1)
def sign_rows() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary rows for "the sign is not the predicted one": probability 2**(-1 - row / 3) (row 0:
    one bit), plus the escape no valid payload uses."""
    with localcontext() as ctx:
        ctx.prec = 40
        flips = [Decimal(2) ** (Decimal(-3 - row) / 3) for row in range(SIGN_ROWS)]
        counts = [np.array([int((1 - f) * (1 << 40)), int(f * (1 << 40)), 1], np.int64) for f in flips]
    return _rows_of(counts, [0] * SIGN_ROWS)


@lru_cache(maxsize=1)
def _thresholds() -> np.ndarray:
    """Integer scale (x _DENOMINATOR) at which each row after the first begins: geometric midpoints."""
    with localcontext() as ctx:
        ctx.prec = 40
        return np.array(
            [
                int((Decimal(2) ** (Decimal(2 * row - 1 - 2 * ROW_ZERO) / (2 * ROWS_PER_OCTAVE))) * _DENOMINATOR)
                for row in range(1, ROWS)
            ],
            np.int64,
        )


def _rows(scale: np.ndarray) -> np.ndarray:
    """The CDF row of each integer scale (x _DENOMINATOR)."""
    return np.searchsorted(_thresholds(), scale, side="right").astype(np.int64)


def _fit_to(a: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """`a` cut or zero-padded to `shape` (bands of one level differ by a voxel at most)."""
    out = np.zeros(shape, a.dtype)
    common = tuple(slice(0, min(m, n)) for m, n in zip(a.shape, shape))
    out[common] = a[common]
    return out


def _box_sum(a: np.ndarray) -> np.ndarray:
    """Sum over each voxel's 3 x 3 x 3 neighbourhood, edges repeated (int64, exact)."""
    padded = np.pad(a, 1, mode="edge")
    out = np.zeros(a.shape, np.int64)
    for dz, dy, dx in product(range(3), repeat=3):
        out += padded[dz : dz + a.shape[0], dy : dy + a.shape[1], dx : dx + a.shape[2]]
    return out


def _face_sum(a: np.ndarray) -> np.ndarray:
    """Sum of each voxel's six face neighbours, zero outside (int64)."""
    padded = np.pad(a, 1)
    z, y, x = a.shape
    return (
        padded[:-2, 1:-1, 1:-1][:z, :y, :x]
        + padded[2:, 1:-1, 1:-1]
        + padded[1:-1, :-2, 1:-1]
        + padded[1:-1, 2:, 1:-1]
        + padded[1:-1, 1:-1, :-2]
        + padded[1:-1, 1:-1, 2:]
    )


class _Context:
    """The decoder-side features of each band, built band by band as the magnitudes are known."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.magnitude: Dict[Tuple[int, Tuple[int, ...]], np.ndarray] = {}
        self.siblings: Dict[int, np.ndarray] = {}

    def features(self, level: int, bits: Tuple[int, ...], shape: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
        """(parent 3x3x3 sum, siblings' max) as int64 arrays of the band's shape."""
        parent = self.magnitude.get((level + 1, bits))
        if parent is None:
            near = np.zeros(shape, np.int64)
        else:
            halve = self.layout.splits[level + 1]
            index = [
                np.minimum(np.arange(n) // 2 if h else np.arange(n), m - 1)
                for n, m, h in zip(shape, parent.shape, halve)
            ]
            near = _box_sum(parent)[np.ix_(*index)]
        return near, self.sibling(level, shape)

    def sibling(self, level: int, shape: Tuple[int, ...]) -> np.ndarray:
        """The max of the level's bands added so far, at each voxel of a band of `shape`."""
        sibling = self.siblings.get(level)
        return _fit_to(sibling, shape) if sibling is not None else np.zeros(shape, np.int64)

    def restart(self, level: int) -> None:
        """Forget the level's bands as siblings (the encoder adds them again as it codes them)."""
        self.siblings.pop(level, None)

    def add(self, level: int, bits: Tuple[int, ...], magnitude: np.ndarray) -> None:
        self.magnitude[(level, bits)] = magnitude
        sibling = self.siblings.get(level)
        self.siblings[level] = (
            magnitude if sibling is None else np.maximum(_fit_to(sibling, magnitude.shape), magnitude)
        )


@lru_cache(maxsize=64)
def _checkerboard(shape: Tuple[int, ...]) -> np.ndarray:
    """The band's first half (coded first): voxels whose index sum is even (read-only: cached, as
    every coding of a scan asks for the same shapes)."""
    z, y, x = np.indices(shape, sparse=True)
    board = (z + y + x) % 2 == 0
    board.flags.writeable = False
    return board


@lru_cache(maxsize=16)
def _halves_of(shape: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
    """The flat indices of the band's first half and of its second, each in scan order (the order
    of `q[_checkerboard]` and `q[~_checkerboard]`): gathering through them is 4x faster than
    through the boolean board, and a coding gathers a band's halves a dozen times (read-only)."""
    board = _checkerboard(shape).ravel()
    dtype = np.int32 if board.size < 1 << 31 else np.int64
    halves = np.flatnonzero(board).astype(dtype), np.flatnonzero(~board).astype(dtype)
    for half in halves:
        half.flags.writeable = False
    return halves


def _sign_context(q: np.ndarray, bits: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
    """The predicted sign (+-1) and its strength (0 to SIGN_STRENGTHS) of each voxel of a band's
    second half (in `q[~_checkerboard]` order), from the signed codes of its first half in `q`:
    along each axis the sign of the two neighbours' sum votes, for the voxel's sign where the band
    is low-pass along that axis and against it where it is high-pass (a high-pass band alternates
    in sign across an edge); the strength is the margin of the vote."""
    # a second-half voxel's six face neighbours are all of the first half, so q's second half,
    # zero or not, never enters a vote that is read
    padded = np.pad(q.astype(np.int64, copy=False), 1)
    vote = np.zeros(q.shape, np.int8)
    for axis in range(3):
        before, after = [slice(1, n + 1) for n in q.shape], [slice(1, n + 1) for n in q.shape]
        before[axis], after[axis] = slice(0, q.shape[axis]), slice(2, q.shape[axis] + 2)
        side = np.sign(padded[tuple(before)] + padded[tuple(after)]).astype(np.int8)  # zero outside
        if bits[axis]:
            vote -= side
        else:
            vote += side
    vote = vote.ravel()[_halves_of(q.shape)[1]].astype(np.int64)
    return np.where(vote < 0, -1, 1), np.abs(vote)


def _flips(rest: np.ndarray, predicted: Tuple[np.ndarray, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """The strengths of the nonzero codes of a band's second half (`rest`, in `_halves_of` order)
    and whether each one's sign is flipped against `predicted` (`_sign_context`'s)."""
    prediction, strength = predicted
    some = rest != 0
    return strength[some], (np.sign(rest[some]) != prediction[some]).astype(np.int64)


@lru_cache(maxsize=1)
def _sign_bits() -> np.ndarray:
    """Bits each sign row spends on a kept (column 0) and a flipped (column 1) sign."""
    cdf, _, _ = sign_rows()
    return rans.PRECISION - np.log2(np.diff(cdf[:, :3], axis=1).astype(np.float64))


def _level_sign_rows(strength: np.ndarray, flips: np.ndarray) -> Optional[np.ndarray]:
    """The sign row for each strength (row 0 for no prediction) that codes a level's flips in the
    fewest bits, or None where the rows save less than the bytes that send them."""
    bits = _sign_bits()
    rows = np.zeros(SIGN_STRENGTHS + 1, np.int64)
    saved = 0.0
    for k in range(1, SIGN_STRENGTHS + 1):
        flipped = int(flips[strength == k].sum())
        cost = (int(np.count_nonzero(strength == k)) - flipped) * bits[:, 0] + flipped * bits[:, 1]
        rows[k] = int(np.argmin(cost))
        saved += float(cost[0] - cost[rows[k]])
    return rows if saved > 8 * SIGN_STRENGTHS else None


def _scales(weights: np.ndarray, near: np.ndarray, sibling: np.ndarray, faces: Optional[np.ndarray]) -> np.ndarray:
    """Integer scales (x _DENOMINATOR): w0 + w1 near/27 + w2 sibling + w3 faces/6, in units."""
    scale = weights[0] * 162 + weights[1] * 6 * near + weights[2] * 162 * sibling
    if faces is not None:
        scale = scale + weights[3] * 27 * faces
    return scale


# --- the coder ----------------------------------------------------------------------------------
def _quantised(coefficients: np.ndarray, step: float) -> np.ndarray:
    return (np.sign(coefficients) * np.floor(np.abs(coefficients) / step + ROUNDING)).astype(np.int64)


def _dequantised(q: np.ndarray, step: float) -> np.ndarray:
    return np.sign(q) * (np.abs(q) + RECONSTRUCTION) * step


@lru_cache(maxsize=2)
def _bits(folded: bool = False) -> np.ndarray:
    """Bits each row (of the magnitude rows where `folded`) spends on |value| = 0..MAX_SYMBOL + 1
    (inf past the row's alphabet, so that the last column is inf in every row)."""
    cdf, length, offset = magnitude_rows() if folded else cdf_rows()
    out = np.full((ROWS, MAX_SYMBOL + 2), np.inf)
    for row in range(ROWS):
        top = symbols_of(row)
        frequencies = np.diff(cdf[row, : length[row]])[-int(offset[row]) :][: top + 1]
        out[row, : top + 1] = rans.PRECISION - np.log2(frequencies)
    return out


def _chosen(target: np.ndarray, rows: np.ndarray, sign_bits: Optional[np.ndarray] = None) -> np.ndarray:
    """The magnitude to code for each |coefficient| / band step in `target`, coded in `rows`: of the
    nearest, one less and zero, the least squared error (in steps) + LAMBDA x bits (rate-distortion
    optimised quantisation, as HEVC's RDOQ; a choice's effect on its neighbours' rows is ignored).
    `sign_bits`: where the signs are coded on their own, what each one's sign costs (a magnitude
    then costs its row's folded bits). A magnitude past its row's alphabet keeps the dead zone's code."""
    nearest = np.floor(target + 0.5).astype(np.int64)
    chosen = np.zeros_like(nearest)
    some = np.flatnonzero(nearest)  # most are zeros, and zero is then the only choice
    target, rows, nearest = target.ravel()[some], rows.ravel()[some], nearest.ravel()[some]
    candidates = np.stack([nearest, nearest - 1, np.zeros_like(nearest)])
    bits = _bits(sign_bits is not None)[rows, np.minimum(candidates, MAX_SYMBOL + 1)]
    if sign_bits is not None:
        bits = bits + np.where(candidates > 0, sign_bits.ravel()[some], 0.0)
    error = target - np.where(candidates > 0, candidates + RECONSTRUCTION, 0.0)
    best = np.take_along_axis(candidates, np.argmin(error * error + LAMBDA * bits, axis=0)[None], 0)[0]
    direct = np.isfinite(bits[0])  # the nearest lies within its row's alphabet
    chosen.ravel()[some] = np.where(direct, best, np.floor(target + ROUNDING).astype(np.int64))
    return chosen


def _fitted_weights(target: np.ndarray, features: List[np.ndarray]) -> np.ndarray:
    """Least-squares weights (in units) predicting |coefficient| / band step from the features
    (the normal equations, lightly regularised: a feature that is zero throughout gets weight 0)."""
    columns = [np.ones(target.size)] + [f.astype(np.float64) for f in features]
    gram = np.array([[float(np.dot(a, b)) for b in columns] for a in columns])
    moment = np.array([float(np.dot(a, target)) for a in columns])
    ridge = 1e-9 * (np.trace(gram) + 1.0)
    solution = np.linalg.solve(gram + ridge * np.eye(len(columns)), moment)
    return np.clip(np.round(solution * WEIGHT_UNITS), -MAX_WEIGHT + 1, MAX_WEIGHT - 1).astype(np.int64)


def _ll_row(differences: np.ndarray) -> int:
    """The row whose Laplace fits the LL band's differences: the scale nearest their mean size."""
    mean = float(np.mean(np.abs(differences))) if differences.size else 0.0
    return int(_rows(np.array([int(mean * _DENOMINATOR)]))[0])


def compress(
    values: np.ndarray, step: float, delays: Tuple[int, int, int] = (0, 0, 0), moves: Optional[motion.Field] = None
) -> bytes:
    """`values` (z, y, x) coded at quantiser `step` (in the values' units), each axis split from
    its level in `delays` on, the first z split moved by `moves` -> section payload."""
    layout = Layout(values.shape, delays, moves)
    return coded(layout, layout.forward(values), step)[0]


def _levels(layout: Layout) -> List[Tuple[int, List[Tuple[Tuple[int, ...], Tuple[slice, ...]]]]]:
    """The bands grouped by level, in decoding order (the LL band alone first)."""
    grouped: List[Tuple[int, List[Tuple[Tuple[int, ...], Tuple[slice, ...]]]]] = []
    for level, bits, region in layout.bands():
        if not grouped or grouped[-1][0] != level:
            grouped.append((level, []))
        grouped[-1][1].append((bits, region))
    return grouped


class _Band(NamedTuple):
    """One band as the encoder sees it: the features of its dead-zone codes (the weights are
    fitted on them) and the magnitudes they model."""

    negative: np.ndarray
    near: np.ndarray
    sibling: np.ndarray
    anchor: np.ndarray
    faces: np.ndarray
    target: np.ndarray  # |coefficient| / band step


def _part_rows(weights: np.ndarray, near: np.ndarray, sibling: np.ndarray, faces: Optional[np.ndarray]) -> np.ndarray:
    return _rows(_scales(weights, near, sibling, faces))


def _halves(
    weights: Sequence[np.ndarray],
    near: np.ndarray,
    sibling: np.ndarray,
    code: Callable[[np.ndarray, np.ndarray, Optional[np.ndarray]], np.ndarray],
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A band's signed codes, half by half as the decoder reads them: the anchors' rows from the
    parent and siblings, then the rest's with the anchors' face sums. `code(half, rows, first)`
    (`half`: the half's flat indices, `_halves_of`) gives its codes (the encoder chooses them, the
    decoder pops them; `first` is None for the anchors and the band's codes so far, the anchors',
    for the rest: their signs predict the rest's), so both derive the rows the same way. Returns
    (codes, anchors' rows, the rest's rows)."""
    anchor, rest = _halves_of(near.shape)
    q = np.zeros(near.shape, np.int64)
    flat = q.reshape(-1)  # q's own buffer: the halves are written through it
    anchor_rows = _part_rows(weights[0], near.reshape(-1)[anchor], sibling.reshape(-1)[anchor], None)
    flat[anchor] = code(anchor, anchor_rows, None)
    faces = _face_sum(np.abs(q))  # the second half is still zero
    rest_rows = _part_rows(weights[1], near.reshape(-1)[rest], sibling.reshape(-1)[rest], faces.reshape(-1)[rest])
    flat[rest] = code(rest, rest_rows, q)
    return q, anchor_rows, rest_rows


def _level_weights(bands: List[_Band]) -> Tuple[np.ndarray, np.ndarray]:
    """The anchors' weights (constant, parent, siblings) and the others' (and faces), fitted on
    all the level's bands together (per band they cost more bytes than they save on small files),
    from every coefficient or, on a large level, every k-th (k odd, so that both halves of the
    checkerboard are sampled alike): a few numbers need no more than FIT_SAMPLES, and the fit was
    a fifth of an LA scan's encode."""
    stride = max(1, sum(b.target.size for b in bands) // FIT_SAMPLES) | 1

    def sample(a: np.ndarray) -> np.ndarray:
        return a.reshape(-1)[::stride]

    def pooled(anchors: bool, with_faces: bool) -> np.ndarray:
        picks = [sample(b.anchor) == anchors for b in bands]
        columns = [("near", 27), ("sibling", 1)] + ([("faces", 6)] if with_faces else [])
        features = [
            np.concatenate([sample(getattr(b, name))[p] for b, p in zip(bands, picks)]) / scale
            for name, scale in columns
        ]
        return _fitted_weights(np.concatenate([sample(b.target)[p] for b, p in zip(bands, picks)]), features)

    return pooled(True, False), pooled(False, True)


class _LevelModel(NamedTuple):
    """What a level's coding assumes besides the step: the predictors' weights (sent) and the sign
    rows the quantiser prices signs with (`_chosen`)."""

    weights: Tuple[np.ndarray, np.ndarray]
    guessed: np.ndarray


def coded(
    layout: Layout, coefficients: np.ndarray, step: float, model: Optional[Dict[int, _LevelModel]] = None
) -> Tuple[bytes, Dict[int, _LevelModel]]:
    """The payload of the coefficients at quantiser `step`, and the model it was coded with: each
    level's own (fitted on its dead-zone codes) or, where given, `model`'s."""
    step = float(np.float32(step))
    used: Dict[int, _LevelModel] = {}
    dz, dy, dx = layout.delays
    header = bytearray(_STEP.pack(step)) + bytes([dz + 6 * dy + 36 * dx])
    signed, magnitudes, signs = _table(), _magnitude_table(), _sign_table()
    groups: List[Tuple[rans.CdfTable, np.ndarray, np.ndarray]] = []  # (table, symbols, rows) in decoding order
    if layout.moves is not None:
        vectors = layout.moves.vectors.ravel()
        header += bytes([layout.moves.block, _ll_row(vectors)])
        groups.append((signed, vectors, np.full(vectors.size, header[-1], np.int64)))
    sign_levels, sign_header = 0, bytearray()
    context = _Context(layout)
    for level, regions in _levels(layout):
        if level == layout.levels:
            ((bits, region),) = regions
            q = _quantised(coefficients[region], step * layout.step_scale(level, bits))
            differences = np.diff(q, axis=2, prepend=0)
            row = _ll_row(differences)
            ll_at = len(header)
            header.append(row)
            groups.append((signed, differences.ravel(), np.full(differences.size, row, np.int64)))
            continue
        bands, guesses = [], []
        for bits, region in regions:
            band_step = step * layout.step_scale(level, bits)
            q = _quantised(coefficients[region], band_step)
            near, sibling = context.features(level, bits, q.shape)
            anchor = _checkerboard(q.shape)
            faces = _face_sum(np.where(anchor, np.abs(q), 0))
            target = np.abs(coefficients[region]) / band_step
            bands.append(_Band(coefficients[region] < 0, near, sibling, anchor, faces, target))
            context.add(level, bits, np.abs(q))
            if model is None:
                guesses.append(_flips(q.reshape(-1)[_halves_of(q.shape)[1]], _sign_context(q, bits)))
        if model is None:
            rows = _level_sign_rows(*map(np.concatenate, zip(*guesses)))  # the rows the signs' choice assumes
            used[level] = _LevelModel(_level_weights(bands), _ROW_ZERO if rows is None else rows)
        else:
            used[level] = model[level]
        weights, guessed = used[level]
        for value in np.concatenate(weights):
            header += varint(zigzag(int(value)))
        context.restart(level)
        flipped: List[Tuple[int, np.ndarray, np.ndarray]] = []  # (group, strengths, flips) of each band
        for (bits, _), b in zip(regions, bands):
            predicted: List[Tuple[np.ndarray, np.ndarray]] = []

            def chosen(
                half: np.ndarray,
                rows: np.ndarray,
                first: Optional[np.ndarray],
                b: _Band = b,
                bits: Tuple[int, ...] = bits,
            ) -> np.ndarray:
                sign_bits = None
                negative = b.negative.reshape(-1)[half]
                if first is not None:
                    predicted.append(_sign_context(first, bits))
                    against = negative != (predicted[0][0] < 0)
                    sign_bits = _sign_bits()[guessed[predicted[0][1]], against.astype(np.int64)]
                magnitude = _chosen(b.target.reshape(-1)[half], rows, sign_bits)
                return np.where(negative, -magnitude, magnitude)

            q, anchor_rows, rest_rows = _halves(weights, b.near, context.sibling(level, b.target.shape), chosen)
            anchors, others = _halves_of(q.shape)
            flat = q.reshape(-1)
            rest = flat[others]  # gathered once: its magnitudes and its signs are coded
            groups += [(signed, flat[anchors], anchor_rows), (magnitudes, np.abs(rest), rest_rows)]
            flipped.append((len(groups), *_flips(rest, predicted[0])))
            groups.append((signs, flipped[-1][2], flipped[-1][1]))  # rows set below, once the level's are known
            context.add(level, bits, np.abs(q))
        level_rows = _level_sign_rows(np.concatenate([f[1] for f in flipped]), np.concatenate([f[2] for f in flipped]))
        if level_rows is not None:
            sign_levels |= 1 << level
            sign_header += bytes(int(row) for row in level_rows[1:])
        for index, strength, flips in flipped:
            groups[index] = (signs, flips, np.zeros_like(strength) if level_rows is None else level_rows[strength])
    if sign_levels:
        header[ll_at] |= SIGN_ROWS_FOLLOW
        header += bytes([sign_levels]) + sign_header
    coder = rans.writer()
    for table, symbols, rows in reversed(groups):
        table.push(coder, symbols, rows)
    return bytes(header) + rans.written(coder), used


class _Opened(NamedTuple):
    """A payload read up to its coefficients: what decoding them needs, the moves already popped."""

    step: float
    layout: Layout
    ll_row: int
    weights: Dict[int, List[np.ndarray]]
    #: per detail level the sign row of each strength; None: every sign in the signed rows
    signs: Optional[Dict[int, np.ndarray]]
    coder: Any


def _opened(payload: bytes, shape: Tuple[int, int, int], moved: bool, signed: bool) -> _Opened:
    """Every field of a payload before its coefficients, checked, and its string with the moves
    popped (`moved`: the payload has the slice-motion field; `signed`: its second halves' signs are
    coded on their own, with the sign rows)."""
    reader = ByteReader(payload)
    (step,) = _STEP.unpack(reader.take(_STEP.size, "wavelet step"))
    if not (math.isfinite(step) and step > 0):
        raise FormatError(f"refinement layer: a quantiser step of {step}")
    delays = delays_of(reader.take(1, "wavelet axes")[0])
    block = reader.take(1, "wavelet motion block")[0] if moved else 0
    if moved and block not in motion.BLOCKS:
        raise FormatError(f"refinement layer: slice-motion blocks of {block} pixels (one of {motion.BLOCKS})")
    vector_row = reader.take(1, "wavelet motion row")[0] if block else 0
    ll_byte = reader.take(1, "wavelet LL row")[0]
    sign_rows_follow = signed and bool(ll_byte & SIGN_ROWS_FOLLOW)
    ll_row = ll_byte & ~SIGN_ROWS_FOLLOW if signed else ll_byte
    for row in (vector_row, ll_row):
        if row >= ROWS:
            raise FormatError(f"refinement layer: CDF row {row} (0 to {ROWS - 1})")
    layout = Layout(shape, delays)
    weights = {}
    for level in reversed(range(layout.levels)):
        parts = []
        for count in (3, 4):
            codes = [unzigzag(reader.varint("wavelet weight", 2 * MAX_WEIGHT)) for _ in range(count)]
            parts.append(np.array(codes, np.int64))
        weights[level] = parts
    signs = None
    if signed:
        signs = (
            _signs_read(reader, layout.levels) if sign_rows_follow else dict.fromkeys(range(layout.levels), _ROW_ZERO)
        )
    coder = rans.reader(reader.take(reader.remaining(), "wavelet string"))
    if block:
        if layout.z_level is None:
            raise FormatError("refinement layer: slice motion, but z is never split")
        field = motion.grid(layout.z_slices(), block)
        vectors = _table().pop(coder, np.full(int(np.prod(field)) * 2, vector_row, np.int64))
        if np.abs(vectors).max(initial=0) > motion.MAX_RADIUS:
            raise FormatError(f"refinement layer: a slice move past {motion.MAX_RADIUS} pixels")
        layout = Layout(shape, delays, motion.Field(block, vectors.reshape(*field, 2)))
    return _Opened(step, layout, ll_row, weights, signs, coder)


def _signs_read(reader: ByteReader, levels: int) -> Dict[int, np.ndarray]:
    """The sign rows of each detail level: a mask of the levels that send them, then theirs."""
    mask = reader.take(1, "wavelet sign levels")[0]
    if mask >> levels or not mask:
        raise FormatError(f"refinement layer: sign rows for levels {mask:#04x} of {levels}")
    signs = {}
    for level in reversed(range(levels)):
        rows = np.zeros(SIGN_STRENGTHS + 1, np.int64)
        if mask >> level & 1:
            rows[1:] = list(reader.take(SIGN_STRENGTHS, "wavelet sign rows"))
            if rows.max() >= SIGN_ROWS:
                raise FormatError(f"refinement layer: sign row {rows.max()} (0 to {SIGN_ROWS - 1})")
        signs[level] = rows
    return signs


def _popped_signed(
    coder: Any, rows: np.ndarray, first: np.ndarray, bits: Tuple[int, ...], signs: np.ndarray
) -> np.ndarray:
    """A band's second half where its signs are coded on their own: the magnitudes, then the signs
    of the nonzero ones as kept or flipped against the prediction from the first half."""
    magnitude = _magnitude_table().pop(coder, rows)
    if magnitude.min(initial=0) < 0:
        raise FormatError("refinement layer: a negative magnitude (corrupt data)")
    prediction, strength = _sign_context(first, bits)
    some = magnitude != 0
    flips = _sign_table().pop(coder, signs[strength[some]])
    if ((flips != 0) & (flips != 1)).any():
        raise FormatError("refinement layer: a sign neither kept nor flipped (corrupt data)")
    magnitude[some] *= prediction[some] * (1 - 2 * flips)
    return magnitude


def moves_of(payload: bytes, shape: Tuple[int, int, int], signed: bool = True) -> motion.Field:
    """The slice moves a payload coded with motion holds (read back, not estimated again)."""
    moves = _opened(payload, shape, moved=True, signed=signed).layout.moves
    assert moves is not None  # a moved payload's layout always has them
    return moves


def decompress(payload: bytes, shape: Tuple[int, int, int], moved: bool = False, signed: bool = True) -> np.ndarray:
    """The values (z, y, x, float64) a payload of `compress` decodes to; FormatError on bad bytes.
    `moved`: the payload has the slice-motion field (refine sections 6 and 8); `signed`: its signs
    are coded on their own (sections 7 and 8; those before code them in the signed rows)."""
    step, layout, ll_row, weights, signs, coder = _opened(payload, shape, moved, signed)
    coefficients = np.zeros(layout.shape)
    context = _Context(layout)
    table = _table()
    for level, bits, region in layout.bands():
        band_shape = tuple(s.stop - s.start for s in region)
        band_step = step * layout.step_scale(level, bits)
        if level == layout.levels:
            differences = table.pop(coder, np.full(int(np.prod(band_shape)), ll_row, np.int64))
            q = np.cumsum(differences.reshape(band_shape), axis=2)
        else:
            near, sibling = context.features(level, bits, band_shape)

            def popped(half: np.ndarray, rows: np.ndarray, first: Optional[np.ndarray], level: int = level,
                       bits: Tuple[int, ...] = bits) -> np.ndarray:  # fmt: skip
                if first is None or signs is None:
                    return table.pop(coder, rows)
                return _popped_signed(coder, rows, first, bits, signs[level])

            q = _halves(weights[level], near, sibling, popped)[0]
            context.add(level, bits, np.abs(q))
        coefficients[region] = _dequantised(q, band_step)
    rans.finish(coder)
    return layout.inverse(coefficients)


def model_of(payload: bytes, layout: Layout) -> Optional[Dict[int, _LevelModel]]:
    """The model a payload of this coder was coded with, read back: its levels' weights, and its
    sign rows for the rows its quantiser assumed (None where it splits the axes otherwise)."""
    opened = _opened(payload, layout.shape, layout.moves is not None, signed=True)
    if opened.layout.delays != layout.delays or opened.signs is None:
        return None
    return {level: _LevelModel((parts[0], parts[1]), opened.signs[level]) for level, parts in opened.weights.items()}


def _jumps(fits: Tuple[float, int], too_big: Tuple[float, int]) -> bool:
    """Whether the size jumps inside the search's bracket: (step, size) of the smallest step that
    fits and of the largest that does not."""
    steps = math.log(fits[0] / too_big[0])
    return steps < JUMP or math.log(too_big[1] / fits[1]) > JUMP_SLOPE * steps


def first_step(values: np.ndarray) -> float:
    """Where a step search without a nearby payload starts: an eighth of the values' spread."""
    return (float(np.std(values)) or 1.0) / 8


def step_of(payload: bytes) -> Optional[float]:
    """The quantiser step a payload was coded at (None where it is too short to hold one)."""
    return _STEP.unpack_from(payload)[0] if len(payload) > _STEP.size else None


def fit(
    values: np.ndarray,
    spare: int,
    tolerance: float,
    on_try: Callable[[int], None],
    near: Optional[bytes] = None,
    delays: Tuple[int, int, int] = (0, 0, 0),
    moves: Optional[motion.Field] = None,
) -> Optional[bytes]:
    """The largest payload of at most `spare` bytes (`search`), from the step and with the model of
    `near` (a payload of the same values at another size) where there is one; each axis split from
    its level in `delays` on, the first z split moved by `moves`."""
    layout = Layout(values.shape, delays, moves)
    coefficients = layout.forward(values)
    near_step = None if near is None else step_of(near)
    return search(
        lambda step, model: coded(layout, coefficients, step, model),
        first_step(values),
        spare,
        tolerance,
        on_try,
        None if near is None or near_step is None else (near_step, len(near), model_of(near, layout)),
    )


def search(
    code: Callable[[float, Any], Tuple[bytes, Any]],
    start: float,
    spare: int,
    tolerance: float,
    on_try: Callable[[int], None],
    near: Optional[Tuple[float, int, Any]] = None,
) -> Optional[bytes]:
    """The largest payload `code(step, model)` gives of at most `spare` bytes (within `tolerance` or
    a word of the rANS string under it, as near as TRIES codings get): the step is searched
    log-linearly between the closest tries either side (the size falls about as a power of the
    step), from `start` or from near's (step, size) with its model (None: each coding fits its own;
    `code` returns the model it used), and past a jump in size with one model (`_jumps`)."""
    aim = (1 - tolerance / 2) * spare
    best: Optional[bytes] = None  # the largest payload that fits
    fits: Optional[Tuple[float, int]] = None  # the smallest step that fits, and its size
    too_big: Optional[Tuple[float, int]] = None  # the largest step that does not fit, and its size
    too_big_model: Any = None
    model: Any = None  # None: each coding fits its own
    tried: List[Tuple[float, int]] = []
    if near is not None:
        near_step, near_size, model = near  # its size then falls smoothly from near's
        tried.append((near_step, near_size))
        step = near_step * (aim / near_size) ** (-1 / SIZE_POWER)
    else:
        step = start
    codings, attempt = TRIES, 0
    while attempt < codings:
        on_try(min(attempt, TRIES - 1))
        attempt += 1
        payload, used = code(step, model)
        tried.append((step, len(payload)))
        if len(payload) <= spare:
            best = payload if best is None or len(payload) > len(best) else best
            if fits is None or step < fits[0]:
                fits = (step, len(payload))
            if len(payload) >= min((1 - tolerance) * spare, spare - 3):  # the string grows by 4-byte words
                break
        elif too_big is None or step > too_big[0]:
            too_big, too_big_model = (step, len(payload)), used
        if model is None and fits and too_big and _jumps(fits, too_big):
            model, fits, codings, tried = too_big_model, None, attempt + FROZEN_TRIES, [too_big]
        if fits and too_big and too_big[1] > fits[1]:
            share = math.log(aim / fits[1]) / math.log(too_big[1] / fits[1])
            step = math.exp(math.log(fits[0]) + share * math.log(too_big[0] / fits[0]))
        else:  # along the slope of the last two tries (log size against log step), or the usual one
            (step_a, size_a), (step_b, size_b) = tried[-2] if len(tried) > 1 else (0.0, 0), tried[-1]
            slope = SIZE_POWER
            if len(tried) > 1 and step_a != step_b and size_a > 0 and size_b > 0:
                slope = min(5.0, max(0.05, -math.log(size_b / size_a) / math.log(step_b / step_a)))
            step = step_b * (aim / max(size_b, 1)) ** (-1 / slope)
        step = min(step, COARSEST_STEP)
    return best


__all__ = ["compress", "decompress", "fit", "search", "coded", "model_of", "step_of", "moves_of", "Layout"]
