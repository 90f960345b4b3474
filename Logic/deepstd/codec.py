"""DeepSTD end to end: `encode(volume, bundle, ratio=…) -> bytes` and `decode(bytes) -> Volume`.

Encode: register the scan to the bundle's template (Cycle-INR; the backward network, sized to a
share of the byte budget, is the shape code), warp it into the template frame, map intensities by
the bundle's rule, and code the aligned texture in blocks. Rate control runs on the *complete*
file: the shape code is sized first, then the texture rate knob is bisected on the packed file's
length until it is ≤ the budget and within 2 % under it. Decode reverses it using only the file
and the bundle, and restores the original grid, geometry and dtype exactly.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

from . import __version__
from .alignment import (IntensityMap, from_template, intensity_map, into_template, scan_displacement,
                        texture_frame)
from .bundle import Bundle, load_bundle, shipped_bundles
from .container import geometry_header, grid_of, pack, unpack, write_atomic
from .errors import BudgetError, BundleError, FormatError, InputError
from .progress import CancelToken, ProgressCallback, Reporter
from .ratecontrol import STEPS as SEARCH_STEPS, largest_within
from .volume import Volume, cast_to_dtype

#: the whole file must land within this fraction under the budget
TOLERANCE = 0.02
#: share of the byte budget the shape code may take (never more than the bundle's default width)
SHAPE_SHARE = 0.12
SHAPE_BITS = 8
#: header + section framing is a few hundred bytes; below this no scan can be coded
MIN_FILE_BYTES = 400

_codecs: Dict[Tuple[str, str], object] = {}


def resolve_bundle(bundle) -> Bundle:
    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle)


def texture_codec(bundle: Bundle, device: str = "cpu"):
    """The bundle's texture codec, built once per bundle and device."""
    from .texture import TextureCodec

    if not bundle.texture:
        raise BundleError(f"bundle {bundle.name} has no texture weights")
    key = (bundle.sha256, device)
    if key not in _codecs:
        _codecs[key] = TextureCodec.from_bytes(bundle.texture, device=device)
    return _codecs[key]


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise InputError(f"unknown device {device!r} (auto, cpu or cuda)")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA device is available")
    return device


def budget_for(volume: Volume, ratio: Optional[float], budget_bytes: Optional[int]) -> int:
    if (ratio is None) == (budget_bytes is None):
        raise InputError("give exactly one of a ratio or a byte budget")
    if ratio is not None:
        if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio >= 1):
            raise InputError(f"the ratio must be a number ≥ 1, got {ratio!r}")
        return int(volume.raw_bytes // ratio)
    if int(budget_bytes) < 1:
        raise InputError(f"the byte budget must be positive, got {budget_bytes!r}")
    return int(budget_bytes)


def _infeasible(volume: Volume, budget: int, smallest: int) -> BudgetError:
    return BudgetError(f"a budget of {budget} bytes ({volume.raw_bytes / budget:.0f}x) is too small for "
                       f"this scan: the smallest file it can be coded in is about {smallest} bytes, i.e. the "
                       f"largest feasible ratio is {volume.raw_bytes / smallest:.0f}x")


def encode(volume: Volume, bundle, ratio: Optional[float] = None, budget_bytes: Optional[int] = None,
           max_error: Optional[float] = None, device: str = "auto", workers: Optional[int] = None,
           progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> bytes:
    """Compress `volume` to at most `raw_bytes / ratio` (or `budget_bytes`) bytes, headers included;
    or, with `max_error`, so that every voxel is within ±max_error of the original (0: lossless),
    at whatever size that takes."""
    if max_error is not None:
        if ratio is not None or budget_bytes is not None:
            raise InputError("give either a ratio/byte budget or a maximum error, not both")
        return _encode_max_error(volume, bundle, max_error, device, workers, progress, cancel)
    from .texture.rate import RATE_STEPS

    budget = budget_for(volume, ratio, budget_bytes)
    reporter = Reporter(progress, cancel)
    layer = _prepare(volume, bundle, budget, device, workers, reporter)
    header = dict(layer.header, target_ratio=round(volume.raw_bytes / budget, 4), budget_bytes=budget)

    search = reporter.scaled(0.85, 1.0)
    search("entropy", 0.0, f"fitting {budget} bytes")
    build = lambda rate: layer.pack(header, rate)  # noqa: E731
    best, smallest = largest_within(
        build, budget, TOLERANCE,
        on_step=lambda step: search("entropy", (step + 1) / SEARCH_STEPS, f"fitting {budget} bytes"))
    if best is None:
        raise _infeasible(volume, budget, len(smallest))
    if len(best) < (1 - TOLERANCE) * budget and unpack(best).header["codec"]["texture_rate"] == RATE_STEPS:
        layer.warnings.append(f"the finest texture rate of this bundle fits in {len(best)} bytes "
                              f"({volume.raw_bytes / len(best):.1f}x); the budget allows more")
        noted = build(1.0)
        best = noted if len(noted) <= budget else best   # the note itself must not break the budget
    reporter("write", 1.0, f"{len(best)} bytes in {time.perf_counter() - layer.started:.1f} s")
    return best


class _Layer:
    """The rate-independent part of an encode (registration, alignment, analysis) and how to pack
    the DeepSTD layer at any texture rate."""

    def __init__(self, header, shape, analysis, codec, warnings, workers, started):
        self.header, self.shape, self.analysis, self.codec = header, shape, analysis, codec
        self.warnings, self.workers, self.started = warnings, workers, started

    def streams(self, rate: float):
        return self.codec.code(self.analysis, rate, self.workers)

    def file(self, header: dict, streams, extra: Optional[Dict[str, bytes]] = None) -> bytes:
        h = dict(header, codec=dict(header["codec"], texture_rate=streams.rate_q))
        if self.warnings:
            h["warnings"] = list(self.warnings)
        return pack(h, {"shape": self.shape, "texture": streams.to_bytes(), **(extra or {})})

    def pack(self, header: dict, rate: float) -> bytes:
        return self.file(header, self.streams(rate))


def _prepare(volume: Volume, bundle, budget: Optional[int], device: str, workers: Optional[int],
             reporter: Reporter) -> _Layer:
    """Register, align and analyse; the shape code takes its share of `budget` (None: full width)."""
    from .shape import CycleSettings, decode_shape, register
    from .shape.code import MIN_WIDTH, code_bytes, width_for_budget

    bundle = resolve_bundle(bundle)
    reg_config = dict(bundle.config.get("registration", {}))
    depth = int(reg_config.get("depth", 3))
    min_shape = code_bytes(MIN_WIDTH, depth, SHAPE_BITS)
    if budget is not None and budget < MIN_FILE_BYTES + min_shape:
        raise _infeasible(volume, budget, MIN_FILE_BYTES + min_shape)
    device = pick_device(device)
    codec = texture_codec(bundle, device)
    started = time.perf_counter()

    warnings = list(volume.meta.get("warnings", []))
    modality = str(bundle.config.get("modality", "")).upper()
    if (modality == "CT") != (volume.units == "HU"):
        warnings.append(f"the scan ({volume.units}) does not look like the bundle's modality ({modality}); "
                        "quality may be poor")

    # shape: size the network to its share of the budget, register, keep the backward network
    default_width = int(reg_config.get("width", 32))
    full = code_bytes(default_width, depth, SHAPE_BITS)
    shape_budget = full if budget is None else max(min_shape, min(int(SHAPE_SHARE * budget), full))
    width = width_for_budget(shape_budget, depth, SHAPE_BITS, max_width=default_width)
    known = set(CycleSettings.__dataclass_fields__)
    settings = replace(CycleSettings(**{k: v for k, v in reg_config.items() if k in known}), width=width)
    reg = register(volume, bundle.template, settings, prealignment=reg_config.get("prealignment", "moments"),
                   downsample=int(reg_config.get("downsample", 2)),
                   progress=_monotonic(reporter.scaled(0.0, 0.45).callback()), cancel=reporter.cancel)
    threshold = reg_config.get("threshold")
    if threshold is not None and reg.loss > threshold:
        warnings.append(f"registration loss {reg.loss:.3f} is above the bundle's calibrated threshold "
                        f"{threshold:.3f}: the scan is unlike the template; the texture carries the difference")
    shape = reg.shape_code(SHAPE_BITS)
    mapping = intensity_map(volume.array, bundle.config.get("intensity"))
    frame, margin = texture_frame(reg.frame)
    stored = decode_shape(shape)      # warp with exactly what the decoder will have
    unit, support = into_template(volume, stored.backward, stored.matrix, reg.frame, frame, mapping)
    reporter("texture", 0.5, "analysing the aligned texture")
    block = bundle.config.get("texture", {}).get("block", 64)
    analysis = codec.analyse(unit, block, support, 0.0, workers, reporter.scaled(0.5, 0.85))

    header = geometry_header(volume)
    header.update({
        "encoder_version": __version__,
        "bundle": {"name": bundle.name, "sha256": bundle.sha256},
        "intensity": mapping.to_header(),
        "codec": {"shape_width": width, "shape_bits": SHAPE_BITS, "omega": reg.omega, "margin": margin,
                  "registration_loss": round(reg.loss, 5)},
    })
    if volume.meta.get("dicom"):
        header["dicom"] = volume.meta["dicom"]
    return _Layer(header, shape, analysis, codec, warnings, workers, started)


#: texture rates tried for the DeepSTD layer under a maximum-error residual (the smallest file wins)
MAX_ERROR_RATES = (0.0, 0.5, 1.0)


def _encode_max_error(volume: Volume, bundle, max_error, device, workers, progress, cancel) -> bytes:
    """DeepSTD layer + residual layer with |error| <= max_error everywhere; the base layer's rate
    is the one that makes the whole file smallest. The result is decoded and checked before return."""
    from . import residual

    if not (isinstance(max_error, (int, float)) and math.isfinite(max_error) and max_error >= 0):
        raise InputError(f"the maximum error must be a number ≥ 0, got {max_error!r}")
    integer = np.dtype(volume.dtype).kind in "iu"
    if not integer and max_error <= 0:
        raise InputError(f"a lossless bound needs integer voxels; this scan is {volume.dtype}: "
                         "give a positive --max-error")
    from .shape import Frame, decode_shape

    bundle = resolve_bundle(bundle)
    reporter = Reporter(progress, cancel)
    layer = _prepare(volume, bundle, None, device, workers, reporter)
    step = residual.step_for(float(max_error), integer)
    header = dict(layer.header, max_error=float(max_error))
    original = cast_to_dtype(volume.array, volume.dtype).astype(np.float64)
    # the decoder's view of the DeepSTD layer, built from the same bytes and header it will read;
    # the backward map to the scan grid does not depend on the rate, so it is evaluated once
    template = Frame.of(bundle.template)
    frame, _ = texture_frame(template, header["codec"]["margin"])
    code = decode_shape(layer.shape)
    mapping = IntensityMap.from_header(header["intensity"])
    scan_grid = _scan_frame(header)
    disp = scan_displacement(template, code.backward, code.matrix, scan_grid)
    best = None
    for k, rate in enumerate(MAX_ERROR_RATES):
        reporter("entropy", 0.85 + 0.15 * k / len(MAX_ERROR_RATES), f"residual layer at texture rate {rate:g}")
        streams = layer.streams(rate)
        texture = layer.codec.decompress(streams.to_bytes(), workers)
        values, _ = from_template(texture, template, frame, code.backward, code.matrix, scan_grid, mapping,
                                  disp=disp)
        base = cast_to_dtype(values, volume.dtype).astype(np.float32)
        q = residual.quantise(original - base, float(max_error), step)
        data = layer.file(header, streams, {"residual": residual.compress(q, base, step)})
        if best is None or len(data) < len(best[0]):
            best = (data, base)
    data, base = best
    # check the bound on what the decoder computes from the stored residual section
    restored = _add_residual(base, unpack(data).sections["residual"], header, volume.dtype)
    worst = float(np.max(np.abs(restored - original)))
    if worst > max_error + (0 if integer else 1e-6 * max(1.0, float(np.ptp(original)))):
        raise RuntimeError(f"internal error: the residual layer missed its bound ({worst} > {max_error})")
    reporter("write", 1.0, f"{len(data)} bytes ({volume.raw_bytes / len(data):.2f}x), max error {worst:g}, "
                           f"in {time.perf_counter() - layer.started:.1f} s")
    return data


def _monotonic(callback: ProgressCallback) -> ProgressCallback:
    """Gradual degradation re-fits at a lower omega; a progress bar should not run backwards."""
    from .progress import Progress

    high = [0.0]

    def forward(event) -> None:
        high[0] = max(high[0], event.fraction)
        callback(Progress(event.stage, high[0], event.message, event.snapshot))

    return forward


def find_bundle(header: dict, bundle=None) -> Bundle:
    """The bundle a file was coded with: the one given (checked), or a shipped one with its id."""
    recorded = header.get("bundle") or {}
    sha = recorded.get("sha256")
    if bundle is not None:
        bundle = resolve_bundle(bundle)
        if sha and bundle.sha256 != sha:
            raise BundleError(f"this file was coded with bundle {recorded.get('name')!r} ({sha[:12]}…), "
                              f"not {bundle.name!r} ({bundle.sha256[:12]}…)")
        return bundle
    if not sha:
        raise BundleError("the file names no bundle; pass one with --bundle")
    for path in shipped_bundles().values():
        candidate = load_bundle(path)
        if candidate.sha256 == sha:
            return candidate
    raise BundleError(f"the bundle this file was coded with ({recorded.get('name')!r}, {sha[:12]}…) is not "
                      "installed; pass its file with --bundle")


def decode(data: bytes, bundle=None, device: str = "auto", workers: Optional[int] = None,
           progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> Volume:
    """A `.dstd` byte string -> the Volume on the original grid, in the original dtype's values."""
    from .shape import Frame, decode_shape

    parsed = unpack(data)
    header = parsed.header
    for name in ("shape", "texture"):
        if name not in parsed.sections:
            raise FormatError(f"the file has no {name!r} section")
    try:
        mapping = IntensityMap.from_header(header["intensity"])
    except (KeyError, TypeError, ValueError):
        raise FormatError("the header's intensity mapping is missing or invalid") from None
    bundle = find_bundle(header, bundle)
    reporter = Reporter(progress, cancel)
    codec = texture_codec(bundle, pick_device(device))
    texture = codec.decompress(parsed.sections["texture"], workers,
                               reporter.scaled(0.0, 0.7).callback(), cancel)
    template = Frame.of(bundle.template)
    margin = header.get("codec", {}).get("margin", [0, 0, 0])
    if not (isinstance(margin, list) and len(margin) == 3
            and all(isinstance(m, int) and 0 <= m <= 4096 for m in margin)):
        raise FormatError("the header's texture margin is invalid")
    frame, _ = texture_frame(template, margin)
    if texture.shape != frame.shape_zyx:
        raise FormatError(f"texture shape {texture.shape} does not match the bundle's template grid")
    code = decode_shape(parsed.sections["shape"])
    size, spacing, origin, direction = grid_of(header)
    scan_grid = _scan_frame(header)
    values, coverage = from_template(texture, template, frame, code.backward, code.matrix, scan_grid,
                                     mapping, reporter.scaled(0.7, 1.0))
    dtype = header["dtype"]
    values = cast_to_dtype(values, dtype).astype(np.float32)
    if "residual" in parsed.sections:
        values = _add_residual(values, parsed.sections["residual"], header, dtype)
    meta = {"warnings": list(header.get("warnings", [])), "dstd": {"bundle": bundle.name,
                                                                    "coverage": coverage}}
    if "max_error" in header:
        meta["dstd"]["max_error"] = header["max_error"]
    if header.get("dicom"):
        meta["dicom"] = header["dicom"]
    return Volume(values, spacing, origin, direction, dtype=dtype, units=header.get("units", "unitless"),
                  meta=meta)


def _scan_frame(header: dict):
    """The original scan's grid, from the header."""
    from .shape import Frame

    size, spacing, origin, direction = grid_of(header)
    return Frame(tuple(int(n) for n in size), tuple(spacing), tuple(origin), tuple(direction))


def _add_residual(base: np.ndarray, section: bytes, header: dict, dtype: str) -> np.ndarray:
    """The DeepSTD layer plus the residual layer: within ±max_error of the original everywhere."""
    from . import residual

    bound = header.get("max_error")
    if not (isinstance(bound, (int, float)) and math.isfinite(bound) and 0 <= bound < 1e12):
        raise FormatError("the file has a residual layer but no valid max_error in its header")
    integer = np.dtype(dtype).kind in "iu"
    if not integer and bound <= 0:
        raise FormatError("a lossless residual layer needs integer voxels")
    step = residual.step_for(float(bound), integer)
    q = residual.decompress(section, base, step)
    return cast_to_dtype(base.astype(np.float64) + residual.dequantise(q, step), dtype).astype(np.float32)


# --- files --------------------------------------------------------------------------------------
def encode_file(source, output, bundle, ratio: Optional[float] = None, budget_bytes: Optional[int] = None,
                max_error: Optional[float] = None, series_uid: Optional[str] = None, **kw) -> dict:
    """Read a scan (file or DICOM folder), encode it, write `output` atomically; return a report."""
    from .io import read

    started = time.perf_counter()
    volume = read(source, series_uid=series_uid)
    data = encode(volume, bundle, ratio=ratio, budget_bytes=budget_bytes, max_error=max_error, **kw)
    write_atomic(output, data)
    header = unpack(data).header
    return {"input": str(source), "output": str(output), "raw_bytes": volume.raw_bytes,
            "bytes": len(data), "budget_bytes": header.get("budget_bytes"),
            "ratio": volume.raw_bytes / len(data), "target_ratio": header.get("target_ratio"),
            "max_error": header.get("max_error"),
            "seconds": time.perf_counter() - started, "warnings": header.get("warnings", [])}


def decode_file(source, output, bundle=None, **kw) -> Volume:
    """Decode a `.dstd` file and write the volume (a folder without suffix: a DICOM series)."""
    from .io import write

    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        volume = decode(data, bundle, **kw)
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None
    from .io import itk

    if itk.suffix_of(Path(output)) is None:     # a folder: a DICOM series marked as lossy
        write(volume, output, lossy_ratio=volume.raw_bytes / len(data), lossy_method="DEEPSTD")
    else:
        write(volume, output)
    return volume


__all__ = ["encode", "decode", "encode_file", "decode_file", "find_bundle", "budget_for", "TOLERANCE"]
