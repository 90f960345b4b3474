import numpy as np
import pytest
from scipy import ndimage

from deepstd import postfilter
from deepstd.errors import FormatError


def _blurred_pair(seed=0, shape=(12, 20, 18)):
    """An original with edges and noise, and a smoothed, noisier copy (what a wavelet coder leaves)."""
    rng = np.random.default_rng(seed)
    original = np.zeros(shape)
    original[3:9, 4:15, 5:13] = 100.0
    original += rng.normal(0, 3, shape)
    decoded = ndimage.gaussian_filter(original, 1.0) + rng.normal(0, 2, shape)
    return decoded.astype(np.float32), original.astype(np.float32)


@pytest.mark.parametrize("bands", postfilter.SCHEDULE)
def test_the_fitted_filter_takes_the_decoded_scan_closer(bands):
    decoded, original = _blurred_pair()
    section = postfilter.fit(decoded, original, bands)
    assert section[:3] == bytes([postfilter.VERSION, *bands])
    filtered = postfilter.apply(decoded, section)
    before = np.mean((decoded - original) ** 2)
    after = np.mean((filtered - original) ** 2)
    assert after < 0.8 * before


def test_apply_is_the_point_symmetric_diamond_the_section_states():
    decoded, original = _blurred_pair(seed=1)
    section = postfilter.fit(decoded, original, (1, 1))
    weights = postfilter.parse(section)[1][0]
    kernel = np.zeros((5, 5, 5))
    kernel[2, 2, 2] = weights[0]
    for w, (dz, dy, dx) in zip(weights[1:], postfilter.PAIRS):
        kernel[2 + dz, 2 + dy, 2 + dx] = kernel[2 - dz, 2 - dy, 2 - dx] = w
    reference = ndimage.correlate(decoded.astype(np.float64), kernel, mode="nearest")
    np.testing.assert_allclose(postfilter.apply(decoded, section), reference, rtol=0, atol=1e-9)
    assert len(postfilter.PAIRS) == 12 and postfilter.TAPS == 13


def test_classes_are_equal_parts_by_activity_and_intensity_with_ties_in_a_fixed_order():
    decoded = np.zeros((6, 8, 10), np.float32)  # mostly flat: most voxels tie
    decoded[2:4, 2:6, 3:7] = 50
    decoded[0, 0, :] = np.arange(10)
    labels = postfilter._classes(decoded, (4, 1))
    assert np.bincount(labels.ravel()).tolist() == [120, 120, 120, 120]
    np.testing.assert_array_equal(labels, postfilter._classes(decoded.copy(), (4, 1)))
    activity = sum(np.abs(g) for g in np.gradient(decoded.astype(np.float64)))
    assert activity[labels == 3].min() >= activity[labels == 0].max()
    crossed = postfilter._classes(decoded, (2, 4))
    assert np.bincount(crossed.ravel(), minlength=8).sum() == decoded.size and crossed.max() <= 7
    intensity = crossed % 4
    assert decoded[intensity == 3].min() >= decoded[intensity == 0].max()
    np.testing.assert_array_equal(crossed // 4, postfilter._classes(decoded, (2, 1)))


def test_a_scan_one_voxel_thick_along_an_axis_is_filtered():
    decoded, original = _blurred_pair(shape=(1, 20, 18))
    section = postfilter.fit(decoded, original, (2, 2))
    assert np.mean((postfilter.apply(decoded, section) - original) ** 2) < np.mean((decoded - original) ** 2)


def test_a_flat_class_keeps_the_identity_instead_of_wild_weights():
    decoded, original = _blurred_pair(seed=2)
    decoded[:, :, :6] = 7.0  # a constant slab: its terms are collinear, the fit there is degenerate
    original[:, :, :6] = 7.0
    weights = postfilter.parse(postfilter.fit(decoded, original, (4, 2)))[1]
    assert np.abs(weights).max() < 4
    filtered = postfilter.apply(decoded, postfilter.fit(decoded, original, (4, 2)))
    assert np.mean((filtered - original) ** 2) <= np.mean((decoded - original) ** 2)


def test_the_filter_is_afforded_by_the_budget():
    assert postfilter.bands_for(695) is None and postfilter.bands_for(696) == (1, 1)
    for bands in postfilter.SCHEDULE:
        least = 72 + 624 * bands[0] * bands[1]
        assert postfilter.bands_for(least) == bands
        assert postfilter.bands_for(least - 1) != bands
    assert postfilter.bands_for(10**7) == (4, 16)
    sizes = [postfilter.reserved_size(bands) for bands in postfilter.SCHEDULE]
    assert sizes == sorted(sizes) and sizes[0] == 15


def test_a_malformed_section_is_a_format_error():
    good = postfilter.fit(*_blurred_pair(), (2, 1))
    with pytest.raises(FormatError, match="unsupported or truncated"):
        postfilter.parse(b"\x07" + good[1:])
    with pytest.raises(FormatError, match="unsupported or truncated"):
        postfilter.parse(good[:2])
    for bands in ((0, 1), (9, 1), (1, 0), (1, 17), (255, 255)):
        with pytest.raises(FormatError, match=f"{bands[0]} x {bands[1]} classes"):
            postfilter.parse(bytes([2, *bands]) + good[3:])
    with pytest.raises(FormatError, match="truncated coefficients"):
        postfilter.parse(good[:-1])
    with pytest.raises(FormatError, match="past the coefficients"):
        postfilter.parse(good + b"\x00")
    with pytest.raises(FormatError, match="length does not fit"):
        postfilter.parse(good[:3])
    with pytest.raises(FormatError, match="length does not fit"):
        postfilter.parse(good[:4] + bytes(10_000))
    with pytest.raises(FormatError, match="orders"):
        postfilter.parse(good[:3] + b"\x80" + good[4:])
    with pytest.raises(FormatError, match="too long"):
        postfilter.parse(bytes([2, 1, 1, 0]) + bytes(3) + b"\xff" * 20)  # 24 zeros: a prefix past any code
    with pytest.raises(FormatError, match="coefficient code of"):  # prefix 17, order 0: a value of 2^16
        postfilter.parse(bytes([2, 1, 1, 0]) + bytes(2) + b"\x40\x00\x00" + b"\xff" * 10)
    padded = bytearray(postfilter.fit(*_blurred_pair(seed=3), (1, 1)))
    if padded[-1] & 1 == 0:  # a set padding bit (where the last bit is padding)
        padded[-1] |= 1
        with pytest.raises(FormatError):
            postfilter.parse(bytes(padded))
    # version 1 (int16 in 1/4096): exactly 3 + 26 per class; any coefficients give finite values
    with pytest.raises(FormatError, match="expected for 1 x 1 classes"):
        postfilter.parse(bytes([1, 1, 1]) + bytes(25))
    extreme = bytes([1, 1, 1]) + b"\xff\x7f" * postfilter.TAPS
    assert np.isfinite(postfilter.apply(np.full((4, 5, 6), 3.0e38, np.float32), extreme)).all()
    largest = postfilter._coded((1, 1), np.full((1, postfilter.TAPS), -postfilter.MAX_CODE))
    assert np.isfinite(postfilter.apply(np.full((4, 5, 6), 3.0e38, np.float32), largest)).all()


def test_the_coded_weights_are_the_fitted_ones_on_steps_of_1_512_and_1_128():
    decoded, original = _blurred_pair(seed=4)
    codes = np.array([[37, -5, 0, 12, -1, 1, 0, 0, 3, -128, 2, 0, 7], [0] * postfilter.TAPS])
    section = postfilter._coded((2, 1), codes)
    weights = postfilter.parse(section)[1]
    np.testing.assert_array_equal(weights[1], np.eye(postfilter.TAPS)[0])  # zero codes: the identity
    np.testing.assert_array_equal(weights[0, 1:], codes[0, 1:] / 128)
    assert weights[0, 0] + 2 * weights[0, 1:].sum() == 1 + 37 / 512  # the gain
    np.testing.assert_array_equal(postfilter._codes(weights[0]), codes[0])
    fitted = postfilter.fit(decoded, original, (2, 1))
    assert len(fitted) < 3 + 2 * 26  # smaller than the int16 section (on real scans under half)


def test_a_version_1_section_still_filters_as_it_states():
    decoded, _ = _blurred_pair(seed=6)
    weights = np.zeros((2, postfilter.TAPS))
    weights[:, 0] = [0.5, 1.0]
    weights[0, 1:] = 0.5 / 12  # 1/2 centre + the pairs' mean
    section = bytes([1, 1, 2]) + np.round(weights * 4096).astype("<i2").tobytes()
    bands, parsed = postfilter.parse(section)
    assert bands == (1, 2)
    np.testing.assert_array_equal(parsed, np.round(weights * 4096) / 4096)
    labels = postfilter._classes(decoded, (1, 2))
    np.testing.assert_array_equal(postfilter.apply(decoded, section), postfilter._filtered(decoded, labels, parsed))


@pytest.mark.parametrize("bands", [2, 3, 4, 8, 16])
def test_bands_are_a_stable_ranking_split_in_equal_parts(bands):
    rng = np.random.default_rng(bands)
    for values in (
        rng.normal(size=(7, 9, 11)).astype(np.float32),
        rng.integers(0, 4, size=(7, 9, 11)).astype(np.float32),  # long runs of ties across bands
        np.zeros((3, 4, 5), np.float32),
    ):
        expected = np.empty(values.size, np.uint8)
        for band, part in enumerate(np.array_split(np.argsort(values.ravel(), kind="stable"), bands)):
            expected[part] = band
        np.testing.assert_array_equal(postfilter._ranked(values, bands).ravel(), expected)


def test_the_encoder_tries_the_afforded_filter_and_the_next_fewer_classes():
    assert postfilter.choices_for(600) == [None]
    assert postfilter.choices_for(696) == [(1, 1), None]
    assert postfilter.choices_for(10**7) == [(4, 16), (4, 8)]


@pytest.mark.parametrize("bands", [(1, 1), (2, 4), (4, 16)])
def test_fit_and_apply_is_fit_then_apply(bands):
    decoded, original = _blurred_pair(seed=5)
    section, filtered = postfilter.fit_and_apply(decoded, original, bands)
    assert section == postfilter.fit(decoded, original, bands)
    np.testing.assert_array_equal(filtered, postfilter.apply(decoded, section))
