"""Shared fixtures: where the real data lives, and synthetic volumes with awkward geometry."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from deepstd import Volume

SHARED_DATA = Path(os.environ.get("DEEPSTD_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
REQUIRE_DATA = os.environ.get("DEEPSTD_REQUIRE_DATA") == "1"


def data_path(*parts: str) -> Path:
    """A path under ../shared/data; skips the test (or fails it when DEEPSTD_REQUIRE_DATA=1) if absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        reason = f"real data not found at {path} (set DEEPSTD_DATA or place ../shared/data)"
        if REQUIRE_DATA:
            pytest.fail(reason + " and DEEPSTD_REQUIRE_DATA=1")
        pytest.skip(reason)
    return path


OBLIQUE_DIRECTION = tuple(np.array([[0.0, -0.8, 0.6], [1.0, 0.0, 0.0], [0.0, 0.6, 0.8]]).T.reshape(-1))


@pytest.fixture
def oblique_volume() -> Volume:
    """A small int16 volume with anisotropic spacing, an oblique direction and a non-zero origin."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.arange(7), np.arange(11), np.arange(13), indexing="ij")
    array = (1000 * np.sin(x / 3.0) * np.cos(y / 4.0) + 30 * z + rng.normal(0, 5, x.shape)).round()
    return Volume(array.astype(np.float32), spacing=(0.7, 0.9, 3.5), origin=(-12.5, 40.25, 7.0),
                  direction=OBLIQUE_DIRECTION, dtype="int16", units="HU")
