"""A codec's quality parameter, and how peers fit it to a byte budget.

Codec knobs differ (PSNR target in dB, quantisation step, CRF, error bound, bits per voxel), so
each peer describes its knob as the value giving its smallest output, the value giving its
largest, and whether to search it on a log scale; the search itself is DeepSTD's own
(`deepstd.ratecontrol.largest_within`), run by `Peer.encode` with the settings below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import BudgetError


class PeerBudgetError(BudgetError):
    """The peer cannot fit the budget; `smallest_bytes` is the least it can produce."""

    def __init__(self, peer: str, smallest_bytes: int, budget_bytes: int):
        super().__init__(f"{peer} cannot fit {budget_bytes} bytes: its smallest output is {smallest_bytes} bytes")
        self.peer = peer
        self.smallest_bytes = smallest_bytes
        self.budget_bytes = budget_bytes


@dataclass(frozen=True)
class Knob:
    """A quality parameter: `smallest` yields the smallest output, `largest` the largest."""

    smallest: float
    largest: float
    log: bool = False
    integer: bool = False

    def value(self, t: float) -> float:
        """The knob value at position t (0 = smallest output, 1 = largest)."""
        if self.log:
            a, b = math.log(self.smallest), math.log(self.largest)
            v = math.exp(a + t * (b - a))
        else:
            v = self.smallest + t * (self.largest - self.smallest)
        return int(round(v)) if self.integer else v


#: Bisection steps (2^-14 of the range); an integer knob's repeated values are not re-encoded.
STEPS = 14
#: Stop early once the output is this close below the budget.
CLOSE_ENOUGH = 0.003
