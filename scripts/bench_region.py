"""Region decode against a full decode of the same file: time, peak memory, and voxel identity.

    python scripts/bench_region.py SCAN --bundle ct-torso --ratio 64 --roi-size 64 [--file F.dstd]

Times are the best of --repeat in-process runs after one warm-up (bundle and networks loaded);
peak memory (VmHWM) comes from a fresh process per mode. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = """
import sys, torch
def hwm():  # VmHWM: this process's peak RSS (ru_maxrss would include the forking parent's)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
from deepstd import codec
from deepstd.bundle import load_bundle, texture_codec
torch.set_num_threads(int(sys.argv[4]))
roi = None if sys.argv[3] == "full" else tuple(tuple(int(v) for v in c.split(",")) for c in sys.argv[3].split("/"))
bundle = load_bundle(sys.argv[2])
texture_codec(bundle, "cpu")
print(hwm())
codec.decode(open(sys.argv[1], "rb").read(), bundle, device="cpu", roi=roi)
print(hwm())
"""


def centred_box(size, sides):
    sides = [min(s, n) for s, n in zip(sides * 3 if len(sides) == 1 else sides, size)]
    lo = [(n - s) // 2 for n, s in zip(size, sides)]
    return tuple(lo), tuple(a + s for a, s in zip(lo, sides))


def main() -> None:
    import torch

    from deepstd import codec
    from deepstd.bundle import load_bundle, shipped_bundles
    from deepstd.io import read

    ap = argparse.ArgumentParser()
    ap.add_argument("scan", type=Path)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--ratio", type=float, default=64)
    ap.add_argument("--roi-size", type=int, nargs="+", default=[64], help="side (or x y z sides) of the centred box")
    ap.add_argument("--file", type=Path, help="reuse (or write) the .dstd here")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle_path = shipped_bundles().get(args.bundle, args.bundle)
    bundle = load_bundle(bundle_path)
    volume = read(args.scan)
    if args.file and args.file.exists():
        data = args.file.read_bytes()
    else:
        t = time.perf_counter()
        data = codec.encode(volume, bundle, ratio=args.ratio, device="cpu")
        print(f"encoded in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        if args.file:
            args.file.write_bytes(data)
    box = centred_box(volume.size, args.roi_size)
    codec.decode(data, bundle, device="cpu", roi=((0, 0, 0), (1, 1, 1)))  # warm-up

    def best(roi):
        times, out = [], None
        for _ in range(args.repeat):
            t = time.perf_counter()
            out = codec.decode(data, bundle, device="cpu", roi=roi)
            times.append(time.perf_counter() - t)
        return min(times), out

    full_s, full = best(None)
    roi_s, part = best(box)
    (x0, y0, z0), (x1, y1, z1) = box
    identical = bool(np.array_equal(part.array, full.array[z0:z1, y0:y1, x0:x1]))

    def peak(mode):
        """(max RSS once the runtime and networks are loaded, max RSS after the decode), MB"""
        arg = "full" if mode is None else "/".join(",".join(map(str, c)) for c in mode)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(args.file), str(bundle_path), arg, str(args.threads)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return [round(int(v) / 1024) for v in out.split()[-2:]]

    print(
        json.dumps(
            {
                "scan": str(args.scan),
                "size": list(volume.size),
                "bundle": bundle.name,
                "file_bytes": len(data),
                "ratio": round(volume.raw_bytes / len(data), 1),
                "roi": [list(box[0]), list(box[1])],
                "full_decode_s": round(full_s, 3),
                "roi_decode_s": round(roi_s, 3),
                "speedup": round(full_s / roi_s, 1),
                "identical": identical,
                "rss_mb_loaded_then_peak_full": peak(None) if args.file else None,
                "rss_mb_loaded_then_peak_roi": peak(box) if args.file else None,
                "threads": args.threads,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
