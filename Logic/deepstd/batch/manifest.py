"""`manifest.jsonl`: one JSON record per attempt, appended as each scan finishes, latest wins.

Appending one line per scan means an interrupted run loses only the scans in flight; a line cut
short by a crash is ignored on reading. A scan counts as done only if its latest record says
"ok" for the same source bytes, bundle, ratio and effort (and carries quality figures when verification
is asked for) and the `.dstd` on disk still has the recorded size and SHA-256. A scan that
"failed" for a reason of its own (unreadable, refused, budget infeasible) would fail the same way
again, so it is not retried unless asked; an "error" (a lost worker, an internal error) is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional

from .discover import file_sha256

NAME = "manifest.jsonl"


def load(out_dir) -> List[dict]:
    """Every readable record of the manifest in `out_dir`, in the order written."""
    path = Path(out_dir) / NAME
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the tail of a run killed mid-write
        if isinstance(record, dict) and "output" in record:
            records.append(record)
    return records


def latest(records: List[dict]) -> Dict[str, dict]:
    """The last record per output path."""
    return {record["output"]: record for record in records}


def append(out_dir, record: dict) -> None:
    """Add one record durably (flushed and synced before the next scan is reported)."""
    path = Path(out_dir) / NAME
    with path.open("a") as stream:
        stream.write(json.dumps(record, sort_keys=True) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def state(
    record: Optional[dict],
    out_dir,
    source_sha256: str,
    bundle_sha256: str,
    ratio: float,
    verify: bool,
    retry_failed: bool = False,
    effort: int = 0,
) -> str:
    """ "done", "failed" (settled, not retried) or "todo": see the module docstring."""
    if not record:
        return "todo"
    settings = (record.get("source_sha256"), record.get("bundle_sha256"), record.get("target_ratio"))
    if settings + (record.get("effort", 0),) != (source_sha256, bundle_sha256, float(ratio), effort):
        return "todo"
    if record.get("status") == "failed":
        return "todo" if retry_failed else "failed"
    if record.get("status") != "ok" or (verify and record.get("psnr") is None):
        return "todo"
    output = Path(out_dir) / record["output"]
    try:
        intact = output.stat().st_size == record["bytes"] and file_sha256(output) == record["output_sha256"]
    except (OSError, KeyError):
        intact = False
    return "done" if intact else "todo"
