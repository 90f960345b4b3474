"""Regions a user asks for: `--roi x0:x1,y0:y1,z0:z1` (voxels) and `--roi-mm` (LPS mm), checked.

A region is a box ((x0, y0, z0), (x1, y1, z1)) of voxel indices in ITK order, upper bounds
excluded, always inside the grid (`deepstd.grid.box`). Decoding a region gives exactly the voxels of a full decode
there, on a grid with the same spacing and direction and the origin of its first voxel.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import InputError
from .grid import Box


def checked(box, size: Sequence[int]) -> Box:
    """A box given by a caller, validated against the grid `size` (x, y, z)."""
    try:
        lo, hi = (tuple(int(v) for v in corner) for corner in box)
    except (TypeError, ValueError):
        raise InputError(f"a region is ((x0, y0, z0), (x1, y1, z1)), got {box!r}") from None
    if len(lo) != 3 or len(hi) != 3:
        raise InputError(f"a region has three axes, got {box!r}")
    for axis, a, b, n in zip("xyz", lo, hi, size):
        if not 0 <= a < b <= n:
            raise InputError(f"region {axis} range {a}:{b} is empty or outside the scan (0:{n})")
    return lo, hi


def parse(text: str, size: Sequence[int]) -> Box:
    """'x0:x1,y0:y1,z0:z1' in voxels; an empty bound means the grid's edge ('100:,:,10:20')."""
    parts = text.split(",")
    if len(parts) != 3 or any(p.count(":") != 1 for p in parts):
        raise InputError(f"--roi {text!r}: expected x0:x1,y0:y1,z0:z1 (voxels)")
    lo, hi = [], []
    for part, n in zip(parts, size):
        a, b = part.split(":")
        try:
            lo.append(int(a) if a.strip() else 0)
            hi.append(int(b) if b.strip() else int(n))
        except ValueError:
            raise InputError(f"--roi {text!r}: bounds must be whole voxel indices") from None
    return checked((lo, hi), size)


def parse_mm(text: str, grid) -> Box:
    """'x0:x1,y0:y1,z0:z1' in LPS millimetres: the voxels whose centres lie in that physical box
    (for an oblique grid, the index box around its corners)."""
    parts = text.split(",")
    try:
        ranges = [tuple(float(v) for v in p.split(":")) for p in parts]
    except ValueError:
        raise InputError(f"--roi-mm {text!r}: bounds must be numbers (mm)") from None
    if len(ranges) != 3 or any(len(r) != 2 or not r[0] < r[1] for r in ranges):
        raise InputError(f"--roi-mm {text!r}: expected x0:x1,y0:y1,z0:z1 in mm with x0 < x1 etc.")
    corners = np.array([[ranges[0][i], ranges[1][j], ranges[2][k]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    m = np.asarray(grid.direction, np.float64).reshape(3, 3) * np.asarray(grid.spacing)[None, :]
    idx = (corners - np.asarray(grid.origin)) @ np.linalg.inv(m).T
    lo = np.maximum(np.ceil(idx.min(axis=0) - 1e-6), 0).astype(int)
    hi = np.minimum(np.floor(idx.max(axis=0) + 1e-6) + 1, np.asarray(grid.size)).astype(int)
    if np.any(lo >= hi):
        raise InputError(f"--roi-mm {text!r} holds no voxel centre of the scan")
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)


__all__ = ["checked", "parse", "parse_mm"]
