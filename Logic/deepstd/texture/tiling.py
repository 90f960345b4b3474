"""Cutting a volume into fixed blocks on its grid, and putting it back together.

Blocks are coded independently (bounded memory, any number of workers). The volume is padded
by edge replication up to whole blocks, which costs fewer bits than zeros, and the decoder crops
back to the exact shape. Blocks that hold no voxel of the support mask are not coded at all.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .streams import ALIGN, MAX_BLOCK, grid_of

Triple = Tuple[int, int, int]


def full_block(shape: Sequence[int]) -> Triple:
    """The single block of full-volume mode: the shape rounded up to the network's alignment."""
    return tuple(-(-int(s) // ALIGN) * ALIGN for s in shape)


def normalise_block(block) -> Triple:
    """An int or a triple -> a valid block triple (multiples of 16, at most 1024)."""
    b = (block,) * 3 if np.isscalar(block) else tuple(block)
    if len(b) != 3 or not all(int(v) == v and ALIGN <= v <= MAX_BLOCK and v % ALIGN == 0 for v in b):
        raise ValueError(f"block size must be a multiple of {ALIGN} in {ALIGN}..{MAX_BLOCK}, got {block}")
    return tuple(int(v) for v in b)


def origins(shape: Sequence[int], block: Triple) -> List[Triple]:
    """Block origins (voxel indices, z slowest) covering `shape`."""
    g = grid_of(tuple(shape), block)
    return [(i * block[0], j * block[1], k * block[2]) for i in range(g[0]) for j in range(g[1]) for k in range(g[2])]


def coded_blocks(shape: Sequence[int], block: Triple, support: Optional[np.ndarray]) -> List[bool]:
    """Which blocks hold any voxel of the support (all of them without a support mask)."""
    if support is None:
        return [True] * len(origins(shape, block))
    if support.shape != tuple(shape):
        raise ValueError(f"support mask shape {support.shape} differs from the volume {shape}")
    s = np.asarray(support, dtype=bool)
    return [
        bool(s[o[0] : o[0] + block[0], o[1] : o[1] + block[1], o[2] : o[2] + block[2]].any())
        for o in origins(shape, block)
    ]


def padded(x: np.ndarray, block: Triple) -> np.ndarray:
    """Edge-pad x up to whole blocks."""
    g = grid_of(x.shape, block)
    pad = [(0, n * b - s) for n, b, s in zip(g, block, x.shape)]
    return np.pad(x, pad, mode="edge") if any(p[1] for p in pad) else x


def cut(xp: np.ndarray, o: Triple, block: Triple) -> np.ndarray:
    return xp[o[0] : o[0] + block[0], o[1] : o[1] + block[1], o[2] : o[2] + block[2]]


def overlap(o: Triple, block: Triple, lo: Sequence[int], hi: Sequence[int]):
    """Where the block at `o` meets the box lo..hi: (slices into the box, slices into the block),
    or None when they do not meet."""
    a = [max(oo, low) for oo, low in zip(o, lo)]
    b = [min(oo + n, h) for oo, n, h in zip(o, block, hi)]
    if any(x >= y for x, y in zip(a, b)):
        return None
    return (
        tuple(slice(x - low, y - low) for x, y, low in zip(a, b, lo)),
        tuple(slice(x - oo, y - oo) for x, y, oo in zip(a, b, o)),
    )


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
