"""The shipped `la-mr` bundle on a real held-out left-atrium scan: rate control, geometry, quality,
decoding by the header's bundle id, and the demo command."""

from __future__ import annotations

import pytest
import torch
from shared_data import data_path

from deepstd import codec, metrics, peers, read
from deepstd.bundle import load_bundle, shipped_bundles
from deepstd.container import unpack


@pytest.fixture(scope="module")
def la_bundle():
    if "la-mr" not in shipped_bundles():
        pytest.fail("the la-mr bundle is not shipped in Logic/deepstd/bundles/")
    return load_bundle("la-mr")


@pytest.fixture(scope="module")
def held_out_scan(la_bundle):
    held_out = la_bundle.config.holdout_files
    assert len(held_out) == 6
    return read(data_path("left_atrium_mr", "images", held_out[0]))


@pytest.fixture(scope="module")
def coded_128(la_bundle, held_out_scan):
    torch.set_num_threads(2)
    return codec.encode(held_out_scan, la_bundle, ratio=128, device="cpu", require_texture=True)


def test_shipped_bundle_is_small_and_describes_itself(la_bundle):
    assert la_bundle.path.stat().st_size <= 10 * 2**20
    config = la_bundle.config
    assert config.modality == "MR" and config.training["scans"] == 26
    assert config.registration.threshold < 0 and len(config.validation) >= 4
    assert la_bundle.template.size[2] == 88


def test_held_out_scan_at_128x_meets_the_budget_and_the_grid(held_out_scan, coded_128):
    budget = held_out_scan.raw_bytes // 128
    assert 0.98 * budget <= len(coded_128) <= budget
    out = codec.decode(coded_128)  # bundle found from the header's id
    assert out.size == held_out_scan.size and out.spacing == held_out_scan.spacing
    assert out.origin == held_out_scan.origin and out.direction == held_out_scan.direction
    assert out.dtype == "uint8"
    assert out.meta["dstd"]["coverage"] > 0.99
    # at equal bytes a trained bundle must beat 3D JPEG 2000 (measured: 26.2 vs 24.7 dB PSNR)
    jpeg2000 = peers.get("jpeg2000-components")
    reference = jpeg2000.decode(jpeg2000.encode(held_out_scan, len(coded_128)), held_out_scan)
    assert metrics.psnr(held_out_scan.array, out.array) > metrics.psnr(held_out_scan.array, reference)
    assert metrics.ssim(held_out_scan.array, out.array) > metrics.ssim(held_out_scan.array, reference)


def test_more_bytes_give_better_quality(la_bundle, held_out_scan, coded_128):
    coded_64 = codec.encode(held_out_scan, la_bundle, ratio=64, device="cpu", require_texture=True)
    assert len(coded_64) > 1.9 * len(coded_128)
    psnr = lambda data: metrics.psnr(held_out_scan.array, codec.decode(data, la_bundle).array)  # noqa: E731
    assert psnr(coded_64) > psnr(coded_128) + 1.0
    assert unpack(coded_64).header["codec"]["texture_rate"] > unpack(coded_128).header["codec"]["texture_rate"]


def test_the_default_file_decodes_at_least_as_close_as_the_learned_texture(la_bundle, held_out_scan, coded_128):
    """On this scan the refinement layer alone (with its post-filter) decoded closer at 128x
    (docs/CODEC.md, steps 6-8); the default keeps whichever is closer, and where the bundle's
    standing record skips the texture it is that file, so it is never farther than the texture's."""
    default = codec.encode(held_out_scan, la_bundle, ratio=128, device="cpu")
    budget = held_out_scan.raw_bytes // 128
    assert 0.98 * budget <= len(default) <= budget
    psnr = lambda data: metrics.psnr(held_out_scan.array, codec.decode(data).array)  # noqa: E731
    assert psnr(default) >= psnr(coded_128)
    assert default == coded_128 or set(unpack(default).sections) <= {"refine", "filter"}


def test_demo_command_writes_a_picture(tmp_path, capsys):
    from deepstd.cli import main

    png = tmp_path / "demo.png"
    assert main(["demo", "--png", str(png), "--ratio", "128"]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "128" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
