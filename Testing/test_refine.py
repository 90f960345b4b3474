"""The refinement layer: SPERR fills the budget the texture codec cannot use, and its untrusted
bytes never reach SPERR's decoder unchecked or in our process."""

from __future__ import annotations

import numpy as np
import pytest

from deepstd import refine
from deepstd.errors import FormatError, InputError

pytestmark = pytest.mark.skipif(refine.unavailable_reason() is not None, reason=str(refine.unavailable_reason()))

SHAPE = (12, 20, 24)


@pytest.fixture(scope="module")
def residual() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.normal(0, 5, SHAPE).astype(np.float32).cumsum(axis=2)


def test_fit_fills_the_spare_bytes_and_more_bytes_code_it_better(residual):
    errors = []
    for spare in (400, 1600, 6400):
        section = refine.fit(residual, spare, 0.01, lambda n: None)
        assert section is not None and 0.97 * spare <= len(section) <= spare
        decoded = refine.decompress(section, SHAPE)
        errors.append(float(np.sqrt(np.mean((decoded - residual) ** 2))))
    assert errors[0] > errors[1] > errors[2]


def _headed(residual: np.ndarray, bpp: float) -> bytes:
    """A version 1 section (SPERR's own header kept), as files before 0.6 hold them."""
    import imagecodecs

    stream = imagecodecs.sperr_encode(residual, bpp, mode="bpp", chunks=residual.shape, numthreads=1)
    return bytes([refine.HEADED_VERSION]) + bytes(stream)


def test_a_section_stores_no_sperr_header_and_old_sections_still_decode(residual):
    """Version 3 drops SPERR's 18-byte header and compacts the chunk's 26-byte prelude; the decoder
    rebuilds the very stream SPERR wrote. Versions 2 (the stream whole) and 1 (header kept) decode."""
    section, headed = refine.compress(residual, 1.0), _headed(residual, 1.0)
    assert section[0] == refine.VERSION and len(section) <= len(headed) - 18 - 5
    assert refine.check(section, SHAPE) == headed[1:]
    whole = bytes([refine.WHOLE_VERSION]) + headed[19:]
    assert refine.check(whole, SHAPE) == headed[1:]
    decoded = refine.decompress(section, SHAPE)
    assert np.array_equal(decoded, refine.decompress(headed, SHAPE))
    assert np.array_equal(decoded, refine.decompress(whole, SHAPE))


def test_a_constant_field_keeps_its_stream_whole():
    """SPERR codes a constant field in a 17-byte chunk of another prelude: stored as version 2."""
    flat = np.full(SHAPE, 3.5, np.float32)
    section = refine.compress(flat, 1.0)
    assert section[0] == refine.WHOLE_VERSION
    assert np.array_equal(refine.decompress(section, SHAPE), flat)


def test_a_section_is_checked_against_the_scan_before_decoding(residual):
    with pytest.raises(FormatError, match="version"):
        refine.decompress(b"\x09" + refine.compress(residual, 1.0)[1:], SHAPE)
    with pytest.raises(FormatError, match="truncated"):
        refine.decompress(bytes([refine.VERSION]), SHAPE)
    with pytest.raises(FormatError, match="truncated"):
        refine.decompress(refine.compress(residual, 1.0)[:12], SHAPE)
    with pytest.raises(FormatError, match="bit count"):
        refine.decompress(bytes([refine.VERSION]) + bytes(16) + b"\xff" * 6 + b"\x7f", SHAPE)
    headed = _headed(residual, 1.0)
    with pytest.raises(FormatError, match="coded for 24x20x12 voxels"):
        refine.decompress(headed, (12, 20, 25))
    with pytest.raises(FormatError, match="length"):
        refine.decompress(headed[:-3], SHAPE)
    with pytest.raises(FormatError, match="truncated"):
        refine.decompress(headed[:10], SHAPE)
    with pytest.raises(FormatError, match="single-chunk"):
        refine.decompress(headed[:2] + b"\x70" + headed[3:], SHAPE)


def test_crafted_streams_that_abort_sperr_are_format_errors(residual):
    """SPERR's decoder aborts the process on some streams with a valid header (found by fuzzing);
    the child process turns that into a FormatError, and every mutation gives an array or one."""
    section = bytearray(refine.compress(residual, 2.0))
    rng = np.random.default_rng(20261205)
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(24):
        mutated = bytearray(section)
        if rng.random() < 0.5:
            for position in rng.integers(1, len(mutated), 8):
                mutated[position] = int(rng.integers(256))
        else:  # random payload behind the header the decoder rebuilds: what aborted SPERR in the fuzz runs
            mutated = mutated[:1] + bytes(rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8))
        try:
            values = refine.decompress(bytes(mutated), SHAPE)
            assert values.shape == SHAPE and np.isfinite(values).all()
            outcomes["decoded"] += 1
        except FormatError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0  # the aborting streams are among them


def test_decoding_without_sperr_says_what_is_missing(residual, monkeypatch):
    section = refine.compress(residual, 1.0)
    monkeypatch.setattr(refine, "unavailable_reason", lambda: "the imagecodecs package is not installed")
    with pytest.raises(InputError, match="refinement layer.*imagecodecs"):
        refine.decompress(section, SHAPE)
