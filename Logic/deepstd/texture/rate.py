"""The continuous rate knob: learned gain vectors with exponential interpolation.

One model serves a range of rates (Cui et al., "Asymmetric gained deep image compression",
CVPR 2021): K trained levels each own a per-channel gain applied to the latent before rounding
and an inverse gain applied after. Between levels the vectors are interpolated geometrically,
which makes the effective quantisation step vary smoothly, so a byte budget can be met by
bisection on one float. `rate` 1 is the finest trained level; `rate` 0 lies EXTRAPOLATED_LEVELS
below the coarsest one, the log-gains continued linearly: the coarsest trained level left 512x out
of reach on half the held-out LA scans (their smallest files were up to 1.3x the budget).
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: The knob is stored in streams as an integer so encoder and decoder use the same value.
RATE_STEPS = 65535
#: how far below the coarsest trained level `rate` 0 reaches (texture stream version 2)
EXTRAPOLATED_LEVELS = 1.0


def quantise_rate(rate: float) -> int:
    """Rate in [0, 1] -> the integer that streams carry (values outside are clamped)."""
    if not math.isfinite(rate):
        raise ValueError("rate must be a finite number in [0, 1]")
    return int(round(min(max(float(rate), 0.0), 1.0) * RATE_STEPS))


class GainUnit(nn.Module):
    """Per-level gain and inverse-gain vectors for `channels` latent channels."""

    def __init__(self, levels: int, channels: int, span: float = 3.0):
        super().__init__()
        if levels < 2:
            raise ValueError("a variable-rate model needs at least two levels")
        # log-gains start evenly spread so even an untrained model codes more bytes at higher rate
        init = torch.linspace(-span / 2, span / 2, levels)[:, None].repeat(1, channels)
        self.log_gain = nn.Parameter(init.clone())
        self.log_inv_gain = nn.Parameter(-init.clone())

    @property
    def levels(self) -> int:
        return self.log_gain.shape[0]

    def log_at(self, table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Linear interpolation of a log table at fractional levels t (N,) in [−EXTRAPOLATED_LEVELS,
        K−1] -> (N, C), in the table's dtype; below level 0 the line through levels 0 and 1 is continued.
        Elementwise only, so in float64 the same on every machine (`entropy.IntegerEntropyParameters`)."""
        t = t.to(device=table.device, dtype=table.dtype).clamp(-EXTRAPOLATED_LEVELS, self.levels - 1)
        i = torch.clamp(t.floor().long(), min=0, max=self.levels - 2)
        frac = (t - i.to(t.dtype))[:, None]
        return table[i] * (1 - frac) + table[i + 1] * frac

    def _interp(self, table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Geometric interpolation at fractional levels t (N,) -> (N, C, 1, 1, 1)."""
        return torch.exp(self.log_at(table, t))[:, :, None, None, None]

    def gain(self, t: torch.Tensor) -> torch.Tensor:
        return self._interp(self.log_gain, t)

    def inverse_gain(self, t: torch.Tensor) -> torch.Tensor:
        return self._interp(self.log_inv_gain, t)

    def level_of(self, rate_q: int) -> torch.Tensor:
        """The stored integer knob -> fractional level, computed in float64 on the CPU."""
        span = self.levels - 1 + EXTRAPOLATED_LEVELS
        return torch.tensor([rate_q / RATE_STEPS * span - EXTRAPOLATED_LEVELS], dtype=torch.float64)
