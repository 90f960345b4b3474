"""Bisection of a codec's quality parameter onto a byte budget.

Codec knobs differ (PSNR target in dB, quantisation step, CRF, error bound, bits per voxel), so
each peer describes its knob as the value giving its smallest output, the value giving its
largest, and whether to search it on a log scale; the search itself is shared.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict

from ..errors import BudgetError
from ..progress import Reporter


class PeerBudgetError(BudgetError):
    """The peer cannot fit the budget; `smallest_bytes` is the least it can produce."""

    def __init__(self, peer: str, smallest_bytes: int, budget_bytes: int):
        super().__init__(f"{peer} cannot fit {budget_bytes} bytes: its smallest output is "
                         f"{smallest_bytes} bytes")
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


#: Bisection steps for continuous knobs (2^-14 of the range); integer knobs stop when exhausted.
STEPS = 14
#: Stop early once the output is this close below the budget.
CLOSE_ENOUGH = 0.003


def fit_to_budget(encode_at: Callable[[float], bytes], knob: Knob, budget: int, what: str,
                  reporter: Reporter) -> bytes:
    """The largest output of `encode_at` that is ≤ `budget` bytes.

    Raises `PeerBudgetError` when even the smallest output is too big.
    Output size is assumed to grow with t; where a codec is not quite monotone the result is
    still within budget, only perhaps not the closest possible.
    """
    cache: Dict[float, bytes] = {}

    def at(t: float) -> bytes:
        value = knob.value(t)
        if value not in cache:
            cache[value] = encode_at(value)
        return cache[value]

    reporter("encode", 0.0, what)
    smallest = at(0.0)
    if len(smallest) > budget:
        raise PeerBudgetError(what, len(smallest), budget)
    best, low, high = smallest, 0.0, 1.0
    for step in range(STEPS):
        reporter("encode", (step + 1) / (STEPS + 1), what)
        mid = (low + high) / 2
        if knob.integer and knob.value(mid) in (knob.value(low), knob.value(high)):
            break
        data = at(mid)
        if len(data) <= budget:
            low, best = mid, max(best, data, key=len)
            if len(data) >= budget * (1 - CLOSE_ENOUGH):
                return best
        else:
            high = mid
    if high == 1.0:
        # Everything tried fit: the largest-output end (often slow, near-lossless) may fit too.
        largest = at(1.0)
        if len(largest) <= budget:
            best = max(best, largest, key=len)
    return best
