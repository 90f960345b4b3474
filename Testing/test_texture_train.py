"""Texture training: the loss falls, checkpoints resume exactly where they stopped, cancel saves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from deepstd.errors import Cancelled
from deepstd.progress import CancelEvent
from deepstd.texture import TextureCodec, TextureConfig
from deepstd.texture.train import TrainSettings, evaluate, normalise, train

TINY = TextureConfig(channels=8, latent=8, hyper=8, levels=3, pos_dim=4)


def volumes():
    rng = np.random.default_rng(0)
    out = []
    for _ in range(2):
        v = rng.normal(size=(32, 40, 48))
        for axis in range(3):
            v = np.cumsum(v, axis=axis)
        out.append(normalise(v))
    return out


def settings(steps):
    return TrainSettings(steps=steps, batch=2, patch=32, lr=2e-3, lambdas=[100, 300, 1000], checkpoint_every=10)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_lowers_the_loss_and_resumes(tmp_path):
    events = []
    codec = train(volumes(), tmp_path, TINY, settings(50), progress=events.append)
    assert isinstance(codec, TextureCodec) and (tmp_path / "texture.safetensors").exists()
    losses = [float(e.message.split("loss ")[1].split()[0]) for e in events]
    assert losses[-1] < losses[0]
    # resume: the step count carries on from the checkpoint, history is extended
    train(volumes(), tmp_path, TINY, settings(60), resume=True)
    with safe_open(str(tmp_path / "checkpoint.safetensors"), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["step"] == "60"
    assert any(k.startswith("adam.") for k in keys) and any(k.startswith("model.") for k in keys)
    points = evaluate(TextureCodec.load(tmp_path / "texture.safetensors"), volumes()[:1], rates=[0.0, 1.0], block=32)
    assert points[0]["bytes"] < points[1]["bytes"]


def test_cancel_saves_a_checkpoint(tmp_path):
    token = CancelEvent()

    def stop_at_25(event):
        if "step 25" in event.message:
            token.set()

    with pytest.raises(Cancelled):
        train(volumes(), tmp_path, TINY, settings(1000), progress=stop_at_25, cancel=token)
    with safe_open(str(tmp_path / "checkpoint.safetensors"), "pt") as f:
        assert int(f.metadata()["step"]) in (25, 50)


def test_a_teacher_starts_the_student_and_keeps_its_features_close(tmp_path):
    from deepstd.texture.train import distillation_loss

    teacher = train(volumes(), tmp_path / "teacher", TINY, settings(30)).net
    sample = torch.from_numpy(volumes()[1][:32, :32, :32].copy())[None, None]
    with torch.no_grad():
        target = teacher.g_a(sample)
    free = train(volumes()[1:], tmp_path / "free", TINY, settings(40)).net
    taught = train(
        volumes()[1:],
        tmp_path / "taught",
        TINY,
        TrainSettings(**{**settings(40).__dict__, "distill_alpha": 5.0}),
        teacher=teacher,
    ).net
    with torch.no_grad():
        drift_free = float(distillation_loss(free.g_a(sample), target))
        drift_taught = float(distillation_loss(taught.g_a(sample), target))
    assert drift_taught < drift_free
    with pytest.raises(ValueError, match="config differs"):
        train(
            volumes(),
            tmp_path / "x",
            TextureConfig(channels=8, latent=8, hyper=8, levels=3, pos_dim=2),
            settings(1),
            teacher=teacher,
        )


def test_resuming_with_a_teacher_keeps_the_checkpoint(tmp_path):
    """A fine-tune resumed from its checkpoint must not first load the teacher: once the teacher's
    CDF tables differ in size from the checkpoint's (a re-saved bundle), loading failed."""
    from deepstd.texture.network import TextureNet

    teacher = train(volumes(), tmp_path / "teacher", TINY, settings(20)).net
    train(volumes()[1:], tmp_path / "student", TINY, settings(10), teacher=teacher)
    widened = TextureNet(TINY)
    widened.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        widened.entropy_bottleneck.quantiles[:, :, 0] -= 5
        widened.entropy_bottleneck.quantiles[:, :, 2] += 5
    widened.update()
    with safe_open(str(tmp_path / "student" / "checkpoint.safetensors"), "pt") as f:
        stored = f.get_tensor("model.entropy_bottleneck._quantized_cdf")
    assert widened.state_dict()["entropy_bottleneck._quantized_cdf"].shape != stored.shape
    train(volumes()[1:], tmp_path / "student", TINY, settings(20), resume=True, teacher=widened)
    with safe_open(str(tmp_path / "student" / "checkpoint.safetensors"), "pt") as f:
        assert f.metadata()["step"] == "20"
