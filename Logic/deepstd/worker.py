"""The child side of a DeepSTD job: `python -m deepstd.worker JOB.json`.

A program that embeds Python without letting other threads run (3D Slicer's PythonQt holds the
interpreter lock whenever its main thread is in C++) cannot run long operations on a thread. It
runs them here, in a separate Python process, and reads what this module prints.

The job is a folder written by the caller (`JobFolder`): `job.json` and the input files.

    {"protocol": 1, "operation": "encode",
     "inputs":  {"volume": {"file": "volume.nrrd", "dtype": "int16", "units": "HU"}},
     "options": {"bundle": "/…/hippocampus-mr.dstdb", "ratio": 16, "device": "cpu"},
     "outputs": {"dstd": "/home/me/scan.dstd"}}

Inputs are volumes (`.nrrd`/`.nii.gz` plus the sample type and units the file cannot carry),
other files (`{"path": …}`, e.g. a `.dstd`) or arrays (`{"file": "masks.npz"}`); relative names
are inside the job folder. Operations (`OPERATIONS`) and what their `result` holds:

    register         inputs moving, template; options settings (CycleSettings fields), threads,
                     prealignment, downsample, foreground, device, field (also write the
                     full-resolution field, as `deepstd register --out-field`) -> loss, omega,
                     steps, seconds, snapshot, device [, field (a vector .nrrd)]
    encode           inputs volume [, keep]; options bundle, ratio | max_error, keep_error, device;
                     outputs dstd (written atomically) -> path, raw_bytes, file_bytes, seconds,
                     warnings (the header's)
    decode           inputs dstd; options bundle (path; else found from the header and
                     bundle_search), device, roi ((x0, y0, z0), (x1, y1, z1)) -> volume, dstd
    residue          inputs original, decoded -> residue (volume), values (MAE, PSNR, SSIM);
                     computed in slabs (bounded memory), progress per slab
    segment_metrics  inputs masks (a0, b0, a1, b1, … boolean arrays); options pairs, spacing -> rows

Output is one JSON object per line on stdout, and nothing else (anything else the operation
prints goes to stderr):

    {"type": "progress", "stage": "register", "fraction": 0.5, "message": "step 25"}
    {"type": "snapshot", "path": "/…/snapshots/0001.npy", "stage": …, "fraction": …, "message": …,
     "spacing": […], "origin": […], "direction": […], "loss": …, "omega": …, "step": 25}
    {"type": "result", "operation": "encode", …}
    {"type": "error", "kind": "InputError", "message": "…"[, "traceback": "…"]}

A snapshot's array (a registration's coarse displacement field, `.npy`) is complete before its
line is printed. Exit status: 0 with a result, 2 after a `DeepSTDError`, 130 when cancelled
(SIGTERM, SIGINT: the next progress check raises `Cancelled`, files being written are removed),
1 for anything else (a bug: the error line carries the traceback). The option `threads` (any
operation), or else $DEEPSTD_WORKER_THREADS, caps torch's CPU threads.

Importing this module is cheap (standard library and numpy); the operations import what they need.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np

PROTOCOL = 1
JOB_FILE = "job.json"
#: torch's CPU threads for jobs whose options do not say (default: torch's own choice).
THREADS_ENV = "DEEPSTD_WORKER_THREADS"
EXIT_OK, EXIT_BUG, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 2, 130
#: voxels per slab of the residue job's float64 work (bounded memory on large CT)
SLAB_VOXELS = 1 << 22


# --- the job folder (written by the caller, read here) ------------------------------------------


class JobFolder:
    """A job being prepared: inputs written into a folder, then `job.json` (`write`)."""

    def __init__(self, path):
        self.path = Path(path)
        self.inputs: Dict[str, Dict[str, Any]] = {}

    @classmethod
    def create(cls, parent=None, prefix: str = "deepstd-job-") -> "JobFolder":
        return cls(tempfile.mkdtemp(prefix=prefix, dir=parent))

    def add_volume(self, key: str, volume, suffix: str = ".nrrd") -> Dict[str, Any]:
        self.inputs[key] = write_volume(volume, self.path / f"{key}{suffix}", relative_to=self.path)
        return self.inputs[key]

    def add_path(self, key: str, path) -> Dict[str, Any]:
        """An input the job reads where it is (a `.dstd` file)."""
        self.inputs[key] = {"path": str(Path(path).resolve())}
        return self.inputs[key]

    def add_bytes(self, key: str, data: bytes, suffix: str = ".bin") -> Dict[str, Any]:
        (self.path / f"{key}{suffix}").write_bytes(data)
        self.inputs[key] = {"file": f"{key}{suffix}"}
        return self.inputs[key]

    def add_arrays(self, key: str, arrays: Dict[str, np.ndarray]) -> Dict[str, Any]:
        np.savez(self.path / f"{key}.npz", **arrays)
        self.inputs[key] = {"file": f"{key}.npz"}
        return self.inputs[key]

    def write(self, operation: str, options: Optional[dict] = None, outputs: Optional[dict] = None) -> Path:
        """Write `job.json` (last, so a job file always finds its inputs) and return its path."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown worker operation {operation!r} (known: {', '.join(OPERATIONS)})")
        job = {
            "protocol": PROTOCOL,
            "operation": operation,
            "inputs": self.inputs,
            "options": _jsonable(options or {}),
            "outputs": {key: str(value) for key, value in (outputs or {}).items()},
        }
        path = self.path / JOB_FILE
        path.write_text(json.dumps(job, indent=1))
        return path


class Job:
    """A job file as the worker reads it."""

    def __init__(self, path):
        from .errors import InputError

        self.file = Path(path).resolve()
        self.folder = self.file.parent
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"{path}: not a readable job file ({error})") from None
        if not isinstance(data, dict) or data.get("protocol") != PROTOCOL:
            raise InputError(f"{path}: not a DeepSTD job file of protocol {PROTOCOL}")
        self.operation = data.get("operation")
        if self.operation not in OPERATIONS:
            raise InputError(f"{path}: unknown operation {self.operation!r} (known: {', '.join(OPERATIONS)})")
        self.inputs: Dict[str, Dict[str, Any]] = data.get("inputs") or {}
        self.options: Dict[str, Any] = data.get("options") or {}
        self.outputs: Dict[str, str] = data.get("outputs") or {}

    def has(self, key: str) -> bool:
        return key in self.inputs

    def path(self, key: str) -> Path:
        from .errors import InputError

        if key not in self.inputs:
            raise InputError(f"the {self.operation} job needs the input {key!r}")
        spec = self.inputs[key]
        return Path(spec["path"]) if "path" in spec else self.folder / spec["file"]

    def volume(self, key: str):
        self.path(key)  # names a missing input
        return read_volume(self.inputs[key], self.folder)

    def arrays(self, key: str) -> Dict[str, np.ndarray]:
        with np.load(self.path(key)) as data:
            return {name: data[name] for name in data.files}

    def output(self, key: str) -> Path:
        from .errors import InputError

        if key not in self.outputs:
            raise InputError(f"the {self.operation} job needs the output {key!r}")
        return Path(self.outputs[key])


# --- volumes and snapshots as files -------------------------------------------------------------


def write_volume(volume, path, relative_to=None) -> Dict[str, Any]:
    """Write a Volume exactly (its sample type when the voxels fit it, else float32) through a
    temporary name, and return its spec: file, dtype, units."""
    import SimpleITK as sitk

    path = Path(path)
    exact = np.array_equal(volume.to_dtype_array(), volume.array)
    temp = path.with_name(f".{path.name}.partial{''.join(path.suffixes)}")
    try:
        sitk.WriteImage(volume.to_sitk(cast=exact), str(temp), useCompression=path.name.endswith(".gz"))
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    name = os.path.relpath(path, relative_to) if relative_to is not None else str(path)
    return {"file": name, "dtype": volume.dtype, "units": volume.units}


def read_volume(spec: Dict[str, Any], folder=None):
    """The Volume a spec (`write_volume`) names; a relative file is inside `folder`."""
    import SimpleITK as sitk

    from .errors import InputError
    from .volume import Volume

    path = Path(spec["path"]) if "path" in spec else Path(folder or ".") / spec["file"]
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{path}: cannot read the job's volume ({str(error).strip().splitlines()[-1]})") from None
    volume = Volume.from_sitk(image, units=spec.get("units", "unitless"), meta=spec.get("meta"))
    if spec.get("dtype"):
        volume.dtype = spec["dtype"]
    return volume


def read_snapshot(event: Dict[str, Any]):
    """A snapshot line as an object with `displacement` (the array) and the line's other fields."""
    from types import SimpleNamespace

    fields = {k: v for k, v in event.items() if k not in ("type", "path", "stage", "fraction", "message")}
    return SimpleNamespace(displacement=np.load(event["path"]), **fields)


def partial_files(path, since: float = 0.0) -> List[Path]:
    """Temporary files an interrupted atomic write of `path` (`deepstd.container.write_atomic`)
    may have left beside it, modified at or after `since` (seconds since the epoch)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    found = path.parent.glob(f".{path.name}.*.tmp")
    return [p for p in found if p.is_file() and p.stat().st_mtime >= since - 1.0]


# --- the channel: JSON lines on the real stdout ---------------------------------------------------


class Channel:
    """Writes protocol lines to the process's stdout; everything else printed goes to stderr."""

    def __init__(self, fd: int, snapshots: Optional[Path] = None):
        self._fd = fd
        self._snapshots = snapshots
        self._count = 0
        self.last_snapshot: Optional[Dict[str, Any]] = None

    @classmethod
    def take_stdout(cls, snapshots: Optional[Path] = None) -> "Channel":
        """Keep fd 1 for the protocol and point fd 1 (and sys.stdout) at stderr, so that prints
        from libraries, C code included, can never corrupt the protocol."""
        sys.stdout.flush()
        fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(fd, snapshots)

    def send(self, message: Dict[str, Any]) -> None:
        data = (json.dumps(_jsonable(message)) + "\n").encode("ascii")
        while data:
            data = data[os.write(self._fd, data) :]

    def progress(self, event) -> None:
        """A `deepstd.progress.Progress` event; one carrying a snapshot becomes a snapshot line."""
        line = {"stage": event.stage, "fraction": float(event.fraction), "message": event.message}
        snapshot = getattr(event, "snapshot", None)
        if snapshot is not None and self._snapshots is not None and hasattr(snapshot, "displacement"):
            self.last_snapshot = self._write_snapshot(snapshot, line)
            self.send(self.last_snapshot)
        else:
            self.send({"type": "progress", **line})

    def _write_snapshot(self, snapshot, line: Dict[str, Any]) -> Dict[str, Any]:
        self._snapshots.mkdir(parents=True, exist_ok=True)
        self._count += 1
        path = self._snapshots / f"{self._count:04d}.npy"
        temp = path.with_name(f".{path.name}.partial")
        with open(temp, "wb") as stream:
            np.save(stream, np.asarray(snapshot.displacement, dtype=np.float32))
        os.replace(temp, path)
        fields = asdict(snapshot) if is_dataclass(snapshot) else dict(vars(snapshot))
        fields.pop("displacement", None)
        return {"type": "snapshot", "path": str(path), **line, **fields}


# --- operations ---------------------------------------------------------------------------------


def _register(job: Job, channel: Channel, cancel) -> Dict[str, Any]:
    from .progress import Reporter
    from .shape import CycleSettings, register

    options = job.options
    reg = register(
        job.volume("moving"),
        job.volume("template"),
        CycleSettings(**(options.get("settings") or {})),
        prealignment=options.get("prealignment", "moments"),
        downsample=int(options.get("downsample", 2)),
        foreground=bool(options.get("foreground", False)),
        progress=channel.progress,
        cancel=cancel,
        threads=options.get("threads"),
        device=options.get("device") or "auto",
    )
    result = {
        "loss": reg.loss,
        "omega": reg.omega,
        "steps": reg.fit.step,
        "seconds": reg.seconds,
        "info": reg.info,
        "snapshot": channel.last_snapshot,
        "device": reg.info["device"],  # the one it ran on ("auto" resolved)
    }
    if options.get("field"):
        # the full-resolution field, exactly what `deepstd register --out-field` writes
        from .io.itk import write_image_atomic
        from .shape import field as fields

        disp = reg.forward_field(Reporter(channel.progress, cancel))
        write_image_atomic(fields.to_sitk_field(disp, reg.frame), str(job.folder / "field.nrrd"))
        result["field"] = {"file": "field.nrrd"}
    return result


def _encode(job: Job, channel: Channel, cancel) -> Dict[str, Any]:
    from .bundle import load_bundle
    from .codec import encode
    from .container import unpack, write_atomic
    from .progress import Reporter

    started = time.perf_counter()
    options = job.options
    volume = job.volume("volume")
    bundle = load_bundle(options["bundle"])
    common = dict(device=options.get("device", "auto"), progress=channel.progress, cancel=cancel)
    if options.get("max_error") is not None:
        data = encode(volume, bundle, max_error=float(options["max_error"]), **common)
    else:
        keep = job.volume("keep") if job.has("keep") else None
        ratio = options.get("ratio")
        data = encode(
            volume,
            bundle,
            ratio=None if ratio is None else float(ratio),
            budget_bytes=options.get("budget_bytes"),
            keep=keep,
            keep_error=float(options.get("keep_error", 0.0)),
            effort=options.get("effort", 0),
            **common,
        )
    Reporter(None, cancel).check()  # a cancel that came during the last step writes nothing
    path = write_atomic(job.output("dstd"), data)
    return {
        "path": str(path),
        "raw_bytes": volume.raw_bytes,
        "file_bytes": len(data),
        "seconds": time.perf_counter() - started,
        "warnings": [str(w) for w in unpack(data).header.get("warnings", [])],
    }


def _decode(job: Job, channel: Channel, cancel) -> Dict[str, Any]:
    from .bundle import find_bundle_file, load_bundle
    from .codec import decode
    from .codec.header import DstdHeader
    from .container import unpack
    from .errors import BundleError

    options = job.options
    data = job.path("dstd").read_bytes()
    if options.get("bundle"):
        bundle = load_bundle(options["bundle"])
    else:
        ref = DstdHeader.of_file(unpack(data)).bundle
        try:  # a file that holds the refinement layer alone names no bundle and needs none
            bundle = (
                None
                if ref is None
                else load_bundle(find_bundle_file(ref.name, ref.sha256, options.get("bundle_search") or ()))
            )
        except BundleError:
            hint = options.get("missing_bundle_hint") or "pass its file as the job's 'bundle' option"
            raise BundleError(
                f"this file needs the codec bundle {ref.label()}, which is not available: {hint}"
            ) from None
    roi = options.get("roi")
    volume = decode(
        data,
        bundle,
        device=options.get("device", "auto"),
        progress=channel.progress,
        cancel=cancel,
        roi=None if roi is None else (tuple(roi[0]), tuple(roi[1])),
    )
    spec = write_volume(volume, job.folder / "decoded.nrrd", relative_to=job.folder)
    return {"volume": spec, "dstd": volume.meta.get("dstd", {}), "bundle": bundle and str(bundle.path)}


def _residue(job: Job, channel: Channel, cancel) -> Dict[str, Any]:
    """Residue, MAE, PSNR and SSIM in slabs, so memory stays bounded (a 512×512×300 CT: the two
    inputs and the residue as float32, plus one slab's float64 work)."""
    from . import metrics
    from .errors import InputError
    from .progress import Reporter

    report = Reporter(channel.progress, cancel)
    original, decoded = job.volume("original"), job.volume("decoded")
    if not original.same_grid(decoded):
        raise InputError("the two volumes are not on the same grid (size, spacing, origin or orientation differ)")
    a, b = original.array, decoded.array
    residue = np.empty(a.shape, np.float32)
    absolute = squared = 0.0
    step = max(1, SLAB_VOXELS // max(1, a[0].size))
    for z0 in range(0, a.shape[0], step):
        diff = a[z0 : z0 + step].astype(np.float64) - b[z0 : z0 + step]
        residue[z0 : z0 + step] = diff
        absolute += float(np.abs(diff).sum())
        squared += float(np.square(diff).sum())
        report("residue", 0.2 * min(1.0, (z0 + step) / a.shape[0]), "residue, MAE and PSNR")
    data_range = original.data_range()
    mse = squared / max(1, a.size)
    values = {
        "MAE": absolute / max(1, a.size),
        # as metrics.psnr: the original's real data range, inf when identical
        "PSNR": float("inf") if mse == 0 else float(10.0 * np.log10(metrics._range_of(a, data_range) ** 2 / mse)),
    }
    values["SSIM"] = metrics.ssim(
        a, b, data_range=data_range, progress=lambda f: report("residue", 0.2 + 0.75 * f, "SSIM")
    )
    report("residue", 0.95, "writing the residue")
    residue_volume = original.with_array(residue, dtype="float32")
    del original, decoded, a, b  # the inputs' memory is free again before the residue is written
    spec = write_volume(residue_volume, job.folder / "residue.nrrd", relative_to=job.folder)
    return {"residue": spec, "values": values}


def _segment_metrics(job: Job, channel: Channel, cancel) -> Dict[str, Any]:
    from . import metrics
    from .progress import Reporter

    report = Reporter(channel.progress, cancel)
    masks = job.arrays("masks")
    pairs = job.options.get("pairs") or []
    spacing = tuple(float(s) for s in job.options.get("spacing", (1.0, 1.0, 1.0)))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    rows = []
    for n, (name_a, name_b) in enumerate(pairs):
        report("segment metrics", n / max(1, len(pairs)), name_a)
        a, b = masks[f"a{n}"].astype(bool), masks[f"b{n}"].astype(bool)
        rows.append(
            {
                "Segment": name_a,
                "Compared with": name_b,
                "Dice": float(metrics.dice(a, b)),
                "HD95": float(metrics.hd95(a, b, spacing)),
                "Volume A": float(a.sum()) * voxel_ml,
                "Volume B": float(b.sum()) * voxel_ml,
            }
        )
    report("segment metrics", 1.0, "done")
    return {"rows": rows}


OPERATIONS: Dict[str, Callable[[Job, Channel, Any], Dict[str, Any]]] = {
    "register": _register,
    "encode": _encode,
    "decode": _decode,
    "residue": _residue,
    "segment_metrics": _segment_metrics,
}


# --- the program ----------------------------------------------------------------------------------


def run(job_file, channel: Channel, cancel: threading.Event) -> int:
    """Run one job, reporting on `channel`; the exit status."""
    from .errors import Cancelled, DeepSTDError

    try:
        job = Job(job_file)
        channel._snapshots = job.folder / "snapshots"
        threads = job.options.get("threads") or os.environ.get(THREADS_ENV)
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        channel.send({"type": "progress", "stage": job.operation, "fraction": 0.0, "message": "worker started"})
        result = OPERATIONS[job.operation](job, channel, cancel)
        cancel.done = True  # a SIGTERM from now on is too late to undo anything
        channel.send({"type": "result", "operation": job.operation, **result})
        return EXIT_OK
    except BaseException as error:  # noqa: BLE001  every failure becomes one error line
        if cancel.is_set() or isinstance(error, (Cancelled, KeyboardInterrupt)):
            channel.send({"type": "error", "kind": "Cancelled", "message": "cancelled by the user"})
            return EXIT_CANCELLED
        if isinstance(error, DeepSTDError):
            channel.send({"type": "error", "kind": type(error).__name__, "message": str(error)})
            return EXIT_ERROR
        if isinstance(error, SystemExit):
            raise
        channel.send(
            {
                "type": "error",
                "kind": type(error).__name__,
                "message": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(),
            }
        )
        return EXIT_BUG


def _install_cancel_handlers(cancel: threading.Event) -> None:
    """SIGTERM/SIGINT set the cancel token and stop the operation at once (`Cancelled`)."""
    from .errors import Cancelled

    def handler(signum, frame):
        if getattr(cancel, "done", False):
            return
        cancel.set()
        raise Cancelled("cancelled by the user")

    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handler)


def main(argv: Optional[Iterable[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    channel = Channel.take_stdout()
    cancel = threading.Event()
    cancel.done = False  # type: ignore[attr-defined]
    if len(args) != 1:
        channel.send({"type": "error", "kind": "InputError", "message": "usage: python -m deepstd.worker JOB.json"})
        return EXIT_ERROR
    _install_cancel_handlers(cancel)
    return run(args[0], channel, cancel)


def _jsonable(value):
    """Plain JSON types for tuples, numpy scalars and arrays, paths and dataclasses."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


if __name__ == "__main__":
    sys.exit(main())
