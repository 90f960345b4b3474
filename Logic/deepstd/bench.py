"""`deepstd bench`: DeepSTD and the peer codecs side by side, on the same scans and byte budgets.

Every codec gets the same budget per scan and ratio (raw bytes of the original dtype ÷ ratio, all
bytes needed to reconstruct counted) and is measured on the decoded volume in original units:
achieved ratio, PSNR / SSIM / MAE over the scan's real data range, encode and decode seconds,
Mvoxel/s. A codec that cannot reach a ratio is recorded with the best it can do, a crash with
its message. Results go to a JSON-lines file, one record per (scan, codec, ratio), so an
interrupted run resumes where it stopped; `summary()` makes the Markdown table and `plot()` the
rate–distortion PNG.

With `downstream` (a segmenter name or path, `deepstd.downstream`), every ok record also gets the
downstream agreement: Dice and HD95 (mm) between the segmentation of the original (computed once per
scan) and that of the decoded scan, averaged over the foreground classes; `summary()` then adds a
mean Dice / median HD95 table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from .errors import BudgetError, DeepSTDError
from .progress import CancelToken, ProgressCallback, Reporter

DEEPSTD = "deepstd"
#: DeepSTD's other settings (`encode`'s keywords), benched when named among the peers: the slower
#: presets, and the learned texture alone (never the refinement layer alone), which shows what the
#: texture codec itself achieves
DEEPSTD_PRESETS: Dict[str, Dict[str, Any]] = {
    "deepstd-effort1": {"effort": 1},
    "deepstd-effort2": {"effort": 2},
    "deepstd-texture": {"require_texture": True},
}
DEFAULT_PEERS = (
    "jpeg2000-slices",
    "jpeg2000-components",
    "htj2k-slices",
    "jpegxl-slices",
    "hevc",
    "vvc",
    "sperr3d",
    "sz3",
    "zfp",
)
DEFAULT_RATIOS = (32, 64, 128, 256)


def _record(volume, nbytes: int, measured: dict, t_enc: float, t_dec: float) -> dict:
    return {
        "status": "ok",
        "bytes": nbytes,
        "ratio": volume.raw_bytes / nbytes,
        **measured,
        "encode_s": t_enc,
        "decode_s": t_dec,
        "encode_mvox_s": volume.voxels / t_enc / 1e6,
        "decode_mvox_s": volume.voxels / t_dec / 1e6,
    }


def run_deepstd(
    volume, bundle, budget: int, cancel=None, judge: Optional[Callable[[np.ndarray], dict]] = None, **preset
) -> dict:
    """One DeepSTD round trip; the record says which sections the file holds (`layers`: the texture
    alone, with the refinement layer, or the refinement layer alone)."""
    from .container import unpack
    from .evaluate import round_trip

    try:
        result = round_trip(volume, bundle, budget_bytes=budget, device="cpu", cancel=cancel, **preset)
    except BudgetError as exc:
        return {"status": "unreachable", "error": str(exc)}
    record = _record(volume, len(result.data), result.metrics, result.encode_s, result.decode_s)
    record["warnings"] = result.warnings
    record["layers"] = sorted(unpack(result.data).sections)
    if judge is not None:
        record.update(judge(result.decoded.array))
    return record


def run_peer(peer, volume, budget: int, judge: Optional[Callable[[np.ndarray], dict]] = None) -> dict:
    from .evaluate import measure
    from .peers import PeerBudgetError

    t0 = time.perf_counter()
    try:
        data = peer.encode(volume, budget)
        t1 = time.perf_counter()
        decoded = peer.decode(data, volume)
    except PeerBudgetError as exc:
        return {"status": "unreachable", "best_ratio": volume.raw_bytes / exc.smallest_bytes}
    except DeepSTDError as exc:
        return {"status": "failed", "error": str(exc)}
    t2 = time.perf_counter()
    record = _record(volume, len(data), measure(volume.array, decoded), t1 - t0, t2 - t1)
    if judge is not None:
        record.update(judge(decoded))
    return record


def _judge(segmenter, volume, reference_cache: Dict[str, np.ndarray], key: str):
    """Downstream agreement of a decoded array with the original's segmentation (cached per scan)."""
    from . import downstream

    def judge(decoded) -> dict:
        if key not in reference_cache:
            reference_cache[key] = downstream.segment(volume, segmenter)
        result = downstream.agreement(volume, decoded, segmenter, original_labels=reference_cache[key])
        return {
            "dice": result["dice"],
            "hd95": result["hd95"],
            "dice_per_class": result["dice_per_class"],
            "hd95_per_class": result["hd95_per_class"],
            "segmenter": segmenter.name,
        }

    return judge


def run(
    scans: Sequence[Path],
    bundle,
    out_jsonl,
    ratios: Iterable[float] = DEFAULT_RATIOS,
    peer_names: Optional[Sequence[str]] = None,
    threads: int = 1,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    downstream=None,
) -> List[dict]:
    """Measure every codec on every scan at every ratio; append records to `out_jsonl` (resumable).

    `downstream`: a segmenter name or path (or a loaded one); ok records then get `dice` / `hd95`
    between the segmentations of the original and the decoded scan (records already in the file
    are not revisited)."""
    import torch

    from . import peers
    from .bundle import load_bundle
    from .io import read

    torch.set_num_threads(threads)
    bundle = load_bundle(bundle) if not hasattr(bundle, "sha256") else bundle
    segmenter = None
    if downstream is not None:
        from .downstream import load_segmenter

        segmenter = load_segmenter(downstream)
    references: Dict[str, np.ndarray] = {}
    out = Path(out_jsonl)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["scan"], r["codec"], r["target_ratio"]) for r in load(out)} if out.exists() else set()
    missing = peers.unavailable()
    codecs = [DEEPSTD] + [name for name in (peer_names or DEFAULT_PEERS) if name != DEEPSTD]
    for name in codecs:  # an unknown name is refused before hours of work, not when its turn comes
        if name != DEEPSTD and name not in DEEPSTD_PRESETS:
            peers.get(name)
    ratios = list(ratios)
    reporter = Reporter(progress, cancel)
    jobs = [(s, c, r) for s in scans for c in codecs for r in ratios]
    records = []
    volumes: Dict[str, object] = {}
    for i, (scan, name, ratio) in enumerate(jobs):
        key = (Path(scan).name, name, float(ratio))
        reporter("bench", i / len(jobs), f"{key[0]} {name} {ratio:g}x")
        if key in done:
            continue
        volume = volumes.setdefault(str(scan), read(scan))
        budget = int(volume.raw_bytes // ratio)
        judge = None if segmenter is None else _judge(segmenter, volume, references, str(scan))
        if name in missing:
            record = {"status": "unavailable", "error": missing[name]}
        elif name == DEEPSTD or name in DEEPSTD_PRESETS:
            record = run_deepstd(volume, bundle, budget, cancel, judge, **DEEPSTD_PRESETS.get(name, {}))
        else:
            record = run_peer(peers.get(name), volume, budget, judge)
        record.update(
            {
                "scan": key[0],
                "codec": name,
                "target_ratio": key[2],
                "budget": budget,
                "voxels": volume.voxels,
                "threads": threads,
            }
        )
        with out.open("a") as stream:
            stream.write(json.dumps(record) + "\n")
        records.append(record)
    reporter("bench", 1.0, "done")
    return records


def load(path) -> List[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summary(records: Sequence[dict], title: str = "") -> str:
    """Markdown: mean SSIM / median PSNR per codec and ratio, with how many scans reached it."""
    ratios = sorted({r["target_ratio"] for r in records})
    codecs = list(dict.fromkeys(r["codec"] for r in records))
    scans = {r["scan"] for r in records}
    lines = [
        f"### {title}" if title else "",
        "",
        f"{len(scans)} scans; cells: mean SSIM / median PSNR dB (scans that reached the ratio); "
        "budget = raw bytes ÷ ratio, every byte counted.",
        "",
        "| codec | " + " | ".join(f"{r:g}×" for r in ratios) + " | encode Mvox/s |",
        "|---|" + "---|" * (len(ratios) + 1),
    ]
    for name in codecs:
        cells, speeds = [], []
        for ratio in ratios:
            rows = [r for r in records if r["codec"] == name and r["target_ratio"] == ratio]
            ok = [r for r in rows if r["status"] == "ok"]
            speeds += [r["encode_mvox_s"] for r in ok]
            if not ok:
                status = rows[0]["status"] if rows else "-"
                cells.append(status)
                continue
            cells.append(
                f"{np.mean([r['ssim'] for r in ok]):.3f} / {np.median([r['psnr'] for r in ok]):.2f}"
                + ("" if len(ok) == len(rows) else f" ({len(ok)}/{len(rows)})")
            )
        speed = f"{np.median(speeds):.2f}" if speeds else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {speed} |")
    for name in dict.fromkeys(r["codec"] for r in records if "layers" in r):
        counts = []
        for ratio in ratios:
            ok = [r for r in records if r["codec"] == name and r["target_ratio"] == ratio and "layers" in r]
            if ok:
                counts.append(f"{sum('texture' in r['layers'] for r in ok)}/{len(ok)} at {ratio:g}×")
        lines += ["", f"{name}: files that hold the learned texture (the rest: the refinement layer alone): "
                  + ", ".join(counts)]  # fmt: skip
    if any("dice" in r for r in records):
        lines += [""] + downstream_table(records)
    return "\n".join(lines).strip() + "\n"


def downstream_table(records: Sequence[dict]) -> List[str]:
    """Markdown lines: mean Dice / median HD95 (mm) of the downstream agreement per codec and ratio."""
    judged = [r for r in records if "dice" in r]
    ratios = sorted({r["target_ratio"] for r in records})
    segmenters = ", ".join(sorted({str(r.get("segmenter", "?")) for r in judged}))
    lines = [
        f"Downstream agreement (segmenter {segmenters}): segmentation of the decoded scan vs that of the "
        "original; cells: mean Dice / median HD95 mm, each the mean over the foreground classes "
        "(scans with a value).",
        "",
        "| codec | " + " | ".join(f"{r:g}×" for r in ratios) + " |",
        "|---|" + "---|" * len(ratios),
    ]
    for name in dict.fromkeys(r["codec"] for r in records):
        cells = []
        for ratio in ratios:
            rows = [r for r in records if r["codec"] == name and r["target_ratio"] == ratio]
            ok = [r for r in rows if "dice" in r]
            if not ok:
                cells.append(rows[0]["status"] if rows and rows[0]["status"] != "ok" else "-")
                continue
            cells.append(
                f"{np.mean([r['dice'] for r in ok]):.3f} / {np.median([r['hd95'] for r in ok]):.2f}"
                + ("" if len(ok) == len(rows) else f" ({len(ok)}/{len(rows)})")
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def plot(records: Sequence[dict], png, title: str = "") -> Optional[Path]:
    """Rate–distortion curves (achieved ratio vs median PSNR and mean SSIM) per codec."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["codec"] for r in records):
        points = []
        for ratio in sorted({r["target_ratio"] for r in records}):
            ok = [r for r in records if r["codec"] == name and r["target_ratio"] == ratio and r["status"] == "ok"]
            if ok:
                points.append(
                    (
                        np.mean([r["ratio"] for r in ok]),
                        np.median([r["psnr"] for r in ok]),
                        np.mean([r["ssim"] for r in ok]),
                    )
                )
        if points:
            x, p, s = zip(*points)
            style = dict(lw=2.5, color="black") if name == DEEPSTD else dict(lw=1.2)
            axes[0].plot(x, p, "o-", label=name, **style)
            axes[1].plot(x, s, "o-", label=name, **style)
    for ax, label in zip(axes, ("median PSNR (dB)", "mean SSIM")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("compression ratio (raw ÷ file bytes)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)


__all__ = ["run", "load", "summary", "downstream_table", "plot", "DEFAULT_PEERS", "DEFAULT_RATIOS"]
