"""Fit a byte budget with one monotone knob: the search every DeepSTD rate control shares.

`build(t)` makes the complete output at knob position t in [0, 1] (0: fewest bytes). The search
bisects on the *actual* length of what `build` returns, so whatever `build` includes — headers,
side information — is counted.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

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
