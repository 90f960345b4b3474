"""Picture of one real registration: template, scan before, scan warped with the deformation grid.

    python scripts/plot_registration.py left_atrium_mr --out docs/images/registration_grid.png

The template is the population's widest imaging range (as the benchmark and the bundles choose
it); the moving scan is the first other one. The grid is the forward field's in-plane part on
the template's middle axial slice: each line is where a straight template grid line reads the scan.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import deepstd  # noqa: E402
from deepstd.grid import Frame  # noqa: E402
from deepstd.grid.sampling import warp  # noqa: E402
from deepstd.shape import CycleSettings, register  # noqa: E402

DATA = Path(os.environ.get("DEEPSTD_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("population")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--grid", type=int, default=8, help="grid line spacing in voxels")
    args = ap.parse_args()
    images = sorted((DATA / args.population / "images").glob("*.nii.gz"))
    scans = {p: deepstd.read(p) for p in images}
    template_path = max(images, key=lambda p: np.prod(scans[p].extent_mm))
    moving_path = next(p for p in images if p != template_path)
    template, moving = scans[template_path], scans[moving_path]
    reg = register(moving, template, CycleSettings())
    disp = reg.forward_field()
    frame = Frame.of(template)
    warped = warp(moving, disp, frame, "linear").array
    before = warp(moving, np.zeros_like(disp), frame, "linear").array
    z = template.array.shape[0] // 2
    # displacement (mm, LPS) -> index units of the template grid
    to_index = np.linalg.inv(template.direction_matrix @ np.diag(template.spacing))
    d = disp[z] @ to_index.T  # (y, x, 3) in (x, y, z) index units
    ny, nx = template.array.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    gx, gy = xx + d[..., 0], yy + d[..., 1]

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, image, title in zip(
        axes,
        (template.array[z], before[z], warped[z]),
        (
            "template " + template_path.name.split(".")[0],
            "scan " + moving_path.name.split(".")[0] + " (identity)",
            f"scan warped by Cycle-INR ({reg.seconds:.1f} s)",
        ),
    ):
        ax.imshow(image, cmap="gray", origin="lower")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    ax = axes[2]
    for i in range(0, ny, args.grid):
        ax.plot(gx[i], gy[i], color="#ffb000", lw=0.6)
    for j in range(0, nx, args.grid):
        ax.plot(gx[:, j], gy[:, j], color="#ffb000", lw=0.6)
    ax.set_xlim(0, nx - 1)
    ax.set_ylim(0, ny - 1)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(
        f"wrote {args.out}: template {template_path.name}, moving {moving_path.name}, registration {reg.seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
