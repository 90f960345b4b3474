"""Entropy coding through constriction (`deepstd.rans`): exact integer tables, escapes, corrupt
strings, retired format versions, and coding with compressai blocked."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from deepstd import residual
from deepstd.errors import FormatError
from deepstd.packing import Packer
from deepstd.rans import CdfTable, cdf_of, quantised_frequencies
from deepstd.texture import TextureCodec, TextureStreams
from deepstd.texture import streams as texture_streams

pytestmark = pytest.mark.usefixtures("one_thread")
TESTING = Path(__file__).resolve().parent


def small_table() -> CdfTable:
    counts = [np.array([5, 50, 500, 50, 5, 1]), np.array([1, 1]), np.arange(300) % 17]
    cdfs = [cdf_of(quantised_frequencies(c)) for c in counts]
    rows = np.zeros((3, max(len(c) for c in cdfs)), np.int64)
    for r, c in enumerate(cdfs):
        rows[r, : len(c)] = c
    return CdfTable(rows, np.array([len(c) for c in cdfs]), np.array([-2, 0, -150]), "test", ValueError)


def symbols(n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(size=n) * 3).astype(np.int64)
    values[::97] = rng.integers(-(2**40), 2**40, values[::97].size)  # far outside every row: escapes
    return values, rng.integers(0, 3, n)


def test_quantised_frequencies_are_integers_that_sum_to_two_to_the_sixteen():
    for counts in (np.array([0, 0, 7]), np.array([10**12, 1, 0, 3]), np.ones(1025, np.int64)):
        freq = quantised_frequencies(counts)
        assert freq.dtype == np.int64 and freq.min() >= 1 and freq.sum() == 1 << 16
    with pytest.raises(ValueError):
        quantised_frequencies(np.array([0, 0]))


def test_round_trip_with_escapes_and_a_fixed_code():
    """Integer tables and integer rANS: the same bytes on every platform, so the hash is pinned
    (the input is integer arithmetic too, no random generator)."""
    table = small_table()
    i = np.arange(20_000, dtype=np.int64)
    values = (i * 7919) % 13 - (i * 104729) % 11  # peaked around 0
    values[::97] = (i[::97] * 2654435761) % (1 << 41) - (1 << 40)  # far outside every row: escapes
    rows = (i * i) % 3
    data = table.encode(values, rows)
    assert np.array_equal(table.decode(data, rows), values)
    assert hashlib.sha256(data).hexdigest() == "6cb781061958efc13bf87f4de0a91ceb9b6eebc06a6d4d0e9b847626b6672fad"


def test_rows_are_grouped_in_array_order_and_rows_outside_the_table_left_out():
    """A row's symbols go to the coder in array order (the string depends on it); a row past
    either end of the table belongs to no group, however far out (the 16-bit sort keys are clipped)."""
    rows = np.array([2, -1, 0, 2, 3, 0, 1, 70_000, 2, -(2**40)])
    groups = [(r, at.tolist()) for r, at in small_table()._groups(rows)]
    assert groups == [(0, [2, 5]), (1, [6]), (2, [0, 3, 8])]


def test_corrupt_strings_raise_format_error_only():
    table = small_table()
    values, rows = symbols(3000, seed=1)
    data = table.encode(values, rows)
    rng = np.random.default_rng(2)
    refused = 0
    for i in range(300):
        bad = bytearray(data)
        if i % 3 == 0:
            bad[rng.integers(len(bad))] ^= 1 << int(rng.integers(8))
        elif i % 3 == 1:
            bad = bad[: int(rng.integers(0, len(bad)))]
        else:
            bad = bytearray(rng.integers(0, 256, len(bad), dtype=np.uint8).tobytes())
        try:
            assert table.decode(bytes(bad), rows).shape == values.shape
        except FormatError:
            refused += 1
    assert refused > 250  # a valid string must leave the coder exactly empty: most damage shows


def test_texture_and_residual_refuse_the_retired_compressai_versions(tmp_path):
    codec = TextureCodec.untrained(seed=0)
    data = bytearray(codec.compress(np.zeros((16, 16, 16), np.float32), 0.5, block=None).to_bytes())
    assert data[4] == texture_streams.VERSION == 2
    data[4] = 1
    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "little")
    with pytest.raises(FormatError, match="version 1 .*CompressAI.*0.1.0.*re-encode"):
        TextureStreams.from_bytes(bytes(data))
    section = Packer().uint(1).float64(5.0).uint(4).bytes()
    with pytest.raises(FormatError, match="version 1 .*CompressAI.*0.1.0.*re-encode"):
        residual.decompress(section, np.zeros((4, 4, 4), np.float32), 5.0)


NO_COMPRESSAI = textwrap.dedent(
    """
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "compressai" or name.startswith("compressai."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)")

    sys.meta_path.insert(0, Block())
    import numpy as np, torch
    torch.set_num_threads(1)
    from deepstd import residual
    from deepstd.codec import decode, encode
    from deepstd.texture import TextureCodec
    sys.path.insert(0, sys.argv[1])
    from codec_helpers import blob_volume

    texture = TextureCodec.load(sys.argv[2])
    volume = np.load(sys.argv[3])
    data = texture.compress(volume, 0.6, block=16).to_bytes()
    open(sys.argv[4], "wb").write(data)
    np.save(sys.argv[4] + ".npy", texture.decompress(data))
    scan = blob_volume((30, 26, 14), (1.1, 0.9, 2.7), seed=3)
    coded = encode(scan, sys.argv[5], device="cpu", max_error=3)
    back = decode(coded, sys.argv[5], device="cpu")
    assert np.abs(back.array.astype(np.float64) - scan.array).max() <= 3
    assert not any(m == "compressai" or m.startswith("compressai.") for m in sys.modules)
    print("coded without compressai", len(data), len(coded))
    """
)


@pytest.mark.slow
def test_encode_and_decode_need_no_compressai(tmp_path, tiny_bundle):
    """In a process where every compressai import fails: load a codec, code a texture and a whole
    scan (max-error layer too), and get the bytes and values this process gets."""
    codec = TextureCodec.untrained(seed=1)
    weights, volume, out = tmp_path / "w.safetensors", tmp_path / "v.npy", tmp_path / "s.bin"
    codec.save(weights)
    x = np.random.default_rng(0).random((20, 24, 30)).astype(np.float32)
    np.save(volume, x)
    script = [sys.executable, "-c", NO_COMPRESSAI, str(TESTING), str(weights), str(volume), str(out)]
    run = subprocess.run(script + [str(tiny_bundle.path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "coded without compressai" in run.stdout
    data = codec.compress(x, 0.6, block=16).to_bytes()
    assert out.read_bytes() == data
    assert np.array_equal(np.load(str(out) + ".npy"), codec.decompress(data))
