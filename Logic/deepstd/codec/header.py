"""The `.dstd` header as a typed object: what a file says about the scan, the bundle and the codec.

The container (`deepstd.container`) stores a JSON object and checks the geometry every reader
needs; `DstdHeader.from_dict` checks the rest (types and ranges of every key decoding uses) and
`to_dict` writes exactly the JSON the format defines (docs/FORMAT.md). Keys a newer encoder adds
are ignored on reading. When the full header would take more than HEADER_SHARE of a byte budget
the encoder writes the lean form (`lean`): only what decoding needs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Tuple

from ..alignment import MAX_NATIVE_FRAME_VOXELS, IntensityMap
from ..container import geometry_header, grid_of, header_cost, validate_header
from ..errors import FormatError
from ..grid import Frame
from ..numbers import is_number
from ..volume import Volume

#: the header may take this share of a byte budget; above it only what decoding needs is kept
HEADER_SHARE = 0.05
#: hex digits of the bundle's SHA-256 a lean header keeps: 64 bits, no accidental collision
LEAN_BUNDLE_ID = 16
#: header keys decoding (or the decoded volume) needs; a lean header keeps only these
DECODE_KEYS = ("geometry", "dtype", "units", "intensity", "max_error", "keep", "dicom", "warnings")
#: the largest error bound a header may state (a residual step beyond it is meaningless)
MAX_BOUND = 1e12
#: a texture frame's margin beyond the template, voxels per side, and its voxels per axis when it is
#: resampled (the frame's total is checked against memory before decoding)
MAX_MARGIN = 4096
MAX_FRAME_AXIS = 16384


@dataclass(frozen=True)
class BundleRef:
    """The bundle a file was coded with: its name (informative) and SHA-256 id (or a prefix)."""

    name: Optional[str]
    sha256: str

    def label(self) -> str:
        return f"{self.name!r} ({self.sha256[:12]}…)" if self.name else f"{self.sha256[:12]}…"


@dataclass(frozen=True)
class CodecKeys:
    """How the texture and shape were coded: the frame margin and the encoder's statistics."""

    margin: Tuple[int, int, int]
    #: voxels (x, y, z) of the texture frame when it is resampled finer than the template grid
    frame_size: Optional[Tuple[int, int, int]] = None
    #: the part of that frame coded, ((x0, y0, z0), (x1, y1, z1)) voxels: the box the scan reads
    frame_window: Optional[Tuple[Tuple[int, int, int], Tuple[int, int, int]]] = None
    texture_rate: Optional[int] = None
    shape_width: Optional[int] = None
    shape_bits: Optional[int] = None
    omega: Optional[float] = None
    registration_loss: Optional[float] = None


@dataclass(frozen=True)
class KeepInfo:
    """A keep mask's bound and how many voxels it holds."""

    max_error: float
    voxels: int


@dataclass(frozen=True)
class DstdHeader:
    """Everything a `.dstd` header says. `grid`, `dtype` and `units` restore the original volume."""

    grid: Frame
    dtype: str
    units: str
    #: the texture's intensity mapping and bundle: None in a file that holds the refinement layer
    #: alone, which decodes without either
    intensity: Optional[IntensityMap]
    bundle: Optional[BundleRef]
    codec: CodecKeys
    warnings: Tuple[str, ...] = ()
    encoder_version: Optional[str] = None
    target_ratio: Optional[float] = None
    budget_bytes: Optional[int] = None
    max_error: Optional[float] = None
    keep: Optional[KeepInfo] = None
    dicom: Optional[Dict[str, Any]] = None

    @classmethod
    def for_volume(cls, volume: Volume, **keys: Any) -> "DstdHeader":
        geometry = geometry_header(volume)
        return cls(grid=grid_from(geometry), dtype=volume.dtype, units=volume.units, **keys)

    # --- JSON --------------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        g = self.grid
        out: Dict[str, Any] = {
            "geometry": {
                "size": list(g.size),
                "spacing": list(g.spacing),
                "origin": list(g.origin),
                "direction": list(g.direction),
            },
            "dtype": self.dtype,
            "units": self.units,
        }
        if self.intensity is not None:
            out["intensity"] = self.intensity.to_header()
        if self.bundle is not None:
            out["bundle"] = (
                {"sha256": self.bundle.sha256}
                if self.bundle.name is None
                else {"name": self.bundle.name, "sha256": self.bundle.sha256}
            )
            out["codec"] = {
                "margin": list(self.codec.margin),
                **({} if self.codec.frame_size is None else {"frame_size": list(self.codec.frame_size)}),
                **({} if self.codec.frame_window is None else {"frame_window": [*lo_hi(self.codec.frame_window)]}),
                **{
                    k: getattr(self.codec, k)
                    for k in ("texture_rate", "shape_width", "shape_bits", "omega", "registration_loss")
                    if getattr(self.codec, k) is not None
                },
            }
        for key in ("encoder_version", "target_ratio", "budget_bytes", "max_error", "dicom"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.keep is not None:
            out["keep"] = {"max_error": self.keep.max_error, "voxels": self.keep.voxels}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    @classmethod
    def from_dict(cls, header: Any) -> "DstdHeader":
        """Check every key decoding relies on; a FormatError names the first that is wrong."""
        validate_header(header)
        mapping = None
        if "intensity" in header:
            try:
                mapping = IntensityMap.from_header(_object(header, "intensity"))
            except (KeyError, TypeError, ValueError, OverflowError):
                raise FormatError("the header's intensity mapping is invalid") from None
        units = header.get("units", "unitless")
        if not isinstance(units, str):
            raise FormatError("the header's units must be a string")
        warnings = header.get("warnings", [])
        if not (isinstance(warnings, list) and all(isinstance(w, str) for w in warnings)):
            raise FormatError("the header's warnings must be a list of strings")
        dicom = header.get("dicom")
        if dicom is not None and not isinstance(dicom, dict):
            raise FormatError("the header's dicom entry must be an object")
        keep = None
        if "keep" in header:
            k = _object(header, "keep")
            keep = KeepInfo(_bound(k.get("max_error"), "keep.max_error"), _integer(k.get("voxels", 0), "keep.voxels"))
        max_error = _bound(header["max_error"], "max_error") if "max_error" in header else None
        return cls(
            grid=grid_from(header),
            dtype=header["dtype"],
            units=units,
            intensity=mapping,
            bundle=_bundle_ref(header["bundle"]) if "bundle" in header else None,
            codec=_codec_keys(header.get("codec", {})),
            warnings=tuple(warnings),
            encoder_version=_optional(header, "encoder_version", str),
            target_ratio=_optional(header, "target_ratio", (int, float)),
            budget_bytes=_optional(header, "budget_bytes", int),
            max_error=max_error,
            keep=keep,
            dicom=dicom,
        )

    @classmethod
    def of_file(cls, parsed) -> "DstdHeader":
        """The header of a parsed file (`container.DstdFile`), checked against its sections too: a
        texture section needs the bundle and the intensity mapping, which only a file of the
        refinement layer alone may leave out."""
        header = cls.from_dict(parsed.header)
        if "texture" in parsed.sections:
            header.texture_keys()
        return header

    def texture_keys(self) -> Tuple[IntensityMap, BundleRef]:
        """The intensity mapping and bundle a texture section needs (a FormatError if either is missing)."""
        if self.intensity is None or self.bundle is None:
            missing = "intensity mapping" if self.intensity is None else "bundle"
            raise FormatError(f"the file has a texture section but its header has no {missing}")
        return self.intensity, self.bundle

    # --- policy ------------------------------------------------------------------------------------
    def lean(self) -> "DstdHeader":
        """What decoding needs: geometry, intensity mapping, bundle name and id (shortened), texture
        margin and any warnings. Encoder version, targets and codec statistics go (the texture and
        shape sections carry their own rate and width)."""
        return replace(
            self,
            bundle=None if self.bundle is None else BundleRef(self.bundle.name, self.bundle.sha256[:LEAN_BUNDLE_ID]),
            codec=CodecKeys(self.codec.margin, self.codec.frame_size, self.codec.frame_window),
            encoder_version=None,
            target_ratio=None,
            budget_bytes=None,
        )

    def fitted(self) -> "DstdHeader":
        """This header, or its lean form when it would take more than HEADER_SHARE of the byte
        budget: a 64 kvoxel crop at 256x has ~540 bytes for everything, a full header alone ~230."""
        if self.budget_bytes is not None and header_cost(self.to_dict()) > HEADER_SHARE * self.budget_bytes:
            return self.lean()
        return self

    @property
    def raw_bytes(self) -> int:
        import numpy as np

        return int(np.prod(self.grid.size)) * np.dtype(self.dtype).itemsize


def grid_from(header: Dict[str, Any]) -> Frame:
    """The original scan's grid, from a header whose geometry the container validated."""
    size, spacing, origin, direction = grid_of(header)
    return Frame(tuple(int(n) for n in size), tuple(spacing), tuple(origin), tuple(direction))  # type: ignore[arg-type]


def _object(header: Dict[str, Any], key: str) -> Dict[str, Any]:
    value = header.get(key)
    if not isinstance(value, dict):
        raise FormatError(f"the header's {key} entry is missing or not an object")
    return value


def _integer(value: Any, key: str, low: int = 0, high: int = 1 << 40) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise FormatError(f"the header's {key} must be an integer in {low}..{high}")
    return value


def _bound(value: Any, key: str) -> float:
    if not (is_number(value) and 0 <= value < MAX_BOUND):
        raise FormatError(f"the header's {key} must be a number in 0..{MAX_BOUND:g}")
    return float(value)


def _optional(header: Dict[str, Any], key: str, kind) -> Any:
    value = header.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise FormatError(f"the header's {key} has the wrong type")
    return value


def _bundle_ref(value: Any) -> BundleRef:
    if not isinstance(value, dict):
        raise FormatError("the header names no bundle (its bundle entry is missing or not an object)")
    sha, name = value.get("sha256"), value.get("name")
    if not (isinstance(sha, str) and LEAN_BUNDLE_ID <= len(sha) <= 64 and all(c in "0123456789abcdef" for c in sha)):
        raise FormatError("the header's bundle id is not a SHA-256 (prefix)")
    if name is not None and not (isinstance(name, str) and len(name) <= 200):
        raise FormatError("the header's bundle name must be a short string")
    return BundleRef(name, sha)


def _codec_keys(value: Any) -> CodecKeys:
    if not isinstance(value, dict):
        raise FormatError("the header's codec entry must be an object")
    margin = value.get("margin", [0, 0, 0])
    if not (
        isinstance(margin, list)
        and len(margin) == 3
        and all(isinstance(m, int) and not isinstance(m, bool) and 0 <= m <= MAX_MARGIN for m in margin)
    ):
        raise FormatError("the header's texture margin is invalid")
    frame_size = value.get("frame_size")
    if frame_size is not None and not (
        isinstance(frame_size, list)
        and len(frame_size) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_FRAME_AXIS for n in frame_size)
    ):
        raise FormatError("the header's texture frame size is invalid")
    if frame_size is not None and frame_size[0] * frame_size[1] * frame_size[2] > MAX_NATIVE_FRAME_VOXELS:
        raise FormatError(f"the header's texture frame exceeds {MAX_NATIVE_FRAME_VOXELS} voxels")
    window = value.get("frame_window")
    if window is not None:
        if not (
            isinstance(window, list)
            and len(window) == 6
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_FRAME_AXIS for n in window)
            and all(window[i] < window[i + 3] for i in range(3))
        ):
            raise FormatError("the header's texture frame window is invalid")
        window = (tuple(window[:3]), tuple(window[3:]))
    stats = {}
    for key, kind in (
        ("texture_rate", int),
        ("shape_width", int),
        ("shape_bits", int),
        ("omega", (int, float)),
        ("registration_loss", (int, float)),
    ):
        item = value.get(key)
        if item is not None and not (isinstance(item, kind) and not isinstance(item, bool) and is_number(item)):
            raise FormatError(f"the header's codec.{key} has the wrong type")
        stats[key] = item
    size = None if frame_size is None else tuple(frame_size)
    return CodecKeys(tuple(margin), size, window, **stats)  # type: ignore[arg-type]


def lo_hi(window) -> Tuple[int, ...]:
    """A window ((x0, y0, z0), (x1, y1, z1)) as the header's flat list."""
    return (*window[0], *window[1])


__all__ = ["DstdHeader", "BundleRef", "CodecKeys", "KeepInfo", "HEADER_SHARE", "LEAN_BUNDLE_ID", "DECODE_KEYS"]
