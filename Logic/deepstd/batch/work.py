"""What runs on a Dask worker: compress (and verify) one scan, or restore one `.dstd`.

Tasks receive the bundle as bytes (scattered once to every worker by the driver) and keep the
parsed bundle per process, keyed by its SHA-256, so workers need the `deepstd` package but no
bundle installed. Each task runs torch on one thread and codes blocks on one thread: the codec is
then deterministic, and the files are the same bytes whatever the number of workers. A failure a
user can cause comes back as a "failed" record with a one-line reason, a library failure as an
"error" record, never as an exception, so one bad scan never stops the batch.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Dict, Optional, Tuple

from ..errors import DeepSTDError

_bundles: Dict[str, object] = {}


def dask_setup(worker) -> None:
    """Run by Dask in each local worker process as it starts (the driver preloads this module):
    ignore SIGINT, so that a Ctrl-C at the terminal stops the driver, which closes the workers,
    instead of killing them with a traceback each."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def bundle_from(sha256: str, data: bytes):
    """The parsed bundle for these bytes, parsed once per worker process."""
    from ..bundle import from_bytes

    if sha256 not in _bundles:
        _bundles[sha256] = from_bytes(data)
    return _bundles[sha256]


def one_thread() -> None:
    """Deterministic and quiet: torch on one thread; deprecation notices are for torch's developers."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    import torch

    torch.set_num_threads(1)


def compress_task(
    task: dict,
    bundle_sha256: str,
    bundle_bytes: bytes,
    ratio: float,
    verify: bool,
    allow_gaps: bool = False,
    deidentify_salt: Optional[str] = None,
    effort: int = 0,
) -> Tuple[dict, Optional[bytes]]:
    """Read, encode and (with `verify`) decode and measure one scan: (record, .dstd bytes or None).
    `allow_gaps`: a DICOM series with missing slices is resampled instead of refused.
    `deidentify_salt`: remove patient identity, pseudonyms keyed by this salt (one per run)."""
    started = time.perf_counter()
    record = {"worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        one_thread()
        bundle = bundle_from(bundle_sha256, bundle_bytes)
        record.update(encode_and_measure(task, bundle, ratio, verify, allow_gaps, deidentify_salt, effort))
        data = record.pop("data")
    except DeepSTDError as exc:
        record.update(status="failed", error=one_line(str(exc)))
        data = None
    except (MemoryError, RuntimeError, ValueError, OSError) as exc:  # library failures on odd input
        record.update(status="error", error=one_line(f"internal error: {type(exc).__name__}: {exc}"))
        data = None
    record["seconds"] = round(time.perf_counter() - started, 3)
    record["worker_peak_rss_mb"] = peak_rss_mb()
    return record, data


def encode_and_measure(
    task: dict,
    bundle,
    ratio: float,
    verify: bool,
    allow_gaps: bool = False,
    deidentify_salt: Optional[str] = None,
    effort: int = 0,
) -> dict:
    from ..container import unpack
    from ..evaluate import round_trip
    from ..io import read

    volume = read(task["source"], series_uid=task["series_uid"], allow_gaps=allow_gaps)
    if deidentify_salt is not None:
        from ..deidentify import deidentify_meta

        volume.meta.update(deidentify_meta(volume.meta, deidentify_salt))
    trip = round_trip(volume, bundle, ratio=ratio, decode=verify, device="cpu", workers=1, effort=effort)
    data = trip.data
    result = {
        "status": "ok",
        "error": None,
        "data": data,
        "voxels": volume.voxels,
        "raw_bytes": volume.raw_bytes,
        "bytes": len(data),
        "ratio": round(volume.raw_bytes / len(data), 4),
        "units": volume.units,
        "encode_s": round(trip.encode_s, 3),
        "warnings": unpack(data).header.get("warnings", []),
    }
    if verify:
        result.update(
            decode_s=round(trip.decode_s, 3),
            psnr=round(trip.metrics["psnr"], 4),
            ssim=round(trip.metrics["ssim"], 5),
            mae=round(trip.metrics["mae"], 5),
        )
    return result


def decompress_task(dstd_path: str, bundle_sha256: str, bundle_bytes: bytes, target: str, as_dicom: bool) -> dict:
    """Decode one `.dstd` to an image file, or to a DICOM series marked lossy when `as_dicom`."""
    from .. import codec
    from ..io import dicom_writer, write

    started = time.perf_counter()
    try:
        one_thread()
        with open(dstd_path, "rb") as stream:
            data = stream.read()
        volume = codec.decode(data, bundle_from(bundle_sha256, bundle_bytes), device="cpu", workers=1)
        if as_dicom:
            dicom_writer.write_dicom_series(
                volume, target, lossy_ratio=volume.raw_bytes / len(data), lossy_method="DEEPSTD"
            )
        else:
            write(volume, target)
        record = {"status": "ok", "error": None, "voxels": volume.voxels, "raw_bytes": volume.raw_bytes}
    except DeepSTDError as exc:
        record = {"status": "failed", "error": one_line(str(exc))}
    except (MemoryError, RuntimeError, ValueError, OSError) as exc:
        record = {"status": "error", "error": one_line(f"internal error: {type(exc).__name__}: {exc}")}
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def peak_rss_mb() -> float:
    """This worker process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def one_line(message: str) -> str:
    return " ".join(message.split())[:500]
