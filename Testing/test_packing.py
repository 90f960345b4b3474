"""Field-by-field binary streams (`deepstd.packing`): exact encodings, round trips of every field
type, and the errors a damaged stream must raise (FormatError, never a wrong value or a crash)."""

from __future__ import annotations

import math
import struct

import pytest

from deepstd.errors import FormatError
from deepstd.packing import Packer, Unpacker

UINTS = [0, 1, 127, 128, 255, 300, 16383, 16384, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1]
SINTS = [0, 1, -1, 2, -2, 63, -64, 64, -65, 2**40, -(2**40), 2**62, -(2**62)]


@pytest.mark.parametrize(
    "value, encoded",
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"), (16384, b"\x80\x80\x01")],
)
def test_uint_is_leb128(value, encoded):
    assert Packer().uint(value).bytes() == encoded
    assert Unpacker(encoded).uint() == value


@pytest.mark.parametrize(
    "value, encoded",
    [(0, b"\x00"), (-1, b"\x01"), (1, b"\x02"), (-2, b"\x03"), (63, b"\x7e"), (-64, b"\x7f"), (64, b"\x80\x01")],
)
def test_sint_is_zigzag_leb128(value, encoded):
    assert Packer().sint(value).bytes() == encoded
    assert Unpacker(encoded).sint() == value


def test_integers_round_trip():
    p = Packer()
    for v in UINTS:
        p.uint(v)
    for v in SINTS:
        p.sint(v)
    u = Unpacker(p.bytes())
    assert [u.uint() for _ in UINTS] == UINTS
    assert [u.sint() for _ in SINTS] == SINTS
    assert u.blob() == b""  # everything was consumed


def test_float64_round_trips_bit_exactly():
    values = [0.0, -0.0, 1.5, -1e-300, 1e300, math.pi, float("inf"), float("-inf"), 5e-324]
    p = Packer()
    for v in values:
        p.float64(v)
    data = p.bytes()
    assert len(data) == 8 * len(values) and data[:8] == struct.pack("<d", 0.0)
    u = Unpacker(data)
    back = [u.float64() for _ in values]
    assert [struct.pack("<d", v) for v in back] == [struct.pack("<d", v) for v in values]  # -0.0 kept
    assert math.isnan(Unpacker(Packer().float64(float("nan")).bytes()).float64())


def test_shape_round_trips_and_a_different_shape_is_refused():
    data = Packer().shape((3, 300, 1)).bytes()
    assert data == b"\x03\xac\x02\x01"
    assert Unpacker(data).shape((3, 300, 1)) == (3, 300, 1)
    with pytest.raises(FormatError, match=r"\(3, 300, 1\).*expected \(3, 300, 2\)"):
        Unpacker(data).shape((3, 300, 2))
    with pytest.raises(FormatError):
        Unpacker(data).shape((3, 300, 1, 1))  # one more axis than was written


@pytest.mark.parametrize(
    "blobs", [[], [b""], [b"only"], [b"a", b"", b"ccc"], [b"", b""], [b"\x00" * 200, b"tail"], [bytes(range(256))] * 3]
)
def test_blobs_round_trip(blobs):
    data = Packer().uint(7).blobs(blobs).bytes()
    u = Unpacker(data)
    assert u.uint() == 7
    assert u.blobs() == list(blobs)
    # count, then the lengths of all but the last: the last runs to the end of the stream
    assert len(data) == 1 + len(Packer().uint(len(blobs)).bytes()) + sum(
        len(Packer().uint(len(b)).bytes()) for b in blobs[:-1]
    ) + sum(len(b) for b in blobs)


def test_a_mixed_stream_round_trips_from_bytes_bytearray_and_memoryview():
    p = Packer().shape((5, 6, 7)).float64(-2.25).sint(-12345).blobs([b"one", b"two"])
    assert isinstance(p, Packer)  # every writer chains
    data = p.bytes()
    for view in (data, bytearray(data), memoryview(data)):
        u = Unpacker(view)
        assert u.shape((5, 6, 7)) == (5, 6, 7)
        assert u.float64() == -2.25 and u.sint() == -12345
        assert u.blobs() == [b"one", b"two"]
    assert Unpacker(Packer().uint(1).blob(b"payload").bytes()).blob() == b"\x01payload"
    u = Unpacker(Packer().uint(1).blob(b"payload").bytes())
    assert u.uint() == 1 and u.blob() == b"payload" and u.blob() == b""


def test_negative_uint_is_refused():
    with pytest.raises(ValueError):
        Packer().uint(-1)


def test_every_truncation_raises_format_error():
    data = Packer().shape((500, 2, 70000)).float64(1.0).sint(-99999).blobs([b"abc", b"defg", b"h"]).bytes()
    for n in range(len(data)):
        u = Unpacker(data[:n], what="test stream")
        try:
            u.shape((500, 2, 70000))
            u.float64()
            u.sint()
            blobs = u.blobs()
        except FormatError as exc:
            assert "test stream" in str(exc) and "truncated" in str(exc)
            continue
        # the last blob has no length, so a cut inside it reads short; no earlier cut may pass
        assert n == len(data) - 1 and blobs == [b"abc", b"defg", b""], n


def test_overlong_varint_is_malformed_not_huge():
    with pytest.raises(FormatError, match="malformed varint"):
        Unpacker(b"\xff" * 10 + b"\x01").uint()
    with pytest.raises(FormatError, match="truncated"):
        Unpacker(b"\xff" * 9).uint()
    with pytest.raises(FormatError, match="truncated"):
        Unpacker(b"").float64()
    with pytest.raises(FormatError, match="truncated"):
        Unpacker(b"\x02\x05ab").blobs()  # first blob claims 5 bytes, 2 left
