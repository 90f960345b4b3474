"""First-use installation: asks before anything is installed, torch through PyTorchUtils, compressai
without its dependencies, and nothing at all when everything is there."""

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
            state.missing.discard({"compressai==1.2.8": "compressai", "scikit-image": "skimage"}.get(spec, spec))

    class Logic:
        def installTorch(self, askConfirmation, torchVersionRequirement):
            state.torch_calls.append((askConfirmation, torchVersionRequirement))
            if state.torch_result:
                state.missing -= {"torch", "torchvision"}
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
    world.missing = {"torch", "torchvision"}
    assert dependencies.ensure(world.confirm)
    assert world.torch_calls == [(True, dependencies.TORCH_REQUIREMENT)] and world.pip == []


def test_declining_pytorch_stops_everything(world):
    world.missing = {"torch", "compressai"}
    world.torch_result = None
    assert not dependencies.ensure(world.confirm)
    assert world.pip == [] and world.questions == []


def test_pip_packages_are_listed_then_installed_compressai_without_deps(world):
    world.missing = {"compressai", "scipy", "skimage"}
    assert dependencies.ensure(world.confirm)
    (question,) = world.questions
    assert "compressai==1.2.8" in question and "scipy" in question and "scikit-image" in question
    assert world.pip == [["scipy", "scikit-image"], ["--no-deps", "compressai==1.2.8"]]


def test_declining_pip_installs_nothing(world):
    world.missing = {"einops"}
    world.answer = False
    assert not dependencies.ensure(world.confirm)
    assert world.pip == []


def test_missing_pytorch_extension_is_explained(world, monkeypatch):
    world.missing = {"torch"}
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(RuntimeError, match="PyTorch extension"):
        dependencies.ensure(world.confirm)
