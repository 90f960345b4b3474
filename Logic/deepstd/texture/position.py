"""Learned positional encoding: where a block's tokens sit in the template.

A small learned field of `dim` channels on a coarse grid spans the template (normalised
coordinates −1..1, `align_corners=True` as everywhere in DeepSTD). Each token of a TCM stage
reads the field at its own centre by trilinear interpolation, so a block knows its place in the
template whatever the block size, and the full-volume mode is the one-block special case.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def token_grid(origin: Sequence[int], size: Sequence[int], factor: int, full: Sequence[int]) -> torch.Tensor:
    """Normalised (x, y, z) coordinates of the token centres of one block at stride `factor`.

    origin/size/full are voxel counts in array order (z, y, x); returns (d, h, w, 3) float32.
    """
    axes = []
    for o, s, n in zip(origin, size, full):
        centres = o + (torch.arange(s // factor, dtype=torch.float64) + 0.5) * factor - 0.5
        axes.append((centres / max(n - 1, 1) * 2.0 - 1.0).float())
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    return torch.stack((xx, yy, zz), dim=-1)


class PositionalField(nn.Module):
    """A learned (dim, g, g, g) field over the template, sampled at token centres."""

    def __init__(self, dim: int, grid: int = 6):
        super().__init__()
        self.field = nn.Parameter(torch.randn(1, dim, grid, grid, grid) * 0.1)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """coords: (N, d, h, w, 3) normalised (x, y, z) -> encodings (N, dim, d, h, w)."""
        field = self.field.expand(coords.shape[0], -1, -1, -1, -1)
        return F.grid_sample(field, coords, mode="bilinear", padding_mode="border", align_corners=True)


def block_coords(
    origins: Sequence[Tuple[int, int, int]], size: Sequence[int], factor: int, full: Sequence[int]
) -> torch.Tensor:
    """Token coordinates for a batch of equally sized blocks: (N, d, h, w, 3)."""
    return torch.stack([token_grid(o, size, factor, full) for o in origins])
