"""Slice motion: the motion-compensated first z split of thick-slice scans inverts exactly, predicts
moving anatomy better than the plain split, and its untrusted fields are checked."""

from __future__ import annotations

import numpy as np
import pytest

from deepstd import motion, wavelet
from deepstd.errors import FormatError


def moving_scan(slices: int = 10, shift: int = 2, size: int = 64) -> np.ndarray:
    """A smooth random texture that moves `shift` pixels along x from each slice to the next."""
    rng = np.random.default_rng(5)
    base = rng.normal(0, 1, (size, size + shift * slices)).cumsum(axis=0).cumsum(axis=1)
    return np.stack([base[:, k * shift : k * shift + size] for k in range(slices)]).astype(np.float64)


def test_split_and_merge_invert_exactly_for_any_moves():
    rng = np.random.default_rng(1)
    for z in (9, 10):
        values = rng.normal(0, 10, (z, 40, 50))
        shape = motion.grid(values.shape, 16)
        field = motion.Field(16, rng.integers(-motion.MAX_RADIUS, motion.MAX_RADIUS + 1, (*shape, 2)))
        split = motion.split(values, field)
        assert split.shape == values.shape
        np.testing.assert_allclose(motion.merge(split, field), values, atol=1e-9)


def test_the_estimated_moves_follow_the_anatomy_and_empty_the_high_band():
    values = moving_scan(slices=11)
    field = motion.estimate(values, block=16, radius=3)
    # odd slice 2k+1 sits 2 pixels along x from slice 2k and 2 back from slice 2k+2
    assert np.all(field.vectors[..., 0] == 0) and np.all(field.vectors[..., 1] == 2)
    still = motion.Field(16, np.zeros_like(field.vectors))
    # the high band away from the x edges (where a move reads repeated edge pixels)
    inner = (slice(len(values) - len(values) // 2, None), slice(None), slice(4, -4))
    moved_energy = np.sum(motion.split(values, field)[inner] ** 2)
    still_energy = np.sum(motion.split(values, still)[inner] ** 2)
    assert moved_energy < 1e-12 * still_energy  # predicted exactly


def test_the_moved_split_is_the_first_z_split_at_whatever_level():
    """Where z waits, its first split lifts the in-plane low-pass slices: motion is estimated there."""
    values = moving_scan(slices=12, size=96)
    layout = wavelet.Layout(values.shape, (1, 0, 0))
    slices = layout.before_z_split(values)
    assert slices.shape == layout.z_slices() == (12, 48, 48)
    moves = motion.estimate(slices, block=16)
    assert np.mean(moves.vectors[:-1, ..., 1] == 1) > 0.8  # 2 pixels a slice at full size, 1 at half
    moved = wavelet.Layout(values.shape, (1, 0, 0), moves)
    np.testing.assert_allclose(moved.inverse(moved.forward(values)), values, atol=1e-9)
    assert np.sum(moved.forward(values) ** 2) < np.sum(layout.forward(values) ** 2)


def test_still_slices_keep_no_moves():
    values = np.repeat(moving_scan(slices=1), 8, axis=0)
    assert not motion.estimate(values).vectors.any()


def test_a_moved_payload_decodes_closer_at_about_equal_bytes():
    values = moving_scan(slices=12, size=96)
    moves = motion.estimate(values)
    plain = wavelet.fit(values, 6000, 0.01, lambda n: None)
    moved = wavelet.fit(values, 6000, 0.01, lambda n: None, moves=moves)
    assert plain is not None and moved is not None and moved[5] == motion.BLOCK

    def error(payload: bytes, with_moves: bool) -> float:
        return float(np.mean((wavelet.decompress(payload, values.shape, moved=with_moves) - values) ** 2))

    assert error(moved, True) < 0.8 * error(plain, False)
    read_back = wavelet.moves_of(moved, values.shape)  # what a refit around this payload reuses
    assert read_back.block == moves.block and np.array_equal(read_back.vectors, moves.vectors)


def test_damaged_motion_fields_are_format_errors(monkeypatch):
    values = moving_scan(slices=12, size=48)
    payload = wavelet.compress(values, 0.5, moves=motion.estimate(values))
    for block in (0, 12):
        with pytest.raises(FormatError, match=f"blocks of {block} pixels"):
            wavelet.decompress(payload[:5] + bytes([block]) + payload[6:], values.shape, moved=True)
    with pytest.raises(FormatError, match="CDF row 200"):
        wavelet.decompress(payload[:6] + bytes([200]) + payload[7:], values.shape, moved=True)
    with pytest.raises(FormatError, match="z is never split"):  # z waits past the last level
        wavelet.decompress(payload[:4] + bytes([5]) + payload[5:], values.shape, moved=True)
    with pytest.raises(FormatError, match="z is never split"):
        wavelet.decompress(payload, (4, 48, 48), moved=True)  # too few slices to split
    with pytest.raises(FormatError):  # z waits a level: a field of a quarter as many blocks
        wavelet.decompress(payload[:4] + bytes([1]) + payload[5:], values.shape, moved=True)
    # a move past MAX_RADIUS, written by an encoder that allowed more
    far = motion.grid(values.shape, 32)
    monkeypatch.setattr(motion, "MAX_RADIUS", 12)
    wide = wavelet.compress(values, 0.5, moves=motion.Field(32, np.full((*far, 2), 11)))
    monkeypatch.undo()
    with pytest.raises(FormatError, match="past 8 pixels"):
        wavelet.decompress(wide, values.shape, moved=True)
