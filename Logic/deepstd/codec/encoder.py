"""The encoder: register, align, analyse once; then pack the file at any texture rate.

Rate control runs on the *complete* file: the shape code is sized first (`shape.sizing`), then the
texture rate knob is bisected on the packed file's length (`ratecontrol.largest_within`) until it
is ≤ the budget and within TOLERANCE under it. The keep and maximum-error layers (`layers`) add
their sections on top of the same `EncodedScan`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .. import __version__
from ..alignment import (
    MAX_FRAME_VOXELS,
    MAX_SCAN_TO_FRAME,
    MIN_COVERAGE,
    frame_for,
    intensity_map,
    into_template,
    scan_to_frame,
)
from ..bundle import Bundle, TextureCoding, resolve_bundle, texture_codec
from ..container import MAX_ORIGIN_MM, pack, unpack
from ..device import pick_device
from ..errors import BudgetError, InputError
from ..grid import Frame
from ..numbers import number_at_least
from ..progress import CancelToken, ProgressCallback, Reporter
from ..ratecontrol import STEPS as SEARCH_STEPS
from ..ratecontrol import largest_within
from ..texture.context import side_for
from ..volume import Volume
from .header import BundleRef, CodecKeys, DstdHeader, KeepInfo

#: the whole file must land within this fraction under the budget
TOLERANCE = 0.02
#: the texture rate a refinement layer builds on (`Refinement`): where the texture codec saturates,
#: and with effort 1 wherever the budget allows more texture. Chosen on a *training* LA scan
#: (LA_1D7C…, with SPERR as the layer's coder): at 32x texture rates 0.2-0.6 plus the layer land within
#: 0.15 dB of each other (35.73-35.86 dB) and the finest rate plus it 1.3 dB lower (34.53 dB); at 64x
#: 0.2-0.6 within 0.15 dB.
SPLIT_RATE = 0.5
EFFORTS = (0, 1, 2)
#: how far under the budget that file may land: the layer's tries cost a fraction of a second, and
#: at 1 % (the split's tolerance) the file gave up 0.03 dB to the SPERR peer on the chest CT
FILL_ALONE = 0.002


def check_effort(effort) -> None:
    """An encoder preset callers pass on (batch, PACS, the Slicer worker) is refused before work starts."""
    if isinstance(effort, bool) or effort not in EFFORTS:
        raise InputError(f"effort must be one of {', '.join(map(str, EFFORTS))}, got {effort!r}")


#: a lean header, the section framing and the texture stream's own header; below this (plus the
#: smallest shape code) no scan can be coded
MIN_FILE_BYTES = 160

BundleLike = Union[Bundle, str]

# Warnings a file may carry. Their fixed words are in the header's preset dictionary
# (`container.HEADER_DICTIONARY`), so rewording one would silently change file sizes: test_codec
# checks each against the dictionary, which only a new format minor version may change.
FINEST_RATE_WARNING = (
    "the finest texture rate of this bundle fits in {bytes} bytes ({ratio:.1f}x); the budget allows more"
)
COVERAGE_WARNING = (
    "only {percent:.0f} % of the scan lies inside the bundle's texture frame (its template plus a "
    "margin, widened up to {mvoxel:.0f} Mvoxel); the rest decodes as background: this bundle's "
    "template does not cover scans with this field of view"
)


def budget_for(volume: Volume, ratio: Optional[float], budget_bytes: Optional[int]) -> int:
    """The byte budget a ratio or an explicit budget asks for."""
    if (ratio is None) == (budget_bytes is None):
        raise InputError("give exactly one of a ratio or a byte budget")
    if ratio is not None:
        budget = int(volume.raw_bytes // number_at_least(ratio, 1, "the ratio"))
        if budget < 1:
            raise BudgetError(f"a ratio of {ratio:g} leaves no byte for this scan ({volume.raw_bytes} raw bytes)")
        return budget
    if int(budget_bytes) < 1:  # type: ignore[arg-type]
        raise InputError(f"the byte budget must be positive, got {budget_bytes!r}")
    return int(budget_bytes)  # type: ignore[arg-type]


def infeasible(volume: Volume, budget: int, smallest: int) -> BudgetError:
    return BudgetError(
        f"a budget of {budget} bytes ({volume.raw_bytes / budget:.0f}x) is too small for "
        f"this scan: the smallest file it can be coded in is about {smallest} bytes, i.e. the "
        f"largest feasible ratio is {volume.raw_bytes / smallest:.0f}x"
    )


@dataclass
class EncodedScan:
    """The rate-independent part of an encode (registration, alignment, analysis) and how to pack
    the DeepSTD layer at any texture rate."""

    header: DstdHeader
    shape: bytes
    analysis: object
    codec: object
    warnings: List[str]
    workers: Optional[int]
    started: float
    #: the aligned texture frame, its support and the template side input (None for a network that
    #: reads no template), kept only for the latent search (effort 2)
    aligned: Optional[tuple] = None

    def streams(self, rate: float):
        return self.codec.code(self.analysis, rate, self.workers)  # type: ignore[attr-defined]

    def file(self, header: DstdHeader, streams, extra: Optional[Dict[str, bytes]] = None) -> bytes:
        """The whole file: `header` (fitted to its budget) with the streams' rate and the warnings."""
        final = replace(header, codec=replace(header.codec, texture_rate=streams.rate_q), warnings=tuple(self.warnings))
        return pack(final.fitted().to_dict(), {"shape": self.shape, "texture": streams.to_bytes(), **(extra or {})})

    def pack(self, header: DstdHeader, rate: float) -> bytes:
        return self.file(header, self.streams(rate))


def prepare(
    volume: Volume,
    bundle: BundleLike,
    budget: Optional[int],
    device: str,
    workers: Optional[int],
    reporter: Reporter,
    keep_aligned: bool = False,
) -> EncodedScan:
    """Register, align and analyse; the shape code takes its share of `budget` (None: full width).
    `keep_aligned` keeps the aligned frame in the result (memory: the frame, for the latent search)."""
    from ..shape import decode_shape
    from ..shape.code import PREALIGNMENT_BYTES
    from ..shape.sizing import code_shape

    bundle = resolve_bundle(bundle)
    if any(abs(o) > MAX_ORIGIN_MM for o in volume.origin):  # the decoder would refuse the file
        raise InputError(f"the scan's origin {volume.origin} lies beyond ±{MAX_ORIGIN_MM:g} mm: corrupt geometry")
    if budget is not None and budget < MIN_FILE_BYTES + PREALIGNMENT_BYTES:
        raise infeasible(volume, budget, MIN_FILE_BYTES + PREALIGNMENT_BYTES)
    codec = texture_codec(bundle, pick_device(device))
    started = time.perf_counter()

    config = bundle.config
    warnings = list(volume.meta.get("warnings", []))
    if config.is_ct != (volume.units == "HU"):
        warnings.append(
            f"the scan ({volume.units}) does not look like the bundle's modality "
            f"({config.modality.upper()}); quality may be poor"
        )
    shape = code_shape(volume, bundle.template, config.registration, budget, reporter, device)
    if shape.warning:
        warnings.append(shape.warning)
    mapping = intensity_map(volume.array, config.intensity)
    stored = decode_shape(shape.code)  # warp with exactly what the decoder will have
    coding = frame_for(volume, shape.frame, stored, config.texture.block, budget)
    frame, margin, block, coverage = coding.frame, coding.margin, coding.block, coding.coverage
    if coding.warning:
        warnings.append(coding.warning)
    reach = scan_to_frame(Frame.of(volume), frame, stored.matrix)
    if reach > MAX_SCAN_TO_FRAME:
        raise InputError(
            f"this scan covers {reach:.0f}x the physical volume of the bundle's texture frame; it would decode "
            f"almost entirely as background: use a bundle whose template covers this field of view"
        )
    unit, support = into_template(volume, stored.backward, stored.matrix, shape.frame, frame, mapping)
    if coverage < MIN_COVERAGE:
        warnings.append(COVERAGE_WARNING.format(percent=100 * coverage, mvoxel=MAX_FRAME_VOXELS / 1e6))
    reporter("texture", 0.5, "analysing the aligned texture")
    side = side_for(codec.config, bundle.template, coding.margin, coding.size, coding.window, unit.shape)
    analysis = codec.analyse(unit, block, support, 0.0, workers, reporter.scaled(0.5, 0.85), side)
    header = DstdHeader.for_volume(
        volume,
        intensity=mapping,
        bundle=BundleRef(bundle.name, bundle.sha256),
        codec=CodecKeys(margin, frame_size=coding.size, frame_window=coding.window, **shape.stats),
        encoder_version=__version__,
        dicom=volume.meta.get("dicom") or None,
    )
    aligned = (unit, support, side) if keep_aligned else None
    return EncodedScan(header, shape.code, analysis, codec, warnings, workers, started, aligned)


def encode(
    volume: Volume,
    bundle: BundleLike,
    ratio: Optional[float] = None,
    budget_bytes: Optional[int] = None,
    max_error: Optional[float] = None,
    keep: Optional[Volume] = None,
    keep_error: float = 0.0,
    device: str = "auto",
    workers: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    effort: int = 0,
    require_texture: bool = False,
) -> bytes:
    """Compress `volume` to at most `raw_bytes / ratio` (or `budget_bytes`) bytes, headers included;
    or, with `max_error`, so that every voxel is within ±max_error of the original (0: lossless),
    at whatever size that takes. `keep`: a label map on the scan's grid whose voxels > 0 are coded
    within ±keep_error (0: lossless) inside the same budget; the mask is stored in the file.
    `effort` 1: where the budget allows the texture more than SPLIT_RATE, also code it at SPLIT_RATE
    with a refinement layer and keep whichever file decodes closer to the scan (slower). `effort` 2
    also searches the texture latents for this scan (`texture.latent_search`; a few minutes more on a
    CPU) and keeps them where the file decodes closer. Without a keep mask the file that holds the
    scan coded by the refinement layer alone (`refinement_only`)
    competes with the texture's: the closer one is kept, and it also meets budgets below the
    texture's smallest file; at effort 0, where the bundle's standing record says its texture never
    decoded closer on its training scans (`bundle.TextureStanding`), that file is coded without
    trying the texture (registration and texture take most of the encode time). `require_texture`
    leaves it out: the file always holds the learned texture (what the texture codec alone
    achieves, for research and the benchmark)."""
    from . import layers

    check_effort(effort)
    if max_error is not None:
        if ratio is not None or budget_bytes is not None:
            raise InputError("give either a ratio/byte budget or a maximum error, not both")
        if keep is not None:
            raise InputError(
                "a keep mask goes with a ratio or a byte budget; a maximum error already bounds every voxel"
            )
        return layers.encode_max_error(volume, bundle, max_error, device, workers, progress, cancel)

    budget = budget_for(volume, ratio, budget_bytes)
    mask = layers.keep_mask(volume, keep, keep_error) if keep is not None else None
    reporter = Reporter(progress, cancel)
    started = time.perf_counter()
    refinable = mask is None
    competing = refinable and not require_texture
    resolved = resolve_bundle(bundle)
    standing = resolved.standing
    if competing and effort == 0 and standing is not None and not standing.worth_trying:
        best = refinement_only(volume, budget, reporter, workers)  # the texture never won on the training scans
    else:
        try:
            best, layer = _texture_file(
                volume, resolved, budget, mask, keep_error, refinable, effort, device, workers, reporter
            )
        except BudgetError:
            if not competing:
                raise
            # below the smallest texture file
            best = refinement_only(volume, budget, reporter.scaled(0.85, 1.0), workers)
        else:
            if competing:
                best = _closer_of(best, layer, volume, budget, reporter.scaled(0.85, 1.0), workers)  # type: ignore[arg-type]
    reporter("write", 1.0, f"{len(best)} bytes in {time.perf_counter() - started:.1f} s")
    return best


def _closer_of(
    texture: bytes, layer: "Refinement", volume: Volume, budget: int, reporter: Reporter, workers: Optional[int]
) -> bytes:
    """The texture's file or the refinement layer alone's, whichever decodes closer."""
    try:
        alone, alone_error = _closest_refinement_alone(volume, budget, reporter, workers)
    except BudgetError:
        return texture
    return alone if alone_error < layer.error(texture) else texture


def _texture_file(
    volume: Volume,
    bundle: Bundle,
    budget: int,
    mask,
    keep_error: float,
    refinable: bool,
    effort: int,
    device: str,
    workers: Optional[int],
    reporter: Reporter,
) -> Tuple[bytes, Optional["Refinement"]]:
    """The file with the texture (alone, with a keep layer, or with a refinement layer), and the
    `Refinement` that measures files as the decoder sees them (None with a keep mask)."""
    from ..texture.rate import quantise_rate
    from . import layers

    scan = prepare(volume, bundle, budget, device, workers, reporter, keep_aligned=effort >= 2 and mask is None)
    header = replace(scan.header, target_ratio=round(volume.raw_bytes / budget, 4), budget_bytes=budget)
    coding = bundle.config.texture
    if not refinable:
        # the span ends where the refinement layer takes over; without one (a keep mask, whose
        # residual takes the spare bytes) the texture goes on over the whole span
        coding = replace(coding, rates=(coding.rates[0], 1.0))
    if mask is None:
        build = lambda knob: scan.pack(header, coding.rate(knob))  # noqa: E731
    else:
        header = replace(header, keep=KeepInfo(float(keep_error), int(mask.sum())))
        keep_layer = layers.KeepLayer(scan, bundle, header, volume, mask, float(keep_error))
        build = lambda knob: keep_layer.pack(coding.rate(knob))  # noqa: E731

    search = reporter.scaled(0.85, 1.0)
    search("entropy", 0.0, f"fitting {budget} bytes")
    best, smallest = largest_within(
        build,
        budget,
        TOLERANCE,
        on_step=lambda step: search("entropy", (step + 1) / SEARCH_STEPS, f"fitting {budget} bytes"),
    )
    if best is None:
        if mask is not None:
            sections = unpack(smallest).sections
            raise BudgetError(
                f"a budget of {budget} bytes ({volume.raw_bytes / budget:.0f}x) is too small with "
                f"this keep mask: the mask takes {len(sections['keep/mask'])} bytes and its voxels "
                f"within ±{keep_error:g} another {len(sections['keep/residual'])}; the whole file "
                f"needs at least {len(smallest)} bytes ({volume.raw_bytes / len(smallest):.0f}x)"
            )
        raise infeasible(volume, budget, len(smallest))
    saturated = len(best) < (1 - TOLERANCE) * budget and _texture_rate(best) == quantise_rate(coding.rates[1])
    generous = effort >= 1 and _texture_rate(best) > quantise_rate(SPLIT_RATE)
    searching = effort >= 2 and mask is None and not saturated
    layer = Refinement(scan, bundle, header, volume, budget) if refinable or searching else None
    if searching:
        best = _searched(scan, bundle, coding, header, budget, best, layer, reporter)  # type: ignore[arg-type]
    refined = None
    if layer is not None and refinable and (saturated or generous):
        search("refine", 0.0, "coding what the texture misses")
        refined = layer.file(min(SPLIT_RATE, coding.rates[1]), search)
        if refined is not None and not saturated and layer.error(best) <= layer.error(refined):
            refined = None  # effort 1 measured both: the texture alone was as good
    if refined is not None:
        best = refined
    elif saturated:
        scan.warnings.append(FINEST_RATE_WARNING.format(bytes=len(best), ratio=volume.raw_bytes / len(best)))
        noted = build(1.0)
        best = noted if len(noted) <= budget else best  # the note itself must not break the budget
    return best, layer


def refinement_only(volume: Volume, budget: int, reporter: Reporter, workers: Optional[int] = None) -> bytes:
    """The file that holds the scan coded by the refinement layer alone (format 1.2: no shape, no
    texture, no bundle needed to decode), or a BudgetError that says its smallest size. Where the
    texture codec loses to the layer at equal bytes (on training scans of every bundle: docs/CODEC.md)
    or its smallest file exceeds the budget, this is the closer file; `encode` keeps whichever
    decodes closer, so a DeepSTD file is never farther than its own refinement layer alone. Of the
    post-filters the budget affords (`postfilter.choices_for`), the one whose file decodes closer.
    Progress is reported over the whole of `reporter`'s span; `workers`: threads for the layer's
    candidate codings (`_layer_threads`)."""
    return _closest_refinement_alone(volume, budget, reporter, workers)[0]


def _layer_threads(workers: Optional[int]) -> int:
    """Threads the refinement layer may code its candidates on (`refine.fit`): `workers`, or as many
    as torch is set to use, as for the texture's blocks (the bench and batch jobs set 1)."""
    import torch

    return max(1, workers or torch.get_num_threads())


def _closest_refinement_alone(
    volume: Volume, budget: int, reporter: Reporter, workers: Optional[int] = None
) -> Tuple[bytes, float]:
    """`refinement_only`'s file and its mean squared error as the decoder will decode it (in the
    units `Refinement.error` measures, so `encode` compares it with the texture's file as it is)."""
    import numpy as np

    from .. import postfilter, refine
    from ..volume import cast_to_dtype

    header = DstdHeader.for_volume(
        volume,
        intensity=None,
        bundle=None,
        codec=CodecKeys((0, 0, 0)),
        warnings=tuple(volume.meta.get("warnings", [])),
        encoder_version=__version__,
        target_ratio=round(volume.raw_bytes / budget, 4),
        budget_bytes=budget,
        dicom=volume.meta.get("dicom") or None,
    ).fitted()
    original = cast_to_dtype(volume.array, volume.dtype).astype(np.float32)
    choices = postfilter.choices_for(budget)
    closest: Optional[Tuple[float, bytes]] = None
    near = None  # the last layer coded: the next search starts from its quantiser step
    threads = _layer_threads(workers)
    for k, bands in enumerate(choices):
        search = reporter.scaled(k / len(choices), (k + 1) / len(choices))
        coded = _refinement_alone_file(header, original, budget, bands, search, near, threads)
        if coded is None:
            continue
        data, decoded, near = coded
        error = float(np.mean((cast_to_dtype(decoded, volume.dtype).astype(np.float64) - original) ** 2))
        if closest is None or error < closest[0]:
            closest = (error, data)
    if closest is None:
        framing = _framing(lambda section: pack(header.to_dict(), {refine.SECTION: section}), budget)
        raise infeasible(volume, budget, framing + len(refine.smallest(original)))
    return closest[1], closest[0]


def _refinement_alone_file(header: DstdHeader, original, budget: int, bands, search: Reporter, near, threads: int):
    """(file, the scan it decodes to before rounding, its refine section) with the refinement layer
    alone and a post-filter of `bands` classes (None: no filter), or None where it does not fit the
    budget.
    The filter's size is known only once it is fitted to the decoded layer, so the layer is fitted
    around `postfilter.reserved_size` first and, where that file is over the budget or more than
    FILL_ALONE under it, once more around the filter's real size; the larger file within the
    budget is kept. `near`: a refine section of the scan at about this size; `threads`: for its
    candidates (both `refine.fit`)."""
    from .. import postfilter

    reserve = postfilter.reserved_size(bands) if bands else 0
    kept = None
    for attempt in range(2 if bands else 1):
        span = search.scaled(attempt / 2, (attempt + 1) / 2) if bands else search
        coded = _filtered_layer(header, original, budget, bands, reserve, span, near, threads)
        if coded is None:
            break
        data, decoded, reserve_used, near = coded
        if len(data) <= budget and (kept is None or len(data) > len(kept[0])):
            kept = (data, decoded, near)
        if reserve_used == reserve or (1 - FILL_ALONE) * budget <= len(data) <= budget:
            break
        reserve = reserve_used
    return kept


def _filtered_layer(
    header: DstdHeader, original, budget: int, bands, reserve: int, search: Reporter, near, threads: int
):
    """(file, decoded, the filter section's size, the refine section) with the layer fitted to the budget
    less `reserve` bytes held for the filter, or None where the framing alone fills the budget."""
    from .. import postfilter, refine

    reserved = {postfilter.SECTION: bytes(reserve)} if bands else {}
    framing = _framing(lambda section: pack(header.to_dict(), {**reserved, refine.SECTION: section}), budget)
    if framing >= budget:
        return None
    search("refine", 0.0, "coding the scan with the refinement layer alone")
    section = refine.fit(
        original,
        header.grid.spacing[::-1],
        budget - framing,
        FILL_ALONE,
        lambda n: search("refine", (n + 1) / 12, "fitting"),
        near,
        threads,
    )
    if section is None:
        return None
    values = refine.decompress(section, header.grid.shape_zyx)  # what the decoder will have
    sections = {refine.SECTION: section}
    if bands:
        search("refine", 0.8, f"fitting the post-filter ({bands[0]} x {bands[1]} classes)")
        filter_section, filtered = postfilter.fit_and_apply(values, original, bands)
        decoded = refine.within_range(filtered, section)
        sections = {postfilter.SECTION: filter_section, **sections}
    else:
        decoded = values.astype("float64")
    return pack(header.to_dict(), sections), decoded, len(sections.get(postfilter.SECTION, b"")), section


def _searched(
    scan: EncodedScan,
    bundle: Bundle,
    coding: TextureCoding,
    header: DstdHeader,
    budget: int,
    best: bytes,
    layer: "Refinement",
    reporter,
) -> bytes:
    """`best` or, if it decodes closer within the same budget, the file whose texture latents were
    searched at best's rate (`texture.latent_search`) and whose rate was fitted again over the span
    `encode` fitted `best` over (`coding`)."""
    from ..texture.latent_search import search_latents, trained_lambdas
    from ..texture.rate import RATE_STEPS

    unit, support, side = scan.aligned  # type: ignore[misc]
    codec: Any = scan.codec
    start: Any = scan.analysis
    lambdas = trained_lambdas(bundle.config.training, codec.config.levels)
    if lambdas is None:  # a bundle that does not say what it was trained for: nothing to search with
        return best
    rate = _texture_rate(best) / RATE_STEPS
    analysis = search_latents(codec, start, unit, support, rate, lambdas, side, report=reporter.scaled(0.85, 0.95))
    searched = replace(scan, analysis=analysis)
    candidate, _ = largest_within(lambda knob: searched.pack(header, coding.rate(knob)), budget, TOLERANCE)
    if candidate is None or layer.error(candidate) >= layer.error(best):
        return best
    return candidate


class Refinement:
    """Files made of the texture at some rate plus a refinement layer (`deepstd.refine`) filling the
    rest of the budget, and their error as the decoder will see it (to choose between candidates)."""

    def __init__(self, scan: EncodedScan, bundle: Bundle, header: DstdHeader, volume: Volume, budget: int):
        import numpy as np

        from ..volume import cast_to_dtype
        from .decoder import Decoder

        self.scan, self.header, self.budget, self.dtype = scan, header, budget, volume.dtype
        self.original = cast_to_dtype(volume.array, volume.dtype).astype(np.float32)
        self.view = Decoder(bundle, header, scan.shape, None, scan.codec, scan.workers)
        self._bases: Dict[bytes, np.ndarray] = {}
        self._errors: Dict[bytes, float] = {}  # effort 1 and `encode` may measure the same file

    def _base(self, texture: bytes):
        """The DeepSTD layer a texture section decodes to (kept: effort 1 asks twice)."""
        if texture not in self._bases:
            self._bases[texture] = self.view.base(texture)[0]
        return self._bases[texture]

    def error(self, data: bytes) -> float:
        """Mean squared error of a file with the texture (alone or with a refinement layer), decoded
        as the decoder will (a file of the refinement layer alone is measured where it is coded)."""
        import numpy as np

        from .. import refine
        from ..volume import cast_to_dtype

        if data in self._errors:
            return self._errors[data]
        sections = unpack(data).sections
        decoded = self._base(sections["texture"]).astype(np.float64)
        if refine.SECTION in sections:
            decoded = decoded + refine.decompress(sections[refine.SECTION], self.header.grid.shape_zyx)
        error = float(np.mean((cast_to_dtype(decoded, self.dtype).astype(np.float64) - self.original) ** 2))
        self._errors[data] = error
        return error

    def file(self, rate: float, reporter: Reporter) -> Optional[bytes]:
        """The file with the texture at `rate` and the refinement layer, or None when no layer fits."""
        from .. import refine

        streams = self.scan.streams(rate)
        residual = self.original - self._base(streams.to_bytes())
        framing = _framing(lambda section: self.scan.file(self.header, streams, {refine.SECTION: section}), self.budget)
        if framing >= self.budget:
            return None
        section = refine.fit(
            residual,
            self.header.grid.spacing[::-1],
            self.budget - framing,
            TOLERANCE / 2,
            lambda n: reporter("refine", (n + 1) / 9, "fitting"),
            workers=_layer_threads(self.scan.workers),
        )
        if section is None:
            return None
        data = self.scan.file(self.header, streams, {refine.SECTION: section})
        return data if len(data) <= self.budget else None


def _framing(file_with: Callable[[bytes], bytes], budget: int) -> int:
    """The bytes a file takes besides its last section's payload, counted with a section length
    field as long as the budget's (a varint: an empty section's takes one byte)."""
    from ..container import varint_size

    return len(file_with(b"")) - 1 + varint_size(budget)


def _texture_rate(data: bytes) -> int:
    from ..texture import TextureStreams

    return TextureStreams.from_bytes(unpack(data).sections["texture"]).rate_q


__all__ = ["encode", "check_effort", "prepare", "budget_for", "EncodedScan", "EFFORTS", "TOLERANCE", "MIN_FILE_BYTES"]
