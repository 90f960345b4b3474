"""The one check for numbers that come from users, headers and bundles: real, finite, in range."""

from __future__ import annotations

import math
from typing import Any, Type

from .errors import DeepSTDError, InputError


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not a string, not NaN or ±inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def number_at_least(value: Any, low: float, what: str, error: Type[DeepSTDError] = InputError) -> float:
    """`value` as a float when it is a number ≥ `low`; else `error` naming `what`."""
    if not (is_number(value) and value >= low):
        raise error(f"{what} must be a number ≥ {low:g}, got {value!r}")
    return float(value)


__all__ = ["is_number", "number_at_least"]
