"""Render the user guide's and the catalog's DeepSTD pictures from real runs on real scans.

Everything shown is computed by the module's own logic (`DeepSTDSlicerLib.core`, jobs in the
`deepstd.worker` process) on a real left-atrium LGE MR scan held out of the `la-mr` codec's
training: a Cycle-INR registration to the bundle's template (a mid-way preview snapshot and the
final full-resolution field), a real 64:1 compression and decompression, and the residue and
quality metrics. Views are rendered with Slicer's own slice logic and displayable managers from
slicer-core, offscreen (no Slicer application window exists on the machines that made them);
the quality table is drawn with matplotlib from the module's table node.

Run: python Testing/slicer_extension/render_real_views.py  (about 5 minutes on one core)
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO / "DeepSTDSlicer"), str(HERE), str(REPO / "Logic")]
os.environ.setdefault("DEEPSTD_WORKER_THREADS", "1")

import numpy as np  # noqa: E402
from slicer_offscreen import HeadlessApp, OffscreenSliceView  # noqa: E402

from DeepSTDSlicerLib import core, mrml  # noqa: E402

DATA = Path(os.environ.get("DEEPSTD_DATA", REPO.parent / "shared" / "data"))
SUBJECT = "LA_BXJWOUYP2J3EN4U92517"  # in la-mr's holdout list: not seen in training
OUT = REPO / "docs" / "images"


def scan_path() -> Path:
    for folder in ("left_atrium_mr", "left_atrium_mr_more"):
        path = DATA / folder / "images" / f"{SUBJECT}.nii.gz"
        if path.is_file():
            return path
    raise SystemExit(f"real scan {SUBJECT} not found under {DATA}")


def window(view, nodes, volume):
    low, high = np.percentile(volume.array, [1, 99.5])
    for node in nodes:
        node.GetDisplayNode().AutoWindowLevelOff()
        node.GetDisplayNode().SetWindowLevelMinMax(low, high)


def main() -> None:
    import SimpleITK as sitk

    from deepstd.shape import CycleSettings
    from deepstd.volume import Volume

    OUT.mkdir(parents=True, exist_ok=True)
    app = HeadlessApp()
    logic = core.DeepSTDCore(app.scene)
    scan = Volume.from_sitk(sitk.ReadImage(str(scan_path())))
    scan_node = mrml.add_volume_node(scan, SUBJECT, app.scene)
    template_node, labels = logic.show_template("la-mr")
    if labels is not None:  # the template's left-atrium label as an outline: shows the alignment
        labels.GetDisplayNode().SetOpacity2DFill(0.0)
        labels.GetDisplayNode().SetSliceIntersectionThickness(2)
    view = OffscreenSliceView(app, "Red", "Axial", (440, 440))
    window(view, [scan_node], scan)
    window(view, [template_node], mrml.volume_from_node(template_node))
    facts = {"subject": SUBJECT, "bundle": "la-mr"}

    # 1. registration: the preview half-way (a real snapshot of the running optimisation)
    transform = app.scene.AddNewNodeByClass("vtkMRMLGridTransformNode", f"{SUBJECT} to template")
    settings = CycleSettings(steps=300, preview_every=25, probe_steps=100)
    shots = {}

    def on_status(status):
        if status.step == 150 and "midway" not in shots:
            preview = app.scene.GetFirstNodeByName(f"{SUBJECT} (registration preview)")
            window(view, [preview], scan)
            composite = view.logic.GetSliceCompositeNode()
            composite.SetBackgroundVolumeID(template_node.GetID())
            composite.SetForegroundVolumeID(preview.GetID())
            composite.SetForegroundOpacity(0.5)
            transform.GetDisplayNode().SetGridSpacingMm(6.0)
            view.fit()
            view.render(OUT / "slicer-registration-midway.png")
            shots["midway"] = (status.step, status.loss, status.folding, status.elapsed)

    box = {}
    job = logic.start_registration(
        scan_node,
        template_node,
        transform,
        on_status=on_status,
        on_done=lambda node: box.setdefault("done", node),
        on_error=lambda error: box.setdefault("error", error),
        options={"settings": settings},
    )
    while job.poll():
        job.wait(0.05)
    if "error" in box:
        raise box["error"]
    result = logic.last_registration
    facts["registration"] = {
        "midway_step": shots["midway"][0],
        "midway_loss": shots["midway"][1],
        "midway_folding": shots["midway"][2],
        "steps": result.steps,
        "loss": result.loss,
        "seconds": round(result.seconds, 1),
        "field_shape": list(transform.GetTransformFromParent().GetDisplacementGrid().GetDimensions()),
    }

    # 2. compress at 64:1, decompress, residue and metrics (all in the worker process)
    folder = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    compressed = logic.compress(scan_node, str(folder / f"{SUBJECT}.dstd"), bundle="la-mr", ratio=64, device="cpu")
    decoded = logic.decompress(compressed.path, device="cpu")
    residue, table, values = logic.compute_residue(scan_node, decoded)
    facts["coding"] = {
        "raw_bytes": compressed.raw_bytes,
        "file_bytes": compressed.file_bytes,
        "ratio": round(compressed.ratio, 1),
        "warnings": compressed.warnings,
        "seconds_total": round(time.perf_counter() - started, 1),
        **values,
    }
    transform.GetDisplayNode().SetVisibility(False)
    transform.GetDisplayNode().SetVisibility2D(False)
    if labels is not None:
        labels.GetDisplayNode().SetVisibility(False)
    window(view, [decoded], scan)
    composite = view.logic.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(decoded.GetID())
    composite.SetForegroundVolumeID(residue.GetID())
    composite.SetForegroundOpacity(0.6)
    view.fit()
    view.render(OUT / "slicer-decoded-residue.png")
    render_table(table, compressed, OUT / "slicer-quality-table.png")
    (OUT / "slicer-real-runs.json").write_text(json.dumps(facts, indent=1, default=float))
    print(json.dumps(facts, indent=1, default=float))


def render_table(table, compressed, path) -> None:
    """The module's quality table node (plus the file's size), drawn as Slicer's table view shows it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vtable = table.GetTable()
    header, row = [], []
    for c in range(vtable.GetNumberOfColumns()):
        column = vtable.GetColumn(c)
        name = column.GetName()
        unit = table.GetColumnUnitLabel(name)
        header.append(f"{name} ({unit})" if unit else name)
        value = column.GetValue(0)
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        row.append(text if len(text) <= 16 else text[:8] + "…" + text[-6:])
    header += ["File", "Ratio"]
    row += [f"{compressed.file_bytes:,} B", f"{compressed.ratio:.1f}:1"]
    fig, ax = plt.subplots(figsize=(8.4, 1.1), dpi=110)
    ax.axis("off")
    cells = ax.table(cellText=[row], colLabels=header, loc="center", cellLoc="center")
    cells.auto_set_font_size(False)
    cells.set_fontsize(8)
    cells.scale(1, 1.6)
    for (r, _c), cell in cells.get_celld().items():
        if r == 0:
            cell.set_facecolor("#dde6f0")
    fig.savefig(path, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)


if __name__ == "__main__":
    main()
