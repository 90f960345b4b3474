"""The chest CT at two ratios: sizes, PSNR, MAE in HU, times, and one slice as a picture.

    python scripts/ct_figure.py ../shared/data/ct/chest_ct_dicom --ratios 64,256 \\
        --png docs/images/chest-ct-64x-256x.png --json docs/bench/chest-ct/figure.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    import deepstd
    from deepstd.evaluate import round_trip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan")
    parser.add_argument("--bundle", default="ct-torso")
    parser.add_argument("--ratios", default="64,256")
    parser.add_argument("--slice", type=int, default=None, help="axial slice (default: the middle one)")
    parser.add_argument("--png", required=True, type=Path)
    parser.add_argument("--json", required=True, type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    scan = deepstd.read(args.scan)
    k = scan.array.shape[0] // 2 if args.slice is None else args.slice
    rows, results = [], []
    for ratio in (float(r) for r in args.ratios.split(",")):
        result = round_trip(scan, args.bundle, ratio=ratio, device="cpu")
        row = {
            "ratio_target": ratio,
            "bytes": len(result.data),
            "ratio": scan.raw_bytes / len(result.data),
            **{key: round(float(value), 4) for key, value in result.metrics.items()},
            "encode_s": round(result.encode_s, 1),
            "decode_s": round(result.decode_s, 1),
            "warnings": result.warnings,
        }
        print(json.dumps(row), flush=True)
        results.append(row)
        rows.append((f"{row['ratio']:.0f}x, {row['bytes']:,} B", result.decoded.array[k]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"scan": str(args.scan), "slice": k, "results": results}, indent=1) + "\n")
    lung = dict(cmap="gray", vmin=-1400, vmax=200)  # lung window W1600 L-600
    fig, axes = plt.subplots(2, 1 + len(rows), figsize=(4 * (1 + len(rows)), 8), dpi=70)
    axes[0, 0].imshow(scan.array[k], **lung)
    axes[0, 0].set_title(f"original, slice {k}")
    axes[1, 0].axis("off")
    for column, (title, decoded) in enumerate(rows, start=1):
        axes[0, column].imshow(decoded, **lung)
        axes[0, column].set_title(title)
        axes[1, column].imshow(np.abs(decoded - scan.array[k]), cmap="magma", vmin=0, vmax=300)
        axes[1, column].set_title("|error| HU (0-300)")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
