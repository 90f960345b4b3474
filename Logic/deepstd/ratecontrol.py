"""Fit a byte budget: a bisection on one monotone knob (`largest_within`), the search every DeepSTD
rate control shares, and a target-rescaling fit for coders with their own rate control
(`largest_by_target`).

`build(t)` makes the complete output at knob position t in [0, 1] (0: fewest bytes). The search
bisects on the *actual* length of what `build` returns, so whatever `build` includes — headers,
side information — is counted.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

#: 2**-18 is below one step of the 16-bit rate the texture streams store
STEPS = 18


def largest_within(
    build: Callable[[float], bytes],
    budget: int,
    tolerance: float = 0.02,
    steps: int = STEPS,
    on_step: Optional[Callable[[int], None]] = None,
    largest_first: bool = True,
) -> Tuple[Optional[bytes], bytes]:
    """(best, smallest): the largest output ≤ `budget` (stopping once within `tolerance` under
    it), or None when even the smallest output, returned second, is too big.

    The largest output (t = 1) is tried right after the smallest; with `largest_first=False` it
    is tried last instead, and only when every bisection step fitted without coming within
    `tolerance` (for builds where it is slow, such as a near-lossless setting)."""
    smallest = build(0.0)
    if len(smallest) > budget:
        return None, smallest
    if largest_first:
        largest = build(1.0)
        if len(largest) <= budget:
            return largest, smallest
    low, high, best = 0.0, 1.0, smallest
    for step in range(steps):
        if on_step is not None:
            on_step(step)
        mid = (low + high) / 2
        data = build(mid)
        if len(data) <= budget:
            low, best = mid, data
            if len(data) >= (1 - tolerance) * budget:
                return best, smallest
        else:
            high = mid
    if high == 1.0 and not largest_first:
        largest = build(1.0)
        if len(largest) <= budget:
            best = largest
    return best, smallest


def largest_by_target(
    build: Callable[[float], bytes],
    budget: int,
    tolerance: float = 0.02,
    tries: int = 8,
    on_try: Optional[Callable[[int], None]] = None,
) -> Optional[bytes]:
    """The largest output ≤ `budget` of a coder with its own rate control, or None when no try fit.

    `build(target)` makes the complete output for a target size in bytes; the target is rescaled
    from what the previous tries actually gave (log-linear between the closest tries either side of
    the budget, where there are such) until an output lands within `tolerance` under the budget.
    For coders whose every try is slow (two-pass video, a wavelet coder on a whole scan), where a
    blind bisection would take many more of them."""
    aim = (1 - tolerance / 2) * budget
    fits: List[bytes] = []
    below: Optional[Tuple[float, int]] = None  # (target, size) of the largest try that fits
    above: Optional[Tuple[float, int]] = None  # (target, size) of the smallest try over the budget
    target = aim
    for attempt in range(tries):
        if on_try is not None:
            on_try(attempt)
        data = build(target)
        size = len(data)
        if size <= budget:
            fits.append(data)
            if size >= (1 - tolerance) * budget:
                break
            below = max(below or (0.0, 0), (target, size), key=lambda pair: pair[1])
        else:
            above = min(above or (target, size), (target, size), key=lambda pair: pair[1])
        if below and above and above[1] > below[1] and below[1] > 0:
            share = math.log(aim / below[1]) / math.log(above[1] / below[1])
            target = math.exp(math.log(below[0]) + share * math.log(above[0] / below[0]))
        else:
            target *= aim / max(size, 1)
    return max(fits, key=len) if fits else None
