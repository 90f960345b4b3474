"""Where a bundle's learned texture decodes closer than the refinement layer alone, on training scans.

For each scan and ratio: the file that holds the learned texture (`require_texture=True`) against
the file of the refinement layer alone (`encoder.refinement_only`), both decoded, mean squared
error in the scan's dtype. Writes the bundle's standing record (`bundle.TextureStanding`) next to
the bundle; where the texture decoded closer on none of the pairs, the default encoder does not
try it (`--effort 1` still does). Held-out scans are refused: the record is a training measurement.

    python scripts/texture_standing.py --bundle la-mr --ratios 32,64,128,256,512 \\
        --out Logic/deepstd/bundles/la-mr.standing.json SCAN [SCAN ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    import numpy as np
    import torch

    from deepstd.bundle import TextureStanding, load_bundle
    from deepstd.codec import decode, encode
    from deepstd.codec.encoder import refinement_only
    from deepstd.errors import BudgetError
    from deepstd.io import read
    from deepstd.progress import Reporter
    from deepstd.volume import cast_to_dtype

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--ratios", default="32,64,128,256,512")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("scans", nargs="+")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bundle = load_bundle(args.bundle)
    held_out = set(bundle.config.holdout_files)
    refused = [s for s in args.scans if Path(s).name in held_out]
    if refused:
        print(f"held-out scans of {bundle.name}: {refused}", file=sys.stderr)
        return 2
    ratios = [float(r) for r in args.ratios.split(",")]
    pairs = []
    for path in args.scans:
        scan = read(path)
        original = cast_to_dtype(scan.array, scan.dtype).astype(np.float64)

        def error(data: bytes) -> float:
            return float(np.mean((decode(data, bundle, device="cpu").array.astype(np.float64) - original) ** 2))

        for ratio in ratios:
            budget = int(scan.raw_bytes // ratio)
            started = time.perf_counter()
            try:
                texture = error(encode(scan, bundle, ratio=ratio, device="cpu", workers=1, require_texture=True))
            except BudgetError:
                texture = None
            alone = error(refinement_only(scan, budget, Reporter()))
            pair = {"scan": Path(path).name, "ratio": ratio, "texture_mse": texture, "alone_mse": alone}
            pairs.append(pair)
            print(json.dumps({**pair, "s": round(time.perf_counter() - started, 1)}), flush=True)
    closer = sum(1 for p in pairs if p["texture_mse"] is not None and p["texture_mse"] < p["alone_mse"])
    record = TextureStanding(closer, len(pairs)).record(
        bundle.name,
        bundle.sha256,
        measured_by="python scripts/texture_standing.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        results=pairs,
    )
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{bundle.name}: the texture decoded closer on {closer} of {len(pairs)} pairs -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
