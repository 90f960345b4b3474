"""`register_files`: what `deepstd register MOVING TEMPLATE` calls (read, register, write, report)."""

from __future__ import annotations

import json
from dataclasses import fields as dc_fields
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from ..grid.sampling import warp
from ..progress import CancelToken, ProgressCallback, Reporter
from . import field as F
from .cycle_inr import CycleSettings
from .register import register, resolve_device

_SETTINGS = {f.name for f in dc_fields(CycleSettings)}
METRICS_STRIDE = 2


def register_files(
    moving: str,
    template: str,
    out_warped: Optional[str] = None,
    out_field: Optional[str] = None,
    json_path: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    moving_labels: Optional[str] = None,
    template_labels: Optional[str] = None,
    prealignment: str = "moments",
    threads: Optional[int] = None,
    device: str = "cpu",
    **settings,
) -> dict:
    """Register the scan at `moving` to `template`; write the warped scan and the ITK field.

    The field is a vector float64 image on the template grid (mm, LPS): template point p reads
    the moving scan at p + u(p), so `sitk.Resample(moving, template,
    sitk.DisplacementFieldTransform(field))` reproduces `out_warped`. With `moving_labels` (and
    `template_labels`) the labels are warped nearest-neighbour and Dice is reported.
    `settings` are `CycleSettings` fields (steps, omega, width, threshold, ...). `device`: where
    the fit runs ("cpu", "cuda", "cuda:N", "auto"); the fields and metrics are computed on the CPU.
    Returns the metrics dict that is also written to `json_path`.
    """
    from ..io import read, write
    from ..io.itk import write_image_atomic

    unknown = set(settings) - _SETTINGS
    if unknown:
        raise InputError(f"unknown registration setting(s): {', '.join(sorted(unknown))}")
    resolve_device(device)  # before reading anything
    reporter = Reporter(progress, cancel)
    reporter("read", 0.0, f"reading {moving}")
    mov, tpl = read(moving), read(template)
    reg = register(
        mov,
        tpl,
        CycleSettings(**settings),
        prealignment=prealignment,
        progress=progress,
        cancel=cancel,
        threads=threads,
        device=device,
    )
    disp = reg.forward_field(reporter)
    warped = warp(mov, disp, reg.frame, "linear", reporter=reporter)
    check = reg.frame.coarse(METRICS_STRIDE)  # folding and inverse consistency on every 2nd voxel
    det = F.jacobian_determinant(reg.fit.forward, check)
    ic_mean, ic_max = F.inverse_consistency(reg.fit.forward, reg.fit.backward, check, reg.frame)
    result = dict(
        moving=str(moving),
        template=str(template),
        seconds=round(reg.seconds, 3),
        omega=reg.omega,
        loss=reg.loss,
        steps=reg.fit.step,
        prealignment=prealignment,
        device=reg.info["device"],
        folding_fraction=F.folding_fraction(det),
        inverse_consistency_voxels=ic_mean,
        inverse_consistency_max_voxels=ic_max,
        metrics_grid_stride=METRICS_STRIDE,
        shape_code_bytes=len(reg.shape_code()),
    )
    if out_warped:
        reporter("write", 0.0, f"writing {out_warped}")
        write(warped, out_warped)
        result["out_warped"] = str(out_warped)
    if out_field:
        write_image_atomic(F.to_sitk_field(disp, reg.frame), out_field)
        result["out_field"] = str(out_field)
    if moving_labels:
        labels = warp(read(moving_labels), disp, reg.frame, "nearest")
        if template_labels:
            ref = read(template_labels).array
            result["dice"] = _dice(labels.array, ref)
            identity = warp(read(moving_labels), np.zeros_like(disp), reg.frame, "nearest")
            result["dice_before"] = _dice(identity.array, ref)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1))
    reporter("write", 1.0, "done")
    return result


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the template's foreground labels."""
    labels = [k for k in np.unique(b) if k != 0]
    return (
        float(np.mean([2.0 * np.sum((a == k) & (b == k)) / max(1, np.sum(a == k) + np.sum(b == k)) for k in labels]))
        if labels
        else float("nan")
    )
