"""`scripts/block_seams.py`'s geometry: distances to block faces and the smoothing across inner
block boundaries, for tiled frames and for a small crop coded as one whole-frame block."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location("block_seams", Path(__file__).parents[1] / "scripts" / "block_seams.py")
assert _spec is not None and _spec.loader is not None
seams = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seams)


def test_distances_count_to_the_nearest_face_of_the_block():
    distance = seams.distance_to_boundary((8, 8, 8), 4)
    assert distance[0, 0, 0] == 0 and distance[1, 1, 1] == 1 and distance[1, 2, 1] == 1 and distance.max() == 1
    whole = seams.distance_to_boundary((5, 9, 7), None)  # one block: the frame's own faces
    assert whole[2, 4, 3] == 2 and whole[0, 4, 3] == 0 and whole.max() == 2


def test_smoothing_touches_only_planes_at_inner_boundaries():
    x = np.random.default_rng(0).normal(size=(8, 8, 8))
    smoothed = seams.smooth_boundaries(x, 4)
    z, y, w = np.indices(x.shape)
    near = np.isin(z, (3, 4)) | np.isin(y, (3, 4)) | np.isin(w, (3, 4))  # the planes around the boundary
    np.testing.assert_array_equal(smoothed[~near], x[~near])
    assert not np.array_equal(smoothed[near], x[near])
    np.testing.assert_array_equal(seams.smooth_boundaries(x, None), x)  # a whole-frame block has none
