"""Metrics agree with the field's reference implementations on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from skimage.metrics import structural_similarity

from deepstd import InputError, metrics


@pytest.fixture
def pair():
    rng = np.random.default_rng(3)
    a = rng.normal(300, 80, (12, 20, 24)).astype(np.float32)
    b = a + rng.normal(0, 15, a.shape).astype(np.float32)
    return a, b


def test_ssim_equals_scikit_image(pair):
    a, b = pair
    expected = structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=float(a.max() - a.min()))
    assert metrics.ssim(a, b) == pytest.approx(expected, abs=1e-6)
    assert metrics.ssim(a, a) == pytest.approx(1.0)


def test_psnr_uses_real_data_range_not_dtype_max(pair):
    a, b = pair
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    assert metrics.psnr(a, b) == pytest.approx(10 * np.log10(float(np.ptp(a)) ** 2 / mse), rel=1e-6)
    assert metrics.psnr(a, b) < metrics.psnr(a, b, data_range=65535)  # the dtype max flatters
    assert metrics.psnr(a, a) == float("inf")


def test_mae_and_residue(pair, oblique_volume):
    a, b = pair
    assert metrics.mae(a, b) == pytest.approx(np.mean(np.abs(a.astype(np.float64) - b)))
    decoded = oblique_volume.with_array(oblique_volume.array + 2.0)
    res = metrics.residue(oblique_volume, decoded)
    assert res.same_grid(oblique_volume) and np.all(res.array == -2.0) and res.dtype == "float32"
    with pytest.raises(InputError, match="shapes"):
        metrics.mae(a, b[:-1])


def _sphere(shape, center, radius):
    zz, yy, xx = np.indices(shape)
    return ((zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2) <= radius**2


def test_dice_matches_simpleitk_and_known_answer():
    a = np.zeros((10, 10, 10), np.uint8)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = 1  # 64 voxels
    b[4:8, 2:6, 2:6] = 1  # overlap 32 voxels
    assert metrics.dice(a, b) == pytest.approx(0.5)
    f = sitk.LabelOverlapMeasuresImageFilter()
    f.Execute(sitk.GetImageFromArray(a), sitk.GetImageFromArray(b))
    assert metrics.dice(a, b, label=1) == pytest.approx(f.GetDiceCoefficient())
    assert metrics.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_hd95_known_shift_with_anisotropic_spacing():
    a = np.zeros((30, 30, 30), bool)
    a[10:20, 10:20, 10:20] = True
    b = np.roll(a, 3, axis=0)  # shift 3 voxels along z
    spacing = (0.5, 0.5, 2.0)  # (x, y, z): z voxels are 2 mm
    assert metrics.hd95(a, b, spacing) == pytest.approx(6.0)
    f = sitk.HausdorffDistanceImageFilter()
    ia, ib = sitk.GetImageFromArray(a.astype(np.uint8)), sitk.GetImageFromArray(b.astype(np.uint8))
    for image in (ia, ib):
        image.SetSpacing(spacing)
    f.Execute(ia, ib)
    assert metrics.hd95(a, b, spacing) <= f.GetHausdorffDistance() + 1e-9


def test_hd95_spheres_against_simpleitk_surface_distances():
    a, b = _sphere((40, 40, 40), (20, 20, 20), 10), _sphere((40, 40, 40), (20, 22, 20), 10)
    ia, ib = (sitk.GetImageFromArray(m.astype(np.uint8)) for m in (a, b))
    dist_a = sitk.Abs(sitk.SignedMaurerDistanceMap(ia, squaredDistance=False, useImageSpacing=True))
    dist_b = sitk.Abs(sitk.SignedMaurerDistanceMap(ib, squaredDistance=False, useImageSpacing=True))
    surf_a = sitk.GetArrayFromImage(sitk.LabelContour(ia)) > 0
    surf_b = sitk.GetArrayFromImage(sitk.LabelContour(ib)) > 0
    # Maurer distances are to the boundary between voxels; ours to boundary voxel centres: ≤ 1 voxel apart
    reference = np.percentile(
        np.concatenate([sitk.GetArrayFromImage(dist_b)[surf_a], sitk.GetArrayFromImage(dist_a)[surf_b]]), 95
    )
    assert abs(metrics.hd95(a, b) - reference) <= 1.0
    assert metrics.hd95(a, a) == 0.0
    assert metrics.hd95(a, np.zeros_like(a)) == float("inf")


def test_ssim_in_slabs_equals_the_whole_volume():
    """The slab-wise SSIM (bounded memory) gives the whole-volume value, whatever the slab."""
    rng = np.random.default_rng(5)
    a = rng.normal(100, 30, (37, 21, 18)).astype(np.float32)
    b = a + rng.normal(0, 8, a.shape).astype(np.float32)
    whole = metrics.ssim(a, b, slab=10_000)
    seen = []
    for slab in (1, 5, 16):
        assert metrics.ssim(a, b, slab=slab, progress=seen.append) == pytest.approx(whole, rel=1e-12)
    assert seen[-1] == pytest.approx(1.0)
    expected = structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=float(a.max() - a.min()))
    assert whole == pytest.approx(expected, abs=1e-6)
