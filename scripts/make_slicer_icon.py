"""Draw the DeepSTDSlicer module icon (128x128 PNG): a scan slice under a warped template grid,
next to the small block it compresses to. Run: python scripts/make_slicer_icon.py"""

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 128
OUT = Path(__file__).resolve().parents[1] / "DeepSTDSlicer" / "Resources" / "Icons" / "DeepSTDSlicer.png"


def main() -> None:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    rgba = np.zeros((SIZE, SIZE, 4))
    # rounded dark-blue tile
    corner = 18.0
    dx = np.maximum(np.maximum(corner - x, x - (SIZE - 1 - corner)), 0)
    dy = np.maximum(np.maximum(corner - y, y - (SIZE - 1 - corner)), 0)
    inside = np.clip(corner + 0.5 - np.hypot(dx, dy), 0, 1)
    shade = 0.85 + 0.15 * (1 - y / SIZE)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 0.10 * shade, 0.16 * shade, 0.30 * shade
    rgba[..., 3] = inside
    # a grey "scan": an ellipse with a brighter organ, slightly textured
    cx, cy = 52.0, 62.0
    body = ((x - cx) / 38) ** 2 + ((y - cy) / 44) ** 2 < 1
    organ = ((x - cx - 8) / 14) ** 2 + ((y - cy + 6) / 17) ** 2 < 1
    tex = 0.04 * np.sin(x / 2.3) * np.cos(y / 3.1)
    grey = np.where(body, 0.45 + tex, 0) + np.where(organ, 0.35, 0)
    for c in range(3):
        rgba[..., c] = np.where(body, grey, rgba[..., c])
    # warped grid lines over the scan (the live registration preview)
    wx = x + 3.5 * np.sin(y / 11.0)
    wy = y + 3.5 * np.cos(x / 13.0)
    line = (np.abs((wx - 4) % 14 - 7) > 6.1) | (np.abs((wy - 6) % 14 - 7) > 6.1)
    grid = line & body
    rgba[grid, 0], rgba[grid, 1], rgba[grid, 2] = 1.0, 0.72, 0.15
    # the compressed result: a small bright block with an arrow towards it
    block = (x > 98) & (x < 116) & (y > 52) & (y < 72)
    rgba[block, 0], rgba[block, 1], rgba[block, 2] = 0.30, 0.85, 0.95
    shaft = (x > 86) & (x < 96) & (np.abs(y - 62) < 1.6)
    head = (x >= 93) & (x < 98) & (np.abs(y - 62) < (98 - x) * 0.9)
    arrow = shaft | head
    rgba[arrow, 0], rgba[arrow, 1], rgba[arrow, 2] = 0.95, 0.95, 0.95
    image = (np.clip(rgba, 0, 1) * 255).round().astype(np.uint8)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "RGBA").save(OUT)
    print(OUT)


if __name__ == "__main__":
    main()
