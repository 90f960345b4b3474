"""One slice of a scan as every codec leaves it at one ratio, with the residue under each: the
benchmark's picture (issue 12). Each codec fits the same byte budget as in `deepstd bench`.

    python scripts/codec_grid.py SCAN --bundle la-mr --ratio 128 --png docs/images/codecs-la-128.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from deepstd import codec, metrics
    from deepstd.bench import DEFAULT_PEERS
    from deepstd.bundle import load_bundle
    from deepstd.errors import DeepSTDError
    from deepstd.io import read
    from deepstd.peers import available

    ap = argparse.ArgumentParser()
    ap.add_argument("scan", type=Path)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--ratio", type=float, default=128)
    ap.add_argument("--peers", nargs="*", default=list(DEFAULT_PEERS))
    ap.add_argument("--slice", type=int, help="axial slice (default: the middle)")
    ap.add_argument("--png", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    volume = read(args.scan)
    bundle = load_bundle(args.bundle)
    budget = int(volume.raw_bytes // args.ratio)
    k = volume.array.shape[0] // 2 if args.slice is None else args.slice
    results = []
    data = codec.encode(volume, bundle, budget_bytes=budget, device="cpu")
    results.append(("DeepSTD", len(data), codec.decode(data, bundle, device="cpu").array))
    for peer in available(args.peers):
        try:
            stream = peer.encode(volume, budget)
            results.append((peer.name, len(stream), peer.decode(stream, volume)))
        except DeepSTDError as exc:  # cannot reach the ratio, or failed: a blank column says so
            results.append((peer.name, None, str(exc).split(":")[0]))
        print(results[-1][0], results[-1][1], flush=True)
    lo, hi = np.percentile(volume.array, [0.5, 99.5])
    limit = float(np.percentile(np.abs(volume.array - results[0][2]), 99.5)) or 1.0
    columns = len(results) + 1
    fig, axes = plt.subplots(2, columns, figsize=(2.2 * columns, 4.8))
    axes[0, 0].imshow(volume.array[k], cmap="gray", vmin=lo, vmax=hi)
    axes[0, 0].set_title("original", fontsize=8)
    for (name, nbytes, decoded), top, bottom in zip(results, axes[0, 1:], axes[1, 1:]):
        if nbytes is None:
            top.set_title(f"{name}\n{decoded}", fontsize=7)
            continue
        top.imshow(decoded[k], cmap="gray", vmin=lo, vmax=hi)
        top.set_title(
            f"{name}\n{volume.raw_bytes / nbytes:.0f}x {metrics.psnr(volume.array, decoded):.2f} dB "
            f"SSIM {metrics.ssim(volume.array, decoded):.3f}",
            fontsize=7,
        )
        bottom.imshow(volume.array[k] - decoded[k], cmap="RdBu_r", vmin=-limit, vmax=limit)
    for ax in axes.ravel():
        ax.axis("off")
    axes[1, 0].text(
        0.5,
        0.5,
        f"residue\n(original − decoded)\n±{limit:.0f}",
        ha="center",
        va="center",
        fontsize=8,
        transform=axes[1, 0].transAxes,
    )
    fig.suptitle(f"{args.scan.name}, slice {k}, budget {budget} bytes ({args.ratio:g}x)", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
