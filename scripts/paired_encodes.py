"""Bundles compared end to end on the same scans at the same budgets: one encode and decode per scan,
ratio and bundle, PSNR over the scan's range, the mean paired difference to the first bundle. Used to
choose between candidate bundles on *training* scans before the held-out benchmark.

    python scripts/paired_encodes.py --ratios 64,128,256 --bundles old.dstdb,new.dstdb \\
        ../shared/data/hippocampus_mr/images/hippocampus_011.nii.gz ...
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main(argv=None) -> None:
    from deepstd.bundle import load_bundle
    from deepstd.codec import decode, encode
    from deepstd.errors import BudgetError
    from deepstd.io import read

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", nargs="+")
    parser.add_argument("--ratios", default="64,128,256")
    parser.add_argument("--bundles", required=True, help="comma-separated bundles; the first is the reference")
    args = parser.parse_args(argv)
    names = args.bundles.split(",")
    bundles = [load_bundle(path) for path in names]
    gains: dict = {}
    for path in args.scans:
        scan = read(path)
        x = scan.array.astype(np.float64)
        peak = float(x.max() - x.min())
        for ratio in (float(r) for r in args.ratios.split(",")):
            psnr = []
            for bundle in bundles:
                try:
                    out = decode(encode(scan, bundle, ratio=ratio, device="cpu"), bundle, device="cpu").array
                except BudgetError:
                    psnr.append(None)
                    continue
                psnr.append(10 * np.log10(peak**2 / np.mean((out.astype(np.float64) - x) ** 2)))
            print(json.dumps({"scan": path, "ratio": ratio, "psnr": psnr}), flush=True)
            if None not in psnr:
                for k in range(1, len(bundles)):
                    gains.setdefault((ratio, k), []).append(psnr[k] - psnr[0])
    for (ratio, k), g in sorted(gains.items()):
        print(f"{names[k]} at {ratio:g}x: {np.mean(g):+.3f} dB paired over {names[0]} (n={len(g)})")


if __name__ == "__main__":
    main()
