"""The shape code an encode can afford: a backward network sized to a share of the byte budget,
or the pre-alignment alone when even the narrowest network would take too much.

On hippocampus crops at 200x the narrowest (4-wide) network was worth 0.0-0.3 dB and cost ~100
bytes more than the 60-byte pre-alignment-only code, so below SHAPE_SHARE of the budget the
network goes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional

from ..bundle import RegistrationConfig
from ..grid import Frame
from ..progress import Progress, ProgressCallback, Reporter
from ..volume import Volume

#: share of the byte budget the shape code may take (never more than the bundle's default width)
SHAPE_SHARE = 0.12
#: bits per network weight in a shape code
SHAPE_BITS = 8
#: in the header's preset dictionary like the encoder's warnings (see `codec.encoder`)
UNLIKE_TEMPLATE_WARNING = (
    "registration loss {loss:.3f} is above the bundle's calibrated threshold {threshold:.3f}: "
    "the scan is unlike the template; the texture carries the difference"
)


@dataclass(frozen=True)
class CodedShape:
    """A registration's result as the encoder stores it: the template frame, the shape code's
    bytes, its statistics for the header, and a warning when the scan is unlike the template."""

    frame: Frame
    code: bytes
    stats: Dict[str, Any]
    warning: Optional[str] = None


def code_shape(
    volume: Volume,
    template: Volume,
    config: RegistrationConfig,
    budget: Optional[int],
    reporter: Reporter,
    device: str = "cpu",
) -> CodedShape:
    """Register `volume` to `template` and code the backward network in SHAPE_SHARE of `budget`
    (None: the bundle's full width). The fit runs on `device`; the code is made from the networks
    back on the CPU, so its bytes are what the (CPU) decoder reads."""
    from .code import MIN_WIDTH, code_bytes, encode_shape, width_for_budget
    from .cycle_inr import CycleSettings
    from .register import prealignment_only, register, resolve_device

    resolve_device(device)  # an unknown or absent device fails here, before any work
    narrowest = code_bytes(MIN_WIDTH, config.depth, SHAPE_BITS)
    if budget is not None and SHAPE_SHARE * budget < narrowest:
        reporter("register", 0.45, f"pre-alignment only ({config.prealignment}): the budget has no room for a network")
        matrix = prealignment_only(volume, template, config.prealignment, config.seed)
        return CodedShape(Frame.of(template), encode_shape(None, matrix, SHAPE_BITS), {"shape_width": 0})
    full = code_bytes(config.width, config.depth, SHAPE_BITS)
    shape_budget = full if budget is None else max(narrowest, min(int(SHAPE_SHARE * budget), full))
    width = width_for_budget(shape_budget, config.depth, SHAPE_BITS, max_width=config.width)
    known = set(CycleSettings.__dataclass_fields__)
    settings = replace(CycleSettings(**{k: v for k, v in config.cycle_settings().items() if k in known}), width=width)
    reg = register(
        volume,
        template,
        settings,
        prealignment=config.prealignment,
        downsample=config.downsample,
        progress=monotonic(reporter.scaled(0.0, 0.45).callback()),
        cancel=reporter.cancel,
        device=device,
    )
    warning = None
    if config.threshold is not None and reg.loss > config.threshold:
        warning = UNLIKE_TEMPLATE_WARNING.format(loss=reg.loss, threshold=config.threshold)
    return CodedShape(
        reg.frame,
        reg.shape_code(SHAPE_BITS),
        {"shape_width": width, "shape_bits": SHAPE_BITS, "omega": reg.omega, "registration_loss": round(reg.loss, 5)},
        warning,
    )


def monotonic(callback: ProgressCallback) -> ProgressCallback:
    """Gradual degradation re-fits at a lower omega; a progress bar should not run backwards."""
    high: List[float] = [0.0]

    def forward(event: Progress) -> None:
        high[0] = max(high[0], event.fraction)
        callback(Progress(event.stage, high[0], event.message, event.snapshot))

    return forward


__all__ = ["CodedShape", "code_shape", "SHAPE_SHARE", "SHAPE_BITS"]
