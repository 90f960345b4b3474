"""Which torch device a job runs on: `auto` takes CUDA when there is one."""

from __future__ import annotations

from .errors import InputError

DEVICES = ("auto", "cpu", "cuda")


def pick_device(device: str = "auto") -> str:
    """'cpu' or 'cuda' for a requested device; an InputError for one that is unknown or absent."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r} (auto, cpu or cuda)")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA device is available")
    return device


__all__ = ["DEVICES", "pick_device"]
