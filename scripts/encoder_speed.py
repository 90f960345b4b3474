"""Encode and decode time of the encoder's modes on one scan (docs/BENCHMARK.md, *Speed and memory*).

Modes: `texture` (`require_texture=True`: the learned texture, as 0.2.0 coded it), `compete` (the
texture and the refinement layer alone both coded, the closer kept: the default where a bundle has
no standing record), `default` (what `deepstd encode` does with the shipped bundle and its record).
Each mode runs twice in one process and the second, warm run counts; run it with nothing else on
the machine:

    python scripts/encoder_speed.py la-mr ../shared/data/left_atrium_mr/images/LA_BXJWOUYP2J3EN4U92517.nii.gz 128
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time


def main() -> None:
    import torch

    from deepstd import codec, read
    from deepstd.bundle import load_bundle
    from deepstd.container import unpack

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("scan")
    parser.add_argument("ratio", type=float)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default="texture,compete,default")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    scan = read(args.scan)
    modes = {
        "texture": (bundle, {"require_texture": True}),
        "compete": (dataclasses.replace(bundle, standing=None), {}),
        "default": (bundle, {}),
    }
    for mode in args.modes.split(","):
        chosen, options = modes[mode]
        for _ in range(2):
            started = time.perf_counter()
            data = codec.encode(scan, chosen, ratio=args.ratio, device="cpu", **options)
            encoded = time.perf_counter()
            codec.decode(data, bundle, device="cpu")
            decoded = time.perf_counter()
        print(
            json.dumps(
                {
                    "mode": mode,
                    "bytes": len(data),
                    "sections": sorted(unpack(data).sections),
                    "encode_s": round(encoded - started, 1),
                    "decode_s": round(decoded - encoded, 1),
                    "encode_mvox_s": round(scan.voxels / (encoded - started) / 1e6, 3),
                    "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
