"""What users see, rendered offscreen through Slicer's own slice logic and displayable managers:
each view must show the scan and the layer it is about (grid, residue colours, segment outlines)."""

import numpy as np
import pytest
from conftest import require_slicer_core

require_slicer_core()

from slicer_scenes import DemoScene  # noqa: E402


@pytest.fixture(scope="module")
def demo():
    return DemoScene(size=(256, 256))


def changed_pixels(a, b):
    return int(np.any(a.astype(int) != b.astype(int), axis=-1).sum())


def test_views_are_not_blank(demo, tmp_path):
    for render in (
        demo.render_plain,
        demo.render_registration,
        demo.render_residue,
        demo.render_segments,
        demo.render_3d,
    ):
        pixels = render(tmp_path / f"{render.__name__}.png")
        assert (tmp_path / f"{render.__name__}.png").stat().st_size > 1000
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, f"{render.__name__} looks blank"


def test_deformation_grid_is_drawn(demo):
    plain = demo.render_registration(grid=False)
    grid = demo.render_registration()
    assert changed_pixels(plain, grid) > 0.02 * plain.shape[0] * plain.shape[1]
    differs = np.any(plain != grid, axis=-1)
    colours = grid[differs].astype(int)
    assert np.mean(np.ptp(colours, axis=1) > 60) > 0.5, "grid lines should be coloured, not grey"


def test_preview_overlays_the_warped_scan(demo):
    assert changed_pixels(demo.render_plain(), demo.render_registration(grid=False)) > 1000


def test_residue_overlay_is_red_and_blue(demo):
    pixels = demo.render_residue().astype(int)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert np.sum((r > b + 40) & (r > g + 40)) > 50, "positive residue should show red"
    assert np.sum((b > r + 40)) > 50, "negative residue should show blue"


def test_segment_outlines_of_both_segmentations(demo):
    pixels = demo.render_segments().astype(int)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert np.sum((r > 180) & (g > 140) & (b < 90)) > 20, "yellow outline (original) missing"
    assert np.sum((b > 180) & (g > 150) & (r < 120)) > 20, "cyan outline (decoded) missing"
