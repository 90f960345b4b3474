"""The template frame: how network coordinates, voxel indices and LPS millimetres relate.

Networks see q = n * aspect, where n in [-1, 1] is the `grid_sample` coordinate of the template
grid (align_corners=True: n = -1 and +1 are the first and last voxel centres) and aspect scales
each axis by its physical length, so the longest axis spans [-1, 1] and one q unit is the same
number of millimetres on every axis. SIREN frequencies, the Jacobian and the cycle error are then
isotropic in physical space even for 0.6 x 0.6 x 3.6 mm voxels.

Importing this module does not import torch (the container, the CLI's `info` and the Slicer module
describe grids without it); the coordinate maps import it when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Tuple

import numpy as np

from ..volume import Volume

if TYPE_CHECKING:  # torch is imported by the methods that compute with it: a Frame is plain data
    import torch


@dataclass(frozen=True)
class Frame:
    """A voxel grid (ITK order x, y, z; LPS) and its isotropic network coordinates."""

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    @classmethod
    def of(cls, volume: Volume) -> "Frame":
        return cls(tuple(int(n) for n in volume.size), volume.spacing, volume.origin, volume.direction)

    # --- derived geometry -------------------------------------------------------------------------
    @property
    def steps(self) -> np.ndarray:
        """Index span per axis (N - 1, at least 1 so single-slice axes stay defined)."""
        return np.maximum(np.asarray(self.size, dtype=np.float64) - 1.0, 1.0)

    @property
    def lengths(self) -> np.ndarray:
        """Centre-to-centre physical length per axis, mm."""
        return self.steps * np.asarray(self.spacing)

    @property
    def aspect(self) -> np.ndarray:
        return self.lengths / self.lengths.max()

    @property
    def mm_per_unit(self) -> float:
        """Millimetres per q unit (the same on every axis)."""
        return float(self.lengths.max() / 2.0)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape_zyx(self) -> Tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])

    def window(self, lo, hi) -> "Frame":
        """The sub-grid of voxels lo..hi-1 (x, y, z): same spacing and direction, shifted origin."""
        origin = np.asarray(self.origin) + self.direction_matrix @ (
            np.asarray(lo, np.float64) * np.asarray(self.spacing)
        )
        return Frame(
            tuple(int(b - a) for a, b in zip(lo, hi)), self.spacing, tuple(float(v) for v in origin), self.direction
        )

    def coarse(self, factor: int) -> "Frame":
        """A grid over the same physical box (same corner voxel centres) with ~1/factor the voxels."""
        size = tuple(max(1, (n - 1) // factor + 1) for n in self.size)
        spacing = tuple(
            float(length / max(m - 1, 1)) if m > 1 else s for length, m, s in zip(self.lengths, size, self.spacing)
        )
        return Frame(size, spacing, self.origin, self.direction)

    def resampled(self, size) -> "Frame":
        """A grid over the same physical box (same corner voxel centres) with `size` voxels (x, y, z)."""
        size = tuple(int(n) for n in size)
        spacing = tuple(
            float(length / (m - 1)) if m > 1 and n > 1 else s
            for length, m, n, s in zip(self.lengths, size, self.size, self.spacing)
        )
        return Frame(size, spacing, self.origin, self.direction)

    def padded(self, margin) -> "Frame":
        """The same grid extended by `margin` voxels (x, y, z) on both sides of each axis."""
        m = np.asarray(margin, dtype=np.float64)
        origin = np.asarray(self.origin) - self.direction_matrix @ (m * np.asarray(self.spacing))
        return Frame(
            tuple(int(n + 2 * k) for n, k in zip(self.size, margin)),
            self.spacing,
            tuple(float(v) for v in origin),
            self.direction,
        )

    def same_box(self, other: "Frame") -> bool:
        return bool(
            np.allclose(self.lengths, other.lengths)
            and np.allclose(self.origin, other.origin)
            and np.allclose(self.direction, other.direction)
        )

    def volume(self, array: np.ndarray, **kw) -> Volume:
        return Volume(array, self.spacing, self.origin, self.direction, **kw)

    # --- coordinate maps ----------------------------------------------------------------------------
    def q_points(self, z0: int = 0, z1: int | None = None, box=None) -> torch.Tensor:
        """q coordinates (M, 3) of the voxel centres of slices z0..z1, in array (z, y, x) order;
        `box` ((x0, x1), (y0, y1)) limits the rows and columns. Each point's value does not depend
        on which others are asked for, so a region of a grid gets exactly the numbers of the whole."""
        import torch

        z1 = self.size[2] if z1 is None else z1
        (x0, x1), (y0, y1) = box or ((0, self.size[0]), (0, self.size[1]))
        zz, yy, xx = torch.meshgrid(
            torch.arange(z0, z1, dtype=torch.float64),
            torch.arange(y0, y1, dtype=torch.float64),
            torch.arange(x0, x1, dtype=torch.float64),
            indexing="ij",
        )
        idx = torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3)
        return self.index_to_q(idx).float()

    def index_to_q(self, idx: torch.Tensor) -> torch.Tensor:
        import torch

        steps = torch.as_tensor(self.steps, dtype=idx.dtype)
        aspect = torch.as_tensor(self.aspect, dtype=idx.dtype)
        return (2.0 * idx / steps - 1.0) * aspect

    def q_to_physical(self, q: torch.Tensor) -> torch.Tensor:
        """LPS millimetres (M, 3) of q points (float64 recommended)."""
        import torch

        idx = (q / torch.as_tensor(self.aspect, dtype=q.dtype) + 1.0) / 2.0 * torch.as_tensor(self.steps, dtype=q.dtype)
        m = torch.as_tensor(self.direction_matrix * np.asarray(self.spacing)[None, :], dtype=q.dtype)
        return affine(idx, m, torch.as_tensor(self.origin, dtype=q.dtype))

    def physical_to_q(self, points: torch.Tensor) -> torch.Tensor:
        """q coordinates of LPS points (M, 3) (inverse of `q_to_physical`)."""
        import torch

        m = torch.as_tensor(self.direction_matrix * np.asarray(self.spacing)[None, :], dtype=points.dtype)
        return self.index_to_q(affine(points - torch.as_tensor(self.origin, dtype=points.dtype), torch.linalg.inv(m)))

    def units_to_mm(self, d: torch.Tensor) -> torch.Tensor:
        """A displacement in q units (M, 3) as an LPS vector in millimetres."""
        import torch

        m = torch.as_tensor(self.direction_matrix * self.mm_per_unit, dtype=d.dtype)
        return d @ m.t()

    def units_to_voxels(self, d: torch.Tensor) -> torch.Tensor:
        """A displacement in q units as a displacement in this grid's voxels, per axis."""
        import torch

        return d * torch.as_tensor(self.mm_per_unit / np.asarray(self.spacing), dtype=d.dtype)


def physical_to_index(volume: Volume, points: torch.Tensor) -> torch.Tensor:
    """Continuous (x, y, z) voxel index in `volume` of LPS points (M, 3)."""
    import torch

    m = torch.as_tensor(volume.direction_matrix * np.asarray(volume.spacing)[None, :], dtype=points.dtype)
    return affine(points - torch.as_tensor(volume.origin, dtype=points.dtype), torch.linalg.inv(m))


def affine(points: torch.Tensor, m: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """points @ m.T (+ t), written out per component: a BLAS product may round a row differently
    depending on how many rows it is given, and region decoding needs every point's value to be
    the same whatever else is computed with it."""
    out = points[:, 0:1] * m[:, 0] + points[:, 1:2] * m[:, 1] + points[:, 2:3] * m[:, 2]
    return out if t is None else out + t


def index_to_grid(volume: Volume, idx: torch.Tensor) -> torch.Tensor:
    """`grid_sample` coordinates (align_corners=True) of continuous voxel indices in `volume`."""
    import torch

    steps = torch.as_tensor(np.maximum(np.asarray(volume.size, dtype=np.float64) - 1.0, 1.0), dtype=idx.dtype)
    return 2.0 * idx / steps - 1.0
