"""Render the DeepSTD Slicer views shown in the docs (docs/images/slicer_*.png), offscreen.

Needs slicer-core (pip install -e ".[slicer]"); uses a real left-atrium MR scan from
../shared/data when present. Run: python scripts/render_slicer_views.py
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "DeepSTDSlicer"), str(REPO / "Testing" / "slicer_extension")]

from slicer_scenes import DemoScene  # noqa: E402


def main() -> None:
    out = REPO / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    demo = DemoScene(size=(480, 480))
    demo.render_registration(out / "slicer_registration_preview.png")
    demo.render_residue(out / "slicer_residue.png")
    demo.render_segments(out / "slicer_segments.png")
    demo.render_3d(out / "slicer_segments_3d.png")
    print(f"wrote {out}/slicer_*.png ({'real scan' if demo.real else 'synthetic scan'})")


if __name__ == "__main__":
    main()
