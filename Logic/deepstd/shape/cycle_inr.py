"""Cycle-INR: joint fit of forward and backward SIREN fields with gradual omega degradation.

Both images live on the same (x2 coarser) grid over the template's box: the template R, and the
moving scan D resampled there after pre-alignment. Phi_F(x) = x + u_F(x) reads D for template
point x; Phi_B(y) = y + u_B(y) reads R for point y of D. Loss per batch (paper, Methods):
-NCC(D[Phi_F], R) - NCC(R[Phi_B], D) + alpha (Ljac_F + Ljac_B) + beta ramp (Lcyc_F + Lcyc_B).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import torch

from ..grid import Frame
from ..progress import Reporter
from .losses import cycle_loss, jacobian_loss, ncc, sample
from .siren import Siren


@dataclass
class CycleSettings:
    """Knobs of one registration; defaults are the MR bundle defaults."""

    width: int = 32
    depth: int = 3
    omega: float = 12.0
    steps: int = 300
    batch: int = 1024
    lr: float = 3e-3
    alpha: float = 0.1  # Jacobian regulariser weight
    beta: float = 0.1  # cycle weight, per squared template voxel
    cycle_ramp: int = 100  # steps over which beta ramps from 0 to its value
    threshold: Optional[float] = None  # calibrated loss threshold; None = fixed omega
    probe_steps: int = 100
    omega_step: float = 2.0
    min_omega: float = 5.0
    preview_every: int = 25
    seed: int = 0


@dataclass
class Fit:
    """One pair of networks at one omega and its optimisation state."""

    omega: float
    forward: Siren
    backward: Siren
    optimizer: "Adam"
    step: int = 0
    history: List[float] = field(default_factory=list)  # registration (similarity) loss per step

    @property
    def loss(self) -> float:
        """Registration loss: mean -NCC of both directions over the last 20 steps."""
        tail = self.history[-20:]
        return float(np.mean(tail)) if tail else float("inf")

    def to(self, device: torch.device) -> "Fit":
        """Move both networks and the optimiser's state (in place)."""
        self.forward.to(device)
        self.backward.to(device)
        self.optimizer.to(device)
        return self


def fit_cycle(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    frame: Frame,
    coarse: Frame,
    settings: CycleSettings,
    reporter: Reporter,
    preview: Optional[Callable[[Fit], object]] = None,
    mask: Optional[torch.Tensor] = None,
) -> Fit:
    """Fit both fields; with a threshold, lower omega while the loss after `probe_steps` stays below it.

    `fixed`, `moving`: (1, 1, D, H, W) tensors on `coarse`; `frame` is the full template grid
    (voxel units of the cycle loss); `mask`: optional boolean (D, H, W) restricting the batches.
    The networks and the loop run on `fixed`'s device; the batch points are drawn on the CPU (one
    random stream whatever the device) and moved there.
    """
    device = fixed.device
    gen = torch.Generator().manual_seed(settings.seed)
    sampler = _Sampler(coarse, None if mask is None else mask.cpu(), gen)
    to_vox = torch.as_tensor(frame.mm_per_unit / np.asarray(frame.spacing), dtype=torch.float32).to(device)
    ctx = _Context(fixed, moving, coarse, settings, sampler, to_vox, reporter, preview)

    omegas = [settings.omega]
    if settings.threshold is not None:
        w = settings.omega - settings.omega_step
        while w >= settings.min_omega:
            omegas.append(w)
            w -= settings.omega_step
    probe = min(settings.probe_steps, settings.steps) if len(omegas) > 1 else settings.steps
    best = _new_fit(omegas[0], settings, device)
    ctx.run(best, probe)
    for omega in omegas[1:]:
        if not best.loss < settings.threshold:
            break
        trial = _new_fit(omega, settings, device)
        ctx.run(trial, probe)
        if trial.loss < settings.threshold:
            best = trial
        else:
            break
    ctx.run(best, settings.steps - best.step)
    return best


def _new_fit(omega: float, s: CycleSettings, device: torch.device) -> Fit:
    torch.manual_seed(s.seed)  # initialised on the CPU: the same start on every device
    fwd, bwd = Siren(s.width, s.depth, omega).to(device), Siren(s.width, s.depth, omega).to(device)
    return Fit(omega, fwd, bwd, Adam(list(fwd.parameters()) + list(bwd.parameters()), s.lr))


class Adam:
    """Plain Adam (Kingma & Ba). torch.optim's first use imports torch._dynamo, ~3 s of a
    5 s registration budget in a fresh `deepstd register` process; these few lines cost nothing."""

    def __init__(self, params: List[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def to(self, device: torch.device) -> None:
        """Move the moment estimates to `device` (the parameters move with their module)."""
        self.m = [m.to(device) for m in self.m]
        self.v = [v.to(device) for v in self.v]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-self.lr / c1)


class _Sampler:
    """Random batch points in q units: uniform over the box, or jittered foreground voxels."""

    def __init__(self, coarse: Frame, mask: Optional[torch.Tensor], gen: torch.Generator):
        self.coarse, self.gen = coarse, gen
        self.aspect = torch.as_tensor(coarse.aspect, dtype=torch.float32)
        self.index = None
        if mask is not None and bool(mask.any()):
            zyx = torch.nonzero(mask)
            self.index = zyx.flip(1).to(torch.float64)  # (x, y, z)

    def __call__(self, n: int) -> torch.Tensor:
        if self.index is None:
            return (torch.rand(n, 3, generator=self.gen) * 2.0 - 1.0) * self.aspect
        pick = torch.randint(len(self.index), (n,), generator=self.gen)
        jitter = torch.rand(n, 3, generator=self.gen, dtype=torch.float64) - 0.5
        q = self.coarse.index_to_q(self.index[pick] + jitter).float()
        return torch.maximum(torch.minimum(q, self.aspect), -self.aspect)


@dataclass
class _Context:
    fixed: torch.Tensor
    moving: torch.Tensor
    coarse: Frame
    s: CycleSettings
    sampler: _Sampler
    to_vox: torch.Tensor
    reporter: Reporter
    preview: Optional[Callable[[Fit], object]]

    def run(self, fit: Fit, n: int) -> None:
        device = self.fixed.device
        aspect = torch.as_tensor(self.coarse.aspect, dtype=torch.float32).to(device)
        start = time.perf_counter()
        for _ in range(max(0, n)):
            q = self.sampler(self.s.batch).to(device)
            grid = q / aspect
            r_at_q, d_at_q = sample(self.fixed, grid), sample(self.moving, grid)
            u_f, j_f = fit.forward.forward_jacobian(q)
            u_b, j_b = fit.backward.forward_jacobian(q)
            sim = -0.5 * (
                ncc(sample(self.moving, (q + u_f) / aspect), r_at_q)
                + ncc(sample(self.fixed, (q + u_b) / aspect), d_at_q)
            )
            loss = sim + self.s.alpha * (jacobian_loss(j_f) + jacobian_loss(j_b))
            ramp = min(1.0, (fit.step + 1) / max(1, self.s.cycle_ramp))
            if self.s.beta > 0:
                cyc_f = (u_f + fit.backward(q + u_f)) * self.to_vox
                cyc_b = (u_b + fit.forward(q + u_b)) * self.to_vox
                loss = loss + self.s.beta * ramp * (cycle_loss(cyc_f) + cycle_loss(cyc_b))
            fit.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            fit.optimizer.step()
            fit.history.append(float(sim.detach()))
            fit.step += 1
            self._report(fit, start)

    def _report(self, fit: Fit, start: float) -> None:
        message = (
            f"omega {fit.omega:g} step {fit.step}/{self.s.steps} loss {fit.loss:.4f} "
            f"({time.perf_counter() - start:.1f} s)"
        )
        snapshot = None
        if self.preview is not None and (fit.step % self.s.preview_every == 0 or fit.step == self.s.steps):
            snapshot = self.preview(fit)
        self.reporter("register", fit.step / max(1, self.s.steps), message, snapshot)
