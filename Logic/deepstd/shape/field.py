"""Evaluate network fields on any grid in bounded memory; invert and measure them.

The shape stage's fields are networks u(q) on a template `Frame`; these functions turn them into
ITK displacements (mm, LPS, for an output-grid point p the input is read at p + u(p)) slab by slab
(`deepstd.grid.sampling` then reads images through them).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..grid import Box, Frame, shape_zyx, whole
from ..grid.frame import affine
from ..grid.sampling import CHUNK, compose, slabs, window_points
from ..progress import Reporter
from .siren import Siren

#: u(q): q units in, q units out, (M, 3) float32 -> (M, 3): a `Siren` or a `SampledField`.
Field = Callable[[torch.Tensor], torch.Tensor]


class SampledField:
    """A network's u(q) sampled once on `frame`'s grid (every `coarse`-th voxel), read trilinearly.

    The codec evaluates the shape field at millions of points, twelve times over for the inverse;
    here each evaluation is a lookup (LA encode: the inverse 3.8 s -> ~1 s). Encoder and decoder
    build the same sampled field from the same stored weights, so the decoder's warp is exactly
    the one the encoder inverted; sampling only changes which smooth field that is (against the
    network: mean 0.04, max 0.3 voxel for an 8.6-voxel omega = 12 field; the shape path alone on
    a held-out LA scan restores 39.47 dB either way). Outside the box the field is continued by
    its edge values, as `displacement(clamp=True)` does.
    """

    @torch.no_grad()
    def __init__(self, net: Siren, frame: Frame, coarse: int = 2, chunk: int = CHUNK):
        grid = frame.coarse(coarse)
        values = torch.empty(grid.shape_zyx + (3,), dtype=torch.float32)
        for z0, z1 in slabs(grid, chunk):
            values[z0:z1] = net(grid.q_points(z0, z1)).reshape(z1 - z0, grid.size[1], grid.size[0], 3)
        self.values = values.permute(3, 0, 1, 2)[None].contiguous()
        self.aspect = torch.as_tensor(frame.aspect, dtype=torch.float32)

    @torch.no_grad()
    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        g = (q.float() / self.aspect).view(1, 1, 1, -1, 3)
        u = F.grid_sample(self.values, g, mode="bilinear", padding_mode="border", align_corners=True)
        return u.view(3, -1).t()


def _apply(matrix: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(matrix, dtype=points.dtype)
    return affine(points, m[:3, :3], m[:3, 3])


@torch.no_grad()
def displacement(
    net: Field,
    frame: Frame,
    grid: Optional[Frame] = None,
    pre: np.ndarray = np.eye(4),
    post: np.ndarray = np.eye(4),
    reporter: Optional[Reporter] = None,
    chunk: int = CHUNK,
    clamp: bool = False,
    window: Optional[Box] = None,
) -> np.ndarray:
    """ITK displacement (z, y, x, 3) float32 mm on `grid` (default: `frame`) of p -> post(Phi(pre(p))).

    Forward field of a registration: grid = template, pre = I, post = the pre-alignment matrix.
    Backward field (decode side): grid = the scan's own grid, pre = inverse pre-alignment, post = I.
    `clamp`: outside `frame`'s box the network is evaluated at the nearest point of the box (the
    field is continued as a constant; a SIREN's extrapolation is not to be trusted).
    `window`: only that box of `grid` (its values are those of the whole grid's evaluation).
    """
    grid = grid or frame
    window = window or whole(grid.size)
    start, end = window[0][2], window[1][2]
    out = np.empty(shape_zyx(window) + (3,), dtype=np.float32)
    aspect = torch.as_tensor(frame.aspect, dtype=torch.float64)
    for z0, z1 in slabs(grid, chunk, window):
        p = grid.q_to_physical(window_points(grid, window, z0, z1).double())
        q = frame.physical_to_q(_apply(pre, p))
        at = torch.maximum(torch.minimum(q, aspect), -aspect) if clamp else q
        phi = q + net(at.float()).double()
        d = _apply(post, frame.q_to_physical(phi)) - p
        out[z0 - start : z1 - start] = d.reshape((z1 - z0,) + out.shape[1:]).float().numpy()
        if reporter is not None:
            reporter("field", (z1 - start) / max(end - start, 1), "evaluating the displacement field")
    return out


@torch.no_grad()
def inverse_displacement(
    net: Field,
    frame: Frame,
    grid: Optional[Frame] = None,
    post: np.ndarray = np.eye(4),
    iterations: int = 12,
    chunk: int = CHUNK,
    reporter: Optional[Reporter] = None,
    coarse: int = 2,
) -> np.ndarray:
    """ITK displacement on `grid` of p -> post(Psi(p)), Psi the numerical inverse of Phi = q + u(q).

    Fixed-point iteration y <- x - u(y) (u clamped to `frame`'s box, as `displacement(clamp=True)`
    evaluates it); it converges for the smooth, non-folding fields Cycle-INR produces. Encoding
    through the inverse of the *stored* backward field makes the decoder's warp undo it exactly,
    instead of up to the forward/backward cycle error. The iteration runs on a grid `coarse`
    times sparser and is interpolated (linearly) to `grid`: the field is smooth, the cost 8x less.
    """
    grid = grid or frame
    if coarse > 1:
        sparse = grid.coarse(coarse)
        d = inverse_displacement(net, frame, sparse, post, iterations, chunk, reporter, coarse=1)
        return compose(np.zeros(grid.shape_zyx + (3,), np.float32), grid, d, sparse, chunk)
    out = np.empty(grid.shape_zyx + (3,), dtype=np.float32)
    aspect = torch.as_tensor(frame.aspect, dtype=torch.float64)
    for z0, z1 in slabs(grid, chunk):
        p = grid.q_to_physical(grid.q_points(z0, z1).double())
        x = frame.physical_to_q(p)
        y = x.clone()
        for _ in range(iterations):
            y = x - net(torch.maximum(torch.minimum(y, aspect), -aspect).float()).double()
        d = _apply(post, frame.q_to_physical(y)) - p
        out[z0:z1] = d.reshape(z1 - z0, grid.size[1], grid.size[0], 3).float().numpy()
        if reporter is not None:
            reporter("field", z1 / grid.size[2], "inverting the shape field")
    return out


@torch.no_grad()
def jacobian_determinant(net: Siren, grid: Frame, chunk: int = CHUNK) -> np.ndarray:
    """det(I + du/dq) at the voxel centres of `grid` (z, y, x): the non-linear part's det J."""
    out = np.empty(grid.shape_zyx, dtype=np.float32)
    eye = torch.eye(3)
    for z0, z1 in slabs(grid, chunk):
        _, jac = net.forward_jacobian(grid.q_points(z0, z1))
        out[z0:z1] = torch.linalg.det(eye + jac).reshape(z1 - z0, grid.size[1], grid.size[0]).numpy()
    return out


def folding_fraction(det: np.ndarray) -> float:
    """Fraction of voxels where the map folds (det J <= 0)."""
    return float(np.mean(det <= 0))


@torch.no_grad()
def inverse_consistency(
    forward: Siren, backward: Siren, grid: Frame, voxel: Frame, chunk: int = CHUNK
) -> Tuple[float, float]:
    """Mean and max |Phi_B(Phi_F(x)) - x| over `grid`'s voxel centres, in `voxel`'s voxel units."""
    total, worst, count = 0.0, 0.0, 0
    for z0, z1 in slabs(grid, chunk):
        q = grid.q_points(z0, z1)
        mid = q + forward(q)
        err = voxel.units_to_voxels(mid + backward(mid) - q).norm(dim=1)
        total += float(err.sum())
        worst = max(worst, float(err.max()))
        count += len(err)
    return total / count, worst


def to_sitk_field(disp: np.ndarray, grid: Frame) -> sitk.Image:
    """A vector float64 image (what `sitk.DisplacementFieldTransform` takes) on `grid`."""
    image = sitk.GetImageFromArray(disp.astype(np.float64), isVector=True)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image
