"""Whole collections: compress a tree of scans to a mirrored tree of `.dstd` files with a
resumable manifest, restore it, and report on it, on Dask (a local cluster by default).

See docs/BATCH.md. `compress`, `decompress` and `write_report` are the entry points.
"""

from .report import write_report
from .run import compress, decompress, default_workers

__all__ = ["compress", "decompress", "write_report", "default_workers"]
