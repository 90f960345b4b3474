"""First-use installation: asks before anything is installed, torch through PyTorchUtils, the rest
with pip as listed by `install_plan`, no compressai, and nothing at all when everything is there."""

import sys
import types

import pytest
from conftest import require_slicer_core

slicer = require_slicer_core()
import slicer.util  # noqa: E402, F811

from DeepSTDSlicerLib import dependencies  # noqa: E402


@pytest.fixture
def world(monkeypatch):
    """Pretend some packages are missing; record pip and PyTorchUtils calls and the questions asked."""
    state = types.SimpleNamespace(missing=set(), pip=[], torch_calls=[], questions=[], torch_result="torch")

    def installed(name):
        return name not in state.missing

    def pip_install(args):
        state.pip.append(args)
        for spec in args:
            state.missing.discard(spec.split("==")[0])

    class Logic:
        def installTorch(self, askConfirmation, torchVersionRequirement):
            state.torch_calls.append((askConfirmation, torchVersionRequirement))
            if state.torch_result:
                state.missing -= {"torch"}
            return state.torch_result

    monkeypatch.setattr(dependencies, "installed", installed)
    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=Logic))
    state.confirm = lambda message: state.questions.append(message) or state.answer
    state.answer = True
    return state


def test_nothing_missing_means_no_question_and_no_install(world):
    assert dependencies.ensure(world.confirm)
    assert world.questions == [] and world.pip == [] and world.torch_calls == []


def test_torch_goes_through_pytorchutils_with_confirmation(world):
    world.missing = {"torch"}
    assert dependencies.ensure(world.confirm)
    assert world.torch_calls == [(True, dependencies.TORCH_REQUIREMENT)] and world.pip == []


def test_declining_pytorch_stops_everything(world):
    world.missing = {"torch", "constriction"}
    world.torch_result = None
    assert not dependencies.ensure(world.confirm)
    assert world.pip == [] and world.questions == []


def test_pip_packages_are_listed_as_planned_then_installed(world):
    world.missing = {"constriction", "scipy", "safetensors"}
    plan = dependencies.install_plan(world.missing)
    assert [(r.name, r.spec) for r in plan] == [
        ("scipy", "scipy"),
        ("safetensors", "safetensors==0.8.0"),
        ("constriction", "constriction==0.5.0"),
    ]
    assert dependencies.install_plan() == plan  # the default asks what is missing now
    assert dependencies.ensure(world.confirm)
    (question,) = world.questions
    assert all(str(r) in question for r in plan) and "(pip)" in question
    assert world.pip == [["scipy", "safetensors==0.8.0", "constriction==0.5.0"]]


def test_the_plan_names_torch_with_its_minimum_and_never_compressai():
    everything = dependencies.install_plan(r.name for r in dependencies.requirements())
    assert str(everything[0]) == f"torch{dependencies.TORCH_REQUIREMENT} (PyTorch extension)"
    names = {r.name for r in everything}
    assert "compressai" not in names and "torchvision" not in names
    assert not names & set(dependencies.SLICER_PROVIDES)
    assert dependencies.install_plan([]) == []


def test_declining_pip_installs_nothing(world):
    world.missing = {"constriction"}
    world.answer = False
    assert not dependencies.ensure(world.confirm)
    assert world.pip == []


def test_missing_pytorch_extension_is_explained(world, monkeypatch):
    world.missing = {"torch"}
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(RuntimeError, match="PyTorch extension"):
        dependencies.ensure(world.confirm)
