"""The refinement layer: the wavelet coder fills the budget the texture codec cannot use; the SPERR
sections of older files still decode, and their untrusted bytes never reach SPERR's decoder
unchecked or in our process."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
from codec_helpers import sperr_section

from deepstd import codec, refine, wavelet
from deepstd.container import unpack
from deepstd.errors import FormatError, InputError

CORPUS = Path(__file__).parent / "fuzz_corpus"

needs_sperr = pytest.mark.skipif(refine.unavailable_reason() is not None, reason=str(refine.unavailable_reason()))

SHAPE = (12, 20, 24)
ISOTROPIC = (1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def residual() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.normal(0, 5, SHAPE).astype(np.float32).cumsum(axis=2)


def test_fit_fills_the_spare_bytes_and_more_bytes_code_it_better(residual):
    errors = []
    for spare in (400, 1600, 6400):
        section = refine.fit(residual, ISOTROPIC, spare, 0.01, lambda n: None)
        assert section is not None and 0.99 * spare <= len(section) <= spare
        assert section[0] == refine.VERSION == 7
        decoded = refine.decompress(section, SHAPE)
        assert decoded.dtype == np.float32 and decoded.shape == SHAPE
        errors.append(float(np.sqrt(np.mean((decoded - residual) ** 2))))
    assert errors[0] > errors[1] > errors[2]


def test_a_search_started_from_a_nearby_section_needs_fewer_codings(residual):
    tries = []
    first = refine.fit(residual, ISOTROPIC, 3000, 0.002, tries.append)
    alone = len(tries)
    tries.clear()
    again = refine.fit(residual, ISOTROPIC, 2900, 0.002, tries.append, near=first)
    assert again is not None and 0.998 * 2900 <= len(again) <= 2900
    assert len(tries) < alone


def test_the_smallest_section_is_below_any_fitted_one(residual):
    smallest = refine.smallest(residual)
    assert len(smallest) < 60
    assert refine.fit(residual, ISOTROPIC, len(smallest) - 1, 0.01, lambda n: None) is None
    np.testing.assert_array_equal(refine.decompress(smallest, SHAPE), 0)


def test_thick_slices_are_coded_three_or_four_ways_and_the_closest_section_kept(residual, monkeypatch):
    """z splitting late, from the start, from the start with slice motion (`deepstd.motion`), and
    where the slices repeat their in-plane detail, along z first (`deepstd.slabs`)."""
    from deepstd import motion, slabs

    def choice(section: bytes) -> tuple:
        if section[0] == refine.SLABS_VERSION:  # z bands: no delays of its own
            return None, section[0]
        return wavelet.delays_of(refine.payload_of(section)[4])[0], section[0]

    thick = (3.6, 0.6, 0.6)

    def sections(values: np.ndarray) -> list:
        spare = 1600 - len(refine.section_of(values, b""))
        moves = motion.estimate(values)
        coded = [
            refine.section_of(
                values,
                wavelet.fit(values, spare, 0.01, lambda n: None, delays=d, moves=m),
                refine.PLAIN if m is None else refine.MOVED,
            )
            for d, m in (((2, 0, 0), None), ((0, 0, 0), None), ((0, 0, 0), moves))
        ]
        return coded + [refine.section_of(values, slabs.fit(values, spare, 0.01, lambda n: None), refine.SLABBED)]

    # the fixture's slices are unrelated: three candidates
    assert slabs.coherence(residual) < slabs.COHERENT
    candidates = sections(residual)
    assert [c[0] for c in candidates] == [7, 7, 8, 9]  # a section says by its version how it was coded
    errors = [float(np.mean((refine.decompress(c, SHAPE) - residual) ** 2)) for c in candidates]
    assert len(set(errors)) == 4 and errors[3] > min(errors[:3])  # nor would z first have been closer
    assert refine.fit(residual, thick, 1600, 0.01, lambda n: None) == candidates[int(np.argmin(errors[:3]))]
    # slices that repeat their detail: four, and z first is kept
    repeating = (residual[:1] + np.random.default_rng(8).normal(0, 0.5, SHAPE)).astype(np.float32)
    assert slabs.coherence(repeating) > slabs.COHERENT
    coherent = sections(repeating)
    errors = [float(np.mean((refine.decompress(c, SHAPE) - repeating) ** 2)) for c in coherent]
    assert refine.fit(repeating, thick, 1600, 0.01, lambda n: None) == coherent[int(np.argmin(errors))] == coherent[3]
    # an isotropic scan has one candidate: every axis from the start, no motion
    assert choice(refine.fit(repeating, (1.2, 0.6, 0.6), 1600, 0.01, lambda n: None)) == (0, refine.VERSION)
    # a nearby section of the scan settles the delays, the motion or the z bands: one coding, the
    # same choice, and its moves are read back from it, not estimated again
    monkeypatch.setattr(motion, "estimate", lambda *a, **k: pytest.fail("motion estimated again"))
    for values, chosen in [*((residual, c) for c in candidates[:3]), (repeating, coherent[3])]:
        tries = []
        again = refine.fit(values, thick, 1500, 0.01, tries.append, near=chosen)
        assert choice(again) == choice(chosen) and len(tries) < 6


def test_candidates_coded_side_by_side_give_the_same_section_and_forward_progress(residual, monkeypatch):
    thick = (3.6, 0.6, 0.6)
    alone = refine.fit(residual, thick, 1600, 0.01, lambda n: None, workers=1)
    tries: list = []
    assert refine.fit(residual, thick, 1600, 0.01, tries.append, workers=3) == alone
    assert len(tries) >= 3 and tries == sorted(tries)  # three searches, one count that never goes back
    # where the machine's memory holds one candidate's coding at a time, they are coded one by one
    monkeypatch.setattr(refine.memory, "limit_bytes", lambda: refine.FIT_BYTES_PER_VOXEL * residual.size)
    monkeypatch.setattr(refine, "ThreadPoolExecutor", lambda *a: pytest.fail("coded side by side"))
    assert refine.fit(residual, thick, 1600, 0.01, lambda n: None, workers=3) == alone


def test_a_wavelet_section_decodes_without_sperr(residual, monkeypatch):
    section = refine.fit(residual, ISOTROPIC, 800, 0.01, lambda n: None)
    monkeypatch.setattr(refine, "unavailable_reason", lambda: "the imagecodecs package is not installed")
    assert refine.decompress(section, SHAPE).shape == SHAPE


def test_a_wavelet_section_that_decodes_to_non_finite_values_is_refused(residual):
    section = refine.fit(residual, ISOTROPIC, 800, 0.01, lambda n: None)
    payload = bytearray(refine.payload_of(section))
    payload[:4] = struct.pack("<f", 3.0e38)  # the quantiser step: any code but 0 overflows
    old = bytearray(unpack((CORPUS / "legacy_refine_4.dstd").read_bytes()).sections["refine"])
    old[1:5] = struct.pack("<f", 3.0e38)  # a version 4 section: the payload (an older encoder's) alone
    for damaged in (refine.section_of(residual, bytes(payload)), bytes(old)):
        with pytest.raises(FormatError, match="non-finite"):
            refine.decompress(damaged, SHAPE)


def test_sections_of_the_versions_before_sign_coding_decode_as_they_did():
    """Versions 4 to 6 code every sign in the signed rows; their seeds (written by the encoders
    of the tenth and eleventh sessions) decode to what that session's decoder gave (digests of
    the decoded arrays, taken with it)."""
    digests = {4: "7f9f92cf459abb16", 5: "d55508bda44c557c", 6: "609ec981bc7a0bc2"}
    for version, digest in digests.items():
        data = (CORPUS / f"legacy_refine_{version}.dstd").read_bytes()
        assert unpack(data).sections["refine"][0] == version
        decoded = np.ascontiguousarray(codec.decode(data, None, device="cpu", workers=1).array)
        assert hashlib.sha256(decoded.tobytes()).hexdigest()[:16] == digest


def test_decoded_values_stay_within_the_coded_range():
    """A wavelet coder rings past a sharp edge; the section's range clips it (air is -1024 HU)."""
    rng = np.random.default_rng(3)
    body = np.full(SHAPE, -1024.0, np.float32)
    body[3:9, 5:15, 6:18] = rng.normal(40, 30, (6, 10, 12)).astype(np.float32)
    section = refine.fit(body, ISOTROPIC, 700, 0.01, lambda n: None)
    payload = refine.payload_of(section)
    clipped = refine.decompress(section, SHAPE)
    unclipped = wavelet.decompress(payload, SHAPE).astype(np.float32)
    assert unclipped.min() < -1024 and unclipped.max() > body.max() + 1  # the ringing the range removes
    assert clipped.min() == -1024 and clipped.max() <= np.ceil(body.max())
    np.testing.assert_array_equal(clipped, np.clip(unclipped, -1024, np.ceil(body.max())))
    assert np.mean((clipped - body) ** 2) < np.mean((unclipped - body) ** 2)
    # a range past 2**53 is no bound on that side; the filter's output is clipped like the layer
    huge = refine.section_of(np.array([-1e300, 5.5]), payload)
    free = refine.decompress(huge, SHAPE)
    assert free.min() == unclipped.min() and free.max() == min(unclipped.max(), 6)
    assert refine.within_range(np.array([-2e3, 7.0]), huge).tolist() == [-2e3, 6.0]


def test_a_damaged_range_is_refused(residual):
    payload = refine.payload_of(refine.fit(residual, ISOTROPIC, 800, 0.01, lambda n: None))
    with pytest.raises(FormatError, match="range from 3 to -2"):
        refine.decompress(bytes([refine.VERSION, 6, 3]) + payload, SHAPE)
    with pytest.raises(FormatError, match="maximum"):
        refine.decompress(bytes([refine.VERSION, 6]) + b"\xff" * 9 + b"\x7f" + payload, SHAPE)
    with pytest.raises(FormatError, match="truncated"):
        refine.decompress(bytes([refine.VERSION, 0x80]), SHAPE)


@needs_sperr
def test_old_sperr_sections_of_every_version_still_decode(residual):
    import imagecodecs

    stream = bytes(imagecodecs.sperr_encode(residual, 1.0, mode="bpp", chunks=SHAPE, numthreads=1))
    headed, whole, compact = bytes([1]) + stream, bytes([2]) + stream[18:], sperr_section(residual, 1.0)
    assert refine.check(compact, SHAPE) == stream == refine.check(whole, SHAPE) == refine.check(headed, SHAPE)
    decoded = refine.decompress(compact, SHAPE)
    assert np.array_equal(decoded, refine.decompress(headed, SHAPE))
    assert np.array_equal(decoded, refine.decompress(whole, SHAPE))
    assert float(np.sqrt(np.mean((decoded - residual) ** 2))) < 0.5 * float(np.std(residual))


@needs_sperr
def test_a_sperr_section_is_checked_against_the_scan_before_decoding(residual):
    with pytest.raises(FormatError, match="unsupported version 10"):
        refine.decompress(b"\x0a" + sperr_section(residual, 1.0)[1:], SHAPE)
    with pytest.raises(FormatError, match="truncated"):
        refine.decompress(bytes([refine.SPERR_VERSION]), SHAPE)
    with pytest.raises(FormatError):
        refine.decompress(sperr_section(residual, 1.0)[:12], SHAPE)
    with pytest.raises(FormatError, match="bit count"):  # a varint past MAX_CHUNK_BITS
        refine.decompress(bytes([refine.SPERR_VERSION]) + bytes(16) + b"\xff" * 6 + b"\x7f", SHAPE)
    import imagecodecs

    headed = bytes([1]) + bytes(imagecodecs.sperr_encode(residual, 1.0, mode="bpp", chunks=SHAPE, numthreads=1))
    with pytest.raises(FormatError, match="coded for 24x20x12 voxels"):
        refine.decompress(headed, (12, 20, 25))
    with pytest.raises(FormatError, match="length does not match"):
        refine.decompress(headed[:-3], SHAPE)
    with pytest.raises(FormatError, match="truncated"):
        refine.decompress(headed[:10], SHAPE)
    with pytest.raises(FormatError, match="not a single-chunk"):
        refine.decompress(headed[:2] + b"\x70" + headed[3:], SHAPE)


@needs_sperr
def test_crafted_streams_that_abort_sperr_are_format_errors(residual):
    """SPERR's decoder aborts the process on some streams with a valid header (found by fuzzing);
    the child process turns that into a FormatError, and every mutation gives an array or one."""
    section = bytearray(sperr_section(residual, 2.0))
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


@needs_sperr
def test_decoding_sperr_without_it_says_what_is_missing(residual, monkeypatch):
    section = sperr_section(residual, 1.0)
    monkeypatch.setattr(refine, "unavailable_reason", lambda: "the imagecodecs package is not installed")
    with pytest.raises(InputError, match="refinement layer.*imagecodecs"):
        refine.decompress(section, SHAPE)
