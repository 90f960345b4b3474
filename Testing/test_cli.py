"""The CLI: real subprocesses, exit codes, one-line errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shared_data import data_path

import deepstd


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "deepstd.cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_help_and_version():
    result = run("--help")
    assert result.returncode == 0 and "info" in result.stdout and "convert" in result.stdout
    assert deepstd.__version__ in run("--version").stdout


def test_phantom_info_convert_round_trip(tmp_path):
    assert run("phantom", tmp_path / "p.nii.gz").returncode == 0
    info = run("info", tmp_path / "p.nii.gz")
    assert info.returncode == 0 and "96x80x40" in info.stdout and "HU" in info.stdout
    assert run("convert", tmp_path / "p.nii.gz", tmp_path / "p.nrrd").returncode == 0
    assert run("convert", tmp_path / "p.nrrd", tmp_path / "dicom").returncode == 0
    original, back = deepstd.read(tmp_path / "p.nii.gz"), deepstd.read(tmp_path / "dicom")
    np.testing.assert_array_equal(original.array, back.array)
    np.testing.assert_allclose(back.direction, original.direction, atol=1e-6)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.nii.gz", "no such file"),
        (lambda p: (p / "x.dstd").write_bytes(b"DSTD\x09\x00") and p / "x.dstd", "unsupported .dstd format version"),
        (lambda p: (p / "y.dstd").write_bytes(b"junk") and p / "y.dstd", "not a .dstd file"),
        (lambda p: (p / "z.nii.gz").write_bytes(b"\x1f\x8b\x08junk") and p / "z.nii.gz", "cannot read image"),
    ],
)
def test_bad_input_is_one_line_nonzero_no_traceback(tmp_path, make, message):
    result = run("info", make(tmp_path))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_info_says_what_a_file_codes_the_scan_with():
    """A layer coded with slice motion says so (refine section 6); one without does not."""
    corpus = Path(__file__).parent / "fuzz_corpus"
    moved, plain = (run("info", corpus / name) for name in ("refine_moved.dstd", "refine_filtered.dstd"))
    assert moved.returncode == plain.returncode == 0
    assert "coded:     with the refinement layer alone (a 3-D wavelet coder with slice motion;" in moved.stdout
    assert "the refinement layer alone and a post-filter (a 3-D wavelet coder;" in plain.stdout


def test_debug_shows_traceback(tmp_path):
    result = run("--debug", "info", tmp_path / "missing.nii.gz")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_failed_convert_leaves_no_output(tmp_path):
    result = run("convert", tmp_path / "missing.nii.gz", tmp_path / "out.nrrd")
    assert result.returncode == 2 and list(tmp_path.iterdir()) == []


def test_info_on_real_dicom_folder_lists_series():
    result = run("info", data_path("dicom_edge/multi_series"))
    assert result.returncode == 0
    assert "2 DICOM series" in result.stdout and "B40f" in result.stdout and "B70f" in result.stdout
    chest = run("info", data_path("ct/chest_ct_dicom"))
    assert "512x512x64" in chest.stdout and "0.8418 x 0.8418 x 5" in chest.stdout and "HU" in chest.stdout
