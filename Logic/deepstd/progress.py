"""Progress events and cancellation shared by every long operation.

A long operation takes `progress` (a callable receiving `Progress` events, or None) and `cancel`
(any object with `is_set() -> bool`, e.g. `threading.Event`, or None). `Reporter` wraps both so
loops call one method per step: it forwards the event and raises `Cancelled` when asked to stop.

Signals are the other way to stop a program: `terminate_on_sigterm` makes SIGTERM raise
`Terminated` (a `KeyboardInterrupt`, so whatever cleans up after Ctrl-C cleans up after it too),
and `signals_deferred` holds both while a few lines that must not be cut in two run.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Protocol

from .errors import Cancelled


@dataclass
class Progress:
    """One progress event: `fraction` runs 0..1 within `stage`."""

    stage: str
    fraction: float
    message: str = ""
    snapshot: Any = None


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


ProgressCallback = Callable[[Progress], None]

#: A ready-made cancel token type; any object with `is_set()` works.
CancelEvent = threading.Event


class Reporter:
    """Forwards progress to an optional callback and turns a set cancel token into `Cancelled`."""

    def __init__(self, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None):
        self._progress = progress
        self._cancel = cancel

    @property
    def cancel(self) -> Optional[CancelToken]:
        """The token, for APIs that take one themselves."""
        return self._cancel

    def check(self) -> None:
        """Raise `Cancelled` if the cancel token is set."""
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("cancelled by the user")

    def __call__(self, stage: str, fraction: float, message: str = "", snapshot: Any = None) -> None:
        """Check for cancellation, then report one event."""
        self.check()
        if self._progress is not None:
            self._progress(Progress(stage, min(max(float(fraction), 0.0), 1.0), message, snapshot))

    def callback(self) -> ProgressCallback:
        """This reporter as a plain `progress=` callable, for APIs that take one."""
        return lambda event: self(event.stage, event.fraction, event.message, event.snapshot)

    def scaled(self, start: float, end: float) -> "Reporter":
        """A reporter whose fractions 0..1 land in start..end of this one (nested steps)."""
        outer = self._progress

        def forward(event: Progress) -> None:
            if outer is not None:
                outer(Progress(event.stage, start + (end - start) * event.fraction, event.message, event.snapshot))

        return Reporter(forward, self._cancel)


# --- signals ------------------------------------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (`terminate_on_sigterm`): stop as on Ctrl-C, exit status 143."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (elsewhere: no change)."""
    if not _on_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then act on the first as it would have been
    (e.g. a file written and its manifest line appended are never parted by Ctrl-C). Main thread
    only; elsewhere signals cannot arrive in Python code anyway."""
    if not _on_main_thread():
        yield
        return
    caught: List[signal.Signals] = []
    kinds = (signal.SIGINT, signal.SIGTERM)
    previous = {
        kind: signal.signal(kind, lambda signum, frame: caught.append(signal.Signals(signum))) for kind in kinds
    }
    try:
        yield
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, signal.SIG_DFL if handler is None else handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])
