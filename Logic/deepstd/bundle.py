"""Codec bundles: one `NAME.dstdb` file per population (modality + region).

A bundle is a zip of stored entries — `config.json`, `template.nii.gz`, optionally
`template_labels.nii.gz`, and `texture.safetensors` — so it can be inspected with any zip tool and
loading never unpickles anything. Its id is the SHA-256 of the file: a `.dstd` records it, and
decoding with a different bundle of the same name is refused. Bundles are written with fixed zip
timestamps, so the same content always gives the same id.
"""
from __future__ import annotations

import hashlib
import io
import json
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Optional

from .container import write_atomic
from .errors import BundleError, InputError
from .volume import Volume

SUFFIX = ".dstdb"
SHIPPED_DIR = Path(__file__).resolve().parent / "bundles"
ENTRIES = ("config.json", "template.nii.gz", "template_labels.nii.gz", "texture.safetensors")
REQUIRED = ("config.json", "template.nii.gz")
REQUIRED_CONFIG = ("name", "modality", "region")
MAX_ENTRY_BYTES = 64 << 20
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# what zipfile raises on damaged archives: bad structure, unknown compression, "encrypted" flags, ...
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError, RuntimeError,
               zlib.error)


@dataclass
class Bundle:
    """A loaded bundle: its settings, template (and labels) and the texture weights' bytes."""

    name: str
    sha256: str
    config: dict
    template: Volume
    template_labels: Optional[Volume]
    texture: bytes
    path: Optional[Path] = None

    def describe(self) -> str:
        c = self.config
        training = c.get("training", {})
        return (f"{self.name}: {c['modality']} {c['region']}, template {'x'.join(map(str, self.template.size))} "
                f"@ {' x '.join(f'{s:.3g}' for s in self.template.spacing)} mm"
                + (f", trained on {training['scans']} scans" if "scans" in training else "")
                + f", id {self.sha256[:12]}…")


def shipped_bundles() -> Dict[str, Path]:
    """Name → path of every bundle shipped in the package."""
    return {p.name[: -len(SUFFIX)]: p for p in sorted(SHIPPED_DIR.glob(f"*{SUFFIX}"))}


def shipped_path(name_or_path, shipped: Dict[str, Path], kind: str) -> Path:
    """A file given by path, or by the name of one `shipped` with the package; a BundleError
    listing what is shipped otherwise (`kind` names the thing: "codec bundle", "segmenter")."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if str(name_or_path) not in shipped:
        known = ", ".join(shipped) or "none installed"
        raise BundleError(f"{kind} {str(name_or_path)!r} not found (shipped {kind}s: {known})")
    return shipped[str(name_or_path)]


def load_bundle(name_or_path) -> Bundle:
    """Load a shipped bundle by name, or a bundle file by path."""
    path = shipped_path(name_or_path, shipped_bundles(), "codec bundle")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read bundle ({exc.strerror})") from None
    try:
        return from_bytes(data, path)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None


def from_bytes(data: bytes, path: Optional[Path] = None) -> Bundle:
    """Parse bundle bytes, checking every entry before reading it."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = {info.filename: info for info in archive.infolist()}
    except _ZIP_ERRORS:
        raise BundleError("not a codec bundle (not a zip file)") from None
    unknown = sorted(set(infos) - set(ENTRIES))
    if unknown:
        raise BundleError(f"unexpected entries {unknown}")
    missing = [name for name in REQUIRED if name not in infos]
    if missing:
        raise BundleError(f"missing entries {missing}")

    def entry(name: str) -> bytes:
        if infos[name].file_size > MAX_ENTRY_BYTES:
            raise BundleError(f"entry {name} is implausibly large")
        try:
            return archive.read(name)
        except _ZIP_ERRORS as exc:
            raise BundleError(f"entry {name} is corrupt ({type(exc).__name__}: {exc})") from None

    try:
        config = json.loads(entry("config.json").decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BundleError("config.json is not valid JSON") from None
    if not isinstance(config, dict) or any(key not in config for key in REQUIRED_CONFIG):
        raise BundleError(f"config.json must be an object with {', '.join(REQUIRED_CONFIG)}")
    labels = _volume(entry("template_labels.nii.gz")) if "template_labels.nii.gz" in infos else None
    texture = entry("texture.safetensors") if "texture.safetensors" in infos else b""
    template = _volume(entry("template.nii.gz"))
    if str(config["modality"]).upper() == "CT":      # NIfTI does not say so; the bundle does
        template = replace(template, units="HU")
    return Bundle(str(config["name"]), hashlib.sha256(data).hexdigest(), config, template, labels, texture, path)


def save_bundle(path, config: dict, template: Volume, template_labels: Optional[Volume] = None,
                texture: bytes = b"") -> Path:
    """Write a bundle atomically; identical content gives identical bytes (and id)."""
    if any(key not in config for key in REQUIRED_CONFIG):
        raise InputError(f"a bundle config needs {', '.join(REQUIRED_CONFIG)}")
    entries = {"config.json": json.dumps(config, indent=1, sort_keys=True).encode(),
               "template.nii.gz": _nifti_bytes(template)}
    if template_labels is not None:
        entries["template_labels.nii.gz"] = _nifti_bytes(template_labels)
    if texture:
        entries["texture.safetensors"] = texture
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, payload in entries.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            archive.writestr(info, payload)
    return write_atomic(path, buffer.getvalue())


def _nifti_bytes(volume: Volume) -> bytes:
    from .io.itk import write_itk

    with tempfile.TemporaryDirectory() as folder:
        return write_itk(volume, Path(folder) / "v.nii.gz").read_bytes()


def _volume(payload: bytes) -> Volume:
    from .io.itk import read_itk

    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "v.nii.gz"
        file.write_bytes(payload)
        try:
            return read_itk(file)
        except InputError:
            raise BundleError("the template image is unreadable") from None


__all__ = ["Bundle", "load_bundle", "from_bytes", "save_bundle", "shipped_bundles", "SUFFIX"]
