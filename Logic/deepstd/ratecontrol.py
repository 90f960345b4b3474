"""Fit a byte budget with one monotone knob: the search every DeepSTD rate control shares.

`build(t)` makes the complete output at knob position t in [0, 1] (0: fewest bytes). The search
bisects on the *actual* length of what `build` returns, so whatever `build` includes — headers,
side information — is counted.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

#: 2**-18 is below one step of the 16-bit rate the texture streams store
STEPS = 18


def largest_within(build: Callable[[float], bytes], budget: int, tolerance: float = 0.02,
                   steps: int = STEPS, on_step: Optional[Callable[[int], None]] = None
                   ) -> Tuple[Optional[bytes], bytes]:
    """(best, smallest): the largest output ≤ `budget` (stopping once within `tolerance` under
    it), or None when even the smallest output, returned second, is too big."""
    smallest = build(0.0)
    if len(smallest) > budget:
        return None, smallest
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
                break
        else:
            high = mid
    return best, smallest
