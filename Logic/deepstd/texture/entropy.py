"""Entropy coding of the latents with bit-exact entropy parameters.

The decoder must find exactly the scale indexes and means the encoder used, or rANS decoding
derails. Floating-point convolutions differ between thread counts, processes and devices, so the
hyper-synthesis `h_s` (and, in a network that reads the template, its template branch and heads,
on side values resampled exactly by `context`) is run here in integer fixed point: weights, biases
and activations are integers (carried in float64, where every product and partial sum stays far
below 2**53 and is therefore exact in any summation order), requantised by flooring after each
convolution. Means and scales come out as multiples of 2**-ACT_BITS, which float32 holds exactly (a
template's scale factor comes from a table built the same everywhere), so the scale-index lookup is
exact too. The CDF tables are built once when weights are saved and loaded verbatim
(`TextureNet.update`, `tables.EntropyTables`); the rANS coding is integer work (`deepstd.rans`).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

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


class IntegerStack:
    """An exact integer copy of float layers (3-D convs, ReLU, pixel shuffle), CPU only: activations
    are integers (carried in float64) in 2**-ACT_BITS units, floored after each convolution."""

    def __init__(self, modules):
        self.layers: List[Tuple[str, object]] = []
        for m in modules:
            if isinstance(m, nn.Conv3d):
                self.layers.append(("conv", _integer_conv(m)))
            elif isinstance(m, nn.ReLU):
                self.layers.append(("relu", None))
            elif isinstance(m, PixelShuffle3d):
                self.layers.append(("shuffle", m))
            else:
                raise TypeError(f"entropy model layer {type(m).__name__} has no exact integer form")

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        for kind, p in self.layers:
            if kind == "conv":
                w, b, bits, stride, padding = p
                a = F.conv3d(a, w, b, stride=stride, padding=padding)
                a = torch.floor(a / 2**bits).clamp(-ACT_LIMIT, ACT_LIMIT)
            elif kind == "relu":
                a = a.clamp(min=0)
            else:
                a = p(a)
        return a


#: the gain that scales the template's mean shift is fixed point with this many fractional bits
GAIN_BITS = 12
#: logs (of that gain, and the template's scale factors) are tabulated at 2**-LOG_BITS steps
LOG_BITS = 8
#: a template mean shift beyond ±this (in 2**-ACT_BITS units, before the gain) is clipped: it keeps
#: the product with the fixed-point gain exact in float64
SHIFT_LIMIT = 2.0**16


def _exp_table(limit: float) -> np.ndarray:
    """e**(k·2**-LOG_BITS) for |k| ≤ limit·2**LOG_BITS, index k + limit·2**LOG_BITS. Built by repeated
    IEEE multiplication and division by one constant, so every machine builds the same table (libm's
    and the SIMD exp differ in the last bit between machines)."""
    step, n = 1.0039138893383475, int(limit * 2**LOG_BITS)  # e**(1/256)
    up, down = [1.0], [1.0]
    for _ in range(n):
        up.append(up[-1] * step)
        down.append(down[-1] / step)
    return np.array(down[:0:-1] + up)


class IntegerEntropyParameters:
    """The exact integer copy of `TextureNet.entropy_parameters`. With a template context, the
    branch and heads run once per block group (`context`, on integer side values from
    `context.TemplateSide`); the gain and exp(Δs) are read from a table built the same everywhere."""

    def __init__(self, net):
        from .network import CONTEXT_LOG_LIMIT

        self.h_s = IntegerStack(net.h_s)
        self.gain_unit = net.gain
        self.log_limit = int(CONTEXT_LOG_LIMIT * 2**LOG_BITS)
        self.branch: Optional[IntegerStack] = None
        self.exp: Optional[np.ndarray] = None
        if net.context is not None:
            self.branch = IntegerStack(net.context.branch)
            self.to_means, self.to_scales = IntegerStack([net.context.to_means]), IntegerStack([net.context.to_scales])
            self.exp = _exp_table(CONTEXT_LOG_LIMIT)

    @property
    def reads_template(self) -> bool:
        return self.branch is not None

    @torch.no_grad()
    def context(self, side: np.ndarray) -> torch.Tensor:
        """The template's integer (mean shift, scale log-factor) per latent, stacked (N, 2M, d, h, w),
        of side values (N, 1, D, H, W); independent of the rate, so computed once per encode."""
        if self.branch is None:
            raise ValueError("this texture network reads no template")
        f = self.branch(torch.from_numpy(np.asarray(side, dtype=np.float64)))
        return torch.cat([self.to_means(f).clamp(-SHIFT_LIMIT, SHIFT_LIMIT), self.to_scales(f)], 1)

    def fixed_gain(self, level: torch.Tensor) -> torch.Tensor:
        """The rate's gain (1, M, 1, 1, 1) as integers in 2**-GAIN_BITS units: the `GainUnit`'s log
        interpolated in float64, rounded to 2**-LOG_BITS and exponentiated by table."""
        assert self.exp is not None
        table = self.gain_unit.log_gain.detach().cpu().double()
        log = self.gain_unit.log_at(table, level.reshape(-1)[:1].double().cpu())[0].numpy()
        k = np.clip(np.floor(log * 2**LOG_BITS + 0.5), -self.log_limit, self.log_limit).astype(np.int64)
        gain = np.floor(self.exp[k + self.log_limit] * 2**GAIN_BITS + 0.5)
        return torch.from_numpy(gain)[None, :, None, None, None]

    @torch.no_grad()
    def __call__(self, z_hat: torch.Tensor, context=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """ẑ (float) -> (scales, means): means float32 multiples of 2**-ACT_BITS, scales float64
        products of such multiples and table values (exact everywhere). `context`: (this group's
        `context(...)`, `fixed_gain(level)`) for a network that reads the template."""
        a = torch.round(z_hat.detach().double().cpu() * 2**ACT_BITS).clamp(-ACT_LIMIT, ACT_LIMIT)
        scales, means = self.h_s(a).chunk(2, 1)
        if self.exp is not None:
            if context is None:
                raise ValueError("this texture network reads the template: the side input is missing")
            terms, gain = context
            shift, log_factor = terms.chunk(2, 1)
            means = means + torch.floor(shift * gain / 2**GAIN_BITS)
            k = log_factor.clamp(-self.log_limit, self.log_limit).long() + self.log_limit  # LOG_BITS = ACT_BITS
            return scales / 2**ACT_BITS * torch.from_numpy(self.exp)[k], (means / 2**ACT_BITS).float()
        return (scales / 2**ACT_BITS).float(), (means / 2**ACT_BITS).float()


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


def _entropy_params(tables: EntropyTables, params: IntegerEntropyParameters, z_hat: torch.Tensor, context):
    scales, means = params(z_hat, context)
    return tables.scale_indexes(scales), means


@torch.no_grad()
def compress_latents(
    net, params: IntegerEntropyParameters, y: torch.Tensor, context=None
) -> Tuple[List[bytes], List[bytes]]:
    """Gained latents y (N, M, d, h, w) -> per-item (z string, y string): z through the
    bottleneck's per-channel tables around its medians, y through the Gaussian table of its exact
    scale index around its exact mean. `context`: the template's terms and the rate's fixed gain
    (networks that read the template, `IntegerEntropyParameters.__call__`)."""
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
    indexes, means = _entropy_params(tables, params, z_sym + medians, context)
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
    net,
    params: IntegerEntropyParameters,
    z_strings: Sequence[bytes],
    y_strings: Sequence[bytes],
    y_size: Sequence[int],
    context=None,
) -> torch.Tensor:
    """Per-item strings -> ŷ (N, M, d, h, w) on the CPU (before the inverse gain)."""
    tables: EntropyTables = net.entropy_tables
    z_hat = decompress_hyper(net, z_strings, [s // 2 for s in y_size])
    indexes, means = _entropy_params(tables, params, z_hat, context)
    y = np.stack([tables.y.decode(s, i.ravel()) for s, i in zip(y_strings, indexes)])
    _check_symbols(y)
    return torch.from_numpy(y.reshape(indexes.shape).astype(np.float32)) + means


def _check_symbols(symbols: np.ndarray) -> None:
    if np.abs(symbols).max() > SYMBOL_LIMIT:
        raise FormatError("texture stream decodes to impossible latent values (corrupt data)")
