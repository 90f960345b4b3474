"""Maximum-error mode against the error-bounded peers, in one run: DeepSTD (`max_error=E`), SZ3
(absolute bound) and SPERR (point-wise error) at the same bound on the same scans, every file
decoded and its maximum error measured; E = 0 also against JPEG XL and JPEG-LS lossless.

    python scripts/bench_max_error.py --bundle la-mr --data ../shared/data/left_atrium_mr \
        --bounds 0,1,2,4 --scans 3 --out docs/bench/max_error.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from deepstd import codec, peers, read
from deepstd.bundle import load_bundle


def error_bounded(name: str, array: np.ndarray, bound: float):
    """(bytes, decoded) of SZ3 / SPERR at an absolute point-wise bound (values rounded back to integers)."""
    import imagecodecs

    a = array.astype(np.float32)
    tiny = max(bound, 1e-6)  # the libraries need a positive bound; with integer data this is lossless
    if name == "sz3":
        data = imagecodecs.sz3_encode(a, mode="abs", abs=tiny)
        back = imagecodecs.sz3_decode(data, shape=a.shape, dtype=a.dtype)
    else:
        data = imagecodecs.sperr_encode(a, mode="pwe", level=tiny)
        back = imagecodecs.sperr_decode(data, shape=a.shape, dtype=a.dtype)
    return len(data), np.rint(back)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="la-mr")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--bounds", default="0,1,2,4")
    ap.add_argument("--scans", type=int, default=3, help="the first N of the bundle's held-out scans")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    bounds = [float(b) for b in args.bounds.split(",")]
    rows = []
    for name in bundle.config.holdout_files[: args.scans]:
        volume = read(args.data / "images" / name)
        for bound in bounds:
            started = time.perf_counter()
            data = codec.encode(volume, bundle, max_error=bound, device="cpu")
            seconds = time.perf_counter() - started
            worst = float(np.abs(codec.decode(data, bundle).array - volume.array).max())
            results = {"deepstd": {"bytes": len(data), "max_error": worst, "encode_s": round(seconds, 1)}}
            for peer in ("sz3", "sperr"):
                started = time.perf_counter()
                size, back = error_bounded(peer, volume.array, bound)
                results[peer] = {
                    "bytes": size,
                    "max_error": float(np.abs(back - volume.array).max()),
                    "encode_s": round(time.perf_counter() - started, 1),
                }
            if bound == 0:
                for peer_name in ("jpegxl-lossless", "jpegls-lossless"):
                    peer = peers.get(peer_name)
                    coded = peer.encode(volume, volume.raw_bytes * 4)
                    worst_peer = float(np.abs(peer.decode(coded, volume) - volume.array).max())
                    results[peer_name] = {"bytes": len(coded), "max_error": worst_peer}
            for r in results.values():
                r["ratio"] = round(volume.raw_bytes / r["bytes"], 3)
            row = {"scan": name, "bound": bound, "raw_bytes": volume.raw_bytes, **results}
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    codecs = ["deepstd", "sz3", "sperr", "jpegxl-lossless", "jpegls-lossless"]
    print("| E | " + " | ".join(codecs) + " |")
    print("|---|" + "---|" * len(codecs))
    for bound in bounds:
        sel = [r for r in rows if r["bound"] == bound]
        cells = []
        for c in codecs:
            have = [r[c] for r in sel if c in r]
            cells.append(
                f"{np.mean([h['ratio'] for h in have]):.2f}× (max err {max(h['max_error'] for h in have):g})"
                if have
                else "–"
            )
        print(f"| {bound:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
