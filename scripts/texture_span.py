"""Write a copy of a bundle whose encoder codes the texture only up to a finer rate `--finest` and
fills larger budgets with the refinement layer (`TextureCoding.rates`): for a texture codec that
codes fine detail worse than a wavelet coder codes its residual. Choose the value on *training*
scans (`scripts/paired_encodes.py` with both bundles); `--why` is kept in the bundle's training
record.

    python scripts/texture_span.py --bundle ct-torso --finest 0.5 --out /tmp/ct-torso-05.dstdb \\
        --why "paired_encodes on the 3 training CTs: ..."
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path


def main(argv=None) -> None:
    from deepstd.bundle import resolve_bundle, save_bundle

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--finest", type=float, required=True, help="the finest texture rate, in (0, 1]")
    parser.add_argument("--why", default="", help="the measurement behind the value")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    bundle = resolve_bundle(args.bundle)
    config = bundle.config
    coding = replace(config.texture, rates=(config.texture.rates[0], args.finest))
    training = dict(config.training or {}, texture_span={"finest": args.finest, "why": args.why})
    config = type(config).from_dict(replace(config, texture=coding, training=training).to_dict())  # validated
    save_bundle(args.out, config, bundle.template, bundle.template_labels, texture=bundle.texture)
    print(f"wrote {args.out}: texture rates {coding.rates[0]:g}..{coding.rates[1]:g}")


if __name__ == "__main__":
    main()
