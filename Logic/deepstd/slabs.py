"""Slices that change little from one to the next: the transform along z all the way down first,
then each z band coded in-plane on its own (refine section 9).

The 3-D wavelet splits every axis at each level and only the low-pass corner goes on, so detail
that a scan keeps from slice to slice — a vessel's wall, a reconstruction kernel's texture — is
paired off along z once and then coded again in every second slice of its in-plane band. A video
coder predicts such slices from ones coded before; wavelet video coders take the transform along
time to its end first and code each temporal band in 2-D ("t+2D": Choi & Woods, IEEE TIP 1999;
Secker & Taubman, IEEE TIP 2003). Here the 9/7 lifting splits z until one slice is left, and each
z band — the last low-pass slice, then the high-pass bands from the coarsest to the finest — is a
payload of the layer's coder with z never split, coded at the common step over the band's synthesis
norm (so a step costs the same squared error in every band, as the 3-D coder's band steps do). On
a training CT of 2 mm slices whose fine detail holds from slice to slice (adjacent slices' in-plane
high-pass correlated 0.94), the layer alone decodes +1.0 / +2.2 dB closer at 64 / 512x than the
3-D coder; on a 1.5 mm CT (0.52) and a prostate volume of 3 mm slices (0.34) it is 0.1-0.8 dB farther, so it
is a candidate the encoder tries where z is thick and the slices repeat their detail (`coherence`)
and keeps only where it decodes closer (`refine.fit`, docs/CODEC.md). Decoding a band at a time
peaks at ~38 bytes a voxel (the 3-D coder's payload: ~53).

Payload: the z bands' wavelet payloads in that order, each but the last after its length (varint).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from . import wavelet
from .container import ByteReader, varint
from .errors import FormatError

#: the in-plane coder's axis delays: z never splits inside a band
IN_PLANE = (wavelet.MAX_LEVELS, 0, 0)
#: the z bands are worth a coding where adjacent slices' in-plane detail correlates at least this
#: much (`coherence`; training scans of thick slices: 0.94 where they decoded 1.0-2.2 dB closer,
#: 0.22-0.34 where they were 0.1-0.8 dB farther, docs/CODEC.md)
COHERENT = 0.6


def coherence(values: np.ndarray) -> float:
    """How much of a slice's in-plane detail (the slice minus its [1 2 1] / 4 blur along y and x)
    the next slice repeats: their correlation over every pair of adjacent slices (0 for one slice
    or no detail). A slice at a time in float64, summed in a fixed order, so that the same scan
    gives the same figure on any thread count and the figure needs no copy of the scan."""
    sums = np.zeros(3)  # detail x next detail, detail squared, next detail squared
    before = None
    for plane in values:
        detail = _detail(plane)
        if before is not None:
            sums += (float(np.sum(before * detail)), float(np.sum(before * before)), float(np.sum(detail * detail)))
        before = detail
    energy = float(sums[1] * sums[2])
    return float(sums[0]) / energy**0.5 if energy > 0 else 0.0


def _detail(plane: np.ndarray) -> np.ndarray:
    """`plane` minus its [1 2 1] / 4 blur along y and x (edges repeated), in float64."""
    plane = np.asarray(plane, dtype=np.float64)
    padded = np.pad(plane, 1, mode="edge")
    rows = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    return plane - (0.25 * rows[:, :-2] + 0.5 * rows[:, 1:-1] + 0.25 * rows[:, 2:])


def band_sizes(depth: int) -> List[Tuple[int, int, bool]]:
    """(slices, splits along z, high-pass) of each z band of `depth` slices, in payload order: the
    low-pass band after every split, then the high-pass bands from the last split to the first."""
    lows = [depth]
    while lows[-1] >= 2:
        lows.append((lows[-1] + 1) // 2)
    splits = len(lows) - 1
    highs = [(lows[k - 1] - lows[k], k, True) for k in range(splits, 0, -1)]
    return [(lows[-1], splits, False), *highs]


def forward(values: np.ndarray) -> List[np.ndarray]:
    """The z bands of `values` (z, y, x), in payload order."""
    low = np.asarray(values, dtype=np.float64)
    highs = []
    while len(low) >= 2:
        split = wavelet.forward_axis(low, 0)
        cut = (len(low) + 1) // 2
        highs.append(split[cut:])
        low = split[:cut]
    return [low, *reversed(highs)]


def inverse(bands: List[np.ndarray]) -> np.ndarray:
    """The values whose z bands `bands` are (`forward`'s order)."""
    low = bands[0]
    for high in bands[1:]:
        low = wavelet.inverse_axis(np.concatenate([low, high]), 0)
    return low


def compress(values: np.ndarray, step: float) -> bytes:
    """`values` (z, y, x) coded at quantiser `step` -> payload."""
    return _coding(values)(step, None)[0]


def _coding(values: np.ndarray) -> Callable[[float, Any], Tuple[bytes, Any]]:
    """`code(step, models)` for `wavelet.search`: the payload at `step` and the bands' models."""
    bands = forward(values)
    layouts = [wavelet.Layout(band.shape, IN_PLANE) for band in bands]
    coefficients = [layout.forward(band) for layout, band in zip(layouts, bands)]
    norms = [wavelet.norm_1d(splits, high) for _, splits, high in band_sizes(len(values))]

    def code(step: float, models: Optional[List[Any]]) -> Tuple[bytes, List[Any]]:
        payloads, used = [], []
        for k, (layout, c, norm) in enumerate(zip(layouts, coefficients, norms)):
            payload, model = wavelet.coded(layout, c, step / norm, None if models is None else models[k])
            payloads.append(payload)
            used.append(model)
        return _joined(payloads), used

    return code


def _joined(payloads: List[bytes]) -> bytes:
    return b"".join(varint(len(p)) + p for p in payloads[:-1]) + payloads[-1]


def _split(payload: bytes, shape: Tuple[int, int, int]) -> List[Tuple[bytes, Tuple[int, int, int]]]:
    """Each z band's payload and shape; FormatError where the lengths do not add up."""
    reader = ByteReader(payload)
    sizes = band_sizes(shape[0])
    parts = []
    for k, (slices, _, _) in enumerate(sizes):
        last = k == len(sizes) - 1
        length = reader.remaining() if last else reader.varint("refinement layer z band length", reader.remaining())
        parts.append((reader.take(length, "refinement layer z band"), (slices, shape[1], shape[2])))
    return parts


def decompress(payload: bytes, shape: Tuple[int, int, int]) -> np.ndarray:
    """The values (z, y, x, float64) a payload of `compress` decodes to; FormatError on bad bytes."""
    bands = []
    for part, band_shape in _split(payload, shape):
        band = wavelet.decompress(part, band_shape)  # refuses a payload too short for its delays
        if wavelet.delays_of(part[4]) != IN_PLANE:
            raise FormatError("refinement layer: a z band coded with other axis delays than in-plane")
        bands.append(band)
    return inverse(bands)


def fit(
    values: np.ndarray, spare: int, tolerance: float, on_try: Callable[[int], None], near: Optional[bytes] = None
) -> Optional[bytes]:
    """The largest payload of at most `spare` bytes (`wavelet.search`), from the step and with the
    models of `near` (a payload of the same values at another size) where there is one."""
    code = _coding(values)
    hint = None
    if near is not None:
        depth, height, width = values.shape
        parts = _split(near, (depth, height, width))
        step = wavelet.step_of(parts[0][0])
        if step is not None:
            models = [wavelet.model_of(part, wavelet.Layout(shape, IN_PLANE)) for part, shape in parts]
            hint = (
                step * wavelet.norm_1d(*band_sizes(len(values))[0][1:]),
                len(near),
                None if None in models else models,
            )
    return wavelet.search(code, wavelet.first_step(values), spare, tolerance, on_try, hint)


__all__ = ["compress", "decompress", "fit", "forward", "inverse", "band_sizes", "coherence", "COHERENT"]
