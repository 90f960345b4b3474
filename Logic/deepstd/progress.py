"""Progress events and cancellation shared by every long operation.

A long operation takes `progress` (a callable receiving `Progress` events, or None) and `cancel`
(any object with `is_set() -> bool`, e.g. `threading.Event`, or None). `Reporter` wraps both so
loops call one method per step: it forwards the event and raises `Cancelled` when asked to stop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

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
