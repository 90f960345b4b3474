"""The texture network's entropy tables, read verbatim from its weights, and the exact scale-index
lookup: what coding and decoding need, without compressai (the tables use its buffer names, so
bundles built with it load unchanged). The coding itself is `deepstd.rans`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from ..errors import BundleError
from ..rans import CdfTable

#: a symbol offset beyond this is no latent (and far outside any trained table)
MAX_OFFSET = 1 << 20
#: CompressAI's lower bound of the Gaussian scales, if a bundle does not store it
SCALE_BOUND = 0.11


@dataclass
class EntropyTables:
    """The texture network's entropy tables: z per channel (with the bottleneck's medians), y per
    Gaussian scale index (with the scale table and its lower bound)."""

    z: CdfTable
    medians: torch.Tensor
    y: CdfTable
    scale_table: np.ndarray
    scale_bound: np.float32

    @classmethod
    def from_state(cls, state: Dict[str, torch.Tensor], channels: int) -> "EntropyTables":
        """Read from a `TextureNet` state dict (CompressAI's buffer names); BundleError if any
        table is missing or not one the coder can trust."""

        def get(key: str, default: Optional[torch.Tensor] = None) -> np.ndarray:
            value = state.get(key, default)
            if value is None:
                raise BundleError(f"texture weights: {key} is missing (run TextureNet.update())")
            return value.detach().cpu().numpy()

        def table(prefix: str) -> CdfTable:
            cdf = get(f"{prefix}._quantized_cdf").astype(np.int64)
            lengths, offsets = get(f"{prefix}._cdf_length").astype(np.int64), get(f"{prefix}._offset").astype(np.int64)
            if lengths.shape == offsets.shape and offsets.size and int(np.abs(offsets).max()) > MAX_OFFSET:
                raise BundleError(f"texture weights: {prefix} CDF offsets are out of range")
            return CdfTable(cdf, lengths, offsets, f"texture weights: {prefix}", BundleError)

        z = table("entropy_bottleneck")
        if z.rows != channels:
            raise BundleError("texture weights: entropy_bottleneck CDF tables have the wrong shape")
        quantiles = get("entropy_bottleneck.quantiles")
        if quantiles.shape != (channels, 1, 3) or not np.isfinite(quantiles).all():
            raise BundleError("texture weights: entropy_bottleneck quantiles are invalid")
        y = table("gaussian_conditional")
        scales = get("gaussian_conditional.scale_table").astype(np.float32)
        if scales.shape != (y.rows,) or not (scales > 0).all() or not (scales[1:] > scales[:-1]).all():
            raise BundleError("texture weights: gaussian_conditional scale table is not positive and increasing")
        bound = get("gaussian_conditional.lower_bound_scale.bound", torch.tensor([SCALE_BOUND])).astype(np.float32)
        if bound.shape != (1,) or not np.isfinite(bound).all():
            raise BundleError("texture weights: gaussian_conditional scale bound is invalid")
        medians = torch.from_numpy(np.ascontiguousarray(quantiles[:, 0, 1], dtype=np.float32))
        return cls(z, medians, y, scales, np.float32(bound[0]))

    def scale_indexes(self, scales: torch.Tensor) -> np.ndarray:
        """CompressAI's `build_indexes`: the number of table scales below max(scale, bound)
        (float32 comparisons of exact values, so the same everywhere)."""
        s = np.maximum(scales.numpy().astype(np.float32), self.scale_bound)
        return np.searchsorted(self.scale_table[:-1], s, side="left")


def channel_rows(shape: List[int]) -> np.ndarray:
    """Row (channel) of each element of one item (C, d, h, w) in C order."""
    c, inner = shape[0], int(np.prod(shape[1:]))
    return np.repeat(np.arange(c), inner)
