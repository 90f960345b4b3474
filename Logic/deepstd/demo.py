"""`deepstd demo`: the main job on a built-in example, end to end, with a picture of what was lost.

Without an input it makes an *unseen* scan from the shipped bundle's template: a random smooth
deformation and an intensity change (the same kind the training augmentation uses), so nothing
the codec was trained on is fed back to it. The PNG needs no plotting library: a montage of a
few axial slices (original | decoded | residue, residue mid-grey = 0) written by SimpleITK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .volume import Volume

DEFAULT_BUNDLE = "la-mr"


def unseen_scan(template: Volume, seed: int = 1) -> Volume:
    """The template deformed smoothly, with gamma / bias / noise, in the template's dtype range."""
    from .alignment import intensity_map
    from .training import augment
    from .volume import cast_to_dtype

    mapping = intensity_map(template.array)
    rng = np.random.default_rng(seed)
    unit = augment(mapping.to_unit(template.array), rng, bumps=8, max_shift=5.0)
    values = cast_to_dtype(mapping.from_unit(np.clip(unit, 0.0, None)), template.dtype)
    return template.with_array(values.astype(np.float32), meta={"source": f"unseen scan (seed {seed})"})


def montage(original: np.ndarray, decoded: np.ndarray, slices: int = 4) -> np.ndarray:
    """uint8 image: one row per slice, columns original | decoded | residue (±10 % of the range)."""
    lo, hi = np.percentile(original, [0.5, 99.5])
    scale = max(hi - lo, 1e-6)
    grey = lambda a: np.clip((a - lo) / scale * 255, 0, 255)  # noqa: E731
    residue = lambda a, b: np.clip(128 + (a - b) / (0.1 * scale) * 127, 0, 255)  # noqa: E731
    picks = np.linspace(original.shape[0] * 0.2, original.shape[0] * 0.8, slices).astype(int)
    rows = [
        np.concatenate([grey(original[z]), grey(decoded[z]), residue(original[z], decoded[z])], axis=1) for z in picks
    ]
    return np.concatenate(rows, axis=0)[::-1].astype(np.uint8)  # y up, as a radiologist reads it


def write_png(image: np.ndarray, path) -> Path:
    import SimpleITK as sitk

    from .container import write_atomic

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial.png")
    sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp))
    data = tmp.read_bytes()
    tmp.unlink()
    return write_atomic(path, data)


def run_demo(
    input_path=None,
    bundle=DEFAULT_BUNDLE,
    ratio: float = 128.0,
    png="deepstd_demo.png",
    out_dstd: Optional[str] = None,
    progress=None,
    cancel=None,
) -> dict:
    """Compress and decompress one scan; return sizes, ratio, times and MAE / PSNR / SSIM."""
    from .bundle import load_bundle
    from .codec.files import layers_of
    from .container import unpack, write_atomic
    from .evaluate import round_trip
    from .io import read

    loaded = load_bundle(bundle)
    scan = read(input_path) if input_path else unseen_scan(loaded.template)
    result = round_trip(scan, loaded, ratio=ratio, progress=progress, cancel=cancel)
    if out_dstd:
        write_atomic(out_dstd, result.data)
    if png:
        write_png(montage(scan.array, result.decoded.array), png)
    return {
        "input": str(input_path) if input_path else scan.meta["source"],
        "bundle": loaded.name,
        "size": list(scan.size),
        "raw_bytes": scan.raw_bytes,
        "bytes": len(result.data),
        "target_ratio": ratio,
        "ratio": scan.raw_bytes / len(result.data),
        "layers": layers_of(unpack(result.data).sections),
        "encode_s": result.encode_s,
        "decode_s": result.decode_s,
        "mae": result.metrics["mae"],
        "psnr": result.metrics["psnr"],
        "ssim": result.metrics["ssim"],
        "png": str(png) if png else None,
        "warnings": result.warnings,
    }


__all__ = ["run_demo", "unseen_scan", "montage"]
