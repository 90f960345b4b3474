"""The template as decoder-side context: exact resampling, exact integer entropy parameters, and
a codec whose entropy model reads the template decoding bit-exactly (and only with the same template)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from deepstd.alignment import texture_frame
from deepstd.errors import FormatError
from deepstd.grid import Frame, sampling
from deepstd.texture import TextureCodec, TextureConfig
from deepstd.texture.context import SIDE_BITS, side_for
from deepstd.texture.entropy import LOG_BITS, _exp_table, compress_latents, decompress_hyper, decompress_latents
from deepstd.volume import Volume

CONTEXT = TextureConfig(channels=8, latent=8, hyper=8, levels=3, pos_dim=4, context=8, context_range=(100.0, 300.0))

pytestmark = pytest.mark.usefixtures("one_thread")


def smooth(shape, seed):
    from scipy import ndimage

    v = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 2.0, mode="wrap")
    return ((v - v.min()) / (v.max() - v.min())).astype(np.float32)


@pytest.fixture(scope="module")
def template():
    """A 'template' in scanner units (lo 100, hi 300 map to 0 and 1), oblique, anisotropic."""
    direction = tuple(np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0].ravel())
    return Volume(100 + 200 * smooth((11, 13, 17), 1), (1.5, 1.0, 2.0), (5.0, -3.0, 7.0), direction)


@pytest.fixture(scope="module")
def codec():
    """An untrained context codec whose template heads are not zero (a fresh one ignores the template)."""
    torch.manual_seed(2)
    from deepstd.texture.network import TextureNet

    net = TextureNet(CONTEXT)
    with torch.no_grad():
        for head in (net.context.to_means, net.context.to_scales):
            head.weight.normal_(0, 3.0)
            head.bias.normal_(0, 0.3)
    net.update()
    return TextureCodec(net)


FRAMES = {
    "padded": ((2, 1, 3), None, None),
    "refined": ((2, 1, 3), (40, 22, 30), None),
    "refined and cut": ((2, 1, 3), (40, 22, 30), ((3, 2, 4), (31, 20, 27))),
}


@pytest.mark.parametrize("name", FRAMES)
def test_side_is_the_template_resampled_linearly(template, name):
    """Exact integer resampling = trilinear interpolation of the template on the coded frame (the
    float warp every other part of DeepSTD uses), within one 2**-SIDE_BITS step: half a step from
    rounding the template's values, half from rounding the interpolated one."""
    margin, size, window = FRAMES[name]
    frame, _ = texture_frame(Frame.of(template), list(margin), size)
    if window is not None:
        frame = frame.window(*window)
    side = side_for(CONTEXT, template, margin, size, window, frame.shape_zyx)
    exact = side.whole()
    assert exact.dtype == np.int64
    unit = template.with_array((template.array - 100) / 200)
    reference = sampling.warp(unit, np.zeros(frame.shape_zyx + (3,), np.float32), frame, "linear", np.nan).array
    inside = ~np.isnan(reference)
    assert inside.mean() > 0.3
    assert np.abs(exact[inside] / 2**SIDE_BITS - reference[inside]).max() < 1.0 / 2**SIDE_BITS + 1e-5


def test_side_blocks_are_cut_from_the_whole_frame_and_edge_padded(template):
    margin, size, window = FRAMES["refined and cut"]
    shape = (23, 18, 28)
    side = side_for(CONTEXT, template, margin, size, window, shape)
    whole = side.whole()
    padded = np.pad(whole, [(0, 32 - 23), (0, 32 - 18), (0, 32 - 28)], mode="edge")
    for origin in [(0, 0, 0), (16, 0, 16), (16, 16, 16)]:
        cut = padded[origin[0] : origin[0] + 16, origin[1] : origin[1] + 16, origin[2] : origin[2] + 16]
        assert np.array_equal(side.block(origin, (16, 16, 16)), cut)


def test_exp_table_is_exp_at_every_step():
    table = _exp_table(8.0)
    k = np.arange(-8 * 2**LOG_BITS, 8 * 2**LOG_BITS + 1)
    assert np.allclose(table, np.exp(k / 2**LOG_BITS), rtol=1e-10, atol=0)


def _side_blocks(template, shape):
    return side_for(CONTEXT, template, (2, 1, 3), None, None, shape)


def test_integer_context_parameters_are_exact_and_close_to_float(codec, template):
    side = _side_blocks(template, (16, 15, 23)).blocks([(0, 0, 0)], (16, 16, 16))
    gen = torch.Generator().manual_seed(0)
    z_hat = torch.round(torch.randn(1, CONTEXT.hyper, 1, 1, 1, generator=gen) * 3)
    level = codec.net.gain.level_of(40000)
    context = (codec._params.context(side), codec._params.fixed_gain(level))
    scales, means = codec._params(z_hat, context)
    assert torch.equal(means * 256, torch.round(means * 256))
    again = codec._params(z_hat, (codec._params.context(side.copy()), codec._params.fixed_gain(level)))
    assert torch.equal(scales, again[0]) and torch.equal(means, again[1])
    with torch.no_grad():
        gain = codec.net.gain.gain(level.float())
        f_scales, f_means = codec.net.entropy_parameters(z_hat, torch.from_numpy(side / 256).float(), gain)
    plain = codec.net.h_s(z_hat).chunk(2, 1)
    assert float((means - f_means).abs().max()) < 0.05
    assert float((scales.float() - f_scales).abs().max()) < 0.02
    assert float((f_means - plain[1]).abs().max()) > 0.2  # the template does move the means


def test_decoder_finds_the_encoders_latents_with_the_template(codec, template):
    side = _side_blocks(template, (16, 15, 23)).blocks([(0, 0, 0)], (16, 16, 16))
    x = torch.from_numpy(smooth((16, 16, 16), 4))[None, None]
    y = codec.net.g_a(x).detach() * 1.7
    level = codec.net.gain.level_of(30000)
    context = (codec._params.context(side), codec._params.fixed_gain(level))
    z_s, y_s = compress_latents(codec.net, codec._params, y, context)
    y_hat = decompress_latents(codec.net, codec._params, z_s, y_s, y.shape[2:], context)
    means = codec._params(decompress_hyper(codec.net, z_s, [1, 1, 1]), context)[1]
    assert torch.equal(y_hat, torch.round(y - means) + means)


DECODE_SCRIPT = """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from deepstd.texture import TextureCodec
from deepstd.texture.context import TemplateSide, axis_maps
codec = TextureCodec.load(sys.argv[1])
saved = np.load(sys.argv[2] + ".side.npz")
side = TemplateSide(saved["values"], axis_maps(saved["size"], saved["margin"]), tuple(saved["shape"]))
np.save(sys.argv[2] + ".npy", codec.decompress(open(sys.argv[2], "rb").read(), side=side))
"""


def test_context_codec_decodes_bit_exactly_and_only_with_its_template(codec, template, tmp_path):
    shape = (24, 18, 28)
    volume = smooth(shape, 5)
    side = _side_blocks(template, shape)
    data = codec.compress(volume, 0.7, block=16, side=side).to_bytes()
    out = codec.decompress(data, side=side)
    assert out.shape == shape
    assert np.array_equal(out, codec.decompress(data, workers=3, side=side))
    box = ((3, 5, 7), (20, 17, 25))
    part = codec.decompress(data, side=side, box=box)
    assert np.array_equal(part, out[3:20, 5:17, 7:25])
    weights, stream = tmp_path / "w.safetensors", tmp_path / "s.bin"
    codec.save(weights)
    stream.write_bytes(data)
    np.savez(str(stream) + ".side.npz", values=side.values, size=np.array(template.size), margin=[2, 1, 3], shape=shape)
    for n in (1, 2):
        subprocess.run(
            [sys.executable, "-c", DECODE_SCRIPT, str(weights), str(stream), str(n)], check=True, timeout=120
        )
        assert np.array_equal(np.load(str(stream) + ".npy"), out)
    with pytest.raises(ValueError, match="reads the template"):
        codec.decompress(data)
    other = side_for(CONTEXT, template.with_array(template.array[::-1].copy()), (2, 1, 3), None, None, shape)
    try:
        wrong = codec.decompress(data, side=other)
    except FormatError:
        return  # the entropy coder noticed
    assert not np.array_equal(wrong, out)


def test_context_weights_round_trip_with_their_config(codec):
    again = TextureCodec.from_bytes(codec.to_bytes())
    assert again.config == CONTEXT and again.config.context_range == (100.0, 300.0)
    assert again._params.reads_template
    # a network without a template context states none: its weights keep the bytes they had before
    assert "context" not in TextureConfig().to_dict() and "context_range" not in TextureConfig().to_dict()


@pytest.mark.parametrize(
    "bad", [{"context": -1}, {"context": 65}, {"context_range": [1.0, 1.0]}, {"context_range": [0, float("nan")]},
            {"context_range": "0,1"}, {"context_range": [0, 1, 2]}]
)  # fmt: skip
def test_a_bad_context_config_is_refused(bad):
    with pytest.raises(ValueError, match="context"):
        TextureConfig.from_dict(bad)


def _tampered(codec, **edits):
    """The codec's weights with tensors replaced (name -> tensor) or dropped (name -> None)."""
    from safetensors.torch import save

    from deepstd.texture.codec import _st_metadata

    data = codec.to_bytes()
    state = {k: v.clone() for k, v in codec.net.state_dict().items()}
    for name, value in edits.items():
        name = name.replace("__", ".")
        if value is None:
            del state[name]
        else:
            state[name] = value
    return save(state, metadata=_st_metadata(data))


@pytest.mark.parametrize(
    "edit",
    [
        {"context__to_means__weight": None},  # a config that reads the template, weights that do not
        {"context__branch__0__weight": torch.full((16, 1, 3, 3, 3), 2e4)},  # implausibly large
        {"context__to_scales__bias": torch.full((8,), float("nan"))},
    ],
    ids=["missing", "huge", "nan"],
)
def test_tampered_context_weights_are_a_bundle_error(codec, edit):
    from deepstd.errors import BundleError

    with pytest.raises(BundleError):
        TextureCodec.from_bytes(_tampered(codec, **edit))
