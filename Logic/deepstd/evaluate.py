"""Encode, decode and measure one scan: the round trip `bench`, `demo` and `batch` share.

`round_trip` codes a volume with DeepSTD (`deepstd.codec.encode`), decodes the bytes
(`deepstd.codec.decode`) and measures the decoded voxels against the original with `measure`:
PSNR and SSIM over the original's real data range and MAE, all in original units
(`deepstd.metrics`). `measure` also serves results decoded by other means (the peer codecs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from .volume import Volume


def measure(original: np.ndarray, decoded: np.ndarray) -> Dict[str, float]:
    """{"psnr", "ssim", "mae"} of `decoded` against `original` (same grid, original units)."""
    from . import metrics

    return {
        "psnr": metrics.psnr(original, decoded),
        "ssim": metrics.ssim(original, decoded),
        "mae": metrics.mae(original, decoded),
    }


@dataclass
class RoundTrip:
    """One scan coded and (unless skipped) decoded and measured."""

    #: the `.dstd` file's bytes
    data: bytes
    #: seconds in `codec.encode`
    encode_s: float
    #: the decoded volume, None when decoding was skipped
    decoded: Optional[Volume] = None
    #: seconds in `codec.decode`, None when decoding was skipped
    decode_s: Optional[float] = None
    #: `measure` of the decoded volume against the original, None when decoding was skipped
    metrics: Optional[Dict[str, float]] = None

    @property
    def warnings(self) -> List[str]:
        """What the decoder noted about the file (empty when decoding was skipped)."""
        return [] if self.decoded is None else list(self.decoded.meta.get("warnings", []))


def round_trip(
    volume: Volume,
    bundle,
    ratio: Optional[float] = None,
    budget_bytes: Optional[int] = None,
    decode: bool = True,
    device: str = "auto",
    workers: Optional[int] = None,
    progress=None,
    cancel=None,
    effort: int = 0,
    require_texture: bool = False,
) -> RoundTrip:
    """Encode `volume` with `bundle` at `ratio` (or within `budget_bytes`), then, with `decode`,
    decode it on the same `device` / `workers` and measure it.

    `progress` and `cancel` apply to the encode. Errors of `codec.encode` (a BudgetError when the
    budget is out of reach) propagate."""
    from . import codec

    t0 = time.perf_counter()
    data = codec.encode(
        volume,
        bundle,
        ratio=ratio,
        budget_bytes=budget_bytes,
        device=device,
        workers=workers,
        progress=progress,
        cancel=cancel,
        effort=effort,
        require_texture=require_texture,
    )
    encode_s = time.perf_counter() - t0
    if not decode:
        return RoundTrip(data, encode_s)
    t1 = time.perf_counter()
    decoded = codec.decode(data, bundle, device=device, workers=workers)
    decode_s = time.perf_counter() - t1
    return RoundTrip(data, encode_s, decoded, decode_s, measure(volume.array, decoded.array))


__all__ = ["RoundTrip", "round_trip", "measure"]
