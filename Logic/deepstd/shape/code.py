"""The shape code: the backward SIREN (plus the pre-alignment) as a few hundred to a few KB.

Layout (little endian): b"SC", version, bits, depth, flags, width (u16), omega (f32), the
pre-alignment (none / translation 3xf32 / affine 12xf32), then the weights: float16 (bits=16) or
per-tensor uniform codes of `bits` bits with (min, step) as f32, packed and deflated when that is
smaller (flag). With the no-network flag there are no weights: the deformation is the
pre-alignment alone (60 bytes, for budgets too small for any network). Everything the decoder
needs is in the bytes; nothing depends on float rounding of the platform beyond IEEE float16/32.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

from ..errors import BudgetError, FormatError
from .siren import Siren, parameter_count

MAGIC, VERSION = b"SC", 1
_HEAD = struct.Struct("<2sBBBBHf")
_DEFLATED, _TRANSLATION, _AFFINE, _NO_NETWORK = 1, 2, 4, 8
BITS = (4, 6, 8, 10, 12, 16)
MIN_WIDTH = 4
#: limits a decoder accepts: far above any bundle (width ≤ 32, depth 3, ω ≤ 12), small enough that
#: the network and its evaluation stay a few MB
MAX_WIDTH, MAX_DEPTH, MIN_OMEGA, MAX_OMEGA = 512, 8, 0.01, 1000.0
#: a pre-alignment must be an invertible, sanely scaled map (the decoder inverts it)
MAX_CONDITION = 1e6


@dataclass
class ShapeCode:
    """A decoded shape code: the backward network and the template->scan pre-alignment."""

    backward: Siren
    matrix: np.ndarray


def encode_shape(backward: Optional[Siren], matrix: np.ndarray = np.eye(4), bits: int = 8) -> bytes:
    """Serialise the backward network (quantised to `bits`; None: no network, the pre-alignment
    alone) and the 4x4 pre-alignment matrix."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}")
    flags, extra = 0, b""
    if not np.allclose(matrix, np.eye(4)):
        if np.allclose(matrix[:3, :3], np.eye(3)):
            flags, extra = _TRANSLATION, np.asarray(matrix[:3, 3], "<f4").tobytes()
        else:
            flags, extra = _AFFINE, np.asarray(matrix[:3, :4], "<f4").tobytes()
    if backward is None:
        return _HEAD.pack(MAGIC, VERSION, bits, 1, flags | _NO_NETWORK, 1, 1.0) + extra
    payload = b"".join(_quantise(t.detach().numpy().ravel(), bits) for t in _tensors(backward))
    packed = zlib.compress(payload, 9, wbits=-15)
    if len(packed) < len(payload):
        flags, payload = flags | _DEFLATED, packed
    head = _HEAD.pack(MAGIC, VERSION, bits, backward.depth, flags, backward.width, backward.omega)
    return head + extra + payload


def decode_shape(data: bytes) -> ShapeCode:
    """Inverse of `encode_shape`; raises FormatError on anything inconsistent."""
    if len(data) < _HEAD.size:
        raise FormatError("shape code truncated")
    magic, version, bits, depth, flags, width, omega = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION or bits not in BITS:
        raise FormatError("not a valid shape code (bad header)")
    if not (1 <= depth <= MAX_DEPTH and 1 <= width <= MAX_WIDTH):
        raise FormatError(f"shape code: network size {width}x{depth} is out of range")
    if not (np.isfinite(omega) and MIN_OMEGA <= omega <= MAX_OMEGA):
        raise FormatError(f"shape code: omega {omega!r} is out of range [{MIN_OMEGA:g}, {MAX_OMEGA:g}]")
    if flags & ~(_DEFLATED | _TRANSLATION | _AFFINE | _NO_NETWORK) or (flags & _TRANSLATION and flags & _AFFINE):
        raise FormatError("shape code: unknown or conflicting flags")
    pos, matrix = _HEAD.size, np.eye(4)
    if len(data) < pos + (12 if flags & _TRANSLATION else 48 if flags & _AFFINE else 0):
        raise FormatError("shape code truncated (pre-alignment)")
    if flags & _TRANSLATION:
        matrix[:3, 3] = np.frombuffer(data, "<f4", 3, pos)
        pos += 12
    elif flags & _AFFINE:
        matrix[:3, :4] = np.frombuffer(data, "<f4", 12, pos).reshape(3, 4)
        pos += 48
    _check_matrix(matrix)
    payload = data[pos:]
    if flags & _DEFLATED:
        expected = code_bytes(width, depth, bits) - PREALIGNMENT_BYTES
        try:
            inflater = zlib.decompressobj(wbits=-15)
            payload = inflater.decompress(payload, expected + 1)  # bounded: no inflation bomb
        except zlib.error as exc:
            raise FormatError(f"shape code weights corrupt: {exc}") from None
        if len(payload) > expected or inflater.unconsumed_tail:
            raise FormatError("shape code weights are longer than the network they describe")
    net = Siren(width, depth, omega)
    if flags & _NO_NETWORK:
        if pos != len(data):
            raise FormatError("shape code without a network has trailing bytes")
        with torch.no_grad():
            for t in net.parameters():
                t.zero_()  # displacement exactly 0: the pre-alignment alone
        return ShapeCode(net, matrix)
    offset = 0
    with torch.no_grad():
        for t in _tensors(net):
            values, offset = _dequantise(payload, offset, t.numel(), bits)
            if not np.all(np.isfinite(values)):
                raise FormatError("shape code weights are not finite")
            t.copy_(torch.from_numpy(values).view_as(t))
    if offset != len(payload):
        raise FormatError("shape code has trailing or missing bytes")
    return ShapeCode(net, matrix)


def _check_matrix(matrix: np.ndarray) -> None:
    linear = matrix[:3, :3]
    if not np.all(np.isfinite(matrix)) or np.linalg.cond(linear) > MAX_CONDITION or np.abs(matrix[:3, 3]).max() > 1e6:
        raise FormatError("shape code: the pre-alignment is not an invertible, finite map")


#: bytes of a shape code without a network (affine pre-alignment)
PREALIGNMENT_BYTES = _HEAD.size + 48


def code_bytes(width: int, depth: int, bits: int = 8) -> int:
    """Upper bound of `encode_shape`'s size (affine pre-alignment, no deflate gain)."""
    if bits == 16:
        weights = 2 * parameter_count(width, depth)
    else:
        weights = sum(8 + (n * bits + 7) // 8 for n in _tensor_sizes(width, depth))
    return _HEAD.size + 48 + weights


def width_for_budget(budget: int, depth: int = 3, bits: int = 8, max_width: int = 256) -> int:
    """The widest SIREN whose shape code is guaranteed to fit in `budget` bytes (the paper's knob)."""
    if code_bytes(MIN_WIDTH, depth, bits) > budget:
        raise BudgetError(
            f"a shape code needs at least {code_bytes(MIN_WIDTH, depth, bits)} bytes "
            f"(depth {depth}, {bits} bits); the budget is {budget}"
        )
    width = MIN_WIDTH
    while width < max_width and code_bytes(width + 1, depth, bits) <= budget:
        width += 1
    return width


def _tensors(net: Siren) -> List[torch.Tensor]:
    out = []
    for layer in list(net.hidden) + [net.out]:
        out += [layer.weight, layer.bias]
    return out


def _tensor_sizes(width: int, depth: int) -> List[int]:
    sizes = [3] + [width] * depth + [3]
    out = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        out += [a * b, b]
    return out


def _quantise(values: np.ndarray, bits: int) -> bytes:
    if bits == 16:
        return values.astype("<f2").tobytes()
    lo, hi = float(values.min()), float(values.max())
    lo32 = np.float32(lo)
    step = np.float32((hi - lo) / (2**bits - 1)) if hi > lo else np.float32(1.0)
    codes = np.clip(np.rint((values - lo32) / step), 0, 2**bits - 1).astype(np.uint16)
    return struct.pack("<ff", lo32, step) + _pack(codes, bits)


def _dequantise(payload: bytes, offset: int, n: int, bits: int):
    if bits == 16:
        end = offset + 2 * n
        if end > len(payload):
            raise FormatError("shape code weights truncated")
        return np.frombuffer(payload, "<f2", n, offset).astype(np.float32), end
    end = offset + 8 + (n * bits + 7) // 8
    if end > len(payload):
        raise FormatError("shape code weights truncated")
    lo, step = struct.unpack_from("<ff", payload, offset)
    codes = _unpack(payload[offset + 8 : end], n, bits)
    return (np.float32(lo) + codes.astype(np.float32) * np.float32(step)).astype(np.float32), end


def _pack(codes: np.ndarray, bits: int) -> bytes:
    """Pack unsigned codes, `bits` each, most significant bit first."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint16)
    return np.packbits(((codes[:, None] >> shifts) & 1).astype(np.uint8).ravel()).tobytes()


def _unpack(data: bytes, n: int, bits: int) -> np.ndarray:
    flat = np.unpackbits(np.frombuffer(data, np.uint8))[: n * bits].reshape(n, bits).astype(np.uint16)
    return (flat << np.arange(bits - 1, -1, -1, dtype=np.uint16)).sum(axis=1).astype(np.uint16)
