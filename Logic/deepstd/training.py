"""Train a codec bundle from a folder of scans: `deepstd train DATA_DIR --out NAME.dstdb`.

Steps (../shared/docs/METHOD.md, Ideas 1, 2, 5, 6): rank the scans and pick the template (widest imaging range
after excluding outliers; the ranking is printed so the choice is auditable), register every
scan to it with Cycle-INR (aligned scans cached in the work folder), calibrate the gradual-
degradation threshold (75th percentile of the losses after the probe steps), train the texture
codec on the aligned training scans (optionally with random smooth deformations and intensity
changes), evaluate it on the held-out scans, and write the bundle.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .alignment import ALIGNMENT_VERSION, PERCENTILE_RULE, block_for, frame_for, intensity_map, into_template
from .errors import InputError
from .progress import CancelToken, ProgressCallback, Reporter
from .volume import Volume, cast_to_dtype

#: a scan with fewer distinct grey levels than this fraction of the population's median is an
#: outlier for template selection (coarsely quantised or nearly empty acquisitions)
MIN_LEVEL_FRACTION = 0.5
CT_WINDOW_RULE = {"kind": "window", "low": -1024.0, "high": 3071.0}
#: the texture block size bundles are trained for (written to their config)
TEXTURE_BLOCK = 64


def scan_files(data_dir) -> List[Path]:
    """Image files of a population folder: `images/*.nii*` (or the folder's own volume files)."""
    data = Path(data_dir)
    if not data.is_dir():
        raise InputError(f"{data}: not a folder")
    patterns = ("*.nii.gz", "*.nii", "*.nrrd", "*.mha", "*.mhd")
    for folder in (data / "images", data):
        files = sorted(p for pattern in patterns for p in folder.glob(pattern))
        if files:
            return files
    raise InputError(f"{data}: no volume files found (expected images/*.nii.gz)")


def rank_templates(scans: Sequence[Volume], names: Sequence[str]) -> List[dict]:
    """Candidates ordered by imaging range (mm³ of field of view), outliers last with a reason."""
    levels = [len(np.unique(s.array[:: max(1, s.array.shape[0] // 32)])) for s in scans]
    median_levels = float(np.median(levels))
    rows = []
    for name, scan, n in zip(names, scans, levels):
        extent = scan.extent_mm
        reason = ""
        if n < MIN_LEVEL_FRACTION * median_levels:
            reason = f"only {n} grey levels (median {median_levels:.0f})"
        rows.append(
            {
                "name": name,
                "extent_mm": [round(e, 1) for e in extent],
                "range_mm3": float(np.prod(extent)),
                "grey_levels": n,
                "excluded": reason,
            }
        )
    return sorted(rows, key=lambda r: (bool(r["excluded"]), -r["range_mm3"]))


#: the texture is coded on the template's grid: a template finer than this many voxels is coarsened
MAX_TEMPLATE_VOXELS = 3_000_000


def template_grid(
    template: Volume, scans: Sequence[Volume], max_voxels: int = MAX_TEMPLATE_VOXELS, labels: Optional[Volume] = None
):
    """The template on the grid the texture will be coded on: isotropic at the finest spacing any
    training scan has (the texture cannot hold detail finer than its grid, so a population with a
    3 mm template would code a 0.8 mm scan at 3 mm), coarsened until it holds at most `max_voxels`;
    same box, origin and direction. A template already that fine is returned unchanged."""
    from .grid import Frame, sampling

    finest = min(min(s.spacing) for s in scans)
    frame = Frame.of(template)
    spacing = max(finest, float(np.cbrt(np.prod(frame.lengths + finest) / max_voxels)))
    if np.allclose(template.spacing, spacing, rtol=0.02) or spacing >= max(template.spacing):
        return template, labels
    size = tuple(int(np.floor(length / spacing + 1e-6)) + 1 for length in frame.lengths)
    grid = Frame(size, (spacing,) * 3, frame.origin, frame.direction)
    zero = np.zeros(grid.shape_zyx + (3,), np.float32)
    fine = sampling.warp(template, zero, grid, "cubic")
    fine = fine.with_array(
        cast_to_dtype(np.clip(fine.array, template.array.min(), template.array.max()), template.dtype).astype(
            np.float32
        )
    )
    if labels is not None:
        labels = sampling.warp(labels, zero, grid, "nearest")
    return fine, labels


def augment(array: np.ndarray, rng: np.random.Generator, bumps: int = 6, max_shift: float = 4.0) -> np.ndarray:
    """A random smooth deformation (a sum of Gaussian displacement bumps) and intensity change
    (gamma, a smooth multiplicative bias field, noise) of a unit-intensity volume (Idea 6)."""
    from scipy.ndimage import map_coordinates

    shape = np.asarray(array.shape, dtype=np.float64)
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in array.shape], indexing="ij")
    disp = [np.zeros(array.shape, np.float32) for _ in range(3)]
    for _ in range(bumps):
        centre = rng.uniform(0, shape)
        sigma = rng.uniform(0.15, 0.35) * shape
        weight = np.exp(-sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, sigma)) / 2)
        for axis in range(3):
            disp[axis] += np.float32(rng.uniform(-max_shift, max_shift)) * weight.astype(np.float32)
    warped = map_coordinates(array, [g + d for g, d in zip(grid, disp)], order=1, mode="nearest")
    gamma = rng.uniform(0.8, 1.25)
    out = np.sign(warped) * np.abs(warped) ** gamma
    bias = 1.0 + sum(rng.uniform(-0.08, 0.08) * (g / max(n - 1, 1) - 0.5) for g, n in zip(grid, array.shape))
    out = out * bias + rng.normal(0.0, rng.uniform(0.0, 0.02), array.shape)
    return out.astype(np.float32)


def train_bundle(
    data_dir,
    out,
    name: str,
    modality: str,
    region: str,
    holdout: int = 6,
    steps: int = 6000,
    patch: int = 48,
    work_dir=None,
    augment_copies: int = 0,
    omega: Optional[float] = None,
    texture_overrides: Optional[dict] = None,
    threads: int = 1,
    resume: bool = False,
    description: str = "",
    command: str = "",
    teacher=None,
    fine_template: bool = False,
    context: int = 0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    log=print,
) -> Path:
    """Train a bundle end to end and write it to `out` (see the module docstring). `context` > 0:
    the texture's entropy model reads the template through a branch of that many channels."""
    from dataclasses import replace

    import torch

    from .bundle import BundleConfig, RegistrationConfig, TextureCoding, save_bundle
    from .io import read
    from .shape import CycleSettings, decode_shape, register
    from .shape.sizing import SHAPE_BITS
    from .texture.context import side_for
    from .texture.network import TextureConfig
    from .texture.train import TrainSettings, evaluate, train

    torch.set_num_threads(threads)
    reporter = Reporter(progress, cancel)
    started = time.time()
    files = scan_files(data_dir)
    low, high = TextureConfig.LIMITS["context"]
    if not low <= context <= high:
        raise InputError(f"--template-context {context}: give {low} (none) to {high} channels")
    if holdout < 0 or holdout >= len(files):
        raise InputError(f"--holdout {holdout} leaves no training scan among {len(files)}")
    train_files, val_files = files[: len(files) - holdout], files[len(files) - holdout :]
    work = Path(work_dir or Path(out).with_suffix(".work"))
    work.mkdir(parents=True, exist_ok=True)
    scans = [read(f) for f in train_files]
    names = [_stem(f) for f in train_files]
    is_ct = modality.upper() == "CT"
    rule = CT_WINDOW_RULE if is_ct else PERCENTILE_RULE

    ranking = rank_templates(scans, names)
    log("template ranking (imaging range, outliers last):")
    for i, row in enumerate(ranking[:10]):
        log(
            f"  {i + 1:2d}. {row['name']:40s} {'x'.join(f'{e:g}' for e in row['extent_mm'])} mm "
            f"{row['grey_levels']:5d} levels {row['excluded']}"
        )
    template_index = names.index(ranking[0]["name"])
    labels_path = train_files[template_index].parent.parent / "labels" / train_files[template_index].name
    template, template_labels = scans[template_index], read(labels_path) if labels_path.exists() else None
    if fine_template:
        template, template_labels = template_grid(template, scans, labels=template_labels)
    log(
        f"template: {names[template_index]} ({'x'.join(map(str, template.size))} voxels of "
        f"{'x'.join(f'{s:.3g}' for s in template.spacing)} mm)"
    )

    teacher_net, teacher_id = None, None
    if teacher is not None:
        from .bundle import load_bundle
        from .texture import TextureCodec

        teacher_bundle = load_bundle(teacher)
        teacher_net = TextureCodec.from_bytes(teacher_bundle.texture).net
        teacher_id = {"name": teacher_bundle.name, "sha256": teacher_bundle.sha256}
        config = teacher_net.config
        log(f"distilling from teacher bundle {teacher_bundle.name} ({teacher_bundle.sha256[:12]})")
    else:
        config = TextureConfig.from_dict(texture_overrides or {})
    if context:
        template_map = intensity_map(template.array, rule)
        config = replace(config, context=context, context_range=(template_map.lo, template_map.hi))

    settings = CycleSettings(omega=omega or (10.0 if is_ct else 12.0))
    aligned, losses, probe_losses = [], [], []
    val_aligned, val_support, sides, val_sides = [], [], [], []
    for i, (path, scan) in enumerate(zip(list(train_files) + list(val_files), scans + [read(f) for f in val_files])):
        reporter("register", i / len(files), f"registering {path.name}")
        cached = work / f"{_stem(path)}.npz"
        data = np.load(cached) if cached.exists() else {}
        fresh = "alignment" in data and int(data["alignment"]) == ALIGNMENT_VERSION
        if fresh and ("keys" in data or not config.context):  # a template context needs the frame keys
            unit, support, loss, probe = data["unit"], data["support"], float(data["loss"]), float(data["probe"])
            keys = tuple(json.loads(str(data["keys"]))) if "keys" in data else (None, None, None)
        else:
            reg = register(scan, template, settings, cancel=cancel)
            stored = decode_shape(reg.shape_code(SHAPE_BITS))
            coding = frame_for(scan, reg.frame, stored, TEXTURE_BLOCK)
            unit, support = into_template(
                scan, stored.backward, stored.matrix, reg.frame, coding.frame, intensity_map(scan.array, rule)
            )
            keys = (coding.margin, coding.size, coding.window)  # how the decoder rebuilds the frame
            loss = reg.loss
            h = reg.fit.history
            probe = float(np.mean(h[max(0, settings.probe_steps - 20) : settings.probe_steps]))
            np.savez(
                cached,
                unit=unit,
                support=support,
                loss=loss,
                probe=probe,
                alignment=ALIGNMENT_VERSION,
                keys=json.dumps(keys, default=int),
            )
        side = side_for(config, template, *keys, unit.shape)
        if i < len(train_files):
            aligned.append(unit.astype(np.float32))
            sides.append(side)
        else:
            val_aligned.append(unit.astype(np.float32))
            val_support.append(support)
            val_sides.append(side)
        if i < len(train_files):
            losses.append(loss)
            probe_losses.append(probe)
        log(f"  registered {path.name}: loss {loss:.4f}")
    threshold = float(np.percentile(probe_losses, 75.0))
    log(
        f"calibrated gradual-degradation threshold (75th percentile after {settings.probe_steps} steps): "
        f"{threshold:.4f}"
    )

    training_volumes, training_sides = list(aligned), list(sides)
    if augment_copies:
        rng = np.random.default_rng(0)
        for _ in range(augment_copies):
            for unit, side in zip(aligned, sides):
                training_volumes.append(augment(unit, rng))
                training_sides.append(side)  # the copy is deformed a few voxels: its template nearly fits
        log(f"augmentation: {augment_copies} deformed/intensity-changed copies of each training scan")

    train_settings = TrainSettings(steps=steps, patch=patch)
    if len(train_settings.lambdas) != config.levels:  # one λ per rate level, over the same span
        span = train_settings.lambdas
        train_settings.lambdas = [float(v) for v in np.geomspace(span[0], span[-1], config.levels)]
    log(f"training the texture codec on {len(training_volumes)} aligned volumes for {steps} steps")
    codec = train(
        training_volumes,
        work / "texture",
        config,
        train_settings,
        resume=resume,
        progress=progress,
        cancel=cancel,
        teacher=teacher_net,
        sides=training_sides if config.context else None,
    )
    trained = time.time() - started

    rates = [0.0, 0.25, 0.5, 0.75, 1.0]
    itemsize = np.dtype(template.dtype).itemsize
    validation = (
        evaluate(
            codec,
            val_aligned,
            rates,
            raw_itemsize=itemsize,
            supports=val_support,
            blocks=[block_for(v.shape, TEXTURE_BLOCK) for v in val_aligned],
            sides=val_sides if config.context else None,
        )
        if val_aligned
        else []
    )
    for point in validation:
        log("  validation " + json.dumps({k: round(v, 4) for k, v in point.items()}))

    subjects = len(train_files)
    cycle = {k: v for k, v in asdict(settings).items() if k not in ("width", "depth", "seed", "threshold")}
    bundle_config = BundleConfig(
        name=name,
        modality=modality,
        region=region,
        description=description or f"{modality} {region}; trained on {subjects} scans (held out {holdout})",
        intensity=rule,
        texture=TextureCoding(TEXTURE_BLOCK, (0.0, 1.0)),
        registration=RegistrationConfig(
            width=settings.width, depth=settings.depth, seed=settings.seed, threshold=threshold, cycle=cycle
        ),
        training={
            "scans": subjects,
            "holdout": holdout,
            "holdout_files": [f.name for f in val_files],
            "template": names[template_index],
            "template_ranking": ranking[:5],
            "registration_loss_median": float(np.median(losses)),
            "augment_copies": augment_copies,
            "steps": steps,
            "teacher": teacher_id,
            "fine_template": fine_template,
            "texture_config": config.to_dict(),
            "train_settings": asdict(train_settings),
            "seconds": round(trained, 1),
            "threads": threads,
            "command": command or " ".join(sys.argv),
        },
        validation=tuple(validation),
    )
    path = save_bundle(out, bundle_config, template, template_labels, codec.to_bytes())
    log(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in {trained / 60:.1f} min")
    return path


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


__all__ = ["train_bundle", "rank_templates", "scan_files", "augment"]
