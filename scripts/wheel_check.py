"""Do the Slicer extension's run-time requirements install from binary wheels everywhere?

Resolves `DeepSTDSlicerLib.dependencies.requirements()` (torch at its stated minimum range, then
the pip packages) and what Slicer ships (numpy, SimpleITK, pydicom), with all their dependencies,
for each platform Slicer users have × Python 3.12, against PyPI with binary wheels only:

    pip install --dry-run --ignore-installed --no-deps --only-binary=:all: --platform P
        --python-version 3.12 --implementation cp --target T --report R.json SPECS...

pip cannot evaluate environment markers for another platform (a full resolution for Windows
follows torch's Linux-only CUDA dependencies and fails), so dependencies are followed here: each
round resolves the new requirements without their dependencies, and the next round takes their
`Requires-Dist` whose markers hold on the target platform. That proves a wheel exists for every
package on every platform; each is resolved on its own (the newest that matches). PEP 658 metadata
means nothing large is downloaded. Local pip configuration (constraints, extra indexes, wheel
folders) is ignored, so the answer is PyPI's. Prints platform × package -> version or MISSING;
exits 1 if anything is missing, 2 if PyPI cannot be reached (never a silent pass).

    python scripts/wheel_check.py            # about 30 s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DeepSTDSlicer"))
from DeepSTDSlicerLib import dependencies  # noqa: E402

INDEX = "https://pypi.org/simple/"
#: label -> (pip platform tags, marker environment): Windows x64, macOS arm64, macOS x86_64
#: (torch's last wheels for it are 2.2.x), Linux x86_64 with glibc 2.28 (every manylinux tag up to it)
PLATFORMS = {
    "win_amd64": (["win_amd64"], ("win32", "Windows", "AMD64", "nt")),
    "macos_arm64": ([f"macosx_{v}_0_arm64" for v in (11, 12, 13, 14)], ("darwin", "Darwin", "arm64", "posix")),
    "macos_x86_64": (
        [f"macosx_10_{m}_x86_64" for m in (9, 13, 15)] + [f"macosx_{v}_0_x86_64" for v in (11, 12, 13, 14)],
        ("darwin", "Darwin", "x86_64", "posix"),
    ),
    "linux_x86_64": (
        [f"manylinux_2_{m}_x86_64" for m in range(17, 29)] + ["manylinux2014_x86_64"],
        ("linux", "Linux", "x86_64", "posix"),
    ),
}
#: shipped by Slicer 5.10+, resolved alongside to check that our packages accept them
SLICER_SHIPS = ["numpy", "SimpleITK", "pydicom"]


def specs() -> List[str]:
    return [r.spec for r in dependencies.requirements()] + SLICER_SHIPS


class PyPIUnreachable(RuntimeError):
    pass


def pip_resolve(tags: List[str], wanted: List[str], workdir: Path) -> Optional[List[dict]]:
    """pip's report items for `wanted` (no dependencies) on that platform, or None if any is missing."""
    report = workdir / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet"]
    command += ["--only-binary=:all:", "--python-version", dependencies.PYTHON_VERSION, "--implementation", "cp"]
    for tag in tags:
        command += ["--platform", tag]
    command += ["--index-url", INDEX, "--target", str(workdir / "target"), "--report", str(report), *wanted]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode:
        if "Could not fetch URL" in done.stderr or "NewConnectionError" in done.stderr:
            raise PyPIUnreachable(done.stderr[-2000:])
        return None
    return json.loads(report.read_text())["install"]


def resolve_platform(label: str, workdir: Path) -> Tuple[Dict[str, str], Dict[str, str]]:
    """({top-level name: version or MISSING}, {dependency name: version or MISSING}) for a platform."""
    tags, (sys_platform, system, machine, os_name) = PLATFORMS[label]
    environment = {
        "sys_platform": sys_platform,
        "platform_system": system,
        "platform_machine": machine,
        "os_name": os_name,
        "python_version": dependencies.PYTHON_VERSION,
        "python_full_version": dependencies.PYTHON_VERSION + ".0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    found: Dict[str, str] = {}
    todo = [Requirement(s) for s in specs()]
    while todo:
        batch = {canonicalize_name(r.name): r for r in todo}
        items = pip_resolve(tags, [str(r) for r in batch.values()], workdir)
        if items is None:  # name the culprit(s)
            items = []
            for name, req in batch.items():
                alone = pip_resolve(tags, [str(req)], workdir)
                if alone:
                    items += alone
                else:
                    found[name] = "MISSING"
        todo = []
        for item in items:
            meta = item["metadata"]
            found[canonicalize_name(meta["name"])] = meta["version"]
        for item in items:
            for line in item["metadata"].get("requires_dist", []):
                req = Requirement(line)
                if req.marker is not None and not req.marker.evaluate(environment):
                    continue
                if canonicalize_name(req.name) not in found and all(req.name != r.name for r in todo):
                    todo.append(req)
    top = {canonicalize_name(Requirement(s).name) for s in specs()}
    return {n: v for n, v in found.items() if n in top}, {n: v for n, v in found.items() if n not in top}


def main() -> int:
    try:
        urllib.request.urlopen(INDEX + "constriction/", timeout=30).close()
    except OSError as error:
        print(f"wheel_check: cannot reach {INDEX} ({error}); the check cannot pass offline", file=sys.stderr)
        return 2
    top: Dict[str, Dict[str, str]] = {}
    deps: Dict[str, Dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(len(PLATFORMS)) as pool:
        folders = {label: Path(tmp) / label for label in PLATFORMS}
        for folder in folders.values():
            folder.mkdir()
        try:
            for label, (t, d) in zip(PLATFORMS, pool.map(lambda lb: resolve_platform(lb, folders[lb]), PLATFORMS)):
                top[label], deps[label] = t, d
        except PyPIUnreachable as error:
            print(f"wheel_check: PyPI stopped answering:\n{error}", file=sys.stderr)
            return 2
    names = [canonicalize_name(Requirement(s).name) for s in specs()]
    width = max(len(n) for n in names) + 2
    print(f"Python {dependencies.PYTHON_VERSION} (Slicer {dependencies.MINIMUM_SLICER}+), binary wheels from PyPI")
    print("package".ljust(width) + "".join(label.ljust(15) for label in PLATFORMS))
    for spec, name in zip(specs(), names):
        print(name.ljust(width) + "".join(top[lb].get(name, "MISSING").ljust(15) for lb in PLATFORMS) + f"({spec})")
    print("+ deps".ljust(width) + "".join(str(len(deps[lb])).ljust(15) for lb in PLATFORMS), flush=True)
    missing = [(lb, n) for lb in PLATFORMS for n, v in {**top[lb], **deps[lb]}.items() if v == "MISSING"]
    missing += [(lb, n) for lb in PLATFORMS for n in names if n not in top[lb]]
    if missing:
        print(f"wheel_check: FAILED, no binary wheel for {missing}", file=sys.stderr)
        return 1
    print("wheel_check: every requirement and dependency installs from binary wheels on every platform")
    return 0


if __name__ == "__main__":
    sys.exit(main())
