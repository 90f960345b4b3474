"""Grids and sampling: one home for how voxel grids relate and how values are read across them.

`Frame` (a voxel grid and its isotropic network coordinates), `Box` (a region of a grid) and
`sampling` (slab-wise, bounded-memory reads of one grid at the displaced points of another).
The shape stage and the alignment glue both build on this package; neither reaches into the other
for geometry. Importing `deepstd.grid` does not import torch.
"""

from .box import Box, bounding_box, shape_zyx, slices, union, whole
from .frame import Frame

__all__ = ["Box", "Frame", "bounding_box", "shape_zyx", "slices", "union", "whole"]
