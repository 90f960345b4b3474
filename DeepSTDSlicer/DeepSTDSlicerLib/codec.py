"""The seam between the module and the `deepstd` codec: every call into it goes through here.

The module only moves data; `deepstd` computes. Bundles are read by `deepstd.bundle`, which needs
neither torch nor the codec, so choosing a codec and showing its template work before the heavy
dependencies are installed; registration, encoding and decoding call the package's public
functions, imported on first use. A missing piece raises `CodecUnavailable`, whose message the
GUI shows as is.

The module's long operations do not call these in Slicer's process: they run in the worker
process (`jobs.start_worker`, `deepstd.worker`), which calls the same public functions. What
runs here in-process is quick (headers, bundles) or synchronous by nature (the `.dstd`
reader/writer plugins, which Slicer waits for).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, List, NamedTuple, Optional

if TYPE_CHECKING:
    from deepstd.codec.header import DstdHeader
    from deepstd.volume import Volume

DEVICES = ("auto", "cpu", "cuda")


class CodecUnavailable(RuntimeError):
    """A part of deepstd the operation needs is not installed or not importable."""


def require(module: str, purpose: str):
    """Import a deepstd module on first use, or explain which feature is unavailable and why."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise CodecUnavailable(
            f"{purpose} needs {module}, which cannot be imported here: {error}. "
            "Update the DeepSTD extension, or install its dependencies "
            "(DeepSTD module, Codec section)."
        ) from error


# --- bundles ------------------------------------------------------------------------------------


def bundles():
    """`deepstd.bundle` (torch-free): shipped bundles (`shipped_bundles`, `SHIPPED_DIR`), loading
    by name or path (`load_bundle`, `shipped_path`), ids (`bundle_sha256`) and finding the bundle
    a file was coded with (`find_bundle_file`)."""
    return require("deepstd.bundle", "Choosing a codec bundle")


def describe_bundle(name_or_path) -> str:
    """One paragraph for the Codec section: modality, region, training size and any description."""
    config = bundles().load_bundle(name_or_path).config
    parts = [
        f"<b>{config.name}</b>",
        f"modality: {config.modality}",
        f"region: {config.region}",
        f"trained on: {config.training.get('scans', '?')} scans",
    ]
    text = " | ".join(parts)
    if config.description:
        text += "<br>" + config.description
    return text


class BundleInfo(NamedTuple):
    """What choosing a bundle needs: its name, file, modality ("CT", "MR") and the template's
    physical extent in mm (x, y, z)."""

    name: str
    path: str
    modality: str
    extent_mm: tuple


_CATALOG: dict = {}


def bundle_catalog() -> List[BundleInfo]:
    """The shipped bundles with their modality and template extent (read once per file)."""
    out = []
    for name, path in bundles().shipped_bundles().items():
        key = (str(path), path.stat().st_mtime_ns)
        if key not in _CATALOG:
            bundle = bundles().load_bundle(path)
            t = bundle.template
            extent = tuple(float(n) * float(s) for n, s in zip(t.size, t.spacing))
            _CATALOG[key] = BundleInfo(name, str(path), str(bundle.config.modality).upper(), extent)
        out.append(_CATALOG[key])
    return out


def pick_bundle(modality: Optional[str], extent_mm=None, catalog: Optional[List[BundleInfo]] = None):
    """The bundle for a scan of `modality`: among the bundles of that modality, the one whose
    template's field of view is closest to the scan's (`extent_mm`, log ratio), and a sentence
    saying why, for the panel. None (and the reason) when no bundle serves the modality or the
    modality is unknown: then the user must choose; there is no silent default."""
    import math

    catalog = bundle_catalog() if catalog is None else catalog
    if not modality:
        return None, "the scan's modality is unknown (no DICOM modality, no Hounsfield units): choose a codec"
    matching = [b for b in catalog if b.modality == modality.upper()]
    if not matching:
        return None, f"no shipped codec serves {modality} scans: load a bundle file"

    def distance(info: BundleInfo) -> float:
        if not extent_mm:
            return 0.0
        return sum(abs(math.log(max(e, 1e-3) / max(t, 1e-3))) for e, t in zip(extent_mm, info.extent_mm))

    best = min(matching, key=distance)
    why = f"picked for {modality.upper()}"
    if len(matching) > 1:
        why += f" (closest field of view of {len(matching)} {modality.upper()} codecs; check the body region)"
    return best, why


# --- operations ---------------------------------------------------------------------------------

ProgressFn = Optional[Callable[[Any], None]]


def register(moving: "Volume", template: "Volume", progress: ProgressFn = None, cancel=None, **options):
    """Cycle-INR registration of `moving` to `template`; progress events carry field snapshots.
    `options` go to `deepstd.shape.register` (e.g. `settings`, `threads`)."""
    shape = require("deepstd.shape", "Registration")
    return shape.register(moving, template, progress=progress, cancel=cancel, **options)


def encode(
    volume: "Volume",
    bundle,
    ratio: Optional[float],
    device: str = "auto",
    progress: ProgressFn = None,
    cancel=None,
    max_error: Optional[float] = None,
    keep=None,
    keep_error: float = 0.0,
) -> bytes:
    """The complete `.dstd` file for `volume` at the requested compression ratio, or (`max_error`)
    with every voxel within that bound; `keep`, a label map on its grid, is coded within ±keep_error. `bundle`:
    a shipped bundle's name or a bundle file's path."""
    codec = require("deepstd.codec", "Compression")
    bundle = bundles().load_bundle(bundle)
    if max_error is not None:
        return codec.encode(volume, bundle, max_error=max_error, device=device, progress=progress, cancel=cancel)
    return codec.encode(
        volume, bundle, ratio=ratio, keep=keep, keep_error=keep_error, device=device, progress=progress, cancel=cancel
    )


class FileHeader(NamedTuple):
    """What a `.dstd` file says about itself: its typed header, and the achieved compression
    ratio, which the container derives from the file size rather than storing it."""

    header: "DstdHeader"
    achieved_ratio: float


def read_header(data: bytes) -> FileHeader:
    """The verified `.dstd` header (container checks, then every key typed by `DstdHeader`)."""
    parsed = require("deepstd.container", "Reading a .dstd file").unpack(data)
    header = require("deepstd.codec.header", "Reading a .dstd file").DstdHeader.of_file(parsed)
    return FileHeader(header, round(parsed.achieved_ratio, 2))


def decode(data: bytes, bundle, device: str = "auto", progress: ProgressFn = None, cancel=None, roi=None) -> "Volume":
    """The volume stored in a `.dstd` file, exactly as `deepstd decode` writes it (`roi`: only
    that box of voxels, ((x0, y0, z0), (x1, y1, z1))). `bundle`: a name or a bundle file's path
    (None for a file that holds the refinement layer alone)."""
    codec = require("deepstd.codec", "Decompression")
    bundle = None if bundle is None else bundles().load_bundle(bundle)
    return codec.decode(data, bundle, device=device, progress=progress, cancel=cancel, roi=roi)


def write_atomic(path: str, data: bytes) -> None:
    """Write through a temporary file and a rename: a failure never leaves a partial file."""
    require("deepstd.container", "Writing a .dstd file").write_atomic(path, data)
