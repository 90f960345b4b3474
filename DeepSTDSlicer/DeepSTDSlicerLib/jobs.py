"""Long operations on a worker thread, with their results delivered on the main thread.

MRML and Qt may only be touched from the main thread, while registration and coding take minutes.
A `Job` runs `work(progress, cancel)` on a thread; `progress` queues `deepstd.progress.Progress`
events and `poll()` (called by a Qt timer in Slicer, directly in tests) hands them to the
callbacks on the caller's thread. Events arrive coalesced: a poll delivers the newest event that
carries a snapshot and the newest event, so a slow preview update never falls behind the
optimisation.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Optional

_PROGRESS, _DONE, _ERROR = "progress", "done", "error"


class Job:
    """One background operation with cancel, progress, done and error callbacks."""

    def __init__(
        self,
        work: Callable[[Callable[[Any], None], threading.Event], Any],
        on_progress: Optional[Callable[[Any], None]] = None,
        on_done: Optional[Callable[[Any], None]] = None,
        on_error: Optional[Callable[[BaseException], None]] = None,
        name: str = "DeepSTD",
    ):
        self._work = work
        self._on_progress, self._on_done, self._on_error = on_progress, on_done, on_error
        self._events: "queue.Queue" = queue.Queue()
        self.cancel_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.finished = False

    def start(self) -> "Job":
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the operation to stop; it raises `deepstd.Cancelled` at its next progress check."""
        self.cancel_event.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the worker ends (scripts and tests); True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def poll(self) -> bool:
        """Deliver pending events on this thread; True while the job has not finished."""
        pending = []
        while True:
            try:
                pending.append(self._events.get_nowait())
            except queue.Empty:
                break
        progress = [event for kind, event in pending if kind == _PROGRESS]
        with_snapshot = [e for e in progress if getattr(e, "snapshot", None) is not None]
        if self._on_progress:
            if with_snapshot and with_snapshot[-1] is not progress[-1]:
                self._on_progress(with_snapshot[-1])
            if progress:
                self._on_progress(progress[-1])
        for kind, payload in pending:
            if kind == _PROGRESS:
                continue
            self.finished = True
            callback = self._on_done if kind == _DONE else self._on_error
            if callback:
                callback(payload)
            elif kind == _ERROR:
                raise payload
        return not self.finished

    def _run(self) -> None:
        try:
            result = self._work(lambda event: self._events.put((_PROGRESS, event)), self.cancel_event)
        except BaseException as error:  # delivered to the main thread, never lost in the worker
            self._events.put((_ERROR, error))
        else:
            self._events.put((_DONE, result))
