"""Continue training a bundle's texture codec on more scans of its population, keeping its template,
registration and texture config, and write the result as a new bundle.

The train/validation gap (scripts/texture_gap.py, docs/TEXTURE.md) showed the shipped `la-mr` codec
1.2-1.6 dB better on its 26 training scans than on unseen ones: more data should help. Scans are
aligned exactly as the encoder aligns them (cached per scan in the work folder, so an interrupted run
resumes), the network starts from the bundle's weights (`train(teacher=...)` with no distillation
term), and training checkpoints every 250 steps (`--resume` continues).

    python scripts/finetune_texture.py --bundle la-mr --work out/la-ft --steps 5000 \\
        --out out/la-mr-ft.dstdb ../shared/data/left_atrium_mr ../shared/data/left_atrium_mr_more

`--context N` adds a template branch of N channels to the entropy model (`texture.context`): the
network then reads the template on each scan's frame, and starts exactly as the bundle's network
(the branch's heads start at zero).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def aligned_cached(path: Path, bundle, work: Path, budget=None):
    """(unit, support, (margin, size, window)) of one scan on the texture frame the encoder would
    code it on (under a byte `budget`), cached; the last is what the decoder rebuilds the frame from
    (`context.side_for`)."""
    from texture_gap import aligned

    cached = work / (path.name.split(".")[0] + ("" if budget is None else f".{budget}") + ".npz")
    if cached.exists():
        data = np.load(cached)
        if "keys" in data:
            return data["unit"], data["support"], tuple(json.loads(str(data["keys"])))
    unit, support, coding = aligned(path, bundle, budget)
    keys = (coding.margin, coding.size, coding.window)
    np.savez(cached, unit=unit.astype(np.float32), support=support, keys=json.dumps(keys, default=int))
    return unit, support, keys


def main(argv=None) -> None:
    import torch

    from deepstd.alignment import block_for, intensity_map
    from deepstd.bundle import resolve_bundle, save_bundle, texture_codec
    from deepstd.texture.context import side_for
    from deepstd.texture.train import TrainSettings, evaluate, train
    from deepstd.training import scan_files

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="population folders (images/*.nii.gz)")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="the new bundle (.dstdb)")
    parser.add_argument("--steps", type=int, default=5000, help="further steps")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--context", type=int, default=0, help="template branch channels (0: as the bundle)")
    parser.add_argument(
        "--also-budget",
        type=int,
        metavar="BYTES",
        help="also train on each scan aligned as the encoder aligns it under a budget of BYTES (small "
        "budgets code the pre-alignment alone: the template then fits the scan less well)",
    )
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--report-rates", default="0,0.2,0.5,0.8,1", help="texture rates of the held-out before/after report"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bundle = resolve_bundle(args.bundle)
    training = bundle.config.training or {}
    held_out = set(training.get("holdout_files", []))
    args.work.mkdir(parents=True, exist_ok=True)
    files = [f for folder in args.folders for f in scan_files(folder)]
    train_files = [f for f in files if f.name not in held_out]
    val_files = [f for f in files if f.name in held_out]
    print(f"{len(train_files)} training scans, {len(val_files)} held out", flush=True)
    teacher = texture_codec(bundle, "cpu").net
    config = teacher.config
    if args.context:
        mapping = intensity_map(bundle.template.array, bundle.config.intensity)
        config = replace(config, context=args.context, context_range=(mapping.lo, mapping.hi))
    volumes, sides, val_volumes, val_supports, val_sides = [], [], [], [], []
    t0 = time.time()
    for i, path in enumerate(train_files + val_files):
        unit, support, keys = aligned_cached(path, bundle, args.work)
        side = side_for(config, bundle.template, *keys, unit.shape)
        if path in val_files:
            val_volumes.append(unit)
            val_supports.append(support)
            val_sides.append(side)
        else:
            volumes.append(unit)
            sides.append(side)
            if args.also_budget:
                unit, _, keys = aligned_cached(path, bundle, args.work, args.also_budget)
                volumes.append(unit)
                sides.append(side_for(config, bundle.template, *keys, unit.shape))
        print(f"aligned {i + 1}/{len(files)} {path.name} ({time.time() - t0:.0f} s)", flush=True)
    old = dict(training.get("train_settings", {}))
    settings = replace(
        TrainSettings(**{k: v for k, v in old.items() if k in TrainSettings.__dataclass_fields__}),
        steps=args.steps,
        lr=args.lr,
        distill_alpha=0.0,
        seed=1,
    )
    codec = train(
        volumes,
        args.work / "texture",
        config,
        settings,
        resume=args.resume,
        teacher=teacher,
        progress=lambda p: print(p.message, flush=True),
        sides=sides if config.context else None,
    )
    rates = [float(r) for r in args.report_rates.split(",") if r]
    blocks = [block_for(v.shape, bundle.config.texture.block) for v in val_volumes]
    before = evaluate(texture_codec(bundle, "cpu"), val_volumes, rates, supports=val_supports, blocks=blocks)
    after = evaluate(
        codec, val_volumes, rates, supports=val_supports, blocks=blocks, sides=val_sides if config.context else None
    )
    for a, b in zip(before, after):
        print(json.dumps({"rate": a["rate"], "before": [a["bpv"], a["psnr"]], "after": [b["bpv"], b["psnr"]]}))
    config = replace(
        bundle.config,
        training=dict(
            training,
            finetune={
                "command": "python scripts/finetune_texture.py " + " ".join(sys.argv[1:] if argv is None else argv),
                "scans": len(train_files),
                "also_budget": args.also_budget,
                "steps": args.steps,
                "lr": args.lr,
                "context": args.context,
                "validation_before": before,
                "validation_after": after,
            },
        ),
    )
    save_bundle(args.out, config, bundle.template, bundle.template_labels, texture=codec.to_bytes())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
