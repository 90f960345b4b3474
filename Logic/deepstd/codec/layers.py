"""Layers on top of the DeepSTD layer: a keep mask coded within ±E inside the byte budget, and a
maximum-error residual that bounds every voxel. Both code the difference to exactly what the
decoder computes (`Decoder.base`) from the bytes it will read.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Optional

import numpy as np

from .. import grid
from ..bundle import Bundle, resolve_bundle
from ..container import unpack
from ..errors import InputError
from ..numbers import number_at_least
from ..progress import Reporter
from ..volume import Volume, cast_to_dtype
from .decoder import Decoder, add_residual
from .encoder import EncodedScan, prepare
from .header import DstdHeader

#: texture rates tried for the DeepSTD layer under a maximum-error residual (the smallest file wins)
MAX_ERROR_RATES = (0.0, 0.5, 1.0)


def keep_mask(volume: Volume, keep: Volume, keep_error: float) -> np.ndarray:
    """The boolean (z, y, x) mask of the label map's voxels > 0, checked against the scan's grid
    (a mask that is off by a voxel would keep the wrong tissue) and the bound."""
    if not isinstance(keep, Volume):
        raise InputError("a keep mask is a label map (a Volume) on the scan's grid")
    if tuple(keep.size) != tuple(volume.size):
        raise InputError(
            f"the keep label map is {'x'.join(map(str, keep.size))} voxels, the scan {'x'.join(map(str, volume.size))}"
        )
    if not (
        np.allclose(keep.spacing, volume.spacing, atol=1e-3)
        and np.allclose(keep.origin, volume.origin, atol=1e-2)
        and np.allclose(keep.direction, volume.direction, atol=1e-4)
    ):
        raise InputError("the keep label map's geometry (spacing, origin, direction) differs from the scan's")
    mask = keep.array > 0
    if not mask.any():
        raise InputError("the keep mask is empty (no voxel above 0)")
    integer = np.dtype(volume.dtype).kind in "iu"
    number_at_least(keep_error, 0, "the keep mask's error bound")
    if not integer and keep_error <= 0:
        raise InputError(f"a lossless keep mask needs integer voxels; this scan is {volume.dtype}: give a bound > 0")
    return mask


class KeepLayer:
    """The DeepSTD layer plus, inside the keep mask, the residual within ±bound: packs the whole file
    at a texture rate. Only the mask's bounding box is reconstructed per rate (a region decode)."""

    def __init__(
        self, scan: EncodedScan, bundle: Bundle, header: DstdHeader, volume: Volume, mask: np.ndarray, bound: float
    ):
        from .. import keepmask, residual

        self.scan, self.header, self.bound = scan, header, bound
        box = grid.bounding_box(mask)
        assert box is not None  # keep_mask refused an empty mask
        self.box = box
        inside = grid.slices(self.box, grid.whole(volume.size))
        self.mask = mask[inside]
        self.original = cast_to_dtype(volume.array[inside], volume.dtype).astype(np.float64)[self.mask]
        self.step = residual.step_for(bound, np.dtype(volume.dtype).kind in "iu")
        self.mask_bytes = keepmask.compress(mask)
        self.view = Decoder(bundle, header, scan.shape, self.box, scan.codec, scan.workers)

    def pack(self, rate: float) -> bytes:
        from .. import residual

        streams = self.scan.streams(rate)
        base = self.view.base(streams)[0][self.mask]
        q = residual.quantise(self.original - base, self.bound, self.step)
        return self.scan.file(
            self.header, streams, {"keep/mask": self.mask_bytes, "keep/residual": residual.compress(q, base, self.step)}
        )


def encode_max_error(volume: Volume, bundle, max_error, device, workers, progress, cancel) -> bytes:
    """DeepSTD layer + residual layer with |error| <= max_error everywhere; the base layer's rate
    is the one that makes the whole file smallest. The result is decoded and checked before return."""
    from .. import residual

    number_at_least(max_error, 0, "the maximum error")
    integer = np.dtype(volume.dtype).kind in "iu"
    if not integer and max_error <= 0:
        raise InputError(
            f"a lossless bound needs integer voxels; this scan is {volume.dtype}: give a positive --max-error"
        )
    bundle = resolve_bundle(bundle)
    reporter = Reporter(progress, cancel)
    scan = prepare(volume, bundle, None, device, workers, reporter)
    step = residual.step_for(float(max_error), integer)
    header = replace(scan.header, max_error=float(max_error))
    original = cast_to_dtype(volume.array, volume.dtype).astype(np.float64)
    # the decoder's view of the DeepSTD layer, from the same bytes and header it will read; the
    # backward map does not depend on the rate, so it is evaluated once
    view = Decoder(bundle, header, scan.shape, None, scan.codec, workers)
    best: Optional[tuple] = None
    for k, rate in enumerate(MAX_ERROR_RATES):
        reporter("entropy", 0.85 + 0.15 * k / len(MAX_ERROR_RATES), f"residual layer at texture rate {rate:g}")
        streams = scan.streams(rate)
        base, _ = view.base(streams)
        q = residual.quantise(original - base, float(max_error), step)
        data = scan.file(header, streams, {"residual": residual.compress(q, base, step)})
        if best is None or len(data) < len(best[0]):
            best = (data, base)
    assert best is not None
    data, base = best
    # check the bound on what the decoder computes from the stored residual section
    restored = add_residual(base, unpack(data).sections["residual"], header.max_error, volume.dtype)
    worst = float(np.max(np.abs(restored - original)))
    if worst > max_error + (0 if integer else 1e-6 * max(1.0, float(np.ptp(original)))):
        raise RuntimeError(f"internal error: the residual layer missed its bound ({worst} > {max_error})")
    reporter(
        "write",
        1.0,
        f"{len(data)} bytes ({volume.raw_bytes / len(data):.2f}x), max error {worst:g}, "
        f"in {time.perf_counter() - scan.started:.1f} s",
    )
    return data


__all__ = ["keep_mask", "KeepLayer", "encode_max_error", "MAX_ERROR_RATES"]
