"""Quality metrics between an original and a decoded scan, and agreement between label maps.

PSNR and SSIM take the *volume's real data range* (max − min of the original), never the dtype
maximum: a uint16 MR using 0..1200 would otherwise be scored against 65535 and every codec would
look ~35 dB better than it is; a CT stored as int16 but spanning -1024..3000 HU likewise. Using the
real range makes numbers comparable across scans, scanners and the peer codecs in the benchmark.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .errors import InputError
from .volume import Volume

#: planes per SSIM slab (`ssim`): bounded memory whatever the volume's size
SSIM_SLAB = 16


def _pair(a, b):
    a = np.asarray(a.array if isinstance(a, Volume) else a, dtype=np.float64)
    b = np.asarray(b.array if isinstance(b, Volume) else b, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"cannot compare volumes of shapes {a.shape} and {b.shape}")
    return a, b


def _range_of(a: np.ndarray, data_range: Optional[float]) -> float:
    value = float(a.max()) - float(a.min()) if data_range is None else float(data_range)
    return value if value > 0 else 1.0


def mae(original, decoded) -> float:
    """Mean absolute error in original units (HU, grey levels)."""
    a, b = _pair(original, decoded)
    return float(np.mean(np.abs(a - b)))


def max_abs_error(original, decoded) -> float:
    """Largest absolute voxel error in original units."""
    a, b = _pair(original, decoded)
    return float(np.max(np.abs(a - b)))


def psnr(original, decoded, data_range: Optional[float] = None) -> float:
    """Peak signal-to-noise ratio in dB against the original's real data range (inf if identical)."""
    a, b = _pair(original, decoded)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(_range_of(a, data_range) ** 2 / mse))


def ssim(original, decoded, data_range: Optional[float] = None, slab: int = SSIM_SLAB, progress=None) -> float:
    """3D SSIM (7×7×7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance), real data range.

    These are scikit-image's defaults for `structural_similarity` on a 3-D array, so the value equals
    `skimage.metrics.structural_similarity(a, b, data_range=range)`; volumes thinner than 7 voxels
    along an axis use the largest odd window that fits. Computed `slab` planes (first axis) at a
    time with a halo of half a window, which gives the whole-volume value exactly (the filters only
    reach that far) in bounded memory: a 512×512×300 CT needs ~0.4 GB instead of ~6 GB.
    `progress(fraction)` is called after each slab (it may raise to cancel).
    """
    from scipy.ndimage import uniform_filter

    a0 = np.asarray(original.array if isinstance(original, Volume) else original)
    b0 = np.asarray(decoded.array if isinstance(decoded, Volume) else decoded)
    if a0.shape != b0.shape:
        raise InputError(f"cannot compare volumes of shapes {a0.shape} and {b0.shape}")
    win = min(7, *[(n if n % 2 else n - 1) for n in a0.shape])
    if win < 3:
        raise InputError(f"SSIM needs at least 3 voxels along every axis, got {a0.shape}")
    r = _range_of(a0, data_range)
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    n = win**a0.ndim
    cov_norm = n / (n - 1.0)
    mean = lambda x: uniform_filter(x, size=win)  # noqa: E731 - local shorthand
    pad = (win - 1) // 2
    rest = tuple(slice(pad, dim - pad) for dim in a0.shape[1:])
    total, count, first, last = 0.0, 0, pad, a0.shape[0] - pad
    for z0 in range(first, last, max(1, int(slab))):
        z1 = min(z0 + max(1, int(slab)), last)
        a = a0[z0 - pad : z1 + pad].astype(np.float64)
        b = b0[z0 - pad : z1 + pad].astype(np.float64)
        ux, uy = mean(a), mean(b)
        vx = cov_norm * (mean(a * a) - ux * ux)
        vy = cov_norm * (mean(b * b) - uy * uy)
        vxy = cov_norm * (mean(a * b) - ux * uy)
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        core = s[(slice(pad, pad + z1 - z0),) + rest]
        total, count = total + float(core.sum()), count + core.size
        if progress is not None:
            progress((z1 - first) / max(1, last - first))
    return total / count


def residue(original: Volume, decoded: Volume) -> Volume:
    """original − decoded on the original's grid, as a float32 volume (what the codec lost)."""
    a, b = _pair(original, decoded)
    return original.with_array((a - b).astype(np.float32), dtype="float32")


def _labels(a, b, label: Optional[int]):
    a = np.asarray(a.array if isinstance(a, Volume) else a)
    b = np.asarray(b.array if isinstance(b, Volume) else b)
    if a.shape != b.shape:
        raise InputError(f"cannot compare label maps of shapes {a.shape} and {b.shape}")
    if label is None:
        return a > 0, b > 0
    return a == label, b == label


def dice(a, b, label: Optional[int] = None) -> float:
    """Dice overlap of one label (or of all foreground when `label` is None); 1.0 if both empty."""
    ma, mb = _labels(a, b, label)
    total = int(ma.sum()) + int(mb.sum())
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(ma, mb).sum() / total)


def hd95(a, b, spacing: Sequence[float] = (1.0, 1.0, 1.0), label: Optional[int] = None) -> float:
    """95th-percentile symmetric surface distance in mm (spacing in ITK (x, y, z) order).

    Surfaces are the boundary voxels of each mask; distances come from exact Euclidean distance
    transforms with the real anisotropic spacing. 0.0 if both masks are empty, inf if one is.
    """
    from scipy import ndimage

    ma, mb = _labels(a, b, label)
    if not ma.any() and not mb.any():
        return 0.0
    if not ma.any() or not mb.any():
        return float("inf")
    zyx_spacing = tuple(float(s) for s in spacing)[::-1]

    def surface(mask):
        return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3, 3), bool), border_value=0)

    sa, sb = surface(ma), surface(mb)
    to_b = ndimage.distance_transform_edt(~sb, sampling=zyx_spacing)
    to_a = ndimage.distance_transform_edt(~sa, sampling=zyx_spacing)
    distances = np.concatenate([to_b[sa], to_a[sb]])
    return float(np.percentile(distances, 95))


def summary(original: Volume, decoded: Volume) -> dict:
    """The numbers every report shows, computed once."""
    return {
        "mae": mae(original, decoded),
        "max_abs_error": max_abs_error(original, decoded),
        "psnr": psnr(original, decoded),
        "ssim": ssim(original, decoded),
    }
