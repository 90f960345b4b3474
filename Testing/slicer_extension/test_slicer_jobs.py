"""Background jobs: work on a thread, events on the polling thread, errors never lost."""

import threading
import types

from conftest import MODULE_DIR  # noqa: F401  (puts DeepSTDSlicerLib on sys.path)

from DeepSTDSlicerLib.jobs import Job


def event(fraction, snapshot=None):
    return types.SimpleNamespace(stage="s", fraction=fraction, message="", snapshot=snapshot)


def test_events_are_coalesced_but_the_newest_snapshot_is_kept():
    seen, done = [], []
    go = threading.Event()

    def work(progress, cancel):
        progress(event(0.1, snapshot="A"))
        progress(event(0.2, snapshot="B"))
        progress(event(0.3))
        go.wait(5)
        return 42

    job = Job(work, seen.append, done.append).start()
    while len(seen) < 2:
        job.poll()
    assert [(e.fraction, e.snapshot) for e in seen] == [(0.2, "B"), (0.3, None)]
    go.set()
    job.wait(5)
    assert not job.poll() and done == [42]


def test_error_is_delivered_on_the_polling_thread():
    errors = []
    threads = []

    def work(progress, cancel):
        raise ValueError("boom")

    job = Job(work, on_error=lambda e: (errors.append(e), threads.append(threading.current_thread()))).start()
    job.wait(5)
    job.poll()
    assert isinstance(errors[0], ValueError) and threads[0] is threading.current_thread()


def test_cancel_sets_the_token_the_work_sees():
    def work(progress, cancel):
        assert cancel.wait(5)
        return "stopped"

    done = []
    job = Job(work, on_done=done.append).start()
    job.cancel()
    job.wait(5)
    job.poll()
    assert done == ["stopped"]
