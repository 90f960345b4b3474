"""PACS jobs: `archive` (series -> DeepSTD objects on the server, originals deleted on request only
after the stored object is verified) and `restore` (DeepSTD objects -> lossy-marked series).

Both work one series at a time and record each step in `WORKDIR/manifest.jsonl` (the batch
engine's manifest: one JSON line per step, latest per item wins, a torn last line ignored), so an
interrupted or failed run is rerun with the same arguments and continues: finished items are
skipped, an item whose object was already made is stored without coding it again, an item that
failed for a reason of its own (not a volume, no bundle for its modality, budget infeasible) is
not retried unless asked (`retry_failed`), and one that failed for a reason of the server's (HTTP
errors, a series gone mid-way, a lost connection) is retried. docs/PACS.md describes the whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

from ..batch import manifest
from ..errors import Cancelled, DeepSTDError, FormatError, InputError
from ..progress import CancelToken, ProgressCallback, Reporter, signals_deferred
from .client import RAW_DATA_STORAGE, PacsError, SeriesGone, Server, ServerUnreachable, one_line

Log = Callable[[str], None]
BundleSpec = Union[Any, str, Path, Dict[str, Any]]

#: settled outcomes: not retried unless `retry_failed` (or the bundle, ratio or effort changed)
SETTLED = ("failed", "skipped")
_DATE = re.compile(r"^(\d{8})?-?(\d{8})?$")


# --- queries --------------------------------------------------------------------------------------
def parse_query(items) -> Dict[str, str]:
    """["Modality=CT", "StudyDate=20070101-20071231", …] (CLI `--query`) -> a query dict."""
    query: Dict[str, str] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise InputError(f"query {item!r}: expected KEYWORD=VALUE, e.g. Modality=CT or StudyDate=20200101-20201231")
        query[key.strip()] = value.strip()
    return normalize_query(query)


def parse_bundles(items) -> BundleSpec:
    """["ct-torso"] or ["CT=ct-torso", "MR=prostate-t2", "fallback"] (CLI `--bundle`, repeatable)
    -> one bundle for every series, or a mapping by Modality ("*": the one without a modality)."""
    spec: Dict[str, str] = {}
    for item in items or []:
        modality, sep, name = str(item).partition("=")
        key = modality.upper() if sep and re.fullmatch(r"[A-Za-z]{1,16}", modality) else "*"
        value = name if key != "*" else str(item)
        if not value.strip():
            raise InputError(f"--bundle {item!r}: expected a bundle, or MODALITY=BUNDLE such as CT=ct-torso")
        if key in spec:
            which = "a default bundle" if key == "*" else f"a bundle for {key}"
            raise InputError(f"--bundle {item!r}: {which} is already given ({spec[key]})")
        spec[key] = value
    if not spec:
        raise InputError("no bundle given")
    return spec["*"] if list(spec) == ["*"] else spec


def normalize_query(query: Optional[dict]) -> Dict[str, str]:
    """QIDO-RS filters from a query dict: DICOM keywords (or 8-digit tags) -> values. A date range
    is "YYYYMMDD-YYYYMMDD" (either end may be left open) or a (first, last) pair."""
    from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

    out: Dict[str, str] = {}
    for key, value in dict(query or {}).items():
        keyword = str(key)
        if re.fullmatch(r"[0-9A-Fa-f]{8}", keyword):
            keyword = keyword_for_tag(int(keyword, 16)) or keyword
        if tag_for_keyword(keyword) is None and not re.fullmatch(r"[0-9A-Fa-f]{8}", keyword):
            raise InputError(f"query: {key!r} is not a DICOM keyword (e.g. StudyInstanceUID, Modality, StudyDate)")
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise InputError(f"query {keyword}: a range is (first, last), got {value!r}")
            value = f"{value[0] or ''}-{value[1] or ''}"
        value = str(value).strip()
        tag = tag_for_keyword(keyword)
        if tag is not None and dictionary_VR(tag) == "DA":
            if not _DATE.match(value) or value in ("", "-"):
                raise InputError(f"query {keyword}={value!r}: expected YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
        out[keyword] = value
    return out


# --- shared machinery -----------------------------------------------------------------------------
class _Bundles:
    """The bundle for a series' modality: one bundle for all, or {"CT": …, "MR": …, "*": default}."""

    def __init__(self, spec: BundleSpec):
        self.spec = {str(k).upper(): v for k, v in spec.items()} if isinstance(spec, dict) else {"*": spec}
        self.loaded: Dict[str, Any] = {}

    def get(self, modality: str):
        from ..bundle import resolve_bundle

        key = modality.upper() if modality.upper() in self.spec else "*"
        if key not in self.spec:
            raise InputError(
                f"no bundle for modality {modality or '(none)'} (bundles given for: {', '.join(sorted(self.spec))})"
            )
        if key not in self.loaded:
            self.loaded[key] = resolve_bundle(self.spec[key])
        return self.loaded[key]


@contextlib.contextmanager
def _locked(workdir: Path) -> Iterator[None]:
    """One job per work folder at a time (two would append to one manifest and race on files)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise PacsError(f"{workdir}: another deepstd PACS job is using this work folder") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _torch_threads(threads: Optional[int]) -> Iterator[None]:
    """torch's intra-op threads for the job (None: as they are), restored afterwards. On cores
    shared with other work one thread is much faster than two (docs/PACS.md)."""
    if threads is None:
        yield
        return
    if not (isinstance(threads, int) and threads >= 1):
        raise InputError(f"threads must be a whole number ≥ 1, got {threads!r}")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _instances_sha256(uids) -> str:
    return hashlib.sha256("\n".join(sorted(str(u) for u in uids)).encode()).hexdigest()


class _Run:
    """What every item of one run shares: server, work folder, manifest, progress, totals."""

    def __init__(self, kind: str, server: Server, workdir: Path, reporter: Reporter, log: Log, count: int):
        self.kind, self.server, self.workdir, self.reporter, self.log = kind, server, workdir, reporter, log
        self.count = max(count, 1)
        self.index = 0
        self.done = manifest.latest(manifest.load(workdir))

    def step(self, stage: str, within: float, message: str) -> None:
        self.reporter(stage, (self.index + within) / self.count, message)

    def nested(self, start: float, end: float) -> Reporter:
        """A reporter for a long step (the codec) spanning `start..end` of this item."""
        return self.reporter.scaled((self.index + start) / self.count, (self.index + end) / self.count)

    def record(self, record: dict) -> dict:
        """Append one manifest line (with signals held: a line is never cut by Ctrl-C)."""
        record = dict(record, time=round(time.time(), 3))
        with signals_deferred():
            manifest.append(self.workdir, record)
        self.done[record["output"]] = record
        return record


class _Item:
    """One series being worked on; `record` is its latest state, kept for an error record."""

    def __init__(self, record: dict):
        self.record = record
        self.started = time.perf_counter()


def _fail_item(run: _Run, item: _Item, exc: BaseException, totals: dict) -> None:
    """Record an item's failure: settled ("failed") for a DeepSTD error of the input's own,
    retried ("error") for the server's, the network's or an internal one."""
    if isinstance(exc, PacsError):
        status = "error"
    elif isinstance(exc, DeepSTDError):
        status = "failed"
    else:
        status, exc = "error", RuntimeError(f"internal error: {type(exc).__name__}: {exc}")
    message = one_line(str(exc))
    run.record(dict(item.record, status=status, error=message, seconds=round(time.perf_counter() - item.started, 3)))
    totals["failed" if status == "failed" else "errors"] += 1
    uid = str(item.record.get("series_uid"))
    totals["failures"].append(message if uid in message else f"series {uid}: {message}")
    run.log(f"{run.kind} {run.index + 1}/{run.count}: {status}: {message if uid in message else f'{uid}: {message}'}")


def _guarded(run: _Run, item: _Item, totals: dict, work: Callable[[], None]) -> None:
    """Run one item; a server that cannot be reached stops the run (after recording the item)."""
    try:
        work()
    except ServerUnreachable as exc:
        _fail_item(run, item, exc, totals)
        raise
    except Cancelled:
        raise
    except (DeepSTDError, MemoryError, RuntimeError, ValueError, OSError) as exc:
        _fail_item(run, item, exc, totals)


def _object_series(server: Server, series: List[dict]) -> tuple:
    """(image series, DeepSTD-candidate series): a candidate has one Raw Data Storage instance."""
    images, objects = [], []
    for entry in series:
        if entry["instances"] not in (None, 1):
            images.append(entry)
            continue
        instances = server.search_instances(entry["study_uid"], entry["series_uid"])
        if len(instances) == 1 and instances[0]["sop_class"] == RAW_DATA_STORAGE:
            objects.append(dict(entry, sop_uid=instances[0]["sop_uid"]))
        else:
            images.append(entry)
    return images, objects


def _folder_name(uid: str) -> str:
    """A UID as a folder name no writer mistakes for a file suffix ("1.2.3" -> "1_2_3")."""
    return uid.replace(".", "_")


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    return folder


def _read_datasets(folder: Path) -> list:
    import pydicom

    return [pydicom.dcmread(path) for path in sorted(folder.iterdir()) if path.is_file()]


# --- archive --------------------------------------------------------------------------------------
def archive(
    server_url: str,
    query: Optional[dict],
    bundle: BundleSpec,
    ratio: float,
    workdir,
    delete_originals: bool = False,
    *,
    orthanc_url: Optional[str] = None,
    headers: Optional[Dict[str, str]] = None,
    timeout: float = 120.0,
    retry_failed: bool = False,
    redecode: bool = False,
    keep_files: bool = False,
    allow_gaps: bool = False,
    device: str = "cpu",
    workers: Optional[int] = None,
    threads: Optional[int] = None,
    effort: int = 0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    log: Log = lambda line: None,
) -> dict:
    """Compress every series `query` finds on the DICOMweb server at `server_url` into one DeepSTD
    object each (`deepstd.dicom_object`), stored back into the same study by STOW-RS.

    Per series: retrieve it (WADO-RS, as stored) into `workdir`, read and encode it with `bundle`
    (a bundle, a name or path, or {"CT": …, "MR": …, "*": …} by Modality) at `ratio`, decode the
    `.dstd` once (the decoded voxels' SHA-256 goes into the object), store the object, retrieve it
    again and check its payload's SHA-256 (with `redecode`, also decode the retrieved copy), and
    only then, with `delete_originals`, delete the original series — through Orthanc's REST API,
    after checking the server still holds exactly the instances that were compressed (DICOMweb has
    no standard delete; another server is refused before anything starts). DeepSTD objects and
    series restored from them are not archived again.

    Returns the run's totals: series, archived (this run), done (earlier runs), skipped, failed
    (settled), errors (retried next run), deleted, source_bytes and object_bytes (of every series
    archived so far), failures (one line each). `threads`: torch threads for the job (None: as
    set; 1 is best on cores other work shares). `effort`: the encoder preset (`encode`); a series
    archived with another effort is archived again."""
    from ..codec.encoder import check_effort

    if not (isinstance(ratio, (int, float)) and ratio >= 1):
        raise InputError(f"the ratio must be a number ≥ 1, got {ratio!r}")
    check_effort(effort)
    filters = normalize_query(query)
    bundles = _Bundles(bundle)
    workdir = Path(workdir).resolve()
    server = Server(server_url, timeout=timeout, orthanc_url=orthanc_url, headers=headers)
    reporter = Reporter(progress, cancel)
    with _locked(workdir), _torch_threads(threads):
        if delete_originals and not server.is_orthanc():
            raise PacsError(
                f"{server.url}: deleting originals needs Orthanc's REST API (DICOMweb defines no delete), "
                f"and {server.orthanc_url or 'no Orthanc URL'} does not answer as Orthanc; nothing was archived"
            )
        reporter("query", 0.0, f"querying {server.url}")
        images, objects = _object_series(server, server.search_series(filters))
        run = _Run("archive", server, workdir, reporter, log, len(images))
        totals: Dict[str, Any] = {
            "series": len(images),
            "objects_seen": len(objects),
            "archived": 0,
            "done": 0,
            "skipped": 0,
            "failed": 0,
            "errors": 0,
            "deleted": 0,
            "source_bytes": 0,
            "object_bytes": 0,
            "failures": [],
        }
        log(f"{len(images)} series to consider on {server.url} ({len(objects)} DeepSTD objects left alone)")
        options = dict(
            ratio=float(ratio),
            delete=delete_originals,
            retry_failed=retry_failed,
            redecode=redecode,
            keep_files=keep_files,
            allow_gaps=allow_gaps,
            device=device,
            workers=workers,
            effort=effort,
        )
        for index, entry in enumerate(images):
            run.index = index
            item = _Item(
                {
                    "output": f"archive/{entry['series_uid']}",
                    "job": "archive",
                    "server": server.url,
                    "series_uid": entry["series_uid"],
                    "study_uid": entry["study_uid"],
                    "modality": entry["modality"],
                    "description": entry["description"],
                    "target_ratio": float(ratio),
                    "effort": effort,
                    "status": "pending",
                    "error": None,
                }
            )
            _guarded(run, item, totals, lambda: _archive_one(run, item, entry, bundles, options, totals))
        reporter("archive", 1.0, "done")
    return totals


def _archive_one(run: _Run, item: _Item, entry: dict, bundles: _Bundles, options: dict, totals: dict) -> None:
    from .. import __version__

    uid = entry["series_uid"]
    label = f"series {run.index + 1}/{run.count} {uid} ({entry['modality']} {entry['description']})".strip()
    bundle = bundles.get(entry["modality"])
    item.record.update(bundle=bundle.name, bundle_sha256=bundle.sha256, encoder_version=__version__)
    before = run.done.get(item.record["output"]) or {}
    settings = (before.get("bundle_sha256"), before.get("target_ratio"), before.get("effort", 0))
    same = settings == (bundle.sha256, options["ratio"], options["effort"])
    status = before.get("status") if same else None

    if status == "ok" and (before.get("deleted") or not options["delete"]):
        totals["done"] += 1
        _count_bytes(totals, before)
        run.log(f"archive {label}: done in an earlier run")
        return
    if status == "ok":  # stored and verified in an earlier run; deleting the originals is asked now
        totals["done"] += 1
        item.record = dict(before, error=None)
        _verify_object(run, item, options, label)
        _delete_originals(run, item, label, totals)
        _count_bytes(totals, item.record)
        return
    if status in SETTLED and not options["retry_failed"]:
        totals["failed" if status == "failed" else "skipped"] += 1
        run.log(f"archive {label}: {status} in an earlier run ({before.get('error')}); not retried")
        return
    object_path = run.workdir / "objects" / f"{uid}.dcm"
    made = (
        same
        and before.get("object_sha256")
        and object_path.is_file()
        and _file_sha256(object_path) == before["object_sha256"]
    )
    if made:  # coded in an earlier run: store it (again: the same instance, a server keeps one) and verify
        item.record = dict(before, status="encoded", error=None)
        run.log(f"archive {label}: object made in an earlier run; storing it")
    elif not _make_object(run, item, entry, bundle, options, object_path, label):
        totals["skipped"] += 1
        return
    _store_and_verify(run, item, object_path, options, label)
    totals["archived"] += 1
    if options["delete"]:
        _delete_originals(run, item, label, totals)
    _count_bytes(totals, item.record)
    if not options["keep_files"]:
        shutil.rmtree(run.workdir / "series" / _folder_name(uid), ignore_errors=True)


def _count_bytes(totals: dict, record: dict) -> None:
    totals["source_bytes"] += int(record.get("source_bytes") or 0)
    totals["object_bytes"] += int(record.get("object_bytes") or 0)


def _retrieve(run: _Run, entry: dict, folder: Path) -> Optional[dict]:
    """Stream the series into `folder` (complete or absent: staged, then renamed). None when it
    is a series restored from a DeepSTD object (not archived again)."""
    staging = _fresh(folder.with_name(f".{folder.name}.partial"))
    staging.mkdir(parents=True)
    uids, total = [], 0
    try:
        for k, ds in enumerate(run.server.iter_series(entry["study_uid"], entry["series_uid"])):
            if k == 0 and "DEEPSTD" in str(getattr(ds, "LossyImageCompressionMethod", "")).upper():
                shutil.rmtree(staging, ignore_errors=True)
                return None
            path = staging / f"{k + 1:06d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            uids.append(str(ds.SOPInstanceUID))
            total += path.stat().st_size
            run.step("retrieve", 0.1 * min(1.0, (k + 1) / max(entry["instances"] or k + 1, 1)), f"{k + 1} instances")
        if not uids:
            raise SeriesGone(f"series {entry['series_uid']}: the server returned no instances")
        _fresh(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"instances": len(uids), "instances_sha256": _instances_sha256(uids), "source_bytes": total}


def _make_object(run: _Run, item: _Item, entry: dict, bundle, options: dict, object_path: Path, label: str) -> bool:
    """Retrieve, read, encode, decode once, write the object: False if the series is not archived."""
    import numpy as np

    from .. import codec
    from ..dicom_object import object_info, voxel_sha256, write_object
    from ..io import read

    uid = entry["series_uid"]
    folder = run.workdir / "series" / _folder_name(uid)
    run.step("retrieve", 0.0, f"retrieving {label}")
    retrieved = _retrieve(run, entry, folder)
    if retrieved is None:
        run.record(dict(item.record, status="skipped", error="a series restored from a DeepSTD object"))
        run.log(f"archive {label}: skipped (restored from a DeepSTD object; not archived again)")
        return False
    item.record.update(retrieved)
    run.step("encode", 0.1, f"encoding {label}")
    volume = read(folder, allow_gaps=options["allow_gaps"])
    started = time.perf_counter()
    data = codec.encode(
        volume,
        bundle,
        ratio=options["ratio"],
        device=options["device"],
        workers=options["workers"],
        effort=options["effort"],
        progress=run.nested(0.1, 0.7).callback(),
        cancel=run.reporter.cancel,
    )
    encode_s = time.perf_counter() - started
    run.step("check", 0.7, f"decoding {label} once before storing it")
    started = time.perf_counter()
    decoded = codec.decode(data, bundle, device=options["device"], workers=options["workers"])
    decode_s = time.perf_counter() - started
    same_grid = decoded.size == volume.size and all(
        np.allclose(a, b, atol=1e-6) for a, b in zip(_geometry(decoded), _geometry(volume))
    )
    if not same_grid:
        raise RuntimeError(f"series {uid}: the decoded volume's grid differs from the source's")
    digest = voxel_sha256(decoded)
    write_object(data, volume.meta, object_path, voxel_sha256=digest)
    info = object_info(object_path)
    item.record.update(
        status="encoded",
        error=None,
        object=str(object_path.relative_to(run.workdir)),
        object_sha256=_file_sha256(object_path),
        object_bytes=object_path.stat().st_size,
        object_series_uid=info["series_uid"],
        object_sop_uid=info["sop_instance_uid"],
        payload_sha256=info["payload_sha256"],
        dstd_bytes=len(data),
        raw_bytes=volume.raw_bytes,
        ratio=round(volume.raw_bytes / len(data), 4),
        voxel_sha256=digest,
        voxels=volume.voxels,
        encode_s=round(encode_s, 3),
        decode_s=round(decode_s, 3),
        warnings=list(volume.meta.get("warnings", [])),
    )
    run.record(item.record)
    return True


def _geometry(volume) -> tuple:
    return (volume.spacing, volume.origin, volume.direction)


def _store_and_verify(run: _Run, item: _Item, object_path: Path, options: dict, label: str) -> None:
    import pydicom

    run.step("store", 0.8, f"storing the DeepSTD object of {label}")
    run.server.store(
        [pydicom.dcmread(object_path)], what=f"storing the DeepSTD object of series {item.record['series_uid']}"
    )
    _verify_object(run, item, options, label)
    item.record.update(status="ok", error=None, deleted=False, seconds=round(time.perf_counter() - item.started, 3))
    run.record(item.record)
    run.log(
        f"archive {label}: ok, {item.record.get('source_bytes')} -> {item.record.get('object_bytes')} bytes "
        f"({item.record.get('ratio')}x on the voxels), stored as series {item.record['object_series_uid']}"
    )


def _verify_object(run: _Run, item: _Item, options: dict, label: str) -> None:
    """Retrieve the stored object and check it holds the very bytes sent (and, with `redecode`,
    that they decode to the voxels checked before storing)."""
    from .. import codec
    from ..dicom_object import unwrap, voxel_sha256

    record = item.record
    run.step("verify", 0.9, f"verifying the stored object of {label}")
    stored = run.server.retrieve_instance(record["study_uid"], record["object_series_uid"], record["object_sop_uid"])
    try:
        payload = unwrap(stored)
    except FormatError as exc:
        raise PacsError(
            f"the server returned the DeepSTD object of series {record['series_uid']} damaged: {exc}"
        ) from None
    if hashlib.sha256(payload).hexdigest() != record["payload_sha256"]:
        raise PacsError(
            f"the server holds a different DeepSTD object for series {record['series_uid']} than the one sent "
            "(payload SHA-256 differs)"
        )
    if options["redecode"]:
        decoded = codec.decode(payload, device=options["device"], workers=options["workers"])
        if voxel_sha256(decoded) != record["voxel_sha256"]:
            raise PacsError(f"the stored object of series {record['series_uid']} decodes to other voxels than before")
    record["verified"] = True


def _delete_originals(run: _Run, item: _Item, label: str, totals: dict) -> None:
    """Delete the original series, only if the server still holds exactly what was compressed."""
    record = item.record
    uid = record["series_uid"]
    run.step("delete", 0.95, f"deleting the originals of {label}")
    try:
        now = run.server.series_instances(uid)
    except SeriesGone:
        item.record = run.record(dict(record, deleted=True, note="the original series was already gone"))
        return
    if _instances_sha256(now) != record.get("instances_sha256"):
        note = (
            f"the series changed on the server since it was compressed ({len(now)} instances now, "
            f"{record.get('instances')} compressed); originals kept"
        )
        item.record = run.record(dict(record, deleted=False, note=note))
        run.log(f"archive {label}: {note}")
        return
    run.server.delete_series(uid)
    totals["deleted"] += 1
    item.record = run.record(dict(record, deleted=True, note=None))
    run.log(f"archive {label}: original series deleted ({len(now)} instances)")


# --- restore --------------------------------------------------------------------------------------
def restore(
    server_url: str,
    query: Optional[dict],
    workdir,
    *,
    bundle=None,
    orthanc_url: Optional[str] = None,
    headers: Optional[Dict[str, str]] = None,
    timeout: float = 120.0,
    retry_failed: bool = False,
    keep_files: bool = False,
    device: str = "cpu",
    workers: Optional[int] = None,
    threads: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    log: Log = lambda line: None,
) -> dict:
    """Decode every DeepSTD object `query` finds on the server into a new DICOM series in the
    object's patient and study (new SeriesInstanceUID, marked lossy: LossyImageCompression "01",
    ratio, method DEEPSTD, each slice referencing its source instance) and store it by STOW-RS,
    checking the server then lists every instance. `bundle`: a bundle (or name/path) when the
    object's is not shipped; `threads` as for `archive`. Returns totals: objects, restored (this
    run), done, failed, errors, instances (stored this run), failures."""
    filters = normalize_query(query)
    workdir = Path(workdir).resolve()
    server = Server(server_url, timeout=timeout, orthanc_url=orthanc_url, headers=headers)
    reporter = Reporter(progress, cancel)
    with _locked(workdir), _torch_threads(threads):
        reporter("query", 0.0, f"querying {server.url}")
        _, objects = _object_series(server, server.search_series(filters))
        run = _Run("restore", server, workdir, reporter, log, len(objects))
        totals: Dict[str, Any] = {
            "objects": len(objects),
            "restored": 0,
            "done": 0,
            "skipped": 0,
            "failed": 0,
            "errors": 0,
            "instances": 0,
            "failures": [],
        }
        log(f"{len(objects)} DeepSTD objects found on {server.url}")
        options = dict(bundle=bundle, retry_failed=retry_failed, keep_files=keep_files, device=device, workers=workers)
        for index, entry in enumerate(objects):
            run.index = index
            item = _Item(
                {
                    "output": f"restore/{entry['series_uid']}",
                    "job": "restore",
                    "server": server.url,
                    "series_uid": entry["series_uid"],
                    "study_uid": entry["study_uid"],
                    "object_sop_uid": entry["sop_uid"],
                    "modality": entry["modality"],
                    "description": entry["description"],
                    "status": "pending",
                    "error": None,
                }
            )
            _guarded(run, item, totals, lambda: _restore_one(run, item, entry, options, totals))
        reporter("restore", 1.0, "done")
    return totals


def _bundle_for(data: bytes, options: dict):
    """The bundle a payload was coded with, loaded once per run (a bundle given is checked); None for
    a file that holds the refinement layer alone, which decodes without one."""
    from ..bundle import find_bundle
    from ..codec import DstdHeader
    from ..container import unpack

    reference = DstdHeader.of_file(unpack(data)).bundle
    if reference is None:
        return None
    cache = options.setdefault("loaded", {})
    if reference.sha256 not in cache:
        cache[reference.sha256] = find_bundle(reference.name, reference.sha256, options["bundle"])
    return cache[reference.sha256]


def _restore_one(run: _Run, item: _Item, entry: dict, options: dict, totals: dict) -> None:
    import pydicom

    from .. import codec
    from ..dicom_object import object_info, source_tags, unwrap, voxel_sha256
    from ..io import write

    uid = entry["series_uid"]
    label = f"object {run.index + 1}/{run.count} {uid} ({entry['description']})"
    before = run.done.get(item.record["output"]) or {}
    status = before.get("status")
    if status == "ok":
        totals["done"] += 1
        run.log(f"restore {label}: done in an earlier run")
        return
    if status in SETTLED and not options["retry_failed"]:
        totals["failed"] += 1
        run.log(f"restore {label}: failed in an earlier run ({before.get('error')}); not retried")
        return
    folder = run.workdir / "restored" / _folder_name(uid)
    written = (
        before.get("restored_series_uid")
        and folder.is_dir()
        and (len([p for p in folder.iterdir() if p.is_file()]) == before.get("instances"))
    )
    if written:  # decoded and written in an earlier run: store that same series (same UIDs)
        item.record = dict(before, status="decoded", error=None)
        run.log(f"restore {label}: series written in an earlier run; storing it")
    else:
        run.step("retrieve", 0.0, f"retrieving {label}")
        stored = run.server.retrieve_instance(entry["study_uid"], uid, entry["sop_uid"])
        data = unwrap(stored)  # FormatError: a Raw Data object that is not DeepSTD's (settled)
        info = object_info(stored)
        run.step("decode", 0.1, f"decoding {label}")
        started = time.perf_counter()
        volume = codec.decode(
            data,
            _bundle_for(data, options),
            device=options["device"],
            workers=options["workers"],
            progress=run.nested(0.1, 0.8).callback(),
            cancel=run.reporter.cancel,
        )
        decode_s = time.perf_counter() - started
        digest = voxel_sha256(volume)
        volume.meta["dicom"] = source_tags(stored)
        write(volume, _fresh(folder), lossy_ratio=volume.raw_bytes / len(data), lossy_method="DEEPSTD")
        files = sorted(p for p in folder.iterdir() if p.is_file())
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        item.record.update(
            status="decoded",
            source_series_uid=info["source_series_uid"],
            restored_series_uid=str(first.SeriesInstanceUID),
            instances=len(files),
            voxels=volume.voxels,
            raw_bytes=volume.raw_bytes,
            dstd_bytes=len(data),
            voxel_sha256=digest,
            decode_matches_archive=None if not info["voxel_sha256"] else digest == info["voxel_sha256"],
            decode_s=round(decode_s, 3),
        )
        if item.record["decode_matches_archive"] is False:
            item.record["note"] = "decoded voxels differ from those checked when the object was made"
        run.record(item.record)
    record = item.record
    run.step("store", 0.8, f"storing the restored series of {label}")
    datasets = _read_datasets(folder)
    run.server.store(datasets, what=f"storing the series restored from {uid}")
    run.step("verify", 0.95, f"verifying the restored series of {label}")
    listed = run.server.search_instances(record["study_uid"], record["restored_series_uid"])
    if len(listed) != len(datasets):
        raise PacsError(
            f"the server lists {len(listed)} of the {len(datasets)} instances stored for the series restored from {uid}"
        )
    item.record = run.record(
        dict(record, status="ok", error=None, seconds=round(time.perf_counter() - item.started, 3))
    )
    totals["restored"] += 1
    totals["instances"] += len(datasets)
    run.log(
        f"restore {label}: ok, series {record['restored_series_uid']} ({len(datasets)} instances) stored"
        + (f"; {record['note']}" if record.get("note") else "")
    )
    if not options["keep_files"]:
        shutil.rmtree(folder, ignore_errors=True)
