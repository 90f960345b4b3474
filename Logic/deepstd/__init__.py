"""DeepSTD: compress 3D medical scans relative to a template of their population.

The public API (see README.md and docs/): `read`/`write` volumes, `Volume`, the error classes, and
the progress protocol. Heavy modules (torch, the codec) are imported by the functions that need them.
The version lives in one place, pyproject.toml, and is read from the installed package's metadata.
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import BudgetError, BundleError, Cancelled, DeepSTDError, FormatError, InputError
from .io import read, write
from .progress import CancelEvent, Progress
from .volume import Volume

try:
    __version__ = version("deepstd")
except PackageNotFoundError:  # sources without install metadata (the Slicer extension ships them so)
    __version__ = "unknown"

__all__ = [
    "Volume",
    "read",
    "write",
    "Progress",
    "CancelEvent",
    "DeepSTDError",
    "InputError",
    "FormatError",
    "BundleError",
    "BudgetError",
    "Cancelled",
    "__version__",
]
