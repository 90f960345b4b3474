"""Entropy coding of the latents with bit-exact entropy parameters.

The decoder must find exactly the scale indexes and means the encoder used, or rANS decoding
derails. Floating-point convolutions differ between thread counts, processes and devices, so the
hyper-synthesis `h_s` is run here in integer fixed point: weights, biases and activations are
integers (carried in float64, where every product and partial sum stays far below 2**53 and is
therefore exact in any summation order), requantised by flooring after each convolution. Means
and scales come out as multiples of 2**-ACT_BITS, which float32 holds exactly, so CompressAI's
index lookup is exact too. The CDF tables are built once when weights are saved and loaded
verbatim (`TextureNet.update`).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BundleError, FormatError
from .layers import PixelShuffle3d

#: fractional bits of activations, and at most of weights, in the integer hyper-synthesis
ACT_BITS = 8
WEIGHT_BITS = 14
#: magnitude limits that keep every accumulation exact in float64 (see module docstring)
ACT_LIMIT = 2.0**21
WEIGHT_LIMIT = 2.0**17
#: decoded symbols beyond this are corrupt data, not latents
SYMBOL_LIMIT = 2**16


class IntegerHyperSynthesis:
    """An exact integer copy of a float `h_s` (3×3×3 convs, ReLU, pixel shuffle), CPU only."""

    def __init__(self, h_s: nn.Sequential):
        self.layers: List[Tuple[str, object]] = []
        for m in h_s:
            if isinstance(m, nn.Conv3d):
                self.layers.append(("conv", _integer_conv(m)))
            elif isinstance(m, nn.ReLU):
                self.layers.append(("relu", None))
            elif isinstance(m, PixelShuffle3d):
                self.layers.append(("shuffle", m))
            else:
                raise TypeError(f"h_s layer {type(m).__name__} has no exact integer form")

    @torch.no_grad()
    def __call__(self, z_hat: torch.Tensor) -> torch.Tensor:
        """ẑ (float) -> h_s output as float32 multiples of 2**-ACT_BITS (exact everywhere)."""
        a = torch.round(z_hat.detach().double().cpu() * 2**ACT_BITS).clamp(-ACT_LIMIT, ACT_LIMIT)
        for kind, p in self.layers:
            if kind == "conv":
                w, b, bits, stride, padding = p
                a = F.conv3d(a, w, b, stride=stride, padding=padding)
                a = torch.floor(a / 2**bits).clamp(-ACT_LIMIT, ACT_LIMIT)
            elif kind == "relu":
                a = a.clamp(min=0)
            else:
                a = p(a)
        return (a / 2**ACT_BITS).float()


def _integer_conv(m: nn.Conv3d):
    """Integer weights/bias of a conv with as many fractional bits (≤ WEIGHT_BITS) as keep
    every accumulation exact; the bits are a function of the stored weights only."""
    w64, b64 = m.weight.detach().double().cpu(), m.bias.detach().double().cpu()
    for bits in range(WEIGHT_BITS, -1, -1):
        w = torch.round(w64 * 2**bits)
        b = torch.round(b64 * 2 ** (bits + ACT_BITS))
        worst = w.abs().flatten(1).sum(1) * ACT_LIMIT + b.abs()
        if w.abs().max() <= WEIGHT_LIMIT and worst.max() < 2.0**53:
            return w, b, bits, m.stride, m.padding
    raise ValueError("hyper-synthesis weights too large for exact integer coding")


def _entropy_params(net, int_hs: IntegerHyperSynthesis, z_hat: torch.Tensor):
    scales, means = int_hs(z_hat).chunk(2, 1)
    indexes = net.gaussian_conditional.build_indexes(scales)
    return indexes, means


@torch.no_grad()
def compress_latents(net, int_hs: IntegerHyperSynthesis, y: torch.Tensor) -> Tuple[List[bytes], List[bytes]]:
    """Gained latents y (N, M, d, h, w) -> per-item (z string, y string)."""
    y = y.detach().cpu()
    if not torch.isfinite(y).all() or y.abs().max() > SYMBOL_LIMIT:
        raise BundleError("the texture network produced impossible latents: its weights are unusable")
    z = net.h_a(y)
    z_strings = net.entropy_bottleneck.compress(z)
    z_hat = net.entropy_bottleneck.decompress(z_strings, z.shape[2:])
    indexes, means = _entropy_params(net, int_hs, z_hat)
    y_strings = net.gaussian_conditional.compress(y, indexes, means=means)
    return z_strings, y_strings


def _padded(s: bytes, n_symbols: int) -> bytes:
    """rANS decoding trusts its input; zero padding keeps any over-read of corrupt data
    inside our buffer (≤ one 32-bit word per symbol plus bypass bits bounded by the string)."""
    return s + bytes(4 * n_symbols + 16 * len(s) + 1024)


@torch.no_grad()
def decompress_latents(
    net, int_hs: IntegerHyperSynthesis, z_strings: Sequence[bytes], y_strings: Sequence[bytes], y_size: Sequence[int]
) -> torch.Tensor:
    """Per-item strings -> ŷ (N, M, d, h, w) on the CPU (before the inverse gain)."""
    z_size = [s // 2 for s in y_size]
    n_z = net.entropy_bottleneck.channels * z_size[0] * z_size[1] * z_size[2]
    z_hat = net.entropy_bottleneck.decompress([_padded(s, n_z) for s in z_strings], z_size)
    _check_symbols(z_hat)
    indexes, means = _entropy_params(net, int_hs, z_hat)
    n_y = indexes[0].numel()
    y_hat = net.gaussian_conditional.decompress([_padded(s, n_y) for s in y_strings], indexes, means=means)
    _check_symbols(y_hat)
    return y_hat


def _check_symbols(t: torch.Tensor) -> None:
    if not torch.isfinite(t).all() or t.abs().max() > SYMBOL_LIMIT:
        raise FormatError("texture stream decodes to impossible latent values (corrupt data)")
