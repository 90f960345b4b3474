"""Run every peer codec on one hippocampus and one left-atrium scan at 32/64/128/256x and print a
table (achieved ratio, PSNR, seconds) — a quick look at where each peer stands before the full
`deepstd bench`. Peers that cannot reach a ratio, crash, or are not installed get a row saying so.

    python scripts/peers_smoke.py [--data ../shared/data] [--peers hevc sperr3d ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from deepstd import Volume, peers
from deepstd.errors import DeepSTDError
from deepstd.peers import PeerBudgetError

SCANS = ("hippocampus_mr/images/hippocampus_011.nii.gz", "left_atrium_mr/images/LA_1D7CUD1955YZPGK8XHJX.nii.gz")
RATIOS = (32, 64, 128, 256)
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NO_RESULT = f"{'-':>8} {'-':>7} {'-':>7} {'-':>7}"


def psnr(volume: Volume, decoded: np.ndarray) -> float:
    """PSNR over the original's real data range (max - min), as the benchmark reports it."""
    mse = float(np.mean((decoded.astype(np.float64) - volume.array) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(volume.data_range() ** 2 / mse)


def measure(peer: peers.Peer, volume: Volume, budget: int) -> str:
    """One table cell group: achieved ratio, PSNR and seconds, or why there is none."""
    try:
        start = time.perf_counter()
        data = peer.encode(volume, budget)
        encoded = time.perf_counter()
        decoded = peer.decode(data, volume)
        done = time.perf_counter()
    except PeerBudgetError as error:
        return f"{NO_RESULT}  cannot: best {volume.raw_bytes / error.smallest_bytes:.1f}x"
    except DeepSTDError as error:
        return f"{NO_RESULT}  {type(error).__name__}: {error}"
    return (
        f"{volume.raw_bytes / len(data):8.1f} {psnr(volume, decoded):7.2f} {encoded - start:7.2f} {done - encoded:7.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--peers", nargs="*", default=list(peers.PEERS))
    args = parser.parse_args()

    for name, reason in peers.unavailable().items():
        print(f"unavailable: {name}: {reason}")
    print(f"{'scan':<28} {'peer':<20} {'target':>6} {'ratio':>8} {'PSNR':>7} {'enc s':>7} {'dec s':>7}")
    for relative in SCANS:
        volume = Volume.from_sitk(sitk.ReadImage(str(args.data / relative)))
        scan = Path(relative).name.replace(".nii.gz", "")[:28]
        for peer in peers.available(args.peers):
            targets = ("lossless",) if peer.lossless else RATIOS
            for target in targets:
                budget = volume.raw_bytes if peer.lossless else volume.raw_bytes // target
                print(f"{scan:<28} {peer.name:<20} {target:>6} {measure(peer, volume, budget)}", flush=True)


if __name__ == "__main__":
    main()
