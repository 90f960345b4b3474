"""Into the template frame and back (`deepstd.alignment`): the texture outside the scan's support,
the choice of texture frame (covering, compact, block size), the intensity map, and `ScanReader`
(coverage, and region reads equal to crops of whole reads) on small synthetic grids with an
identity or a small smooth backward field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from deepstd import alignment
from deepstd.alignment import (
    COMPACT_COVERAGE_LOSS,
    EXTENSION_DECAY,
    IntensityMap,
    ScanReader,
    block_for,
    compact_frame,
    covering_frame,
    extend_outside,
    intensity_map,
    texture_frame,
)
from deepstd.errors import BundleError
from deepstd.grid import Frame
from deepstd.shape import Siren

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
TEMPLATE = Frame((20, 18, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)


def identity_field() -> Siren:
    """A backward network with a zeroed output layer: u(q) = 0 everywhere."""
    net = Siren(width=8, depth=2)
    with torch.no_grad():
        net.out.weight.zero_()
        net.out.bias.zero_()
    return net


def smooth_field() -> Siren:
    """A small smooth deformation (up to ~2 mm on a 20-voxel template)."""
    torch.manual_seed(0)
    return Siren(width=16, depth=2, omega=4.0, out_scale=0.3)


def smooth_unit(shape, seed=0, sigma=3.0) -> np.ndarray:
    v = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    return ((v - v.min()) / (v.max() - v.min())).astype(np.float32)


# --- extend_outside ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def extended():
    unit = smooth_unit((12, 16, 96))
    support = np.zeros(unit.shape, bool)
    support[2:10, 3:13, 4:24] = True
    return unit, support, extend_outside(unit, support)


def test_extend_outside_keeps_the_support_and_is_finite(extended):
    unit, support, out = extended
    assert out.shape == unit.shape and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert np.array_equal(out[support], unit[support])


def test_extend_outside_continues_the_scan_at_its_edge(extended):
    """Next to the support the texture carries on from the nearest scan voxel (no step to 0)."""
    unit, support, out = extended
    distance, nearest = ndimage.distance_transform_edt(~support, return_indices=True)
    ring = (distance > 0) & (distance <= 1.5)
    edge = unit[tuple(nearest)][ring]
    assert np.abs(out[ring] - edge).mean() < 0.1 < np.abs(edge).mean()
    assert np.corrcoef(out[ring], edge)[0, 1] > 0.8


def test_extend_outside_fades_towards_zero_far_away(extended):
    unit, support, out = extended
    distance = ndimage.distance_transform_edt(~support)
    bound = np.abs(unit).max() * np.exp(-distance / EXTENSION_DECAY) + 1e-6
    assert np.all(np.abs(out) <= bound)  # never above the decay envelope
    far = distance > 40
    assert far.sum() > 1000 and np.abs(out[far]).max() < 0.01
    near = (distance > 0) & (distance < 3)
    assert np.abs(out[near]).mean() > 10 * np.abs(out[far]).mean()  # a fade, not a cut to zero


def test_extend_outside_with_all_or_no_support():
    unit = smooth_unit((6, 7, 8), seed=1) + 0.5
    assert np.array_equal(extend_outside(unit, np.ones(unit.shape, bool)), unit)
    none = extend_outside(unit, np.zeros(unit.shape, bool))
    assert none.shape == unit.shape and none.dtype == unit.dtype and not none.any()


# --- texture frame choice ------------------------------------------------------------------------
def test_block_for_codes_a_frame_that_fits_one_block_whole():
    assert block_for((64, 64, 64), 64) is None
    assert block_for((10, 64, 3), 64) is None
    assert block_for((65, 10, 10), 64) == 64
    assert block_for((10, 10, 65), 64) == 64
    assert block_for((500, 500, 500), None) is None


def test_texture_frame_pads_the_template_symmetrically():
    frame, margin = texture_frame(TEMPLATE)
    assert margin == [8, 8, 8]  # at least 8 voxels per side
    assert frame.size == (36, 34, 32) and frame.origin == (-8.0, -8.0, -8.0)
    wide, margin = texture_frame(Frame((200, 100, 1), (0.5, 0.5, 2.0), (0.0, 0.0, 0.0), IDENTITY))
    assert margin == [24, 12, 0] and wide.size == (248, 124, 1)  # 12 %, none on a single slice


def shifted_reader(shift_mm, scan_size=(20, 18, 16), frame=None):
    scan = Frame(scan_size, (1.0, 1.0, 1.0), tuple(float(s) for s in shift_mm), IDENTITY)
    return ScanReader(TEMPLATE, frame or texture_frame(TEMPLATE)[0], identity_field(), np.eye(4), scan)


def test_a_resampled_frame_keeps_its_box():
    frame = Frame((11, 21, 5), (2.0, 1.0, 3.0), (5.0, -3.0, 1.0), (0, 1, 0, -1, 0, 0, 0, 0, 1))
    fine = frame.resampled((31, 21, 13))
    assert fine.same_box(frame) and fine.spacing == (20 / 30, 1.0, 1.0)
    assert fine.resampled(frame.size) == frame


NO_PREALIGNMENT = np.eye(4)


def test_native_size_refines_only_the_axes_the_scan_samples_finer():
    template = Frame((158, 131, 145), (2.3, 2.3, 2.3), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ct = Frame((512, 512, 64), (0.84, 0.84, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    size, warning = alignment.native_size(template, ct, NO_PREALIGNMENT)
    assert warning is None and size[2] == 145  # 5 mm slices: the template's 2.3 mm is finer
    fine = template.resampled(size)
    assert all(s <= 0.84 + 1e-9 for s in fine.spacing[:2]) and all(s > 0.8 for s in fine.spacing[:2])
    # a coronal acquisition: rows along -z, 5 mm slices along y
    coronal = Frame((512, 512, 64), (0.84, 0.84, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 0, 1, 0, -1, 0))
    size, _ = alignment.native_size(template, coronal, NO_PREALIGNMENT)
    assert size[1] == 131 and size[0] > 400 and size[2] > 390
    mr = Frame((200, 150, 88), (0.625, 0.625, 0.625), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    same = Frame((223, 155, 88), (0.625, 0.625, 0.625), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert alignment.native_size(same, mr, NO_PREALIGNMENT) == (None, None)  # the template is fine enough
    # a pre-alignment that shrinks the template (scan mm per template mm < 1) asks for less
    assert alignment.native_size(template, ct, np.diag([0.3, 0.3, 1.0, 1.0]))[0] is None


def test_native_size_stays_within_the_voxel_cap_and_says_so(monkeypatch):
    monkeypatch.setattr(alignment, "MAX_NATIVE_FRAME_VOXELS", 5_000_000)
    template = Frame((158, 131, 145), (2.3, 2.3, 2.3), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ct = Frame((512, 512, 64), (0.84, 0.84, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    size, warning = alignment.native_size(template, ct, NO_PREALIGNMENT)
    assert np.prod(size) <= 5_000_000 and size[0] > 158
    assert "coarser than the scan's 0.84×0.84×5.00 mm" in warning


def test_covering_frame_widens_the_margins_until_a_shifted_scan_is_covered():
    frame, margin = texture_frame(TEMPLATE)
    reader = shifted_reader((15.0, -11.0, 0.0))  # reaches 15 mm past +x, 11 past -y
    assert reader.coverage(frame) < 0.7
    wider, wide_margin = covering_frame(TEMPLATE, margin, reader)
    assert reader.coverage(wider) == 1.0
    assert wider == TEMPLATE.padded(wide_margin)
    assert wide_margin[0] >= 15 + 1 and wide_margin[1] >= 11 + 1
    assert wide_margin[2] == margin[2]  # z was covered: left as it was
    assert wide_margin[0] <= 15 + 2 and wide_margin[1] <= 11 + 2  # and no wider than needed


def test_covering_frame_never_narrows():
    frame, margin = texture_frame(TEMPLATE)
    reader = shifted_reader((0.0, 0.0, 0.0))  # the template itself
    assert reader.coverage(frame) == 1.0
    assert covering_frame(TEMPLATE, margin, reader) == (frame, margin)
    big = [12, 9, 10]
    assert covering_frame(TEMPLATE, big, reader) == (TEMPLATE.padded(big), big)


def test_covering_frame_respects_max_frame_voxels(monkeypatch):
    frame, margin = texture_frame(TEMPLATE)
    reader = shifted_reader((30.0, 0.0, 0.0))
    unlimited, needed = covering_frame(TEMPLATE, margin, reader)
    assert reader.coverage(unlimited) == 1.0 and needed[0] > 30
    cap = int(np.prod(frame.size)) * 2  # room for only part of the widening
    monkeypatch.setattr(alignment, "MAX_FRAME_VOXELS", cap)
    capped, capped_margin = covering_frame(TEMPLATE, margin, reader)
    assert np.prod(capped.size) <= cap
    assert margin[0] < capped_margin[0] < needed[0]  # widened as far as the cap allows
    assert all(c >= m for c, m in zip(capped_margin, margin))
    assert reader.coverage(frame) < reader.coverage(capped) < 1.0
    monkeypatch.setattr(alignment, "MAX_FRAME_VOXELS", int(np.prod(frame.size)) - 1)
    assert covering_frame(TEMPLATE, margin, reader)[1] == margin  # even the default is over: unchanged


def test_compact_frame_takes_the_smallest_aligned_frame_that_keeps_the_coverage():
    template = Frame((41, 47, 42), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    seen = []

    def everything_covered(frame):
        seen.append(frame)
        return 1.0

    frame, margin = compact_frame(template, [8, 8, 8], everything_covered)
    assert margin == [3, 0, 3] and frame == template.padded(margin) and frame.size == (47, 47, 48)
    assert all(n <= m + 2 * 8 for f in seen for n, m in zip(f.size, template.size))  # never wider
    # a loss of coverage within the allowance is accepted, beyond it the default frame stays
    default = template.padded([8, 8, 8])
    small_loss = lambda f: 1.0 if f == default else 1.0 - COMPACT_COVERAGE_LOSS / 2  # noqa: E731
    assert compact_frame(template, [8, 8, 8], small_loss)[1] == [3, 0, 3]
    big_loss = lambda f: 1.0 if f == default else 1.0 - 2 * COMPACT_COVERAGE_LOSS  # noqa: E731
    assert compact_frame(template, [8, 8, 8], big_loss) == (default, [8, 8, 8])
    assert compact_frame(template, [0, 0, 0], everything_covered) == (template, [0, 0, 0])


# --- intensity map -------------------------------------------------------------------------------
def test_intensity_map_percentile_rule_and_round_trip():
    rng = np.random.default_rng(0)
    scan = rng.gamma(2.0, 300.0, size=(20, 30, 40)).astype(np.float32)
    mapping = intensity_map(scan)
    lo, hi = np.percentile(scan, [0.5, 99.5])
    assert mapping.lo == float(np.float32(lo)) and mapping.hi == float(np.float32(hi))
    unit = mapping.to_unit(scan)
    assert unit.dtype == np.float32
    assert np.mean(unit < 0) == pytest.approx(0.005, abs=1e-3) and np.mean(unit > 1) == pytest.approx(0.005, abs=1e-3)
    back = mapping.from_unit(unit)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, scan, rtol=0, atol=1e-3 * (hi - lo))
    assert IntensityMap.from_header(mapping.to_header()) == mapping  # JSON-exact floats
    import json

    assert IntensityMap.from_header(json.loads(json.dumps(mapping.to_header()))) == mapping


def test_intensity_map_window_rule_and_bad_input():
    scan = np.linspace(-1000, 1000, 1000, dtype=np.float32).reshape(10, 10, 10)
    mapping = intensity_map(scan, {"kind": "window", "low": -160.0, "high": 240.0})
    assert mapping == IntensityMap(-160.0, 240.0)
    np.testing.assert_allclose(mapping.to_unit(np.array([-160.0, 40.0, 240.0])), [0.0, 0.5, 1.0])
    flat = intensity_map(np.full((4, 4, 4), 7.0, np.float32))
    assert flat.hi == flat.lo + 1.0  # a constant scan still maps
    with pytest.raises(BundleError):
        intensity_map(scan, {"kind": "nonsense"})
    for header in (
        {"lo": 1.0, "hi": 1.0},
        {"lo": 2.0, "hi": 1.0},
        {"lo": float("nan"), "hi": 1.0},
        {"lo": 0.0, "hi": float("inf")},
    ):
        with pytest.raises(ValueError):
            IntensityMap.from_header(header)


# --- ScanReader ----------------------------------------------------------------------------------
def test_identity_mapping_covers_the_scan_and_reads_the_texture_back():
    frame, margin = texture_frame(TEMPLATE)
    reader = ScanReader(TEMPLATE, frame, identity_field(), np.eye(4), TEMPLATE)
    assert reader.coverage() == 1.0 and reader.coverage(TEMPLATE) == 1.0
    texture = np.random.default_rng(1).normal(size=frame.shape_zyx).astype(np.float32)
    mapping = IntensityMap(-2.0, 6.0)
    values, coverage = reader.read(reader.crop(texture), mapping)
    assert coverage == 1.0 and values.shape == TEMPLATE.shape_zyx and values.dtype == np.float32
    mx, my, mz = margin
    inner = texture[mz : mz + 16, my : my + 18, mx : mx + 20]  # template voxel i = frame voxel i + margin
    np.testing.assert_allclose(values, mapping.from_unit(inner), rtol=0, atol=1e-4)


def test_coverage_counts_the_voxels_that_read_outside():
    frame, _ = texture_frame(TEMPLATE)
    reader = shifted_reader((10.0, 0.0, 0.0), frame=TEMPLATE)  # the template as the frame: 10 of 20 columns out
    assert reader.coverage() == pytest.approx(0.5)
    texture = np.ones(TEMPLATE.shape_zyx, np.float32)
    values, coverage = reader.read(reader.crop(texture), IntensityMap(100.0, 200.0))
    assert coverage == pytest.approx(0.5)
    np.testing.assert_allclose(values[:, :, :10], 200.0, atol=1e-3)  # inside: the texture (1.0 -> hi)
    assert np.all(values[:, :, 10:] == 100.0)  # outside: the background (0.0 -> lo)


@pytest.fixture(scope="module")
def warped_reader():
    """A bigger template (so region boxes are proper parts of the frame), a smooth field, a
    translation pre-alignment and a scan grid of another spacing."""
    template = Frame((64, 56, 48), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    frame, _ = texture_frame(template)
    matrix = np.eye(4)
    matrix[:3, 3] = [1.3, -0.7, 0.4]
    scan = Frame((50, 40, 30), (1.1, 1.2, 1.3), (2.5, 1.0, 0.7), IDENTITY)
    torch.manual_seed(0)
    backward = Siren(width=16, depth=2, omega=4.0, out_scale=0.05)
    texture = smooth_unit(frame.shape_zyx, seed=2, sigma=2.0)
    mapping = IntensityMap(-3.0, 5.0)
    whole = ScanReader(template, frame, backward, matrix, scan)
    values, coverage = whole.read(whole.crop(texture), mapping)
    return template, frame, backward, matrix, scan, texture, mapping, values, coverage


@pytest.mark.parametrize(
    "window",
    [
        ((3, 2, 1), (15, 11, 8)),
        ((0, 0, 0), (1, 1, 1)),
        ((49, 39, 29), (50, 40, 30)),
        ((10, 0, 5), (11, 40, 6)),
        ((0, 0, 0), (50, 40, 30)),
    ],
)
def test_a_region_read_equals_the_crop_of_the_whole_read_exactly(warped_reader, window):
    template, frame, backward, matrix, scan, texture, mapping, whole_values, whole_coverage = warped_reader
    assert whole_coverage == 1.0 and np.std(whole_values) > 0.1  # the read is not trivial
    part = ScanReader(template, frame, backward, matrix, scan, window=window)
    (z0, y0, x0), (z1, y1, x1) = part.texture_box
    if window != ((0, 0, 0), (50, 40, 30)):
        assert (z1 - z0) * (y1 - y0) * (x1 - x0) < np.prod(frame.size)  # only part of the texture is read
    values, coverage = part.read(texture[z0:z1, y0:y1, x0:x1], mapping)
    (a0, b0, c0), (a1, b1, c1) = window
    assert coverage == 1.0
    assert np.array_equal(values, whole_values[c0:c1, b0:b1, a0:a1])


def test_native_size_spends_resolution_only_where_the_budget_pays_for_it():
    template = Frame((158, 131, 145), (2.3, 2.3, 2.3), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ct = Frame((512, 512, 64), (0.84, 0.84, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    full, _ = alignment.native_size(template, ct, NO_PREALIGNMENT)
    rich, _ = alignment.native_size(template, ct, NO_PREALIGNMENT, budget=10**8)
    assert rich == full
    budget = 10_000  # 80 kbit: 13 Mvoxel at the minimum bits per voxel, less than the native 22 Mvoxel
    fitted, warning = alignment.native_size(template, ct, NO_PREALIGNMENT, budget=budget)
    assert warning is None  # a rate decision, not a memory cap
    assert np.prod(fitted) <= 8 * budget / alignment.MIN_BITS_PER_FRAME_VOXEL < np.prod(full)
    assert all(f >= t for f, t in zip(fitted, template.size))  # never coarser than the template
    assert alignment.native_size(template, ct, NO_PREALIGNMENT, budget=100) == (None, None)
