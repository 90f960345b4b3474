"""The context-modelled wavelet coder: an exact transform, a model the decoder rebuilds bit for bit
from integers, and untrusted payloads that give an array of the scan's shape or a FormatError."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys

import numpy as np
import pytest

from deepstd import rans, wavelet
from deepstd.errors import FormatError


def _scan(shape, seed=0) -> np.ndarray:
    """Smooth structure with edges and noise, like an MR crop."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    body = 400.0 * ((x / 0.7) ** 2 + (y / 0.6) ** 2 + (z / 0.8) ** 2 < 1) + 100 * np.sin(5 * x) * np.cos(4 * y)
    return (body + rng.normal(0, 8, shape)).astype(np.float32)


@pytest.mark.parametrize("shape", [(1, 20, 30), (9, 13, 17), (7, 7, 7), (8, 8, 8), (33, 40, 51), (2, 64, 3)])
def test_the_transform_inverts_exactly_on_any_shape(shape):
    layout = wavelet.Layout(shape)
    x = np.random.default_rng(1).normal(size=shape)
    np.testing.assert_allclose(layout.inverse(layout.forward(x)), x, rtol=0, atol=1e-9)
    # the bands tile the volume once, and an axis shorter than MIN_LENGTH is never split
    covered = np.zeros(shape, np.int64)
    for _, _, region in layout.bands():
        covered[region] += 1
    assert (covered == 1).all()
    for split, size in zip(layout.splits, layout.sizes):
        assert all(not s or n >= wavelet.MIN_LENGTH for s, n in zip(split, size))


def test_levels_stop_at_the_shortest_splittable_axis_and_at_max_levels():
    assert wavelet.Layout((7, 7, 7)).levels == 0
    assert wavelet.Layout((34, 43, 47)).levels == 3
    assert wavelet.Layout((88, 147, 183)).levels == 5
    assert wavelet.Layout((1, 512, 512)).splits[0] == (False, True, True)
    delayed = wavelet.Layout((20, 320, 320), delays=(2, 0, 0))
    assert [split[0] for split in delayed.splits] == [False, False, True, True, False]
    assert delayed.sizes[-1] == (5, 10, 10)
    assert wavelet.Layout((5, 64, 64), delays=(0, 2, 2)).splits == [(False, True, True)] * 3  # z too short


def test_a_thick_axis_waits_until_the_others_are_as_coarse():
    assert wavelet.delays_for((3.6, 0.6, 0.6)) == (2, 0, 0)  # 3.6 <= 2 x 0.6 x 4
    assert wavelet.delays_for((0.6, 3.0, 0.6)) == (0, 2, 0)
    assert wavelet.delays_for((1.0, 1.0, 1.0)) == (0, 0, 0) == wavelet.delays_for((2.0, 1.0, 1.0))
    assert wavelet.delays_for((2.5, 1.0, 1.0)) == (1, 0, 0)
    assert wavelet.delays_for((500.0, 1.0, 1.0)) == (5, 0, 0)  # never


def test_a_payload_says_where_each_axis_begins_to_split():
    x = _scan((16, 24, 20))
    payload = wavelet.compress(x, 2.0, delays=(2, 0, 1))
    assert payload[4] == 2 + 0 * 6 + 1 * 36
    y = wavelet.decompress(payload, x.shape)
    assert float(np.sqrt(np.mean((y - x) ** 2))) < 2.0
    with pytest.raises(FormatError, match="axis delays 216"):
        wavelet.decompress(payload[:4] + bytes([216]) + payload[5:], x.shape)


def test_a_payload_decodes_within_its_quantiser_step():
    x = _scan((16, 24, 20))
    for step in (0.5, 4.0, 32.0):
        y = wavelet.decompress(wavelet.compress(x, step), x.shape)
        assert y.shape == x.shape and y.dtype == np.float64
        assert float(np.sqrt(np.mean((y - x) ** 2))) < step
    sizes = [len(wavelet.compress(x, step)) for step in (0.5, 4.0, 32.0)]
    assert sizes == sorted(sizes, reverse=True)


def test_the_quantiser_weighs_bits_against_squared_error():
    """Where a row makes a nonzero value dear a small coefficient is coded as zero, where values are
    cheap as the nearest; past a row's alphabet the dead zone's code stands."""
    dear, cheap = 0, wavelet.ROWS - 1
    target = np.array([[0.7, 0.7], [5.2, 200.4]])
    assert wavelet._chosen(target, np.array([[dear, cheap], [40, cheap]])).tolist() == [[0, 1], [5, 200]]


def test_at_equal_bytes_weighing_bits_decodes_closer(monkeypatch):
    x = _scan((24, 32, 28), seed=2)

    def error() -> float:
        payload = wavelet.fit(x, 2500, 0.005, lambda n: None)
        return float(np.mean((wavelet.decompress(payload, x.shape) - x) ** 2))

    weighed = error()
    monkeypatch.setattr(wavelet, "LAMBDA", 1e-9)  # the nearest value, whatever it costs
    assert weighed < 0.97 * error()


def test_decoding_is_the_same_bit_for_bit_in_another_process():
    x = _scan((12, 18, 22), seed=3)
    payload = wavelet.compress(x, 3.0)
    here = wavelet.decompress(payload, x.shape)
    code = (
        "import sys, numpy as np; from deepstd import wavelet;"
        "sys.stdout.buffer.write(wavelet.decompress(sys.stdin.buffer.read(), (12, 18, 22)).tobytes())"
    )
    there = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, check=True).stdout
    assert here.tobytes() == there


def test_the_cdf_rows_are_the_same_integers_everywhere():
    """Built with `decimal` (correctly rounded on every platform): pinned, so that a platform that
    built other rows (and so could not decode our files) fails here."""
    cdf, length, offset = wavelet.cdf_rows()
    assert cdf.shape[0] == wavelet.ROWS
    digest = hashlib.sha256(b"".join(a.astype("<i8").tobytes() for a in (cdf, length, offset))).hexdigest()
    assert digest[:16] == PINNED_TABLE
    assert [wavelet.symbols_of(r) for r in (0, 24, 40, 63)] == [2, 12, 96, 96]
    thresholds = wavelet._thresholds()
    assert (np.diff(thresholds) > 0).all()
    rows = wavelet._rows(np.array([-5, 0, thresholds[0] - 1, thresholds[0], thresholds[-1], 10**15]))
    assert rows.tolist() == [0, 0, 0, 1, wavelet.ROWS - 1, wavelet.ROWS - 1]


PINNED_TABLE = "5e140e9c1ef7ee86"


def test_fit_lands_within_the_tolerance_under_the_spare_bytes():
    x = _scan((20, 30, 28), seed=5)
    for spare in (300, 1500, 6000):
        payload = wavelet.fit(x, spare, 0.005, lambda n: None)
        assert payload is not None and min(0.995 * spare, spare - 3) <= len(payload) <= spare
    assert wavelet.fit(x, 10, 0.005, lambda n: None) is None


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p[:3], "truncated|wavelet step"),
        (lambda p: struct.pack("<f", float("nan")) + p[4:], "quantiser step"),
        (lambda p: struct.pack("<f", -1.0) + p[4:], "quantiser step"),
        (lambda p: struct.pack("<f", 0.0) + p[4:], "quantiser step"),
        (lambda p: p[:5] + bytes([wavelet.ROWS]) + p[6:], "CDF row"),
        (lambda p: p[:6] + b"\xff" * 12 + p[18:], "weight"),
        (lambda p: p + b"\x01\x00\x00\x00", "entropy-coded string"),
        (lambda p: p[:-4], "entropy-coded string"),
    ],
)
def test_a_damaged_payload_is_a_format_error(damage, message):
    x = _scan((12, 16, 16), seed=2)
    payload = wavelet.compress(x, 2.0)
    with pytest.raises(FormatError, match=message):
        wavelet.decompress(damage(payload), x.shape)


def test_mutated_payloads_give_an_array_of_the_shape_or_a_format_error():
    x = _scan((10, 14, 18), seed=4)
    payload = wavelet.compress(x, 2.0)
    rng = np.random.default_rng(20261206)
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(300):
        mutated = bytearray(payload)
        for position in rng.integers(0, len(mutated), int(rng.integers(1, 6))):
            mutated[position] = int(rng.integers(256))
        try:
            assert wavelet.decompress(bytes(mutated), x.shape).shape == x.shape
            outcomes["decoded"] += 1
        except FormatError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["decoded"] + outcomes["refused"] == 300


def test_the_table_codes_through_the_exact_integer_coder():
    table = wavelet._table()
    rows = np.array([0, 10, 24, 40, 63, 63])
    symbols = np.array([0, -1, 5, -40, 96, 10**6])  # the last one escapes
    coder = rans.writer()
    table.push(coder, symbols, rows)
    reader = rans.reader(rans.written(coder))
    np.testing.assert_array_equal(table.pop(reader, rows), symbols)
    rans.finish(reader)
