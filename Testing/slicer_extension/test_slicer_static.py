"""Static checks of the Slicer extension that need no Slicer: packaging lists, the .ui file against
the code that uses it, Python grammar for Slicer's interpreters, and no heavy import at load."""

import ast
import json
import re
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "DeepSTDSlicer"
MODULE_PY = MODULE / "DeepSTDSlicer.py"
UI = MODULE / "Resources" / "UI" / "DeepSTDSlicer.ui"
PYTHON_FILES = sorted(p for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts)

ALLOWED_CUSTOM_WIDGETS = {"qMRMLWidget", "qMRMLNodeComboBox", "ctkCollapsibleButton", "ctkSliderWidget"}
#: Nothing heavy may be imported while Slicer loads the module (all of these are imported on use).
HEAVY = ("torch", "compressai", "torchvision", "deepstd", "PyTorchUtils", "SimpleITK", "scipy", "skimage")


def cmake_list(path: Path, variable: str):
    text = path.read_text()
    body = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S).group(1)
    return [
        line.strip().replace("${MODULE_NAME}", "DeepSTDSlicer")
        for line in body.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_every_module_file_is_listed_in_cmake_and_exists():
    scripts = cmake_list(MODULE / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(MODULE / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES")
    for name in scripts + resources:
        assert (MODULE / name).is_file(), f"listed in CMakeLists.txt but missing: {name}"
    on_disk = {p.relative_to(MODULE).as_posix() for p in PYTHON_FILES}
    assert on_disk == set(scripts), f"not installed: {sorted(on_disk - set(scripts))}"
    on_disk_resources = {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert on_disk_resources == set(resources)


def test_deepstd_package_and_its_data_ship_with_the_extension():
    """The module CMake globs what setuptools packages: every .py and the package-data patterns."""
    text = (MODULE / "CMakeLists.txt").read_text()
    assert "${DEEPSTD_PACKAGE_SOURCE_DIR}/deepstd/*.py" in text and "GLOB_RECURSE DEEPSTD_PYTHON_SCRIPTS" in text
    pyproject = (REPO / "pyproject.toml").read_text()
    data = re.search(r"\[tool\.setuptools\.package-data\]\s*deepstd\s*=\s*\[(.*?)\]", pyproject, re.S).group(1)
    for pattern in re.findall(r'"([^"]+)"', data):
        assert f"${{DEEPSTD_PACKAGE_SOURCE_DIR}}/deepstd/{pattern}" in text, f"package data {pattern} not installed"
    assert (REPO / "Logic" / "deepstd" / "__init__.py").is_file()


def test_extension_metadata_is_consistent():
    top = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(DeepSTD\)", top, re.M)
    assert "add_subdirectory(DeepSTDSlicer)" in top
    depends = re.search(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', top).group(1).split()
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "([^"]+)"\)', top).group(1)
    catalog = json.loads((REPO / "DeepSTD.json").read_text())
    for key in ("$schema", "category", "scm_url"):
        assert catalog.get(key), f"DeepSTD.json lacks {key}"
    assert catalog["build_dependencies"] == depends == ["PyTorch"]
    s4ext = dict(
        line.split(" ", 1)
        for line in (REPO / "DeepSTD.s4ext").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    for key in ("scm", "scmurl", "scmrevision", "homepage", "category"):
        assert s4ext.get(key), f"DeepSTD.s4ext lacks {key}"
    assert s4ext["depends"].split() == depends and s4ext["homepage"] == homepage
    assert s4ext["scmurl"] == catalog["scm_url"] and s4ext["category"] == catalog["category"]
    assert "&" not in (REPO / "DeepSTD.s4ext").read_text()
    assert "Apache License" in (REPO / "LICENSE").read_text()
    assert "Apache-2.0" in (REPO / "pyproject.toml").read_text()


def test_icon_is_a_128_png():
    data = (MODULE / "Resources" / "Icons" / "DeepSTDSlicer.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


def _ui():
    return ET.parse(UI).getroot()


def _widget_code_names():
    return set(re.findall(r"self\.ui\.(\w+)", MODULE_PY.read_text()))


def test_ui_has_every_widget_the_code_uses():
    names = {w.get("name") for w in _ui().iter("widget")}
    missing = _widget_code_names() - names
    assert not missing, f"used in DeepSTDSlicer.py but not in the .ui: {sorted(missing)}"
    for section in (
        "codecCollapsibleButton",
        "registrationCollapsibleButton",
        "codingCollapsibleButton",
        "qualityCollapsibleButton",
    ):
        assert section in names


def _parameter_fields():
    tree = ast.parse(MODULE_PY.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DeepSTDSlicerParameterNode")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_ui_parameter_names_are_parameter_node_fields():
    bound = {p.findtext("string") for p in _ui().iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound and bound <= _parameter_fields(), sorted(bound - _parameter_fields())
    # the .dstd writer reads these three through core.settings()
    assert {"bundle", "ratio", "device"} <= _parameter_fields()


def test_ui_custom_widgets_and_scene_connections():
    root = _ui()
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    assert custom <= ALLOWED_CUSTOM_WIDGETS
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if c.startswith(("q", "ctk"))} <= custom
    combos = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert combos == connected, f"node selectors without a scene: {sorted(combos - connected)}"
    slider = next(w for w in root.iter("widget") if w.get("name") == "ratioSliderWidget")
    props = {p.get("name"): p.findtext("double") for p in slider.iter("property")}
    assert (float(props["minimum"]), float(props["maximum"])) == (8.0, 512.0)


def test_effort_spin_box_offers_exactly_the_encoder_presets():
    from deepstd.codec.encoder import EFFORTS

    box = next(w for w in _ui().iter("widget") if w.get("name") == "effortSpinBox")
    props = {p.get("name"): p.findtext("number") or p.findtext("string") for p in box.iter("property")}
    assert (int(props["minimum"]), int(props["maximum"])) == (min(EFFORTS), max(EFFORTS))
    assert props["SlicerParameterName"] == "effort"


@pytest.mark.parametrize("version", [(3, 9), (3, 12)])
@pytest.mark.parametrize("path", PYTHON_FILES, ids=lambda p: p.name)
def test_module_parses_with_slicer_python_grammar(path, version):
    source = path.read_text()
    tree = ast.parse(source, filename=str(path), feature_version=version)
    compile(tree, str(path), "exec")
    if "from __future__ import annotations" not in source:
        # PEP 604 unions in annotations are evaluated at import on Python 3.9 (Slicer 5.8)
        for node in ast.walk(tree):
            annotation = getattr(node, "annotation", None) or getattr(node, "returns", None)
            if annotation is not None:
                assert not any(
                    isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(annotation)
                ), f"{path.name}:{node.lineno} uses X | Y"


def _load_time_imports(tree):
    """Imports executed when the file is imported: module level and class bodies, not functions."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module
        elif isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        pending.extend(ast.iter_child_nodes(node))


@pytest.mark.parametrize("path", PYTHON_FILES, ids=lambda p: p.name)
def test_no_heavy_import_when_slicer_loads_the_module(path):
    heavy = [m for m in _load_time_imports(ast.parse(path.read_text())) if m.split(".")[0] in HEAVY]
    assert not heavy, f"{path.name} imports {heavy} at load time"


def test_every_third_party_import_of_the_codec_can_be_installed_in_slicer():
    """What deepstd imports for coding is shipped by Slicer or installed on first use."""
    sys.path.insert(0, str(MODULE))
    from DeepSTDSlicerLib import dependencies

    provided = set(dependencies.SLICER_PROVIDES) | {r.name for r in dependencies.requirements()}
    provided.add("compressai")  # training only: TextureNet(trainable=True); coding never imports it
    package = REPO / "Logic" / "deepstd"
    # not used by the module: peer codecs and benchmarks, batch runs, training, the CLI, and the
    # CLI's de-identification and PACS commands
    skip = {"peers", "bench.py", "batch", "cli.py", "train.py", "deidentify.py", "pacs"}
    stdlib = set(sys.stdlib_module_names)
    needed = {}
    for path in package.rglob("*.py"):
        if skip & set(path.relative_to(package).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top != "deepstd":
                    needed.setdefault(top, path.relative_to(package).as_posix())
    missing = {m: where for m, where in needed.items() if m not in provided}
    assert not missing, f"deepstd imports packages the extension cannot install: {missing}"


def test_loading_the_lib_and_creating_the_plugins_imports_nothing_heavy():
    """What Slicer runs at start-up (the module's imports, the IO plugins' constructors), in a fresh
    interpreter: neither deepstd nor torch may be imported by it."""
    import subprocess

    pytest.importorskip("slicer", reason="slicer-core is not installed (the 'slicer' extra of deepstd)")
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(MODULE)!r})\n"
        "from DeepSTDSlicerLib import codec, core, dependencies, jobs, mrml\n"
        "from DeepSTDSlicerLib.io import DeepSTDSlicerFileReader, DeepSTDSlicerFileWriter\n"
        "DeepSTDSlicerFileReader(None), DeepSTDSlicerFileWriter(None), dependencies.missing()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:])))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *HEAVY], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"imported at start-up: {out.stdout.strip()}"


MOCK_SLICER = {
    "SlicerConfig.cmake": """
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
""",
    "Empty.cmake": "",
    "UseSlicer.cmake": """
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.10/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
file(WRITE ${CMAKE_BINARY_DIR}/installed.txt "")
file(WRITE ${CMAKE_BINARY_DIR}/unittests.txt "")
function(_mock_install source_dir install_dir)
  foreach(f ${ARGN})
    if(NOT EXISTS "${source_dir}/${f}")
      message(FATAL_ERROR "listed but missing: ${source_dir}/${f}")
    endif()
    file(APPEND ${CMAKE_BINARY_DIR}/installed.txt "${install_dir}/${f}\\n")
  endforeach()
endfunction()
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MOCK "NO_INSTALL_SUBDIR;GLOBAL_TARGET"
    "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${ARGN})
  if(NOT MOCK_NO_INSTALL_SUBDIR)
    message(FATAL_ERROR "the package must install next to the module (NO_INSTALL_SUBDIR)")
  endif()
  _mock_install(${MOCK_SOURCE_DIR} ${MOCK_INSTALL_DIR} ${MOCK_SCRIPTS} ${MOCK_RESOURCES})
endmacro()
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MOCK "WITH_GENERIC_TESTS;WITH_SUBDIR" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(NOT MOCK_WITH_GENERIC_TESTS)
    message(FATAL_ERROR "generic tests not enabled")
  endif()
  _mock_install(${CMAKE_CURRENT_SOURCE_DIR} ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR} ${MOCK_SCRIPTS} ${MOCK_RESOURCES})
endfunction()
function(slicer_add_python_unittest)
  cmake_parse_arguments(MOCK "" "SCRIPT" "" ${ARGN})
  file(APPEND ${CMAKE_BINARY_DIR}/unittests.txt "${MOCK_SCRIPT}\\n")
endfunction()
""",
}


def test_cmake_configures_and_installs_module_package_and_bundles(tmp_path):
    """Configure the extension with CMake against a stand-in Slicer that records what the real
    macros would install, and compare with the source tree."""
    import shutil
    import subprocess

    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    mock = tmp_path / "Slicer"
    mock.mkdir()
    for name, text in MOCK_SLICER.items():
        (mock / name).write_text(text)
    build = tmp_path / "build"
    run = subprocess.run(
        [cmake, "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={mock}", "-DBUILD_TESTING=ON"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    prefix = "lib/Slicer-5.10/qt-scripted-modules/"
    installed = {line[len(prefix) :] for line in (build / "installed.txt").read_text().split()}
    package = REPO / "Logic"
    expected = {p.relative_to(MODULE).as_posix() for p in PYTHON_FILES}
    expected |= {"Resources/UI/DeepSTDSlicer.ui", "Resources/Icons/DeepSTDSlicer.png"}
    expected |= {p.relative_to(package).as_posix() for p in (package / "deepstd").rglob("*.py")}
    expected |= {p.relative_to(package).as_posix() for p in (package / "deepstd" / "bundles").rglob("*.dstdb")}
    expected |= {p.relative_to(package).as_posix() for p in (package / "deepstd" / "bundles").glob("*.standing.json")}
    expected |= {p.relative_to(package).as_posix() for p in (package / "deepstd" / "segmenters").glob("*.safetensors")}
    expected |= {p.relative_to(package).as_posix() for p in (package / "deepstd" / "data").glob("*") if p.is_file()}
    assert installed == expected, (sorted(expected - installed), sorted(installed - expected))
    assert (build / "unittests.txt").read_text().split() == ["DeepSTDSlicer.py"]
