"""Shape stage: Cycle-INR registration to a template and the compact shape code (docs/REGISTRATION.md).

`register(moving, template) -> Registration`; network fields and their metrics in `field` (grids
and warping: `deepstd.grid`);
`encode_shape`/`decode_shape`/`width_for_budget` in `code`; `register_files` is what
`deepstd register` calls.
"""

from .code import ShapeCode, decode_shape, encode_shape, width_for_budget
from .cycle_inr import CycleSettings
from .field import displacement, folding_fraction, inverse_consistency, jacobian_determinant, to_sitk_field
from .files import register_files
from .preview import FieldSnapshot
from .register import Registration, register
from .siren import Siren

__all__ = [
    "CycleSettings",
    "FieldSnapshot",
    "Registration",
    "ShapeCode",
    "Siren",
    "decode_shape",
    "displacement",
    "encode_shape",
    "folding_fraction",
    "inverse_consistency",
    "jacobian_determinant",
    "register",
    "register_files",
    "to_sitk_field",
    "width_for_budget",
]
