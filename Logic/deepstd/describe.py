"""Human-readable descriptions of what `deepstd info` is pointed at (volume, DICOM folder, .dstd)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

from .volume import Volume


def describe(path, series_uid: Optional[str] = None, allow_gaps: bool = False) -> str:
    path = Path(path)
    if path.is_file() and path.name.lower().endswith(".dstd"):
        return describe_dstd(path)
    if path.is_file() and path.name.lower().endswith(".dstdb"):
        return describe_bundle(path)
    from .io import format_of, read
    from .io.dicom import SeriesChoiceError

    lines: List[str] = []
    if path.exists() and format_of(path) == "dicom" and path.is_dir():
        lines += describe_series_list(path)
    try:
        volume = read(path, series_uid=series_uid, allow_gaps=allow_gaps)
    except SeriesChoiceError:
        if not lines:
            raise
        return "\n".join(lines + ["several series of the same size: describe one with --series UID"])
    lines += describe_volume(volume)
    return "\n".join(lines)


def describe_series_list(folder: Path) -> List[str]:
    from .io.dicom import list_series

    series = list_series(folder)
    lines = [f"{folder}: {len(series)} DICOM series"]
    for s in series:
        lines.append(
            f"  {s.uid or '<no SeriesInstanceUID>'}  {s.modality or '?':3} "
            f"{'x'.join(map(str, s.size)):>13}  {len(s.datasets)} files  {s.description}"
        )
    return lines


def describe_volume(volume: Volume) -> List[str]:
    a = volume.array
    lines = [
        f"source:    {volume.meta.get('source', '-')} ({volume.meta.get('format', '-')})",
        f"size:      {'x'.join(map(str, volume.size))} voxels (x, y, z)",
        f"spacing:   {' x '.join(f'{s:.4g}' for s in volume.spacing)} mm",
        f"origin:    {', '.join(f'{o:.4g}' for o in volume.origin)} mm (LPS)",
        f"direction: {' '.join(f'{d:.4g}' for d in volume.direction)}",
        f"dtype:     {volume.dtype} ({volume.raw_bytes / 2**20:.2f} MiB raw)",
        f"range:     {a.min():.6g} .. {a.max():.6g} {volume.units}  (mean {a.mean():.4g})",
    ]
    if volume.meta.get("series_uid"):
        lines.append(f"series:    {volume.meta['series_uid']}")
    lines += [f"warning:   {w}" for w in volume.meta.get("warnings", [])]
    return lines


def describe_dstd(path: Path) -> str:
    from .codec.header import DstdHeader
    from .container import read_file

    parsed = read_file(path)
    header = DstdHeader.of_file(parsed)
    g = header.grid
    lines = [
        f"{path}: DeepSTD file, {parsed.file_bytes} bytes, format {parsed.version[0]}.{parsed.version[1]}",
        f"size:      {'x'.join(map(str, g.size))} voxels, {header.dtype} ({parsed.raw_bytes} raw bytes)",
        f"spacing:   {' x '.join(f'{s:.4g}' for s in g.spacing)} mm",
        f"origin:    {', '.join(f'{o:.4g}' for o in g.origin)} mm (LPS)",
        f"direction: {' '.join(f'{d:.4g}' for d in g.direction)}",
        f"ratio:     {parsed.achieved_ratio:.2f}x achieved"
        + (f" (target {header.target_ratio:g}x)" if header.target_ratio is not None else ""),
    ]
    if header.max_error is not None:
        lossless = " (lossless)" if header.max_error == 0 else ""
        lines.append(f"error:     every voxel within ±{header.max_error:g} of the original{lossless}")
    if header.keep is not None:
        lines.append(
            f"keep:      {header.keep.voxels} voxels of a stored mask within ±{header.keep.max_error:g} of the original"
        )
    from .deidentify import identity_line

    lines.append(f"identity:  {identity_line(header.dicom)}")
    from .codec.files import layers_of

    lines += [
        f"coded:     with {layers_of(parsed.sections)}",
        "sections:  " + ", ".join(f"{name} {len(data)} B" for name, data in parsed.sections.items()),
        "header:    " + json.dumps(_shown(parsed.header), sort_keys=True),
    ]
    return "\n".join(lines)


def _shown(header: dict) -> dict:
    """The header for `info`: geometry is printed above; the DICOM entry's per-slice source
    references (one UID per slice) are counted, not listed."""
    shown = {k: v for k, v in header.items() if k != "geometry"}
    dicom = shown.get("dicom")
    if isinstance(dicom, dict):
        shown["dicom"] = {
            k: (f"<{len(v)} entries>" if isinstance(v, list) and len(v) > 4 else v) for k, v in dicom.items()
        }
    return shown


def describe_bundle(path) -> str:
    from .bundle import load_bundle

    bundle = load_bundle(path)
    return "\n".join(
        [
            bundle.describe(),
            f"sha256:    {bundle.sha256}",
            "config:    " + json.dumps(bundle.config.to_dict(), sort_keys=True),
        ]
    )


__all__ = ["describe_bundle", "describe", "describe_volume", "describe_dstd", "describe_series_list"]
