"""Texture codec: streams, bit-exact decoding, rate knob, block mode, corrupt input, weights."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from scipy import ndimage

from deepstd.bundle import load_bundle
from deepstd.errors import BudgetError, BundleError, Cancelled, FormatError
from deepstd.progress import CancelEvent
from deepstd.texture import TextureCodec, TextureConfig, TextureStreams
from deepstd.texture.entropy import compress_latents, decompress_hyper, decompress_latents

TINY = TextureConfig(channels=8, latent=8, hyper=8, levels=3, pos_dim=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=shape)
    for axis in range(3):
        v = np.cumsum(v, axis=axis)
    v -= v.min()
    return (v / v.max()).astype(np.float32)


def structured_volume(shape, seed=0, sigma=2.5):
    """Blurred noise in 0..1: blob-like structure at every place, unlike any shifted/flipped copy."""
    v = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma, mode="wrap")
    return ((v - v.min()) / (v.max() - v.min())).astype(np.float32)


def psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def trained():
    """The shipped la-mr texture codec (trained weights: decodes close to its input)."""
    return TextureCodec.from_bytes(load_bundle("la-mr").texture)


@pytest.fixture(scope="module")
def structured():
    return structured_volume((40, 32, 48))  # 3 x 2 x 3 blocks of 16, the last z block partial


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
    z_s, y_s = compress_latents(codec.net, codec._params, y)
    y_hat = decompress_latents(codec.net, codec._params, z_s, y_s, y.shape[2:])
    z_hat = decompress_hyper(codec.net, z_s, [s // 2 for s in y.shape[2:]])
    means = codec._params(z_hat)[1]
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
        subprocess.run(
            [sys.executable, "-c", DECODE_SCRIPT, str(weights), str(stream), str(n)], check=True, timeout=120
        )
        assert np.array_equal(np.load(str(stream) + ".npy"), one)


def test_bytes_grow_with_rate(codec, volume):
    sizes = [len(codec.compress(volume, r, block=32).to_bytes()) for r in (0, 0.25, 0.5, 0.75, 1)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] / 2, sizes


def test_block_mode_skips_blocks_outside_support(codec, volume):
    support = np.zeros(volume.shape, bool)
    support[2:10, 3:20, 30:45] = True  # touches blocks (0, 0..1, 1..2) of a 16³ grid
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
    for _ in range(20):  # random bit flips
        b = bytearray(data)
        b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
        bad.append(bytes(b))
    for field_at in (4, 5, 6, 10, 18):  # version, flags, shape, block
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
    header = json.loads(blob[8 : 8 + meta_len])
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
    vol = np.concatenate([tile, tile], axis=2)  # two identical 16³ blocks

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
    hs = lambda z: torch.cat(codec._params(z), 1)  # noqa: E731
    full = hs(z_hat)
    assert torch.equal(full, torch.cat([hs(z_hat[i : i + 1]) for i in range(3)]))
    try:
        torch.set_num_threads(2)
        assert torch.equal(full, hs(z_hat))
    finally:
        torch.set_num_threads(1)
    assert torch.equal(full * 256, torch.round(full * 256))  # multiples of 2**-8
    with torch.no_grad():
        assert float((full - torch.cat(codec.net.entropy_parameters(z_hat), 1)).abs().max()) < 0.05


# --- decoded values ---------------------------------------------------------------------------
def test_trained_codec_decodes_close_to_the_input_in_every_block(trained, structured):
    """Blurred noise (what a constant, a zero, a flipped/transposed or a block-shuffled decode
    reaches: <= 20 dB) comes back at >= 27 dB, and every 16-voxel block at >= 25 dB."""
    v = structured
    out = trained.decompress(trained.compress(v, 1.0, block=16).to_bytes())
    assert out.shape == v.shape and out.dtype == np.float32 and np.all(np.isfinite(out))
    assert psnr(out, v) >= 27.0 and float(np.abs(out - v).mean()) < 0.03
    for z in range(0, v.shape[0], 16):
        for y in range(0, v.shape[1], 16):
            for x in range(0, v.shape[2], 16):
                part = (slice(z, z + 16), slice(y, y + 16), slice(x, x + 16))
                assert psnr(out[part], v[part]) >= 25.0, (z, y, x)
    assert psnr(np.full_like(v, v.mean()), v) < 20 and psnr(v[::-1], v) < 20  # the bar is not trivial


def test_trained_codec_quality_follows_the_rate(trained, structured):
    from deepstd.texture.rate import EXTRAPOLATED_LEVELS

    levels = trained.net.gain.levels
    coarsest_trained = EXTRAPOLATED_LEVELS / (levels - 1 + EXTRAPOLATED_LEVELS)  # rate of level 0
    low_streams = trained.compress(structured, coarsest_trained, block=32)
    low = trained.decompress(low_streams)
    high = trained.decompress(trained.compress(structured, 1.0, block=32))
    assert psnr(high, structured) >= psnr(low, structured) + 5.0
    assert np.corrcoef(low.ravel(), structured.ravel())[0, 1] > 0.5  # coarse, but the same picture
    # rate 0 lies below the coarsest trained level (gains extrapolated): fewer bytes still
    assert trained.compress(structured, 0.0, block=32).payload_bytes() < low_streams.payload_bytes()


def test_whole_volume_mode_decodes_close_to_the_input(trained):
    v = structured_volume((20, 27, 33), seed=4)  # padded to 32 x 32 x 48, cropped back
    s = trained.compress(v, 1.0, block=None)
    assert s.full
    out = trained.decompress(s)
    assert out.shape == v.shape and psnr(out, v) >= 25.0


@pytest.fixture(scope="module")
def sparse_streams(trained, structured):
    """Blocks of 16 with a support that leaves some of them uncoded (decoded as the fill value)."""
    support = np.zeros(structured.shape, bool)
    support[3:30, 2:14, 5:40] = True  # z blocks 0-1, y block 0, x blocks 0-2
    return trained.compress(structured, 0.7, block=16, support=support, fill=-0.5)


@pytest.mark.parametrize(
    "box",
    [
        ((0, 0, 0), (40, 32, 48)),
        ((5, 7, 9), (29, 23, 41)),
        ((15, 15, 15), (17, 17, 17)),
        ((39, 31, 47), (40, 32, 48)),
        ((0, 0, 0), (1, 1, 1)),
        ((33, 0, 40), (40, 32, 48)),
        ((0, 20, 0), (40, 32, 48)),
        ((10, 3, 0), (11, 4, 48)),
        ((2, 2, 40), (6, 6, 44)),
        ((20, 2, 40), (22, 4, 46)),
    ],
)  # one block, mid-group
def test_box_decode_equals_the_crop_of_a_full_decode(trained, sparse_streams, box):
    full = trained.decompress(sparse_streams)
    (z0, y0, x0), (z1, y1, x1) = box
    part = trained.decompress(sparse_streams.to_bytes(), box=box)
    assert part.dtype == np.float32
    assert np.array_equal(part, full[z0:z1, y0:y1, x0:x1])


def test_box_decode_skips_uncoded_blocks_and_refuses_bad_boxes(trained, sparse_streams, structured):
    full = trained.decompress(sparse_streams)
    assert np.all(full[32:] == -0.5) and np.all(full[:, 16:] == -0.5)  # blocks outside the support
    inside = (slice(3, 30), slice(2, 14), slice(5, 40))
    assert psnr(full[inside], structured[inside]) >= 25.0  # the data inside it
    assert np.array_equal(
        trained.decompress(sparse_streams, box=((32, 16, 0), (40, 32, 48))), np.full((8, 16, 48), -0.5, np.float32)
    )  # a box of uncoded blocks only
    for box in (((0, 0, 0), (41, 32, 48)), ((5, 5, 5), (5, 6, 6)), ((-1, 0, 0), (4, 4, 4))):
        with pytest.raises(ValueError):
            trained.decompress(sparse_streams, box=box)


def test_decode_and_encode_are_deterministic(trained, structured):
    data = trained.compress(structured, 0.5, block=16).to_bytes()
    assert trained.compress(structured, 0.5, block=16).to_bytes() == data
    first = trained.decompress(data)
    again = TextureCodec.from_bytes(load_bundle("la-mr").texture)  # a fresh instance of the weights
    assert np.array_equal(first, trained.decompress(data))
    assert np.array_equal(first, again.decompress(data))
    assert np.array_equal(first, trained.decompress(TextureStreams.from_bytes(data), workers=2))


# --- encoder-side latent search ---------------------------------------------------------------
def test_latent_search_lowers_the_real_rate_distortion_cost(trained, structured, monkeypatch):
    """The searched latents, coded and decoded by the unchanged codec, cost less than the analysis
    transform's own in the codec's training objective (bits per voxel + λ·MSE, real bytes)."""
    from deepstd.texture import latent_search
    from deepstd.texture.latent_search import lambda_at, search_latents, trained_lambdas

    bundle = load_bundle("la-mr")
    lambdas = trained_lambdas(bundle.config.training, trained.config.levels)
    rate = 0.5
    analysis = trained.analyse(structured, 16)
    searched = search_latents(trained, analysis, structured, np.ones(structured.shape, bool), rate, lambdas)
    assert [a.shape for a in searched.latents] == [a.shape for a in analysis.latents]
    assert not all(torch.equal(a, b) for a, b in zip(searched.latents, analysis.latents))
    lam = lambda_at(lambdas, float(trained.net.gain.level_of(round(rate * 65535))))

    def cost(a):
        streams = trained.code(a, rate)
        mse = float(np.mean((trained.decompress(streams.to_bytes()) - structured) ** 2))
        return 8 * len(streams.to_bytes()) / structured.size + lam * mse

    assert cost(searched) < cost(analysis)
    # whole-volume mode (small crops: one frame, one block) is searched too; whether that pays on a
    # given volume is the encoder's check (effort 2 keeps the closer file), so only that it codes
    whole = trained.analyse(structured, None)
    rounded = latent_search._rounded
    calls = []
    monkeypatch.setattr(latent_search, "_rounded", lambda v: calls.append(1) or rounded(v))
    with torch.no_grad():  # the search needs no grad mode from its caller
        moved = search_latents(trained, whole, structured, np.ones(structured.shape, bool), rate, lambdas)
    assert whole.full and not torch.equal(moved.latents[0], whole.latents[0])
    assert trained.decompress(trained.code(moved, rate).to_bytes()).shape == structured.shape
    assert len(calls) == 2 * latent_search.ONE_BLOCK_STEPS  # one block: the longer search (z and y each step)


def test_lambdas_come_from_the_bundle_or_not_at_all():
    from deepstd.texture.latent_search import lambda_at, trained_lambdas

    assert trained_lambdas({"train_settings": {"lambdas": [1, 4, 16]}}, 3) == [1.0, 4.0, 16.0]
    for training in (None, {}, {"train_settings": {"lambdas": [1, 4]}}, {"train_settings": {"lambdas": [1, -4, 16]}},
                     {"train_settings": {"lambdas": [1, True, 16]}}, {"train_settings": "x"}):  # fmt: skip
        assert trained_lambdas(training, 3) is None
    assert lambda_at([1, 4, 16], 1.0) == pytest.approx(4.0)
    assert lambda_at([1, 4, 16], 0.5) == pytest.approx(2.0)  # geometric between levels
    assert lambda_at([1, 4, 16], -1.0) == pytest.approx(0.25)  # continued below level 0
