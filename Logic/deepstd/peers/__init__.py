"""Peer codecs: what DeepSTD is measured against, each fitted to the same byte budget.

`PEERS` maps a peer's name to its adapter; `get(name)` looks one up with a clear error, and
`available()` lists those that can run here with the reason for each that cannot.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from ..errors import InputError
from .base import Peer, PeerError, PeerUnavailable
from .budget import PeerBudgetError
from .inr import InrSiren
from .jpeg2000 import Htj2kSlices, Jpeg2000Components, Jpeg2000Slices
from .jpegxl import JpegXlLossless, JpegXlSlices
from .lossless import JpegLsSlices, ZstdRaw
from .scientific import Sperr3d, Sz3, Zfp
from .video import Av1, Hevc
from .vvc import Vvc

PEERS: Dict[str, Peer] = {
    peer.name: peer
    for peer in (
        Jpeg2000Slices(),
        Jpeg2000Components(),
        Htj2kSlices(),
        JpegXlSlices(),
        Hevc(),
        Vvc(),
        Av1(),
        Sperr3d(),
        Sz3(),
        Zfp(),
        InrSiren(),
        JpegLsSlices(),
        JpegXlLossless(),
        ZstdRaw(),
    )
}


def get(name: str) -> Peer:
    """The peer called `name`; an InputError listing the known names otherwise."""
    try:
        return PEERS[name]
    except KeyError:
        raise InputError(f"unknown peer codec {name!r}; known: {', '.join(PEERS)}") from None


def unavailable() -> Dict[str, str]:
    """Name → reason for every peer that cannot run here."""
    reasons = {name: peer.unavailable_reason() for name, peer in PEERS.items()}
    return {name: reason for name, reason in reasons.items() if reason is not None}


def available(names: Optional[List[str]] = None) -> List[Peer]:
    """The peers (all, or those named) that can run here."""
    missing = unavailable()
    return [get(name) for name in (names or list(PEERS)) if name not in missing]


__all__ = ["PEERS", "Peer", "PeerError", "PeerUnavailable", "PeerBudgetError", "get", "available", "unavailable"]
