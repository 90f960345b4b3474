"""Codec bundles: deterministic ids, exact template geometry, and clear refusals of bad files."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from deepstd import BundleError
from deepstd.bundle import BundleConfig, from_bytes, load_bundle, save_bundle

CONFIG = {"name": "test-mr", "modality": "MR", "region": "synthetic", "training": {"scans": 3}}


def test_round_trip_and_stable_id(tmp_path, oblique_volume):
    labels = oblique_volume.with_array((oblique_volume.array > 0).astype(np.float32), dtype="uint8")
    a = save_bundle(tmp_path / "a.dstdb", CONFIG, oblique_volume, labels, texture=b"weights")
    b = save_bundle(tmp_path / "b.dstdb", CONFIG, oblique_volume, labels, texture=b"weights")
    assert a.read_bytes() == b.read_bytes()
    bundle = load_bundle(a)
    assert bundle.name == "test-mr" and bundle.texture == b"weights" and bundle.config == BundleConfig.from_dict(CONFIG)
    assert bundle.template.same_grid(oblique_volume)
    np.testing.assert_array_equal(bundle.template.array, oblique_volume.array)
    np.testing.assert_array_equal(bundle.template_labels.array, labels.array)
    assert len(bundle.sha256) == 64 and "trained on 3 scans, id" in bundle.describe()
    training = {"scans": 3, "finetune": {"scans": 9}}
    tuned = save_bundle(tmp_path / "t.dstdb", dict(CONFIG, training=training), oblique_volume)
    assert "trained on 3 scans, fine-tuned on 9, id" in load_bundle(tuned).describe()
    training = {"scans": 3, "finetune": {"scans": 9, "context": 32}}
    reading = save_bundle(tmp_path / "r.dstdb", dict(CONFIG, training=training), oblique_volume)
    assert "fine-tuned on 9 reading the template, id" in load_bundle(reading).describe()
    assert bundle.template.units == "unitless"  # an MR bundle
    changed = save_bundle(tmp_path / "c.dstdb", dict(CONFIG, region="other"), oblique_volume)
    assert load_bundle(changed).sha256 != bundle.sha256
    ct = save_bundle(tmp_path / "ct.dstdb", dict(CONFIG, modality="CT"), oblique_volume)
    assert load_bundle(ct).template.units == "HU"  # NIfTI cannot say so; the config does


def _zip(entries):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, payload in entries.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not a zip", "not a zip"),
        (_zip({"config.json": b"{}", "weights.pt": b"pickle!"}), "unexpected entries"),
        (_zip({"config.json": b"{}"}), "missing entries"),
        (_zip({"config.json": b"{oops", "template.nii.gz": b""}), "not valid JSON"),
        (_zip({"config.json": b'{"name": "x"}', "template.nii.gz": b""}), "must be an object with"),
        (
            _zip({"config.json": b'{"name": "x", "modality": "MR", "region": "r"}', "template.nii.gz": b"garbage"}),
            "template image is unreadable",
        ),
    ],
)
def test_bad_bundles_are_refused_by_name(data, message):
    with pytest.raises(BundleError, match=message):
        from_bytes(data)


@pytest.mark.parametrize("rates", [None, [0.5], [0.6, 0.2], [0.0, 0.5, 1.0], [0.0, 1.5], [0.0, "1"], [0.3, 0.3]])
def test_a_texture_rate_span_is_two_rates_coarsest_first(rates):
    from deepstd.bundle import TextureCoding

    with pytest.raises(BundleError, match="texture.rates"):
        TextureCoding.from_dict({"rates": rates})
    span = TextureCoding.from_dict({"rates": [0.1, 0.5]})
    assert (span.rate(0.0), span.rate(0.3), span.rate(0.7), span.rate(1.0)) == (0.1, 0.3, 0.5, 0.5)
    assert TextureCoding.from_dict(span.to_dict()) == span


def test_unknown_name_lists_what_exists():
    with pytest.raises(BundleError, match="codec bundle 'no-such-bundle' not found"):
        load_bundle("no-such-bundle")


def test_truncated_or_flipped_bundles_only_raise_bundle_errors(tmp_path, oblique_volume):
    data = save_bundle(tmp_path / "a.dstdb", CONFIG, oblique_volume, texture=b"w" * 100).read_bytes()
    for cut in range(0, len(data), max(1, len(data) // 200)):
        with pytest.raises(BundleError):
            from_bytes(data[:cut])
    rng = np.random.default_rng(5)
    outcomes = {"same": 0, "refused": 0}
    for position in rng.integers(0, len(data), 300):
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        try:
            bundle = from_bytes(bytes(damaged))
        except BundleError:
            outcomes["refused"] += 1
        else:  # a flip in zip metadata that nothing reads (e.g. a timestamp) leaves the content intact
            assert bundle.config == BundleConfig.from_dict(CONFIG) and bundle.texture == b"w" * 100
            np.testing.assert_array_equal(bundle.template.array, oblique_volume.array)
            outcomes["same"] += 1
    assert outcomes["refused"] > 0


def test_cli_info_describes_a_bundle(tmp_path, oblique_volume):
    import subprocess
    import sys

    path = save_bundle(tmp_path / "t.dstdb", CONFIG, oblique_volume)
    result = subprocess.run(
        [sys.executable, "-m", "deepstd.cli", "info", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "test-mr: MR synthetic" in result.stdout and "sha256:" in result.stdout
    bad = tmp_path / "bad.dstdb"
    bad.write_bytes(b"junk")
    result = subprocess.run(
        [sys.executable, "-m", "deepstd.cli", "info", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "not a codec bundle" in result.stderr and "Traceback" not in result.stderr


def test_a_retired_bundle_is_found_by_id_but_not_offered(tmp_path, oblique_volume, monkeypatch):
    """A bundle a newer one replaced still decodes the files coded with it, without --bundle."""
    from deepstd import bundle as bundles

    retired = tmp_path / "retired"
    path = save_bundle(retired / "test-mr-0.1.dstdb", CONFIG, oblique_volume, texture=b"old weights")
    monkeypatch.setattr(bundles, "RETIRED_DIR", retired)
    sha = load_bundle(path).sha256
    assert bundles.find_bundle_file("test-mr", sha[:16]) == path
    assert bundles.find_bundle(None, sha[:16]).texture == b"old weights"
    assert "test-mr-0.1" not in bundles.shipped_bundles()
    with pytest.raises(BundleError, match="not installed; pass its file with --bundle"):
        bundles.find_bundle_file("test-mr", "f" * 16)


def test_every_retired_bundle_is_a_complete_bundle_named_like_a_shipped_one():
    from deepstd.bundle import RETIRED_DIR, shipped_bundles

    for path in sorted(RETIRED_DIR.glob("*.dstdb")):
        assert load_bundle(path).name in shipped_bundles(), path.name


def test_a_file_coded_with_the_retired_hippocampus_bundle_decodes_without_naming_it():
    """0.2.0's hippocampus-mr files (the bundle before its fine-tune) still open as they did."""
    from shared_data import data_path

    from deepstd import codec, read
    from deepstd.bundle import RETIRED_DIR, shipped_bundles

    old = load_bundle(RETIRED_DIR / "hippocampus-mr-0.2.0.dstdb")
    assert old.sha256 != load_bundle(shipped_bundles()["hippocampus-mr"]).sha256
    scan = read(data_path("hippocampus_mr", "images", "hippocampus_338.nii.gz"))
    data = codec.encode(scan, old, ratio=64, device="cpu")
    np.testing.assert_array_equal(codec.decode(data, device="cpu").array, codec.decode(data, old, device="cpu").array)


def test_a_standing_record_beside_the_bundle_is_read_only_for_those_bundle_bytes(tmp_path, oblique_volume):
    import json

    from deepstd.bundle import STANDING_VERSION, TextureStanding

    path = tmp_path / "b.dstdb"
    save_bundle(path, CONFIG, oblique_volume)
    assert load_bundle(path).standing is None
    sha = load_bundle(path).sha256
    record_path = tmp_path / "b.standing.json"

    def record(**kw):
        record_path.write_text(
            json.dumps({"version": STANDING_VERSION, "bundle_sha256": sha, "texture_closer": 0, "pairs": 8, **kw})
        )
        return load_bundle(path).standing

    assert record() == TextureStanding(0, 8) and not record().worth_trying
    assert record(texture_closer=2).worth_trying
    # measured on other bundle bytes, malformed or of another version: no record (the encoder competes)
    for bad in ({"bundle_sha256": "0" * 64}, {"texture_closer": 9}, {"pairs": 0}, {"texture_closer": True},
                {"pairs": "8"}, {"version": 2}):  # fmt: skip
        assert record(**bad) is None, bad
    record_path.write_text("[1, 2")
    assert load_bundle(path).standing is None


def test_every_shipped_bundle_has_a_standing_record_for_its_bytes():
    from deepstd.bundle import shipped_bundles

    for name in shipped_bundles():
        standing = load_bundle(name).standing
        assert standing is not None and standing.pairs >= 6, name


def test_a_standing_record_written_by_record_is_read_back(tmp_path, oblique_volume):
    import json

    from deepstd.bundle import TextureStanding

    path = tmp_path / "b.dstdb"
    save_bundle(path, CONFIG, oblique_volume)
    bundle = load_bundle(path)
    standing = TextureStanding(3, 12)
    (tmp_path / "b.standing.json").write_text(json.dumps(standing.record(bundle.name, bundle.sha256, results=[])))
    assert load_bundle(path).standing == standing
