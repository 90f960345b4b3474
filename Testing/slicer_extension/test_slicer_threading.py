"""Jobs under Slicer's threading: real work must run at full speed while the main thread keeps
the interpreter lock.

In Slicer, PythonQt never releases the GIL around Qt's C++ event loop: a Python thread can only
run while the main thread executes Python bytecode, i.e. during our 100 ms timer callbacks. The
stand-in main loop below does exactly that: `job.poll()` in Python, then 100 ms in a C function
called through `ctypes.PyDLL`, which keeps the GIL (a pure-Python busy loop would not do: the
interpreter hands the GIL to a waiting thread every `sys.getswitchinterval()` seconds; Qt's C++
loop never does). Polls in the usual tests sleep or wait, which releases the GIL, so they never
showed the problem.

For each runner, a real 50-step registration and a real compression (shipped hippocampus-mr
bundle) must finish under that main loop within 1.3x of the same work run directly: the worker
program run from the command line for the process runner (`python -m deepstd.worker JOB.json`),
the plain function call for the thread runner of the previous release (`OldThreadJob`, a copy of
the old DeepSTDSlicerLib/jobs.py kept here as the reference). The thread runner is expected to
fail (strict xfail): that is the bug. Timings are printed (`pytest -s`) and recorded as test
properties. DEEPSTD_OLD_RUNNER_LIMIT=<seconds> lets the thread runner run that long instead of
stopping at 1.3x, to measure how long it really takes.
"""

import ctypes
import os
import queue
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import REPO, require_slicer_core

slicer = require_slicer_core()

from DeepSTDSlicerLib import codec, core, mrml  # noqa: E402

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the GIL-holding main loop uses libc usleep")

FACTOR = 1.3
TICK_US = 100_000  # Slicer's QTimer interval in the widget
ATTEMPTS = 3  # shared, busy machines: a pair of runs may be disturbed; one clean pair must pass
STEPS = 50
SETTINGS = dict(steps=STEPS, preview_every=25, probe_steps=25)
DATA = REPO.parent / "shared" / "data" / "hippocampus_mr" / "images"


# --- the main thread as PythonQt runs it --------------------------------------------------------

_IN_CPP_WITH_GIL = ctypes.PyDLL(None).usleep  # PyDLL: the GIL stays held during the call


def run_like_slicer(job, limit: float):
    """Drive `job` as the widget does in Slicer: a 100 ms timer whose callback polls the job; in
    between, the main thread is in C++ holding the GIL. Seconds until the job ended, or None if
    it was still running after `limit` seconds."""
    started = time.perf_counter()
    while job.poll():
        if time.perf_counter() - started > limit:
            return None
        _IN_CPP_WITH_GIL(TICK_US)
    return time.perf_counter() - started


def test_the_stand_in_main_loop_starves_python_threads_as_pythonqt_does():
    """Sanity check of the simulation: a pure-Python thread gets (almost) nothing done."""

    class Forever:
        def poll(self):
            return True

    count = [0]
    stop = threading.Event()

    def count_up():
        while not stop.is_set():
            count[0] += 1

    thread = threading.Thread(target=count_up, daemon=True)
    thread.start()
    time.sleep(0.5)
    free = count[0]  # half a second with the GIL shared normally
    count[0] = 0
    run_like_slicer(Forever(), limit=0.5)
    starved = count[0]
    stop.set()
    thread.join(5)
    print(f"\npure-Python thread, 0.5 s: {free:,} increments normally, {starved:,} under the PythonQt-like loop")
    assert starved < free / 5


# --- the previous release's runner, for comparison ----------------------------------------------


class OldThreadJob:
    """DeepSTDSlicerLib/jobs.py `Job` before jobs moved to a child process (reference copy):
    `work(progress, cancel)` on a Python thread, events queued and delivered by `poll()`."""

    def __init__(self, work, on_progress=None, on_done=None, on_error=None):
        self._work = work
        self._on_progress, self._on_done, self._on_error = on_progress, on_done, on_error
        self._events = queue.Queue()
        self.cancel_event = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.finished = False

    def start(self):
        self._thread.start()
        return self

    def cancel(self):
        self.cancel_event.set()

    def wait(self, timeout=None):
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def poll(self):
        pending = []
        while True:
            try:
                pending.append(self._events.get_nowait())
            except queue.Empty:
                break
        progress = [event for kind, event in pending if kind == "progress"]
        with_snapshot = [e for e in progress if getattr(e, "snapshot", None) is not None]
        if self._on_progress:
            if with_snapshot and with_snapshot[-1] is not progress[-1]:
                self._on_progress(with_snapshot[-1])
            if progress:
                self._on_progress(progress[-1])
        for kind, payload in pending:
            if kind == "progress":
                continue
            self.finished = True
            callback = self._on_done if kind == "done" else self._on_error
            if callback:
                callback(payload)
            elif kind == "error":
                raise payload
        return not self.finished

    def _run(self):
        try:
            result = self._work(lambda event: self._events.put(("progress", event)), self.cancel_event)
        except BaseException as error:
            self._events.put(("error", error))
        else:
            self._events.put(("done", result))


# --- the work -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scans():
    files = sorted(DATA.glob("*.nii.gz"))[:2] if DATA.is_dir() else []
    if len(files) < 2:
        pytest.skip(f"real data not found at {DATA}")
    from deepstd import read

    return [read(f) for f in files]


@pytest.fixture(scope="module")
def bundle_file():
    bundles = codec.bundles().shipped_bundles()
    if "hippocampus-mr" not in bundles:
        pytest.skip("the shipped bundle hippocampus-mr is not installed")
    return str(bundles["hippocampus-mr"])


def worker_cli(operation, inputs, options, outputs=None):
    """The same job run directly from the command line: `python -m deepstd.worker JOB.json`."""
    from deepstd.worker import JobFolder

    folder = JobFolder.create()
    for key, volume in inputs.items():
        folder.add_volume(key, volume)
    job_file = folder.write(operation, options, outputs)
    try:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "deepstd.worker", str(job_file)], capture_output=True)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(folder.path, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return seconds


def report(record_property, kind, runner, direct, under_slicer, limit):
    text = "did not finish" if under_slicer is None else f"{under_slicer:.2f} s"
    ratio = "" if under_slicer is None else f" = {under_slicer / direct:.2f}x"
    line = f"{kind} / {runner}: direct {direct:.2f} s, under the PythonQt-like main loop {text}{ratio}"
    if under_slicer is None:
        line += f" (stopped after {limit:.1f} s)"
    print("\n" + line)
    record_property(f"{kind}-{runner}", line)


def old_runner_limit(direct):
    override = os.environ.get("DEEPSTD_OLD_RUNNER_LIMIT")
    return float(override) if override else FACTOR * direct


def stop(job):
    """End an old-runner job that ran out of time (its thread runs again once we wait)."""
    job._on_error = lambda error: None  # the Cancelled it ends with
    job.cancel()
    job.wait(120)
    while job.poll():
        pass


def registration_nodes(scans):
    return mrml.add_volume_node(scans[1], "moving"), mrml.add_volume_node(scans[0], "template")


def test_registration_in_the_worker_runs_at_full_speed(headless, scans, record_property):
    from deepstd.shape import CycleSettings

    moving, template = registration_nodes(scans)
    logic = core.DeepSTDCore()
    options = {"settings": CycleSettings(**SETTINGS), "threads": 1}
    tries = []
    for _ in range(ATTEMPTS):
        direct = worker_cli("register", {"moving": scans[1], "template": scans[0]}, options)
        statuses = []
        job = logic.start_registration(moving, template, on_status=statuses.append, options=options)
        seconds = run_like_slicer(job, limit=FACTOR * direct)
        if seconds is None:
            job.cancel()
            job.wait(30)
            job.poll()
        report(record_property, "registration", "worker process", direct, seconds, FACTOR * direct)
        tries.append((direct, seconds))
        if seconds is not None:
            assert logic.last_registration.steps == STEPS and statuses[-1].step == STEPS
            if seconds <= FACTOR * direct:
                break
    assert any(s is not None and s <= FACTOR * d for d, s in tries), tries


def test_compression_in_the_worker_runs_at_full_speed(headless, scans, bundle_file, tmp_path, record_property):
    node = mrml.add_volume_node(scans[0], "scan")
    logic = core.DeepSTDCore()
    options = {"bundle": bundle_file, "ratio": 32, "device": "cpu", "threads": 1}
    tries = []
    for attempt in range(ATTEMPTS):
        direct = worker_cli("encode", {"volume": scans[0]}, options, {"dstd": tmp_path / f"cli{attempt}.dstd"})
        done, errors = [], []
        path = tmp_path / f"job{attempt}.dstd"
        job = logic.start_compress(node, bundle_file, 32, "cpu", str(path), on_done=done.append, on_error=errors.append)
        seconds = run_like_slicer(job, limit=FACTOR * direct)
        if seconds is None:
            job.cancel()
            job.wait(30)
            job.poll()
        report(record_property, "compression", "worker process", direct, seconds, FACTOR * direct)
        tries.append((direct, seconds))
        if seconds is not None:
            assert not errors and done[0].file_bytes == path.stat().st_size
            assert path.read_bytes() == (tmp_path / f"cli{attempt}.dstd").read_bytes()  # the same work
            if seconds <= FACTOR * direct:
                break
    assert any(s is not None and s <= FACTOR * d for d, s in tries), tries


@pytest.mark.xfail(
    strict=True, raises=AssertionError, reason="the thread runner starves while the main thread holds the GIL (the bug)"
)
def test_registration_on_the_old_thread_runner(headless, scans, record_property):
    import torch

    from deepstd.shape import CycleSettings

    moving, template = registration_nodes(scans)
    logic = core.DeepSTDCore()
    transform = headless.scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = lambda report=None, cancel=None: codec.register(  # noqa: E731
            scans[1], scans[0], report, cancel, settings=CycleSettings(**SETTINGS), threads=1
        )
        run()  # warm up in this process (the worker starts cold every time, and is timed so)
        started = time.perf_counter()
        run()
        direct = time.perf_counter() - started
        done = []

        def progress(event):
            if event.snapshot is not None:
                logic.apply_snapshot(transform, event.snapshot, template)

        job = OldThreadJob(run, progress, done.append).start()
        limit = old_runner_limit(direct)
        seconds = run_like_slicer(job, limit)
        if seconds is None:
            stop(job)
        report(record_property, "registration", "old thread runner", direct, seconds, limit)
        assert seconds is not None and seconds <= FACTOR * direct
    finally:
        torch.set_num_threads(threads)


@pytest.mark.xfail(
    strict=True, raises=AssertionError, reason="the thread runner starves while the main thread holds the GIL (the bug)"
)
def test_compression_on_the_old_thread_runner(headless, scans, bundle_file, tmp_path, record_property):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:

        def run(report=None, cancel=None, path=tmp_path / "direct.dstd"):
            data = codec.encode(scans[0], bundle_file, 32, "cpu", report, cancel)
            codec.write_atomic(str(path), data)
            return len(data)

        run()  # warm up
        started = time.perf_counter()
        run()
        direct = time.perf_counter() - started
        job = OldThreadJob(lambda report, cancel: run(report, cancel, tmp_path / "job.dstd")).start()
        limit = old_runner_limit(direct)
        seconds = run_like_slicer(job, limit)
        if seconds is None:
            stop(job)
        report(record_property, "compression", "old thread runner", direct, seconds, limit)
        assert seconds is not None and seconds <= FACTOR * direct
    finally:
        torch.set_num_threads(threads)


def test_the_main_loop_stays_responsive_while_a_job_runs(headless, scans, bundle_file, tmp_path):
    """The timer callbacks themselves stay short: the parent only reads what the child wrote."""
    node = mrml.add_volume_node(scans[0], "scan")
    job = core.DeepSTDCore().start_compress(node, bundle_file, 32, "cpu", str(tmp_path / "x.dstd"))
    polls = []
    while True:
        started = time.perf_counter()
        running = job.poll()
        polls.append(time.perf_counter() - started)
        if not running:
            break
        _IN_CPP_WITH_GIL(TICK_US)
    assert len(polls) > 5
    assert np.median(polls) < 0.01 and max(polls[:-1]) < 0.2  # the last poll reads the result
