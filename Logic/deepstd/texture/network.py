"""3DTCMPE: the texture autoencoder with a mean–scale hyperprior and a variable-rate gain unit.

    x ─g_a─▶ y ·gain ─h_a─▶ z ─[EntropyBottleneck]─▶ ẑ ─h_s─▶ (scales, means)
    ŷ = Q(y·gain) ─[GaussianConditional(scales, means)]─▶ ŷ ·inv_gain ─g_s─▶ x̂

g_a: RBS(1→N) ▸ TCM(N) at /2 (optional) ▸ RBS(N→N) ▸ TCM(N) at /4 ▸ 3×3×3 conv s2 (N→M): y at /8.
g_s mirrors it with sub-pixel up-sampling. h_a goes /8→/16, h_s back. Every TCM block's
attention path reads the learned positional field at its tokens (block mode). h_s uses only
3×3×3 convs, ReLU and pixel shuffles so it can be run exactly in integer arithmetic
(`entropy.IntegerEntropyParameters`) for bit-exact decoding.

With `context` > 0 the entropy model also reads the template on the texture frame (`context`):

    template ─branch─▶ f (/8) ─┬─ to_means ─▶ Δμ:   means  = μ + Δμ·gain
                               └─ to_scales ─▶ Δs:  scales = σ·exp(Δs)

The heads start at zero, so a context network fine-tuned from a plain one starts exactly where that
one is. Branch and heads are convs and ReLUs, and the gain and exp are tabulated, so the integer
copy (`entropy.IntegerEntropyParameters`) stays exact.

CompressAI's entropy models are needed only to train and to build the CDF tables
(`trainable=True`); a network built for coding (`trainable=False`) keeps their tensors as stored
and codes with `tables.EntropyTables`, so encoding and decoding need no compressai.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .layers import PixelShuffle3d, ResidualBlockUpsample, ResidualBlockWithStride, TCMBlock, conv3, subpel_conv3
from .position import PositionalField
from .rate import GainUnit
from .tables import EntropyTables


@dataclass(frozen=True)
class TextureConfig:
    """Network sizes. Defaults are sized for 2 CPU cores (see docs/TEXTURE.md)."""

    channels: int = 24  # N: feature channels of g_a / g_s
    latent: int = 32  # M: channels of y
    hyper: int = 24  # channels of z and of the hyper transforms
    window: int = 4  # attention window (tokens per axis)
    heads: int = 1
    half_res_tcm: bool = True  # a TCM block at 1/2 resolution too (better, slower)
    pos_dim: int = 8  # positional-field channels (0 disables block positions)
    pos_grid: int = 6
    levels: int = 6  # trained rate levels of the gain unit
    gain_span: float = 3.0  # initial spread of log-gains across levels
    context: int = 0  # channels the template branch gives the entropy model (0: no template context)
    context_range: Tuple[float, float] = (0.0, 1.0)  # template values that map to unit 0 and 1

    def to_dict(self) -> Dict:
        """As JSON has it (the range a list), so a bundle's stored config compares equal; without a
        template context its keys are left out, so such a network's weights keep their old bytes."""
        d = {**asdict(self), "context_range": list(self.context_range)}
        if not self.context:
            del d["context"], d["context_range"]
        return d

    #: (low, high) of every integer size a bundle may state: far above any trained network, small
    #: enough that building one stays within a few hundred MB (a bundle is checked before use)
    LIMITS = {"channels": (1, 256), "latent": (1, 256), "hyper": (1, 256), "window": (1, 16), "heads": (1, 16),
              "pos_dim": (0, 64), "pos_grid": (1, 64), "levels": (1, 64), "context": (0, 64)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Dict) -> "TextureConfig":
        if not isinstance(d, dict):
            raise ValueError("the texture config is not an object")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown texture config keys {sorted(unknown)}")
        for key, (low, high) in cls.LIMITS.items():
            value = d.get(key, getattr(cls, key))
            if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
                raise ValueError(f"texture config {key} must be an integer in {low}..{high}, got {value!r}")
        if not isinstance(d.get("half_res_tcm", True), bool):
            raise ValueError("texture config half_res_tcm must be true or false")
        span = d.get("gain_span", cls.gain_span)
        if not (isinstance(span, (int, float)) and not isinstance(span, bool) and 0 <= span <= 20):
            raise ValueError(f"texture config gain_span must be a number in 0..20, got {span!r}")
        span_ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
        bounds = d.get("context_range", cls.context_range)
        if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(map(span_ok, bounds))
                and bounds[0] < bounds[1]):  # fmt: skip
            raise ValueError(f"texture config context_range must be two finite numbers low < high, got {bounds!r}")
        config = cls(**{**d, "context_range": tuple(float(v) for v in bounds)})
        if config.channels % config.heads:
            raise ValueError("texture config channels must be a multiple of heads")
        return config


#: the template's scale factor exp(Δs) is limited to e**±CONTEXT_LOG_LIMIT (its table's range)
CONTEXT_LOG_LIMIT = 8.0


class TemplateContext(nn.Module):
    """Reads the template on the frame (side values / 2**SIDE_BITS) into `features` channels at the
    latents' 1/8 resolution (three stride-2 3×3×3 convs) and turns them into a shift of the latents'
    means (per unit of gain, so one shift serves every rate) and a log-factor of their scales."""

    def __init__(self, latent: int, features: int):
        super().__init__()
        self.branch = nn.Sequential(
            conv3(1, 16, stride=2), nn.ReLU(), conv3(16, 24, stride=2), nn.ReLU(), conv3(24, features, stride=2),
            nn.ReLU(),
        )  # fmt: skip
        self.to_means, self.to_scales = nn.Conv3d(features, latent, 1), nn.Conv3d(features, latent, 1)
        for head in (self.to_means, self.to_scales):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, scales, means, side, gain):
        f = self.branch(side)
        log_factor = self.to_scales(f).clamp(-CONTEXT_LOG_LIMIT, CONTEXT_LOG_LIMIT)
        return scales * torch.exp(log_factor), means + self.to_means(f) * gain


def scale_table():
    """CompressAI's 64 log-spaced scales 0.11 .. 256."""
    return [float(v) for v in torch.exp(torch.linspace(math.log(0.11), math.log(256), 64))]


class StoredTensors(nn.Module):
    """Stands in for a CompressAI entropy model when coding: keeps whatever tensors the state dict
    holds under its name, verbatim, and gives them back in `state_dict()`."""

    def __init__(self):
        super().__init__()
        self.stored: Dict[str, torch.Tensor] = {}

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for key, value in self.stored.items():
            destination[prefix + key] = value

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        mine = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
        self.stored = {k[len(prefix) :]: v.detach().cpu().clone() for k, v in mine.items()}


def _compressai_entropy_models(hyper: int):
    try:
        from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "training the texture network needs compressai (pip install compressai==1.2.8); coding does not"
        ) from error
    return EntropyBottleneck(hyper), GaussianConditional(None)


class TextureNet(nn.Module):
    def __init__(self, config: TextureConfig = TextureConfig(), trainable: bool = True):
        super().__init__()
        self.trainable = trainable
        self._tables: Optional[EntropyTables] = None
        c = self.config = config
        N, M, H, P = c.channels, c.latent, c.hyper, c.pos_dim
        self.pos = PositionalField(P, c.pos_grid) if P else None
        tcm = lambda shift: TCMBlock(N, c.window, c.heads, shift, P)  # noqa: E731
        # analysis
        self.a_down1 = ResidualBlockWithStride(1, N)
        self.a_tcm1 = tcm(False) if c.half_res_tcm else None
        self.a_down2 = ResidualBlockWithStride(N, N)
        self.a_tcm2 = tcm(True)
        self.a_out = conv3(N, M, stride=2)
        # synthesis
        self.s_up1 = ResidualBlockUpsample(M, N)
        self.s_tcm1 = tcm(True)
        self.s_up2 = ResidualBlockUpsample(N, N)
        self.s_tcm2 = tcm(False) if c.half_res_tcm else None
        self.s_out = subpel_conv3(N, 1)
        # hyperprior
        self.h_a = nn.Sequential(
            conv3(M, H), nn.LeakyReLU(inplace=True), conv3(H, H, stride=2), nn.LeakyReLU(inplace=True), conv3(H, H)
        )
        self.h_s = nn.Sequential(conv3(H, H), nn.ReLU(), conv3(H, H * 8), PixelShuffle3d(2), nn.ReLU(), conv3(H, 2 * M))
        if trainable:
            self.entropy_bottleneck, self.gaussian_conditional = _compressai_entropy_models(H)
        else:
            self.entropy_bottleneck, self.gaussian_conditional = StoredTensors(), StoredTensors()
        self.gain = GainUnit(c.levels, M, c.gain_span)
        self.context = TemplateContext(M, c.context) if c.context else None

    # --- transforms --------------------------------------------------------------------------
    def _pos(self, coords: Optional[Dict[int, torch.Tensor]], factor: int):
        if self.pos is None or coords is None:
            return None
        return self.pos(coords[factor])

    def g_a(self, x: torch.Tensor, coords=None) -> torch.Tensor:
        x = self.a_down1(x)
        if self.a_tcm1 is not None:
            x = self.a_tcm1(x, self._pos(coords, 2))
        x = self.a_tcm2(self.a_down2(x), self._pos(coords, 4))
        return self.a_out(x)

    def g_s(self, y: torch.Tensor, coords=None) -> torch.Tensor:
        x = self.s_tcm1(self.s_up1(y), self._pos(coords, 4))
        x = self.s_up2(x)
        if self.s_tcm2 is not None:
            x = self.s_tcm2(x, self._pos(coords, 2))
        return self.s_out(x)

    def entropy_parameters(self, z_hat: torch.Tensor, side: Optional[torch.Tensor] = None, gain=None):
        """(scales, means) of the gained latents, in float (training, the latent search); coding uses
        the exact integer copy. `side`: the template on the blocks in unit intensities, and `gain`
        the rate's gain (networks that read the template)."""
        scales, means = self.h_s(z_hat).chunk(2, 1)
        if self.context is None:
            return scales, means
        if side is None or gain is None:
            raise ValueError("this texture network reads the template: the side input is missing")
        return self.context(scales, means, side, gain)

    # --- training ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, level: torch.Tensor, coords=None, side: Optional[torch.Tensor] = None):
        """Noisy-quantisation pass for training. level: (N,) fractional levels in [0, K−1]."""
        if not self.trainable:
            raise RuntimeError("this network was built for coding (trainable=False): it cannot be trained")
        features = self.g_a(x, coords)
        gain = self.gain.gain(level)
        y = features * gain
        z = self.h_a(y)
        z_hat, z_lik = self.entropy_bottleneck(z)
        scales, means = self.entropy_parameters(z_hat, side, gain)
        y_hat, y_lik = self.gaussian_conditional(y, scales, means=means)
        x_hat = self.g_s(y_hat * self.gain.inverse_gain(level), coords)
        return {"x_hat": x_hat, "likelihoods": {"y": y_lik, "z": z_lik}, "features": features}

    def aux_loss(self) -> torch.Tensor:
        return self.entropy_bottleneck.loss()

    # --- entropy tables ----------------------------------------------------------------------
    def update(self) -> None:
        """Build the CDF tables (CompressAI). Done once when weights are saved; loading never
        recomputes them, so every machine codes with the very same tables."""
        self.gaussian_conditional.update_scale_table(scale_table(), force=True)
        self.gaussian_conditional.update()
        self.entropy_bottleneck.update(force=True)
        self._tables = None

    @property
    def entropy_tables(self) -> EntropyTables:
        """The coding tables, read from the state dict once (BundleError if unusable)."""
        if self._tables is None:
            self._tables = EntropyTables.from_state(self.state_dict(), self.config.hyper)
        return self._tables

    def load_state_dict(self, state_dict, strict: bool = True):
        if self.trainable:
            from compressai.models.utils import update_registered_buffers

            update_registered_buffers(
                self.entropy_bottleneck, "entropy_bottleneck", ["_quantized_cdf", "_offset", "_cdf_length"], state_dict
            )
            update_registered_buffers(
                self.gaussian_conditional,
                "gaussian_conditional",
                ["_quantized_cdf", "_offset", "_cdf_length", "scale_table"],
                state_dict,
            )
        self._tables = None
        return super().load_state_dict(state_dict, strict=strict)
