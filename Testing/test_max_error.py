"""The maximum-error mode: a residual layer over the DeepSTD layer keeps every voxel within ±E
(E = 0: lossless), the header records the bound, and a damaged residual layer is refused."""

from __future__ import annotations

import random

import numpy as np
import pytest

from deepstd import codec, residual
from deepstd.container import pack, unpack
from deepstd.errors import FormatError, InputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lossless(tiny_bundle, scan):
    return codec.encode(scan, tiny_bundle, max_error=0, device="cpu")


def test_lossless_mode_restores_every_voxel(tiny_bundle, scan, lossless):
    out = codec.decode(lossless, tiny_bundle)
    np.testing.assert_array_equal(out.array, scan.array)
    assert out.same_grid(scan) and out.dtype == scan.dtype
    header = unpack(lossless).header
    assert header["max_error"] == 0 and "target_ratio" not in header
    assert out.meta["dstd"]["max_error"] == 0


def test_bound_holds_and_a_looser_bound_costs_fewer_bytes(tiny_bundle, scan, lossless):
    coded = codec.encode(scan, tiny_bundle, max_error=3, device="cpu")
    error = np.abs(codec.decode(coded, tiny_bundle).array - scan.array)
    assert error.max() <= 3 and error.max() > 0  # lossy, and within the bound
    assert len(coded) < 0.8 * len(lossless)


def test_float_scans_need_a_positive_bound(tiny_bundle, scan):
    floats = scan.with_array(scan.array / 7.0, dtype="float32")
    with pytest.raises(InputError, match="lossless bound needs integer voxels"):
        codec.encode(floats, tiny_bundle, max_error=0, device="cpu")
    coded = codec.encode(floats, tiny_bundle, max_error=0.5, device="cpu")
    assert np.abs(codec.decode(coded, tiny_bundle).array - floats.array).max() <= 0.5 + 1e-4


def test_a_size_and_a_bound_are_not_both_accepted(tiny_bundle, scan):
    with pytest.raises(InputError, match="not both"):
        codec.encode(scan, tiny_bundle, ratio=20, max_error=1)
    with pytest.raises(InputError, match="maximum error must be a number"):
        codec.encode(scan, tiny_bundle, max_error=-1)


def test_damaged_residual_layers_only_raise_format_errors(tiny_bundle, lossless):
    parsed = unpack(lossless)
    section = parsed.sections["residual"]
    rng = random.Random(0)
    outcomes = {"decoded": 0, "refused": 0}

    def attempt(payload, header=None):
        data = pack(header or parsed.header, dict(parsed.sections, residual=payload))
        try:
            codec.decode(data, tiny_bundle)
            outcomes["decoded"] += 1
        except FormatError:
            outcomes["refused"] += 1

    for cut in (0, 1, 9, 10):  # inside the fixed fields: always refused
        attempt(section[:cut])
    assert outcomes["refused"] == 4
    for cut in (len(section) // 2, len(section) - 1):
        attempt(section[:cut])
    for _ in range(24):
        damaged = bytearray(section)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        attempt(bytes(damaged))
    attempt(section + b"\x00")
    with pytest.raises(FormatError, match="step does not match"):
        codec.decode(pack(dict(parsed.header, max_error=2), parsed.sections), tiny_bundle)
    with pytest.raises(FormatError, match="no valid max_error"):
        codec.decode(pack({k: v for k, v in parsed.header.items() if k != "max_error"}, parsed.sections), tiny_bundle)
    assert sum(outcomes.values()) == 31  # and no exception other than FormatError


def test_residual_coder_round_trips_with_escapes():
    rng = np.random.default_rng(0)
    base = rng.normal(100, 30, (9, 20, 30)).round()
    original = base + rng.normal(0, 4, base.shape).round()
    original[0, 0, :4] += np.array([3000, -3000, 70000, -1])  # far outside any alphabet
    for bound in (0, 2):
        step = residual.step_for(bound, integer=True)
        q = residual.quantise(original - base, bound, step)
        back = residual.decompress(residual.compress(q, base, step), base, step)
        np.testing.assert_array_equal(back, q)
        assert np.abs(base + residual.dequantise(back, step) - original).max() <= bound


def test_cli_encodes_with_a_bound_and_info_shows_it(tiny_bundle, scan, tmp_path, capsys):
    from deepstd.cli import main
    from deepstd.io import read, write

    source = write(scan, tmp_path / "scan.nrrd")
    dstd = tmp_path / "scan.dstd"
    assert main(["encode", str(source), str(dstd), "--bundle", str(tiny_bundle.path), "--max-error", "2"]) == 0
    assert "within ±2" in capsys.readouterr().out
    assert main(["info", str(dstd)]) == 0
    assert "every voxel within ±2 of the original" in capsys.readouterr().out
    restored = tmp_path / "restored.nii.gz"
    assert main(["decode", str(dstd), str(restored), "--bundle", str(tiny_bundle.path)]) == 0
    assert np.abs(read(restored).array - scan.array).max() <= 2
    with pytest.raises(SystemExit) as refused:  # argparse: mutually exclusive
        main(
            [
                "encode",
                str(source),
                str(tmp_path / "x.dstd"),
                "--bundle",
                str(tiny_bundle.path),
                "--ratio",
                "20",
                "--max-error",
                "1",
            ]
        )
    assert refused.value.code == 2 and not (tmp_path / "x.dstd").exists()
