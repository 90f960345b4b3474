"""Install what deepstd needs inside Slicer, on first use and only after the user agrees.

Slicer (5.10 or later: Python 3.12) ships Python with numpy, SimpleITK, pydicom and vtk; they must
never be replaced. torch comes from the PyTorch extension (`PyTorchUtils` picks the CUDA or CPU
build for the machine, any version meeting `TORCH_REQUIREMENT`), then a few packages with binary
wheels for Windows x64, macOS and Linux x86_64 (`scripts/wheel_check.py` checks that in CI).
Encoding and decoding need no compressai: it is only for training, outside Slicer.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, Iterable, List, NamedTuple, Optional, Tuple

#: The oldest Slicer whose Python (3.12) these requirements are checked for.
MINIMUM_SLICER = "5.10"
PYTHON_VERSION = "3.12"
#: Installed by PyTorchUtils (the CUDA or CPU build for the machine), not by pip.
TORCH_PACKAGES = ("torch",)
#: Any torch from here on (the first release with Python 3.12 wheels); PyTorchUtils picks the build.
TORCH_REQUIREMENT = ">=2.2"
#: (import name, pip requirement) installed with pip after torch: what deepstd imports that Slicer
#: does not ship (pins as in pyproject where they matter for the format).
PIP_REQUIREMENTS: Tuple[Tuple[str, str], ...] = (
    ("scipy", "scipy"),
    ("safetensors", "safetensors==0.8.0"),
    ("constriction", "constriction==0.5.0"),
    ("imagecodecs", "imagecodecs==2026.1.14"),  # SPERR: the refinement layer of files written before refine section 4
)
#: What Slicer itself provides; deepstd may import these freely.
SLICER_PROVIDES = ("numpy", "SimpleITK", "pydicom", "vtk", "PIL", "typing_extensions")


class Requirement(NamedTuple):
    """One package to install: its import name, its pip requirement and who installs it."""

    name: str
    spec: str
    via: str

    def __str__(self) -> str:
        return f"{self.spec} ({self.via})"


def requirements() -> List[Requirement]:
    """Everything deepstd needs at run time in Slicer beyond what Slicer ships, torch first."""
    torch = [Requirement(name, f"{name}{TORCH_REQUIREMENT}", "PyTorch extension") for name in TORCH_PACKAGES]
    return torch + [Requirement(name, spec, "pip") for name, spec in PIP_REQUIREMENTS]


def installed(import_name: str) -> bool:
    """Whether a package is importable, found without importing it (torch takes seconds)."""
    return importlib.util.find_spec(import_name) is not None


def missing() -> List[str]:
    """Import names of what still has to be installed, torch first."""
    return [r.name for r in requirements() if not installed(r.name)]


def install_plan(missing_names: Optional[Iterable[str]] = None) -> List[Requirement]:
    """Exactly what `ensure` would install for these missing import names (default: what is
    missing now), in order, so the GUI can show it before asking."""
    todo = set(missing() if missing_names is None else missing_names)
    return [r for r in requirements() if r.name in todo]


def ensure(confirm: Callable[[str], bool]) -> bool:
    """Install what is missing after `confirm(message)` agrees; False if the user declined.

    Only callable inside Slicer (PyTorchUtils, slicer.util.pip_install); call it from a button
    handler, never at module load.
    """
    plan = install_plan()
    if not plan:
        return True
    if plan[0].name in TORCH_PACKAGES:
        try:
            import PyTorchUtils
        except ModuleNotFoundError as error:
            raise RuntimeError(
                "DeepSTD needs the PyTorch extension: install it from the Extensions Manager and restart Slicer"
            ) from error
        if (
            PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT
            )
            is None
        ):
            return False
        plan = plan[1:]
    if not plan:
        return not missing()
    if not confirm(
        "DeepSTD needs these Python packages, which are not installed yet:\n\n"
        + "\n".join(str(r) for r in plan)
        + "\n\nInstall them now? This can take a few minutes; Slicer may not respond meanwhile."
    ):
        return False
    import slicer.util

    slicer.util.pip_install([r.spec for r in plan])
    importlib.invalidate_caches()
    return not missing()
