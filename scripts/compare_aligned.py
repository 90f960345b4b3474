"""The paper's central claim, checked: at equal bytes, is the texture codec better on template-aligned
scans (DeepSTD: shape code + aligned texture) than the same codec trained and run on unaligned
scans? Both are measured on the original held-out scans, every byte counted (the unaligned file
is a `.dstd` container with geometry, intensity mapping and the texture section, no shape code).

    python scripts/compare_aligned.py --bundle la-mr --unaligned out/la-unaligned/texture.safetensors \
        --data ../shared/data/left_atrium_mr --out docs/bench/aligned_vs_unaligned.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from deepstd import bench, codec, metrics, read
from deepstd.alignment import intensity_map
from deepstd.bundle import load_bundle
from deepstd.container import geometry_header, pack
from deepstd.ratecontrol import largest_within
from deepstd.texture import TextureCodec
from deepstd.volume import cast_to_dtype


def unaligned_file(texture: TextureCodec, volume, budget: int, rule) -> tuple:
    """The largest unaligned-codec file within `budget` and its decoded volume."""
    mapping = intensity_map(volume.array, rule)
    unit = mapping.to_unit(volume.array)
    analysis = texture.analyse(unit, 64)
    header = dict(geometry_header(volume), intensity=mapping.to_header())
    build = lambda rate: pack(header, {"texture": texture.code(analysis, rate).to_bytes()})  # noqa: E731
    best, _ = largest_within(build, budget)
    if best is None:
        return None, None
    from deepstd.container import unpack

    decoded = texture.decompress(unpack(best).sections["texture"])
    return best, cast_to_dtype(mapping.from_unit(decoded), volume.dtype).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="la-mr")
    ap.add_argument("--unaligned", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--ratios", default="32,64,128,256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench", type=Path, help="results.jsonl of `deepstd bench` on the same scans (reused)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    texture = TextureCodec.load(args.unaligned)
    measured = {}  # DeepSTD results already measured by `deepstd bench` on the same budgets
    if args.bench:
        measured = {
            (r["scan"], r["target_ratio"]): {k: r[k] for k in ("bytes", "psnr", "ssim")}
            for r in bench.load(args.bench)
            if r["codec"] == "deepstd" and r["status"] == "ok"
        }
    rows = []
    for name in bundle.config.holdout_files:
        volume = read(args.data / "images" / name)
        for ratio in [float(r) for r in args.ratios.split(",")]:
            budget = int(volume.raw_bytes // ratio)
            known = measured.get((name, ratio))
            if known is None:
                data = codec.encode(volume, bundle, budget_bytes=budget, device="cpu")
                decoded = codec.decode(data, bundle).array
                known = {
                    "bytes": len(data),
                    "psnr": metrics.psnr(volume.array, decoded),
                    "ssim": metrics.ssim(volume.array, decoded),
                }
            u_data, unaligned = unaligned_file(texture, volume, budget, bundle.config.intensity)
            row = {
                "scan": name,
                "target_ratio": ratio,
                "aligned": known,
                "unaligned": None
                if u_data is None
                else {
                    "bytes": len(u_data),
                    "psnr": metrics.psnr(volume.array, unaligned),
                    "ssim": metrics.ssim(volume.array, unaligned),
                },
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print("| ratio | aligned (DeepSTD) mean SSIM / median PSNR | unaligned codec mean SSIM / median PSNR |")
    print("|---|---|---|")
    for ratio in sorted({r["target_ratio"] for r in rows}):
        sel = [r for r in rows if r["target_ratio"] == ratio]
        cell = lambda key: (  # noqa: E731
            f"{np.mean([r[key]['ssim'] for r in sel if r[key]]):.3f} / "
            f"{np.median([r[key]['psnr'] for r in sel if r[key]]):.2f}"
            if any(r[key] for r in sel)
            else "unreachable"
        )
        print(f"| {ratio:g}× | {cell('aligned')} | {cell('unaligned')} |")


if __name__ == "__main__":
    main()
