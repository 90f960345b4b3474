"""The driver: plans the work, runs it on Dask, writes every `.dstd` and manifest line itself.

Only the driver writes into the output tree (atomically, then one manifest line), so the
manifest has one writer and a killed worker or an interrupted run loses only scans in flight.
Workers read the sources by path: with `--scheduler` they must see the same paths (a shared
filesystem); the bundle travels to them as bytes.

Ctrl-C or SIGTERM stops the driver, which cancels what is in flight and closes its client and
local cluster before the exception goes on. Local workers ignore SIGINT (a Ctrl-C at a terminal
reaches the whole process group; a worker it killed would print a traceback and lose its
scattered data): they stop when the driver closes them. A `.dstd` and its manifest line are
stored with signals held, so a signal never parts them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Tuple

from .. import __version__
from ..container import write_atomic
from ..errors import BundleError, Cancelled, InputError
from ..progress import CancelToken, ProgressCallback, Reporter, signals_deferred
from . import manifest
from .discover import Scan, check_disjoint, file_sha256, find_scans, sha256_of
from .work import compress_task, decompress_task, one_line

Log = Callable[[str], None]


def default_workers() -> int:
    """One worker per core, at most 8 (one scan holds a few GB at peak on a large CT)."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def compress(
    source,
    out_dir,
    bundle,
    ratio: float,
    verify: bool = False,
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    retry_failed: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    log: Log = lambda line: None,
    allow_gaps: bool = False,
    deidentify_salt: Optional[str] = None,
    effort: int = 0,
) -> dict:
    """Compress every scan of `source` (folder or list) into `out_dir`; returns the run's totals
    (scans, compressed, skipped, failed — this run's and earlier settled ones — and byte sums).
    `allow_gaps`: DICOM series with missing slices are resampled instead of failing (scans that
    failed before without it are retried). `deidentify_salt`: every file's header is de-identified
    (`deepstd.deidentify`) with this one salt, so the series of a study keep one replacement
    study UID; give the same salt when resuming. `effort`: the encoder preset (`encode`); a scan
    done with another effort is coded again."""
    from ..bundle import load_bundle
    from ..codec.encoder import check_effort

    if not (ratio >= 1):
        raise InputError(f"the ratio must be a number ≥ 1, got {ratio!r}")
    check_effort(effort)
    check_workers(workers)
    root, scans = find_scans(source)
    out_dir = Path(out_dir).resolve()
    check_disjoint(root, out_dir)
    if not scans:
        raise InputError(f"{source}: no scans found (NIfTI, NRRD, MHA/MHD files or DICOM series)")
    bundle = load_bundle(bundle) if isinstance(bundle, (str, Path)) else bundle
    out_dir.mkdir(parents=True, exist_ok=True)
    reporter = Reporter(progress, cancel)
    todo, skipped, settled = plan(
        scans, root, out_dir, bundle, ratio, verify, retry_failed, reporter, allow_gaps, effort
    )
    log(
        f"{len(scans)} scans under {root}: {skipped} already done, {settled} failed before (not retried), "
        f"{len(todo)} to compress"
    )
    totals = {
        "scans": len(scans),
        "skipped": skipped,
        "compressed": 0,
        "failed": len(scans) - skipped - len(todo),
        "raw_bytes": 0,
        "bytes": 0,
    }
    if todo:
        bundle_bytes = bundle_file_bytes(bundle)
        tasks = [(scan.task(), ratio, verify, allow_gaps, deidentify_salt, effort) for scan, _ in todo]
        bases = {scan.output: dict(base, deidentified=deidentify_salt is not None) for scan, base in todo}
        meter = Throughput(len(todo), reporter)

        def finished(task: dict, outcome) -> None:
            record = dict(bases[task["output"]])
            with signals_deferred():  # the file and its manifest line, or neither
                record.update(store(out_dir, task["output"], outcome))
                manifest.append(out_dir, record)
            totals["compressed" if record["status"] == "ok" else "failed"] += 1
            totals["raw_bytes"] += record.get("raw_bytes") or 0
            totals["bytes"] += record.get("bytes") or 0
            meter.add(record)

        execute(compress_task, tasks, bundle.sha256, bundle_bytes, finished, workers, scheduler, cancel, log)
    reporter("batch", 1.0, "done")
    return totals


def plan(
    scans: List[Scan],
    root: Path,
    out_dir: Path,
    bundle,
    ratio: float,
    verify: bool,
    retry_failed: bool,
    reporter: Reporter,
    allow_gaps: bool = False,
    effort: int = 0,
) -> Tuple[List[tuple], int, int]:
    """(scans to code with their base records, how many are done, how many failed before).
    A failure recorded without `allow_gaps` is retried with it (it may have been a gap)."""
    done = manifest.latest(manifest.load(out_dir))
    todo, skipped, settled = [], 0, 0
    for i, scan in enumerate(scans):
        reporter("checking", i / len(scans), scan.output)
        base = base_record(scan, root, bundle, ratio, allow_gaps, effort)
        before = done.get(scan.output)
        retry = retry_failed or (allow_gaps and not (before or {}).get("allow_gaps"))
        known = (
            manifest.state(before, out_dir, base["source_sha256"], bundle.sha256, ratio, verify, retry, effort)
            if base["source_sha256"]
            else "todo"
        )
        if known == "done":
            skipped += 1
        elif known == "failed":
            settled += 1
        elif base["status"] == "failed":
            manifest.append(out_dir, base)  # unreadable source: recorded here, nothing to send
        else:
            todo.append((scan, base))
    return todo, skipped, settled


def bundle_file_bytes(bundle) -> bytes:
    """The bytes workers get: the bundle's file, checked to be the one loaded (same id)."""
    import hashlib

    data = Path(bundle.path).read_bytes() if bundle.path else b""
    if hashlib.sha256(data).hexdigest() != bundle.sha256:
        raise BundleError(f"bundle {bundle.name}: its file is missing or changed since it was loaded")
    return data


def base_record(scan: Scan, root: Path, bundle, ratio: float, allow_gaps: bool = False, effort: int = 0) -> dict:
    """What the driver knows before coding: identity of source, bundle and settings."""
    record = {
        "output": scan.output,
        "source": scan.source,
        "series_uid": scan.series_uid,
        "source_root": str(root),
        "bundle": bundle.name,
        "bundle_sha256": bundle.sha256,
        "target_ratio": float(ratio),
        "allow_gaps": bool(allow_gaps),
        "effort": int(effort),
        "encoder_version": __version__,
        "status": "pending",
        "error": None,
        "source_sha256": None,
    }
    try:
        record["source_sha256"] = sha256_of(scan.files)
    except OSError as exc:
        record.update(status="failed", error=one_line(f"{scan.source}: cannot read ({exc.strerror})"))
    return record


def store(out_dir: Path, output: str, outcome) -> dict:
    """Write a worker's `.dstd` atomically and describe it; a lost task becomes a failure record."""
    if isinstance(outcome, BaseException):
        return {"status": "error", "error": one_line(f"worker failure: {type(outcome).__name__}: {outcome}")}
    record, data = outcome
    if data is not None:
        path = write_atomic(out_dir / output, data)
        record["output_sha256"] = file_sha256(path)
    return record


class Throughput:
    """Scans done, Mvoxel/s, GB/h (raw bytes) and ETA since the run started, as progress events."""

    def __init__(self, total: int, reporter: Reporter):
        self.total, self.reporter = total, reporter
        self.count, self.voxels, self.raw = 0, 0, 0
        self.started = time.perf_counter()
        reporter("batch", 0.0, f"0/{total} scans")

    def add(self, record: dict) -> None:
        self.count += 1
        self.voxels += record.get("voxels") or 0
        self.raw += record.get("raw_bytes") or 0
        elapsed = max(time.perf_counter() - self.started, 1e-6)
        eta = elapsed / self.count * (self.total - self.count)
        self.reporter(
            "batch",
            self.count / self.total,
            f"{self.count}/{self.total} scans {self.voxels / elapsed / 1e6:.3g} Mvox/s "
            f"{self.raw / elapsed * 3600 / 1e9:.3g} GB/h ETA {eta:.0f} s",
        )


def execute(
    function,
    tasks: List[tuple],
    bundle_sha256: str,
    bundle_bytes: bytes,
    finished: Callable[[dict, object], None],
    workers: Optional[int],
    scheduler: Optional[str],
    cancel: Optional[CancelToken],
    log: Log,
) -> None:
    """Run `function(*task[:1], bundle_sha256, bundle_bytes, *task[1:])` for every task on Dask and
    hand each outcome (or the exception that lost it) to `finished` as it completes."""
    from dask.distributed import as_completed

    client, cluster = connect(workers, scheduler, log)
    futures: dict = {}
    interrupted = False
    try:
        shipped = client.scatter(bundle_bytes, broadcast=True, hash=False)
        futures = {
            client.submit(
                function,
                task[0],
                bundle_sha256,
                shipped,
                *task[1:],
                pure=False,
                key=f"deepstd-{i}-{os.getpid()}-{time.time_ns()}",
            ): task[0]
            for i, task in enumerate(tasks)
        }
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except Exception as exc:  # a killed worker (KilledWorker) or a lost connection
                outcome = exc
            finished(futures[future], outcome)
            if cancel is not None and cancel.is_set():
                client.cancel(list(futures))
                raise Cancelled("cancelled by the user; finished scans are in the manifest")
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as `Terminated`
        interrupted = True
        raise
    finally:
        with signals_deferred(), quiet_dask(interrupted):
            if interrupted:
                client.cancel(list(futures))
            client.close()
            if cluster is not None:
                cluster.close()


@contextlib.contextmanager
def quiet_dask(quiet: bool):
    """While an interrupted run shuts its cluster down, Dask's complaints about the tasks and data
    it is told to drop are expected: not shown."""
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("distributed", "tornado")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def check_workers(workers: Optional[int]) -> None:
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")


def connect(workers: Optional[int], scheduler: Optional[str], log: Log):
    """A client of the cluster at `scheduler`, or of a new local one (processes, 1 thread each)."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
        log(f"dask: scheduler {scheduler}, {len(client.scheduler_info()['workers'])} workers")
        return client, None
    check_workers(workers)
    count = default_workers() if workers is None else workers
    cluster = None
    try:
        with sigint_ignored():  # inherited by the worker processes started meanwhile
            cluster = LocalCluster(
                n_workers=count,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
                preload=["deepstd.batch.work"],  # workers restarted later ignore it too (`dask_setup`)
            )
        client = Client(cluster)
    except BaseException:
        if cluster is not None:
            with signals_deferred(), quiet_dask(True):
                cluster.close()
        raise
    log(
        f"dask: local cluster, {count} worker processes x 1 thread"
        + (f", dashboard {client.dashboard_link}" if dashboard_running(cluster) else "")
    )
    return client, cluster


@contextlib.contextmanager
def sigint_ignored():
    """Ignore SIGINT for the block, so that processes started meanwhile ignore it from their start
    (an ignored signal stays ignored across exec; a handler does not). A Ctrl-C in these seconds
    is lost: the next one stops the run. Main thread only (signals are set there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def dashboard_running(cluster) -> bool:
    """The dashboard needs bokeh; without it distributed starts none (the link would be dead)."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return cluster is not None


# --- restoring ----------------------------------------------------------------------------------
def decompress(
    out_dir,
    restore_dir,
    as_dicom: bool = False,
    bundle=None,
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    log: Log = lambda line: None,
) -> dict:
    """Restore every scan the manifest has as done: image sources to their format, DICOM series
    (or every scan with `as_dicom`) to DICOM series marked as lossy-compressed."""
    check_workers(workers)
    out_dir, restore_dir = Path(out_dir).resolve(), Path(restore_dir).resolve()
    records = [r for r in manifest.latest(manifest.load(out_dir)).values() if r.get("status") == "ok"]
    if not records:
        raise InputError(f"{out_dir}: no compressed scans in {manifest.NAME}")
    check_disjoint(out_dir, restore_dir, "restore")
    for source_root in {r["source_root"] for r in records}:
        check_disjoint(source_root, restore_dir, "restore")
    reporter = Reporter(progress, cancel)
    todo = []
    for record in records:
        target, dicom_out = restored_path(record, as_dicom)
        if not (restore_dir / target).exists():
            todo.append((str(out_dir / record["output"]), str(restore_dir / target), dicom_out, record))
    totals = {"scans": len(records), "skipped": len(records) - len(todo), "restored": 0, "failed": 0, "failures": []}
    log(f"{len(records)} scans in the manifest: {totals['skipped']} already restored, {len(todo)} to restore")
    for sha, group in group_by_bundle(todo).items():
        meter = Throughput(len(group), reporter)

        def finished(task: str, outcome) -> None:
            if isinstance(outcome, BaseException):
                outcome = {"status": "failed", "error": one_line(f"worker failure: {outcome}")}
            totals["restored" if outcome["status"] == "ok" else "failed"] += 1
            if outcome["status"] != "ok":
                totals["failures"].append(f"{task}: {outcome['error']}")
            meter.add(outcome)

        data = bundle_bytes_for(group[0][3], bundle)
        execute(
            decompress_task,
            [(dstd, target, dicom_out) for dstd, target, dicom_out, _ in group],
            sha,
            data,
            finished,
            workers,
            scheduler,
            cancel,
            log,
        )
    reporter("batch", 1.0, "done")
    return totals


def restored_path(record: dict, as_dicom: bool) -> Tuple[str, bool]:
    """`x.nii.gz.dstd` -> `x.nii.gz` (or folder `x` as DICOM); `<uid>.dstd` -> DICOM folder `<uid>`."""
    from ..io import itk

    name = record["output"][: -len(".dstd")]
    suffix = itk.suffix_of(name)
    if suffix is None:
        return name, True
    return (name[: -len(suffix)], True) if as_dicom else (name, False)


def group_by_bundle(todo: Iterable[tuple]) -> dict:
    groups: dict = {}
    for item in todo:
        groups.setdefault(item[3]["bundle_sha256"], []).append(item)
    return groups


def bundle_bytes_for(record: dict, bundle) -> bytes:
    """The bytes of the bundle a record was coded with: the one given (checked) or a shipped one."""
    from ..bundle import find_bundle

    found = find_bundle(record["bundle"], record["bundle_sha256"], bundle)
    return Path(found.path).read_bytes()
