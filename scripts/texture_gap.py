"""Train/validation gap of a bundle's texture codec: does data or capacity bind?

Aligns scans exactly as the encoder does (the bundle's registration, `frame_for`, `into_template`)
and codes the aligned frames at fixed texture rates with real entropy coding (`texture.train.evaluate`,
counting only the voxels inside each scan's support). Equal RD points on training and unseen scans
mean the codec generalises and more data will not help by itself; a gap means it does.

    python scripts/texture_gap.py --bundle la-mr --group train=a.nii.gz,b.nii.gz --group unseen=c.nii.gz
"""

from __future__ import annotations

import argparse
import json


def aligned(path, bundle, budget=None):
    """(unit, support, coding) of one scan on the texture frame the encoder would code it on under a
    byte `budget` (None: no limit; small budgets get a smaller shape code, down to the pre-alignment
    alone); `coding` is the `CodingFrame` (its `frame` and `block`)."""
    from deepstd.alignment import frame_for, intensity_map, into_template
    from deepstd.io import read
    from deepstd.progress import Reporter
    from deepstd.shape import decode_shape
    from deepstd.shape.sizing import code_shape

    scan = read(path)
    shape = code_shape(scan, bundle.template, bundle.config.registration, budget, Reporter())
    stored = decode_shape(shape.code)
    coding = frame_for(scan, shape.frame, stored, bundle.config.texture.block, budget)
    unit, support = into_template(
        scan,
        stored.backward,
        stored.matrix,
        shape.frame,
        coding.frame,
        intensity_map(scan.array, bundle.config.intensity),
    )
    return unit, support, coding


def template_on(frame, bundle, fill: bool = False):
    """The bundle's template resampled onto a texture `frame`, in unit intensities: what a decoder
    could use as side information. Outside the template NaN, or (`fill`) the scan-like smooth
    continuation the encoder gives aligned scans."""
    import numpy as np

    from deepstd.alignment import extend_outside, intensity_map
    from deepstd.grid import sampling

    template = bundle.template
    unit = template.with_array(intensity_map(template.array, bundle.config.intensity).to_unit(template.array))
    zero = np.zeros(frame.shape_zyx + (3,), np.float32)
    side = sampling.warp(unit, zero, frame, "linear", default=np.nan).array
    if not fill:
        return side
    inside = ~np.isnan(side)
    return extend_outside(np.where(inside, side, 0).astype(np.float32), inside).astype(np.float32)


def main(argv=None) -> None:
    import torch

    from deepstd.bundle import resolve_bundle, texture_codec
    from deepstd.texture.train import evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--group", action="append", required=True, help="NAME=scan,scan,...")
    parser.add_argument("--rates", default="0,0.5,1")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bundle = resolve_bundle(args.bundle)
    codec = texture_codec(bundle, "cpu")
    rates = [float(r) for r in args.rates.split(",")]
    for group in args.group:
        name, files = group.split("=", 1)
        volumes, supports, blocks = [], [], []
        for path in files.split(","):
            unit, support, coding = aligned(path, bundle)
            volumes.append(unit)
            supports.append(support)
            blocks.append(coding.block)
        points = evaluate(codec, volumes, rates, supports=supports, blocks=blocks)
        for point in points:
            print(json.dumps({"group": name, "scans": len(volumes), **{k: round(v, 4) for k, v in point.items()}}))


if __name__ == "__main__":
    main()
