"""The decoder: a `.dstd` byte string -> the Volume on the original grid, in the original dtype.

`Decoder` computes what the file holds for a window of the scan grid from the bytes it reads:
`decode` uses it, and the maximum-error and keep encoders code against exactly its numbers.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from .. import grid, memory, postfilter, refine, region
from ..alignment import MAX_SCAN_TO_FRAME, ScanReader, scan_to_frame, texture_frame
from ..bundle import Bundle, find_bundle, texture_codec
from ..container import unpack
from ..device import pick_device
from ..errors import FormatError
from ..grid import Box, Frame
from ..progress import CancelToken, ProgressCallback, Reporter
from ..texture.context import side_for
from ..volume import Volume, cast_to_dtype
from .header import DstdHeader

#: planned bytes per voxel of the scan grid read (values, the backward displacement, sampling
#: temporaries), more with a residual or keep layer (symbols, bands, float64 sums), and per voxel
#: of the texture frame (decoded texture, spline coefficients, filter temporaries)
SCAN_BYTES_PER_VOXEL = 48
RESIDUAL_BYTES_PER_VOXEL = 40
REFINE_BYTES_PER_VOXEL = 64
#: the decoded values themselves (float32), all a file of the refinement layer alone adds to it
VALUES_BYTES_PER_VOXEL = 4
FRAME_BYTES_PER_VOXEL = 32


class Decoder:
    """The DeepSTD layer of a file on a window of the scan grid. The backward map (which does not
    depend on the texture) is evaluated once, so the encoders can call `base` at many rates."""

    def __init__(
        self,
        bundle: Bundle,
        header: DstdHeader,
        shape: bytes,
        window: Optional[Box],
        codec,
        workers: Optional[int] = None,
        reporter: Optional[Reporter] = None,
    ):
        from ..shape import decode_shape

        self.header = header
        self.intensity, _ = header.texture_keys()
        template = Frame.of(bundle.template)
        self.frame = coded_frame(header, template)
        code = decode_shape(shape)
        self.reader = ScanReader(template, self.frame, code.backward, code.matrix, header.grid, window, reporter)
        self.codec, self.workers = codec, workers
        keys = header.codec
        self.side = side_for(
            codec.config, bundle.template, keys.margin, keys.frame_size, keys.frame_window, self.frame.shape_zyx
        )
        #: the encoder codes blocks of the bundle's size, or a frame that fits in one such block whole
        self.block_limit = bundle.config.texture.block or max(-(-n // 16) * 16 for n in self.frame.size)

    def base(self, texture, progress=None, cancel=None) -> Tuple[np.ndarray, float]:
        """The DeepSTD layer on the window (original dtype's values, as float32) and its coverage."""
        from ..texture import TextureStreams

        streams = texture if isinstance(texture, TextureStreams) else TextureStreams.from_bytes(texture)
        if tuple(streams.shape) != self.frame.shape_zyx:
            raise FormatError(f"texture shape {tuple(streams.shape)} does not match the bundle's template grid")
        if max(streams.block) > self.block_limit:  # the synthesis network's memory grows with the block
            raise FormatError(f"texture block {tuple(streams.block)} is larger than this bundle codes")
        box = self.reader.texture_box
        part = None
        if box is not None:
            part = self.codec.decompress(streams, self.workers, progress, cancel, box=box, side=self.side)
        values, coverage = self.reader.read(part, self.intensity)
        return cast_to_dtype(values, self.header.dtype).astype(np.float32), coverage


def coded_frame(header: DstdHeader, template: Frame) -> Frame:
    """The texture frame the header says the scan was coded on (`alignment.frame_for`)."""
    keys = header.codec
    frame, _ = texture_frame(template, list(keys.margin), keys.frame_size)
    if keys.frame_window is None:
        return frame
    if any(hi > n for hi, n in zip(keys.frame_window[1], frame.size)):
        raise FormatError("the header's texture frame window reaches outside the texture frame")
    return frame.window(*keys.frame_window)


def _check_reach(header: DstdHeader, bundle: Bundle, shape: bytes) -> None:
    """Refuse a grid far larger than the texture it reads (see `alignment.MAX_SCAN_TO_FRAME`)."""
    from ..shape import decode_shape

    frame = coded_frame(header, Frame.of(bundle.template))
    reach = scan_to_frame(header.grid, frame, decode_shape(shape).matrix)
    if reach > MAX_SCAN_TO_FRAME:
        raise FormatError(
            f"the header declares a scan {reach:.0f}x the physical volume of the texture it decodes from "
            "(corrupt or crafted geometry)"
        )


def add_residual(
    base: np.ndarray, section: bytes, bound: Optional[float], dtype: str, key: str = "max_error"
) -> np.ndarray:
    """The DeepSTD layer plus a residual layer coded within ±bound (the header's value)."""
    from .. import residual

    if bound is None:  # DstdHeader.from_dict checked the value when there is one
        raise FormatError(f"the file has a residual layer but no valid {key} in its header")
    integer = np.dtype(dtype).kind in "iu"
    if not integer and bound <= 0:
        raise FormatError("a lossless residual layer needs integer voxels")
    step = residual.step_for(float(bound), integer)
    q = residual.decompress(section, base, step)
    return cast_to_dtype(base.astype(np.float64) + residual.dequantise(q, step), dtype).astype(np.float32)


def decode(
    data: bytes,
    bundle=None,
    device: str = "auto",
    workers: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    roi=None,
) -> Volume:
    """A `.dstd` byte string -> the Volume on the original grid, in the original dtype's values.

    `roi` ((x0, y0, z0), (x1, y1, z1)), voxels of the original grid: only that box, exactly as a
    full decode has it, decoding only the texture blocks it reads (a file with a maximum-error
    layer is decoded whole and cropped: its residual's context needs every voxel; a refinement layer
    is decoded whole, the texture only where the box reads it)."""
    from .. import keepmask

    parsed = unpack(data)
    header = DstdHeader.of_file(parsed)
    size = header.grid.size
    window = grid.whole(size) if roi is None else region.checked(roi, size)
    reporter = Reporter(progress, cancel)
    alone = {refine.SECTION, postfilter.SECTION}
    if refine.SECTION in parsed.sections and set(parsed.sections) <= alone:  # no bundle, no texture
        needed = int(np.prod(size, dtype=np.int64)) * (
            REFINE_BYTES_PER_VOXEL + VALUES_BYTES_PER_VOXEL + postfilter.BYTES_PER_VOXEL
        )
        memory.require(needed, "decoding this file", header.raw_bytes, len(data))
        reporter("refine", 0.1, "decoding the refinement layer")
        whole = _refinement_alone(parsed.sections, grid.shape_zyx(grid.whole(size)))
        values = cast_to_dtype(whole[grid.slices(window, grid.whole(size))], header.dtype)
        return _restored(values.astype(np.float32), header, window, roi, None, 1.0, parsed.header, reporter)
    for name in ("shape", "texture"):
        if name not in parsed.sections:
            raise FormatError(f"the file has no {name!r} section")
    _, ref = header.texture_keys()
    whole_read = "residual" in parsed.sections or "keep/mask" in parsed.sections
    scan_voxels = int(np.prod(size if whole_read else grid.shape_zyx(window), dtype=np.int64))
    scan_bytes = scan_voxels * (SCAN_BYTES_PER_VOXEL + (RESIDUAL_BYTES_PER_VOXEL if whole_read else 0))
    if refine.SECTION in parsed.sections:  # the whole decoded residual, as bytes and as an array
        scan_bytes += int(np.prod(size, dtype=np.int64)) * REFINE_BYTES_PER_VOXEL
    memory.require(scan_bytes, "decoding this file", header.raw_bytes, len(data))
    bundle = find_bundle(ref.name, ref.sha256, bundle)
    frame = coded_frame(header, Frame.of(bundle.template))
    frame_voxels = int(np.prod(frame.size, dtype=np.int64))
    memory.require(scan_bytes + frame_voxels * FRAME_BYTES_PER_VOXEL, "decoding this file", header.raw_bytes, len(data))
    _check_reach(header, bundle, parsed.sections["shape"])
    keep = keepmask.decompress(parsed.sections["keep/mask"], size) if "keep/mask" in parsed.sections else None
    if "residual" in parsed.sections:
        reading = grid.whole(size)
    else:
        reading = grid.union(window, keep[0] if keep else None)
    codec = texture_codec(bundle, pick_device(device))
    view = Decoder(bundle, header, parsed.sections["shape"], reading, codec, workers, reporter.scaled(0.0, 0.2))
    values, coverage = view.base(parsed.sections["texture"], reporter.scaled(0.2, 0.9).callback(), cancel)
    dtype = header.dtype
    if refine.SECTION in parsed.sections:
        correction = _refinement(parsed.sections[refine.SECTION], size, reading)
        values = cast_to_dtype(values.astype(np.float64) + correction, dtype).astype(np.float32)
    if "residual" in parsed.sections:
        values = add_residual(values, parsed.sections["residual"], header.max_error, dtype)
    if keep is not None:
        if "keep/residual" not in parsed.sections:
            raise FormatError("the file has a keep mask but no 'keep/residual' section")
        part = values[grid.slices(keep[0], reading)]
        bound = header.keep.max_error if header.keep else None
        part[keep[1]] = add_residual(part[keep[1]], parsed.sections["keep/residual"], bound, dtype, "keep.max_error")
    values = np.ascontiguousarray(values[grid.slices(window, reading)])
    return _restored(values, header, window, roi, bundle.name, coverage, parsed.header, reporter)


def _refinement_alone(sections, shape) -> np.ndarray:
    """The whole scan (z, y, x, float64) a file of the refinement layer alone decodes to, before
    rounding to its dtype: the layer's values, post-filtered where the file has a filter and clipped
    to the layer's range (the encoder computes the same values with `refine.decompress`,
    `postfilter.fit_and_apply` and `refine.within_range`). A filter needs every voxel: its classes
    rank the whole scan, so a region is cropped from this."""
    section = sections[refine.SECTION]
    values = refine.decompress(section, shape)
    if postfilter.SECTION in sections:
        return refine.within_range(postfilter.apply(values, sections[postfilter.SECTION]), section)
    return values.astype(np.float64)


def _refinement(section: bytes, size, box) -> np.ndarray:
    """The refinement layer's values on `box` of the scan grid: the layer decodes the whole scan, and
    its values do not depend on the texture, so a region takes its crop."""
    whole = grid.whole(size)
    return refine.decompress(section, grid.shape_zyx(whole))[grid.slices(box, whole)]


def _restored(values, header: DstdHeader, window, roi, bundle_name, coverage, raw: dict, reporter) -> Volume:
    """The decoded window as a Volume on its grid, with what the file says in `meta`."""
    reporter("write", 1.0, "decoded")
    dstd: Dict[str, Any] = {"bundle": bundle_name, "coverage": coverage}
    for key in ("max_error", "keep"):
        if key in raw:
            dstd[key] = raw[key]
    if roi is not None:
        dstd["roi"] = [list(window[0]), list(window[1])]
    meta: Dict[str, Any] = {"warnings": list(header.warnings), "dstd": dstd}
    if header.dicom:
        meta["dicom"] = header.dicom
    scan_grid = header.grid if roi is None else header.grid.window(*window)
    return Volume(
        values, scan_grid.spacing, scan_grid.origin, scan_grid.direction, dtype=header.dtype, units=header.units,
        meta=meta,
    )  # fmt: skip


__all__ = ["Decoder", "decode", "add_residual"]
