"""DeepSTD end to end: `encode(volume, bundle, ratio=…) -> bytes` and `decode(bytes) -> Volume`.

Encode registers the scan to the bundle's template (Cycle-INR; the backward network, sized to a
share of the byte budget, is the shape code), warps it into the template frame, maps intensities by
the bundle's rule and codes the aligned texture in blocks, with rate control on the complete file.
Decode reverses it using only the file and the bundle, and restores the original grid, geometry and
dtype exactly.

    encoder  preparation, rate control, `encode`     decoder  `Decoder`, `decode`
    layers   keep mask and maximum-error residual     header   `DstdHeader`, lean/fitted policy
    files    `encode_file`, `decode_file`, `read_keep`
"""

from .decoder import Decoder, decode
from .encoder import TOLERANCE, budget_for, encode
from .files import decode_file, encode_file, read_keep
from .header import DstdHeader

__all__ = [
    "encode",
    "decode",
    "encode_file",
    "decode_file",
    "read_keep",
    "budget_for",
    "Decoder",
    "DstdHeader",
    "TOLERANCE",
]
