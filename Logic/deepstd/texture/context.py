"""The template as decoder-side context of the entropy model.

The decoder holds the bundle's template. Resampled onto the texture frame it predicts the aligned
scan (r ≈ 0.65 on hippocampus crops, docs/TEXTURE.md), so a small branch reads it and the hyperprior
mixes what it finds into the latents' means and scales (`TextureNet.entropy_parameters`). Those
parameters must be bit-identical on every machine (`entropy`), so the template reaches the network
in exact integer arithmetic: the texture frame is an axis-aligned grid over the template's box whose
voxel centres sit at rational template indices (the margin, the refined size and the window are
integers in the header), the trilinear weights are integers, and every resampled value is a floored
quotient of integers, in the same 2**-ACT_BITS units as the integer hyper-synthesis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

#: side values are unit intensities in 2**-SIDE_BITS steps (the integer hyper-synthesis' ACT_BITS),
#: clipped to ±SIDE_LIMIT units (a template is ~0..1; the clip only bounds the integer sums)
SIDE_BITS = 8
SIDE_LIMIT = 4


@dataclass(frozen=True)
class AxisMap:
    """Frame index i -> template index (i * step + offset) / den on one axis of `size` voxels."""

    step: int
    offset: int
    den: int
    size: int

    def corners(self, index: np.ndarray):
        """The two template voxels around each frame index and their integer weights (sum `den`);
        outside the template the nearest edge voxel (the template continued flat)."""
        a = np.clip(index.astype(np.int64) * self.step + self.offset, 0, (self.size - 1) * self.den)
        low = a // self.den
        frac = a - low * self.den
        return low, np.minimum(low + 1, self.size - 1), self.den - frac, frac


def axis_maps(template_size, margin, size=None, window=None) -> Tuple[AxisMap, AxisMap, AxisMap]:
    """The maps of a texture frame (`alignment.texture_frame`: the template padded by `margin`,
    resampled to `size` over the same box, cut to `window`), x, y, z order as the header has them,
    returned in array (z, y, x) order."""
    maps = []
    for axis, n in enumerate(template_size):
        m = int(margin[axis])
        padded = int(n) + 2 * m
        refined = int(size[axis]) if size is not None else padded
        lo = int(window[0][axis]) if window is not None else 0
        if refined > 1 and padded > 1 and refined != padded:  # `Frame.resampled`: same corner centres
            maps.append(AxisMap(padded - 1, lo * (padded - 1) - m * (refined - 1), refined - 1, int(n)))
        else:
            maps.append(AxisMap(1, lo - m, 1, int(n)))
    return maps[2], maps[1], maps[0]


def side_values(template: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The template (z, y, x) in unit intensities (value - lo) / (hi - lo), as integers in
    2**-SIDE_BITS steps. Elementwise IEEE float64 arithmetic, so the same on every machine."""
    unit = (template.astype(np.float64) - lo) / (hi - lo)
    limit = SIDE_LIMIT * 2**SIDE_BITS
    return np.clip(np.floor(unit * 2**SIDE_BITS + 0.5), -limit, limit).astype(np.int64)


class TemplateSide:
    """The template on a texture frame of `shape` (z, y, x), block by block, exactly."""

    def __init__(self, values: np.ndarray, maps: Sequence[AxisMap], shape: Sequence[int]):
        if values.ndim != 3 or tuple(values.shape) != tuple(m.size for m in maps):
            raise ValueError("the template's side values do not match its axis maps")
        self.values, self.maps, self.shape = values, tuple(maps), tuple(int(s) for s in shape)

    def block(self, origin: Sequence[int], block: Sequence[int]) -> np.ndarray:
        """Side values (int64, 2**-SIDE_BITS units) of the block at `origin`; beyond the frame the
        edge values, as `tiling.padded` pads the texture."""
        axes = []
        for o, b, n, m in zip(origin, block, self.shape, self.maps):
            axes.append(m.corners(np.minimum(np.arange(o, o + b), n - 1)))
        (z0, z1, wz0, wz1), (y0, y1, wy0, wy1), (x0, x1, wx0, wx1) = axes
        total = np.zeros(tuple(block), np.int64)
        for zi, wz in ((z0, wz0), (z1, wz1)):
            for yi, wy in ((y0, wy0), (y1, wy1)):
                plane = self.values[zi[:, None], yi[None, :]] * (wz[:, None, None] * wy[None, :, None])
                total += plane[:, :, x0] * wx0 + plane[:, :, x1] * wx1
        den = self.maps[0].den * self.maps[1].den * self.maps[2].den
        return (total + den // 2) // den

    def whole(self) -> np.ndarray:
        return self.block((0, 0, 0), self.shape)

    def blocks(self, origins, block) -> np.ndarray:
        """(N, 1, *block) float64 integers of several blocks, the integer network's input."""
        return np.stack([self.block(o, block) for o in origins])[:, None].astype(np.float64)

    def units(self, origins, block) -> np.ndarray:
        """The same in unit intensities (float32), the float network's input (training, the latent search)."""
        return (self.blocks(origins, block) / 2**SIDE_BITS).astype(np.float32)


def side_for(config, template, margin, size, window, shape) -> Optional[TemplateSide]:
    """The side input a texture network of `config` reads on a frame of `shape` (z, y, x) cut from
    the `template` Volume by `margin`, refined `size` and `window` (`alignment.CodingFrame`, or the
    header's codec keys); None when the network reads no template."""
    if not config.context:
        return None
    lo, hi = config.context_range
    return TemplateSide(side_values(template.array, lo, hi), axis_maps(template.size, margin, size, window), shape)
