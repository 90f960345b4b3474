"""Throughput of the texture stage alone (no registration, no warp) on template-aligned volumes.

    python scripts/bench_texture.py --bundle la-mr --threads 2 out/la-mr.work/LA_*.npz

Inputs are aligned volumes as `deepstd train` caches them (`unit` arrays on the texture frame).
Encode = analysis + entropy coding at --rate; decode = entropy decoding + synthesis. Mvoxel/s
count the frame's voxels; each figure is the best of --repeat runs after a warm-up. One JSON line
per volume, then the totals.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from deepstd.bundle import load_bundle, texture_codec


def best_of(repeat: int, fn):
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("volumes", nargs="+", help=".npz files with a `unit` array (texture frame, z, y, x)")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    codec = texture_codec(bundle, "cpu")
    block = bundle.config.texture.block
    total = {"voxels": 0, "encode_s": 0.0, "decode_s": 0.0, "bytes": 0}
    for path in args.volumes:
        unit = np.load(path)["unit"].astype(np.float32)
        codec.decompress(codec.compress(unit, args.rate, block, workers=args.threads), workers=args.threads)
        encode_s, streams = best_of(args.repeat, lambda: codec.compress(unit, args.rate, block, workers=args.threads))
        data = streams.to_bytes()
        decode_s, _ = best_of(args.repeat, lambda: codec.decompress(data, workers=args.threads))
        row = {
            "volume": path,
            "voxels": int(unit.size),
            "bytes": len(data),
            "encode_s": round(encode_s, 3),
            "decode_s": round(decode_s, 3),
            "encode_mvox_s": round(unit.size / encode_s / 1e6, 2),
            "decode_mvox_s": round(unit.size / decode_s / 1e6, 2),
        }
        print(json.dumps(row), flush=True)
        for key in total:
            total[key] += row[key]
    print(
        json.dumps(
            {
                "total_voxels": total["voxels"],
                "threads": args.threads,
                "rate": args.rate,
                "encode_mvox_s": round(total["voxels"] / total["encode_s"] / 1e6, 2),
                "decode_mvox_s": round(total["voxels"] / total["decode_s"] / 1e6, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
