"""Validation RD points of bundles trained on the same population, compared at equal bytes: PSNR
interpolated (linear in log bytes) at the ratios every bundle's curve covers. Used for the
scarce-data ablation (plain / augmentation / teacher).

    python scripts/compare_bundles.py out/prostate/plain.dstdb out/prostate/augment.dstdb ...
"""

from __future__ import annotations

import sys

import numpy as np


def main() -> None:
    from deepstd.bundle import load_bundle

    curves = {}
    for path in sys.argv[1:]:
        bundle = load_bundle(path)
        points = sorted(bundle.config.validation, key=lambda p: p["bytes"])
        curves[path] = (
            np.log([p["ratio"] for p in points]),
            [p["psnr"] for p in points],
            bundle.config.training.get("seconds"),
        )
    low = max(min(r) for r, _, _ in curves.values())
    high = min(max(r) for r, _, _ in curves.values())
    ratios = [float(np.exp(v)) for v in np.linspace(low, high, 4)]
    print("| bundle | training s | " + " | ".join(f"PSNR at {r:.0f}x" for r in ratios) + " |")
    print("|---|---|" + "---|" * len(ratios))
    for path, (log_ratio, psnr, seconds) in curves.items():
        order = np.argsort(log_ratio)
        values = np.interp(np.log(ratios), np.asarray(log_ratio)[order], np.asarray(psnr)[order])
        print(f"| {path} | {seconds} | " + " | ".join(f"{v:.2f}" for v in values) + " |")


if __name__ == "__main__":
    main()
