"""A peer's held-out scores as the benchmark scores them (its float output) and as a user stores
them (rounded to the scan's dtype, as DeepSTD's output always is): docs/BENCHMARK.md, la-mr.

    python scripts/peer_dtype_scores.py la-mr ../shared/data/left_atrium_mr 64,128,256 [--peer sperr3d]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from deepstd import read
from deepstd.bundle import resolve_bundle
from deepstd.evaluate import measure
from deepstd.peers import get as get_peer
from deepstd.volume import cast_to_dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="its held-out files are scored")
    parser.add_argument("data", type=Path, help="the dataset folder (with images/)")
    parser.add_argument("ratios", help="comma-separated, e.g. 64,128,256")
    parser.add_argument("--peer", default="sperr3d")
    args = parser.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    peer = get_peer(args.peer)
    scores: dict = {(r, kind): [] for r in ratios for kind in ("float", "dtype")}
    for name in sorted(resolve_bundle(args.bundle).config.holdout_files):
        volume = read(str(args.data / "images" / name))
        for ratio in ratios:
            decoded = peer.decode(peer.encode(volume, int(volume.raw_bytes // ratio)), volume)
            scores[ratio, "float"].append(measure(volume.array, decoded))
            stored = cast_to_dtype(decoded, volume.dtype).astype(np.float32)
            scores[ratio, "dtype"].append(measure(volume.array, stored))
    for (ratio, kind), rows in scores.items():
        ssim = np.mean([row["ssim"] for row in rows])
        psnr = np.median([row["psnr"] for row in rows])
        print(f"{args.peer} {ratio:g}x {kind}: mean SSIM {ssim:.4f}  median PSNR {psnr:.2f} dB")


if __name__ == "__main__":
    main()
