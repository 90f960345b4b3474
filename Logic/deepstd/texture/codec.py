"""`TextureCodec`: a trained `TextureNet` behind compress()/decompress() on byte strings.

Decoding is bit-identical whatever the thread or worker count: blocks are decoded in fixed
groups of `GROUP` (stream order) with one intra-op thread each, and parallelism comes from
running groups side by side. Entropy parameters are exact everywhere (`entropy`); the synthesis
floats are reproducible on one machine and torch build, not across CPU types or devices.

The codec works on intensities already normalised to roughly 0..1 (the bundle's intensity rule
is applied by the caller) on the template grid. `block=None` codes the whole volume as one block
(small inputs); an int or triple codes fixed blocks, skipping those outside `support`.
Weights are safetensors with the config in the metadata; the CDF tables travel with them, and a
codec loaded from them needs no compressai (`TextureNet(trainable=False)`).
"""

from __future__ import annotations

import json
import struct
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import BudgetError, BundleError, FormatError
from ..progress import Reporter
from ..ratecontrol import STEPS, largest_within
from . import tiling
from .context import TemplateSide
from .entropy import IntegerEntropyParameters, compress_latents, decompress_latents
from .network import TextureConfig, TextureNet
from .position import block_coords
from .rate import quantise_rate
from .streams import TextureStreams
from .tables import EntropyTables


@dataclass
class Analysis:
    """Latents y (before the rate gain) of the coded blocks, in groups of `GROUP`, and for a network
    that reads the template the integer terms its side input gives each group (`context`)."""

    shape: Tuple[int, int, int]
    block: Tuple[int, int, int]
    full: bool
    fill: float
    coded: List[bool]
    latents: List[torch.Tensor]
    context: Optional[List[torch.Tensor]] = None


#: the stages whose tokens read the positional field (their stride in voxels)
POS_FACTORS = (2, 4)
#: blocks per network call; fixed so that the float results never depend on the worker count
GROUP = 4


@contextmanager
def _single_threaded_ops():
    """One intra-op thread (the results of several torch kernels depend on the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield before
    finally:
        torch.set_num_threads(before)


def _run_groups(fn, groups, workers, report, stage_message):
    """fn over groups on a thread pool, in order, reporting progress and honouring cancel."""
    with _single_threaded_ops() as threads:
        with ThreadPoolExecutor(max(1, workers or threads)) as pool:
            futures = [pool.submit(fn, g) for g in groups]
            try:
                for i, f in enumerate(futures):
                    report("texture", i / max(len(groups), 1), stage_message)
                    yield f.result()
            finally:
                for f in futures:
                    f.cancel()


#: trained weights stay below ~30 (the scale table reaches 256): larger values are tampering, and
#: would make the coder escape-code enormous latents for minutes
MAX_WEIGHT = 1e4


def validate_tables(net: TextureNet) -> EntropyTables:
    """Check what the coder will trust before it sees it: every weight finite and plausible, and
    the entropy tables (`EntropyTables.from_state`: CDF rows that start at 0, rise strictly and end
    at 2**16 within their stated length, sane offsets, a positive increasing scale table). A bundle
    that fails is a BundleError; a bundle with zeroed tables once crashed the process in the coder."""
    for name, tensor in net.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise BundleError(f"texture weights: {name} holds NaN or infinite values")
        if tensor.is_floating_point() and tensor.numel() and float(tensor.abs().max()) > MAX_WEIGHT:
            raise BundleError(f"texture weights: {name} holds implausibly large values")
    return net.entropy_tables


class TextureCodec:
    def __init__(self, net: TextureNet, device: Union[str, torch.device] = "cpu"):
        if net.state_dict().get("entropy_bottleneck._quantized_cdf", torch.zeros(0)).numel() == 0:
            raise ValueError("the network has no CDF tables: call net.update() first")
        validate_tables(net)
        self.net = net.eval()
        self.device = torch.device(device)
        self.net.to(self.device)
        self._params = IntegerEntropyParameters(net)

    @property
    def config(self) -> TextureConfig:
        return self.net.config

    # --- weights -----------------------------------------------------------------------------
    @classmethod
    def untrained(cls, config: TextureConfig = TextureConfig(), seed: int = 0, **kw):
        """A randomly initialised codec (tests, and the start of training)."""
        torch.manual_seed(seed)
        net = TextureNet(config)
        net.update()
        return cls(net, **kw)

    def to_bytes(self) -> bytes:
        """Weights and CDF tables as safetensors, config in the metadata."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        return st_save(state, metadata={"deepstd.texture.config": json.dumps(self.config.to_dict())})

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, **kw) -> "TextureCodec":
        try:
            config = TextureConfig.from_dict(json.loads(_st_metadata(data)["deepstd.texture.config"]))
            state = st_load(bytes(data))
            odd = sorted(k for k, v in state.items() if v.dtype not in _STATE_DTYPES)
            if odd:
                raise ValueError(f"tensors of an unexpected type: {odd[:3]}")
            net = TextureNet(config, trainable=False)
            net.load_state_dict(state)
        except Exception as exc:  # safetensors raises its own error type on bad bytes
            raise BundleError(f"texture weights are corrupt or incompatible: {str(exc)[:300]}") from None
        try:
            return cls(net, **kw)
        except ValueError as exc:  # weights with no exact integer form
            raise BundleError(f"texture weights are unusable: {exc}") from None

    @classmethod
    def load(cls, path: Union[str, Path], **kw) -> "TextureCodec":
        return cls.from_bytes(Path(path).read_bytes(), **kw)

    # --- coding ------------------------------------------------------------------------------
    def _coords(self, origins, block, shape):
        return {f: block_coords(origins, block, f, shape).to(self.device) for f in POS_FACTORS}

    def _level(self, rate_q: int) -> torch.Tensor:
        return self.net.gain.level_of(rate_q)

    def _context(self, side: Optional[TemplateSide], group, block, shape) -> Optional[torch.Tensor]:
        """The template's integer terms (mean shift, scale log-factor) for a group of blocks (None: the
        network reads no template)."""
        if not self._params.reads_template:
            return None
        if side is None:
            raise ValueError("this texture network reads the template: give the side input (`context.side_for`)")
        if side.shape != tuple(shape):
            raise ValueError(f"the template side input is on a {side.shape} frame, the texture is {tuple(shape)}")
        return self._params.context(side.blocks(group, block))

    def compress(
        self,
        x,
        rate: float,
        block=64,
        support: Optional[np.ndarray] = None,
        fill: float = 0.0,
        workers: Optional[int] = None,
        progress=None,
        cancel=None,
        side: Optional[TemplateSide] = None,
    ) -> TextureStreams:
        """Code a normalised volume (z, y, x) at `rate` in [0, 1] (0: fewest bytes).

        Blocks with no voxel in `support` are skipped and decode as `fill`; `workers` threads
        (default: torch's thread count) code block groups in parallel. `side`: the template on
        the frame, for a network that reads it (the decoder is given the same)."""
        report = Reporter(progress, cancel)
        analysis = self.analyse(x, block, support, fill, workers, report.scaled(0.0, 0.9), side)
        return self.code(analysis, rate, workers, report.scaled(0.9, 1.0))

    def compress_to_budget(
        self,
        x,
        max_bytes: int,
        block=64,
        support: Optional[np.ndarray] = None,
        fill: float = 0.0,
        tolerance: float = 0.02,
        workers: Optional[int] = None,
        progress=None,
        cancel=None,
        side: Optional[TemplateSide] = None,
    ) -> TextureStreams:
        """The largest rate whose serialised streams fit in `max_bytes` (within `tolerance`
        below it when reachable): one analysis pass, then bisection on entropy coding only."""
        report = Reporter(progress, cancel)
        analysis = self.analyse(x, block, support, fill, workers, report.scaled(0.0, 0.5), side)
        streams = {}

        def build(rate: float) -> bytes:
            streams[rate] = self.code(analysis, rate, workers)
            return streams[rate].to_bytes()

        best, smallest = largest_within(
            build,
            max_bytes,
            tolerance,
            on_step=lambda i: report("texture", 0.5 + 0.5 * i / STEPS, f"fitting {max_bytes} bytes"),
        )
        if best is None:
            raise BudgetError(
                f"the texture needs at least {len(smallest)} bytes at the lowest rate, the budget is {max_bytes}"
            )
        return TextureStreams.from_bytes(best)

    @torch.no_grad()
    def analyse(
        self,
        x,
        block=64,
        support: Optional[np.ndarray] = None,
        fill: float = 0.0,
        workers: Optional[int] = None,
        report: Optional[Reporter] = None,
        side: Optional[TemplateSide] = None,
    ) -> Analysis:
        """The rate-independent part of encoding: g_a over every coded block (and the template
        branch, for a network that reads the template on the frame: `side`)."""
        arr = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
        if arr.ndim != 3 or arr.size == 0 or not np.all(np.isfinite(arr)):
            raise ValueError(f"expected a finite 3-D array, got shape {arr.shape}")
        arr = arr.astype(np.float32, copy=False)
        shape = tuple(int(s) for s in arr.shape)
        full = block is None
        blk = tiling.full_block(shape) if full else tiling.normalise_block(block)
        coded = tiling.coded_blocks(shape, blk, support)
        todo = [o for o, c in zip(tiling.origins(shape, blk), coded) if c]
        xp = tiling.padded(arr, blk)
        report = report or Reporter()
        report.check()

        groups = list(tiling.batches(todo, GROUP))
        context = [self._context(side, g, blk, shape) for g in groups] if self._params.reads_template else None

        @torch.no_grad()  # grad mode is per thread
        def encode(group):
            xb = torch.from_numpy(np.stack([tiling.cut(xp, o, blk) for o in group]))[:, None]
            return self.net.g_a(xb.to(self.device), self._coords(group, blk, shape)).cpu()

        latents = list(_run_groups(encode, groups, workers, report, "encoding texture blocks"))
        report("texture", 1.0, "texture analysed")
        return Analysis(shape, blk, full, float(np.float32(fill)), coded, latents, context)

    @torch.no_grad()
    def code(
        self, analysis: Analysis, rate: float, workers: Optional[int] = None, report: Optional[Reporter] = None
    ) -> TextureStreams:
        """Entropy-code analysed latents at `rate` (cheap: repeat it to search a budget)."""
        rate_q = quantise_rate(rate)
        level = self._level(rate_q)
        gain = self.net.gain.gain(level).cpu()
        fixed = self._params.fixed_gain(level) if analysis.context is not None else None
        report = report or Reporter()

        @torch.no_grad()
        def entropy_code(k):
            context = None if analysis.context is None else (analysis.context[k], fixed)
            return compress_latents(self.net, self._params, analysis.latents[k] * gain, context)

        z_all, y_all = [], []
        groups = range(len(analysis.latents))
        for z_s, y_s in _run_groups(entropy_code, groups, workers, report, "entropy coding"):
            z_all += z_s
            y_all += y_s
        report("texture", 1.0, "texture encoded")
        a = analysis
        return TextureStreams(a.shape, a.block, a.full, rate_q, a.fill, a.coded, z_all, y_all)

    @torch.no_grad()
    def decompress(
        self,
        streams: Union[TextureStreams, bytes],
        workers: Optional[int] = None,
        progress=None,
        cancel=None,
        box=None,
        side: Optional[TemplateSide] = None,
    ) -> np.ndarray:
        """Streams (or their bytes) -> the decoded float32 volume of the original shape, or with
        `box` ((z0, y0, x0), (z1, y1, x1)) only that part of it, decoding only the block groups
        that reach it; the values are exactly those of the whole decode (same groups, same calls).
        `side`: the template on the frame, as the encoder had it (networks that read it)."""
        if not isinstance(streams, TextureStreams):
            streams = TextureStreams.from_bytes(streams)
        streams.validate()
        shape, blk = streams.shape, streams.block
        lo, hi = box or ((0, 0, 0), shape)
        if not all(0 <= a < b <= n for a, b, n in zip(lo, hi, shape)):
            raise ValueError(f"box {lo}..{hi} is not inside the texture {shape}")
        level = self._level(streams.rate_q)
        inv_gain = self.net.gain.inverse_gain(level).to(self.device)
        fixed = self._params.fixed_gain(level) if self._params.reads_template else None
        out = np.full([b - a for a, b in zip(lo, hi)], streams.fill, dtype=np.float32)
        todo = [o for o, c in zip(tiling.origins(shape, blk), streams.coded) if c]
        y_size = [b // 8 for b in blk]
        report = Reporter(progress, cancel)
        report.check()
        meets = [tiling.overlap(o, blk, lo, hi) is not None for o in todo]
        starts = [k for k in range(0, len(todo), GROUP) if any(meets[k : k + GROUP])]

        @torch.no_grad()
        def decode(k):
            group = todo[k : k + GROUP]
            terms = self._context(side, group, blk, shape)
            try:
                y_hat = decompress_latents(
                    self.net,
                    self._params,
                    streams.z_strings[k : k + len(group)],
                    streams.y_strings[k : k + len(group)],
                    y_size,
                    None if terms is None else (terms, fixed),
                )
            except FormatError:
                raise
            except Exception as exc:  # the entropy coder's own complaints about bad input
                raise FormatError(f"texture stream does not decode: {exc}") from exc
            xb = self.net.g_s(y_hat.to(self.device) * inv_gain, self._coords(group, blk, shape))
            return group, xb[:, 0].float().cpu().numpy()

        for group, xb in _run_groups(decode, starts, workers, report, "decoding texture blocks"):
            for o, v in zip(group, xb):
                part = tiling.overlap(o, blk, lo, hi)
                if part is not None:
                    dst, src = part
                    out[dst] = v[src]
        report("texture", 1.0, "texture decoded")
        return out


#: what `TextureNet.state_dict()` holds: float32 weights, int32 CDF tables (anything else, e.g. a
#: bfloat16 tensor in a tampered bundle, would reach NumPy or the coder as a type they reject)
_STATE_DTYPES = (torch.float32, torch.int32)


def _st_metadata(data: bytes) -> dict:
    """The metadata of a safetensors byte string (safetensors' `load` drops it)."""
    if len(data) < 8:
        raise ValueError("truncated safetensors header")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > len(data) - 8 or n > 1 << 24:
        raise ValueError("bad safetensors header length")
    return json.loads(bytes(data[8 : 8 + n]).decode("utf-8")).get("__metadata__") or {}


__all__ = ["Analysis", "TextureCodec", "TextureStreams"]
