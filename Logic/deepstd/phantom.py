"""A deterministic synthetic CT phantom: the built-in example when no scan is at hand.

Ellipsoidal body of soft tissue with lungs, a spine and contrast-filled vessels, in HU, on an
oblique, anisotropic grid, so that every geometry path is exercised by the example too.
"""

from __future__ import annotations

import numpy as np

from .volume import Volume


def phantom(size=(96, 80, 40), spacing=(0.9, 0.9, 2.5), seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    nx, ny, nz = size
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    hu = np.full(x.shape, -1000.0)
    body = (x / 0.9) ** 2 + (y / 0.7) ** 2 < 1
    hu[body] = 40.0
    for side in (-1, 1):
        lung = ((x - 0.42 * side) / 0.3) ** 2 + (y / 0.45) ** 2 + (z / 1.2) ** 2 < 1
        hu[lung & body] = -850.0
    hu[(x / 0.12) ** 2 + ((y - 0.45) / 0.12) ** 2 < 1] = 700.0  # vertebra
    hu[(x / 0.07) ** 2 + ((y + 0.1) / 0.07) ** 2 < 1] = 250.0  # aorta with contrast
    hu += rng.normal(0.0, 12.0, hu.shape) * body
    angle = np.deg2rad(12.0)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    return Volume(
        np.round(hu).astype(np.float32),
        spacing=spacing,
        origin=(-40.0, -35.5, 120.0),
        direction=tuple(direction.reshape(-1)),
        dtype="int16",
        units="HU",
        meta={"source": f"deepstd phantom (seed {seed})", "format": "synthetic"},
    )
