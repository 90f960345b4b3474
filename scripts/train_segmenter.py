"""Train a small 3D U-Net segmenter for the downstream-agreement benchmark (`deepstd bench --downstream`).

The population folder holds images/ and labels/ with the same file names; the last --holdout files
(sorted) are held out exactly as the codec bundles hold them out, and the segmenter's own Dice vs the
ground truth on them is stored in the weights' metadata. The commands that made the shipped weights:

    python scripts/train_segmenter.py --data ../shared/data/left_atrium_mr --holdout 6 --name la-mr \
        --classes 2 --working-spacing 1.25 --patch 32,64,64 --steps 600 \
        --out Logic/deepstd/segmenters/la-mr.safetensors
    python scripts/train_segmenter.py --data ../shared/data/hippocampus_mr --holdout 15 --name hippocampus-mr \
        --classes 3 --patch 48,64,48 --steps 600 \
        --out Logic/deepstd/segmenters/hippocampus-mr.safetensors

(docs/DOWNSTREAM.md records the exact step counts, times and the held-out Dice.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def triple(text: str):
    values = [float(v) for v in text.split(",")]
    return values * 3 if len(values) == 1 else values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="population folder with images/ and labels/")
    parser.add_argument("--holdout", type=int, required=True, help="hold out the last N sorted files")
    parser.add_argument("--name", required=True)
    parser.add_argument("--classes", type=int, required=True, help="including background")
    parser.add_argument("--channels", type=int, default=8, help="features at full resolution")
    parser.add_argument("--levels", type=int, default=2, help="poolings")
    parser.add_argument(
        "--working-spacing", type=triple, default=None, help="mm, one value or x,y,z (default: each scan's own grid)"
    )
    parser.add_argument(
        "--patch",
        type=lambda t: [int(v) for v in t.split(",")],
        required=True,
        help="training window z,y,x at the working spacing",
    )
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    args = parser.parse_args(argv)

    import torch

    from deepstd import downstream

    torch.set_num_threads(args.threads)
    train_pairs, held_out = downstream.split(args.data, args.holdout)
    config = downstream.default_config(args.classes, args.channels, args.levels, args.working_spacing, args.name)
    config["command"] = "python scripts/train_segmenter.py " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    segmenter = downstream.train(
        train_pairs,
        config,
        args.steps,
        args.patch,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        out=args.out,
        holdout_pairs=held_out,
        log=lambda line: print(line, flush=True),
    )
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1024:.0f} KiB) in {time.perf_counter() - started:.0f} s; {segmenter.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
