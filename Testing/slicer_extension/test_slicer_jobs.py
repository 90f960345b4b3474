"""The job runner: a child process speaking the worker protocol, read by polls that never block.
Small stand-in children (python -c) play the worker, so every way a child can end is covered:
result, error line, crash, signal, garbage on stdout, cancel (with a process tree), and leftovers."""

import json
import os
import sys
import textwrap
import threading
import time
import types

import numpy as np
import pytest
from conftest import MODULE_DIR  # noqa: F401  (puts DeepSTDSlicerLib on sys.path)

from DeepSTDSlicerLib import jobs
from DeepSTDSlicerLib.jobs import Job, WorkerError

posix_only = pytest.mark.skipif(os.name == "nt", reason="process groups and signals are POSIX here")


def child(tmp_path, body, **callbacks):
    """A started Job whose child runs `body` (Python) with `emit(dict)` and `folder` defined."""
    folder = tmp_path / "job"
    folder.mkdir(exist_ok=True)
    prelude = (
        "import json, os, sys, time, signal, subprocess\n"
        "import numpy as np\n"
        f"folder = {str(folder)!r}\n"
        "def emit(message):\n"
        "    sys.stdout.write(json.dumps(message) + '\\n'); sys.stdout.flush()\n"
    )
    return Job([sys.executable, "-c", prelude + textwrap.dedent(body)], folder, name="test", **callbacks).start()


def poll_until_finished(job, timeout=30.0):
    deadline = time.time() + timeout
    while job.poll():
        assert time.time() < deadline, "the job did not end"
        time.sleep(0.02)


def test_events_are_coalesced_but_the_newest_snapshot_is_kept(tmp_path):
    seen, done = [], []
    job = child(
        tmp_path,
        """
        for n, tag in enumerate("AB"):
            path = os.path.join(folder, f"{tag}.npy")
            np.save(path, np.full((2, 2, 2, 3), n, np.float32))
            emit({"type": "snapshot", "path": path, "stage": "s", "fraction": 0.1 * (n + 1), "message": "",
                  "spacing": [1, 1, 1], "step": 25 * (n + 1), "tag": tag})
        emit({"type": "progress", "stage": "s", "fraction": 0.3, "message": "working"})
        open(os.path.join(folder, "ready"), "w").close()
        while not os.path.exists(os.path.join(folder, "go")):
            time.sleep(0.01)
        emit({"type": "result", "answer": 42})
        """,
        on_progress=seen.append,
        on_done=done.append,
    )
    deadline = time.time() + 30
    while not (job.folder / "ready").exists():  # all three events written: one poll sees them all
        assert time.time() < deadline
        time.sleep(0.01)
    assert job.poll()
    assert [(e.fraction, getattr(e.snapshot, "tag", None)) for e in seen] == [(0.2, "B"), (0.3, None)]
    assert seen[0].snapshot.step == 50 and seen[0].snapshot.displacement.shape == (2, 2, 2, 3)
    assert (seen[0].snapshot.displacement == 1).all()
    (job.folder / "go").write_text("")
    assert job.wait(30)
    assert not job.poll() and done == [{"type": "result", "answer": 42}]
    assert not job.folder.exists(), "the job folder is removed when the job ends"


def test_poll_never_blocks(tmp_path):
    job = child(tmp_path, "emit({'type': 'progress', 'stage': 's', 'fraction': 0.0, 'message': ''}); time.sleep(30)")
    try:
        for _ in range(5):
            started = time.perf_counter()
            assert job.poll()
            assert time.perf_counter() - started < 0.05
            time.sleep(0.05)
    finally:
        job.cancel()
        job.wait(10)


def test_an_error_line_is_the_deepstd_error_on_the_polling_thread(tmp_path):
    from deepstd.errors import InputError

    errors, threads = [], []
    job = child(
        tmp_path,
        "emit({'type': 'error', 'kind': 'InputError', 'message': 'volume has no voxels'}); sys.exit(2)",
        on_error=lambda e: (errors.append(e), threads.append(threading.current_thread())),
    )
    poll_until_finished(job)
    assert isinstance(errors[0], InputError) and str(errors[0]) == "volume has no voxels"
    assert threads[0] is threading.current_thread()


def test_a_bug_in_the_worker_carries_its_traceback(tmp_path):
    errors = []
    job = child(
        tmp_path,
        "emit({'type': 'error', 'kind': 'KeyError', 'message': 'KeyError: b0', 'traceback': 'Traceback: here'})\n"
        "sys.exit(1)",
        on_error=errors.append,
    )
    poll_until_finished(job)
    assert isinstance(errors[0], WorkerError) and str(errors[0]) == "KeyError: b0"
    assert errors[0].details == "Traceback: here" and errors[0].kind == "KeyError" and errors[0].exit_code == 1


@pytest.mark.parametrize(
    "body, expected",
    [
        ("sys.stderr.write('segfault-ish trouble\\n'); sys.exit(3)", "stopped unexpectedly (exit code 3)"),
        pytest.param(
            "sys.stderr.write('segfault-ish trouble\\n'); sys.stderr.flush(); os.kill(os.getpid(), signal.SIGKILL)",
            "stopped unexpectedly (killed by signal SIGKILL)",
            marks=posix_only,
        ),
        ("sys.stderr.write('segfault-ish trouble\\n')", "ended without a result"),
    ],
    ids=["exit code", "signal", "no result"],
)
def test_a_crash_is_an_error_with_the_end_of_stderr(tmp_path, body, expected):
    errors = []
    job = child(tmp_path, body, on_error=errors.append)
    poll_until_finished(job)
    assert isinstance(errors[0], WorkerError) and expected in str(errors[0])
    assert "segfault-ish trouble" in errors[0].details


def test_garbage_on_stdout_stops_the_child_and_is_an_error(tmp_path):
    errors = []
    job = child(tmp_path, "print('Hello from a library'); sys.stdout.flush(); time.sleep(60)", on_error=errors.append)
    started = time.time()
    poll_until_finished(job, timeout=10)
    assert time.time() - started < 5, "the child is killed, not waited for"
    assert isinstance(errors[0], WorkerError)
    assert "not part of its protocol: Hello from a library" in str(errors[0])


def test_a_result_with_a_failing_exit_is_not_success(tmp_path):
    done, errors = [], []
    job = child(tmp_path, "emit({'type': 'result'}); sys.exit(5)", on_done=done.append, on_error=errors.append)
    poll_until_finished(job)
    assert not done and "exit code 5" in str(errors[0])


def test_finish_failures_reach_on_error(tmp_path):
    errors = []

    def finish(result, folder):
        raise OSError("cannot read the decoded volume")

    folder = tmp_path / "job"
    folder.mkdir()
    job = Job(
        [sys.executable, "-c", 'print(\'{"type": "result"}\')'], folder, on_error=errors.append, finish=finish
    ).start()
    poll_until_finished(job)
    assert isinstance(errors[0], OSError)


@posix_only
@pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["stops on SIGTERM", "ignores SIGTERM"])
def test_cancel_ends_the_whole_process_tree_and_removes_partial_outputs(tmp_path, monkeypatch, ignores_sigterm):
    """PythonSlicer is a launcher with python-real under it: cancel must reach every process. A
    child that ignores the polite request is killed after the grace period."""
    from deepstd.errors import Cancelled

    monkeypatch.setattr(jobs, "CANCEL_GRACE", 0.5)
    out = tmp_path / "out" / "scan.dstd"
    out.parent.mkdir()
    (out.parent / "older.dstd").write_bytes(b"DSTD")  # not this job's
    errors = []
    folder = tmp_path / "job"
    folder.mkdir()
    body = textwrap.dedent(
        f"""
        import os, signal, subprocess, sys, time
        {"signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignores_sigterm else ""}
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(folder / "pid")!r}, "w").write(str(grandchild.pid))
        open({str(out.parent / ".scan.dstd.x1y2.tmp")!r}, "wb").write(b"half a file")
        print('{{"type": "progress", "stage": "s", "fraction": 0.1, "message": ""}}', flush=True)
        time.sleep(60)
        """
    )
    job = Job([sys.executable, "-c", body], folder, on_error=errors.append, outputs=[str(out)]).start()
    deadline = time.time() + 20
    while not (folder / "pid").exists() or not (out.parent / ".scan.dstd.x1y2.tmp").exists():
        assert job.poll() and time.time() < deadline
        time.sleep(0.02)
    grandchild = int((folder / "pid").read_text())
    job.cancel()
    started = time.time()
    poll_until_finished(job, timeout=10)
    assert time.time() - started < 5
    assert isinstance(errors[0], Cancelled)
    assert sorted(p.name for p in out.parent.iterdir()) == ["older.dstd"]
    for _ in range(50):  # the grandchild is reaped by init once killed
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the grandchild survived the cancel")


def test_a_missing_python_is_a_worker_error(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    with pytest.raises(WorkerError, match="cannot start the DeepSTD worker"):
        Job([str(tmp_path / "no-python"), "-m", "deepstd.worker"], folder).start()


def test_the_worker_python_outside_and_inside_slicer(tmp_path, monkeypatch):
    monkeypatch.delenv(jobs.PYTHON_ENV, raising=False)
    slicer = sys.modules.get("slicer") or types.ModuleType("slicer")
    monkeypatch.setitem(sys.modules, "slicer", slicer)
    monkeypatch.delattr(slicer, "app", raising=False)
    assert jobs.python_executable() == sys.executable  # plain Python, slicer-core
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / name).write_text("")
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(slicerHome=str(tmp_path)), raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert jobs.inside_slicer() and jobs.python_executable() == str(tmp_path / "bin" / name)
    monkeypatch.setenv(jobs.PYTHON_ENV, "/opt/python")
    assert jobs.python_executable() == "/opt/python"
    monkeypatch.delenv(jobs.PYTHON_ENV)
    (tmp_path / "bin" / name).unlink()
    with pytest.raises(WorkerError, match="cannot find Slicer's Python"):
        jobs.python_executable()


def test_the_worker_finds_this_deepstd(monkeypatch):
    import deepstd

    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    env = jobs.worker_environment()
    first = env["PYTHONPATH"].split(os.pathsep)[0]
    assert os.path.samefile(os.path.join(first, "deepstd", "__init__.py"), deepstd.__file__)
    assert env["PYTHONPATH"].endswith("/somewhere/else")


def test_a_job_file_that_names_no_known_operation_is_refused_before_starting(tmp_path):
    with pytest.raises(ValueError, match="unknown worker operation"):
        jobs.start_worker("format-disk", lambda folder: None)


def test_results_come_back_through_the_real_worker(tmp_path):
    """start_worker end to end with a light operation: job folder, protocol, finish, cleanup."""
    done = []
    a = np.zeros((3, 4, 5), bool)
    a[1, 1:3, 1:4] = True

    def finish(result, folder):
        assert folder.is_dir()
        return result["rows"]

    job = jobs.start_worker(
        "segment_metrics",
        lambda folder: folder.add_arrays("masks", {"a0": a, "b0": a}),
        options={"pairs": [["x", "x"]], "spacing": [1.0, 1.0, 1.0]},
        on_done=done.append,
        finish=finish,
    )
    poll_until_finished(job, timeout=120)
    assert done[0][0]["Dice"] == 1.0 and json.dumps(done[0])
    assert not job.folder.exists()
