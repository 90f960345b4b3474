"""Shape stage on synthetic volumes: SIREN, frame geometry, fields vs SimpleITK, shape code, Cycle-INR."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from deepstd import Cancelled, Volume
from deepstd.errors import BudgetError, FormatError
from deepstd.grid import Frame
from deepstd.grid.sampling import compose, warp
from deepstd.shape import (
    CycleSettings,
    FieldSnapshot,
    Siren,
    decode_shape,
    displacement,
    encode_shape,
    folding_fraction,
    inverse_consistency,
    jacobian_determinant,
    register,
    to_sitk_field,
    width_for_budget,
)
from deepstd.shape.code import code_bytes

torch.set_num_threads(1)


def _bumpy(width=16, depth=2, omega=6.0, scale=0.05, seed=1) -> Siren:
    """A SIREN with a visible, smooth displacement (a few voxels)."""
    torch.manual_seed(seed)
    net = Siren(width, depth, omega, out_scale=1.0)
    with torch.no_grad():
        net.out.weight.mul_(scale / net.out.weight.abs().max())
        net.out.bias.uniform_(-0.02, 0.02)
    return net


def _blobs(frame: Frame, centres, seed=0) -> Volume:
    """Smooth Gaussian blobs placed in physical space, so any grid sees the same object."""
    pts = frame.q_to_physical(frame.q_points().double()).numpy()
    val = np.zeros(len(pts))
    for c, r in centres:
        val += 100 * np.exp(-np.sum((pts - np.asarray(c)) ** 2, axis=1) / (2 * r * r))
    return frame.volume(val.reshape(frame.shape_zyx).astype(np.float32), dtype="int16")


# --- SIREN ---------------------------------------------------------------------------------------
def test_siren_initialisation_bounds_and_near_identity():
    net = Siren(width=32, depth=3, omega=12.0)
    assert net.hidden[0].weight.abs().max() <= 1 / 3
    for layer in net.hidden[1:]:
        assert layer.weight.abs().max() <= math.sqrt(6 / 32) / 12 + 1e-7
    u = net(torch.rand(1000, 3) * 2 - 1)
    assert u.abs().max() < 1e-3


def test_siren_forward_jacobian_matches_autograd():
    net = _bumpy(width=8, depth=3, omega=9.0)
    q = torch.rand(5, 3) * 2 - 1
    u, jac = net.forward_jacobian(q)
    assert torch.allclose(u, net(q))
    for i in range(5):
        ref = torch.autograd.functional.jacobian(lambda p: net(p[None])[0], q[i])
        assert torch.allclose(jac[i], ref, atol=1e-5)


# --- frame ---------------------------------------------------------------------------------------
def test_frame_maps_voxel_centres_to_physical_points(oblique_volume):
    frame = Frame.of(oblique_volume)
    q = frame.q_points()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in oblique_volume.array.shape], indexing="ij"), -1)
    idx = idx.reshape(-1, 3)[:, ::-1]  # (x, y, z)
    expect = (oblique_volume.index_to_physical() @ np.c_[idx, np.ones(len(idx))].T).T[:, :3]
    assert np.allclose(frame.q_to_physical(q.double()).numpy(), expect, atol=1e-3)
    assert torch.allclose(frame.physical_to_q(torch.from_numpy(expect)).float(), q, atol=1e-5)
    assert np.isclose(np.abs(q.numpy()).max(axis=0).max(), 1.0)  # longest axis spans [-1, 1]
    one_voxel_x = torch.tensor([[oblique_volume.spacing[0] / frame.mm_per_unit, 0, 0]], dtype=torch.float64)
    mm = frame.units_to_mm(one_voxel_x).numpy()[0]  # along direction column x
    assert np.allclose(mm, np.asarray(oblique_volume.direction).reshape(3, 3)[:, 0] * oblique_volume.spacing[0])


def test_coarse_frame_covers_the_same_box(oblique_volume):
    frame = Frame.of(oblique_volume)
    coarse = frame.coarse(2)
    assert coarse.size == (7, 6, 4) and coarse.same_box(frame)
    corner = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64) * torch.as_tensor(frame.aspect)
    assert torch.allclose(frame.q_to_physical(corner), coarse.q_to_physical(corner))


# --- fields vs SimpleITK -------------------------------------------------------------------------
def _moving_for(template: Volume) -> Volume:
    """A scan with its own (different, oblique) geometry overlapping the template."""
    rot = np.array([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]])
    direction = (rot @ np.asarray(template.direction).reshape(3, 3)).reshape(-1)
    frame = Frame((15, 12, 9), (0.8, 1.0, 3.0), tuple(np.asarray(template.origin) - 1.5), tuple(direction))
    centre = Frame.of(template).q_to_physical(torch.zeros(1, 3, dtype=torch.float64)).numpy()[0]
    return _blobs(frame, [(centre, 6.0), (centre + [4, -3, 2], 3.0)])


def test_field_file_reproduces_our_warp_in_simpleitk(oblique_volume):
    frame = Frame.of(oblique_volume)
    moving = _moving_for(oblique_volume)
    matrix = np.eye(4)
    matrix[:3, 3] = [1.0, -0.5, 2.0]
    disp = displacement(_bumpy(), frame, post=matrix)
    assert np.abs(disp).max() > 2.0  # a real deformation, mm
    ours = warp(moving, disp, frame, "linear").array
    tx = sitk.DisplacementFieldTransform(to_sitk_field(disp, frame))
    ref = sitk.GetArrayFromImage(
        sitk.Resample(moving.to_sitk(cast=False), oblique_volume.to_sitk(), tx, sitk.sitkLinear, 0.0)
    )
    assert np.abs(ours - ref).max() < 1e-3 * np.abs(ref).max()
    labels = moving.with_array((moving.array > 30).astype(np.float32) + (moving.array > 60), dtype="uint8")
    ours_l = warp(labels, disp, frame, "nearest").array
    ref_l = sitk.GetArrayFromImage(
        sitk.Resample(labels.to_sitk(), oblique_volume.to_sitk(), tx, sitk.sitkNearestNeighbor, 0)
    )
    assert np.mean(ours_l == ref_l) > 0.995 and ours_l.max() == 2


def test_chunked_evaluation_matches_one_pass(oblique_volume):
    frame = Frame.of(oblique_volume)
    net = _bumpy()
    assert np.allclose(displacement(net, frame, chunk=10), displacement(net, frame, chunk=1 << 20), atol=1e-5)
    det_small, det_big = jacobian_determinant(net, frame, chunk=10), jacobian_determinant(net, frame)
    assert np.allclose(det_small, det_big, atol=1e-5)


def test_sampled_field_matches_the_network_and_continues_by_the_edge():
    from deepstd.shape.field import SampledField

    frame = Frame((60, 50, 30), (0.7, 0.7, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    net = _bumpy(omega=12.0, scale=0.05)
    sampled = SampledField(net, frame)
    aspect = torch.as_tensor(frame.aspect, dtype=torch.float32)
    q = (torch.rand(5000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1) * aspect
    with torch.no_grad():
        exact = net(q)
    error = frame.units_to_voxels(sampled(q) - exact).abs()  # what the warp would move by
    assert frame.units_to_voxels(exact).abs().max() > 5  # a large, wiggly field
    assert error.mean() < 0.1 and error.max() < 0.5
    outside = q * 1.5
    edge = torch.maximum(torch.minimum(outside, aspect), -aspect)
    assert torch.allclose(sampled(outside), sampled(edge), atol=1e-6)


def test_jacobian_determinant_matches_finite_differences_in_mm():
    frame = Frame((20, 18, 12), (0.7, 1.1, 2.5), (3.0, -4.0, 10.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    net = _bumpy(scale=0.08)
    det = jacobian_determinant(net, frame)
    ref = sitk.GetArrayFromImage(
        sitk.DisplacementFieldJacobianDeterminant(to_sitk_field(displacement(net, frame), frame))
    )
    inner = (slice(2, -2),) * 3
    assert np.abs(det - 1).max() > 0.05  # not trivially identity
    assert np.abs(det[inner] - ref[inner]).max() < 0.03


def test_folding_fraction_counts_non_positive_determinants():
    det = np.ones((4, 5, 5), np.float32)
    det[0, 0, :3] = [-0.5, 0.0, 1e-3]
    assert folding_fraction(det) == pytest.approx(2 / 100)


def test_inverse_consistency_and_composition(oblique_volume):
    frame = Frame.of(oblique_volume)
    zero = Siren(8, 1, 5.0, out_scale=0.0)
    net = _bumpy()
    assert inverse_consistency(zero, zero, frame, frame) == (0.0, 0.0)
    disp = displacement(net, frame)
    mean, worst = inverse_consistency(net, zero, frame, frame)  # error = |u| in voxels
    voxels = np.linalg.norm(
        np.asarray(frame.direction).reshape(3, 3).T @ disp.reshape(-1, 3).T / np.asarray(frame.spacing)[:, None], axis=0
    )
    assert mean == pytest.approx(voxels.mean(), rel=1e-3) and worst == pytest.approx(voxels.max(), rel=1e-3)
    shift = np.broadcast_to(np.float32([1.0, 2.0, -1.0]), disp.shape).copy()
    assert np.allclose(compose(disp, frame, np.zeros_like(disp), frame), disp)
    assert np.allclose(compose(shift, frame, shift, frame), 2 * shift, atol=1e-5)


# --- shape code ----------------------------------------------------------------------------------
def test_shape_code_roundtrip_size_and_field_error(oblique_volume):
    frame = Frame.of(oblique_volume)
    net = _bumpy(width=24, depth=3)
    matrix = np.eye(4)
    matrix[:3, 3] = [3.25, -1.5, 0.75]
    ref = displacement(net, frame, post=matrix)
    for bits, tol_mm in ((16, 0.01), (8, 0.2)):
        data = encode_shape(net, matrix, bits)
        assert len(data) <= code_bytes(24, 3, bits)
        code = decode_shape(data)
        assert np.allclose(code.matrix, matrix, atol=1e-6)
        err = np.abs(displacement(code.backward, frame, post=code.matrix) - ref).max()
        assert err < tol_mm
    assert len(encode_shape(net, matrix, 8)) < 0.6 * len(encode_shape(net, matrix, 16))


def test_a_shape_code_without_a_network_is_the_pre_alignment_alone(oblique_volume):
    from deepstd.shape.code import PREALIGNMENT_BYTES

    frame = Frame.of(oblique_volume)
    matrix = np.eye(4)
    matrix[:3, :3] = [[0.98, -0.17, 0.0], [0.17, 0.98, 0.0], [0.0, 0.0, 1.1]]
    matrix[:3, 3] = [3.25, -1.5, 0.75]
    data = encode_shape(None, matrix)
    assert len(data) == PREALIGNMENT_BYTES == 60
    code = decode_shape(data)
    assert np.allclose(code.matrix, matrix, atol=1e-6)
    assert np.abs(displacement(code.backward, frame)).max() < 1e-5  # no learned deformation
    for bad in (data[:-1], data + b"\x00", data[:12]):
        with pytest.raises(FormatError):
            decode_shape(bad)


def test_width_for_budget_fits_and_refuses_tiny_budgets():
    widths = [width_for_budget(b) for b in (1000, 2048, 4096)]
    assert widths == sorted(widths) and widths[0] < widths[-1]
    w = width_for_budget(2048)
    assert len(encode_shape(_bumpy(width=w, depth=3))) <= 2048 < code_bytes(w + 1, 3, 8)
    with pytest.raises(BudgetError):
        width_for_budget(50)


def test_corrupt_shape_code_is_refused():
    data = encode_shape(_bumpy())
    for bad in (data[:5], b"XX" + data[2:], data[:-3]):
        with pytest.raises(FormatError):
            decode_shape(bad)


# --- Cycle-INR -----------------------------------------------------------------------------------
def _pair():
    frame = Frame(
        (24, 20, 12),
        (1.0, 1.2, 2.5),
        (5.0, -3.0, 2.0),
        tuple(np.asarray([[0.0, -0.8, 0.6], [1.0, 0.0, 0.0], [0.0, 0.6, 0.8]]).T.reshape(-1)),
    )
    c = frame.q_to_physical(torch.zeros(1, 3, dtype=torch.float64)).numpy()[0]
    template = _blobs(frame, [(c, 5.0), (c + [5, 3, 0], 3.0), (c - [4, 2, 3], 3.5)])
    moving = _blobs(frame, [(c + [1.5, 0, 0], 5.5), (c + [7, 3, 0], 3.0), (c - [3, 1, 2], 4.0)])
    return template, moving


def _ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


FAST = dict(steps=120, batch=512, lr=3e-3, width=16, preview_every=40)


def test_cycle_inr_aligns_a_synthetic_pair_and_reports_previews():
    template, moving = _pair()
    events = []
    reg = register(moving, template, CycleSettings(**FAST), prealignment="none", progress=events.append)
    warped = warp(moving, reg.forward_field(), reg.frame)
    before, after = _ncc(moving.array, template.array), _ncc(warped.array, template.array)
    assert 1 - after < 0.6 * (1 - before)  # mismatch at least 40 % smaller
    assert folding_fraction(jacobian_determinant(reg.fit.forward, reg.frame)) < 0.01
    mean_ic, _ = inverse_consistency(reg.fit.forward, reg.fit.backward, reg.frame, reg.frame)
    assert mean_ic < 0.5
    snaps = [e.snapshot for e in events if e.snapshot is not None]
    assert len(snaps) == 3 and isinstance(snaps[0], FieldSnapshot)
    assert snaps[-1].displacement.shape[-1] == 3 and max(snaps[-1].displacement.shape[:3]) <= 24
    assert np.abs(snaps[-1].displacement).max() > np.abs(snaps[0].displacement).max() * 0.5 > 0
    assert events[-1].fraction == 1.0 and "loss" in events[-1].message


def test_gradual_degradation_follows_the_threshold():
    template, moving = _pair()
    quick = dict(FAST, steps=12, probe_steps=4)
    low = register(moving, template, CycleSettings(threshold=1.0, **quick), prealignment="none")
    assert low.omega == 6.0 and low.fit.step == 12  # 12 -> 10 -> 8 -> 6 (>= 5)
    high = register(moving, template, CycleSettings(threshold=-1.0, **quick), prealignment="none")
    assert high.omega == 12.0


def test_registration_is_deterministic_and_cancellable():
    template, moving = _pair()
    s = CycleSettings(**dict(FAST, steps=10))
    a = register(moving, template, s, prealignment="moments").shape_code(16)
    b = register(moving, template, s, prealignment="moments").shape_code(16)
    assert a == b
    token = threading.Event()
    token.set()
    with pytest.raises(Cancelled):
        register(moving, template, s, cancel=token)


# --- device --------------------------------------------------------------------------------------
def test_registration_on_an_explicit_cpu_device_matches_the_default():
    template, moving = _pair()
    s = CycleSettings(**dict(FAST, steps=10, threshold=-1.0, probe_steps=4))
    default = register(moving, template, s, foreground=True)
    cpu = register(moving, template, s, foreground=True, device="cpu")
    assert cpu.shape_code(8) == default.shape_code(8) and cpu.fit.history == default.fit.history
    assert default.info["device"] == cpu.info["device"] == "cpu"
    assert all(p.device.type == "cpu" for p in cpu.fit.forward.parameters())


def test_an_unknown_or_absent_device_is_refused_before_any_work(tmp_path):
    from deepstd.bundle import RegistrationConfig
    from deepstd.cli import build_parser
    from deepstd.errors import InputError
    from deepstd.progress import Reporter
    from deepstd.shape import register_files
    from deepstd.shape.sizing import code_shape

    template, moving = _pair()
    events = []
    absent = ["gpu", "cuda:x", "cpu:0"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:1"])
    for device in absent:
        with pytest.raises(InputError, match="device"):
            register(moving, template, CycleSettings(**FAST), progress=events.append, device=device)
        with pytest.raises(InputError, match="device"):  # before reading the (missing) files
            register_files(str(tmp_path / "no.nii.gz"), str(tmp_path / "none.nii.gz"), device=device)
        with pytest.raises(InputError, match="device"):
            code_shape(moving, template, RegistrationConfig(), None, Reporter(events.append), device)
    assert events == []
    assert build_parser().parse_args(["register", "m.nii.gz", "t.nii.gz", "--device", "cpu"]).device == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_scan_encoded_with_registration_on_cuda_decodes_on_the_cpu():
    from shared_data import data_path

    from deepstd import codec
    from deepstd.bundle import load_bundle
    from deepstd.io import read
    from deepstd.metrics import psnr

    template, moving = _pair()
    reg = register(moving, template, CycleSettings(**dict(FAST, steps=20)), device="cuda")
    assert reg.info["device"].startswith("cuda")
    assert all(p.device.type == "cpu" for p in list(reg.fit.forward.parameters()) + list(reg.fit.backward.parameters()))
    assert decode_shape(reg.shape_code(8)).backward.width == 16

    scan = read(data_path("hippocampus_mr", "images", "hippocampus_338.nii.gz"))
    bundle = load_bundle("hippocampus-mr")
    quality = {}
    for device in ("cpu", "cuda"):
        data = codec.encode(scan, bundle, ratio=32, device=device, workers=1)
        quality[device] = psnr(scan, codec.decode(data, bundle, device="cpu", workers=1))
    assert abs(quality["cuda"] - quality["cpu"]) < 1.0, quality


def test_a_blank_image_is_prealigned_by_the_identity():
    """Moments are undefined on an image without mass (ITK raises); a blank scan (or template)
    still encodes, pre-aligned by the identity. Found by the fuzzer (a 1x1x1 zero template)."""
    from deepstd.shape.prealign import prealign

    rng = np.random.default_rng(0)
    scan = sitk.GetImageFromArray(rng.random((12, 12, 12)).astype(np.float32))
    blank = sitk.GetImageFromArray(np.zeros((12, 12, 12), np.float32))
    for fixed, moving in ((blank, scan), (scan, blank), (blank, blank)):
        assert np.array_equal(prealign(fixed, moving, "moments"), np.eye(4))
    assert not np.array_equal(
        prealign(scan, sitk.GetImageFromArray(np.pad(rng.random((8, 8, 8)), 2).astype(np.float32))), np.eye(4)
    )
