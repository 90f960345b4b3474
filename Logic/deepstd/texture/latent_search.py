"""Encoder-side latent search: move the analysis latents of one scan towards a lower rate-distortion
cost at a given texture rate, with the decoder unchanged (`encode(effort=2)`).

The analysis transform is amortised: trained for a population, it is not the best latent for any
one scan. A few gradient steps on this scan's latents, through the synthesis transform and the
hyperprior's rate, find latents that code in fewer bytes for the same picture (Campos et al.,
"Content adaptive optimization for neural image compression", CVPR-W 2019; Yang et al., "Improving
inference for neural image compression", NeurIPS 2020). Rounding is straight-through, as in
Campos et al.; the loss is the codec's training loss, bits per voxel + λ·MSE, with λ interpolated
at the rate's level from the λs the bundle was trained with. Measured on training LA scans at
texture rates 0.2 and 0.5: +0.25-0.55 dB at equal bytes after 10 steps; more steps, or a larger
step size, drift away (docs/TEXTURE.md). The caller keeps the result only if it decodes closer.
Both block mode and whole-volume mode (small crops coded as one frame) are searched.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, List, Optional, Sequence

import numpy as np
import torch

from ..progress import Reporter
from . import tiling
from .codec import GROUP, Analysis, TextureCodec
from .context import TemplateSide
from .rate import quantise_rate

#: steps and Adam step size, chosen on training LA scans (LA_1D7C…, LA_1GU1…); 20 steps at half the
#: step size gained ≤ 0.03 dB more for twice the time
STEPS = 10
STEP_SIZE = 0.005
#: steps when the scan is one block (a small crop coded whole): cheap, and on five training
#: hippocampus crops 25 steps gained +0.16 to +0.39 dB over 10 at texture rate 0.5 (−0.09 to +0.11 at 0.2)
ONE_BLOCK_STEPS = 25
#: weight of the voxels outside the scan's support in the distortion (they are coded, not shown)
OUTSIDE_WEIGHT = 0.1
#: the smallest Gaussian scale the coder's tables use
SCALE_BOUND = 0.11


def trained_lambdas(training: Any, levels: int) -> Optional[List[float]]:
    """The λ per rate level a bundle's texture was trained with (its config's train_settings), or
    None when the bundle does not state them (usable ones: positive, one per level)."""
    settings = training.get("train_settings") if hasattr(training, "get") else None
    lambdas = settings.get("lambdas") if isinstance(settings, dict) else None
    if not (
        isinstance(lambdas, list)
        and len(lambdas) == levels >= 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1e6 for v in lambdas)
    ):
        return None
    return [float(v) for v in lambdas]


def lambda_at(lambdas: Sequence[float], level: float) -> float:
    """λ at a fractional level, geometric between the trained levels (continued below level 0)."""
    i = min(max(int(math.floor(level)), 0), len(lambdas) - 2)
    t = level - i
    return math.exp(math.log(lambdas[i]) * (1 - t) + math.log(lambdas[i + 1]) * t)


def _rounded(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


def _normal_cdf(v: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(v / math.sqrt(2)))


def search_latents(
    codec: TextureCodec,
    analysis: Analysis,
    volume: np.ndarray,
    support: np.ndarray,
    rate: float,
    lambdas: Sequence[float],
    side: Optional[TemplateSide] = None,
    steps: Optional[int] = None,
    step_size: float = STEP_SIZE,
    report: Optional[Reporter] = None,
) -> Analysis:
    """`analysis` (of `volume`, coded where `support`) with latents moved to a lower cost at `rate`;
    `side`: the template on the frame (networks that read it); `steps` None: ONE_BLOCK_STEPS for a
    scan coded as one block, else STEPS."""
    net = codec.net
    report = report or Reporter()
    block, shape = analysis.block, analysis.shape
    todo = [o for o, c in zip(tiling.origins(shape, block), analysis.coded) if c]
    if steps is None:
        steps = ONE_BLOCK_STEPS if len(todo) == 1 else STEPS
    padded = tiling.padded(volume.astype(np.float32, copy=False), block)
    weights = tiling.padded(OUTSIDE_WEIGHT + (1 - OUTSIDE_WEIGHT) * support.astype(np.float32), block)
    level = net.gain.level_of(quantise_rate(rate))
    lam = lambda_at(lambdas, float(level))
    with torch.no_grad():
        gain, inverse_gain = net.gain.gain(level).float(), net.gain.inverse_gain(level).float()
    medians = net.entropy_tables.medians[:, None, None, None].float()
    params = list(net.parameters())
    needed = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    groups = list(tiling.batches(todo, GROUP))
    moved = []
    try:
        with torch.enable_grad():  # callers may be in no-grad mode (the codec's own methods are)
            for k, (group, start) in enumerate(zip(groups, analysis.latents)):
                report.check()
                x = torch.from_numpy(np.stack([tiling.cut(padded, o, block) for o in group]))[:, None]
                w = torch.from_numpy(np.stack([tiling.cut(weights, o, block) for o in group]))[:, None]
                coords = codec._coords(group, block, shape)
                template = None if side is None else torch.from_numpy(side.units(group, block))
                latent = start.clone().requires_grad_(True)
                optimiser = torch.optim.Adam([latent], lr=step_size)
                for _ in range(steps):
                    y = latent * gain
                    z_hat = _rounded(net.h_a(y) - medians) + medians
                    scales, means = net.entropy_parameters(z_hat, template, gain)
                    y_hat = _rounded(y - means) + means
                    s = scales.clamp_min(SCALE_BOUND)
                    prob = _normal_cdf((y_hat - means + 0.5) / s) - _normal_cdf((y_hat - means - 0.5) / s)
                    bits = -torch.log2(prob.clamp_min(1e-9)).sum()
                    mse = (((net.g_s(y_hat * inverse_gain, coords) - x) ** 2) * w).sum() / w.sum()
                    loss = bits / x.numel() + lam * mse
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                moved.append(latent.detach())
                report("texture", (k + 1) / len(groups), "searching latents")
    finally:
        for p, flag in zip(params, needed):
            p.requires_grad_(flag)
    return replace(analysis, latents=moved)


__all__ = ["search_latents", "trained_lambdas", "lambda_at", "STEPS", "ONE_BLOCK_STEPS"]
