"""What every peer codec is: a name, whether it can run here, and budget-fitted encode/decode.

A peer stands for a codec a hospital or researcher would use instead of DeepSTD. `encode`
picks the codec's own quality parameter (its `Knob`) so that the returned bytes — payload plus every piece of
side information needed to reconstruct — fit the byte budget as closely as possible; `decode`
returns float32 values in the volume's original units, on `like`'s grid.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, Optional

import numpy as np

from ..errors import DeepSTDError
from ..progress import Reporter
from ..ratecontrol import largest_within
from ..volume import Volume
from .budget import CLOSE_ENOUGH, STEPS, Knob, PeerBudgetError


class PeerError(DeepSTDError):
    """A peer codec crashed or refused the input; the benchmark reports it instead of a result."""


class PeerUnavailable(PeerError):
    """The codec (library or program) a peer needs is not installed here."""


class Peer(ABC):
    """A codec adapter. Subclasses set `name`, `summary`, `knob` (None when lossless) and implement
    `_prepare` (one-off work per volume), `_encode_at` (bytes at one knob value) and `decode`."""

    name: str
    summary: str
    knob: Optional[Knob] = None

    @property
    def lossless(self) -> bool:
        return self.knob is None

    def unavailable_reason(self) -> Optional[str]:
        """Why this peer cannot run here, or None when it can."""
        return None

    def available(self) -> bool:
        return self.unavailable_reason() is None

    def require_available(self) -> None:
        """Raise PeerUnavailable, with the reason, when this peer cannot run here."""
        reason = self.unavailable_reason()
        if reason is not None:
            raise PeerUnavailable(f"{self.name} is unavailable: {reason}")

    def encode(self, volume: Volume, budget_bytes: int, reporter: Optional[Reporter] = None) -> bytes:
        """The largest output this peer makes that still fits `budget_bytes` (all bytes counted).

        Raises `PeerBudgetError` when even the smallest output is too big. The search assumes
        output size grows with the knob position; where a codec is not quite monotone the result
        is the largest output it tried that fits, perhaps not the closest possible."""
        self.require_available()
        reporter = reporter or Reporter()
        prepared = self._prepare(volume)
        knob = self.knob
        if knob is None:
            data = self._encode_at(prepared, None)
            reporter("encode", 1.0, self.name)
            if len(data) > budget_bytes:
                raise PeerBudgetError(self.name, len(data), budget_bytes)
            return data
        encoded: Dict[float, bytes] = {}  # per knob value: an integer knob repeats values

        def build(t: float) -> bytes:
            value = knob.value(t)
            if value not in encoded:
                encoded[value] = self._encode_at(prepared, value)
            return encoded[value]

        reporter("encode", 0.0, self.name)
        # The largest-output end is often slow (near-lossless), so it is tried last.
        best, smallest = largest_within(
            build,
            budget_bytes,
            CLOSE_ENOUGH,
            STEPS,
            largest_first=False,
            on_step=lambda step: reporter("encode", (step + 1) / (STEPS + 1), self.name),
        )
        if best is None:
            raise PeerBudgetError(self.name, len(smallest), budget_bytes)
        # Not every codec is quite monotone: keep the largest output tried that fits.
        return max((data for data in encoded.values() if len(data) <= budget_bytes), key=len)

    @abstractmethod
    def _prepare(self, volume: Volume) -> Any:
        """Per-volume work shared by every knob value (intensity mapping, slicing)."""

    @abstractmethod
    def _encode_at(self, prepared: Any, value: Optional[float]) -> bytes:
        """The complete stream at one knob value (None for lossless peers)."""

    @abstractmethod
    def decode(self, data: bytes, like: Volume) -> np.ndarray:
        """float32 voxels (z, y, x) in original units, the shape of `like`."""


def imagecodecs_missing(*codecs: str) -> Optional[str]:
    """Why imagecodecs cannot run the named codecs (e.g. "JPEG2K"), or None when it can."""
    try:
        import imagecodecs
    except ImportError:
        return "the imagecodecs package is not installed (pip install imagecodecs)"
    missing = [c for c in codecs if not getattr(getattr(imagecodecs, c, None), "available", False)]
    if missing:
        return f"imagecodecs {imagecodecs.__version__} was built without {', '.join(missing)}"
    return None
