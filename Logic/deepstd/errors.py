"""The DeepSTD error hierarchy.

Every failure a user can cause (bad input, corrupt file, wrong bundle, infeasible budget, cancel)
raises a `DeepSTDError` subclass whose message names the problem in one line, so the CLI and the
Slicer module can show it without a traceback. Anything else escaping is a bug.
"""


class DeepSTDError(Exception):
    """Base of every error DeepSTD raises on purpose."""


class InputError(DeepSTDError):
    """An input file or folder is unreadable, unsupported or inconsistent."""


class FormatError(DeepSTDError):
    """A `.dstd` file is corrupt, truncated or of an unsupported version."""


class BundleError(DeepSTDError):
    """A codec bundle is missing, corrupt or does not match the file."""


class BudgetError(DeepSTDError):
    """The requested ratio or byte budget cannot be met; the message states the feasible limit."""


class Cancelled(DeepSTDError):
    """The user cancelled a long operation."""
