"""How well does the template, resampled onto a scan's texture frame, predict the aligned scan?
Correlation inside the scan's support, and the PSNR of the best affine fit of the template against
that of the scan's mean (unit intensities). Measured before probing the template as decoder-side
information (scripts/template_context_probe.py, docs/TEXTURE.md).

    python scripts/template_correlation.py --bundle hippocampus-mr SCAN.nii.gz [...]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    import torch
    from texture_gap import aligned, template_on

    from deepstd.bundle import resolve_bundle

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", nargs="+")
    parser.add_argument("--bundle", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bundle = resolve_bundle(args.bundle)
    for path in args.scans:
        unit, support, coding = aligned(path, bundle)
        frame = coding.frame
        side = template_on(frame, bundle)
        inside = support & ~np.isnan(side)
        x, y = side[inside].astype(np.float64), unit[inside].astype(np.float64)
        a, b = np.polyfit(x, y, 1)
        fit, mean = np.mean((a * x + b - y) ** 2), np.var(y)
        print(
            f"{Path(path).name}: frame {frame.size}, r = {np.corrcoef(x, y)[0, 1]:.3f}, PSNR of the scan's mean "
            f"{10 * math.log10(1 / mean):.2f} dB, of a·template + b {10 * math.log10(1 / fit):.2f} dB"
        )


if __name__ == "__main__":
    main()
