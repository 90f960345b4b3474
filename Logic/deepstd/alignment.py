"""Into the template frame and back: the glue between the shape and texture stages.

Encode side: the forward field warps a scan onto the template grid, and the bundle's intensity
rule maps it to ~0..1, which is what the texture codec was trained on. Decode side: the decoded
texture (template grid, ~0..1) is read through the backward field at every voxel of the scan's
own grid and mapped back to original units. Training uses exactly the same functions, so the
codec sees at run time what it saw while it learned.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping, Optional, Tuple

import numpy as np

from .errors import BundleError
from .grid import shape_zyx, whole
from .progress import Reporter
from .volume import Volume

#: the default rule: per-scan robust percentiles (MR is unitless and scanner-dependent)
PERCENTILE_RULE = {"kind": "percentile", "low": 0.5, "high": 99.5}


@dataclass(frozen=True)
class IntensityMap:
    """unit = (value - lo) / (hi - lo); stored in the `.dstd` header so decode restores units."""

    lo: float
    hi: float

    def to_unit(self, array: np.ndarray) -> np.ndarray:
        return ((array - np.float32(self.lo)) / np.float32(self.hi - self.lo)).astype(np.float32)

    def from_unit(self, array: np.ndarray) -> np.ndarray:
        return (array * np.float32(self.hi - self.lo) + np.float32(self.lo)).astype(np.float32)

    def to_header(self) -> dict:
        return {"lo": self.lo, "hi": self.hi}

    @classmethod
    def from_header(cls, header: dict) -> "IntensityMap":
        lo, hi = float(header["lo"]), float(header["hi"])
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ValueError("intensity map needs finite lo < hi")
        return cls(lo, hi)


def intensity_map(array: np.ndarray, rule: Optional[Mapping[str, Any]] = None) -> IntensityMap:
    """The mapping of one scan under a bundle's rule.

    `percentile`: lo/hi at the rule's percentiles of this scan (MR). `window`: fixed lo/hi in
    the scan's units (CT in HU, where the same tissue must land on the same value in every scan).
    Values are rounded to float32 so the header (JSON) carries them exactly.
    """
    rule = rule or PERCENTILE_RULE
    kind = rule.get("kind")
    if kind == "percentile":
        sample = array[:: max(1, array.shape[0] // 64)].ravel()
        lo, hi = np.percentile(sample, [rule["low"], rule["high"]])
    elif kind == "window":
        lo, hi = rule["low"], rule["high"]
    else:
        raise BundleError(f"unknown intensity rule {kind!r}")
    lo, hi = float(np.float32(lo)), float(np.float32(hi))
    if not hi > lo:
        hi = float(np.float32(lo + 1.0))
    return IntensityMap(lo, hi)


#: the texture frame extends the template grid by this fraction of its size on every side, so
#: parts of a scan that fall outside the template's field of view after alignment are still coded
MARGIN_FRACTION = 0.12
#: both warps (into the template frame, and back on decode) use cubic B-splines: with linear
#: interpolation the two resamplings alone cap the reconstruction near 32 dB PSNR on LA scans
INTERPOLATION = "cubic"


def texture_frame(template_frame, margin=None, size=None):
    """The grid the texture frame is cut from (`frame_for`): the template grid padded by `margin`
    voxels (x, y, z), resampled to `size` voxels over the same box when the scan is finer than the
    template (`native_size`)."""
    if margin is None:
        margin = [max(8, int(round(MARGIN_FRACTION * n))) if n > 1 else 0 for n in template_frame.size]
    frame = template_frame.padded(margin)
    if size is not None:
        frame = frame.resampled(size)
    return frame, [int(m) for m in margin]


#: a texture frame refined to the scan's resolution stays below this many voxels (memory of the warp
#: and the texture: ~32 bytes per voxel when decoding); a finer scan is coded on a uniformly coarser
#: frame, with a warning
MAX_NATIVE_FRAME_VOXELS = 64_000_000
#: a frame is refined only as far as the byte budget gives it this many bits per voxel. Chosen on the
#: prostate-t2 *training* volume ProstateX-0000 axial: its native frame (42.5 Mvoxel) beat the
#: template's grid by 0.5 dB at 128x (0.0082 bits per frame voxel) and lost 0.74 dB at 256x (0.0041),
#: and only the template's grid reached 512x
MIN_BITS_PER_FRAME_VOXEL = 0.006
#: an axis is resampled only where the scan samples it this much more finely (not for rounding-level
#: differences such as 0.6245 against 0.625 mm, which would add a voxel row and a resampling for nothing)
NATIVE_TOLERANCE = 1.05
NATIVE_WARNING = (
    "the texture is coded at {coded} mm, coarser than the scan's {scan} mm: a finer frame would exceed "
    "{mvoxel:.0f} Mvoxel"
)


def native_size(frame, scan_grid, matrix: np.ndarray, budget: Optional[int] = None):
    """(size, warning): the voxels per axis (x, y, z) that sample `frame`'s box at least as finely as
    the scan samples the same direction, or (None, None) when the frame is already that fine.

    The template's grid is a registration device: a CT template at 2.3 mm must not cap a 0.84 mm scan.
    Along each frame axis the scan's sampling step is measured through the pre-alignment `matrix`
    (template -> scan mm): for a unit direction u in scan space, a grid samples 1/step = |(S^T u) / s|
    planes per mm (S its direction, s its spacing). With a byte `budget`, the frame is also kept to at
    most budget bits / MIN_BITS_PER_FRAME_VOXEL voxels (never coarser than the template's grid): at
    high ratios a finer frame spreads too few bits (the video codecs' resolution switching)."""
    linear = np.asarray(matrix, dtype=np.float64)[:3, :3]
    scan_axes = scan_grid.direction_matrix
    scan_spacing = np.asarray(scan_grid.spacing, dtype=np.float64)
    wanted = np.ones(3)
    for axis in range(3):
        along = linear @ frame.direction_matrix[:, axis]
        stretch = float(np.linalg.norm(along))
        density = float(np.linalg.norm((scan_axes.T @ (along / stretch)) / scan_spacing))
        factor = frame.spacing[axis] * stretch * density
        wanted[axis] = factor if factor > NATIVE_TOLERANCE else 1.0
    size = np.asarray(frame.size, dtype=np.int64)
    refined = lambda factors: np.where(size > 1, np.ceil((size - 1) * factors - 1e-6).astype(np.int64) + 1, size)  # noqa: E731
    if np.all(refined(wanted) == size):
        return None, None
    factors, warning = wanted, None
    while np.prod(refined(factors).astype(np.float64)) > MAX_NATIVE_FRAME_VOXELS and np.any(factors > 1):
        factors = np.maximum(1.0, factors * 0.97)
    capped_by_memory = not np.array_equal(factors, wanted)
    if budget is not None:
        most = 8.0 * budget / MIN_BITS_PER_FRAME_VOXEL
        while np.prod(refined(factors).astype(np.float64)) > most and np.any(factors > 1):
            factors = np.maximum(1.0, factors * 0.97)
    final = refined(factors)
    if capped_by_memory:
        coded = frame.resampled(final).spacing
        warning = NATIVE_WARNING.format(
            coded="×".join(f"{v:.2f}" for v in coded),
            scan="×".join(f"{v:.2f}" for v in scan_grid.spacing),
            mvoxel=MAX_NATIVE_FRAME_VOXELS / 1e6,
        )
    if np.array_equal(final, size):
        return None, warning
    return tuple(int(n) for n in final), warning


#: a scan whose physical volume exceeds that of its texture frame (as the pre-alignment maps it into
#: the scan) this many times would decode almost entirely as background: the encoder refuses to
#: code it and the decoder refuses a header that declares it (a crafted grid costs minutes of CPU)
MAX_SCAN_TO_FRAME = 64.0


def scan_to_frame(scan_grid, frame, matrix: np.ndarray) -> float:
    """Physical volume of the scan grid over that of the texture frame mapped into scan space."""
    scan = float(np.prod(np.asarray(scan_grid.size, np.float64) * np.asarray(scan_grid.spacing)))
    covered = float(np.prod(np.asarray(frame.size, np.float64) * np.asarray(frame.spacing)))
    return scan / max(covered * abs(float(np.linalg.det(np.asarray(matrix)[:3, :3]))), 1e-300)


#: a scan less covered than this by the default texture frame gets a wider one (and, if even that
#: cannot hold it, a warning)
MIN_COVERAGE = 0.98


#: coverage is checked at every voxel of scans up to this size (the compact frame's choice needs
#: it), else on every COVERAGE_STEP-th voxel per axis
COVERAGE_EXACT_VOXELS = 1 << 20
COVERAGE_STEP = 4


@dataclass(frozen=True)
class CodingFrame:
    """The texture frame a scan is coded on, and how the decoder rebuilds it from the header."""

    frame: Any
    margin: Tuple[int, int, int]
    size: Optional[Tuple[int, int, int]]  # refined to the scan's resolution; None: the template's
    window: Optional[Tuple[Tuple[int, int, int], Tuple[int, int, int]]]  # the part the scan reads; None: all
    block: Optional[int]  # None: coded whole
    coverage: float  # the fraction of the scan inside the frame
    warning: Optional[str]


def frame_for(scan: Volume, template_frame, code, block, budget: Optional[int] = None) -> CodingFrame:
    """The texture frame a scan is coded on through the decoded shape `code`. The default frame,
    widened until it holds the scan when it does not (`covering_frame`); when the result fits in one
    texture block, the compact frame coded whole; then resampled to the scan's resolution where the
    scan is finer than the template (`native_size`, as far as a byte `budget` pays for), and cut to the
    box the scan reads (`read_window`).
    Encoding and training both choose frames here, so the codec learns on the frames it will code."""
    from .grid import Frame

    step = 1 if scan.voxels <= COVERAGE_EXACT_VOXELS else COVERAGE_STEP
    frame, margin = texture_frame(template_frame)
    reader = ScanReader(template_frame, frame, code.backward, code.matrix, Frame.of(scan).coarse(step))
    if reader.coverage(frame) < MIN_COVERAGE:  # the scan reaches beyond the template's field of view
        frame, margin = covering_frame(template_frame, margin, reader)
    if block_for(frame.size, block) is None:
        frame, margin = compact_frame(template_frame, margin, reader.coverage)
    coverage = reader.coverage(frame)  # a resampled frame covers the same box
    size, warning = native_size(frame, Frame.of(scan), code.matrix, budget)
    if size is not None:
        frame = frame.resampled(size)
    window = read_window(frame, reader, step)
    if window is not None:
        frame = frame.window(*window)
    return CodingFrame(frame, tuple(margin), size, window, block_for(frame.size, block), coverage, warning)


def read_window(frame, reader: "ScanReader", step: int):
    """The box of `frame` voxels the scan reads, widened by the cubic prefilter's reach and by the
    gap between the sampled scan points (`reader` sees every `step`-th voxel), or None when that is
    the whole frame. Coding only this box spares the warp, the analysis and the memory of the frame
    voxels no scan voxel reads (a chest CT reads 60 % of a torso template's padded frame)."""
    from .grid import sampling

    box = sampling.read_box(frame, reader.disp, reader.scan_grid, reader.window)
    if box is None:
        return None
    gap = float(np.max(reader.scan_grid.spacing) / np.min(frame.spacing))
    halo = sampling.CUBIC_HALO + int(np.ceil(step * gap)) if step > 1 else 0
    size = np.asarray(frame.size)
    lo = np.maximum(np.asarray(box[0]) - halo, 0)
    hi = np.minimum(np.asarray(box[1]) + halo, size)
    if np.all(lo == 0) and np.all(hi == size):
        return None
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)


def block_for(size, block):
    """The block size a frame of `size` voxels is coded with: None (whole) when it fits in one block."""
    return None if block is not None and all(n <= block for n in size) else block


#: a frame widened to hold a whole scan stays below this many voxels (time and memory of the warp
#: and the texture; a prostate T2 at 0.89 mm needs up to 15 Mvoxel)
MAX_FRAME_VOXELS = 16_000_000


def covering_frame(template_frame, margin, reader: "ScanReader"):
    """The texture frame with margins widened (never narrowed) until every voxel of the reader's
    window reads inside it, within MAX_FRAME_VOXELS. A template is one scan's field of view: a
    scan of the same population may reach far beyond it (a coronal prostate T2 reads 60 % of its
    voxels outside the axial template's frame), and a voxel outside decodes as background."""
    from .grid import sampling

    low, high = sampling.read_extent(template_frame, reader.disp, reader.scan_grid, reader.window)
    size = np.asarray(template_frame.size)
    need = np.maximum(np.ceil(-low - 0.5), np.ceil(high - (size - 0.5))) + 1
    base = np.asarray(margin, dtype=np.int64)
    extra = np.maximum(need.astype(np.int64) - base, 0)
    for scale in np.linspace(1.0, 0.0, 21):  # the widest share of the extra that stays under the cap
        wider = base + np.floor(scale * extra).astype(np.int64)
        if np.prod(size + 2 * wider) <= MAX_FRAME_VOXELS:
            break
    wider = [int(m) for m in wider]
    return template_frame.padded(wider), wider


#: a compact frame may leave this much more of the scan outside than the default one (on
#: hippocampus crops, 1.3 % less coverage cost 0.6 dB)
COMPACT_COVERAGE_LOSS = 0.001


def compact_frame(template_frame, margin, coverage_of, align: int = 16):
    """The texture frame, with a margin no wider than `margin`, whose size rounded up to `align`
    (the whole-volume mode's padding) is smallest while `coverage_of(frame)` stays within
    COMPACT_COVERAGE_LOSS of the default frame's. The coded volume, not the frame, sets the bytes:
    a 41x47x42 hippocampus template with 8-voxel margins is coded as 64³, with (3, 3, 3) as
    48x64x48 (about 190 fewer bytes at the lowest rate, same PSNR)."""
    import itertools

    def options(n, widest):  # per axis: the widest margin for each aligned size up to the default
        sizes = range(-(-n // align) * align, -(-(n + 2 * widest) // align) * align + 1, align)
        return sorted({min(widest, (size - n) // 2) for size in sizes})

    default = template_frame.padded(margin)
    floor = coverage_of(default) - COMPACT_COVERAGE_LOSS
    best = (default, [int(m) for m in margin])
    volume_of = lambda f: np.prod([-(-n // align) * align for n in f.size])  # noqa: E731
    choices = itertools.product(*(options(n, m) for n, m in zip(template_frame.size, margin)))
    for candidate in sorted(choices, key=lambda c: volume_of(template_frame.padded(c))):
        frame = template_frame.padded(candidate)
        if volume_of(frame) >= volume_of(best[0]):
            break
        if coverage_of(frame) >= floor:
            best = (frame, [int(m) for m in candidate])
            break
    return best


def into_template(
    scan: Volume,
    backward,
    matrix: np.ndarray,
    template,
    frame,
    mapping: IntensityMap,
    reporter: Optional[Reporter] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """The scan warped onto the texture `frame` in unit intensities, and its support there.

    The warp is the numerical inverse of the *backward* network (the shape code, on the `template`
    frame, clamped outside it) followed by `matrix`, the template -> scan pre-alignment: so the
    decoder's backward warp undoes it up to interpolation, not up to the cycle error of the
    forward network (measured on LA: +2 dB for the shape path alone). Support = texture voxels
    that read inside the scan; outside it the texture continues the scan smoothly (`extend_outside`).
    """
    from .grid import sampling
    from .shape import field

    disp = field.inverse_displacement(
        field.SampledField(backward, template), template, grid=frame, post=matrix, reporter=reporter
    )
    warped = sampling.warp(
        scan.with_array(mapping.to_unit(scan.array)), disp, frame, INTERPOLATION, default=np.nan, reporter=reporter
    ).array
    support = ~np.isnan(warped)
    return extend_outside(warped, support), support


#: smoothing and decay length (voxels) of the texture outside the scan's support; see `extend_outside`
EXTENSION_SIGMA = 2.0
EXTENSION_DECAY = 8.0
#: bumped whenever what `into_template` returns changes, so `deepstd train` redoes its cached volumes
ALIGNMENT_VERSION = 2


def extend_outside(unit: np.ndarray, support: np.ndarray) -> np.ndarray:
    """`unit` inside `support`, outside it a smooth continuation that fades to 0 (the low percentile).

    The decoder never reads far outside the support, but a hard step there (scan edge to a constant)
    costs bits and rings back into the scan at low rates, and a continuation that does not fade
    spends bits on content nobody reads. Measured end to end: on hippocampus crops (crop faces a
    large share of the voxels) the zero step lost 3.1 dB at 40×; on an LA scan at 128× a
    non-fading continuation lost 0.8 dB and 0.047 SSIM to this one, the zero step 0.4 dB. The
    continuation is the nearest supported value, blurred (σ = EXTENSION_SIGMA), times
    exp(−distance / EXTENSION_DECAY)."""
    from scipy import ndimage

    if support.all():
        return unit
    if not support.any():
        return np.zeros_like(unit)
    distance, nearest = ndimage.distance_transform_edt(~support, return_distances=True, return_indices=True)
    smooth = ndimage.gaussian_filter(unit[tuple(nearest)], EXTENSION_SIGMA)
    return np.where(support, unit, smooth * np.exp(-distance / EXTENSION_DECAY)).astype(unit.dtype, copy=False)


class ScanReader:
    """How the voxels of a window of the scan grid read the decoded texture (the decoder's side).

    The backward map is evaluated once on the window (it does not depend on the texture), and with
    it the box of texture voxels the window's values depend on, so only the texture blocks that
    reach it need decoding. Every value equals that of a whole-grid decode: points are computed
    from the scan grid's own indices and the cubic prefilter has a finite reach (`field`). Decode
    (whole or a region) and the encoders that must know what the decoder will compute (maximum
    error, keep mask) all read through this class.
    """

    def __init__(
        self, template, frame, backward, matrix: np.ndarray, scan_grid, window=None, reporter: Optional[Reporter] = None
    ):
        from .shape import field

        self.frame, self.scan_grid = frame, scan_grid
        self.window = window or whole(scan_grid.size)
        self._coverage = {}
        self.disp = field.displacement(
            field.SampledField(backward, template),
            template,
            grid=scan_grid,
            pre=np.linalg.inv(matrix),
            reporter=reporter,
            clamp=True,
            window=self.window,
        )

    @cached_property
    def box(self):
        """The texture voxels the window's values depend on ((x0, y0, z0), (x1, y1, z1)), None when
        it reads nothing. The whole scan takes the whole frame: any box that holds the footprint
        plus the prefilter's halo gives the same values, and this saves a pass over every voxel."""
        from .grid import sampling

        if self.window == whole(self.scan_grid.size):
            return whole(self.frame.size)
        return sampling.read_box(self.frame, self.disp, self.scan_grid, self.window)

    def coverage(self, frame=None) -> float:
        """The fraction of the window's voxels that read inside the texture frame (or `frame`; the
        rest decode as the background value), without decoding anything."""
        from .grid import sampling

        frame = frame or self.frame
        if frame not in self._coverage:  # choosing a frame asks for the same ones more than once
            self._coverage[frame] = sampling.inside_fraction(frame, self.disp, self.scan_grid, self.window)
        return self._coverage[frame]

    @property
    def texture_box(self):
        """The texture voxels needed, as ((z0, y0, x0), (z1, y1, x1)) for `TextureCodec.decompress`
        (None: the window reads nothing of the texture)."""
        if self.box is None:
            return None
        (x0, y0, z0), (x1, y1, z1) = self.box
        return (z0, y0, x0), (z1, y1, x1)

    def crop(self, texture: np.ndarray) -> Optional[np.ndarray]:
        """The needed part of a whole decoded texture."""
        if self.box is None:
            return None
        (z0, y0, x0), (z1, y1, x1) = self.texture_box
        return texture[z0:z1, y0:y1, x0:x1]

    def read(
        self, part: Optional[np.ndarray], mapping: IntensityMap, reporter: Optional[Reporter] = None
    ) -> Tuple[np.ndarray, float]:
        """The window's values in original units from the texture inside `texture_box`, and the
        fraction of its voxels whose backward map landed inside the texture frame (the rest get
        the background value; the margin makes this rare)."""
        from .grid import sampling

        if self.box is None:
            values = np.full(shape_zyx(self.window), np.nan, dtype=np.float32)
        else:
            values = sampling.sample_cubic(
                self.frame, part, self.box[0], self.disp, self.scan_grid, self.window, default=np.nan, reporter=reporter
            )
        outside = np.isnan(values)
        coverage = 1.0 - float(outside.mean())
        values[outside] = 0.0
        return mapping.from_unit(values), coverage


def from_template(
    texture: np.ndarray,
    template,
    frame,
    backward,
    matrix: np.ndarray,
    scan_grid,
    mapping: IntensityMap,
    reporter: Optional[Reporter] = None,
) -> Tuple[np.ndarray, float]:
    """A whole decoded texture (on `frame`) read at every voxel of the scan's grid, in original units,
    and the coverage (see `ScanReader.read`)."""
    reader = ScanReader(template, frame, backward, matrix, scan_grid, reporter=reporter)
    return reader.read(reader.crop(texture), mapping, reporter)


__all__ = [
    "IntensityMap",
    "intensity_map",
    "into_template",
    "extend_outside",
    "from_template",
    "ScanReader",
    "texture_frame",
    "compact_frame",
    "covering_frame",
    "frame_for",
    "CodingFrame",
    "native_size",
    "MAX_NATIVE_FRAME_VOXELS",
    "block_for",
    "PERCENTILE_RULE",
    "MIN_COVERAGE",
    "ALIGNMENT_VERSION",
    "MAX_SCAN_TO_FRAME",
    "scan_to_frame",
]
