"""Read one grid's values at the displaced points of another, in bounded memory.

Everything runs over slabs of whole z-slices of at most `chunk` points, so a 512x512x300 CT needs
the output arrays plus a few tens of MB, never a full-grid batch. Displacements are in ITK's
resampling convention: mm, LPS, and for an output-grid point p the input is read at p + u(p).
Every point's value is computed from its own grid indices, and the cubic prefilter has a finite
reach, so a window of a grid gets exactly the values of the whole (region decoding relies on it).
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..progress import Reporter
from ..volume import Volume
from .box import Box, shape_zyx, whole
from .frame import Frame, index_to_grid, physical_to_index

CHUNK = 1 << 18


def slabs(grid: Frame, chunk: int = CHUNK, window: Optional[Box] = None) -> Iterator[Tuple[int, int]]:
    """(z0, z1) ranges of whole slices (of `window`, default the grid) holding about `chunk` points each."""
    (x0, y0, z0), (x1, y1, z1) = window or whole(grid.size)
    step = max(1, chunk // max(1, (x1 - x0) * (y1 - y0)))
    for z in range(z0, z1, step):
        yield z, min(z1, z + step)


def window_points(grid: Frame, window: Box, z0: int, z1: int) -> torch.Tensor:
    (x0, y0, _), (x1, y1, _) = window
    return grid.q_points(z0, z1, ((x0, x1), (y0, y1)))


@torch.no_grad()
def warp(
    volume: Volume,
    disp: np.ndarray,
    grid: Frame,
    mode: str = "linear",
    default: float = 0.0,
    chunk: int = CHUNK,
    reporter: Optional[Reporter] = None,
) -> Volume:
    """`volume` read at p + u(p) for every point p of `grid`: linear (or cubic B-spline, sharper:
    the codec warps twice) for images, nearest for labels.

    Points outside `volume` get `default`, as `sitk.Resample(..., defaultPixelValue)` does.
    """
    if mode not in ("linear", "nearest", "cubic"):
        raise ValueError("mode is 'linear', 'nearest' or 'cubic'")
    if mode == "cubic":
        out = sample_cubic(
            Frame.of(volume), volume.array, (0, 0, 0), disp, grid, default=default, chunk=chunk, reporter=reporter
        )
        return grid.volume(out, dtype=volume.dtype, units=volume.units, meta=dict(volume.meta))
    image = torch.from_numpy(volume.array)[None, None]
    out = np.empty(grid.shape_zyx, dtype=np.float32)
    size = torch.as_tensor(volume.size, dtype=torch.float64)
    for z0, z1 in slabs(grid, chunk):
        idx = _read_index(volume, grid, whole(grid.size), disp, z0, z1, 0)
        inside = ((idx > -0.5) & (idx < size - 0.5)).all(dim=1)  # ITK: within half a voxel of the grid
        g = index_to_grid(volume, idx).float().view(1, 1, 1, -1, 3)
        vals = F.grid_sample(
            image, g, mode="bilinear" if mode == "linear" else "nearest", padding_mode="border", align_corners=True
        ).view(-1)
        vals = torch.where(inside, vals, torch.full_like(vals, default))
        out[z0:z1] = vals.reshape(z1 - z0, grid.size[1], grid.size[0]).numpy()
        if reporter is not None:
            reporter("warp", z1 / grid.size[2], "warping")
    return grid.volume(out, dtype=volume.dtype, units=volume.units, meta=dict(volume.meta))


def _read_index(
    source: Frame, grid: Frame, window: Box, disp: np.ndarray, z0: int, z1: int, start: int
) -> torch.Tensor:
    """Continuous (x, y, z) index in `source` where the `grid` points of slices z0..z1 read (float64)."""
    p = grid.q_to_physical(window_points(grid, window, z0, z1).double())
    d = torch.from_numpy(disp[z0 - start : z1 - start].reshape(-1, 3)).double()
    return physical_to_index(source, p + d)


#: reach of the cubic B-spline prefilter: c = x * h, h[n] = √3 (√3 − 2)^|n| truncated at |n| ≤ 16
#: (the tail is below 1e-9 of the signal). A finite reach makes every coefficient depend only on
#: the voxels within it, so a region decodes to exactly the values of a full decode.
SPLINE_REACH = 16
#: texture voxels around what a set of points reads that its cubic values can depend on
CUBIC_HALO = SPLINE_REACH + 2


def spline_coefficients(array: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients of a 3-D array (edges continued by replication)."""
    from scipy.ndimage import correlate1d

    pole = np.sqrt(3.0) - 2.0
    taps = np.sqrt(3.0) * pole ** np.abs(np.arange(-SPLINE_REACH, SPLINE_REACH + 1))
    out = np.asarray(array, dtype=np.float32)
    for axis in range(out.ndim):
        out = correlate1d(out, taps, axis=axis, mode="nearest", output=np.float32)
    return out


def _read_indices(source: Frame, disp: np.ndarray, grid: Frame, window: Box, chunk: int) -> Iterator[torch.Tensor]:
    """`_read_index` slab by slab over the window: where its points read `source`."""
    for z0, z1 in slabs(grid, chunk, window):
        yield _read_index(source, grid, window, disp, z0, z1, window[0][2])


def _inside(source: Frame, idx: torch.Tensor) -> torch.Tensor:
    size = torch.as_tensor(source.size, dtype=torch.float64)
    return ((idx > -0.5) & (idx < size - 0.5)).all(dim=1)


def read_box(
    source: Frame, disp: np.ndarray, grid: Frame, window: Optional[Box] = None, chunk: int = CHUNK
) -> Optional[Box]:
    """The box of `source` voxels that the cubic values at the `window` points of `grid` depend on
    (None when every point reads outside `source`)."""
    window = window or whole(grid.size)
    low, high = np.full(3, np.inf), np.full(3, -np.inf)
    for idx in _read_indices(source, disp, grid, window, chunk):
        idx = idx[_inside(source, idx)]
        if len(idx):
            low = np.minimum(low, idx.min(dim=0).values.numpy())
            high = np.maximum(high, idx.max(dim=0).values.numpy())
    if not np.all(np.isfinite(low)):
        return None
    lo = np.maximum(np.floor(low).astype(int) - CUBIC_HALO, 0)
    hi = np.minimum(np.floor(high).astype(int) + CUBIC_HALO + 1, np.asarray(source.size))
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)


def read_extent(
    source: Frame, disp: np.ndarray, grid: Frame, window: Optional[Box] = None, chunk: int = CHUNK
) -> Tuple[np.ndarray, np.ndarray]:
    """The lowest and highest continuous (x, y, z) index of `source` that the `window` points of
    `grid` read, inside `source` or not (how far a frame must reach to hold them all)."""
    low, high = np.full(3, np.inf), np.full(3, -np.inf)
    for idx in _read_indices(source, disp, grid, window or whole(grid.size), chunk):
        low = np.minimum(low, idx.min(dim=0).values.numpy())
        high = np.maximum(high, idx.max(dim=0).values.numpy())
    return low, high


def inside_fraction(
    source: Frame, disp: np.ndarray, grid: Frame, window: Optional[Box] = None, chunk: int = CHUNK
) -> float:
    """The fraction of the `window` points of `grid` whose p + u(p) lies within `source`."""
    inside = total = 0
    for idx in _read_indices(source, disp, grid, window or whole(grid.size), chunk):
        inside += int(_inside(source, idx).sum())
        total += len(idx)
    return inside / max(total, 1)


@torch.no_grad()
def sample_cubic(
    source: Frame,
    array: np.ndarray,
    offset,
    disp: np.ndarray,
    grid: Frame,
    window: Optional[Box] = None,
    default: float = 0.0,
    chunk: int = CHUNK,
    reporter: Optional[Reporter] = None,
) -> np.ndarray:
    """Cubic B-spline values of the image on `source` at p + u(p), p the `window` points of `grid`.

    `array` (z, y, x) holds the `source` voxels from `offset` (x, y, z) on: all of them, or a box
    that contains `read_box(...)` — the values are then exactly those of the whole image.
    """
    window = window or whole(grid.size)
    start, end = window[0][2], window[1][2]
    coefficients = spline_coefficients(array)
    shift = torch.as_tensor(offset, dtype=torch.float64)
    size = torch.as_tensor(source.size, dtype=torch.float64)
    out = np.empty(shape_zyx(window), dtype=np.float32)
    for z0, z1 in slabs(grid, chunk, window):
        idx = _read_index(source, grid, window, disp, z0, z1, start)
        inside = ((idx > -0.5) & (idx < size - 0.5)).all(dim=1)  # ITK: within half a voxel of the grid
        vals = torch.from_numpy(_cubic(coefficients, (idx - shift).numpy()))
        vals = torch.where(inside, vals, torch.full_like(vals, default))
        out[z0 - start : z1 - start] = vals.reshape((z1 - z0,) + out.shape[1:]).numpy()
        if reporter is not None:
            reporter("warp", (z1 - start) / max(end - start, 1), "warping")
    return out


def _cubic(coefficients: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Cubic B-spline values at continuous (x, y, z) indices (borders continued by the edge).

    Non-finite indices (a corrupt geometry or field) are made finite first: SciPy's compiled
    interpolator crashes the process on NaN coordinates. Such points read outside the grid, so
    their value is the caller's default anyway; finite indices are unchanged (same bytes)."""
    from scipy.ndimage import map_coordinates

    zyx = [np.clip(np.nan_to_num(idx[:, 2 - a], nan=-1.0), 0, coefficients.shape[a] - 1) for a in range(3)]
    return map_coordinates(coefficients, zyx, order=3, mode="nearest", prefilter=False, output=np.float32)


@torch.no_grad()
def compose(first: np.ndarray, grid: Frame, second: np.ndarray, second_grid: Frame, chunk: int = CHUNK) -> np.ndarray:
    """Displacement on `grid` of p -> q = p + first(p) -> q + second(q) (second read linearly)."""
    comps = torch.from_numpy(np.ascontiguousarray(np.moveaxis(second, -1, 0)))[None]
    ref = second_grid.volume(np.zeros(second_grid.shape_zyx, np.float32))
    out = np.empty_like(first)
    for z0, z1 in slabs(grid, chunk):
        p = grid.q_to_physical(grid.q_points(z0, z1).double())
        d1 = torch.from_numpy(first[z0:z1].reshape(-1, 3))
        g = index_to_grid(ref, physical_to_index(ref, p + d1.double())).float().view(1, 1, 1, -1, 3)
        d2 = F.grid_sample(comps, g, mode="bilinear", padding_mode="border", align_corners=True)
        out[z0:z1] = (d1 + d2.view(3, -1).t()).reshape(z1 - z0, grid.size[1], grid.size[0], 3).numpy()
    return out
