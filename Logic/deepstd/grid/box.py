"""Boxes of voxel indices: the one representation of a region of a grid.

A box is ((x0, y0, z0), (x1, y1, z1)), ITK index order, upper bounds excluded. Arrays are (z, y, x),
so `slices` and `shape_zyx` translate. Region decoding, keep masks, texture blocks and the sampling
functions all pass boxes of this form.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

Box = Tuple[Tuple[int, int, int], Tuple[int, int, int]]


def whole(size: Sequence[int]) -> Box:
    """The box of every voxel of a grid of `size` (x, y, z)."""
    return (0, 0, 0), tuple(int(n) for n in size)  # type: ignore[return-value]


def shape_zyx(box: Box) -> Tuple[int, int, int]:
    """The (z, y, x) shape of an array holding `box`."""
    (x0, y0, z0), (x1, y1, z1) = box
    return z1 - z0, y1 - y0, x1 - x0


def union(a: Box, b: Optional[Box]) -> Box:
    """The smallest box holding `a` and `b` (`a` when `b` is None)."""
    if b is None:
        return a
    return (
        tuple(min(x, y) for x, y in zip(a[0], b[0])),  # type: ignore[return-value]
        tuple(max(x, y) for x, y in zip(a[1], b[1])),
    )


def slices(inner: Box, outer: Box) -> Tuple[slice, slice, slice]:
    """(z, y, x) slices of `inner` within an array covering `outer`."""
    return tuple(slice(inner[0][a] - outer[0][a], inner[1][a] - outer[0][a]) for a in (2, 1, 0))  # type: ignore[return-value]


def bounding_box(mask: np.ndarray) -> Optional[Box]:
    """The box (x, y, z) of the true voxels of a (z, y, x) mask; None when it is empty."""
    nz = np.nonzero(mask)
    if not len(nz[0]):
        return None
    lo = [int(nz[a].min()) for a in (2, 1, 0)]
    hi = [int(nz[a].max()) + 1 for a in (2, 1, 0)]
    return tuple(lo), tuple(hi)  # type: ignore[return-value]


__all__ = ["Box", "whole", "shape_zyx", "union", "slices", "bounding_box"]
