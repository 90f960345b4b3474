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
import lzma
import tempfile
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Union

import numpy as np

from .container import write_atomic
from .errors import BundleError, InputError
from .numbers import is_number
from .volume import Volume

SUFFIX = ".dstdb"
SHIPPED_DIR = Path(__file__).resolve().parent / "bundles"
#: bundles a newer shipped one replaced: never offered for encoding, still found by id, so the files
#: coded with them decode without `--bundle`
RETIRED_DIR = SHIPPED_DIR / "retired"
ENTRIES = ("config.json", "template.nii.gz", "template_labels.nii.gz", "texture.safetensors")
REQUIRED = ("config.json", "template.nii.gz")
REQUIRED_CONFIG = ("name", "modality", "region")
MAX_ENTRY_BYTES = 64 << 20
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# what zipfile raises on damaged archives: bad structure, unknown compression, "encrypted" flags, ...
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    OSError,
    ValueError,
    NotImplementedError,
    EOFError,
    RuntimeError,
    zlib.error,
    lzma.LZMAError,  # an entry that claims LZMA compression
)


#: pre-alignments `deepstd.shape.prealign` knows
PREALIGNMENTS = ("none", "moments", "affine")


@dataclass(frozen=True)
class RegistrationConfig:
    """How scans are registered to the bundle's template. `cycle` holds the Cycle-INR settings
    (`deepstd.shape.CycleSettings` fields) besides the ones named here."""

    width: int = 32
    depth: int = 3
    seed: int = 0
    threshold: Optional[float] = None
    prealignment: str = "moments"
    downsample: int = 2
    cycle: Mapping[str, Any] = field(default_factory=dict)

    def cycle_settings(self, width: Optional[int] = None) -> Dict[str, Any]:
        """Keyword arguments of `CycleSettings` for a network `width` wide (default: the bundle's)."""
        return {
            **self.cycle,
            "width": self.width if width is None else width,
            "depth": self.depth,
            "seed": self.seed,
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RegistrationConfig":
        named = {"width", "depth", "seed", "threshold", "prealignment", "downsample"}
        config = cls(
            width=d.get("width", 32),
            depth=d.get("depth", 3),
            seed=d.get("seed", 0),
            threshold=d.get("threshold"),
            prealignment=d.get("prealignment", "moments"),
            downsample=d.get("downsample", 2),
            cycle={k: v for k, v in d.items() if k not in named},
        )
        for key, low, high in (("width", 1, 512), ("depth", 1, 16), ("downsample", 1, 16), ("seed", 0, 2**31)):
            value = getattr(config, key)
            if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
                raise BundleError(f"registration.{key} must be an integer in {low}..{high}, got {value!r}")
        if config.prealignment not in PREALIGNMENTS:
            raise BundleError(f"registration.prealignment must be one of {', '.join(PREALIGNMENTS)}")
        if config.threshold is not None and not isinstance(config.threshold, (int, float)):
            raise BundleError("registration.threshold must be a number")
        return config

    def to_dict(self) -> Dict[str, Any]:
        return {
            **self.cycle,
            "width": self.width,
            "depth": self.depth,
            "seed": self.seed,
            "threshold": self.threshold,
            "prealignment": self.prealignment,
            "downsample": self.downsample,
        }


def is_rate(value: Any) -> bool:
    return is_number(value) and 0 <= value <= 1


@dataclass(frozen=True)
class TextureCoding:
    """How the aligned texture is coded: block size (None: whole frame) and the span of texture rates
    the encoder uses, (coarsest, finest). Past the finest the refinement layer codes what the texture
    misses: a codec weak at high rates (`ct-torso`, trained on three scans) gains more from it than
    from its own finer rates (docs/TEXTURE.md)."""

    block: Optional[int] = 64
    rates: Tuple[float, float] = (0.0, 1.0)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TextureCoding":
        block = d.get("block", 64)
        if block is not None and not (isinstance(block, int) and 16 <= block <= 1024 and block % 16 == 0):
            raise BundleError(f"texture.block must be a multiple of 16 in 16..1024, got {block!r}")
        rates = d.get("rates", (0.0, 1.0))
        if not (isinstance(rates, (list, tuple)) and len(rates) == 2 and all(is_rate(r) for r in rates)) or not (
            rates[0] < rates[1]
        ):
            raise BundleError(f"texture.rates must be two rates in 0..1, coarsest first, got {rates!r}")
        return cls(block, (float(rates[0]), float(rates[1])))

    def rate(self, knob: float) -> float:
        """The texture rate the rate control's `knob` (in [0, 1]) codes at: the knob held inside the
        span. Clamping, not rescaling, keeps the bisection's steps, so a budget the texture alone fills
        within the span gets the very file the whole span gives."""
        coarsest, finest = self.rates
        return min(max(knob, coarsest), finest)

    def to_dict(self) -> Dict[str, Any]:
        return {"block": self.block, "rates": list(self.rates)}


@dataclass(frozen=True)
class BundleConfig:
    """A bundle's `config.json`, typed: identity, intensity rule, registration and texture settings,
    and the training record (kept as written: provenance, not settings)."""

    name: str
    modality: str
    region: str
    description: str = ""
    intensity: Optional[Mapping[str, Any]] = None
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    texture: TextureCoding = field(default_factory=TextureCoding)
    training: Mapping[str, Any] = field(default_factory=dict)
    validation: Tuple[Any, ...] = ()

    @property
    def is_ct(self) -> bool:
        return self.modality.upper() == "CT"

    @property
    def holdout_files(self) -> Tuple[str, ...]:
        """The training scans held out for validation (the bundle's honest test set)."""
        return tuple(self.training.get("holdout_files", ()))

    @classmethod
    def from_dict(cls, d: Any) -> "BundleConfig":
        if not isinstance(d, dict) or any(not isinstance(d.get(key), str) for key in REQUIRED_CONFIG):
            raise BundleError(f"config.json must be an object with {', '.join(REQUIRED_CONFIG)} (strings)")
        for key in ("registration", "texture", "training"):
            if not isinstance(d.get(key, {}), dict):
                raise BundleError(f"config.json: {key} must be an object")
        if not isinstance(d.get("validation", []), list):
            raise BundleError("config.json: validation must be a list")
        intensity = d.get("intensity")
        if intensity is not None and not (
            isinstance(intensity, dict)
            and intensity.get("kind") in ("percentile", "window")
            and all(is_number(intensity.get(k)) for k in ("low", "high"))
            and intensity["low"] < intensity["high"]
            and (intensity["kind"] == "window" or 0 <= intensity["low"] and intensity["high"] <= 100)
        ):
            raise BundleError("config.json: intensity must be a percentile or window rule with finite low < high")
        return cls(
            name=d["name"],
            modality=d["modality"],
            region=d["region"],
            description=str(d.get("description", "")),
            intensity=intensity,
            registration=RegistrationConfig.from_dict(d.get("registration", {})),
            texture=TextureCoding.from_dict(d.get("texture", {})),
            training=d.get("training", {}),
            validation=tuple(d.get("validation", ())),
        )

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "name": self.name,
            "modality": self.modality,
            "region": self.region,
            "description": self.description,
            "registration": self.registration.to_dict(),
            "texture": self.texture.to_dict(),
            "training": dict(self.training),
            "validation": list(self.validation),
        }
        if self.intensity is not None:
            out["intensity"] = dict(self.intensity)
        return out


STANDING_SUFFIX = ".standing.json"
STANDING_VERSION = 1


@dataclass(frozen=True)
class TextureStanding:
    """How the bundle's learned texture fared against the refinement layer alone on its training
    scans (`scripts/texture_standing.py`, kept beside the bundle: measuring it must not change the
    bundle's id). Where it never decoded closer, the default encoder leaves it out (docs/CODEC.md)."""

    texture_closer: int
    pairs: int

    @property
    def worth_trying(self) -> bool:
        return self.texture_closer > 0

    def record(self, name: str, sha256: str, **details: Any) -> Dict[str, Any]:
        """The JSON object `beside` reads back, for the bundle `name` with id `sha256`."""
        return {
            "version": STANDING_VERSION,
            "bundle": name,
            "bundle_sha256": sha256,
            "texture_closer": self.texture_closer,
            "pairs": self.pairs,
            **details,
        }

    @classmethod
    def beside(cls, path: Path, sha256: str) -> Optional["TextureStanding"]:
        """The record beside the bundle file at `path`, or None where there is none or it was
        measured on other bundle bytes (a stale record must not steer the encoder)."""
        record_path = path.with_name(path.name[: -len(SUFFIX)] + STANDING_SUFFIX)
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("version") != STANDING_VERSION:
            return None
        if record.get("bundle_sha256") != sha256:
            return None
        closer, pairs = record.get("texture_closer"), record.get("pairs")
        if type(closer) is not int or type(pairs) is not int or not 0 <= closer <= pairs or pairs < 1:
            return None
        return cls(closer, pairs)


@dataclass
class Bundle:
    """A loaded bundle: its settings, template (and labels) and the texture weights' bytes."""

    name: str
    sha256: str
    config: BundleConfig
    template: Volume
    template_labels: Optional[Volume]
    texture: bytes
    path: Optional[Path] = None
    standing: Optional[TextureStanding] = None

    def describe(self) -> str:
        c = self.config
        finetune = c.training.get("finetune")
        tuned = finetune.get("scans") if isinstance(finetune, dict) else None
        trained = c.training.get("texture_config")
        context = (isinstance(finetune, dict) and finetune.get("context")) or (
            isinstance(trained, dict) and trained.get("context")
        )
        return (
            f"{self.name}: {c.modality} {c.region}, template {'x'.join(map(str, self.template.size))} "
            f"@ {' x '.join(f'{s:.3g}' for s in self.template.spacing)} mm"
            + (f", trained on {c.training['scans']} scans" if "scans" in c.training else "")
            + (f", fine-tuned on {tuned}" if tuned is not None else "")
            + (" reading the template" if context else "")
            + (f", texture rates to {c.texture.rates[1]:g} then refined" if c.texture.rates[1] < 1 else "")
            + f", id {self.sha256[:12]}…"
        )


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
        config = BundleConfig.from_dict(json.loads(entry("config.json").decode("utf-8")))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BundleError("config.json is not valid JSON") from None
    labels = _volume(entry("template_labels.nii.gz")) if "template_labels.nii.gz" in infos else None
    texture = entry("texture.safetensors") if "texture.safetensors" in infos else b""
    template = _volume(entry("template.nii.gz"))
    if config.is_ct:  # NIfTI does not say so; the bundle does
        template = replace(template, units="HU")
    sha256 = hashlib.sha256(data).hexdigest()
    standing = TextureStanding.beside(path, sha256) if path is not None and path.name.endswith(SUFFIX) else None
    return Bundle(config.name, sha256, config, template, labels, texture, path, standing)


def save_bundle(
    path,
    config: Union[BundleConfig, Mapping[str, Any]],
    template: Volume,
    template_labels: Optional[Volume] = None,
    texture: bytes = b"",
) -> Path:
    """Write a bundle atomically; identical content gives identical bytes (and id). A plain
    mapping is checked as `BundleConfig.from_dict` would check the file's config.json."""
    if not isinstance(config, BundleConfig):
        try:
            config = BundleConfig.from_dict(dict(config))
        except BundleError as exc:
            raise InputError(f"a bundle config: {exc}") from None
    entries = {
        "config.json": json.dumps(config.to_dict(), indent=1, sort_keys=True).encode(),
        "template.nii.gz": _nifti_bytes(template),
    }
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


#: a template (and its labels) is one scan of the population: far below this many voxels
MAX_TEMPLATE_VOXELS = 64_000_000
#: voxels per axis a template needs at least (shipped ones have 41 or more; the tests' smallest 7)
MIN_TEMPLATE_SIDE = 4


def _volume(payload: bytes) -> Volume:
    import SimpleITK as sitk

    from .io.itk import read_itk

    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "v.nii.gz"
        file.write_bytes(payload)
        info = sitk.ImageFileReader()
        info.SetFileName(str(file))
        try:
            info.ReadImageInformation()  # the header alone: refuse a huge size before reading
        except RuntimeError:
            raise BundleError("the template image is unreadable") from None
        size = info.GetSize()
        if (
            len(size) != 3
            or min(size) < MIN_TEMPLATE_SIDE
            or not int(np.prod(size, dtype=np.float64)) <= MAX_TEMPLATE_VOXELS
        ):
            raise BundleError(f"the template image's size {size} is not a plausible 3-D template")
        spacing = info.GetSpacing()
        if not all(1e-3 <= s <= 1e3 for s in spacing):
            raise BundleError(f"the template image's spacing {spacing} mm is not plausible")
        try:
            return read_itk(file)
        except InputError:
            raise BundleError("the template image is unreadable") from None


# --- which bundle, and its texture codec ------------------------------------------------------------
def resolve_bundle(bundle: Union[Bundle, str, Path]) -> Bundle:
    """A loaded bundle, or the one a shipped name or a file path names."""
    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle)


_hashes: Dict[Tuple[str, int, int], str] = {}


def bundle_sha256(path: Union[str, Path]) -> str:
    """A bundle file's id (the SHA-256 of its bytes) without parsing it; memoised per path, size
    and modification time, so finding a file's bundle hashes each candidate once per session."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def find_bundle_file(name: Optional[str], sha256: str, search: Iterable[Union[str, Path]] = ()) -> Path:
    """The bundle file a `.dstd` was coded with: among `search` (files, or folders of bundles),
    then the shipped ones, then the retired ones, the first whose id starts with `sha256` (a lean
    header keeps 16 hex digits). Only candidates are hashed; only the match is parsed (by the caller)."""
    candidates = []
    for entry in list(search) + [SHIPPED_DIR, RETIRED_DIR]:
        entry = Path(entry).expanduser()
        candidates += sorted(entry.glob(f"*{SUFFIX}")) if entry.is_dir() else [entry]
    for path in candidates:
        if path.is_file() and bundle_sha256(path).startswith(sha256):
            return path
    label = f"{name!r} ({sha256[:12]}…)" if name else f"{sha256[:12]}…"
    raise BundleError(f"the bundle this file was coded with ({label}) is not installed; pass its file with --bundle")


def find_bundle(
    name: Optional[str],
    sha256: str,
    bundle: Union[Bundle, str, Path, None] = None,
    search: Iterable[Union[str, Path]] = (),
) -> Bundle:
    """The bundle a file was coded with: the one given (checked against the file's id), or the
    installed one with that id (`find_bundle_file`)."""
    label = f"{name!r} ({sha256[:12]}…)" if name else f"{sha256[:12]}…"
    if bundle is not None:
        bundle = resolve_bundle(bundle)
        if not bundle.sha256.startswith(sha256):
            raise BundleError(f"this file was coded with bundle {label}, not {bundle.name!r} ({bundle.sha256[:12]}…)")
        return bundle
    return load_bundle(find_bundle_file(name, sha256, search))


#: texture codecs kept built (a few hundred MB each at most); the least recently used goes first
CODEC_CACHE_SIZE = 4
_codecs: "OrderedDict[Tuple[str, str], Any]" = OrderedDict()


def texture_codec(bundle: Bundle, device: str = "cpu"):
    """The bundle's texture codec, built once per bundle and device (at most CODEC_CACHE_SIZE kept)."""
    from .texture import TextureCodec

    if not bundle.texture:
        raise BundleError(f"bundle {bundle.name} has no texture weights")
    key = (bundle.sha256, device)
    if key not in _codecs:
        _codecs[key] = TextureCodec.from_bytes(bundle.texture, device=device)
        while len(_codecs) > CODEC_CACHE_SIZE:
            _codecs.popitem(last=False)
    _codecs.move_to_end(key)
    return _codecs[key]


__all__ = [
    "Bundle",
    "BundleConfig",
    "RegistrationConfig",
    "TextureCoding",
    "TextureStanding",
    "load_bundle",
    "from_bytes",
    "save_bundle",
    "shipped_bundles",
    "shipped_path",
    "resolve_bundle",
    "find_bundle",
    "find_bundle_file",
    "bundle_sha256",
    "texture_codec",
    "SHIPPED_DIR",
    "SUFFIX",
]
