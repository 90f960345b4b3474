"""The seam between the module and the `deepstd` codec: every call into it goes through here.

The module only moves data; `deepstd` computes. Bundle files are read directly (a bundle is a zip
with `config.json` and `template.nii.gz`, DESIGN.md), so choosing a codec and showing its
template work without the codec's Python API; registration, encoding and decoding call the
package's public functions, imported on first use. A missing piece raises `CodecUnavailable`,
whose message the GUI shows as is.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from deepstd.volume import Volume

BUNDLE_SUFFIX = ".dstdb"
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

def shipped_bundle_dir() -> Optional[Path]:
    """`deepstd/bundles/` of the installed package, found without importing it."""
    spec = importlib.util.find_spec("deepstd")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "bundles"


def shipped_bundles() -> Dict[str, Path]:
    """Name -> path of every bundle shipped with the package (name = file name without suffix)."""
    folder = shipped_bundle_dir()
    if folder is None or not folder.is_dir():
        return {}
    return {p.name[:-len(BUNDLE_SUFFIX)]: p for p in sorted(folder.glob("*" + BUNDLE_SUFFIX))}


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


def bundle_config(path: Path) -> Dict[str, Any]:
    """The bundle's `config.json`."""
    from deepstd.errors import BundleError
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise BundleError(f"{path.name} is not a readable codec bundle: {error}") from error


def describe_bundle(path: Path) -> str:
    """One paragraph for the Codec section: modality, region, training size and any description."""
    config = bundle_config(path)
    training = config.get("training") if isinstance(config.get("training"), dict) else {}
    size = next((training[k] for k in ("scans", "subjects", "size", "count") if k in training),
                config.get("training_size"))
    parts = [f"<b>{config.get('name', path.stem)}</b>",
             f"modality: {config.get('modality', '?')}", f"region: {config.get('region', '?')}",
             f"trained on: {size if size is not None else '?'} scans"]
    text = " | ".join(parts)
    if config.get("description"):
        text += "<br>" + str(config["description"])
    return text


def bundle_sha256(path: Path) -> str:
    """A bundle's id (SHA-256 of the file), as a `.dstd` header records it."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_template(path: Path) -> Tuple["Volume", Optional["Volume"]]:
    """The bundle's template scan and, when it has them, its labels."""
    import SimpleITK as sitk
    from deepstd.errors import BundleError
    from deepstd.volume import Volume

    config = bundle_config(path)
    out: List[Optional["Volume"]] = []
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as tmp:
        names = set(archive.namelist())
        for member in ("template.nii.gz", "template_labels.nii.gz"):
            if member not in names:
                if member == "template.nii.gz":
                    raise BundleError(f"{path.name} has no template.nii.gz")
                out.append(None)
                continue
            archive.extract(member, tmp)
            image = sitk.ReadImage(os.path.join(tmp, member))
            units = "HU" if str(config.get("modality", "")).upper() == "CT" and member == "template.nii.gz" else "unitless"
            out.append(Volume.from_sitk(image, units=units))
    return out[0], out[1]


def find_bundle(name: str, sha256: str = "", search: Sequence[Path] = ()) -> Path:
    """The bundle a `.dstd` file was made with: a shipped one, or one of `search`, by name and id."""
    from deepstd.errors import BundleError
    candidates = list(search) + list(shipped_bundles().values())
    for path in candidates:
        path = Path(path)
        if not path.is_file():
            continue
        if sha256 and bundle_sha256(path) == sha256:
            return path
        if not sha256 and path.name[:-len(BUNDLE_SUFFIX)] == name:
            return path
    raise BundleError(f"this file needs the codec bundle {name!r}"
                      + (f" (id {sha256[:12]}…)" if sha256 else "")
                      + ", which is not available: load that bundle file in the DeepSTD module's Codec "
                        "section, or install the extension version that ships it")


def load_bundle(path: Path):
    """The codec's in-memory bundle (weights, settings) for encode/decode."""
    return require("deepstd.bundle", "Loading a codec bundle").load_bundle(str(path))


# --- operations ---------------------------------------------------------------------------------

ProgressFn = Optional[Callable[[Any], None]]


def register(moving: "Volume", template: "Volume", progress: ProgressFn = None, cancel=None, **options):
    """Cycle-INR registration of `moving` to `template`; progress events carry field snapshots.
    `options` go to `deepstd.shape.register` (e.g. `settings`, `threads`)."""
    shape = require("deepstd.shape", "Registration")
    return shape.register(moving, template, progress=progress, cancel=cancel, **options)


def encode(volume: "Volume", bundle_file: Path, ratio: float, device: str = "auto",
           progress: ProgressFn = None, cancel=None) -> bytes:
    """The complete `.dstd` file for `volume` at the requested compression ratio."""
    codec = require("deepstd.codec", "Compression")
    bundle = load_bundle(bundle_file)
    return codec.encode(volume, bundle, ratio=ratio, device=device, progress=progress, cancel=cancel)


def read_header(data: bytes) -> Dict[str, Any]:
    """The verified `.dstd` header (geometry, bundle, encoder version) plus the achieved ratio,
    which the container derives from the file size rather than storing it."""
    parsed = require("deepstd.container", "Reading a .dstd file").unpack(data)
    return {**parsed.header, "achieved_ratio": round(parsed.achieved_ratio, 2)}


def decode(data: bytes, bundle_file: Path, device: str = "auto",
           progress: ProgressFn = None, cancel=None) -> "Volume":
    """The volume stored in a `.dstd` file, exactly as `deepstd decode` writes it."""
    codec = require("deepstd.codec", "Decompression")
    bundle = load_bundle(bundle_file)
    return codec.decode(data, bundle, device=device, progress=progress, cancel=cancel)


def header_bundle(header: Dict[str, Any]) -> Tuple[str, str]:
    """(bundle name, bundle id) recorded in a `.dstd` header."""
    bundle = header.get("bundle", {})
    if isinstance(bundle, dict):
        return str(bundle.get("name", "")), str(bundle.get("sha256", bundle.get("id", "")))
    return str(bundle), str(header.get("bundle_sha256", ""))


def write_atomic(path: str, data: bytes) -> None:
    """Write through a temporary file and a rename: a failure never leaves a partial file."""
    require("deepstd.container", "Writing a .dstd file").write_atomic(path, data)
