"""Cycle-INR loss terms on a batch of points (paper, Methods; ../shared/docs/METHOD.md Idea 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample(image: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Values (M,) of a (1, 1, D, H, W) image at `grid_sample` points (M, 3) ordered (x, y, z)."""
    out = F.grid_sample(image, grid.view(1, 1, 1, -1, 3), mode=mode, padding_mode="border", align_corners=True)
    return out.view(-1)


def ncc(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalised cross-correlation of two value batches, in [-1, 1]."""
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum() + eps)


def jacobian_loss(jac_u: torch.Tensor) -> torch.Tensor:
    """Balanced regulariser mean |1 - det(I + du/dq)|: penalises compression and folding alike."""
    eye = torch.eye(3, dtype=jac_u.dtype, device=jac_u.device)
    return (1.0 - torch.linalg.det(eye + jac_u)).abs().mean()


def cycle_loss(residual_voxels: torch.Tensor) -> torch.Tensor:
    """Mean squared cycle residual Phi_B(Phi_F(x)) - x, in template voxels."""
    return (residual_voxels * residual_voxels).sum(dim=1).mean()
