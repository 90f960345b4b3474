"""The INR anchor (`inr-siren`): the width comes from the budget without fitting, the stream fits
it, decoding is deterministic and bounded, more bytes give less error, and corrupt streams raise
`FormatError` and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
from codec_helpers import blob_volume

from deepstd.errors import FormatError
from deepstd.peers import PEERS, PeerBudgetError, get, inr
from deepstd.peers.inr import InrSiren, architecture, parameter_count, stream_size

#: Few steps keep the tests fast; quality still rises clearly with the width.
FAST = dict(steps=150, batch=2048)


@pytest.fixture(scope="module")
def volume():
    return blob_volume((24, 20, 16), (1.0, 1.0, 2.0), dtype="uint16")


@pytest.fixture(scope="module")
def coded(volume, one_thread):
    """(peer, budget, stream) at 6x."""
    peer = InrSiren(**FAST)
    budget = volume.raw_bytes // 6
    return peer, budget, peer.encode(volume, budget)


def error(volume, decoded) -> float:
    return float(np.sqrt(np.mean((decoded.astype(np.float64) - volume.array) ** 2)))


def test_registered_and_available():
    peer = get("inr-siren")
    assert isinstance(peer, InrSiren) and PEERS["inr-siren"] is peer
    assert peer.unavailable_reason() is None and not peer.lossless
    assert "\n" not in peer.summary


def test_architecture_is_the_largest_that_fits():
    shape = (88, 148, 200)
    for budget in (500, 2_000, 20_350, 40_700, 123_457):
        widths = architecture(shape, budget)
        assert stream_size(shape, widths) <= budget
        w, v = widths[0], widths[-1]
        assert widths[:-1] == [w] * (len(widths) - 1) and w <= v <= 2 * w
        assert stream_size(shape, [w + 1] * len(widths)) > budget  # no wider uniform net fits
        assert stream_size(shape, widths[:-1] + [v + 1]) > budget or v == 2 * w
        # Widening the last layer fills the budget to within one step of w + 2 parameters.
        assert budget - stream_size(shape, widths) < 2 * (w + 2) + 8
    assert architecture(shape, stream_size(shape, [inr.MIN_WIDTH] * inr.DEPTH) - 1) is None
    assert parameter_count([5, 7]) == (3 * 5 + 5) + (5 * 7 + 7) + (7 + 1)


def test_stream_fits_budget_and_decodes_deterministically(volume, coded):
    peer, budget, data = coded
    assert len(data) <= budget and len(data) > 0.95 * budget
    assert len(data) == stream_size(volume.array.shape, peer.last_widths)
    assert peer.last_fit_seconds > 0
    first, second = peer.decode(data, volume), peer.decode(data, volume)
    assert first.shape == volume.array.shape and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    assert np.all(np.isfinite(first))
    # A fresh adapter decodes the same stream to the same voxels (nothing kept from the fit).
    np.testing.assert_array_equal(InrSiren().decode(data, volume), first)


def test_decode_in_chunks_equals_one_pass(volume, coded, monkeypatch):
    peer, _, data = coded
    whole = peer.decode(data, volume)
    monkeypatch.setattr(inr, "CHUNK", 777)
    np.testing.assert_allclose(peer.decode(data, volume), whole, rtol=1e-5, atol=1e-3)


def test_fitting_is_reproducible(volume, coded, one_thread):
    peer, budget, data = coded
    assert InrSiren(**FAST).encode(volume, budget) == data


def test_more_bytes_give_less_error(volume, coded, one_thread):
    peer, budget, data = coded
    small = InrSiren(**FAST)
    low = small.encode(volume, volume.raw_bytes // 24)
    assert len(low) <= volume.raw_bytes // 24
    assert small.last_widths[0] < peer.last_widths[0]
    assert error(volume, peer.decode(data, volume)) < 0.8 * error(volume, small.decode(low, volume))
    # and the fit is far better than the mean alone
    assert error(volume, peer.decode(data, volume)) < 0.5 * float(np.std(volume.array))


def test_budget_below_the_smallest_network_is_refused(volume):
    smallest = stream_size(volume.array.shape, [inr.MIN_WIDTH] * inr.DEPTH)
    with pytest.raises(PeerBudgetError) as raised:
        InrSiren(**FAST).encode(volume, smallest - 1)
    assert raised.value.smallest_bytes == smallest
    with pytest.raises(PeerBudgetError):
        get("inr-siren").encode(volume, 16)


def test_corrupt_streams_raise_format_error_only(volume, coded):
    peer, _, data = coded
    rng = np.random.default_rng(1)
    header = len(data) - 2 * parameter_count(peer.last_widths)
    cuts = sorted(set(range(0, header + 3)) | set(rng.integers(0, len(data), 20).tolist()))
    for cut in cuts:
        with pytest.raises(FormatError):
            peer.decode(data[:cut], volume)
    with pytest.raises(FormatError):
        peer.decode(data + b"\0", volume)
    # Bit flips: in the header most change the layout or a value (and must be refused or decode
    # to finite voxels); in the weights they decode to other finite voxels or are refused.
    positions = list(range(header)) + rng.integers(header, len(data), 30).tolist()
    for at in positions:
        for bit in (0, 3, 6, 7):
            broken = bytearray(data)
            broken[at] ^= 1 << bit
            try:
                out = peer.decode(bytes(broken), volume)
            except FormatError:
                continue
            assert out.shape == volume.array.shape and np.all(np.isfinite(out))


def test_decoding_onto_another_grid_is_refused(volume, coded):
    from deepstd import Volume

    peer, _, data = coded
    with pytest.raises(FormatError, match="expected"):
        peer.decode(data, Volume(np.zeros((16, 20, 25), np.float32), dtype="uint16"))
