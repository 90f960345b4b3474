"""Hostile input, one regression test per reproducer the reliability pass found: each one used to
escape as something other than a DeepSTDError (or crash the process, or try to allocate tens of
GB); now each is a clear FormatError / BundleError / BudgetError before any large allocation."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from deepstd import codec
from deepstd.bundle import from_bytes
from deepstd.container import pack, unpack
from deepstd.errors import BudgetError, BundleError, FormatError
from deepstd.packing import Packer
from deepstd.shape.code import _HEAD, decode_shape

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def coded(tiny_bundle, scan):
    return codec.encode(scan, tiny_bundle, ratio=24, device="cpu", require_texture=True)


def _with_header(data: bytes, **changes) -> bytes:
    parsed = unpack(data)
    return pack(dict(parsed.header, **changes), parsed.sections)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"bundle": "tiny"}, "bundle entry"),  # was AttributeError at codec.py:203
        ({"codec": "x"}, "codec entry"),  # was AttributeError at codec.py:407
        ({"keep": [1]}, "keep entry"),  # was AttributeError at codec.py:461
        ({"warnings": "w"}, "warnings"),  # was TypeError at codec.py:466
    ],
)
def test_header_entries_of_the_wrong_type_are_format_errors(tiny_bundle, coded, changes, message):
    with pytest.raises(FormatError, match=message):
        codec.decode(_with_header(coded, **changes), tiny_bundle)


def test_a_tiny_file_declaring_gigavoxels_is_refused_before_allocating(tiny_bundle, coded):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for size in ([2048, 2048, 2048], [65536, 65536, 2]):  # was a 0.5-96 GiB allocation in shape/field.py
        header = unpack(coded).header
        bad = _with_header(coded, geometry=dict(header["geometry"], size=size))
        with pytest.raises(FormatError, match="not a DeepSTD file"):
            codec.decode(bad, tiny_bundle)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB: nothing large was allocated


def _shape_code(width=8, depth=2, omega=12.0, flags=8) -> bytes:
    return _HEAD.pack(b"SC", 1, 8, depth, flags, width, omega)


@pytest.mark.parametrize(
    "code, message",
    [
        (_shape_code(omega=0.0), "omega"),  # was ZeroDivisionError in shape/siren.py
        (_shape_code(omega=-3.0), "omega"),  # was RuntimeError in shape/siren.py
        (_shape_code(omega=float("inf")), "omega"),
        (_shape_code(width=4000, depth=16, flags=0), "network size"),  # a 256M-parameter network
        (_shape_code(flags=2 | 4), "flags"),
        (_shape_code(flags=2 | 8) + struct.pack("<3f", float("nan"), 0, 0), "pre-alignment"),
        (_shape_code(flags=4 | 8) + np.zeros(12, "<f4").tobytes(), "pre-alignment"),  # singular: not invertible
    ],
)
def test_shape_code_parameters_are_range_checked(code, message):
    with pytest.raises(FormatError, match=message):
        decode_shape(code)


def test_a_deflated_shape_code_cannot_inflate_beyond_its_network():
    import zlib

    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = bomb.compress(bytes(50_000_000)) + bomb.flush()  # 50 MB of zeros in ~50 kB
    with pytest.raises(FormatError, match="longer than the network"):
        decode_shape(_shape_code(flags=1) + payload)


def test_a_residual_band_with_an_impossible_lowest_symbol_is_a_format_error():
    from deepstd import residual

    section = Packer().uint(residual.VERSION).float64(5.0).uint(4)
    for edge in (1.0, 2.0, 3.0):
        section.float64(edge)
    for _ in range(4):  # was a TypeError whose message held the whole 4 MB buffer
        section.sint(2**31).uint(1).uint(1).uint(1)
    data = section.blobs([b"\0" * 8]).bytes()
    with pytest.raises(FormatError, match="lowest symbol") as caught:
        residual.decompress(data, np.zeros((4, 4, 4), np.float32), 5.0)
    assert len(str(caught.value)) < 200


def test_an_absurd_ratio_is_a_budget_error(tiny_bundle, scan):
    with pytest.raises(BudgetError, match="leaves no byte"):  # was ZeroDivisionError in the message
        codec.encode(scan, tiny_bundle, ratio=1e9, device="cpu", require_texture=True)


def _rezip(bundle_bytes: bytes, **replace) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(bundle_bytes))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info in source.infolist():
            archive.writestr(info.filename, replace.get(info.filename, source.read(info.filename)))
    return out.getvalue()


def test_bundle_settings_are_range_checked(tiny_bundle):
    data = tiny_bundle.path.read_bytes()
    config = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("config.json"))
    for key, value in (("width", 100000), ("depth", 0), ("prealignment", "warp"), ("downsample", -1)):
        bad = dict(config, registration=dict(config.get("registration", {}), **{key: value}))
        with pytest.raises(BundleError, match=f"registration.{key}"):
            from_bytes(_rezip(data, **{"config.json": json.dumps(bad)}))
    with pytest.raises(BundleError, match="texture.block"):
        from_bytes(_rezip(data, **{"config.json": json.dumps(dict(config, texture={"block": 7}))}))


ZEROED_BUNDLE = """
import sys
from safetensors.torch import load, save
from deepstd.bundle import from_bytes
from deepstd.texture.codec import _st_metadata
from deepstd.errors import BundleError
texture = open(sys.argv[1], "rb").read()
state = {k: v.zero_() if k.endswith("_quantized_cdf") or k.endswith("_cdf_length") or v.is_floating_point() else v
         for k, v in load(texture).items()}
zeroed = save(state, metadata=_st_metadata(texture))
from deepstd.texture import TextureCodec
try:
    TextureCodec.from_bytes(zeroed)
except BundleError as exc:
    print("refused:", exc)
"""


def test_a_bundle_with_zeroed_texture_tables_is_refused_not_a_crash(tiny_bundle, tmp_path):
    """Used to segfault in CompressAI's rANS decoder; run in a child so a crash fails only this test."""
    weights = tmp_path / "texture.safetensors"
    weights.write_bytes(tiny_bundle.texture)
    run = subprocess.run(
        [sys.executable, "-c", ZEROED_BUNDLE, str(weights)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "refused:" in run.stdout and ("NaN" in run.stdout or "CDF" in run.stdout or "scale" in run.stdout)


def _nifti_header(size) -> bytes:
    """A NIfTI-1 header (int16) declaring `size` voxels, with no voxel data after it."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, *size, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 4, 16)  # datatype int16, bitpix
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset
    header[344:348] = b"n+1\0"
    return bytes(header)


def test_a_bundle_template_declaring_a_huge_grid_is_refused_from_its_header(tiny_bundle):
    import gzip

    data = tiny_bundle.path.read_bytes()
    huge = gzip.compress(_nifti_header((2048, 2048, 2048)))  # 17 GB of voxels declared in ~100 bytes
    with pytest.raises(BundleError, match="not a plausible 3-D template"):
        from_bytes(_rezip(data, **{"template.nii.gz": huge}))


def test_a_texture_block_larger_than_the_bundle_codes_is_refused(tiny_bundle, coded):
    from deepstd.texture import TextureStreams

    parsed = unpack(coded)
    streams = TextureStreams.from_bytes(parsed.sections["texture"])
    shape = tuple(streams.shape)
    whole = tuple(-(-n // 16) * 16 for n in shape)  # one block holding the frame: a huge network pass
    crafted = TextureStreams(shape, whole, True, streams.rate_q, streams.fill, [False], [], [])
    sections = dict(parsed.sections, texture=crafted.to_bytes())
    with pytest.raises(FormatError, match="larger than this bundle codes"):
        codec.decode(pack(parsed.header, sections), tiny_bundle)
