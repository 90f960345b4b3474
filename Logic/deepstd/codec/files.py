"""Files in, files out: what `deepstd encode` / `decode` call. Outputs are written atomically."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Tuple, Union

from .. import refine, region
from ..container import unpack, write_atomic
from ..errors import FormatError, InputError
from ..volume import Volume
from .decoder import decode
from .encoder import budget_for, encode
from .header import DstdHeader


def encode_scan(
    source,
    bundle,
    ratio: Optional[float] = None,
    budget_bytes: Optional[int] = None,
    max_error: Optional[float] = None,
    keep: Optional[str] = None,
    series_uid: Optional[str] = None,
    allow_gaps: bool = False,
    deidentify: Union[bool, str] = False,
    **kw,
) -> Tuple[Volume, bytes]:
    """Read a scan (file or DICOM folder) and encode it: (the volume read, the `.dstd` bytes).
    `keep`: 'LABELMAP[:E]', a label map on the scan's grid whose voxels > 0 are kept within ±E.
    `allow_gaps`: a DICOM series with missing slices is interpolated instead of refused.
    `deidentify`: True (or a salt string) removes the patient's identity from the header (PS3.15
    basic profile, `deepstd.deidentify`); files of one process share replacement UIDs, a salt
    string makes them agree across processes and runs."""
    from ..io import read

    volume = read(source, series_uid=series_uid, allow_gaps=allow_gaps)
    if deidentify:
        from ..deidentify import deidentify_meta

        salt = None if deidentify is True else str(deidentify)
        volume.meta.update(deidentify_meta(volume.meta, salt))
    labels, keep_error = (None, 0.0) if keep is None else read_keep(keep)
    data = encode(
        volume, bundle, ratio=ratio, budget_bytes=budget_bytes, max_error=max_error, keep=labels,
        keep_error=keep_error, **kw,
    )  # fmt: skip
    return volume, data


def layers_of(sections) -> str:
    """What a file's sections code the scan with, in words (`deepstd encode` and `info` print it)."""
    layer = sections.get("refine", b"")
    how = {refine.SLABS_VERSION: ", along z first", **dict.fromkeys(refine.MOVED_VERSIONS, " with slice motion")}
    moved = how.get(layer[0], "") if layer[:1] else ""
    if "texture" not in sections:
        filtered = " and a post-filter" if "filter" in sections else ""
        return (
            f"the refinement layer alone{filtered} (a 3-D wavelet coder{moved}; the learned texture decoded "
            "farther, did not fit or never wins with this bundle)"
        )
    extra = [label for name, label in (("refine", f"a refinement layer{moved}"), ("residual", "a residual layer"),
                                       ("keep/mask", "a keep mask")) if name in sections]  # fmt: skip
    return "the learned texture" + "".join(f" + {label}" for label in extra)


def encode_report(source, output, volume: Volume, data: bytes, budget: Optional[int], started: float) -> dict:
    """What `deepstd encode` prints about a file it wrote: sizes, ratios, bound, warnings, keep mask."""
    parsed = unpack(data)
    header = parsed.header
    report = {
        "input": str(source),
        "output": str(output),
        "raw_bytes": volume.raw_bytes,
        "bytes": len(data),
        "budget_bytes": budget,
        "ratio": volume.raw_bytes / len(data),
        "target_ratio": None if budget is None else round(volume.raw_bytes / budget, 4),
        "max_error": header.get("max_error"),
        "seconds": time.perf_counter() - started,
        "warnings": header.get("warnings", []),
        "layers": layers_of(parsed.sections),
    }
    method = (header.get("dicom") or {}).get("DeidentificationMethod")
    if method:
        report["deidentified"] = method
    if "keep" in header:
        report["keep"] = dict(
            header["keep"],
            mask_bytes=len(parsed.sections["keep/mask"]),
            residual_bytes=len(parsed.sections["keep/residual"]),
        )
    return report


def encode_file(source, output, bundle, ratio: Optional[float] = None, budget_bytes: Optional[int] = None,
                max_error: Optional[float] = None, **kw) -> dict:  # fmt: skip
    """Read a scan, encode it (`encode_scan`'s options), write `output` atomically; return a report."""
    started = time.perf_counter()
    volume, data = encode_scan(source, bundle, ratio, budget_bytes, max_error, **kw)
    write_atomic(output, data)
    budget = None if max_error is not None else budget_for(volume, ratio, budget_bytes)
    return encode_report(source, output, volume, data, budget, started)


def read_keep(spec: str) -> Tuple[Volume, float]:
    """'LABELMAP[:E]' -> (the label map, E). `encode` keeps its voxels > 0 and checks its grid."""
    from ..io import read

    path, bound = str(spec), ""
    if ":" in path and not Path(path).exists():
        path, _, bound = path.rpartition(":")
    try:
        keep_error = float(bound) if bound else 0.0
    except ValueError:
        raise InputError(f"--keep {spec!r}: the bound after ':' must be a number") from None
    return read(path), keep_error


def decode_file(source, output, bundle=None, roi=None, roi_mm: Optional[str] = None, **kw) -> Volume:
    """Decode a `.dstd` file (or a DeepSTD DICOM object holding one) and write the volume (a folder
    without suffix: a DICOM series).
    `roi`: a box or 'x0:x1,y0:y1,z0:z1' (voxels); `roi_mm`: the same in LPS millimetres."""
    from ..io import itk, write

    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) > 132 and data[128:132] == b"DICM":  # a DeepSTD object: the .dstd is inside it
        from ..dicom_object import unwrap

        data = unwrap(data)
    try:
        header = DstdHeader.of_file(unpack(data))
        if isinstance(roi, str) or roi_mm is not None:
            grid = header.grid
            roi = region.parse(roi, grid.size) if roi_mm is None else region.parse_mm(roi_mm, grid)
        volume = decode(data, bundle, roi=roi, **kw)
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None
    if itk.suffix_of(Path(output)) is None:  # a folder: a DICOM series, marked lossy unless it is lossless
        # the ratio is the whole file's, also when only a region is written
        lossless = header.max_error == 0
        write(volume, output, lossy_ratio=None if lossless else header.raw_bytes / len(data), lossy_method="DEEPSTD")
    else:
        write(volume, output)
    return volume


__all__ = ["encode_file", "encode_scan", "encode_report", "decode_file", "read_keep", "layers_of"]
