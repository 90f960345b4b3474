"""Region decoding (`roi`) gives exactly the voxels of a full decode on the right sub-grid, decoding
only the texture blocks it reads; a keep mask codes its voxels within a tighter bound (default
lossless) inside the same byte budget, the mask stored in the file."""

from __future__ import annotations

import numpy as np
import pytest

from deepstd import Volume, codec, grid, keepmask, region
from deepstd.bundle import texture_codec as bundle_texture_codec
from deepstd.container import pack, unpack
from deepstd.errors import BudgetError, FormatError, InputError
from deepstd.texture import TextureStreams

pytestmark = pytest.mark.usefixtures("one_thread")

ROIS = [
    ((0, 0, 0), (8, 9, 4)),  # a corner
    ((30, 20, 9), (44, 37, 17)),  # the opposite corner
    ((17, 11, 6), (18, 12, 7)),  # one voxel
    ((5, 3, 2), (40, 30, 15)),
]  # most of the scan


@pytest.fixture(scope="module")
def coded(tiny_bundle, scan):
    return codec.encode(scan, tiny_bundle, ratio=20, device="cpu", require_texture=True)


@pytest.fixture(scope="module")
def full(tiny_bundle, coded):
    return codec.decode(coded, tiny_bundle)


@pytest.mark.parametrize("box", ROIS)
def test_a_region_is_exactly_that_part_of_a_full_decode(tiny_bundle, scan, coded, full, box):
    part = codec.decode(coded, tiny_bundle, roi=box)
    (x0, y0, z0), (x1, y1, z1) = box
    np.testing.assert_array_equal(part.array, full.array[z0:z1, y0:y1, x0:x1])
    assert part.size == (x1 - x0, y1 - y0, z1 - z0) and part.dtype == scan.dtype
    assert part.spacing == scan.spacing and part.direction == scan.direction
    # the region's first voxel sits where that voxel sits in the scan (oblique, anisotropic grid)
    expected = np.asarray(scan.origin) + np.asarray(scan.direction).reshape(3, 3) @ (np.asarray(box[0]) * scan.spacing)
    np.testing.assert_allclose(part.origin, expected, atol=1e-9)
    assert part.meta["dstd"]["roi"] == [list(box[0]), list(box[1])]


def test_a_small_box_decodes_only_the_block_groups_it_reads(tiny_bundle, coded, monkeypatch):
    from deepstd.texture import codec as texture_codec

    blocks = []
    original = texture_codec.decompress_latents

    def counting(net, params, z, y, size, context):
        blocks.append(len(z))
        return original(net, params, z, y, size, context)

    monkeypatch.setattr(texture_codec, "decompress_latents", counting)
    section = unpack(coded).sections["texture"]
    texture = bundle_texture_codec(tiny_bundle)
    texture.decompress(section)
    whole = sum(blocks)
    blocks.clear()
    texture.decompress(section, box=((0, 0, 0), (4, 4, 4)))  # inside the first block
    assert blocks == [texture_codec.GROUP] and whole > texture_codec.GROUP


def test_texture_box_decode_matches_the_whole_texture(tiny_bundle, coded):
    section = unpack(coded).sections["texture"]
    texture = bundle_texture_codec(tiny_bundle)
    whole = texture.decompress(section)
    box = ((3, 10, 20), (20, 41, 33))
    part = texture.decompress(section, box=box)
    np.testing.assert_array_equal(part, whole[3:20, 10:41, 20:33])
    with pytest.raises(ValueError, match="not inside"):
        texture.decompress(section, box=((0, 0, 0), (1, 1, 10**4)))


def test_region_strings_and_millimetres(scan):
    assert region.parse("1:5,:,10:", scan.size) == ((1, 0, 10), (5, 37, 17))
    for bad in ("1:5,2:3", "a:b,0:1,0:1", "5:1,0:1,0:1", "0:45,0:1,0:1"):
        with pytest.raises(InputError):
            region.parse(bad, scan.size)
    # a millimetre box just around the voxel centres 2..5 along each axis
    from deepstd.grid import Frame

    grid = Frame.of(scan)
    axis_aligned = Frame(grid.size, grid.spacing, grid.origin, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    lo = np.asarray(axis_aligned.origin) + 2 * np.asarray(scan.spacing)
    hi = np.asarray(axis_aligned.origin) + 5 * np.asarray(scan.spacing)
    text = ",".join(f"{a - 0.01}:{b + 0.01}" for a, b in zip(lo, hi))
    assert region.parse_mm(text, axis_aligned) == ((2, 2, 2), (6, 6, 6))
    with pytest.raises(InputError, match="no voxel centre"):
        region.parse_mm("1000:1001,1000:1001,1000:1001", grid)


def test_cli_decodes_a_region(tiny_bundle, scan, coded, full, tmp_path, capsys):
    from deepstd.cli import main
    from deepstd.io import read

    source = tmp_path / "scan.dstd"
    source.write_bytes(coded)
    out = tmp_path / "part.nrrd"
    assert main(["decode", str(source), str(out), "--bundle", str(tiny_bundle.path), "--roi", "30:44,20:37,9:17"]) == 0
    part = read(out)
    np.testing.assert_array_equal(part.array, full.array[9:17, 20:37, 30:44])
    capsys.readouterr()
    never = tmp_path / "never.nrrd"
    assert main(["decode", str(source), str(never), "--bundle", str(tiny_bundle.path), "--roi", "0:99,0:1,0:1"]) == 2
    err = capsys.readouterr().err
    assert "outside the scan" in err and "Traceback" not in err and not never.exists()


# --- keep masks ----------------------------------------------------------------------------------
def labels_of(scan, mask):
    """A label map on the scan's grid: keep masks travel as volumes, so their grid can be checked."""
    return scan.with_array(np.asarray(mask, dtype=np.float32), dtype="uint8")


@pytest.fixture(scope="module")
def lesion(scan):
    """A small ellipsoidal 'lesion' label inside the scan."""
    zz, yy, xx = np.indices(scan.array.shape)
    return ((xx - 20) / 4.0) ** 2 + ((yy - 17) / 4.0) ** 2 + ((zz - 8) / 2.0) ** 2 <= 1


@pytest.mark.parametrize("bound", [0, 2])
def test_keep_mask_voxels_are_within_their_bound_inside_the_budget(tiny_bundle, scan, lesion, bound):
    data = codec.encode(
        scan, tiny_bundle, ratio=12, keep=labels_of(scan, lesion), keep_error=bound, device="cpu", require_texture=True
    )
    budget = scan.raw_bytes // 12
    assert (1 - codec.TOLERANCE) * budget <= len(data) <= budget
    out = codec.decode(data, tiny_bundle)
    error = np.abs(out.array - scan.array)
    assert error[lesion].max() <= bound
    assert error[~lesion].max() > bound  # the rest is lossy
    parsed = unpack(data)
    assert parsed.header["keep"] == {"max_error": bound, "voxels": int(lesion.sum())}
    assert set(parsed.sections) == {"shape", "texture", "keep/mask", "keep/residual"}
    # the keep layer's bytes come out of the texture's share of the same budget
    plain = codec.encode(scan, tiny_bundle, ratio=12, device="cpu", require_texture=True)
    assert len(parsed.sections["texture"]) < len(unpack(plain).sections["texture"])
    # a region decode of a file with a keep mask still equals the full decode there
    box = ((10, 10, 4), (30, 25, 12))
    part = codec.decode(data, tiny_bundle, roi=box)
    np.testing.assert_array_equal(part.array, out.array[4:12, 10:25, 10:30])


def test_keep_mask_refusals(tiny_bundle, scan, lesion):
    with pytest.raises(InputError, match="empty"):
        codec.encode(scan, tiny_bundle, ratio=20, keep=labels_of(scan, np.zeros_like(lesion)), require_texture=True)
    with pytest.raises(InputError, match="voxels"):
        codec.encode(
            scan,
            tiny_bundle,
            ratio=20,
            keep=Volume(lesion[:-1].astype(np.float32), scan.spacing, scan.origin, scan.direction, dtype="uint8"),
            require_texture=True,
        )
    with pytest.raises(InputError, match="geometry"):
        codec.encode(
            scan,
            tiny_bundle,
            ratio=20,
            keep=labels_of(scan, lesion).with_array(lesion.astype(np.float32), spacing=(9.0, 9.0, 9.0)),
            require_texture=True,
        )
    with pytest.raises(InputError, match="label map"):
        codec.encode(
            scan, tiny_bundle, ratio=20, keep=lesion, require_texture=True
        )  # a bare array has no grid to check
    with pytest.raises(InputError, match="maximum error already"):
        codec.encode(scan, tiny_bundle, max_error=2, keep=labels_of(scan, lesion))
    everything = np.ones_like(lesion)
    with pytest.raises(BudgetError, match="keep mask"):
        codec.encode(scan, tiny_bundle, ratio=60, keep=labels_of(scan, everything), device="cpu", require_texture=True)


def test_keep_mask_section_round_trips_and_refuses_damage(lesion, scan):
    data = keepmask.compress(lesion)
    box, mask = keepmask.decompress(data, scan.size)
    assert box == grid.bounding_box(lesion)
    np.testing.assert_array_equal(mask, lesion[grid.slices(box, grid.whole(scan.size))])
    rng = np.random.default_rng(0)
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            keepmask.decompress(data[:cut], scan.size)
    for _ in range(200):  # never anything but a FormatError
        damaged = bytearray(data)
        damaged[rng.integers(len(damaged))] ^= 1 << int(rng.integers(8))
        try:
            keepmask.decompress(bytes(damaged), scan.size)
        except FormatError:
            pass


def test_cli_keep_reports_the_bytes_and_info_shows_it(tiny_bundle, scan, lesion, tmp_path, capsys):
    from deepstd.cli import main
    from deepstd.io import write

    source = write(scan, tmp_path / "scan.nrrd")
    labels = write(scan.with_array(lesion.astype(np.float32), dtype="uint8"), tmp_path / "lesion.nrrd")
    dstd = tmp_path / "kept.dstd"
    assert (
        main(
            [
                "encode",
                str(source),
                str(dstd),
                "--bundle",
                str(tiny_bundle.path),
                "--ratio",
                "12",
                "--keep",
                f"{labels}:1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"keep mask: {int(lesion.sum())} voxels within ±1" in out
    assert main(["info", str(dstd)]) == 0
    assert "keep:" in capsys.readouterr().out
    moved = write(
        Volume(lesion.astype(np.float32), scan.spacing, (0.0, 0.0, 0.0), scan.direction, dtype="uint8"),
        tmp_path / "moved.nrrd",
    )
    assert (
        main(
            [
                "encode",
                str(source),
                str(tmp_path / "x.dstd"),
                "--bundle",
                str(tiny_bundle.path),
                "--ratio",
                "20",
                "--keep",
                str(moved),
            ]
        )
        == 2
    )
    assert "geometry" in capsys.readouterr().err and not (tmp_path / "x.dstd").exists()


def test_damaged_keep_sections_only_raise_format_errors(tiny_bundle, scan, lesion):
    data = codec.encode(scan, tiny_bundle, ratio=12, keep=labels_of(scan, lesion), device="cpu", require_texture=True)
    parsed = unpack(data)
    without = {k: v for k, v in parsed.sections.items() if k != "keep/residual"}
    with pytest.raises(FormatError, match="keep/residual"):
        codec.decode(pack(parsed.header, without), tiny_bundle)
    with pytest.raises(FormatError, match="keep.max_error"):
        codec.decode(pack({k: v for k, v in parsed.header.items() if k != "keep"}, parsed.sections), tiny_bundle)
    stream = TextureStreams.from_bytes(parsed.sections["texture"])
    assert stream.shape  # the texture section is untouched by the keep layer


def test_a_scan_beyond_the_template_widens_the_frame_or_is_flagged(tiny_bundle, scan, monkeypatch):
    """The texture frame widens to hold a scan that reaches beyond the template; where it cannot
    (the frame's size cap), voxels outside decode as background and encode says how many."""
    from deepstd import alignment
    from deepstd.container import unpack

    wide = np.zeros((scan.array.shape[0], 3 * scan.array.shape[1], 3 * scan.array.shape[2]), np.float32)
    wide[:, scan.array.shape[1] : 2 * scan.array.shape[1], scan.array.shape[2] : 2 * scan.array.shape[2]] = scan.array
    wide = Volume(wide, scan.spacing, scan.origin, scan.direction, dtype="int16")
    default = unpack(codec.encode(scan, tiny_bundle, ratio=20, device="cpu", require_texture=True)).header["codec"][
        "margin"
    ]
    data = codec.encode(wide, tiny_bundle, ratio=20, device="cpu", require_texture=True)
    out = codec.decode(data, tiny_bundle)
    assert out.meta["dstd"]["coverage"] > 0.98 and not any("texture frame" in w for w in out.meta["warnings"])
    assert any(m > d for m, d in zip(unpack(data).header["codec"]["margin"], default))
    assert np.array_equal(out.array, codec.decode(data, tiny_bundle, roi=((0, 0, 0), wide.size)).array)

    monkeypatch.setattr(alignment, "MAX_FRAME_VOXELS", 1)
    out = codec.decode(codec.encode(wide, tiny_bundle, ratio=20, device="cpu", require_texture=True), tiny_bundle)
    flagged = [w for w in out.meta["warnings"] if "lies inside the bundle's texture frame" in w]
    assert flagged and out.meta["dstd"]["coverage"] < 0.5
    assert not any(
        "texture frame" in w
        for w in codec.decode(
            codec.encode(scan, tiny_bundle, ratio=20, device="cpu", require_texture=True), tiny_bundle
        ).meta["warnings"]
    )
