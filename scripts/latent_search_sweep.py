"""Tune the encoder-side latent search (`deepstd.texture.latent_search`) on aligned scans: for each
scan, rate, number of steps and step size, the bytes and PSNR (inside the scan's support) of the
searched latents against the unsearched RD points at rate - 0.1, rate, rate + 0.1, interpolated in
log bytes ("at equal bytes"). Choose settings on training scans only (docs/TEXTURE.md).

    python scripts/latent_search_sweep.py --bundle la-mr SCAN.nii.gz [...] --rates 0.2 0.5 --steps 10 --step-sizes 0.005
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np


def main(argv=None) -> None:
    import torch
    from texture_gap import aligned

    from deepstd.bundle import resolve_bundle, texture_codec
    from deepstd.texture.latent_search import search_latents, trained_lambdas

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", nargs="+")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--rates", nargs="+", type=float, default=[0.2, 0.5])
    parser.add_argument("--steps", nargs="+", type=int, default=[10])
    parser.add_argument("--step-sizes", nargs="+", type=float, default=[0.005])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = resolve_bundle(args.bundle)
    codec = texture_codec(bundle, "cpu")
    lambdas = trained_lambdas(bundle.config.training, codec.config.levels)
    if lambdas is None:
        raise SystemExit(f"{args.bundle} does not state the λs its texture was trained with")

    def point(analysis, rate, unit, support):
        streams = codec.code(analysis, rate)
        mse = float(((codec.decompress(streams) - unit) ** 2)[support].mean())
        return len(streams.to_bytes()), 10 * math.log10(1 / mse)

    for path in args.scans:
        unit, support, coding = aligned(path, bundle)
        support = support.astype(bool)
        analysis = codec.analyse(unit, coding.block, support)
        for rate in args.rates:
            curve = [point(analysis, r, unit, support) for r in (max(rate - 0.1, 0.0), rate, min(rate + 0.1, 1.0))]
            sizes, psnrs = np.log([c[0] for c in curve]), np.array([c[1] for c in curve])
            for steps in args.steps:
                for step_size in args.step_sizes:
                    started = time.perf_counter()
                    searched = search_latents(codec, analysis, unit, support, rate, lambdas, None, steps, step_size)
                    seconds = time.perf_counter() - started
                    n, p = point(searched, rate, unit, support)
                    equal = float(np.interp(math.log(n), sizes, psnrs))
                    print(json.dumps({
                        "scan": str(path).rsplit("/", 1)[-1], "rate": rate, "steps": steps, "step_size": step_size,
                        "bytes": [curve[1][0], n], "psnr": [round(curve[1][1], 3), round(p, 3)],
                        "gain_at_equal_bytes_db": round(p - equal, 3), "seconds": round(seconds, 1),
                    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
