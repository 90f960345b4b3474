"""How much the texture codec's block seams cost: coding error by distance to a block boundary on
aligned held-out frames, and what a plain smoothing across the boundaries would change.

Scans are aligned exactly as the encoder aligns them (`texture_gap.aligned`) and coded in the
bundle's blocks at fixed texture rates; errors are counted inside each scan's support only.

    python scripts/block_seams.py --bundle la-mr SCAN.nii.gz [SCAN.nii.gz ...] --rates 0.2 0.5
"""

from __future__ import annotations

import argparse
import json
from typing import Optional

import numpy as np

BINS = ((0, 0), (1, 1), (2, 3), (4, 7), (8, None))


def distance_to_boundary(shape, block: Optional[int]) -> np.ndarray:
    """Voxels to the nearest face of the block a voxel lies in (0: on the block's first or last plane;
    `block` None: the whole frame is one block, as the codec codes a small crop)."""
    out = np.full(shape, np.iinfo(np.int32).max, dtype=np.int64)
    for axis, n in enumerate(shape):
        side = block or n
        index = np.arange(n) % side
        out = np.minimum(out, np.minimum(index, side - 1 - index).reshape([n if a == axis else 1 for a in range(3)]))
    return out


def smooth_boundaries(x: np.ndarray, block: Optional[int], weight: float = 0.5) -> np.ndarray:
    """Blend the two planes on each side of every inner block boundary with a 3-tap mean across it
    (a whole-frame block, `block` None, has none)."""
    from scipy import ndimage

    y = x.copy()
    for axis, n in enumerate(x.shape):
        side = block or n
        index = np.arange(n)
        planes = (((index % side) == 0) | ((index % side) == side - 1)) & (index > 0) & (index < n - 1)
        planes = planes.reshape([n if a == axis else 1 for a in range(3)])
        y = np.where(planes, (1 - weight) * y + weight * ndimage.uniform_filter1d(y, 3, axis=axis, mode="nearest"), y)
    return y


def main(argv=None) -> None:
    import torch
    from texture_gap import aligned

    from deepstd.bundle import resolve_bundle, texture_codec
    from deepstd.texture.context import side_for

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", nargs="+")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--rates", nargs="+", type=float, default=[0.2, 0.5])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bundle = resolve_bundle(args.bundle)
    codec = texture_codec(bundle, "cpu")
    frames = []
    for unit, support, coding in (aligned(p, bundle) for p in args.scans):
        # a network that reads the template (hippocampus-mr) is given it, as the encoder gives it
        side = side_for(codec.config, bundle.template, coding.margin, coding.size, coding.window, unit.shape)
        frames.append((unit, support, coding.block, side))
    for rate in args.rates:
        sums = {b: [0.0, 0] for b in BINS}
        gains = []
        for unit, support, block, side in frames:
            support = support.astype(bool)
            out = codec.decompress(codec.compress(unit, rate, block=block, support=support, side=side), side=side)
            error = (out - unit) ** 2
            distance = distance_to_boundary(unit.shape, block)
            for low, high in BINS:
                inside = support & (distance >= low) & (distance <= (high if high is not None else distance.max()))
                sums[(low, high)][0] += float(error[inside].sum())
                sums[(low, high)][1] += int(inside.sum())
            smoothed = ((smooth_boundaries(out, block) - unit) ** 2)[support].mean()
            gains.append(round(float(10 * np.log10(error[support].mean() / smoothed)), 3))
        total = sum(count for _, count in sums.values())
        label = {b: f"{b[0]}-{b[1] if b[1] is not None else 'inf'}" for b in BINS}
        print(json.dumps({
            "rate": rate,
            "mse_by_distance": {label[b]: round(s / max(c, 1), 6) for b, (s, c) in sums.items()},
            "share_of_voxels": {label[b]: round(c / total, 4) for b, (s, c) in sums.items()},
            "boundary_smoothing_gain_db": gains,
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
