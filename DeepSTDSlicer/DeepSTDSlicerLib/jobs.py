"""Long operations in a child Python process, polled from the main thread.

Slicer's PythonQt never lets a Python thread run while the main thread is in Qt's C++ event loop
(it keeps the interpreter lock), so work on a thread crawls: it only advances while the main
thread happens to run Python. Registration, coding and metrics therefore run in a separate
Python, `python -m deepstd.worker JOB.json` (`deepstd/worker.py` documents the job folder and
the protocol): `sys.executable` outside Slicer, `PythonSlicer` inside it (`python_executable`).

The child's stdout goes to a file in the job folder and `Job.poll()` (a Qt timer in Slicer, a
loop in scripts and tests) reads whatever complete JSON lines have arrived since the last call:
reading a regular file never blocks, needs no reader thread, works the same on every platform,
and the child never waits for the parent. Events arrive coalesced: a poll delivers the newest
event that carries a snapshot and the newest event, so a slow preview update never falls
behind the optimisation. The result, an error, a cancel or a crash (non-zero exit, a signal,
anything on stdout that is not a protocol line) ends the job with exactly one `on_done` or
`on_error` call, on the polling thread. `cancel()` terminates the child's whole process tree
(PythonSlicer is a launcher with a child of its own); the child writes its outputs atomically,
and stray temporary files of a killed write are removed, so a cancelled job leaves no partial
file. The job folder is deleted when the job ends.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

#: Seconds a cancelled child gets to stop by itself before its process tree is killed.
CANCEL_GRACE = 3.0
#: Environment variable naming the Python that runs jobs (tests, unusual installations).
PYTHON_ENV = "DEEPSTD_WORKER_PYTHON"

_LIVE: "weakref.WeakSet[Job]" = weakref.WeakSet()


class WorkerError(RuntimeError):
    """The worker process failed: it crashed, was killed, printed garbage, or hit a bug.
    `details` holds the traceback or the end of its stderr, for a "Show details" box."""

    def __init__(self, message: str, details: str = "", kind: Optional[str] = None, exit_code: Optional[int] = None):
        super().__init__(message)
        self.details, self.kind, self.exit_code = details, kind, exit_code


@dataclass
class Event:
    """One progress event as the callbacks see it (the fields of `deepstd.progress.Progress`)."""

    stage: str
    fraction: float
    message: str = ""
    snapshot: Any = None


# --- finding the worker's Python ----------------------------------------------------------------


def inside_slicer() -> bool:
    """True in the Slicer application (slicer.app exists), False in slicer-core or plain Python."""
    slicer = sys.modules.get("slicer")
    return getattr(slicer, "app", None) is not None


def python_executable() -> str:
    """The Python that runs jobs: $DEEPSTD_WORKER_PYTHON, else PythonSlicer inside Slicer (on
    PATH there, or in Slicer's bin folder, as SlicerTotalSegmentator and MONAIAuto3DSeg find it),
    else this interpreter."""
    override = os.environ.get(PYTHON_ENV)
    if override:
        return override
    if not inside_slicer():
        return sys.executable
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    candidates = [shutil.which("PythonSlicer")]
    home = getattr(getattr(sys.modules["slicer"], "app", None), "slicerHome", None)
    if home:
        candidates.append(os.path.join(home, "bin", name))
    candidates.append(os.path.join(os.path.dirname(sys.executable), name))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            return candidate
    raise WorkerError(f"cannot find Slicer's Python ({name}) to run DeepSTD jobs in; looked at {candidates[1:]}")


def worker_environment() -> Dict[str, str]:
    """The environment for the child: Slicer's startup environment inside Slicer (what
    slicer.util.launchConsoleProcess uses), with the folder holding `deepstd` first on PYTHONPATH
    (an extension's module folder is not on PythonSlicer's path)."""
    env = None
    if inside_slicer():
        try:
            import slicer.util

            env = slicer.util.startupEnvironment()
        except Exception:  # older Slicer: the current environment
            env = None
    env = dict(env if env is not None else os.environ)
    folder = _deepstd_parent()
    if folder:
        env["PYTHONPATH"] = os.pathsep.join([folder] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def _deepstd_parent() -> Optional[str]:
    module = sys.modules.get("deepstd")
    if module is not None and getattr(module, "__file__", None):
        return str(Path(module.__file__).resolve().parents[1])
    import importlib.util

    spec = importlib.util.find_spec("deepstd")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(list(spec.submodule_search_locations)[0]).resolve().parent)


def worker_command(job_file) -> List[str]:
    return [python_executable(), "-m", "deepstd.worker", str(job_file)]


def job_parent_folder() -> Optional[str]:
    """Slicer's temporary folder inside Slicer (cleaned with it), else the system's."""
    slicer = sys.modules.get("slicer")
    app = getattr(slicer, "app", None)
    path = getattr(app, "temporaryPath", None) if app is not None else None
    return path if path and os.path.isdir(path) else None


# --- the runner ---------------------------------------------------------------------------------


class Job:
    """One child process speaking the worker protocol, with progress, done and error callbacks.

    `command` is run in a new process group with stdout and stderr going to files in `folder`.
    `finish(result, folder)` turns the worker's result line into what `on_done` gets; it runs in
    `poll()` on the polling thread (so it may touch MRML) while the folder still exists. `outputs`
    are the files the child writes; stray temporaries of an interrupted write are removed.
    """

    def __init__(
        self,
        command: Sequence[str],
        folder,
        on_progress: Optional[Callable[[Event], None]] = None,
        on_done: Optional[Callable[[Any], None]] = None,
        on_error: Optional[Callable[[BaseException], None]] = None,
        name: str = "DeepSTD",
        finish: Optional[Callable[[Dict[str, Any], Path], Any]] = None,
        env: Optional[Dict[str, str]] = None,
        outputs: Sequence[str] = (),
        keep_folder: bool = False,
    ):
        self.command = [str(c) for c in command]
        self.folder = Path(folder)
        self.name = name
        self._on_progress, self._on_done, self._on_error = on_progress, on_done, on_error
        self._finish, self._env, self._outputs, self._keep = finish, env, list(outputs), keep_folder
        self._proc: Optional[subprocess.Popen] = None
        self._stdout = None
        self._buffer = b""
        self._result: Optional[Dict[str, Any]] = None
        self._error: Optional[Dict[str, Any]] = None
        self._garbage: Optional[bytes] = None
        self._cancel_at: Optional[float] = None
        self._killed = False
        self.started_at = 0.0
        self.finished = False
        self.seconds: Optional[float] = None

    # -- control --
    def start(self) -> "Job":
        self.started_at = time.time()
        self._t0 = time.perf_counter()
        out = open(self.folder / "stdout.jsonl", "wb")
        err = open(self.folder / "stderr.txt", "wb")
        kwargs: Dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # its own process group: cancel reaches the whole tree
        try:
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=str(self.folder),
                env=self._env,
                **kwargs,
            )
        except OSError as error:
            self._cleanup()
            raise WorkerError(f"cannot start the DeepSTD worker ({self.command[0]}): {error}") from error
        finally:
            out.close()
            err.close()
        self._stdout = open(self.folder / "stdout.jsonl", "rb")
        _LIVE.add(self)
        return self

    def cancel(self) -> None:
        """Stop the job: the child is asked to stop (SIGTERM to its process group), and its
        process tree is killed if it has not ended `CANCEL_GRACE` seconds later. The job then
        ends with `deepstd.Cancelled` (or its result, if that was complete already)."""
        if self.finished or self._proc is None or self._cancel_at is not None:
            return
        self._cancel_at = time.perf_counter()
        if os.name == "nt":
            self._kill_tree()  # Windows has no SIGTERM: TerminateProcess on the whole tree
        else:
            self._signal_group(signal.SIGTERM)

    def abandon(self, timeout: float = 5.0) -> None:
        """End the job now without calling back: its process tree is killed, its partial outputs
        and folder removed. For when the scene the callbacks would touch is going away (scene
        close): no `finish`, `on_done` or `on_error` runs, so no deleted node is touched."""
        if self.finished or self._proc is None:
            return
        self._on_progress = self._on_done = self._finish = None
        self._on_error = lambda error: None
        if self._cancel_at is None:
            self._cancel_at = time.perf_counter()
        self._kill_tree()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:  # unkillable (very rare): the next poll() ends it
            return
        self.poll()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the child ends (scripts and tests); True if it has. Callbacks are
        delivered by the next `poll()`. A cancelled child is killed when its grace runs out."""
        if self._proc is None:
            return True
        deadline = None if timeout is None else time.perf_counter() + timeout
        while True:
            step = 0.05 if self._cancel_at is not None and not self._killed else None
            if deadline is not None:
                left = deadline - time.perf_counter()
                if left <= 0:
                    return self._proc.poll() is not None
                step = left if step is None else min(step, left)
            try:
                self._proc.wait(step)
                return True
            except subprocess.TimeoutExpired:
                self._escalate()

    def poll(self) -> bool:
        """Deliver what the child reported since the last call, on this thread; True while the
        job has not finished. Never blocks."""
        if self.finished:
            return False
        exited = self._proc.poll() is not None  # before reading: after an exit, all output is there
        progress = self._read()
        if self._garbage is not None and not exited:
            self._kill_tree()
        self._escalate()
        if self._cancel_at is None and self._garbage is None and self._on_progress and progress:
            with_snapshot = [e for e in progress if e.get("type") == "snapshot"]
            if with_snapshot and with_snapshot[-1] is not progress[-1]:
                self._on_progress(self._event(with_snapshot[-1]))
            self._on_progress(self._event(progress[-1]))
        if exited:
            self._end()
            return False
        return True

    @property
    def returncode(self) -> Optional[int]:
        return None if self._proc is None else self._proc.poll()

    # -- reading --
    def _read(self) -> List[Dict[str, Any]]:
        data = self._stdout.read() if self._stdout is not None else b""
        if not data:
            return []
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        progress = []
        for line in lines:
            if not line.strip() or self._garbage is not None:
                continue
            try:
                message = json.loads(line.decode("utf-8"))
                kind = message["type"] if isinstance(message, dict) else None
            except (ValueError, KeyError, UnicodeDecodeError):
                kind = None
            if kind in ("progress", "snapshot"):
                progress.append(message)
            elif kind == "result":
                self._result = message
            elif kind == "error":
                self._error = message
            else:
                self._garbage = line
        return progress

    @staticmethod
    def _event(message: Dict[str, Any]) -> Event:
        snapshot = None
        if message.get("type") == "snapshot":
            from deepstd.worker import read_snapshot

            snapshot = read_snapshot(message)
        return Event(
            message.get("stage", ""), float(message.get("fraction", 0.0)), message.get("message", ""), snapshot
        )

    # -- ending --
    def _end(self) -> None:
        self._read()
        if self._buffer.strip() and self._garbage is None:
            self._garbage = self._buffer
        self.finished = True
        self.seconds = time.perf_counter() - self._t0
        _LIVE.discard(self)
        if self._stdout is not None:
            self._stdout.close()
        rc = self._proc.returncode
        outcome: Any
        ok = False
        if self._garbage is not None:
            outcome = WorkerError(
                "the DeepSTD worker printed something that is not part of its protocol: "
                + self._garbage[:200].decode("utf-8", "replace"),
                self._stderr_tail(),
                exit_code=rc,
            )
        elif self._result is not None and rc == 0:
            try:
                outcome = self._finish(self._result, self.folder) if self._finish else self._result
                ok = True
            except Exception as error:  # reading the outputs failed: an error, not a lost job
                outcome = error
        elif self._cancel_at is not None:
            outcome = _cancelled()
        elif self._error is not None:
            outcome = _error_from(self._error, rc, self._stderr_tail())
        elif rc == 0:
            outcome = WorkerError("the DeepSTD worker ended without a result", self._stderr_tail(), exit_code=rc)
        else:
            outcome = WorkerError(
                f"the DeepSTD worker stopped unexpectedly ({_describe_exit(rc)})", self._stderr_tail(), exit_code=rc
            )
        if not ok:
            if os.name != "nt":  # a launcher (PythonSlicer) may leave its python-real behind
                self._signal_group(signal.SIGKILL)
            self._remove_partial_outputs()
        self._cleanup()
        if ok:
            if self._on_done:
                self._on_done(outcome)
        elif self._on_error:
            self._on_error(outcome)
        else:
            raise outcome

    def _stderr_tail(self, limit: int = 6000) -> str:
        try:
            with open(self.folder / "stderr.txt", "rb") as stream:
                stream.seek(0, os.SEEK_END)
                stream.seek(max(0, stream.tell() - limit))
                return stream.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _remove_partial_outputs(self) -> None:
        from deepstd.worker import partial_files

        for output in self._outputs:
            for stray in partial_files(output, self.started_at):
                stray.unlink(missing_ok=True)

    def _cleanup(self) -> None:
        if not self._keep:
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- signals --
    def _escalate(self) -> None:
        if (
            self._cancel_at is not None
            and not self._killed
            and time.perf_counter() - self._cancel_at > CANCEL_GRACE
            and self._proc.poll() is None
        ):
            self._kill_tree()

    def _signal_group(self, sig) -> None:
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill_tree(self) -> None:
        self._killed = True
        if os.name != "nt":
            self._signal_group(signal.SIGKILL)
            return
        try:
            import psutil

            parent = psutil.Process(self._proc.pid)
            for child in parent.children(recursive=True):
                child.kill()
            parent.kill()
        except ImportError:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._proc.pid)], capture_output=True)
        except Exception:  # already gone
            pass

    def __del__(self):  # a job dropped while running must not leave its process behind
        if not self.finished and self._proc is not None and self._proc.poll() is None:
            self._kill_tree()


def _cancelled() -> BaseException:
    try:
        from deepstd.errors import Cancelled
    except ImportError:
        return WorkerError("cancelled by the user", kind="Cancelled")
    return Cancelled("cancelled by the user")


def _error_from(message: Dict[str, Any], rc: Optional[int], stderr: str) -> BaseException:
    """The exception an error line describes: the DeepSTDError subclass it names (shown as is),
    else a WorkerError whose details carry the child's traceback."""
    kind, text = str(message.get("kind", "")), str(message.get("message", ""))
    try:
        from deepstd import errors

        cls = getattr(errors, kind, None)
        if isinstance(cls, type) and issubclass(cls, errors.DeepSTDError):
            return cls(text)
    except ImportError:
        pass
    return WorkerError(text or kind, message.get("traceback") or stderr, kind=kind, exit_code=rc)


def _describe_exit(rc: Optional[int]) -> str:
    if rc is not None and rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


@atexit.register
def _kill_live_jobs() -> None:
    """Slicer is closing: no worker outlives it."""
    for job in list(_LIVE):
        if not job.finished and job._proc is not None and job._proc.poll() is None:
            job._kill_tree()


# --- jobs of the deepstd worker -----------------------------------------------------------------


def start_worker(
    operation: str,
    prepare: Callable[[Any], None],
    options: Optional[Dict[str, Any]] = None,
    outputs: Optional[Dict[str, str]] = None,
    on_progress: Optional[Callable[[Event], None]] = None,
    on_done: Optional[Callable[[Any], None]] = None,
    on_error: Optional[Callable[[BaseException], None]] = None,
    finish: Optional[Callable[[Dict[str, Any], Path], Any]] = None,
    name: str = "DeepSTD",
) -> Job:
    """Write a job folder (`prepare(folder)` adds the inputs to a `deepstd.worker.JobFolder`),
    then start `python -m deepstd.worker` on it."""
    from deepstd.worker import JobFolder

    folder = JobFolder.create(job_parent_folder(), prefix=f"{name.replace(' ', '-')}-")
    try:
        prepare(folder)
        job_file = folder.write(operation, options, outputs)
        job = Job(
            worker_command(job_file),
            folder.path,
            on_progress,
            on_done,
            on_error,
            name=name,
            finish=finish,
            env=worker_environment(),
            outputs=list((outputs or {}).values()),
        )
    except BaseException:
        shutil.rmtree(folder.path, ignore_errors=True)
        raise
    return job.start()
