"""Low-resolution field snapshots carried by progress events while a registration converges."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..grid import Frame
from .field import displacement

PREVIEW_SIZE = 24


@dataclass
class FieldSnapshot:
    """The current forward field on a coarse template grid (ITK convention, mm, LPS)."""

    displacement: np.ndarray  # (z, y, x, 3) float32
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]
    loss: float
    omega: float
    step: int


def preview_grid(frame: Frame, size: int = PREVIEW_SIZE) -> Frame:
    """A grid over the template's box with at most `size` points along any axis."""
    factor = max(1, int(np.ceil((max(frame.size) - 1) / max(1, size - 1))))
    return frame.coarse(factor)


def snapshot(fit, frame: Frame, matrix: np.ndarray, grid: Frame) -> FieldSnapshot:
    net = fit.forward
    if next(net.parameters()).device.type != "cpu":  # a fit on CUDA: evaluate a CPU copy
        net = copy.deepcopy(net).cpu()
    disp = displacement(net, frame, grid=grid, post=matrix)
    return FieldSnapshot(disp, grid.spacing, grid.origin, grid.direction, fit.loss, fit.omega, fit.step)
