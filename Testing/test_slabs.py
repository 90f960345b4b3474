"""Coding along z first (`deepstd.slabs`): the z bands tile and invert exactly, a scan whose slices
repeat their detail decodes closer than under the 3-D coder, and untrusted payloads give the scan's
shape or a FormatError."""

from __future__ import annotations

import numpy as np
import pytest

from deepstd import slabs, wavelet
from deepstd.container import varint
from deepstd.errors import FormatError


def _repeating(shape, seed=0) -> np.ndarray:
    """In-plane detail that every slice keeps, drifting slowly, with a little noise of its own:
    what a CT reconstructed with a smooth kernel looks like along z."""
    rng = np.random.default_rng(seed)
    detail = rng.normal(0, 60, shape[1:])
    drift = np.linspace(0, 1, shape[0])[:, None, None] * rng.normal(0, 20, shape[1:])
    return (detail + drift + rng.normal(0, 2, shape)).astype(np.float32)


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 8, 19, 20, 64])
def test_the_z_bands_tile_the_slices_and_invert_exactly(depth):
    x = np.random.default_rng(depth).normal(size=(depth, 9, 11))
    bands = slabs.forward(x)
    sizes = slabs.band_sizes(depth)
    assert [len(b) for b in bands] == [n for n, _, _ in sizes] and sum(len(b) for b in bands) == depth
    assert len(bands[0]) == 1 and not sizes[0][2] and all(high for _, _, high in sizes[1:])
    assert [splits for _, splits, _ in sizes[1:]] == sorted((s for _, s, _ in sizes[1:]), reverse=True)
    np.testing.assert_allclose(slabs.inverse(bands), x, rtol=0, atol=1e-9)


def test_slices_that_repeat_their_detail_decode_closer_than_under_the_3d_coder():
    x = _repeating((20, 64, 64))
    for spare in (3000, 12000):
        along_z = slabs.fit(x, spare, 0.01, lambda n: None)
        three_d = wavelet.fit(x, spare, 0.01, lambda n: None)
        assert along_z is not None and three_d is not None and 0.99 * spare <= len(along_z) <= spare
        error = float(np.mean((slabs.decompress(along_z, x.shape) - x) ** 2))
        assert error < 0.8 * float(np.mean((wavelet.decompress(three_d, x.shape) - x) ** 2))


def test_a_step_costs_the_same_in_every_z_band_and_decoding_is_deterministic():
    x = _repeating((12, 32, 40), seed=3)
    coarse, fine = (slabs.compress(x, step) for step in (8.0, 2.0))
    assert len(fine) > len(coarse)
    errors = [float(np.sqrt(np.mean((slabs.decompress(p, x.shape) - x) ** 2))) for p in (coarse, fine)]
    assert errors[1] < errors[0] < 8.0
    # each band is coded at the common step over its synthesis norm
    parts = slabs._split(fine, x.shape)
    norms = [wavelet.norm_1d(splits, high) for _, splits, high in slabs.band_sizes(len(x))]
    for (part, _), norm in zip(parts, norms):
        assert wavelet.step_of(part) == pytest.approx(2.0 / norm, rel=1e-6)
    assert slabs.decompress(fine, x.shape).tobytes() == slabs.decompress(fine, x.shape).tobytes()


def test_a_refit_from_a_nearby_payload_takes_few_codings():
    x = _repeating((10, 40, 40), seed=4)
    first = slabs.fit(x, 5000, 0.005, lambda n: None)
    codings: list = []
    again = slabs.fit(x, 5200, 0.005, codings.append, near=first)
    assert again is not None and 0.995 * 5200 <= len(again) <= 5200 and len(codings) <= 3
    assert slabs.fit(x, 50, 0.005, lambda n: None) is None


def _with_byte(payload: bytes, at: int, value: int) -> bytes:
    return payload[:at] + bytes([value]) + payload[at + 1 :]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p, parts: p[:2], "z band|truncated"),
        (lambda p, parts: varint(10**6) + p, "z band length"),
        (lambda p, parts: varint(len(parts[0][0]) + 1) + p[len(varint(len(parts[0][0]))) :], "refinement layer"),
        (lambda p, parts: p + b"\x00" * 4, "entropy-coded string"),
        # a band payload that splits z: the encoder never writes one
        (lambda p, parts: _with_byte(p, 4 + len(varint(len(parts[0][0]))), 0), "in-plane"),
    ],
)
def test_damaged_payloads_are_refused(damage, message):
    x = _repeating((6, 24, 24), seed=5)
    payload = slabs.compress(x, 4.0)
    with pytest.raises(FormatError, match=message):
        slabs.decompress(damage(payload, slabs._split(payload, x.shape)), x.shape)


def test_coherence_says_how_much_of_a_slices_detail_the_next_one_repeats():
    rng = np.random.default_rng(6)
    assert slabs.coherence(_repeating((12, 32, 32))) > 0.95 > slabs.COHERENT
    unrelated = rng.normal(0, 50, (12, 32, 32)).cumsum(axis=2)  # smooth along x, new in every slice
    assert abs(slabs.coherence(unrelated)) < 0.1
    # smoothness along z alone is not detail: a ramp along z has none
    ramp = np.broadcast_to(np.arange(12.0)[:, None, None], (12, 32, 32))
    assert slabs.coherence(ramp) == 0.0 and slabs.coherence(unrelated[:1]) == 0.0
