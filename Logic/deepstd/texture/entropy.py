"""Entropy coding of the latents with bit-exact entropy parameters.

The decoder must find exactly the scale indexes and means the encoder used, or rANS decoding
derails. Floating-point convolutions differ between thread counts, processes and devices, so the
hyper-synthesis `h_s` is run here in integer fixed point: weights, biases and activations are
integers (carried in float64, where every product and partial sum stays far below 2**53 and is
therefore exact in any summation order), requantised by flooring after each convolution. Means
and scales come out as multiples of 2**-ACT_BITS, which float32 holds exactly, so the scale-index
lookup is exact too. The CDF tables are built once when weights are saved and loaded verbatim
(`TextureNet.update`, `tables.EntropyTables`); the rANS coding is integer work (`deepstd.rans`).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BundleError, FormatError
from .layers import PixelShuffle3d
from .tables import EntropyTables, channel_rows

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


def _entropy_params(tables: EntropyTables, int_hs: IntegerHyperSynthesis, z_hat: torch.Tensor):
    scales, means = int_hs(z_hat).chunk(2, 1)
    return tables.scale_indexes(scales), means


@torch.no_grad()
def compress_latents(net, int_hs: IntegerHyperSynthesis, y: torch.Tensor) -> Tuple[List[bytes], List[bytes]]:
    """Gained latents y (N, M, d, h, w) -> per-item (z string, y string): z through the
    bottleneck's per-channel tables around its medians, y through the Gaussian table of its exact
    scale index around its exact mean."""
    tables: EntropyTables = net.entropy_tables
    y = y.detach().cpu()
    if not torch.isfinite(y).all() or y.abs().max() > SYMBOL_LIMIT:
        raise BundleError("the texture network produced impossible latents: its weights are unusable")
    medians = tables.medians[:, None, None, None]
    z_sym = torch.round(net.h_a(y.to(next(net.h_a.parameters()).device)).cpu() - medians)
    if not torch.isfinite(z_sym).all() or z_sym.abs().max() > SYMBOL_LIMIT:
        raise BundleError("the texture network produced impossible latents: its weights are unusable")
    rows = channel_rows(list(z_sym.shape[1:]))
    z_strings = [tables.z.encode(s.numpy().ravel().astype(np.int64), rows) for s in z_sym]
    indexes, means = _entropy_params(tables, int_hs, z_sym + medians)
    y_sym = torch.round(y - means).numpy().astype(np.int64)
    y_strings = [tables.y.encode(s.ravel(), i.ravel()) for s, i in zip(y_sym, indexes)]
    return z_strings, y_strings


def decompress_hyper(net, z_strings: Sequence[bytes], z_size: Sequence[int]) -> torch.Tensor:
    """Per-item z strings -> ẑ (N, C, d, h, w)."""
    tables: EntropyTables = net.entropy_tables
    channels = tables.z.rows
    rows = channel_rows([channels, *z_size])
    z = np.stack([tables.z.decode(s, rows) for s in z_strings]).reshape(-1, channels, *z_size)
    _check_symbols(z)
    return torch.from_numpy(z.astype(np.float32)) + tables.medians[:, None, None, None]


@torch.no_grad()
def decompress_latents(
    net, int_hs: IntegerHyperSynthesis, z_strings: Sequence[bytes], y_strings: Sequence[bytes], y_size: Sequence[int]
) -> torch.Tensor:
    """Per-item strings -> ŷ (N, M, d, h, w) on the CPU (before the inverse gain)."""
    tables: EntropyTables = net.entropy_tables
    z_hat = decompress_hyper(net, z_strings, [s // 2 for s in y_size])
    indexes, means = _entropy_params(tables, int_hs, z_hat)
    y = np.stack([tables.y.decode(s, i.ravel()) for s, i in zip(y_strings, indexes)])
    _check_symbols(y)
    return torch.from_numpy(y.reshape(indexes.shape).astype(np.float32)) + means


def _check_symbols(symbols: np.ndarray) -> None:
    if np.abs(symbols).max() > SYMBOL_LIMIT:
        raise FormatError("texture stream decodes to impossible latent values (corrupt data)")
