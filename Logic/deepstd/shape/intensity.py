"""Intensity normalisation for registration only (the codec's own mapping lives elsewhere).

MR is unitless and scanner-dependent, so each scan is mapped by its own robust percentiles;
CT is in HU, so a fixed soft-tissue-to-bone window keeps the same tissue at the same value in
every scan. NCC is scale-invariant; the clipping is what matters (bright outliers, metal).
"""

from __future__ import annotations

import numpy as np

from ..volume import Volume

CT_WINDOW = (-1000.0, 1500.0)
MR_PERCENTILES = (0.5, 99.5)


def normalise(volume: Volume) -> np.ndarray:
    """float32 array in [0, 1]: a fixed HU window for CT, robust percentiles for everything else."""
    array = volume.array
    if volume.units == "HU":
        lo, hi = CT_WINDOW
    else:
        sample = array[:: max(1, array.shape[0] // 64)].ravel()
        lo, hi = np.percentile(sample, MR_PERCENTILES)
    if not hi > lo:
        hi = lo + 1.0
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
