"""Where the real data lives (tests call `data_path(...)`, which skips, or fails under
DEEPSTD_REQUIRE_DATA=1, when ../shared/data is absent) and the awkward geometry synthetic volumes
use. A module of its own, not conftest, because
the suite has several conftest files and `from conftest import` would pick the wrong one."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(os.environ.get("DEEPSTD_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
OBLIQUE_DIRECTION = tuple(np.array([[0.0, -0.8, 0.6], [1.0, 0.0, 0.0], [0.0, 0.6, 0.8]]).T.reshape(-1))
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
