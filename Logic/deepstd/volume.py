"""The `Volume` type: voxels plus the geometry that makes them a medical image.

Array order is (z, y, x) as SimpleITK's `GetArrayFromImage` returns it; spacing, origin and
direction are in ITK order (x, y, z) and in the LPS physical frame. Conversion to anything else
(RAS for Slicer, normalised coordinates for the networks) happens at the boundary that needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, Tuple

import numpy as np

from .errors import InputError

#: Original sample types a volume may come from; decode writes back exactly this type.
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


@dataclass
class Volume:
    """A 3D scalar image: float32 voxels (z, y, x) with ITK/LPS geometry and its original dtype.

    `array` always holds float32 values in original units (DICOM rescale applied, HU for CT);
    `dtype` names the sample type the scan came in, which is what "raw bytes" and decoded
    output refer to. `units` is "HU" for CT, "unitless" for MR and most other inputs.
    """

    array: np.ndarray
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: Tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    dtype: str = "float32"
    units: str = "unitless"
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise InputError(f"a volume must be 3-D, got an array of shape {array.shape}")
        if min(array.shape) < 1:
            raise InputError(f"a volume must not be empty, got shape {array.shape}")
        self.array = np.ascontiguousarray(array, dtype=np.float32)
        self.spacing = _triple(self.spacing, "spacing")
        self.origin = _triple(self.origin, "origin")
        if any(not (s > 0) for s in self.spacing):
            raise InputError(f"voxel spacing must be positive, got {self.spacing}")
        direction = np.asarray(self.direction, dtype=np.float64).reshape(-1)
        if direction.size != 9 or not np.all(np.isfinite(direction)):
            raise InputError("the direction must be a finite 3x3 matrix")
        if abs(abs(np.linalg.det(direction.reshape(3, 3))) - 1.0) > 1e-3:
            raise InputError("the direction matrix is not orthonormal")
        self.direction = tuple(float(v) for v in direction)
        self.dtype = np.dtype(self.dtype).name
        if self.dtype not in SUPPORTED_DTYPES:
            raise InputError(f"unsupported sample type {self.dtype!r}")

    # --- shape and size -------------------------------------------------------------------------
    @property
    def size(self) -> Tuple[int, int, int]:
        """Voxels along (x, y, z), ITK order."""
        z, y, x = self.array.shape
        return (x, y, z)

    @property
    def voxels(self) -> int:
        return int(self.array.size)

    @property
    def raw_bytes(self) -> int:
        """Bytes of the voxels in the original sample type: the numerator of every ratio."""
        return self.voxels * np.dtype(self.dtype).itemsize

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def extent_mm(self) -> Tuple[float, float, float]:
        """Physical imaging range along each axis: size × spacing (how templates are ranked)."""
        (nx, ny, nz), (sx, sy, sz) = self.size, self.spacing
        return nx * sx, ny * sy, nz * sz

    def index_to_physical(self) -> np.ndarray:
        """4×4 matrix mapping a continuous index (x, y, z, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def same_grid(self, other: "Volume", tol: float = 1e-5) -> bool:
        """True when both volumes sample the same physical grid (size, spacing, origin, direction)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol * 100)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def with_array(self, array: np.ndarray, **changes: Any) -> "Volume":
        """The same geometry and metadata with new voxels (and optionally other fields)."""
        return replace(self, **{"array": array, "meta": dict(self.meta), **changes})

    # --- intensities ----------------------------------------------------------------------------
    def data_range(self) -> float:
        """max − min of the voxels: the dynamic range PSNR and SSIM must use."""
        return float(self.array.max() - self.array.min())

    def to_dtype_array(self) -> np.ndarray:
        """Voxels rounded and clipped into the original sample type, as written to disk."""
        return cast_to_dtype(self.array, self.dtype)

    # --- SimpleITK --------------------------------------------------------------------------------
    def to_sitk(self, cast: bool = True):
        """A SimpleITK image; with `cast`, voxels are converted to the original sample type."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.to_dtype_array() if cast else self.array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image, units: str = "unitless", meta: Dict[str, Any] | None = None) -> "Volume":
        """A Volume from a 3-D scalar SimpleITK image (a 2-D image becomes one slice)."""
        import SimpleITK as sitk

        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(
                f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel"
            )
        if image.GetDimension() == 2:
            image = sitk.JoinSeries(image)
        elif image.GetDimension() == 4 and image.GetSize()[3] == 1:
            image = image[:, :, :, 0]
        if image.GetDimension() != 3:
            raise InputError(f"expected a 3-D image, got {image.GetDimension()}-D")
        array = sitk.GetArrayViewFromImage(image)
        dtype = _dtype_for(array)
        return cls(
            array.astype(np.float32),
            image.GetSpacing(),
            image.GetOrigin(),
            image.GetDirection(),
            dtype,
            units,
            dict(meta or {}),
        )


def cast_to_dtype(array: np.ndarray, dtype: str) -> np.ndarray:
    """Round (integer types) and clip values into `dtype`'s range."""
    target = np.dtype(dtype)
    if target.kind in "iu":
        info = np.iinfo(target)
        return np.clip(np.rint(array), info.min, info.max).astype(target)
    return np.asarray(array, dtype=target)


def _dtype_for(array: np.ndarray) -> str:
    """The supported sample type for an array: itself, or int32 for 64-bit integers that fit."""
    name = array.dtype.name
    if name in SUPPORTED_DTYPES:
        return name
    if name in ("uint64", "int64") and array.size and array.min() >= -(2**31) and array.max() < 2**31:
        return "int32"
    raise InputError(f"unsupported voxel type {name}")


def _triple(values: Any, what: str) -> Tuple[float, float, float]:
    out = tuple(float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1))
    if len(out) != 3 or not all(np.isfinite(out)):
        raise InputError(f"{what} must be three finite numbers, got {values!r}")
    return out
