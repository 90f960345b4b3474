"""The seam between the module and the `deepstd` codec: every call into it goes through here.

The module only moves data; `deepstd` computes. Bundles are read by `deepstd.bundle`, which needs
neither torch nor the codec, so choosing a codec and showing its template work before the heavy
dependencies are installed; registration, encoding and decoding call the package's public
functions, imported on first use. A missing piece raises `CodecUnavailable`, whose message the
GUI shows as is.
"""
from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from deepstd.volume import Volume

DEVICES = ("auto", "cpu", "cuda")


class CodecUnavailable(RuntimeError):
    """A part of deepstd the operation needs is not installed or not importable."""


def require(module: str, purpose: str):
    """Import a deepstd module on first use, or explain which feature is unavailable and why."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise CodecUnavailable(f"{purpose} needs {module}, which cannot be imported here: {error}. "
                               "Update the DeepSTD extension, or install its dependencies "
                               "(DeepSTD module, Codec section).") from error


# --- bundles ------------------------------------------------------------------------------------

def _bundles():
    return require("deepstd.bundle", "Choosing a codec bundle")


def shipped_bundle_dir() -> Path:
    """`deepstd/bundles/` of the installed package."""
    return _bundles().SHIPPED_DIR


def shipped_bundles() -> Dict[str, Path]:
    """Name -> path of every bundle shipped with the package (name = file name without suffix)."""
    folder, suffix = shipped_bundle_dir(), _bundles().SUFFIX
    if not folder.is_dir():
        return {}
    return {p.name[:-len(suffix)]: p for p in sorted(folder.glob("*" + suffix))}


def bundle_path(name_or_path: str) -> Path:
    """A shipped bundle's name or a bundle file's path -> the file."""
    shipped = shipped_bundles()
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    from deepstd.errors import BundleError
    known = ", ".join(shipped) or "none"
    raise BundleError(f"codec bundle {name_or_path!r} not found (shipped bundles: {known})")


def load_bundle(path: Path):
    """The bundle (settings, template, labels, weights) as `deepstd.bundle` reads and checks it."""
    return _bundles().load_bundle(str(path))


def describe_bundle(path: Path) -> str:
    """One paragraph for the Codec section: modality, region, training size and any description."""
    config = load_bundle(path).config
    training = config.get("training") if isinstance(config.get("training"), dict) else {}
    parts = [f"<b>{config['name']}</b>", f"modality: {config['modality']}", f"region: {config['region']}",
             f"trained on: {training.get('scans', '?')} scans"]
    text = " | ".join(parts)
    if config.get("description"):
        text += "<br>" + str(config["description"])
    return text


def bundle_sha256(path: Path) -> str:
    """A file's SHA-256: a bundle's id, as a `.dstd` header records it (hashed without parsing)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_template(path: Path) -> Tuple["Volume", Optional["Volume"]]:
    """The bundle's template scan and, when it has them, its labels."""
    bundle = load_bundle(path)
    return bundle.template, bundle.template_labels


def find_bundle(name: str, sha256: str = "", search: Sequence[Path] = ()) -> Path:
    """The bundle a `.dstd` file was made with: a shipped one, or one of `search`, by name and id
    (a small file's lean header records only the id's first 16 hex digits)."""
    from deepstd.errors import BundleError
    candidates = list(search) + list(shipped_bundles().values())
    for path in candidates:
        path = Path(path)
        if not path.is_file():
            continue
        if sha256 and bundle_sha256(path).startswith(sha256):
            return path
        if not sha256 and path.name[:-len(_bundles().SUFFIX)] == name:
            return path
    raise BundleError(f"this file needs the codec bundle {name!r}"
                      + (f" (id {sha256[:12]}…)" if sha256 else "")
                      + ", which is not available: load that bundle file in the DeepSTD module's Codec "
                        "section, or install the extension version that ships it")


# --- operations ---------------------------------------------------------------------------------

ProgressFn = Optional[Callable[[Any], None]]


def register(moving: "Volume", template: "Volume", progress: ProgressFn = None, cancel=None, **options):
    """Cycle-INR registration of `moving` to `template`; progress events carry field snapshots.
    `options` go to `deepstd.shape.register` (e.g. `settings`, `threads`)."""
    shape = require("deepstd.shape", "Registration")
    return shape.register(moving, template, progress=progress, cancel=cancel, **options)


def encode(volume: "Volume", bundle_file: Path, ratio: Optional[float], device: str = "auto",
           progress: ProgressFn = None, cancel=None, max_error: Optional[float] = None,
           keep=None, keep_error: float = 0.0) -> bytes:
    """The complete `.dstd` file for `volume` at the requested compression ratio, or (`max_error`)
    with every voxel within that bound; `keep`, a mask, is coded within ±keep_error."""
    codec = require("deepstd.codec", "Compression")
    bundle = load_bundle(bundle_file)
    if max_error is not None:
        return codec.encode(volume, bundle, max_error=max_error, device=device, progress=progress, cancel=cancel)
    return codec.encode(volume, bundle, ratio=ratio, keep=keep, keep_error=keep_error, device=device,
                        progress=progress, cancel=cancel)


def read_header(data: bytes) -> Dict[str, Any]:
    """The verified `.dstd` header (geometry, bundle, encoder version) plus the achieved ratio,
    which the container derives from the file size rather than storing it."""
    parsed = require("deepstd.container", "Reading a .dstd file").unpack(data)
    return {**parsed.header, "achieved_ratio": round(parsed.achieved_ratio, 2)}


def decode(data: bytes, bundle_file: Path, device: str = "auto",
           progress: ProgressFn = None, cancel=None, roi=None) -> "Volume":
    """The volume stored in a `.dstd` file, exactly as `deepstd decode` writes it (`roi`: only
    that box of voxels, ((x0, y0, z0), (x1, y1, z1)))."""
    codec = require("deepstd.codec", "Decompression")
    bundle = load_bundle(bundle_file)
    return codec.decode(data, bundle, device=device, progress=progress, cancel=cancel, roi=roi)


def header_bundle(header: Dict[str, Any]) -> Tuple[str, str]:
    """(bundle name, bundle id) recorded in a `.dstd` header."""
    bundle = header.get("bundle", {})
    if isinstance(bundle, dict):
        return str(bundle.get("name", "")), str(bundle.get("sha256", bundle.get("id", "")))
    return str(bundle), str(header.get("bundle_sha256", ""))


def write_atomic(path: str, data: bytes) -> None:
    """Write through a temporary file and a rename: a failure never leaves a partial file."""
    require("deepstd.container", "Writing a .dstd file").write_atomic(path, data)
