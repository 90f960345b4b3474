"""Install what deepstd needs inside Slicer, on first use and only after the user agrees.

Slicer ships Python with numpy, SimpleITK, pydicom and vtk; they must never be replaced. torch
comes from the PyTorch extension (`PyTorchUtils` picks the CUDA or CPU build for the machine),
compressai is installed without its dependencies (its declared numpy<2 would downgrade Slicer's
numpy), then the few import-time packages that are still missing.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, List, Tuple

#: Installed together by PyTorchUtils (light-the-torch matches torchvision to the torch build).
TORCH_PACKAGES = ("torch", "torchvision")
#: (import name, pip requirement) installed with pip after torch: what deepstd imports (pins as in
#: pyproject where they cannot disturb Slicer's numpy) and what `import compressai` needs.
PIP_REQUIREMENTS: Tuple[Tuple[str, str], ...] = (
    ("scipy", "scipy"),
    ("skimage", "scikit-image"),
    ("safetensors", "safetensors==0.8.0"),
    ("tqdm", "tqdm"),
    ("einops", "einops"),
    ("pandas", "pandas"),
    ("pytorch_msssim", "pytorch-msssim"),
    ("torch_geometric", "torch-geometric"),
)
#: Installed with --no-deps (see the module docstring).
NO_DEPS_REQUIREMENTS: Tuple[Tuple[str, str], ...] = (("compressai", "compressai==1.2.8"),)
#: What Slicer itself provides; deepstd may import these freely.
SLICER_PROVIDES = ("numpy", "SimpleITK", "pydicom", "vtk", "PIL", "typing_extensions")
TORCH_REQUIREMENT = ">=2.1"


def installed(import_name: str) -> bool:
    """Whether a package is importable, found without importing it (torch takes seconds)."""
    return importlib.util.find_spec(import_name) is not None


def missing() -> List[str]:
    """Import names of what still has to be installed, torch first."""
    names = list(TORCH_PACKAGES) + [name for name, _ in NO_DEPS_REQUIREMENTS + PIP_REQUIREMENTS]
    return [name for name in names if not installed(name)]


def ensure(confirm: Callable[[str], bool]) -> bool:
    """Install what is missing after `confirm(message)` agrees; False if the user declined.

    Only callable inside Slicer (PyTorchUtils, slicer.util.pip_install); call it from a button
    handler, never at module load.
    """
    todo = missing()
    if not todo:
        return True
    if any(name in todo for name in TORCH_PACKAGES):
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
        todo = [name for name in todo if name not in TORCH_PACKAGES]
    pip_specs = [spec for name, spec in PIP_REQUIREMENTS if name in todo]
    no_deps = [spec for name, spec in NO_DEPS_REQUIREMENTS if name in todo]
    if not pip_specs and not no_deps:
        return True
    if not confirm(
        "DeepSTD needs these Python packages, which are not installed yet:\n\n"
        + "\n".join(no_deps + pip_specs)
        + "\n\nInstall them now? This can take a few minutes; Slicer may not respond meanwhile."
    ):
        return False
    import slicer.util

    if pip_specs:
        slicer.util.pip_install(pip_specs)
    for spec in no_deps:
        slicer.util.pip_install(["--no-deps", spec])
    importlib.invalidate_caches()
    return not missing()
