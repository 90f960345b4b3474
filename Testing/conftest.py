"""Shared fixtures: where the real data lives, and synthetic volumes with awkward geometry."""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import OBLIQUE_DIRECTION, REQUIRE_DATA, SHARED_DATA, data_path  # noqa: F401  (re-exported)

from deepstd import Volume


@pytest.fixture
def oblique_volume() -> Volume:
    """A small int16 volume with anisotropic spacing, an oblique direction and a non-zero origin."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.arange(7), np.arange(11), np.arange(13), indexing="ij")
    array = (1000 * np.sin(x / 3.0) * np.cos(y / 4.0) + 30 * z + rng.normal(0, 5, x.shape)).round()
    return Volume(
        array.astype(np.float32),
        spacing=(0.7, 0.9, 3.5),
        origin=(-12.5, 40.25, 7.0),
        direction=OBLIQUE_DIRECTION,
        dtype="int16",
        units="HU",
    )


@pytest.fixture(scope="module")
def one_thread():
    """Two threads on shared, busy cores oversubscribe badly; tests that need two ask for it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A bundle with a synthetic template and an untrained small texture network (codec_helpers)."""
    from codec_helpers import tiny_bundle as make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle"))


@pytest.fixture(scope="session")
def scan():
    """A codec test scan unlike `tiny_bundle`'s template: other size, anisotropic spacing, oblique
    direction, offset origin (int16)."""
    from codec_helpers import blob_volume

    return blob_volume((44, 37, 17), (1.1, 0.9, 2.7), origin=(-20.0, 13.5, 4.0), seed=3)
