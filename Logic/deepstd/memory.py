"""The decode memory budget: a file's needs are estimated from its header before anything is
allocated, and refused above a limit that scales with the machine.

The limit is `DEEPSTD_MEMORY_LIMIT` (bytes, or with a K/M/G/T suffix, e.g. "12G") or, by default,
MACHINE_SHARE of the physical memory. A request above it is a FormatError when the file is far too
small to code what it declares (a crafted header), an InputError otherwise (an honest scan too
large for this machine: the message names the limit and how to raise it).
"""

from __future__ import annotations

import os

from .errors import FormatError, InputError

#: share of the physical memory one decode may plan to use
MACHINE_SHARE = 0.8
#: when the physical memory cannot be read
FALLBACK_BYTES = 8 << 30
#: a file this many times smaller than the raw volume it declares is not an honest DeepSTD file
#: (the shipped bundles reach ~600x; even the smallest shape and texture streams take ~100 bytes)
IMPLAUSIBLE_RATIO = 100_000
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def limit_bytes() -> int:
    """The most one decode may plan to allocate on this machine (see the module docstring)."""
    text = os.environ.get("DEEPSTD_MEMORY_LIMIT", "").strip()
    if text:
        return _parse_size(text)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        physical = FALLBACK_BYTES
    return int(MACHINE_SHARE * physical)


def _parse_size(text: str) -> int:
    size = text.upper().removesuffix("B")
    unit = size[-1] if size and size[-1] in "KMGT" else ""
    try:
        value = float(size[: len(size) - len(unit)])
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InputError(f"DEEPSTD_MEMORY_LIMIT={text!r} is not a size (bytes, or with K/M/G/T, e.g. 12G)")
    return int(value * _UNITS[unit])


def require(need: int, what: str, raw_bytes: int, file_bytes: int) -> None:
    """Refuse a decode that would need `need` bytes above the limit, before it allocates them."""
    limit = limit_bytes()
    if need <= limit:
        return
    if raw_bytes > IMPLAUSIBLE_RATIO * max(file_bytes, 1):
        raise FormatError(
            f"{what}: the header declares {raw_bytes / 2**30:.1f} GiB of voxels in a "
            f"{file_bytes}-byte file; not a DeepSTD file (corrupt or crafted)"
        )
    raise InputError(
        f"{what} needs about {need / 2**30:.1f} GiB of memory, more than this machine's limit of "
        f"{limit / 2**30:.1f} GiB (set DEEPSTD_MEMORY_LIMIT to change it, or decode a region with --roi)"
    )


__all__ = ["limit_bytes", "require", "IMPLAUSIBLE_RATIO", "MACHINE_SHARE"]
