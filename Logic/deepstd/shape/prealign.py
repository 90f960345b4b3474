"""Optional linear pre-alignment of the moving scan to the template before Cycle-INR.

Scans of one population are often cropped differently (the left-atrium crops all start at origin
0), so a physical-space identity can be tens of millimetres off; the SIREN only needs to model
the remaining non-linear part. The result is a 4x4 matrix mapping template LPS points to moving
LPS points, composed into every exported field.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..bundle import PREALIGNMENTS
from ..errors import InputError

MODES = PREALIGNMENTS


def prealign(fixed: sitk.Image, moving: sitk.Image, mode: str = "moments", seed: int = 0) -> np.ndarray:
    """4x4 template->moving matrix: identity, centre-of-mass translation, or a low-res affine fit.

    `fixed`/`moving` are float images already intensity-normalised to [0, 1].
    """
    if mode not in MODES:
        raise InputError(f"unknown pre-alignment {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "none" or not (_has_mass(fixed) and _has_mass(moving)):
        return np.eye(4)  # moments are undefined on a blank image (ITK refuses: "Total Mass ... zero")
    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    if mode == "affine":
        init = _fit_affine(fixed, moving, sitk.AffineTransform(init), seed)
    return affine_matrix(sitk.AffineTransform(init))


def _has_mass(image: sitk.Image) -> bool:
    return bool(np.any(sitk.GetArrayViewFromImage(image) > 0))


def _fit_affine(fixed: sitk.Image, moving: sitk.Image, start: sitk.AffineTransform, seed: int) -> sitk.Transform:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 60, relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2])
    reg.SetSmoothingSigmasPerLevel([2, 1])
    reg.SetInitialTransform(start, inPlace=True)  # `start` itself is optimised: it stays an AffineTransform
    reg.Execute(fixed, moving)
    return start


def affine_matrix(transform: sitk.AffineTransform) -> np.ndarray:
    """The 4x4 homogeneous matrix of an ITK affine transform (centre folded in)."""
    a = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(transform.GetCenter(), dtype=np.float64)
    t = np.asarray(transform.GetTranslation(), dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = c + t - a @ c
    return m


def matrix_transform(matrix: np.ndarray) -> sitk.AffineTransform:
    """An ITK affine transform from a 4x4 template->moving matrix."""
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(float(v) for v in matrix[:3, :3].ravel()))
    tx.SetTranslation(tuple(float(v) for v in matrix[:3, 3]))
    return tx
