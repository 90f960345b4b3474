"""Texture codec: streams, bit-exact decoding, rate knob, block mode, corrupt input, weights."""
from __future__ import annotations

import json
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from deepstd.errors import BudgetError, BundleError, Cancelled, FormatError
from deepstd.progress import CancelEvent
from deepstd.texture import TextureCodec, TextureConfig, TextureStreams
from deepstd.texture.entropy import compress_latents, decompress_latents

TINY = TextureConfig(channels=8, latent=8, hyper=8, levels=3, pos_dim=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=shape)
    for axis in range(3):
        v = np.cumsum(v, axis=axis)
    v -= v.min()
    return (v / v.max()).astype(np.float32)


@pytest.fixture(scope="module")
def codec():
    return TextureCodec.untrained(TINY, seed=1)


@pytest.fixture(scope="module")
def volume():
    return smooth_volume((24, 40, 50))


@pytest.fixture(scope="module")
def coded(codec, volume):
    return codec.compress(volume, 0.6, block=16)


def test_streams_round_trip(codec, volume, coded):
    data = coded.to_bytes()
    back = TextureStreams.from_bytes(data)
    assert back == coded
    assert back.to_bytes() == data
    out = codec.decompress(data)
    assert out.shape == volume.shape and out.dtype == np.float32
    assert np.array_equal(out, codec.decompress(coded))


def test_decoder_reproduces_encoder_latents(codec, volume):
    """The integer hyper-synthesis gives the decoder exactly the encoder's means and indexes,
    so every decoded latent equals the encoder's quantised latent."""
    x = torch.from_numpy(volume[:16, :32, :32].copy())[None, None]
    y = codec.net.g_a(x).detach() * 1.7
    z_s, y_s = compress_latents(codec.net, codec._int_hs, y)
    y_hat = decompress_latents(codec.net, codec._int_hs, z_s, y_s, y.shape[2:])
    z_hat = codec.net.entropy_bottleneck.decompress(z_s, [s // 2 for s in y.shape[2:]])
    means = codec._int_hs(z_hat).chunk(2, 1)[1]
    assert torch.equal(y_hat, torch.round(y - means) + means)


DECODE_SCRIPT = """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from deepstd.texture import TextureCodec
codec = TextureCodec.load(sys.argv[1])
np.save(sys.argv[2] + ".npy", codec.decompress(open(sys.argv[2], "rb").read()))
"""


def test_bit_exact_decode_across_threads_and_processes(codec, volume, tmp_path):
    data = codec.compress(volume, 0.8, block=32).to_bytes()
    one = codec.decompress(data)
    try:
        torch.set_num_threads(2)
        two = codec.decompress(data)
    finally:
        torch.set_num_threads(1)
    assert np.array_equal(one, two)
    assert np.array_equal(one, codec.decompress(data, workers=3))
    weights, stream = tmp_path / "w.safetensors", tmp_path / "s.bin"
    codec.save(weights)
    stream.write_bytes(data)
    for n in (1, 2):
        subprocess.run([sys.executable, "-c", DECODE_SCRIPT, str(weights), str(stream), str(n)],
                       check=True, timeout=120)
        assert np.array_equal(np.load(str(stream) + ".npy"), one)


def test_bytes_grow_with_rate(codec, volume):
    sizes = [len(codec.compress(volume, r, block=32).to_bytes()) for r in (0, .25, .5, .75, 1)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] / 2, sizes


def test_block_mode_skips_blocks_outside_support(codec, volume):
    support = np.zeros(volume.shape, bool)
    support[2:10, 3:20, 30:45] = True       # touches blocks (0, 0..1, 1..2) of a 16³ grid
    s = codec.compress(volume, 0.5, block=16, support=support, fill=-1.0)
    assert len(s.coded) == 2 * 3 * 4 and sum(s.coded) == 4
    assert len(s.y_strings) == len(s.z_strings) == 4
    out = codec.decompress(TextureStreams.from_bytes(s.to_bytes()))
    assert out.shape == volume.shape
    assert np.all(out[16:] == -1.0) and np.all(out[:, :, :16] == -1.0)
    full = codec.compress(volume, 0.5, block=16)
    assert len(s.to_bytes()) < len(full.to_bytes())


def test_full_volume_mode_odd_shape(codec):
    v = smooth_volume((9, 21, 35), seed=3)
    s = codec.compress(v, 0.5, block=None)
    assert s.full and s.block == (16, 32, 48) and len(s.y_strings) == 1
    assert codec.decompress(s.to_bytes()).shape == v.shape


def _recrc(data: bytes) -> bytes:
    return data[:-4] + zlib.crc32(data[:-4]).to_bytes(4, "little")


def test_corrupt_streams_raise_format_error(codec, coded):
    data = coded.to_bytes()
    rng = np.random.default_rng(7)
    bad = [b"", b"DTXS", data[:-1], data[:30], data + b"\0", b"\0" * len(data)]
    for _ in range(20):                                   # random bit flips
        b = bytearray(data)
        b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
        bad.append(bytes(b))
    for field_at in (4, 5, 6, 10, 18):                    # version, flags, shape, block
        b = bytearray(data)
        b[field_at] ^= 0x40
        bad.append(_recrc(bytes(b)))
    for blob in bad:
        with pytest.raises(FormatError):
            codec.decompress(blob)
    # scrambled entropy-coded payload with a valid checksum: an error or an array, never a crash
    for _ in range(5):
        b = bytearray(data)
        start = len(b) - 4 - coded.payload_bytes()
        b[start:-4] = rng.integers(0, 256, len(b) - 4 - start, dtype=np.uint8).tobytes()
        try:
            out = codec.decompress(_recrc(bytes(b)))
            assert out.shape == coded.shape
        except FormatError:
            pass


def test_weights_round_trip_and_corruption(codec, coded):
    blob = codec.to_bytes()
    assert b"pickle" not in blob[:200]
    again = TextureCodec.from_bytes(blob)
    assert again.config == TINY
    assert np.array_equal(again.decompress(coded), codec.decompress(coded))
    meta_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + meta_len])
    assert "deepstd.texture.config" in header["__metadata__"]
    for broken in (blob[:100], blob[:-10], b"\xff" * 64):
        with pytest.raises(BundleError):
            TextureCodec.from_bytes(broken)


def test_progress_and_cancel(codec, volume):
    events = []
    codec.compress(volume, 0.5, block=16, progress=events.append)
    assert events and events[-1].fraction == 1.0 and events[-1].stage == "texture"
    token = CancelEvent()
    token.set()
    with pytest.raises(Cancelled):
        codec.compress(volume, 0.5, block=16, cancel=token)


def test_invalid_arguments(codec, volume):
    with pytest.raises(ValueError):
        codec.compress(volume, 0.5, block=20)
    with pytest.raises(ValueError):
        codec.compress(volume[0], 0.5)
    with pytest.raises(ValueError):
        codec.compress(volume, float("nan"))


def test_budget_search_fits_and_refuses(codec, volume):
    hi = len(codec.compress(volume, 1.0, block=32).to_bytes())
    lo = len(codec.compress(volume, 0.0, block=32).to_bytes())
    budget = (hi + lo) // 2
    s = codec.compress_to_budget(volume, budget, block=32)
    assert budget * 0.9 <= len(s.to_bytes()) <= budget
    assert codec.decompress(s).shape == volume.shape
    with pytest.raises(BudgetError):
        codec.compress_to_budget(volume, lo - 1, block=32)


def test_blocks_know_their_place_in_the_template(codec):
    """The same content at two places of the template gets different latents through the
    positional field, and (up to float noise) the same ones without it."""
    tile = smooth_volume((16, 16, 16), seed=5)
    vol = np.concatenate([tile, tile], axis=2)               # two identical 16³ blocks

    def latent_gap():
        y = codec.analyse(vol, block=16).latents[0]
        return float((y[0] - y[1]).abs().max())

    with_field = latent_gap()
    field = codec.net.pos.field.data.clone()
    try:
        codec.net.pos.field.data.zero_()
        assert with_field > 100 * latent_gap()
    finally:
        codec.net.pos.field.data.copy_(field)


def test_integer_hyper_synthesis_is_exact_and_close_to_float(codec):
    gen = torch.Generator().manual_seed(0)
    z_hat = torch.round(torch.randn(3, TINY.hyper, 2, 3, 4, generator=gen) * 3)
    hs = codec._int_hs
    full = hs(z_hat)
    assert torch.equal(full, torch.cat([hs(z_hat[i:i + 1]) for i in range(3)]))
    try:
        torch.set_num_threads(2)
        assert torch.equal(full, hs(z_hat))
    finally:
        torch.set_num_threads(1)
    assert torch.equal(full * 256, torch.round(full * 256))      # multiples of 2**-8
    with torch.no_grad():
        assert float((full - codec.net.h_s(z_hat)).abs().max()) < 0.05
