"""Registration benchmark: Cycle-INR (deepstd.shape) vs SimpleITK B-spline, side by side, one run.

For N scans of a labelled population registered to the template (the widest imaging range),
reports per scan and in summary: Dice and HD95 of the warped labels against the template's labels
before (identity in physical space) and after, inverse-consistency error (voxels), folding
fraction (det J <= 0), wall time (full-size field evaluation and warping included) and the shape
code size. Both methods get the same centre-of-mass pre-alignment and the same thread count.

    python scripts/bench_registration.py hippocampus_mr --n 20 --json docs/bench/reg_hippocampus.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from deepstd.grid.sampling import warp
from deepstd.shape import CycleSettings, folding_fraction, inverse_consistency, jacobian_determinant, register
from deepstd.shape.calibrate import calibrate_threshold
from deepstd.shape.files import METRICS_STRIDE
from deepstd.shape.intensity import normalise
from deepstd.shape.prealign import matrix_transform, prealign
from deepstd.volume import Volume

DATA = Path(os.environ.get("DEEPSTD_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def load(path: Path) -> Volume:
    return Volume.from_sitk(sitk.ReadImage(str(path)))


def population(name: str):
    """(image path, label path) pairs of a population, sorted by name."""
    root = DATA / name
    return [(p, root / "labels" / p.name) for p in sorted((root / "images").glob("*.nii.gz"))]


def pick_template(pairs):
    """The scan with the widest imaging range (product of physical extents); prints the ranking."""
    ranked = sorted(pairs, key=lambda p: -np.prod(_extent(p[0])))
    print(
        "template ranking (extent mm):",
        ", ".join(f"{p[0].name.split('.')[0]} {np.round(_extent(p[0]), 1).tolist()}" for p in ranked[:3]),
    )
    return ranked[0]


def _extent(path: Path):
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()
    return np.asarray(r.GetSize()) * np.asarray(r.GetSpacing())


# --- metrics ------------------------------------------------------------------------------------
def dice(a: np.ndarray, b: np.ndarray, labels) -> float:
    return float(np.mean([2.0 * np.sum((a == k) & (b == k)) / max(1, np.sum(a == k) + np.sum(b == k)) for k in labels]))


def hd95(a: np.ndarray, b: np.ndarray, labels, spacing_zyx) -> float:
    """Mean over labels of the symmetric 95th-percentile surface distance, mm."""
    out = []
    for k in labels:
        ma, mb = a == k, b == k
        if not ma.any() or not mb.any():
            out.append(float("nan"))
            continue
        sa = ma ^ ndimage.binary_erosion(ma)
        sb = mb ^ ndimage.binary_erosion(mb)
        da = ndimage.distance_transform_edt(~sb, sampling=spacing_zyx)[sa]
        db = ndimage.distance_transform_edt(~sa, sampling=spacing_zyx)[sb]
        out.append(float(np.percentile(np.concatenate([da, db]), 95)))
    return float(np.mean(out))


# --- the two methods ----------------------------------------------------------------------------
def run_ours(moving, labels, template, settings, args):
    start = time.perf_counter()
    reg = register(moving, template, settings, prealignment=args.prealign, threads=args.threads)
    disp = reg.forward_field()
    warped = warp(moving, disp, reg.frame, "linear")
    seconds = time.perf_counter() - start  # what `deepstd register` does: fit + field + warp
    warped_labels = warp(labels, disp, reg.frame, "nearest").array
    check = reg.frame.coarse(METRICS_STRIDE)  # every 2nd voxel, as `deepstd register` reports them
    det = jacobian_determinant(reg.fit.forward, check)
    ic_mean, ic_max = inverse_consistency(reg.fit.forward, reg.fit.backward, check, reg.frame)
    return dict(
        seconds=seconds,
        labels=warped_labels,
        folding=folding_fraction(det),
        ic=ic_mean,
        ic_max=ic_max,
        code_bytes=len(reg.shape_code(8)),
        omega=reg.omega,
        loss=reg.loss,
        warped=warped,
    )


def run_bspline(moving, labels, template, args):
    """SimpleITK B-spline FFD (correlation metric, LBFGS-B, two levels) after the same pre-alignment."""
    start = time.perf_counter()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    fixed, mov = _normalised(template), _normalised(moving)
    init = matrix_transform(prealign(fixed, mov, args.prealign))
    mesh = [max(1, int(round(e / args.bspline_spacing))) for e in template.extent_mm]
    tx = sitk.BSplineTransformInitializer(fixed, mesh, 3)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(args.bspline_sampling, 0)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5,
        numberOfIterations=args.bspline_iterations,
        maximumNumberOfCorrections=5,
        maximumNumberOfFunctionEvaluations=1000,
        costFunctionConvergenceFactor=1e7,
    )
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1, 0])
    reg.SetMovingInitialTransform(init)
    reg.SetInitialTransform(tx, inPlace=True)
    reg.Execute(fixed, mov)
    total = sitk.CompositeTransform([init, tx])
    field = sitk.TransformToDisplacementField(
        total, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection()
    )
    warped = sitk.Resample(moving.to_sitk(cast=False), fixed, total, sitk.sitkLinear, 0.0)
    seconds = time.perf_counter() - start
    warped_labels = sitk.GetArrayFromImage(sitk.Resample(labels.to_sitk(), fixed, total, sitk.sitkNearestNeighbor, 0))
    # folding of the deformable part alone, as for ours
    bfield = sitk.TransformToDisplacementField(
        tx, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection()
    )
    det = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(bfield))
    del field, warped
    return dict(
        seconds=seconds,
        labels=warped_labels,
        folding=float(np.mean(det <= 0)),
        ic=float("nan"),
        ic_max=float("nan"),
        code_bytes=int(8 * len(tx.GetParameters())),
        omega=float("nan"),
        loss=float("nan"),
    )


def _normalised(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(normalise(volume))
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    return image


def identity_labels(labels: Volume, template: Volume) -> np.ndarray:
    return sitk.GetArrayFromImage(
        sitk.Resample(labels.to_sitk(), template.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    )


# --- driver --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("population", help="folder under the shared data: hippocampus_mr or left_atrium_mr")
    ap.add_argument("--n", type=int, default=20, help="scans to register (after the template)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prealign", default="moments", choices=("none", "moments", "affine"))
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a CycleSettings field, e.g. --set steps=200 --set omega=10",
    )
    ap.add_argument(
        "--calibrate",
        type=int,
        default=0,
        help="calibrate the degradation threshold on this many scans outside the evaluated ones",
    )
    ap.add_argument("--bspline-spacing", type=float, default=10.0, help="B-spline control-point spacing, mm")
    ap.add_argument("--bspline-iterations", type=int, default=50)
    ap.add_argument("--bspline-sampling", type=float, default=0.1)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    pairs = population(args.population)
    tpl_pair = pick_template(pairs)
    rest = [p for p in pairs if p != tpl_pair]
    evaluated, spare = rest[: args.n], rest[args.n :]
    template, tpl_labels = load(tpl_pair[0]), load(tpl_pair[1]).array
    label_ids = [int(k) for k in np.unique(tpl_labels) if k != 0]
    spacing_zyx = template.spacing[::-1]
    settings = CycleSettings()
    for item in args.set:
        key, value = item.split("=", 1)
        setattr(settings, key, type(getattr(settings, key))(value))
    if args.calibrate:
        calib = (spare or rest)[: args.calibrate]
        settings.threshold = calibrate_threshold(
            [load(p[0]) for p in calib], template, settings, prealignment=args.prealign, threads=args.threads
        )
        print(
            f"degradation threshold (75th percentile over {len(calib)} scans"
            f"{'' if spare else ', overlapping the evaluated ones'}): {settings.threshold:.4f}"
        )
    methods = ["cycle-inr"] + ([] if args.no_baseline else ["sitk-bspline"])
    rows = []
    for i, (img_path, lab_path) in enumerate(evaluated):
        moving, labels = load(img_path), load(lab_path)
        before = identity_labels(labels, template)
        row = dict(
            scan=img_path.name.split(".")[0],
            dice_before=dice(before, tpl_labels, label_ids),
            hd95_before=hd95(before, tpl_labels, label_ids, spacing_zyx),
        )
        for m in methods:
            r = (
                run_ours(moving, labels, template, settings, args)
                if m == "cycle-inr"
                else run_bspline(moving, labels, template, args)
            )
            row[m] = dict(
                dice=dice(r["labels"], tpl_labels, label_ids),
                hd95=hd95(r["labels"], tpl_labels, label_ids, spacing_zyx),
                **{k: r[k] for k in ("seconds", "folding", "ic", "ic_max", "code_bytes", "omega", "loss")},
            )
        rows.append(row)
        print(
            f"[{i + 1}/{len(evaluated)}] {row['scan']}: before {row['dice_before']:.3f} | "
            + " | ".join(
                f"{m} dice {row[m]['dice']:.3f} hd95 {row[m]['hd95']:.2f} t {row[m]['seconds']:.1f}s "
                f"fold {100 * row[m]['folding']:.3f}% ic {row[m]['ic']:.2f}"
                for m in methods
            ),
            flush=True,
        )
    summary = summarise(rows, methods)
    print_table(summary, len(rows), args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                dict(
                    command=" ".join(sys.argv),
                    template=tpl_pair[0].name,
                    settings=settings.__dict__,
                    summary=summary,
                    rows=rows,
                ),
                indent=1,
            )
        )
    return 0


def summarise(rows, methods):
    out = {"before": dict(dice=_ms([r["dice_before"] for r in rows]), hd95=_ms([r["hd95_before"] for r in rows]))}
    for m in methods:
        out[m] = {k: _ms([r[m][k] for r in rows]) for k in ("dice", "hd95", "seconds", "folding", "ic", "code_bytes")}
    return out


def _ms(values):
    v = np.asarray(values, dtype=np.float64)
    return (float(np.nanmean(v)), float(np.nanstd(v))) if np.isfinite(v).any() else (float("nan"), float("nan"))


def print_table(summary, n, args):
    print(f"\n{args.population}: {n} scans, {args.threads} thread(s), pre-alignment {args.prealign}")
    print("| method | Dice | HD95 mm | time s | folding % | inv. consistency vox | code bytes |")
    print("|---|---|---|---|---|---|---|")
    b = summary["before"]
    print(
        f"| before (identity) | {b['dice'][0]:.3f} ± {b['dice'][1]:.3f} | {b['hd95'][0]:.2f} ± {b['hd95'][1]:.2f} "
        "| - | - | - | - |"
    )
    for m, s in summary.items():
        if m == "before":
            continue
        print(
            f"| {m} | {s['dice'][0]:.3f} ± {s['dice'][1]:.3f} | {s['hd95'][0]:.2f} ± {s['hd95'][1]:.2f} "
            f"| {s['seconds'][0]:.1f} ± {s['seconds'][1]:.1f} | {100 * s['folding'][0]:.3f} "
            f"| {s['ic'][0]:.2f} | {s['code_bytes'][0]:.0f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
