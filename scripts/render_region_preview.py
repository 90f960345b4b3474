"""Render, offscreen through Slicer's own slice logic, what 'Preview at slice...' shows: a slab of a
.dstd file decoded around one slice (axial view), and where the slab sits in the full decode
(sagittal view, full decode dimmed underneath). Needs slicer-core (the 'slicer' extra).

    python scripts/render_region_preview.py FILE.dstd OUT.png [--slice K] [--half-width 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "DeepSTDSlicer"), str(REPO / "Testing" / "slicer_extension")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--slice", type=int, help="slice index along k (default: the middle)")
    ap.add_argument("--half-width", type=int, default=4)
    args = ap.parse_args()

    from slicer_offscreen import HeadlessApp, OffscreenSliceView  # test helper: EGL offscreen views

    from deepstd.container import read_file
    from DeepSTDSlicerLib import core, mrml

    app = HeadlessApp()
    logic = core.DeepSTDCore(app.scene)
    header = read_file(args.file).header
    size = header["geometry"]["size"]
    k = size[2] // 2 if args.slice is None else args.slice
    grid = header["geometry"]
    lps = np.asarray(grid["origin"]) + np.asarray(grid["direction"]).reshape(3, 3) @ (
        np.array([size[0] / 2, size[1] / 2, k]) * np.asarray(grid["spacing"])
    )
    ras = lps * [-1, -1, 1]
    normal = np.asarray(grid["direction"]).reshape(3, 3)[:, 2] * [-1, -1, 1]
    started = time.perf_counter()
    preview = logic.slice_preview(str(args.file), ras, normal, args.half_width, device="cpu")
    preview_s = time.perf_counter() - started
    started = time.perf_counter()
    full = logic.decompress(str(args.file), device="cpu", name="full decode")
    full_s = time.perf_counter() - started
    low, high = np.percentile(mrml.volume_from_node(full).array, [1, 99.5])
    for node in (full, preview):
        node.GetDisplayNode().AutoWindowLevelOff()
        node.GetDisplayNode().SetWindowLevelMinMax(low, high)
    panels = []
    for name, orientation, background, foreground in (
        ("Red", "Axial", preview, None),
        ("Yellow", "Sagittal", full, preview),
    ):
        view = OffscreenSliceView(app, name, orientation, (400, 400))
        composite = view.logic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(background.GetID())
        if foreground is not None:
            composite.SetForegroundVolumeID(foreground.GetID())
            composite.SetForegroundOpacity(0.7)
            background.GetDisplayNode().SetWindowLevelMinMax(low, high + 3 * (high - low))  # dimmed
        view.fit()
        if orientation == "Axial":
            view.sliceNode.JumpSliceByCentering(*ras)
        panels.append(view.render())
    from PIL import Image

    Image.fromarray(np.concatenate(panels, axis=1)).save(args.out)
    print(
        f"{args.out}: preview {preview.GetName()!r} decoded in {preview_s:.2f} s, full decode {full_s:.2f} s "
        f"(in this process, bundle already loaded for the full one)"
    )


if __name__ == "__main__":
    main()
