"""The typed `.dstd` header: it writes exactly the JSON the format defines, reads it back, and
refuses every malformed key with a FormatError (never an AttributeError or TypeError later on)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from deepstd.alignment import IntensityMap
from deepstd.codec.header import BundleRef, CodecKeys, DstdHeader, KeepInfo
from deepstd.container import header_cost
from deepstd.errors import FormatError

SHA = "ab" * 32


@pytest.fixture
def header(oblique_volume) -> DstdHeader:
    return DstdHeader.for_volume(
        oblique_volume,
        intensity=IntensityMap(-100.0, 400.0),
        bundle=BundleRef("la-mr", SHA),
        codec=CodecKeys((8, 8, 8), texture_rate=1234, shape_width=12, shape_bits=8, omega=12.0, registration_loss=-0.4),
        encoder_version="0.1.0",
        target_ratio=128.0,
        budget_bytes=20000,
        keep=KeepInfo(1.0, 345),
        warnings=("a warning",),
    )


def test_round_trip_through_json(header, oblique_volume):
    d = header.to_dict()
    assert DstdHeader.from_dict(d) == header
    assert d["geometry"]["size"] == list(oblique_volume.size) and d["dtype"] == oblique_volume.dtype
    assert d["codec"] == {
        "margin": [8, 8, 8],
        "texture_rate": 1234,
        "shape_width": 12,
        "shape_bits": 8,
        "omega": 12.0,
        "registration_loss": -0.4,
    }
    assert "max_error" not in d and "dicom" not in d  # absent keys stay absent, not null
    assert header.raw_bytes == oblique_volume.raw_bytes


def test_lean_keeps_only_what_decoding_needs_and_fits_the_budget(header):
    lean = header.lean().to_dict()
    assert set(lean) == {"geometry", "dtype", "units", "intensity", "bundle", "codec", "keep", "warnings"}
    assert lean["bundle"] == {"name": "la-mr", "sha256": SHA[:16]} and lean["codec"] == {"margin": [8, 8, 8]}
    assert header.fitted() == header  # 20000 bytes: room for the full header
    tight = replace(header, budget_bytes=header_cost(header.to_dict()) * 10)
    assert tight.fitted() == tight.lean()  # over 5 % of the budget: lean


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("bundle", "la-mr", "bundle entry"),
        ("bundle", {"name": "x", "sha256": "XYZ"}, "bundle id"),
        ("bundle", {"name": 5, "sha256": SHA}, "bundle name"),
        ("codec", [1, 2], "codec entry"),
        ("codec", {"margin": [8, -1, 8]}, "margin"),
        ("codec", {"margin": [8, 8, 8], "omega": "12"}, "codec.omega"),
        ("codec", {"margin": [8, 8, 8], "frame_size": [10, 10]}, "frame size"),
        ("codec", {"margin": [8, 8, 8], "frame_size": [10, 0, 10]}, "frame size"),
        ("codec", {"margin": [8, 8, 8], "frame_size": [10000, 10000, 10]}, "exceeds"),
        ("codec", {"margin": [8, 8, 8], "frame_window": [0, 0, 0, 4, 4]}, "frame window"),
        ("codec", {"margin": [8, 8, 8], "frame_window": [5, 0, 0, 4, 4, 4]}, "frame window"),
        ("codec", {"margin": [8, 8, 8], "texture_rate": True}, "codec.texture_rate"),
        ("intensity", {"lo": 5.0, "hi": 1.0}, "intensity"),
        ("intensity", [0, 1], "intensity"),
        ("keep", 3, "keep entry"),
        ("keep", {"max_error": -1, "voxels": 3}, "keep.max_error"),
        ("keep", {"max_error": 1.0, "voxels": 2.5}, "keep.voxels"),
        ("warnings", "not a list", "warnings"),
        ("warnings", [1, 2], "warnings"),
        ("max_error", float("inf"), "max_error"),
        ("max_error", "2", "max_error"),
        ("units", 7, "units"),
        ("dicom", [], "dicom"),
        ("target_ratio", "128", "target_ratio"),
    ],
)
def test_every_malformed_key_is_a_format_error(header, key, value, message):
    bad = dict(header.to_dict(), **{key: value})
    with pytest.raises(FormatError, match=message):
        DstdHeader.from_dict(bad)


def test_a_resampled_and_cut_texture_frame_travels_in_every_header_form(header):
    keys = replace(header.codec, frame_size=(300, 200, 90), frame_window=((4, 0, 2), (290, 200, 80)))
    native = replace(header, codec=keys)
    d = native.to_dict()
    assert d["codec"]["frame_size"] == [300, 200, 90] and d["codec"]["frame_window"] == [4, 0, 2, 290, 200, 80]
    assert DstdHeader.from_dict(d) == native
    lean = native.lean()  # the decoder needs both to rebuild the frame
    assert (lean.codec.frame_size, lean.codec.frame_window) == (keys.frame_size, keys.frame_window)
    assert "frame_size" not in header.to_dict()["codec"]  # absent for frames on the template's grid


def test_unknown_keys_are_ignored_and_geometry_is_the_containers_check(header):
    assert DstdHeader.from_dict(dict(header.to_dict(), future_key={"x": 1})) == header
    with pytest.raises(FormatError, match="geometry"):
        DstdHeader.from_dict({k: v for k, v in header.to_dict().items() if k != "geometry"})
