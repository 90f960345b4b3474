"""The INR anchor on left-atrium scans: per-scan SIREN fitting time, decode time, bytes, PSNR, SSIM.

Checks the claim "DeepSTD is much faster than INR compression at equal quality": the `inr-siren`
peer (docs/INR.md) is run on the last N scans of the LA image folder (held out from the `la-mr`
bundle's training) at each ratio, and the table is printed as Markdown. With `--reference`, the
rows `deepstd bench` recorded for the same scans (DeepSTD and chosen peers) are summarised below
it, so the numbers sit side by side.

    python scripts/bench_inr.py [--data ../shared/data/left_atrium_mr] [--scans 3] \
        [--ratios 64 128] [--threads 1] [--reference docs/bench/la-mr/results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "left_atrium_mr"
DEFAULT_REFERENCE = ROOT / "docs" / "bench" / "la-mr" / "results.jsonl"
REFERENCE_CODECS = ("deepstd", "sperr3d", "hevc", "jpeg2000-components")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="LA dataset folder (its images/*.nii.gz are used)"
    )
    parser.add_argument("--scans", type=int, default=3, help="how many of the last scans (sorted)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[64, 128])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="Adam steps (default inr.STEPS)")
    parser.add_argument("--batch", type=int, default=None, help="voxels per step (default inr.BATCH)")
    parser.add_argument(
        "--reference",
        type=Path,
        default=DEFAULT_REFERENCE,
        help="a `deepstd bench` results.jsonl to quote for the same scans",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from deepstd import metrics
    from deepstd.io import read
    from deepstd.peers import inr

    scans = sorted((args.data / "images").glob("*.nii.gz"))[-args.scans :]
    if not scans:
        raise SystemExit(f"no scans in {args.data / 'images'}")
    settings = dict(steps=args.steps or inr.STEPS, batch=args.batch or inr.BATCH)
    print(
        f"# inr-siren: {settings['steps']} steps x {settings['batch']} voxels, depth {inr.DEPTH}, "
        f"lr {inr.LR:g} (cosine to /20), omega {inr.OMEGA_FIRST:g}/{inr.OMEGA_HIDDEN:g}, "
        f"seed {inr.SEED}, threads {args.threads}",
        flush=True,
    )
    rows = []
    for scan in scans:
        volume = read(scan)
        for ratio in args.ratios:
            budget = int(volume.raw_bytes // ratio)
            peer = inr.InrSiren(**settings)
            t0 = time.perf_counter()
            data = peer.encode(volume, budget)
            t1 = time.perf_counter()
            decoded = peer.decode(data, volume)
            t2 = time.perf_counter()
            row = {
                "scan": scan.name,
                "voxels": volume.voxels,
                "target_ratio": ratio,
                "budget": budget,
                "bytes": len(data),
                "ratio": volume.raw_bytes / len(data),
                "widths": peer.last_widths,
                "fit_s": peer.last_fit_seconds,
                "encode_s": t1 - t0,
                "decode_s": t2 - t1,
                "psnr": metrics.psnr(volume.array, decoded),
                "ssim": metrics.ssim(volume.array, decoded),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    print()
    print("| scan | Mvox | ratio | widths | bytes (budget) | fit s | encode s | decode s | PSNR dB | SSIM |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scan']} | {r['voxels'] / 1e6:.2f} | {r['target_ratio']:g}× | "
            f"{'-'.join(map(str, r['widths']))} | {r['bytes']} ({r['budget']}) | {r['fit_s']:.0f} | "
            f"{r['encode_s']:.0f} | {r['decode_s']:.1f} | {r['psnr']:.2f} | {r['ssim']:.3f} |"
        )

    names = {r["scan"] for r in rows}
    reference = []
    if args.reference and args.reference.exists():
        reference = [json.loads(line) for line in args.reference.read_text().splitlines() if line.strip()]
        reference = [r for r in reference if r["scan"] in names and r["codec"] in REFERENCE_CODECS]
    print()
    print(
        f"Same {len(names)} scans; cells: mean SSIM / median PSNR dB, median encode s / decode s"
        + (f" (other codecs: {args.reference})" if reference else "")
    )
    print()
    print("| codec | " + " | ".join(f"{r:g}×" for r in args.ratios) + " |")
    print("|---|" + "---|" * len(args.ratios))
    table = [("inr-siren", rows)] + [
        (name, [r for r in reference if r["codec"] == name and r.get("status") == "ok"])
        for name in REFERENCE_CODECS
        if any(r["codec"] == name for r in reference)
    ]
    for name, records in table:
        cells = []
        for ratio in args.ratios:
            ok = [r for r in records if float(r["target_ratio"]) == float(ratio)]
            if not ok:
                cells.append("-")
                continue
            cells.append(
                f"{np.mean([r['ssim'] for r in ok]):.3f} / {np.median([r['psnr'] for r in ok]):.2f}, "
                f"{np.median([r['encode_s'] for r in ok]):.1f} s / "
                f"{np.median([r['decode_s'] for r in ok]):.1f} s"
            )
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
