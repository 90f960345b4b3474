"""Rate–distortion training of the texture codec on CPU: Adam, R + λ·D, mixed rates.

Each patch in a batch draws one of the K rate levels of the gain unit; its loss is
bits-per-voxel + λ_k · MSE (intensities normalised to ~0..1), so one model learns the whole
range of the rate knob. Patches are random crops; their positions in the volume feed the
positional field (on template-aligned training data that is the place in the template).
A network that reads the template (`TextureConfig.context`) is given each patch's cut of the
template on the volume's frame (`context.TemplateSide`, the values the codec will see), and its
template branch learns at `context_lr`.
Checkpoints are safetensors (weights, Adam moments, step, history in the metadata) and
training resumes from them exactly where it stopped.

    python -m deepstd.texture.train DATA_DIR --out out/la-texture --steps 6000 --holdout 6
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import Cancelled, InputError
from ..progress import Reporter
from .codec import POS_FACTORS, TextureCodec
from .context import TemplateSide
from .network import TextureConfig, TextureNet
from .position import block_coords
from .streams import ALIGN


@dataclass
class TrainSettings:
    steps: int = 6000
    batch: int = 2
    patch: int = 48
    lr: float = 2e-4
    aux_lr: float = 1e-3
    # λ per rate level, coarsest first (len must equal TextureConfig.levels)
    lambdas: List[float] = field(default_factory=lambda: [1.5, 4, 11, 30, 80, 220])
    checkpoint_every: int = 250
    seed: int = 0
    clip_grad: float = 1.0
    #: weight of the feature-distillation loss when a teacher is given (../shared/docs/METHOD.md, Idea 6)
    distill_alpha: float = 0.5
    #: learning rate of the template branch (new weights next to trained ones learn faster)
    context_lr: float = 1e-3


def normalise(volume: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """Robust per-scan mapping of intensities to ~0..1 (MR has no absolute units)."""
    lo, hi = np.percentile(volume, [lo_pct, hi_pct])
    return ((volume - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(data_range**2 / mse)


class PatchSampler:
    """Random patches (their token coordinates, and with `sides` their cut of the template) from a
    list of normalised volumes."""

    def __init__(
        self, volumes: Sequence[np.ndarray], patch: int, seed: int, sides: Optional[Sequence[TemplateSide]] = None
    ):
        if patch % ALIGN:
            raise InputError(f"--patch {patch}: the patch size must be a multiple of {ALIGN}")
        if sides is not None and len(sides) != len(volumes):
            raise ValueError("one template side input per training volume is needed")
        usable = [k for k, v in enumerate(volumes) if min(v.shape) >= patch]
        self.volumes = [volumes[k] for k in usable]
        self.sides = None if sides is None else [sides[k] for k in usable]
        if not self.volumes:
            smallest = min(min(v.shape) for v in volumes)
            raise InputError(
                f"--patch {patch}: no aligned training volume is that large along every axis "
                f"(the thinnest axis has {smallest} voxels); use a smaller --patch"
            )
        self.patch = patch
        self.rng = np.random.default_rng(seed)

    def __call__(self, n: int):
        """(patches (n, 1, p, p, p), coords, template cuts in unit intensities or None)."""
        xs, origins, shapes, cuts = [], [], [], []
        size = (self.patch,) * 3
        for _ in range(n):
            k = int(self.rng.integers(len(self.volumes)))
            v = self.volumes[k]
            o = tuple(int(self.rng.integers(0, s - self.patch + 1)) for s in v.shape)
            p = self.patch
            xs.append(v[o[0] : o[0] + p, o[1] : o[1] + p, o[2] : o[2] + p])
            origins.append(o)
            shapes.append(v.shape)
            if self.sides is not None:
                cuts.append(self.sides[k].units([o], size)[0])
        coords = {f: torch.cat([block_coords([o], size, f, s) for o, s in zip(origins, shapes)]) for f in POS_FACTORS}
        side = torch.from_numpy(np.stack(cuts)) if cuts else None
        return torch.from_numpy(np.stack(xs))[:, None], coords, side


def rd_loss(out: Dict, x: torch.Tensor, lam: torch.Tensor):
    """Per-patch bits per voxel and MSE; loss = mean(bpv + λ·MSE)."""
    voxels = x[0].numel()
    bits = sum(torch.log2(lik).flatten(1).sum(1) for lik in out["likelihoods"].values())
    bpv = -bits / voxels
    mse = ((out["x_hat"] - x) ** 2).flatten(1).mean(1)
    return (bpv + lam * mse).mean(), bpv, mse


def _split_params(net: TextureNet):
    """(main, template branch, aux) parameters by name (the Adam moments are saved by name)."""
    main, context, aux = {}, {}, {}
    for name, p in net.named_parameters():
        (aux if name.endswith("quantiles") else context if name.startswith("context.") else main)[name] = p
    return main, context, aux


def save_checkpoint(path: Path, net: TextureNet, opts, step: int, history: list, settings: TrainSettings) -> None:
    """Weights + Adam moments as tensors, the rest as metadata. Written atomically."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in net.state_dict().items() if v.numel()}
    for tag, opt, params in opts:
        for name, p in params.items():
            st = opt.state.get(p)
            if st:
                tensors[f"{tag}.{name}.exp_avg"] = st["exp_avg"].contiguous()
                tensors[f"{tag}.{name}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
    meta = {
        "step": str(step),
        "config": json.dumps(net.config.to_dict()),
        "settings": json.dumps(asdict(settings)),
        "history": json.dumps(history),
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def load_checkpoint(path: Path, net: TextureNet, opts):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    state = net.state_dict()
    state.update({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    net.load_state_dict(state)
    step = int(meta["step"])
    for tag, opt, params in opts:
        for name, p in params.items():
            key = f"{tag}.{name}"
            if f"{key}.exp_avg" in tensors:
                opt.state[p] = {
                    "step": torch.tensor(float(step)),
                    "exp_avg": tensors[f"{key}.exp_avg"].clone(),
                    "exp_avg_sq": tensors[f"{key}.exp_avg_sq"].clone(),
                }
    return step, json.loads(meta["history"])


@torch.no_grad()
def evaluate(
    codec: TextureCodec,
    volumes: Sequence[np.ndarray],
    rates: Sequence[float],
    block=64,
    raw_itemsize: int = 1,
    supports: Optional[Sequence[np.ndarray]] = None,
    blocks: Optional[Sequence] = None,
    sides: Optional[Sequence[TemplateSide]] = None,
) -> List[Dict]:
    """RD points over whole volumes with real entropy coding: bytes, ratio (raw bytes of the
    original dtype ÷ texture bytes), bits per voxel, PSNR over the data range, and the encode
    and decode speeds in Mvoxel/s of the coded frame. With `supports` (where each aligned volume holds its scan),
    voxels, ratio and PSNR count only those voxels: the rest of the frame is not the scan and
    would flatter every figure (a 64 kvoxel hippocampus crop fills a third of its frame). `blocks`:
    per volume, the block size the encoder would use (None: whole), instead of `block` for all;
    `sides`: per volume, the template on its frame (networks that read it)."""
    points = []
    masks = list(supports) if supports is not None else [None] * len(volumes)
    sizes = list(blocks) if blocks is not None else [block] * len(volumes)
    templates = list(sides) if sides is not None else [None] * len(volumes)
    for rate in rates:
        nbytes = voxels = coded = 0
        sq, t_enc, t_dec = 0.0, 0.0, 0.0
        for v, mask, size, side in zip(volumes, masks, sizes, templates):
            t0 = time.perf_counter()
            data = codec.compress(v, rate, block=size, support=mask, side=side).to_bytes()
            t1 = time.perf_counter()
            rec = codec.decompress(data, side=side)
            t_dec += time.perf_counter() - t1
            t_enc += t1 - t0
            nbytes += len(data)
            inside = np.ones(v.shape, bool) if mask is None else mask
            voxels += int(inside.sum())
            coded += v.size
            sq += float(np.sum((rec[inside].astype(np.float64) - v[inside]) ** 2))
        rng = max(float(np.ptp(v[m] if m is not None else v)) for v, m in zip(volumes, masks))
        mse = sq / voxels
        points.append(
            {
                "rate": rate,
                "bytes": nbytes,
                "bpv": 8 * nbytes / voxels,
                "ratio": voxels * raw_itemsize / nbytes,
                "psnr": 10 * math.log10(rng**2 / mse) if mse > 0 else float("inf"),
                "encode_mvox_s": coded / t_enc / 1e6,
                "decode_mvox_s": coded / t_dec / 1e6,
            }
        )
    return points


def distillation_loss(features: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of the student's analysis features to the teacher's on the same patch,
    relative to the teacher's feature energy (so α means the same for any latent scale)."""
    return ((features - teacher) ** 2).mean() / (teacher**2).mean().clamp_min(1e-8)


def train(
    volumes: Sequence[np.ndarray],
    out_dir,
    config: TextureConfig = TextureConfig(),
    settings: TrainSettings = TrainSettings(),
    resume: bool = False,
    progress=None,
    cancel=None,
    teacher: "TextureNet | None" = None,
    sides: Optional[Sequence[TemplateSide]] = None,
) -> TextureCodec:
    """Train on normalised volumes; checkpoints in out_dir; returns the codec (CDFs built).

    With a `teacher` (a trained net of the same config, or the same but for the template context;
    the scarce-data case), the student starts from the teacher's weights (a template branch from
    zero heads) and its loss adds `distill_alpha` x the feature distance to the teacher's analysis
    of each patch, so a few scans adapt the codec without unlearning it. `sides`: per volume, the
    template on its frame, for a network that reads it. A cancel saves a checkpoint before
    `Cancelled` propagates, so `resume=True` continues.
    """
    if len(settings.lambdas) != config.levels:
        raise ValueError("one λ per rate level is needed")
    if bool(config.context) != (sides is not None):
        raise ValueError("a network that reads the template trains with `sides`, and only such a network")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.safetensors"
    torch.manual_seed(settings.seed)
    net = TextureNet(config)
    resuming = resume and ckpt.exists()
    if teacher is not None:
        plain = dict(context=0, context_range=TextureConfig.context_range)
        if replace(teacher.config, **plain) != replace(config, **plain) or (
            teacher.config.context and teacher.config != config
        ):
            raise ValueError("the teacher's texture config differs from the student's")
        if not resuming:  # a checkpoint supersedes the start (its CDF tables may differ in size)
            missing, unexpected = net.load_state_dict(teacher.state_dict(), strict=False)
            if unexpected or any(not key.startswith("context.") for key in missing):
                raise ValueError(f"the teacher's weights do not fit: {sorted(unexpected or missing)[:3]}")
        teacher = teacher.eval()
    main, context, aux = _split_params(net)
    groups = [{"params": list(main.values())}, {"params": list(context.values()), "lr": settings.context_lr}]
    opt = torch.optim.Adam([g for g in groups if g["params"]], lr=settings.lr)
    aux_opt = torch.optim.Adam(aux.values(), lr=settings.aux_lr)
    opts = [("adam", opt, {**main, **context}), ("aux", aux_opt, aux)]
    step, history = 0, []
    if resuming:
        step, history = load_checkpoint(ckpt, net, opts)
    sampler = PatchSampler(volumes, settings.patch, settings.seed + step, sides)
    lambdas = torch.tensor(settings.lambdas, dtype=torch.float32)
    report = Reporter(progress, cancel)
    net.train()
    t0, first, window = time.time(), step, []
    try:
        while step < settings.steps:
            report.check()
            x, coords, side = sampler(settings.batch)
            levels = torch.from_numpy(sampler.rng.integers(0, config.levels, settings.batch))
            out_ = net(x, levels.float(), coords, side)
            loss, bpv, mse = rd_loss(out_, x, lambdas[levels])
            if teacher is not None:
                with torch.no_grad():
                    target = teacher.g_a(x, coords)
                loss = loss + settings.distill_alpha * distillation_loss(out_["features"], target)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*main.values(), *context.values()], settings.clip_grad)
            opt.step()
            aux_opt.zero_grad()
            net.aux_loss().backward()
            aux_opt.step()
            step += 1
            window.append((loss.item(), bpv.mean().item(), float(-10 * torch.log10(mse.clamp_min(1e-10)).mean())))
            if step % 25 == 0 or step == settings.steps:
                mean_loss, mean_bpv, mean_psnr = np.mean(window, axis=0)
                rate = (step - first) / (time.time() - t0)
                history.append(
                    {"step": step, "loss": mean_loss, "bpv": mean_bpv, "psnr": mean_psnr, "steps_per_s": rate}
                )
                report(
                    "train",
                    step / settings.steps,
                    f"step {step} loss {mean_loss:.4f} bpv {mean_bpv:.4f} psnr {mean_psnr:.2f} ({rate:.2f} it/s)",
                )
                window = []
            if step % settings.checkpoint_every == 0:
                save_checkpoint(ckpt, net, opts, step, history, settings)
    except Cancelled:
        save_checkpoint(ckpt, net, opts, step, history, settings)
        raise
    save_checkpoint(ckpt, net, opts, step, history, settings)
    net.eval()
    net.update()
    codec = TextureCodec(net)
    codec.save(out / "texture.safetensors")
    return codec


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="train the texture codec on a folder of scans")
    ap.add_argument("data", type=Path, help="folder with images/*.nii.gz (or *.nii.gz)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=TrainSettings.steps)
    ap.add_argument("--patch", type=int, default=TrainSettings.patch)
    ap.add_argument("--batch", type=int, default=TrainSettings.batch)
    ap.add_argument("--lr", type=float, default=TrainSettings.lr)
    ap.add_argument(
        "--lambdas",
        type=lambda t: [float(v) for v in t.split(",")],
        default=TrainSettings().lambdas,
        help="λ per rate level, comma-separated",
    )
    ap.add_argument("--holdout", type=int, default=6, help="last N scans kept for validation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", type=json.loads, default={}, help="TextureConfig overrides")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    files = sorted((args.data / "images").glob("*.nii*")) or sorted(args.data.glob("*.nii*"))
    train_files, val_files = files[: len(files) - args.holdout], files[len(files) - args.holdout :]
    vols = [normalise(_read(f)) for f in train_files]
    settings = TrainSettings(steps=args.steps, patch=args.patch, batch=args.batch, lr=args.lr, lambdas=args.lambdas)
    config = TextureConfig.from_dict(args.config)
    print(f"training on {len(vols)} scans, validating on {len(val_files)}", flush=True)
    codec = train(vols, args.out, config, settings, resume=args.resume, progress=lambda e: print(e.message, flush=True))
    val = [normalise(_read(f)) for f in val_files]
    points = evaluate(codec, val, rates=[0.0, 0.25, 0.5, 0.75, 1.0])
    (args.out / "validation.json").write_text(json.dumps(points, indent=1))
    for p in points:
        print(json.dumps(p), flush=True)


if __name__ == "__main__":
    main()
