"""`deepstd batch report`: what a batch achieved, from its manifest alone — Markdown and a PNG.

Totals before and after, the transfer time of both at a given link speed (the paper's
"share a collection over a slow link" case), ratio and quality distributions, the worst scans
and every failure with its reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from . import manifest

WORST = 10


def load_results(out_dir) -> List[dict]:
    return list(manifest.latest(manifest.load(out_dir)).values())


def transfer_hours(nbytes: int, mbit_per_s: float) -> float:
    return nbytes * 8 / (mbit_per_s * 1e6) / 3600


def summary(records: List[dict], bandwidth_mbit: float, png: Optional[str] = None) -> str:
    ok = [r for r in records if r.get("status") == "ok"]
    failed = [r for r in records if r.get("status") != "ok"]
    raw, packed = sum(r["raw_bytes"] for r in ok), sum(r["bytes"] for r in ok)
    lines = [
        "# DeepSTD batch report",
        "",
        f"{len(records)} scans: {len(ok)} compressed, {len(failed)} failed. "
        f"Bundle(s): {', '.join(sorted({r['bundle'] for r in records}))}; target ratio(s): "
        f"{', '.join(f'{t:g}x' for t in sorted({r['target_ratio'] for r in records}))}.",
        "",
    ]
    if ok:
        ratios = np.array([r["ratio"] for r in ok])
        lines += [
            "| | raw | compressed |",
            "|---|---|---|",
            f"| bytes | {raw / 1e6:,.1f} MB | {packed / 1e6:,.3f} MB (overall {raw / packed:.1f}x) |",
            f"| transfer at {bandwidth_mbit:g} Mbit/s | {duration(transfer_hours(raw, bandwidth_mbit))} "
            f"| {duration(transfer_hours(packed, bandwidth_mbit))} |",
            "",
            f"Achieved ratio per scan: median {np.median(ratios):.1f}x, range {ratios.min():.1f}x – "
            f"{ratios.max():.1f}x.",
            "",
        ]
        lines += quality_lines(ok)
    if png:
        lines += [f"![distributions]({Path(png).name})", ""]
    if failed:
        lines += ["## Failures", "", "| scan | reason |", "|---|---|"]
        lines += [f"| {r['output']} | {r.get('error') or r.get('status')} |" for r in failed]
    return "\n".join(lines).rstrip() + "\n"


def quality_lines(ok: List[dict]) -> List[str]:
    verified = [r for r in ok if r.get("psnr") is not None]
    if not verified:
        return ["No quality figures: the batch ran without `--verify`.", ""]
    psnr = np.array([r["psnr"] for r in verified])
    ssim = np.array([r["ssim"] for r in verified])
    lines = [
        f"Quality ({len(verified)} verified scans): PSNR median {np.median(psnr):.2f} dB "
        f"(min {psnr.min():.2f}), SSIM median {np.median(ssim):.4f} (min {ssim.min():.4f}).",
        "",
        f"## Worst scans (lowest PSNR, up to {WORST})",
        "",
        "| scan | ratio | PSNR dB | SSIM | MAE | warnings |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(verified, key=lambda r: r["psnr"])[:WORST]:
        lines.append(
            f"| {r['output']} | {r['ratio']:.1f}x | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['mae']:.3f} "
            f"| {'; '.join(r.get('warnings') or [])[:120]} |"
        )
    return lines + [""]


def duration(hours: float) -> str:
    seconds = hours * 3600
    if seconds < 120:
        return f"{seconds:.1f} s"
    if hours < 2:
        return f"{seconds / 60:.1f} min"
    return f"{hours:.1f} h"


def plot(records: List[dict], png, bandwidth_mbit: float) -> Optional[Path]:
    """Four panels: ratio histogram, PSNR and SSIM histograms, bytes and transfer time before/after.
    Returns None when matplotlib is not installed (extra `bench`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [r for r in records if r.get("status") == "ok"]
    verified = [r for r in ok if r.get("psnr") is not None]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    histogram(axes[0], [r["ratio"] for r in ok], "achieved ratio (raw ÷ file bytes)")
    histogram(axes[1], [r["psnr"] for r in verified], "PSNR (dB)")
    histogram(axes[2], [r["ssim"] for r in verified], "SSIM")
    raw, packed = sum(r["raw_bytes"] for r in ok), sum(r["bytes"] for r in ok)
    bars = axes[3].bar(["raw", "DeepSTD"], [raw / 1e6, packed / 1e6], color=["#999999", "#1f5fa8"])
    axes[3].set_yscale("log")
    axes[3].set_ylabel("total MB (log)")
    for bar, nbytes in zip(bars, (raw, packed)):
        axes[3].annotate(
            f"{nbytes / 1e6:,.2f} MB\n{duration(transfer_hours(nbytes, bandwidth_mbit))} @ {bandwidth_mbit:g} Mbit/s",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    axes[3].set_ylim(top=max(raw / 1e6, 1e-3) * 20)
    fig.suptitle(f"DeepSTD batch: {len(ok)} scans compressed, {len(records) - len(ok)} failed")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)


def histogram(ax, values, label: str) -> None:
    if values:
        ax.hist(values, bins=min(30, max(5, len(values) // 2)), color="#1f5fa8")
    else:
        ax.text(0.5, 0.5, "not measured\n(run with --verify)", ha="center", va="center", transform=ax.transAxes)
    ax.locator_params(axis="x", nbins=5)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel(label)
    ax.set_ylabel("scans")


def write_report(out_dir, bandwidth_mbit: float = 10.0) -> dict:
    """Write `report.md` (and `report.png` when matplotlib is available) into `out_dir`."""
    out_dir = Path(out_dir)
    records = load_results(out_dir)
    if not records:
        from ..errors import InputError

        raise InputError(f"{out_dir}: no {manifest.NAME} records to report on")
    png = plot(records, out_dir / "report.png", bandwidth_mbit)
    text = summary(records, bandwidth_mbit, png)
    if png is None:
        text += "\n(No plots: matplotlib is not installed; `pip install deepstd[bench]` adds it.)\n"
    (out_dir / "report.md").write_text(text)
    return {"markdown": out_dir / "report.md", "png": png, "text": text}
