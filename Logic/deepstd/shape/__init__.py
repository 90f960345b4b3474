"""Shape stage: Cycle-INR registration to a template and the compact shape code (docs/REGISTRATION.md).

`register(moving, template) -> Registration`; fields, warping and metrics in `field`;
`encode_shape`/`decode_shape`/`width_for_budget` in `code`; `register_files` is what
`deepstd register` calls.
"""
from .code import ShapeCode, decode_shape, encode_shape, width_for_budget
from .cycle_inr import CycleSettings
from .field import (compose, displacement, folding_fraction, inverse_consistency, jacobian_determinant,
                    to_sitk_field, warp)
from .files import register_files
from .frame import Frame
from .preview import FieldSnapshot
from .register import Registration, register
from .siren import Siren

__all__ = ["CycleSettings", "FieldSnapshot", "Frame", "Registration", "ShapeCode", "Siren", "compose",
           "decode_shape", "displacement", "encode_shape", "folding_fraction", "inverse_consistency",
           "jacobian_determinant", "register", "register_files", "to_sitk_field", "warp", "width_for_budget"]
