"""The gradual-degradation threshold: 75th percentile of the registration loss after the probe
steps at the default omega, over training registrations (paper, Methods). Stored in the bundle."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Optional

import numpy as np

from ..progress import CancelToken, ProgressCallback, Reporter
from ..volume import Volume
from .cycle_inr import CycleSettings
from .register import register

PERCENTILE = 75.0


def calibrate_threshold(
    scans: Iterable[Volume],
    template: Volume,
    settings: Optional[CycleSettings] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    **register_kw,
) -> float:
    """Register each scan for `probe_steps` at the default omega; return the loss percentile."""
    base = settings or CycleSettings()
    probe = replace(base, steps=base.probe_steps, threshold=None)
    scans = list(scans)
    reporter = Reporter(progress, cancel)
    losses = []
    for i, scan in enumerate(scans):
        reporter("calibrate", i / len(scans), f"registration {i + 1}/{len(scans)}")
        losses.append(register(scan, template, probe, cancel=cancel, **register_kw).loss)
    reporter("calibrate", 1.0, "done")
    return float(np.percentile(losses, PERCENTILE))
