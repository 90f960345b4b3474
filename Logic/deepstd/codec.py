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
from typing import Dict, Optional, Tuple

import numpy as np

from . import __version__
from . import region
from .alignment import (MAX_FRAME_VOXELS, MIN_COVERAGE, IntensityMap, ScanReader, frame_for, intensity_map,
                        into_template, texture_frame)
from .bundle import Bundle, load_bundle, shipped_bundles
from .container import geometry_header, grid_of, header_cost, pack, unpack, write_atomic
from .errors import BudgetError, BundleError, FormatError, InputError
from .progress import CancelToken, ProgressCallback, Reporter
from .ratecontrol import STEPS as SEARCH_STEPS, largest_within
from .volume import Volume, cast_to_dtype

#: the whole file must land within this fraction under the budget
TOLERANCE = 0.02
#: share of the byte budget the shape code may take (never more than the bundle's default width)
SHAPE_SHARE = 0.12
SHAPE_BITS = 8
#: a lean header, the section framing and the texture stream's own header; below this (plus the
#: smallest shape code) no scan can be coded
MIN_FILE_BYTES = 160
#: the header may take this share of a byte budget; above it only what decoding needs is kept
HEADER_SHARE = 0.05
#: hex digits of the bundle's SHA-256 a lean header keeps: 64 bits, no accidental collision
LEAN_BUNDLE_ID = 16
#: header keys decoding (or the decoded volume) needs; a lean header keeps only these
DECODE_KEYS = ("geometry", "dtype", "units", "intensity", "max_error", "keep", "dicom", "warnings")

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
           max_error: Optional[float] = None, keep: Optional[np.ndarray] = None, keep_error: float = 0.0,
           device: str = "auto", workers: Optional[int] = None,
           progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> bytes:
    """Compress `volume` to at most `raw_bytes / ratio` (or `budget_bytes`) bytes, headers included;
    or, with `max_error`, so that every voxel is within ±max_error of the original (0: lossless),
    at whatever size that takes. `keep`: a boolean (z, y, x) mask of voxels to code within
    ±keep_error (0: lossless) inside the same budget; the mask is stored in the file."""
    if max_error is not None:
        if ratio is not None or budget_bytes is not None:
            raise InputError("give either a ratio/byte budget or a maximum error, not both")
        if keep is not None:
            raise InputError("a keep mask goes with a ratio or a byte budget; a maximum error already "
                             "bounds every voxel")
        return _encode_max_error(volume, bundle, max_error, device, workers, progress, cancel)
    from .texture.rate import RATE_STEPS

    budget = budget_for(volume, ratio, budget_bytes)
    mask = _keep_mask(volume, keep, keep_error) if keep is not None else None
    reporter = Reporter(progress, cancel)
    layer = _prepare(volume, bundle, budget, device, workers, reporter)
    header = dict(layer.header, target_ratio=round(volume.raw_bytes / budget, 4), budget_bytes=budget)
    if mask is None:
        build = lambda rate: layer.pack(header, rate)  # noqa: E731
    else:
        header["keep"] = {"max_error": float(keep_error), "voxels": int(mask.sum())}
        build = _KeepLayer(layer, resolve_bundle(bundle), header, volume, mask, float(keep_error)).pack

    search = reporter.scaled(0.85, 1.0)
    search("entropy", 0.0, f"fitting {budget} bytes")
    best, smallest = largest_within(
        build, budget, TOLERANCE,
        on_step=lambda step: search("entropy", (step + 1) / SEARCH_STEPS, f"fitting {budget} bytes"))
    if best is None:
        if mask is not None:
            sections = unpack(smallest).sections
            raise BudgetError(f"a budget of {budget} bytes ({volume.raw_bytes / budget:.0f}x) is too small with "
                              f"this keep mask: the mask takes {len(sections['keep/mask'])} bytes and its voxels "
                              f"within ±{keep_error:g} another {len(sections['keep/residual'])}; the whole file "
                              f"needs at least {len(smallest)} bytes ({volume.raw_bytes / len(smallest):.0f}x)")
        raise _infeasible(volume, budget, len(smallest))
    if len(best) < (1 - TOLERANCE) * budget and _texture_rate(best) == RATE_STEPS:
        layer.warnings.append(f"the finest texture rate of this bundle fits in {len(best)} bytes "
                              f"({volume.raw_bytes / len(best):.1f}x); the budget allows more")
        noted = build(1.0)
        best = noted if len(noted) <= budget else best   # the note itself must not break the budget
    reporter("write", 1.0, f"{len(best)} bytes in {time.perf_counter() - layer.started:.1f} s")
    return best


def _texture_rate(data: bytes) -> int:
    from .texture import TextureStreams

    return TextureStreams.from_bytes(unpack(data).sections["texture"]).rate_q


def lean_header(header: dict) -> dict:
    """What decoding needs of `header`: the geometry, intensity mapping, bundle name and id
    (shortened), texture margin and any warnings. Encoder version, targets and codec statistics
    go (the texture and shape sections carry their own rate and width)."""
    lean = {key: value for key, value in header.items() if key in DECODE_KEYS}
    lean["bundle"] = {"name": header["bundle"]["name"], "sha256": header["bundle"]["sha256"][:LEAN_BUNDLE_ID]}
    lean["codec"] = {"margin": header["codec"]["margin"]}
    return lean


def fitted_header(header: dict) -> dict:
    """`header`, or its lean form when it would take more than HEADER_SHARE of the byte budget:
    a 64 kvoxel crop at 256x has ~540 bytes for everything, a full header alone takes ~230."""
    budget = header.get("budget_bytes")
    if budget is not None and header_cost(header) > HEADER_SHARE * budget:
        return lean_header(header)
    return header


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
        return pack(fitted_header(h), {"shape": self.shape, "texture": streams.to_bytes(), **(extra or {})})

    def pack(self, header: dict, rate: float) -> bytes:
        return self.file(header, self.streams(rate))


class _DecoderView:
    """What the decoder computes for a window of the scan grid, from the bytes it reads: decode
    uses it, and the maximum-error and keep encoders code against exactly the same numbers."""

    def __init__(self, bundle: Bundle, header: dict, shape: bytes, window, codec, workers=None,
                 reporter: Optional[Reporter] = None):
        from .shape import Frame, decode_shape

        try:
            self.mapping = IntensityMap.from_header(header["intensity"])
        except (KeyError, TypeError, ValueError):
            raise FormatError("the header's intensity mapping is missing or invalid") from None
        margin = header.get("codec", {}).get("margin", [0, 0, 0])
        if not (isinstance(margin, list) and len(margin) == 3
                and all(isinstance(m, int) and 0 <= m <= 4096 for m in margin)):
            raise FormatError("the header's texture margin is invalid")
        template = Frame.of(bundle.template)
        self.frame, _ = texture_frame(template, margin)
        code = decode_shape(shape)
        self.reader = ScanReader(template, self.frame, code.backward, code.matrix, _scan_frame(header), window,
                                 reporter)
        self.codec, self.workers, self.dtype = codec, workers, header["dtype"]

    def base(self, texture, progress=None, cancel=None) -> Tuple[np.ndarray, float]:
        """The DeepSTD layer on the window (original dtype's values, as float32) and its coverage."""
        from .texture import TextureStreams

        streams = texture if isinstance(texture, TextureStreams) else TextureStreams.from_bytes(texture)
        if tuple(streams.shape) != self.frame.shape_zyx:
            raise FormatError(f"texture shape {tuple(streams.shape)} does not match the bundle's template grid")
        box = self.reader.texture_box
        part = None if box is None else self.codec.decompress(streams, self.workers, progress, cancel, box=box)
        values, coverage = self.reader.read(part, self.mapping)
        return cast_to_dtype(values, self.dtype).astype(np.float32), coverage


def _keep_mask(volume: Volume, keep, keep_error) -> np.ndarray:
    mask = np.asarray(keep.array if isinstance(keep, Volume) else keep)
    if mask.shape != volume.array.shape:
        raise InputError(f"the keep mask has shape {mask.shape}, the scan {volume.array.shape} (z, y, x)")
    mask = mask > 0
    if not mask.any():
        raise InputError("the keep mask is empty (no voxel above 0)")
    integer = np.dtype(volume.dtype).kind in "iu"
    if not (isinstance(keep_error, (int, float)) and math.isfinite(keep_error) and keep_error >= 0):
        raise InputError(f"the keep mask's error bound must be a number ≥ 0, got {keep_error!r}")
    if not integer and keep_error <= 0:
        raise InputError(f"a lossless keep mask needs integer voxels; this scan is {volume.dtype}: give a bound > 0")
    return mask


class _KeepLayer:
    """The DeepSTD layer plus, inside the keep mask, the residual within ±bound: packs the whole file
    at a texture rate. Only the mask's bounding box is reconstructed per rate (a region decode)."""

    def __init__(self, layer: _Layer, bundle: Bundle, header: dict, volume: Volume, mask: np.ndarray,
                 bound: float):
        from . import keepmask, residual

        self.layer, self.header, self.bound = layer, header, bound
        self.box = region.bounding_box(mask)
        inside = region.slices(self.box, region.whole(volume.size))
        self.mask = mask[inside]
        self.original = cast_to_dtype(volume.array[inside], volume.dtype).astype(np.float64)[self.mask]
        self.step = residual.step_for(bound, np.dtype(volume.dtype).kind in "iu")
        self.mask_bytes = keepmask.compress(mask)
        self.view = _DecoderView(bundle, header, layer.shape, self.box, layer.codec, layer.workers)

    def pack(self, rate: float) -> bytes:
        from . import residual

        streams = self.layer.streams(rate)
        base = self.view.base(streams)[0][self.mask]
        q = residual.quantise(self.original - base, self.bound, self.step)
        return self.layer.file(self.header, streams, {"keep/mask": self.mask_bytes,
                                                      "keep/residual": residual.compress(q, base, self.step)})


def _shape(volume: Volume, bundle: Bundle, budget: Optional[int], reporter: Reporter, warnings: list):
    """Register the scan to the template: (the template frame, the shape code, the header's shape
    keys). The backward network is sized to SHAPE_SHARE of the budget; when even the narrowest one
    would take more, the code holds the pre-alignment alone (60 bytes instead of ~160 with a
    4-wide network: on hippocampus crops at 200x the network was worth 0.0-0.3 dB, the bytes more)."""
    from .shape import CycleSettings, Frame, register
    from .shape.code import MIN_WIDTH, code_bytes, encode_shape, width_for_budget
    from .shape.register import prealignment_only

    reg_config = dict(bundle.config.get("registration", {}))
    depth = int(reg_config.get("depth", 3))
    method = reg_config.get("prealignment", "moments")
    narrowest = code_bytes(MIN_WIDTH, depth, SHAPE_BITS)
    if budget is not None and SHAPE_SHARE * budget < narrowest:
        reporter("register", 0.45, f"pre-alignment only ({method}): the budget has no room for a network")
        matrix = prealignment_only(volume, bundle.template, method, int(reg_config.get("seed", 0)))
        return Frame.of(bundle.template), encode_shape(None, matrix, SHAPE_BITS), {"shape_width": 0}
    default_width = int(reg_config.get("width", 32))
    full = code_bytes(default_width, depth, SHAPE_BITS)
    shape_budget = full if budget is None else max(narrowest, min(int(SHAPE_SHARE * budget), full))
    width = width_for_budget(shape_budget, depth, SHAPE_BITS, max_width=default_width)
    known = set(CycleSettings.__dataclass_fields__)
    settings = replace(CycleSettings(**{k: v for k, v in reg_config.items() if k in known}), width=width)
    reg = register(volume, bundle.template, settings, prealignment=method,
                   downsample=int(reg_config.get("downsample", 2)),
                   progress=_monotonic(reporter.scaled(0.0, 0.45).callback()), cancel=reporter.cancel)
    threshold = reg_config.get("threshold")
    if threshold is not None and reg.loss > threshold:
        warnings.append(f"registration loss {reg.loss:.3f} is above the bundle's calibrated threshold "
                        f"{threshold:.3f}: the scan is unlike the template; the texture carries the difference")
    return reg.frame, reg.shape_code(SHAPE_BITS), {"shape_width": width, "shape_bits": SHAPE_BITS,
                                                   "omega": reg.omega, "registration_loss": round(reg.loss, 5)}


def _prepare(volume: Volume, bundle, budget: Optional[int], device: str, workers: Optional[int],
             reporter: Reporter) -> _Layer:
    """Register, align and analyse; the shape code takes its share of `budget` (None: full width)."""
    from .shape import decode_shape
    from .shape.code import PREALIGNMENT_BYTES

    bundle = resolve_bundle(bundle)
    if budget is not None and budget < MIN_FILE_BYTES + PREALIGNMENT_BYTES:
        raise _infeasible(volume, budget, MIN_FILE_BYTES + PREALIGNMENT_BYTES)
    device = pick_device(device)
    codec = texture_codec(bundle, device)
    started = time.perf_counter()

    warnings = list(volume.meta.get("warnings", []))
    modality = str(bundle.config.get("modality", "")).upper()
    if (modality == "CT") != (volume.units == "HU"):
        warnings.append(f"the scan ({volume.units}) does not look like the bundle's modality ({modality}); "
                        "quality may be poor")
    template_frame, shape, shape_keys = _shape(volume, bundle, budget, reporter, warnings)
    mapping = intensity_map(volume.array, bundle.config.get("intensity"))
    stored = decode_shape(shape)      # warp with exactly what the decoder will have
    frame, margin, block, coverage = frame_for(volume, template_frame, stored,
                                               bundle.config.get("texture", {}).get("block", 64))
    unit, support = into_template(volume, stored.backward, stored.matrix, template_frame, frame, mapping)
    if coverage < MIN_COVERAGE:
        warnings.append(f"only {100 * coverage:.0f} % of the scan lies inside the bundle's texture frame (its template "
                        f"plus a margin, widened up to {MAX_FRAME_VOXELS / 1e6:.0f} Mvoxel); the rest decodes as "
                        "background: this bundle's template does not cover scans with this field of view")
    reporter("texture", 0.5, "analysing the aligned texture")
    analysis = codec.analyse(unit, block, support, 0.0, workers, reporter.scaled(0.5, 0.85))

    header = geometry_header(volume)
    header.update({
        "encoder_version": __version__,
        "bundle": {"name": bundle.name, "sha256": bundle.sha256},
        "intensity": mapping.to_header(),
        "codec": {**shape_keys, "margin": margin},
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
    bundle = resolve_bundle(bundle)
    reporter = Reporter(progress, cancel)
    layer = _prepare(volume, bundle, None, device, workers, reporter)
    step = residual.step_for(float(max_error), integer)
    header = dict(layer.header, max_error=float(max_error))
    original = cast_to_dtype(volume.array, volume.dtype).astype(np.float64)
    # the decoder's view of the DeepSTD layer, from the same bytes and header it will read; the
    # backward map does not depend on the rate, so it is evaluated once
    view = _DecoderView(bundle, header, layer.shape, None, layer.codec, workers)
    best = None
    for k, rate in enumerate(MAX_ERROR_RATES):
        reporter("entropy", 0.85 + 0.15 * k / len(MAX_ERROR_RATES), f"residual layer at texture rate {rate:g}")
        streams = layer.streams(rate)
        base, _ = view.base(streams)
        q = residual.quantise(original - base, float(max_error), step)
        data = layer.file(header, streams, {"residual": residual.compress(q, base, step)})
        if best is None or len(data) < len(best[0]):
            best = (data, base)
    data, base = best
    # check the bound on what the decoder computes from the stored residual section
    restored = _add_residual(base, unpack(data).sections["residual"], header.get("max_error"), volume.dtype)
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
    """The bundle a file was coded with: the one given (checked), or a shipped one with its id.
    A lean header records only the first LEAN_BUNDLE_ID hex digits of the id."""
    recorded = header.get("bundle") or {}
    sha = recorded.get("sha256")
    if sha is not None and not (isinstance(sha, str) and LEAN_BUNDLE_ID <= len(sha) <= 64
                                and all(c in "0123456789abcdef" for c in sha)):
        raise FormatError("the header's bundle id is not a SHA-256 (prefix)")
    label = f"{recorded['name']!r} ({sha[:12]}…)" if recorded.get("name") else f"{(sha or '')[:12]}…"
    if bundle is not None:
        bundle = resolve_bundle(bundle)
        if sha and not bundle.sha256.startswith(sha):
            raise BundleError(f"this file was coded with bundle {label}, not {bundle.name!r} ({bundle.sha256[:12]}…)")
        return bundle
    if not sha:
        raise BundleError("the file names no bundle; pass one with --bundle")
    for path in shipped_bundles().values():
        candidate = load_bundle(path)
        if candidate.sha256.startswith(sha):
            return candidate
    raise BundleError(f"the bundle this file was coded with ({label}) is not installed; pass its file with --bundle")


def decode(data: bytes, bundle=None, device: str = "auto", workers: Optional[int] = None,
           progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
           roi=None) -> Volume:
    """A `.dstd` byte string -> the Volume on the original grid, in the original dtype's values.

    `roi` ((x0, y0, z0), (x1, y1, z1)), voxels of the original grid: only that box, exactly as a
    full decode has it, decoding only the texture blocks it reads (a file with a maximum-error
    layer is decoded whole and cropped: its residual's context needs every voxel)."""
    from . import keepmask

    parsed = unpack(data)
    header = parsed.header
    for name in ("shape", "texture"):
        if name not in parsed.sections:
            raise FormatError(f"the file has no {name!r} section")
    bundle = find_bundle(header, bundle)
    reporter = Reporter(progress, cancel)
    size = tuple(int(n) for n in grid_of(header)[0])
    window = region.whole(size) if roi is None else region.checked(roi, size)
    keep = keepmask.decompress(parsed.sections["keep/mask"], size) if "keep/mask" in parsed.sections else None
    if "residual" in parsed.sections:
        reading = region.whole(size)
    else:
        reading = region.union(window, keep[0] if keep else None)
    codec = texture_codec(bundle, pick_device(device))
    view = _DecoderView(bundle, header, parsed.sections["shape"], reading, codec, workers,
                        reporter.scaled(0.0, 0.2))
    values, coverage = view.base(parsed.sections["texture"], reporter.scaled(0.2, 0.9).callback(), cancel)
    dtype = header["dtype"]
    if "residual" in parsed.sections:
        values = _add_residual(values, parsed.sections["residual"], header.get("max_error"), dtype)
    if keep is not None:
        if "keep/residual" not in parsed.sections:
            raise FormatError("the file has a keep mask but no 'keep/residual' section")
        part = values[region.slices(keep[0], reading)]
        bound = (header.get("keep") or {}).get("max_error")
        part[keep[1]] = _add_residual(part[keep[1]], parsed.sections["keep/residual"], bound, dtype,
                                      "keep.max_error")
    values = np.ascontiguousarray(values[region.slices(window, reading)])
    reporter("write", 1.0, "decoded")
    meta = {"warnings": list(header.get("warnings", [])), "dstd": {"bundle": bundle.name,
                                                                    "coverage": coverage}}
    for key in ("max_error", "keep"):
        if key in header:
            meta["dstd"][key] = header[key]
    if roi is not None:
        meta["dstd"]["roi"] = [list(window[0]), list(window[1])]
    if header.get("dicom"):
        meta["dicom"] = header["dicom"]
    grid = _scan_frame(header)
    if roi is not None:
        grid = grid.window(*window)
    return Volume(values, grid.spacing, grid.origin, grid.direction, dtype=dtype,
                  units=header.get("units", "unitless"), meta=meta)


def _scan_frame(header: dict):
    """The original scan's grid, from the header."""
    from .shape import Frame

    size, spacing, origin, direction = grid_of(header)
    return Frame(tuple(int(n) for n in size), tuple(spacing), tuple(origin), tuple(direction))


def _add_residual(base: np.ndarray, section: bytes, bound, dtype: str, key: str = "max_error") -> np.ndarray:
    """The DeepSTD layer plus a residual layer coded within ±bound (the header's value)."""
    from . import residual

    if not (isinstance(bound, (int, float)) and math.isfinite(bound) and 0 <= bound < 1e12):
        raise FormatError(f"the file has a residual layer but no valid {key} in its header")
    integer = np.dtype(dtype).kind in "iu"
    if not integer and bound <= 0:
        raise FormatError("a lossless residual layer needs integer voxels")
    step = residual.step_for(float(bound), integer)
    q = residual.decompress(section, base, step)
    return cast_to_dtype(base.astype(np.float64) + residual.dequantise(q, step), dtype).astype(np.float32)


# --- files --------------------------------------------------------------------------------------
def encode_file(source, output, bundle, ratio: Optional[float] = None, budget_bytes: Optional[int] = None,
                max_error: Optional[float] = None, keep: Optional[str] = None, series_uid: Optional[str] = None,
                **kw) -> dict:
    """Read a scan (file or DICOM folder), encode it, write `output` atomically; return a report.
    `keep`: 'LABELMAP[:E]', a label map on the scan's grid whose voxels > 0 are kept within ±E."""
    from .io import read

    started = time.perf_counter()
    volume = read(source, series_uid=series_uid)
    mask, keep_error = (None, 0.0) if keep is None else read_keep(keep, volume)
    data = encode(volume, bundle, ratio=ratio, budget_bytes=budget_bytes, max_error=max_error, keep=mask,
                  keep_error=keep_error, **kw)
    write_atomic(output, data)
    parsed = unpack(data)
    header = parsed.header
    budget = None if max_error is not None else budget_for(volume, ratio, budget_bytes)
    report = {"input": str(source), "output": str(output), "raw_bytes": volume.raw_bytes,
              "bytes": len(data), "budget_bytes": budget,
              "ratio": volume.raw_bytes / len(data),
              "target_ratio": None if budget is None else round(volume.raw_bytes / budget, 4),
              "max_error": header.get("max_error"),
              "seconds": time.perf_counter() - started, "warnings": header.get("warnings", [])}
    if "keep" in header:
        report["keep"] = dict(header["keep"], mask_bytes=len(parsed.sections["keep/mask"]),
                              residual_bytes=len(parsed.sections["keep/residual"]))
    return report


def read_keep(spec: str, volume: Volume) -> Tuple[np.ndarray, float]:
    """'LABELMAP[:E]' -> (the mask of label > 0 on `volume`'s grid, E). The label map must share
    the scan's grid: a mask that is off by a voxel would keep the wrong tissue."""
    from .io import read

    path, bound = str(spec), ""
    if ":" in path and not Path(path).exists():
        path, _, bound = path.rpartition(":")
    try:
        keep_error = float(bound) if bound else 0.0
    except ValueError:
        raise InputError(f"--keep {spec!r}: the bound after ':' must be a number") from None
    labels = read(path)
    if tuple(labels.size) != tuple(volume.size):
        raise InputError(f"--keep {path}: label map is {'x'.join(map(str, labels.size))}, "
                         f"the scan {'x'.join(map(str, volume.size))}")
    if not (np.allclose(labels.spacing, volume.spacing, atol=1e-3) and np.allclose(labels.origin, volume.origin, atol=1e-2)
            and np.allclose(labels.direction, volume.direction, atol=1e-4)):
        raise InputError(f"--keep {path}: the label map's geometry (spacing, origin, direction) differs from the scan's")
    return labels.array > 0, keep_error


def decode_file(source, output, bundle=None, roi=None, roi_mm: Optional[str] = None, **kw) -> Volume:
    """Decode a `.dstd` file and write the volume (a folder without suffix: a DICOM series).
    `roi`: a box or 'x0:x1,y0:y1,z0:z1' (voxels); `roi_mm`: the same in LPS millimetres."""
    from .io import write

    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        if isinstance(roi, str) or roi_mm is not None:
            grid = _scan_frame(unpack(data).header)
            roi = region.parse(roi, grid.size) if roi_mm is None else region.parse_mm(roi_mm, grid)
        volume = decode(data, bundle, roi=roi, **kw)
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None
    from .io import itk

    if itk.suffix_of(Path(output)) is None:     # a folder: a DICOM series marked as lossy
        write(volume, output, lossy_ratio=volume.raw_bytes / len(data), lossy_method="DEEPSTD")
    else:
        write(volume, output)
    return volume


__all__ = ["encode", "decode", "encode_file", "decode_file", "find_bundle", "budget_for", "TOLERANCE"]
