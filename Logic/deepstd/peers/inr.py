"""An implicit-neural-representation anchor: one SIREN fitted to each scan (BRIEF / COIN-like).

A SIREN (Sitzmann et al. 2020) maps normalised coordinates (x, y, z), each in [-1, 1] across the
grid, to the voxel's intensity. The network *is* the file: its weights are stored as float16, so
the stream size is a pure function of the architecture and the width is chosen from the byte
budget directly, without fitting for each step of a budget search; the network is then fitted
once. Fitting is what makes INR compression slow, and `last_fit_seconds` records it.

Architecture: `depth` hidden sine layers, the first with frequency `omega_first` (30, the paper's
omega_0), the later ones with `omega_hidden` (also 30, weights initialised at sqrt(6/n)/omega as
in the paper), then a linear output. The first `depth - 1` hidden layers have width `w`, the last
one width `v` in [w, 2w]: widening only the last layer moves the parameter count in steps of
`w + 2`, so the budget is filled to within about 1/(2w) instead of the ~2/w whole-width steps allow.

Intensities: lo / hi are the 0.5 / 99.5 percentiles; the network fits (value - lo) / (hi - lo),
which puts the bulk of the voxels in [0, 1]. Targets are not clipped (the brightest 0.5 % would
otherwise be lost), so lo / hi only set the scale.

Fitting: Adam, fixed seed, `steps` steps on random batches of `batch` voxels (the whole volume
when it is smaller), learning rate `lr` with a cosine decay to lr / 20, MSE. Deterministic for a
given machine and thread count.

Stream (every byte counted): shape (3 varints), depth (varint), the hidden widths (varints),
omega_first, omega_hidden, lo, hi (float64 each), then the float16 weights, little-endian, layer
by layer (weight matrix row-major as (out, in), then bias), running to the end of the stream.
"""

from __future__ import annotations

import math
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import FormatError
from ..packing import Packer, Unpacker
from ..progress import Reporter
from ..volume import Volume
from .base import Peer
from .budget import Knob, PeerBudgetError

#: Adam steps per fit: 2.5-3.5 minutes on one (shared) core for a 2.3-2.6 Mvoxel LA scan at 128x
#: (widths 64-71), 5-6.5 minutes at 64x (widths 92-99); see docs/INR.md.
STEPS = 5000
#: Random voxels per step (all of them when the volume is smaller). At equal fitting time, 2^14
#: voxels x 4n steps came out ahead of 2^16 x n steps on an LA scan (25.35 vs 25.17 dB at 128x).
BATCH = 1 << 14
#: Hidden sine layers.
DEPTH = 3
#: Peak Adam learning rate (cosine decay to LR / 20).
LR = 1e-3
OMEGA_FIRST = 30.0
OMEGA_HIDDEN = 30.0
SEED = 0
#: Narrowest and widest hidden layer the width search considers.
MIN_WIDTH = 8
MAX_WIDTH = 1024
#: Voxels evaluated at once when decoding (bounds memory: ~CHUNK x width x 4 bytes per layer).
CHUNK = 1 << 16
#: Limits a stream must respect to be decoded (protect against corrupt headers).
_MAX_DEPTH = 16
_MAX_STREAM_WIDTH = 8192


def parameter_count(widths: Sequence[int]) -> int:
    """Weights and biases of a SIREN 3 -> widths... -> 1."""
    sizes = [3, *widths, 1]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def _header(
    shape: Sequence[int], widths: Sequence[int], omega_first: float, omega_hidden: float, lo: float, hi: float
) -> Packer:
    packer = Packer().shape(shape).uint(len(widths))
    for w in widths:
        packer.uint(int(w))
    return packer.float64(omega_first).float64(omega_hidden).float64(lo).float64(hi)


def stream_size(shape: Sequence[int], widths: Sequence[int]) -> int:
    """Bytes of the complete stream for this grid and architecture (weights float16)."""
    return len(_header(shape, widths, 0.0, 0.0, 0.0, 0.0).bytes()) + 2 * parameter_count(widths)


def architecture(
    shape: Sequence[int], budget: int, depth: int = DEPTH, max_width: int = MAX_WIDTH
) -> Optional[List[int]]:
    """The hidden widths with the most parameters whose stream fits `budget` bytes: the widest
    uniform width w that fits, then the last layer widened as far as it still fits (at most 2w).
    None when even `MIN_WIDTH` does not fit."""
    if stream_size(shape, [MIN_WIDTH] * depth) > budget:
        return None
    low, high = MIN_WIDTH, max_width  # largest uniform width that fits, by bisection
    while low < high:
        mid = (low + high + 1) // 2
        if stream_size(shape, [mid] * depth) <= budget:
            low = mid
        else:
            high = mid - 1
    w = low
    v = w
    while v < min(2 * w, max_width) and stream_size(shape, [w] * (depth - 1) + [v + 1]) <= budget:
        v += 1
    return [w] * (depth - 1) + [v]


def _coordinates(index, shape: Tuple[int, int, int]):
    """(x, y, z) in [-1, 1] for flat (z, y, x) voxel indices (a torch int64 tensor)."""
    import torch

    nz, ny, nx = shape
    z = torch.div(index, ny * nx, rounding_mode="floor")
    rest = index - z * (ny * nx)
    y = torch.div(rest, nx, rounding_mode="floor")
    x = rest - y * nx

    def scale(i, n):
        return i.float() * (2.0 / (n - 1)) - 1.0 if n > 1 else torch.zeros_like(i, dtype=torch.float32)

    return torch.stack((scale(x, nx), scale(y, ny), scale(z, nz)), dim=1)


def _forward(layers, coords, omega_first: float, omega_hidden: float):
    """The SIREN: sine layers, then a linear output (shape (B,))."""
    import torch

    h = coords
    for i, (weight, bias) in enumerate(layers[:-1]):
        h = torch.sin((omega_first if i == 0 else omega_hidden) * torch.addmm(bias, h, weight.t()))
    weight, bias = layers[-1]
    return torch.addmm(bias, h, weight.t())[:, 0]


class InrSiren(Peer):
    name = "inr-siren"
    summary = "per-scan SIREN fitted to the voxels (INR anchor), float16 weights, width from the budget"

    def __init__(
        self,
        steps: int = STEPS,
        batch: int = BATCH,
        depth: int = DEPTH,
        lr: float = LR,
        omega_first: float = OMEGA_FIRST,
        omega_hidden: float = OMEGA_HIDDEN,
        seed: int = SEED,
        max_width: int = MAX_WIDTH,
    ):
        if steps < 1 or batch < 1 or depth < 1 or max_width < MIN_WIDTH:
            raise ValueError("an INR peer needs steps, batch, depth >= 1 and max_width >= MIN_WIDTH")
        self.steps, self.batch, self.depth, self.lr = int(steps), int(batch), int(depth), float(lr)
        self.omega_first, self.omega_hidden = float(omega_first), float(omega_hidden)
        self.seed, self.max_width = int(seed), int(max_width)
        # The knob is the hidden width (uniform); `encode` picks it analytically instead of bisecting.
        self.knob = Knob(smallest=MIN_WIDTH, largest=self.max_width, log=True, integer=True)
        #: Seconds the last fit took (the optimisation only, without the final packing).
        self.last_fit_seconds: Optional[float] = None
        #: Hidden widths of the last fit.
        self.last_widths: Optional[List[int]] = None

    # --- encode -----------------------------------------------------------------------------------
    def encode(self, volume: Volume, budget_bytes: int, reporter: Optional[Reporter] = None) -> bytes:
        """Fit once, at the largest architecture whose stream fits `budget_bytes`."""
        self.require_available()
        reporter = reporter or Reporter()
        shape = volume.array.shape
        widths = architecture(shape, budget_bytes, self.depth, self.max_width)
        if widths is None:
            raise PeerBudgetError(self.name, stream_size(shape, [MIN_WIDTH] * self.depth), budget_bytes)
        data = self._fit(self._prepare(volume), widths, reporter)
        assert len(data) == stream_size(shape, widths) <= budget_bytes
        return data

    def _prepare(self, volume: Volume):
        array = volume.array
        lo, hi = (float(v) for v in np.percentile(array, [0.5, 99.5]))
        return array, lo, hi

    def _encode_at(self, prepared, value: Optional[float]) -> bytes:
        return self._fit(prepared, [int(value)] * self.depth, Reporter())

    def _fit(self, prepared, widths: Sequence[int], reporter: Reporter) -> bytes:
        import torch

        array, lo, hi = prepared
        span = hi - lo if hi > lo else 1.0
        shape = array.shape
        targets = torch.from_numpy(((array.reshape(-1).astype(np.float64) - lo) / span).astype(np.float32))
        total = targets.numel()
        batch = min(self.batch, total)

        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        sizes = [3, *widths, 1]
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            bound = 1.0 / n_in if i == 0 else math.sqrt(6.0 / n_in) / self.omega_hidden
            weight = torch.empty(n_out, n_in).uniform_(-bound, bound, generator=generator)
            bias = torch.empty(n_out).uniform_(-1 / math.sqrt(n_in), 1 / math.sqrt(n_in), generator=generator)
            layers.append((weight.requires_grad_(), bias.requires_grad_()))
        with torch.no_grad():
            layers[-1][1].fill_(float(targets.mean()))
        params = [p for layer in layers for p in layer]
        optimiser = torch.optim.Adam(params, lr=self.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / self.steps))
        )

        start = time.perf_counter()
        every = max(1, self.steps // 50)
        for step in range(self.steps):
            if step % every == 0:
                reporter("encode", step / self.steps, f"{self.name} width {widths}")
            index = torch.randint(total, (batch,), generator=generator) if batch < total else torch.arange(total)
            prediction = _forward(layers, _coordinates(index, shape), self.omega_first, self.omega_hidden)
            loss = torch.mean((prediction - targets[index]) ** 2)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
        self.last_fit_seconds = time.perf_counter() - start
        self.last_widths = list(widths)
        reporter("encode", 1.0, self.name)

        weights = np.concatenate([p.detach().numpy().reshape(-1) for layer in layers for p in layer]).astype("<f2")
        if not np.all(np.isfinite(weights)):
            # A diverged fit (or weights beyond float16) must not produce an undecodable stream.
            weights = np.nan_to_num(weights, nan=0.0, posinf=65504.0, neginf=-65504.0)
        header = _header(shape, widths, self.omega_first, self.omega_hidden, lo, hi)
        return header.blob(weights.tobytes()).bytes()

    # --- decode -----------------------------------------------------------------------------------
    def decode(self, data: bytes, like: Volume) -> np.ndarray:
        import torch

        reader = Unpacker(data)
        shape = reader.shape(like.array.shape)
        depth = reader.uint()
        if not 1 <= depth <= _MAX_DEPTH:
            raise FormatError(f"peer stream has an INR depth of {depth}")
        widths = [reader.uint() for _ in range(depth)]
        if any(not 1 <= w <= _MAX_STREAM_WIDTH for w in widths):
            raise FormatError(f"peer stream has INR widths {widths}")
        omega_first, omega_hidden, lo, hi = (reader.float64() for _ in range(4))
        values = (omega_first, omega_hidden, lo, hi)
        if not all(math.isfinite(v) for v in values) or not (0 < omega_first <= 1e4 and 0 < omega_hidden <= 1e4):
            raise FormatError("peer stream has an invalid INR header")
        payload = reader.blob()
        count = parameter_count(widths)
        if len(payload) != 2 * count:
            raise FormatError(f"peer stream holds {len(payload)} weight bytes, the INR {widths} needs {2 * count}")
        weights = np.frombuffer(payload, dtype="<f2").astype(np.float32)
        if not np.all(np.isfinite(weights)):
            raise FormatError("peer stream holds non-finite INR weights")

        layers, at = [], 0
        sizes = [3, *widths, 1]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            weight = torch.from_numpy(weights[at : at + n_in * n_out].reshape(n_out, n_in))
            at += n_in * n_out
            bias = torch.from_numpy(weights[at : at + n_out])
            at += n_out
            layers.append((weight, bias))

        span = hi - lo if hi > lo else 1.0
        total = int(np.prod(shape))
        out = np.empty(total, dtype=np.float32)
        with torch.no_grad(), np.errstate(over="ignore", invalid="ignore"):
            for begin in range(0, total, CHUNK):
                index = torch.arange(begin, min(begin + CHUNK, total))
                y = _forward(layers, _coordinates(index, shape), omega_first, omega_hidden)
                out[begin : begin + len(index)] = (lo + y.double().numpy() * span).astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise FormatError("peer stream decodes to non-finite values")
        return out.reshape(shape)
