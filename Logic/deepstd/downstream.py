"""Downstream agreement: does a segmentation network see the same anatomy in the decoded scan?

The paper's Dice/HD95 protocol: a small 3D U-Net trained on a population segments the original
scan and the decoded scan; Dice and HD95 (mm, the scan's own spacing) between the two label maps
measure what a compression ratio costs a downstream task, independently of how well the network
agrees with the ground truth (that is the segmenter's own accuracy, stored in its metadata).

* `UNet3D`: 2 poolings, instance norm, ReLU; input = the scan normalised by its own 0.5 / 99.5
  percentiles to 0..1 and resampled to the segmenter's working spacing (area averaging down,
  trilinear up). Class probabilities are resampled back to the scan's grid linearly and argmax-ed.
* `train`: random patches at the working spacing, Adam, Dice + cross-entropy, a fixed seed and a
  fixed number of steps (`scripts/train_segmenter.py` is the command).
* Weights are safetensors with the config in the metadata (`save_segmenter` / `load_segmenter`);
  loading never unpickles. Shipped segmenters live in `deepstd/segmenters/NAME.safetensors`.
* `agreement(original, decoded, segmenter)`: Dice and HD95 per foreground class, and their mean
  over the foreground classes.
"""

from __future__ import annotations

import json
import math
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import BundleError, InputError
from .volume import Volume

SHIPPED_DIR = Path(__file__).resolve().parent / "segmenters"
SUFFIX = ".safetensors"
FORMAT = "deepstd-segmenter-1"
#: percentiles that map the scan's intensities to 0..1 (clipped) before the network sees them
NORM_PERCENTILES = (0.5, 99.5)
#: above this many voxels at the working spacing, inference runs in overlapping tiles
MAX_WHOLE_VOXELS = 160**3
MAX_FILE_BYTES = 64 << 20


# --- network ------------------------------------------------------------------------------------
def _nn():
    import torch.nn as nn

    return nn


def _block(cin: int, cout: int):
    nn = _nn()
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.ReLU(inplace=True),
    )


def build_network(channels: int = 8, classes: int = 2, levels: int = 2):
    """A small 3D U-Net: `levels` poolings, `channels` features at full resolution, doubling per level."""
    import torch

    nn = _nn()

    class UNet3D(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [channels * 2**i for i in range(levels + 1)]
            self.down = nn.ModuleList(
                [_block(1, widths[0])] + [_block(widths[i - 1], widths[i]) for i in range(1, levels + 1)]
            )
            self.up = nn.ModuleList([nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2) for i in range(levels)])
            self.merge = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in range(levels)])
            self.head = nn.Conv3d(widths[0], classes, 1)
            self.pool = nn.MaxPool3d(2)

        def forward(self, x):
            skips = []
            for i, block in enumerate(self.down):
                x = block(x if i == 0 else self.pool(x))
                skips.append(x)
            x = skips.pop()
            for i in reversed(range(levels)):
                x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
            return self.head(x)

    return UNet3D()


@dataclass
class Segmenter:
    """A loaded segmenter: the network (eval mode, CPU) and its config."""

    name: str
    config: dict
    net: object
    path: Optional[Path] = None

    @property
    def classes(self) -> int:
        return int(self.config["classes"])

    def describe(self) -> str:
        c = self.config
        val = c.get("validation", {}).get("mean_dice")
        return (
            f"{self.name}: {c['classes']} classes, {c['channels']} channels, working spacing "
            f"{c.get('working_spacing') or 'native'}"
            + (f", held-out Dice vs ground truth {val:.3f}" if val is not None else "")
        )


def default_config(
    classes: int = 2,
    channels: int = 8,
    levels: int = 2,
    working_spacing: Optional[Sequence[float]] = None,
    name: str = "segmenter",
) -> dict:
    return {
        "format": FORMAT,
        "name": name,
        "classes": int(classes),
        "channels": int(channels),
        "levels": int(levels),
        "working_spacing": None if working_spacing is None else [float(s) for s in working_spacing],
        "normalisation": {"kind": "percentile", "low": NORM_PERCENTILES[0], "high": NORM_PERCENTILES[1]},
    }


def untrained(config: Optional[dict] = None, seed: int = 0) -> Segmenter:
    """A freshly initialised segmenter (tests, and the start of training)."""
    import torch

    config = dict(default_config() if config is None else config)
    _check_config(config)
    torch.manual_seed(seed)
    net = build_network(config["channels"], config["classes"], config["levels"]).eval()
    return Segmenter(config.get("name", "segmenter"), config, net)


def _check_config(config: dict) -> None:
    problems = []
    if config.get("format") != FORMAT:
        problems.append(f"format is {config.get('format')!r}, expected {FORMAT!r}")
    for key, low, high in (("classes", 2, 255), ("channels", 1, 256), ("levels", 0, 5)):
        value = config.get(key)
        if not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{key} must be an integer in {low}..{high}, got {value!r}")
    ws = config.get("working_spacing")
    if ws is not None and (
        not isinstance(ws, list) or len(ws) != 3 or not all(isinstance(s, (int, float)) and s > 0 for s in ws)
    ):
        problems.append(f"working_spacing must be null or three positive numbers, got {ws!r}")
    norm = config.get("normalisation", {})
    if not isinstance(norm, dict) or not all(isinstance(norm.get(k), (int, float)) for k in ("low", "high")):
        problems.append("normalisation must give low and high percentiles")
    if problems:
        raise BundleError("segmenter config is invalid: " + "; ".join(problems))


# --- weights ------------------------------------------------------------------------------------
def save_segmenter(segmenter: Segmenter, path) -> Path:
    """Weights as safetensors (float32), the config as JSON in the metadata."""
    from safetensors.torch import save

    from .container import write_atomic

    state = {k: v.detach().cpu().contiguous() for k, v in segmenter.net.state_dict().items()}
    data = save(state, metadata={"format": FORMAT, "config": json.dumps(segmenter.config, sort_keys=True)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return path


def shipped_segmenters() -> Dict[str, Path]:
    """Name → path of every segmenter shipped in the package."""
    return {p.name[: -len(SUFFIX)]: p for p in sorted(SHIPPED_DIR.glob(f"*{SUFFIX}"))}


def _metadata(data: bytes) -> dict:
    if len(data) < 8:
        raise ValueError("truncated header")
    (n,) = struct.unpack("<Q", data[:8])
    if n <= 0 or 8 + n > len(data):
        raise ValueError("bad header length")
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise ValueError("no metadata")
    return meta


def load_segmenter(name_or_path) -> Segmenter:
    """A shipped segmenter by name (`la-mr`, `hippocampus-mr`) or a `.safetensors` file by path."""
    if isinstance(name_or_path, Segmenter):
        return name_or_path
    from safetensors.torch import load

    from .bundle import shipped_path

    path = shipped_path(name_or_path, shipped_segmenters(), "segmenter")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise BundleError(f"{path}: implausibly large for a segmenter ({path.stat().st_size} bytes)")
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read segmenter weights ({exc.strerror})") from None
    try:
        meta = _metadata(data)
        config = json.loads(meta["config"])
    except (ValueError, KeyError, UnicodeDecodeError, TypeError):
        raise BundleError(f"{path}: not a DeepSTD segmenter (corrupt or missing safetensors header/metadata)") from None
    if not isinstance(config, dict):
        raise BundleError(f"{path}: segmenter config is not an object")
    try:
        _check_config(config)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None
    try:
        state = load(data)
    except Exception as exc:  # safetensors raises its own error type on bad bytes
        raise BundleError(f"{path}: segmenter weights are corrupt ({type(exc).__name__}: {exc})") from None
    net = build_network(config["channels"], config["classes"], config["levels"])
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip())[:200]
        raise BundleError(f"{path}: weights do not match the config ({detail or type(exc).__name__})") from None
    name = config.get("name") or path.name[: -len(SUFFIX)]
    return Segmenter(str(name), config, net.eval(), path)


# --- preprocessing ------------------------------------------------------------------------------
def normalise(array: np.ndarray, config: dict) -> np.ndarray:
    """Robust percentiles of the scan itself → 0..1, clipped."""
    norm = config.get("normalisation", {"low": NORM_PERCENTILES[0], "high": NORM_PERCENTILES[1]})
    a = np.asarray(array, dtype=np.float32)
    lo, hi = np.percentile(a, [norm["low"], norm["high"]])
    if not hi > lo:
        hi = lo + 1.0
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def working_shape(shape_zyx: Sequence[int], spacing_xyz: Sequence[float], config: dict) -> Tuple[int, int, int]:
    ws = config.get("working_spacing")
    if ws is None:
        return tuple(int(n) for n in shape_zyx)
    return tuple(max(1, int(round(n * s / w))) for n, s, w in zip(shape_zyx, spacing_xyz[::-1], ws[::-1]))


def resample(x, shape: Sequence[int]):
    """Resample a (N, C, z, y, x) tensor to `shape`: area averaging where it shrinks, then trilinear."""
    import torch.nn.functional as F

    shape = tuple(int(n) for n in shape)
    if tuple(x.shape[2:]) == shape:
        return x
    pooled = tuple(min(a, b) for a, b in zip(x.shape[2:], shape))
    if pooled != tuple(x.shape[2:]):
        x = F.adaptive_avg_pool3d(x, pooled)
    if pooled != shape:
        x = F.interpolate(x, size=shape, mode="trilinear", align_corners=False)
    return x


def prepare(volume: Volume, config: dict):
    """The network input for a scan: normalised, at the working spacing, as a (1, 1, z, y, x) tensor."""
    import torch

    x = torch.from_numpy(normalise(volume.array, config))[None, None]
    return resample(x, working_shape(volume.array.shape, volume.spacing, config))


def labels_to_working(labels: np.ndarray, spacing_xyz, config: dict) -> np.ndarray:
    """A label map at the working spacing (one-hot, resampled like the scan, argmax)."""
    import torch

    classes = config["classes"]
    lab = torch.from_numpy(np.clip(np.asarray(labels), 0, classes - 1).astype(np.int64))
    onehot = torch.nn.functional.one_hot(lab, classes).permute(3, 0, 1, 2)[None].float()
    out = resample(onehot, working_shape(labels.shape, spacing_xyz, config))
    return out[0].argmax(0).numpy().astype(np.uint8)


# --- inference ----------------------------------------------------------------------------------
def _pad_to(x, multiple: int):
    import torch.nn.functional as F

    pads = [(-n) % multiple for n in x.shape[2:]]
    if not any(pads):
        return x, tuple(x.shape[2:])
    size = tuple(x.shape[2:])
    return F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0])), size


def _forward(net, x, levels: int):
    import torch

    padded, size = _pad_to(x, 2**levels)
    with torch.no_grad():
        probs = torch.softmax(net(padded), dim=1)
    return probs[:, :, : size[0], : size[1], : size[2]]


def predict(segmenter: Segmenter, x, max_voxels: int = MAX_WHOLE_VOXELS, tile: int = 96):
    """Class probabilities for a prepared input, whole-volume or in overlapping tiles (mean)."""
    import torch

    net, levels = segmenter.net, segmenter.config["levels"]
    net.eval()
    shape = tuple(x.shape[2:])
    if int(np.prod(shape)) <= max_voxels:
        return _forward(net, x, levels)
    step = max(1, tile - tile // 4)
    total = torch.zeros((1, segmenter.classes) + shape)
    count = torch.zeros((1, 1) + shape)

    def starts(n):
        if n <= tile:
            return [0]
        s = list(range(0, n - tile, step)) + [n - tile]
        return sorted(set(s))

    for z in starts(shape[0]):
        for y in starts(shape[1]):
            for x0 in starts(shape[2]):
                sl = (slice(None), slice(None), slice(z, z + tile), slice(y, y + tile), slice(x0, x0 + tile))
                total[sl] += _forward(net, x[sl], levels)
                count[sl] += 1
    return total / count


def probabilities(volume: Volume, segmenter, max_voxels: int = MAX_WHOLE_VOXELS) -> np.ndarray:
    """Class probabilities (classes, z, y, x) on the scan's own grid (float32)."""
    segmenter = load_segmenter(segmenter)
    probs = predict(segmenter, prepare(volume, segmenter.config), max_voxels)
    return resample(probs, volume.array.shape)[0].numpy()


def segment(volume: Volume, segmenter, max_voxels: int = MAX_WHOLE_VOXELS) -> np.ndarray:
    """A label map (z, y, x) uint8 on the volume's own grid; deterministic for the same input.

    The scan is normalised by its own robust percentiles, resampled to the working spacing, segmented
    there, and the class probabilities are resampled back linearly before the argmax. The network
    assumes the population's orientation (array axes), as it was trained.
    """
    if not isinstance(volume, Volume):
        raise InputError(f"segment needs a Volume, got {type(volume).__name__}")
    return probabilities(volume, segmenter, max_voxels).argmax(0).astype(np.uint8)


# --- agreement ----------------------------------------------------------------------------------
def label_agreement(reference: np.ndarray, other: np.ndarray, classes: int, spacing_xyz: Sequence[float]) -> dict:
    """Dice and HD95 (mm) per foreground class 1..classes-1, and their means over those classes.

    A class empty in both maps counts Dice 1 / HD95 0; empty in one only, HD95 is inf (and so is
    the mean).
    """
    from . import metrics

    dices = [metrics.dice(reference, other, label=c) for c in range(1, classes)]
    hds = [metrics.hd95(reference, other, spacing=spacing_xyz, label=c) for c in range(1, classes)]
    return {"dice": float(np.mean(dices)), "hd95": float(np.mean(hds)), "dice_per_class": dices, "hd95_per_class": hds}


def agreement(original_volume: Volume, decoded_volume, segmenter, original_labels: Optional[np.ndarray] = None) -> dict:
    """Dice / HD95 between the segmentations of the original and of the decoded scan.

    `decoded_volume` may be a Volume or an array on the original's grid; `original_labels` is the
    original's segmentation when already computed (the benchmark caches it per scan). Returns
    {"dice", "hd95"} = means over the foreground classes, plus the per-class values.
    """
    segmenter = load_segmenter(segmenter)
    if not isinstance(decoded_volume, Volume):
        decoded_volume = original_volume.with_array(np.asarray(decoded_volume, dtype=np.float32))
    if decoded_volume.array.shape != original_volume.array.shape:
        raise InputError(
            f"decoded scan {decoded_volume.array.shape} is not on the original's grid {original_volume.array.shape}"
        )
    reference = segment(original_volume, segmenter) if original_labels is None else original_labels
    return label_agreement(reference, segment(decoded_volume, segmenter), segmenter.classes, original_volume.spacing)


# --- training -----------------------------------------------------------------------------------
def _random_patch(arrays: Sequence[np.ndarray], patch: Sequence[int], rng: np.random.Generator):
    """The same random window of each array; a smaller array sits at a random offset in zeros."""
    shape = arrays[0].shape
    out = [np.zeros(tuple(patch), dtype=a.dtype) for a in arrays]
    src, dst = [], []
    for n, p in zip(shape, patch):
        if n >= p:
            s = int(rng.integers(0, n - p + 1))
            src.append(slice(s, s + p))
            dst.append(slice(0, p))
        else:
            d = int(rng.integers(0, p - n + 1))
            src.append(slice(0, n))
            dst.append(slice(d, d + n))
    for o, a in zip(out, arrays):
        o[tuple(dst)] = a[tuple(src)]
    return out


def _loss(logits, target, classes: int):
    import torch
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, classes).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    dice = (2 * inter + 1.0) / (probs.sum(dims) + onehot.sum(dims) + 1.0)
    return ce + (1.0 - dice[1:].mean())


def evaluate(segmenter: Segmenter, scans: Sequence[Tuple[Path, Path]]) -> dict:
    """Segmenter vs ground truth on held-out (image, label) pairs: mean foreground Dice / HD95."""
    from .io import read

    rows = []
    for image, label in scans:
        volume = read(image)
        truth = np.rint(read(label).array).astype(np.uint8)
        result = label_agreement(truth, segment(volume, segmenter), segmenter.classes, volume.spacing)
        rows.append(
            {
                "scan": Path(image).name,
                "dice": result["dice"],
                "hd95": result["hd95"],
                "dice_per_class": result["dice_per_class"],
            }
        )
    return {
        "mean_dice": float(np.mean([r["dice"] for r in rows])) if rows else None,
        "median_hd95": float(np.median([r["hd95"] for r in rows])) if rows else None,
        "scans": rows,
    }


def split(folder, holdout: int) -> Tuple[List[Tuple[Path, Path]], List[Tuple[Path, Path]]]:
    """(train, held-out) (image, label) pairs of a population folder: the last `holdout` sorted files
    of images/ are held out, as the codec bundles do."""
    folder = Path(folder)
    images = sorted(p for p in (folder / "images").iterdir() if p.name.endswith((".nii.gz", ".nii", ".nrrd", ".mha")))
    pairs = []
    for image in images:
        label = folder / "labels" / image.name
        if not label.exists():
            raise InputError(f"no label map for {image.name} in {folder / 'labels'}")
        pairs.append((image, label))
    if not 0 <= holdout < len(pairs):
        raise InputError(f"cannot hold out {holdout} of {len(pairs)} scans")
    return (pairs[: len(pairs) - holdout], pairs[len(pairs) - holdout :]) if holdout else (pairs, [])


def train(
    train_pairs: Sequence[Tuple[Path, Path]],
    config: dict,
    steps: int,
    patch: Sequence[int],
    batch: int = 2,
    lr: float = 2e-3,
    seed: int = 0,
    out=None,
    holdout_pairs=(),
    log: Optional[Callable[[str], None]] = None,
    save_every: int = 200,
) -> Segmenter:
    """Train a segmenter on (image, label) pairs: random `patch` (z, y, x) windows at the working
    spacing, Adam with a cosine learning-rate decay, Dice + CE, fixed seed and step count. Saves to
    `out` every `save_every` steps and at the end, with the held-out evaluation in the config."""
    import torch

    from .io import read

    log = log or (lambda line: None)
    rng = np.random.default_rng(seed)
    segmenter = untrained(config, seed)
    net = segmenter.net.train()
    started, cpu0 = time.perf_counter(), time.process_time()
    images, labels = [], []
    for image, label in train_pairs:
        volume = read(image)
        images.append(prepare(volume, config)[0, 0].numpy())
        labels.append(labels_to_working(np.rint(read(label).array).astype(np.int64), volume.spacing, config))
    log(
        f"loaded {len(images)} scans at working shapes {sorted({a.shape for a in images})[:3]}... "
        f"({time.perf_counter() - started:.0f} s)"
    )
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    history = []
    for step in range(1, steps + 1):
        xs, ys = [], []
        for _ in range(batch):
            k = int(rng.integers(len(images)))
            x, y = _random_patch([images[k], labels[k]], patch, rng)
            gamma = float(np.exp(rng.uniform(-0.3, 0.3)))  # intensity augmentation only
            xs.append(np.clip(x, 0, 1) ** gamma * rng.uniform(0.9, 1.1))
            ys.append(y)
        x = torch.from_numpy(np.stack(xs)[:, None].astype(np.float32))
        y = torch.from_numpy(np.stack(ys).astype(np.int64))
        loss = _loss(net(x), y, config["classes"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        history.append(loss.item())
        if step % 25 == 0 or step == steps:
            log(
                f"step {step}/{steps} loss {np.mean(history[-25:]):.4f} "
                f"({time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu0:.0f} s cpu)"
            )
        if out is not None and (step % save_every == 0) and step < steps:
            net.eval()
            save_segmenter(segmenter, out)
            net.train()
    net.eval()
    segmenter.config["training"] = {
        "scans": len(train_pairs),
        "files": [Path(p[0]).name for p in train_pairs],
        "holdout_files": [Path(p[0]).name for p in holdout_pairs],
        "steps": steps,
        "patch": list(patch),
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "final_loss": float(np.mean(history[-25:])),
        "wall_s": round(time.perf_counter() - started, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
    }
    if holdout_pairs:
        result = evaluate(segmenter, holdout_pairs)
        segmenter.config["validation"] = result
        log(f"held-out Dice vs ground truth: {result['mean_dice']:.4f} (median HD95 {result['median_hd95']:.2f} mm)")
    if out is not None:
        save_segmenter(segmenter, out)
    return segmenter


__all__ = [
    "Segmenter",
    "build_network",
    "default_config",
    "untrained",
    "save_segmenter",
    "load_segmenter",
    "shipped_segmenters",
    "segment",
    "probabilities",
    "agreement",
    "label_agreement",
    "train",
    "evaluate",
    "split",
]
