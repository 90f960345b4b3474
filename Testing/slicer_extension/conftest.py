"""Fixtures for the DeepSTDSlicer module tests: a headless Slicer (slicer-core) and import paths.

(This folder must not be called `slicer`: slicer-core's `slicer` package extends its path with
every `slicer/` folder on sys.path and imports what it finds there.)

Test modules that need MRML call `require_slicer_core()` at import, so without slicer-core they
are skipped with the reason (CI installs it: `pip install -e ".[slicer]"`). The static checks and
the job tests need no Slicer at all.
"""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "DeepSTDSlicer"
for path in (MODULE_DIR, Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


@pytest.fixture(autouse=True, scope="session")
def one_worker_thread():
    """Jobs run in a child Python (deepstd.worker) that the `one_thread` fixture cannot reach:
    one torch thread there too, since two threads on busy shared cores are many times slower."""
    import os

    previous = os.environ.get("DEEPSTD_WORKER_THREADS")
    os.environ["DEEPSTD_WORKER_THREADS"] = "1"
    yield
    if previous is None:
        os.environ.pop("DEEPSTD_WORKER_THREADS", None)
    else:
        os.environ["DEEPSTD_WORKER_THREADS"] = previous


def require_slicer_core():
    """Import slicer-core's `slicer` or skip the calling test module, saying why."""
    slicer = pytest.importorskip(
        "slicer",
        reason="slicer-core is not installed: pip install 'slicer-core==5.13.31053.0' (the 'slicer' extra of deepstd)",
    )
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip(
            f"the 'slicer' module at {slicer.__file__} is not slicer-core (no vtkMRMLScene)", allow_module_level=True
        )
    return slicer


@pytest.fixture
def headless():
    """A fresh scene with application and module logics, set as slicer.mrmlScene."""
    require_slicer_core()
    from slicer_offscreen import HeadlessApp

    return HeadlessApp()
