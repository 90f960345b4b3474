"""Does the template, given to the decoder as side information, pay? A probe, not a codec: the
bundle's texture network is fine-tuned twice on the same aligned training frames for the same steps,
once as it is ("control") and once with a small template branch ("template": the template, resampled
onto the scan's texture frame, shifts the latents' means, scales their scales and is added to the
synthesis input; the branch starts at zero, so the fine-tune starts from the shipped codec), and the
two are compared at equal estimated bits on validation frames (bits from the hyperprior's
likelihoods with hard rounding, PSNR inside the scan's support). Training scans only.

    python scripts/template_context_probe.py --bundle hippocampus-mr --data ../shared/data/hippocampus_mr \
        --validation 10 --steps 2000 --mode entropy --out /tmp/probe  # also control, synthesis, template, mix2, mix8
    python scripts/template_context_probe.py --compare /tmp/probe/control.json /tmp/probe/entropy.json

(`--steps 0 --mode control --out ANOTHER_FOLDER` evaluates the shipped network.)
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import time
from pathlib import Path

import numpy as np


def frames(bundle, paths, cache: Path):
    """(unit, support, template) on each scan's texture frame, as the encoder would cut it."""
    if cache.exists():
        data = np.load(cache, allow_pickle=True)
        return list(data["frames"])
    from texture_gap import aligned, template_on

    out = []
    for path in paths:
        unit, support, coding = aligned(path, bundle)
        out.append((unit.astype(np.float32), support, template_on(coding.frame, bundle, fill=True)))
        print(f"aligned {Path(path).name} {unit.shape}", flush=True)
    stored = np.empty(len(out), dtype=object)  # one object per scan even when every frame has one shape
    stored[:] = out
    np.savez(cache, frames=stored)
    return out


def build(net, mode: str):
    """`mode`: control (no template), template (entropy model and synthesis), entropy (means and
    scales only: the decoder's latents depend on it; the form shipped, `texture.network.TemplateContext`),
    synthesis (analysis and synthesis only: the entropy model, which must be bit-exact on every
    machine, stays as it is), mix2 / mix8 (the template's features, from strided or 8×8×8 patch convs,
    concatenated into h_s before its last conv through an identity-initialised mixing conv)."""
    import torch
    from torch import nn

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            conditioned = mode not in ("control", "mix2", "mix8")
            self.entropy = mode in ("template", "entropy")
            self.synthesis = mode in ("template", "synthesis")
            m = net.config.latent
            self.side = (
                nn.Sequential(
                    nn.Conv3d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv3d(16, 24, 3, 2, 1), nn.ReLU(),
                    nn.Conv3d(24, 32, 3, 2, 1), nn.ReLU(),
                )
                if conditioned
                else None
            )  # fmt: skip
            if conditioned:
                heads = (nn.Conv3d(32, m, 1) for _ in range(4))
                self.to_means, self.to_scales, self.to_synthesis, self.to_analysis = heads
                for head in (self.to_means, self.to_scales, self.to_synthesis, self.to_analysis):
                    nn.init.zeros_(head.weight)
                    nn.init.zeros_(head.bias)

            if mode in ("mix2", "mix8"):
                h, f = net.config.hyper, 24
                if mode == "mix2":
                    self.branch = nn.Sequential(
                        nn.Conv3d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv3d(16, 24, 3, 2, 1), nn.ReLU(),
                        nn.Conv3d(24, f, 3, 2, 1), nn.ReLU(),
                    )  # fmt: skip
                else:
                    self.branch = nn.Sequential(
                        nn.Conv3d(1, 32, 8, 8), nn.ReLU(), nn.Conv3d(32, 32, 3, 1, 1), nn.ReLU(),
                        nn.Conv3d(32, f, 3, 1, 1), nn.ReLU(),
                    )  # fmt: skip
                self.mix = nn.Conv3d(h + f, h, 3, 1, 1)
                with torch.no_grad():  # identity on the hyper features, nothing from the template yet
                    self.mix.weight.zero_()
                    self.mix.bias.zero_()
                    for c in range(h):
                        self.mix.weight[c, c, 1, 1, 1] = 1.0

        def forward(self, x, t, level, coords, hard=False):
            n = self.net
            if mode in ("mix2", "mix8"):
                gain, inverse = n.gain.gain(level), n.gain.inverse_gain(level)
                y = n.g_a(x, coords) * gain
                z_hat, z_lik = n.entropy_bottleneck(n.h_a(y), training=not hard)
                hidden = n.h_s[:5](z_hat)
                mixed = torch.relu(self.mix(torch.cat([hidden, self.branch(t)], 1)))
                scales, means = n.h_s[5](mixed).chunk(2, 1)
                y_hat, y_lik = n.gaussian_conditional(y, scales, means=means, training=not hard)
                return n.g_s(y_hat * inverse, coords), [y_lik, z_lik]
            gain, inverse = n.gain.gain(level), n.gain.inverse_gain(level)
            f = self.side(t) if self.side is not None else None
            features = n.g_a(x, coords)
            if f is not None and self.synthesis and mode == "synthesis":
                features = features + self.to_analysis(f)
            y = features * gain
            z = n.h_a(y)
            z_hat, z_lik = n.entropy_bottleneck(z, training=not hard)  # hard: rounded about the medians
            scales, means = n.h_s(z_hat).chunk(2, 1)
            shift = 0
            if f is not None and self.entropy:
                means = means + self.to_means(f) * gain
                scales = scales * torch.exp(self.to_scales(f))
            if f is not None and self.synthesis:
                shift = self.to_synthesis(f)
            y_hat, y_lik = n.gaussian_conditional(y, scales, means=means, training=not hard)
            x_hat = n.g_s(y_hat * inverse + shift, coords)
            return x_hat, [y_lik, z_lik]

    return Probe()


def compare(reference: Path, candidate: Path) -> None:
    """Per level, the candidate's PSNR minus the reference's at the same bits (linear in log bits,
    within the reference's range), averaged over the validation crops."""
    ra, rb = json.loads(reference.read_text()), json.loads(candidate.read_text())
    gains: dict = {}
    for crop in sorted({r["crop"] for r in ra}):
        curve = sorted((r for r in ra if r["crop"] == crop), key=lambda r: r["bits"])
        xs, ys = np.log([r["bits"] for r in curve]), np.array([r["psnr"] for r in curve])
        for r in (r for r in rb if r["crop"] == crop):
            if xs[0] <= math.log(r["bits"]) <= xs[-1]:
                gains.setdefault(r["level"], []).append(r["psnr"] - float(np.interp(math.log(r["bits"]), xs, ys)))
    for level in sorted(gains):
        g = gains[level]
        print(f"level {level:.1f}: {np.mean(g):+.3f} dB at equal bits ({min(g):+.3f} … {max(g):+.3f}, n={len(g)})")


def main(argv=None) -> None:
    import torch

    from deepstd.bundle import resolve_bundle
    from deepstd.texture import TextureCodec
    from deepstd.texture.codec import POS_FACTORS
    from deepstd.texture.latent_search import trained_lambdas
    from deepstd.texture.network import TextureNet
    from deepstd.texture.position import block_coords

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("REFERENCE", "CANDIDATE"))
    parser.add_argument("--bundle")
    parser.add_argument("--data", help="the bundle's training folder (images/)")
    parser.add_argument("--validation", type=int, default=10, help="the last N training scans validate")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--mode", choices=("control", "template", "entropy", "synthesis", "mix2", "mix8"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.compare:
        compare(*args.compare)
        return
    if not (args.bundle and args.data and args.mode and args.out):
        parser.error("--bundle, --data, --mode and --out are needed (or --compare)")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = resolve_bundle(args.bundle)
    held_out = set(ast.literal_eval(str(bundle.config.training["holdout_files"])))  # the bundle's own record
    paths = [p for p in sorted(Path(args.data, "images").glob("*.nii.gz")) if p.name not in held_out]
    data = frames(bundle, [str(p) for p in paths], args.out / f"frames-{args.bundle}.npz")
    train, valid = data[: -args.validation], data[-args.validation :]
    lambdas = torch.tensor(trained_lambdas(bundle.config.training, 6), dtype=torch.float32)
    net = TextureNet(TextureCodec.from_bytes(bundle.texture).net.config)
    net.load_state_dict(TextureCodec.from_bytes(bundle.texture).net.state_dict())
    probe = build(net, args.mode)
    aux = [p for n, p in probe.named_parameters() if n.endswith("quantiles")]
    main_params = [p for n, p in probe.named_parameters() if not n.endswith("quantiles")]
    new = {id(p) for p in (probe.side.parameters() if probe.side is not None else [])}
    heads = [
        getattr(probe, h)
        for h in ("to_means", "to_scales", "to_synthesis", "to_analysis", "branch", "mix")
        if hasattr(probe, h)
    ]
    new |= {id(p) for h in heads for p in h.parameters()}
    opt = torch.optim.Adam(
        [
            {"params": [p for p in main_params if id(p) not in new], "lr": 1e-4},
            {"params": [p for p in main_params if id(p) in new], "lr": 1e-3},
        ]
    )
    aux_opt = torch.optim.Adam(aux, lr=1e-3)
    rng = np.random.default_rng(0)
    size, p = (args.patch,) * 3, args.patch
    usable = [f for f in train if min(f[0].shape) >= p]
    started = time.time()
    probe.train()
    for step in range(args.steps):
        xs, ts, origins, shapes = [], [], [], []
        for _ in range(2):
            unit, _, side = usable[rng.integers(len(usable))]
            o = tuple(int(rng.integers(0, s - p + 1)) for s in unit.shape)
            cut = (slice(o[0], o[0] + p), slice(o[1], o[1] + p), slice(o[2], o[2] + p))
            xs.append(unit[cut])
            ts.append(side[cut])
            origins.append(o)
            shapes.append(unit.shape)
        coords = {f: torch.cat([block_coords([o], size, f, s) for o, s in zip(origins, shapes)]) for f in POS_FACTORS}
        x, t = torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ts))[:, None]
        levels = torch.from_numpy(rng.integers(0, 6, 2))
        x_hat, liks = probe(x, t, levels.float(), coords)
        bpv = -sum(torch.log2(lik).flatten(1).sum(1) for lik in liks) / x[0].numel()
        mse = ((x_hat - x) ** 2).flatten(1).mean(1)
        loss = (bpv + lambdas[levels] * mse).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        opt.step()
        aux_opt.zero_grad()
        net.entropy_bottleneck.loss().backward()
        aux_opt.step()
        if (step + 1) % 250 == 0:
            print(f"{args.mode} step {step + 1} loss {loss.item():.4f} ({time.time() - started:.0f} s)", flush=True)
    probe.eval()
    rows = []
    with torch.no_grad():
        for k, (unit, support, side) in enumerate(valid):
            shape = unit.shape
            padded = tuple(int(math.ceil(s / 16) * 16) for s in shape)
            pad = [(0, q - s) for s, q in zip(shape, padded)]
            x = torch.from_numpy(np.pad(unit, pad, mode="edge"))[None, None]
            t = torch.from_numpy(np.pad(side, pad, mode="edge"))[None, None]
            coords = {f: block_coords([(0, 0, 0)], padded, f, padded) for f in POS_FACTORS}
            for level in np.linspace(0, 5, 11):
                x_hat, liks = probe(x, t, torch.tensor([level], dtype=torch.float32), coords, hard=True)
                bits = float(-sum(torch.log2(lik.clamp_min(1e-9)).sum() for lik in liks))
                error = (x_hat[0, 0].numpy()[: shape[0], : shape[1], : shape[2]] - unit)[support]
                psnr = -10 * math.log10(np.mean(error**2))
                rows.append({"crop": k, "level": float(level), "bits": bits, "psnr": psnr})
    (args.out / f"{args.mode}.json").write_text(json.dumps(rows))
    print(f"{args.mode}: {len(rows)} validation points in {args.out / (args.mode + '.json')}")


if __name__ == "__main__":
    main()
