"""DeepSTD: compress 3D medical scans relative to a template of their population.

The public API (see docs/ and DESIGN): `read`/`write` volumes, `Volume`, the error classes, and the
progress protocol. Heavy modules (torch, the codec) are imported by the functions that need them.
"""
from .errors import BudgetError, BundleError, Cancelled, DeepSTDError, FormatError, InputError
from .io import read, write
from .progress import CancelEvent, Progress
from .volume import Volume

__version__ = "0.1.0"

__all__ = ["Volume", "read", "write", "Progress", "CancelEvent", "DeepSTDError", "InputError",
           "FormatError", "BundleError", "BudgetError", "Cancelled", "__version__"]
