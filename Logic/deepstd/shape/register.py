"""Register a scan to a template: prepare the image pair, run Cycle-INR, package the result."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import SimpleITK as sitk
import torch

from ..device import pick_device
from ..errors import InputError
from ..grid import Frame
from ..progress import CancelToken, ProgressCallback, Reporter
from ..volume import Volume
from . import field as fields
from .code import encode_shape
from .cycle_inr import CycleSettings, Fit, fit_cycle
from .intensity import normalise
from .prealign import matrix_transform, prealign
from .preview import preview_grid, snapshot


@dataclass
class Registration:
    """Result of `register`: both networks (on the CPU, whatever device fitted them), the
    pre-alignment and the template frame."""

    frame: Frame
    matrix: np.ndarray  # template LPS -> moving LPS pre-alignment
    fit: Fit
    settings: CycleSettings
    seconds: float
    info: dict = field(default_factory=dict)

    @property
    def omega(self) -> float:
        return self.fit.omega

    @property
    def loss(self) -> float:
        return self.fit.loss

    def forward_field(self, reporter: Optional[Reporter] = None) -> np.ndarray:
        """ITK displacement on the template grid: template point p reads the scan at p + u(p)."""
        return fields.displacement(self.fit.forward, self.frame, post=self.matrix, reporter=reporter)

    def shape_code(self, bits: int = 8) -> bytes:
        return encode_shape(self.fit.backward, self.matrix, bits)


def register(
    moving: Volume,
    template: Volume,
    settings: Optional[CycleSettings] = None,
    prealignment: str = "moments",
    downsample: int = 2,
    foreground: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    threads: Optional[int] = None,
    device: str = "cpu",
) -> Registration:
    """Cycle-INR registration of `moving` to `template` (fields live on the template grid).

    `foreground` restricts the training batches to voxels where either image is above 5 % of
    its normalised range (saves effort on air in CT). `threads` caps torch's CPU threads.
    `device` ("cpu", "cuda", "cuda:1", "auto") is where the networks and the fit loop run; the
    pre-alignment and the resampling of the pair stay on the CPU, and the result's networks are
    moved back to the CPU. An unknown or absent device is an InputError before any work.
    """
    target = resolve_device(device)
    settings = settings or CycleSettings()
    reporter = Reporter(progress, cancel)
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    reporter("register", 0.0, "preparing the image pair")
    frame = Frame.of(template)
    fixed_img, moving_img = _as_sitk(template), _as_sitk(moving)
    matrix = prealign(fixed_img, moving_img, prealignment, settings.seed)
    reporter("register", 0.0, f"pre-alignment: {prealignment}")
    coarse = frame.coarse(downsample)
    fixed = _resample(fixed_img, coarse, np.eye(4), downsample)
    moved = _resample(moving_img, coarse, matrix, downsample)
    mask = torch.from_numpy((np.maximum(fixed, moved) > 0.05)) if foreground else None
    grid = preview_grid(frame)
    fit = fit_cycle(
        torch.from_numpy(fixed)[None, None].to(target),
        torch.from_numpy(moved)[None, None].to(target),
        frame,
        coarse,
        settings,
        reporter,
        preview=lambda f: snapshot(f, frame, matrix, grid),
        mask=mask,
    )
    fit.to(torch.device("cpu"))  # what leaves registration lives on the CPU (the decoder's side)
    return Registration(
        frame,
        matrix,
        fit,
        settings,
        time.perf_counter() - start,
        {"prealignment": prealignment, "downsample": downsample, "device": str(target)},
    )


def resolve_device(device: str = "cpu") -> torch.device:
    """The torch device a registration runs on: `pick_device`'s choices plus "cuda:N"."""
    name, colon, index = str(device).partition(":")
    if not colon:
        return torch.device(pick_device(name))
    if name != "cuda" or not index.isdigit():
        raise InputError(f"unknown device {device!r} (auto, cpu, cuda or cuda:N)")
    pick_device("cuda")  # an InputError when there is no CUDA at all
    if int(index) >= torch.cuda.device_count():
        raise InputError(f"device {device!r} requested but there are {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name, int(index))


def prealignment_only(moving: Volume, template: Volume, prealignment: str = "moments", seed: int = 0) -> np.ndarray:
    """The template LPS -> moving LPS pre-alignment matrix alone (no Cycle-INR): what a shape code
    without a network stores."""
    return prealign(_as_sitk(template), _as_sitk(moving), prealignment, seed)


def _as_sitk(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(normalise(volume))
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    return image


def _resample(image: sitk.Image, grid: Frame, matrix: np.ndarray, factor: int) -> np.ndarray:
    """`image` smoothed for a x`factor` grid and read at matrix(p) for every point p of `grid`."""
    if factor > 1:
        sigma = [0.5 * factor * s for s in image.GetSpacing()]
        image = sitk.SmoothingRecursiveGaussian(image, sigma)
    ref = sitk.Image(list(grid.size), sitk.sitkFloat32)
    ref.SetSpacing(grid.spacing)
    ref.SetOrigin(grid.origin)
    ref.SetDirection(grid.direction)
    out = sitk.Resample(image, ref, matrix_transform(matrix), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).astype(np.float32)
