"""3D building blocks of the texture transforms (TCM design, Liu et al. CVPR 2023, in 3D).

Each block is a small `nn.Module` with one job so the analysis/synthesis transforms read as a
list of named blocks, CompressAI style. Sizes are chosen by the caller; nothing here assumes a
channel count.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, 3, stride=stride, padding=1)


def conv1(cin: int, cout: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, 1, stride=stride)


class PixelShuffle3d(nn.Module):
    """3D sub-pixel rearrangement: (N, C·r³, D, H, W) -> (N, C, rD, rH, rW)."""

    def __init__(self, r: int = 2):
        super().__init__()
        self.r = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, d, h, w = x.shape
        r = self.r
        x = x.reshape(n, c // r**3, r, r, r, d, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(n, c // r**3, d * r, h * r, w * r)


def subpel_conv3(cin: int, cout: int, r: int = 2) -> nn.Sequential:
    """Up-sampling by 3×3×3 conv to cout·r³ channels and a 3D pixel shuffle (no checkerboard)."""
    return nn.Sequential(conv3(cin, cout * r**3), PixelShuffle3d(r))


class ResidualBlockWithStride(nn.Module):
    """RBS: 3×3×3 conv stride 2 + LeakyReLU + 3×3×3 conv, strided 1×1×1 shortcut (halves size)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = conv3(cin, cout, stride=2)
        self.act = nn.LeakyReLU(inplace=True)
        self.conv2 = conv3(cout, cout)
        self.skip = conv1(cin, cout, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x))) + self.skip(x)


class ResidualBlockUpsample(nn.Module):
    """RBU: sub-pixel conv + LeakyReLU + 3×3×3 conv, sub-pixel shortcut (doubles size)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = subpel_conv3(cin, cout)
        self.act = nn.LeakyReLU(inplace=True)
        self.conv = conv3(cout, cout)
        self.skip = subpel_conv3(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.up(x))) + self.skip(x)


class ResidualBlock(nn.Module):
    """The TCM block's CNN path: two [3×3×3 conv + LeakyReLU], residual."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(conv3(ch, ch), nn.LeakyReLU(inplace=True), conv3(ch, ch), nn.LeakyReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class WindowAttention3d(nn.Module):
    """Swin-style block on non-overlapping w³ windows (optionally shifted by w/2).

    Tokens may receive a positional encoding (`pos`, same shape as the input) before attention:
    that is where the block's place in the template enters the network.
    """

    def __init__(self, dim: int, window: int, heads: int, shift: bool, mlp_ratio: float = 2.0):
        super().__init__()
        self.window, self.heads, self.shift = window, heads, shift
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        n, c, d, h, w = x.shape
        ws = min(self.window, d, h, w)
        pd, ph, pw = (-d) % ws, (-h) % ws, (-w) % ws
        t = x if pos is None else x + pos
        t = F.pad(t, (0, pw, 0, ph, 0, pd)) if (pd or ph or pw) else t
        D, H, W = d + pd, h + ph, w + pw
        s = ws // 2 if (self.shift and ws > 1) else 0
        if s:
            t = torch.roll(t, (-s, -s, -s), dims=(2, 3, 4))
        # (n, c, D, H, W) -> (n·windows, ws³, c)
        t = t.reshape(n, c, D // ws, ws, H // ws, ws, W // ws, ws)
        t = t.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(-1, ws**3, c)
        y = self.qkv(self.norm1(t)).reshape(t.shape[0], ws**3, 3, self.heads, c // self.heads)
        q, k, v = y.permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(t.shape)
        t = t + self.proj(a)
        t = t + self.mlp(self.norm2(t))
        t = t.reshape(n, D // ws, H // ws, W // ws, ws, ws, ws, c)
        t = t.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(n, c, D, H, W)
        if s:
            t = torch.roll(t, (s, s, s), dims=(2, 3, 4))
        t = t[:, :, :d, :h, :w]
        return t if pos is None else t - pos


class TCMBlock(nn.Module):
    """Transformer–CNN mixture: 1×1×1 in, channel split into a residual CNN path and a window
    attention path run in parallel, concatenation, 1×1×1 out, residual over the whole block."""

    def __init__(self, ch: int, window: int = 4, heads: int = 1, shift: bool = False, pos_dim: int = 0):
        super().__init__()
        self.conv_ch = ch // 2
        self.trans_ch = ch - self.conv_ch
        self.inp = conv1(ch, ch)
        self.cnn = ResidualBlock(self.conv_ch)
        self.attn = WindowAttention3d(self.trans_ch, window, heads, shift)
        self.pos = conv1(pos_dim, self.trans_ch) if pos_dim else None
        self.out = conv1(ch, ch)

    def forward(self, x: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        a, b = torch.split(self.inp(x), (self.conv_ch, self.trans_ch), dim=1)
        p = self.pos(pos) if (self.pos is not None and pos is not None) else None
        return x + self.out(torch.cat((self.cnn(a), self.attn(b, p)), dim=1))
