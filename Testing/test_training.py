"""Bundle training (`deepstd.training`): the template choice and grid, augmentation, and a tiny
end-to-end `train_bundle` run, plain and distilled from a teacher bundle."""

from __future__ import annotations

import numpy as np
import pytest
from codec_helpers import TINY, blob_volume

from deepstd import Volume
from deepstd.errors import InputError
from deepstd.training import augment, rank_templates, template_grid, train_bundle

pytestmark = pytest.mark.usefixtures("one_thread")


def test_template_grid_refines_a_coarse_template_to_the_finest_scan_spacing():
    coarse = blob_volume((20, 16, 12), (3.0, 3.0, 3.0), origin=(5.0, -2.0, 1.0))
    fine_scan = blob_volume((30, 30, 10), (1.5, 1.5, 4.0))
    out, _ = template_grid(coarse, [coarse, fine_scan])
    assert out.spacing == (1.5, 1.5, 1.5) and out.size == (39, 31, 23)
    assert out.origin == coarse.origin and out.direction == coarse.direction and out.dtype == coarse.dtype
    np.testing.assert_allclose(np.asarray(out.size[::-1]) - 1, (np.asarray(coarse.size[::-1]) - 1) * 2)
    capped, _ = template_grid(coarse, [coarse, fine_scan], max_voxels=5000)
    assert np.prod(capped.size) <= 5000 * 1.1 and capped.spacing[0] > 1.5
    iso = blob_volume((20, 16, 12), (1.5, 1.5, 1.5))
    same, _ = template_grid(iso, [iso, fine_scan])  # nothing finer to reach: unchanged
    assert same is iso
    assert np.array_equal(out.array, np.round(out.array))  # the template keeps its integer type


def test_rank_templates_puts_the_widest_first_and_outliers_last():
    wide = blob_volume((40, 30, 20), (1.0, 1.0, 1.0))
    small = blob_volume((20, 20, 10), (1.0, 1.0, 1.0), seed=1)
    flat = Volume(
        np.zeros((30, 40, 50), np.float32), (1.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), dtype="int16"
    )
    ranking = rank_templates([small, flat, wide], ["small", "flat", "wide"])
    assert [r["name"] for r in ranking] == ["wide", "small", "flat"]
    assert "grey levels" in ranking[-1]["excluded"]


def test_augment_is_seeded_and_keeps_the_shape():
    unit = blob_volume((24, 20, 16), (1.0, 1.0, 1.0)).array / 1000.0
    before = unit.copy()
    a = augment(unit, np.random.default_rng(3))
    b = augment(unit, np.random.default_rng(3))
    assert a.shape == unit.shape and a.dtype == np.float32
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)  # same seed, same output
    np.testing.assert_array_equal(unit, before)  # the input is left alone
    assert not np.allclose(a, unit, atol=1e-3)
    assert np.abs(a - unit).mean() > 0.005  # changed throughout, not at a few voxels
    assert not np.allclose(a, augment(unit, np.random.default_rng(4)), atol=1e-3)  # another seed, another output
    wide = augment(unit.astype(np.float64), np.random.default_rng(3))
    assert wide.dtype == np.float32 and wide.shape == unit.shape
    np.testing.assert_allclose(wide, a, atol=1e-5)  # the input's float type does not matter


def test_augment_is_a_plausible_variant_of_the_scan():
    """A smooth warp plus a mild intensity change: still the same anatomy in about the same range."""
    unit = blob_volume((40, 36, 28), (1.0, 1.0, 1.0)).array / 1000.0
    for seed in range(4):
        out = augment(unit, np.random.default_rng(seed))
        assert np.all(np.isfinite(out))
        assert -0.2 < out.min() and out.max() < 1.2 * unit.max()
        assert np.corrcoef(out.ravel(), unit.ravel())[0, 1] > 0.6
        # the same draws with no displacement: the intensity change alone, mild but real
        still = augment(unit, np.random.default_rng(seed), max_shift=0.0)
        assert np.corrcoef(still.ravel(), unit.ravel())[0, 1] > 0.97
        assert 0.001 < np.abs(still - unit).mean() and np.abs(still - unit).max() < 0.25
        assert np.abs(out - still).max() > 0.05  # and the warp does move voxels


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    from deepstd.io import write

    folder = tmp_path_factory.mktemp("population")
    for i in range(3):
        write(
            blob_volume((34, 34, 26), (1.0, 1.0, 1.0), seed=i, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)),
            folder / "images" / f"scan{i}.nii.gz",
        )
    return folder


def test_train_bundle_end_to_end_plain_and_with_a_teacher(population, tmp_path):
    from deepstd.bundle import load_bundle

    overrides = TINY.to_dict()
    first = train_bundle(
        population,
        tmp_path / "plain.dstdb",
        "plain",
        "MR",
        "blob",
        holdout=1,
        steps=4,
        patch=16,
        texture_overrides=overrides,
        log=lambda line: None,
    )
    bundle = load_bundle(first)
    training = bundle.config.training
    assert training["scans"] == 2 and training["holdout_files"] == ["scan2.nii.gz"] and training["teacher"] is None
    assert [p["rate"] for p in bundle.config.validation] == [0.0, 0.25, 0.5, 0.75, 1.0]
    taught = load_bundle(
        train_bundle(
            population,
            tmp_path / "taught.dstdb",
            "taught",
            "MR",
            "blob",
            holdout=1,
            steps=4,
            patch=16,
            teacher=first,
            log=lambda line: None,
            work_dir=tmp_path / "plain.work",
        )
    )
    assert taught.config.training["teacher"] == {"name": "plain", "sha256": bundle.sha256}
    assert taught.config.training["texture_config"] == overrides


def test_a_bundle_whose_entropy_model_reads_the_template_trains_encodes_and_decodes(population, tmp_path):
    """--template-context: trained from a plain teacher (the branch starts silent), the bundle's texture
    reads the template; the encoder and the decoder rebuild the same side input from the file alone."""
    from deepstd.alignment import PERCENTILE_RULE, intensity_map
    from deepstd.bundle import load_bundle
    from deepstd.codec import decode, encode
    from deepstd.io import read

    kw = dict(holdout=1, steps=4, patch=16, log=lambda line: None)
    plain = train_bundle(
        population, tmp_path / "plain.dstdb", "plain", "MR", "blob", texture_overrides=TINY.to_dict(), **kw
    )
    path = train_bundle(population, tmp_path / "ctx.dstdb", "ctx", "MR", "blob", teacher=plain, context=4,
                        work_dir=tmp_path / "plain.work", **kw)  # fmt: skip
    bundle = load_bundle(path)
    config = bundle.config.training["texture_config"]
    mapping = intensity_map(bundle.template.array, PERCENTILE_RULE)
    assert config["context"] == 4 and config["context_range"] == [mapping.lo, mapping.hi]
    scan = read(population / "images" / "scan2.nii.gz")
    data = encode(scan, path, ratio=8)
    out = decode(data, path)
    assert out.array.shape == scan.array.shape and out.spacing == scan.spacing
    region = decode(data, path, roi=((3, 4, 2), (20, 30, 15)))
    assert np.array_equal(region.array, out.array[2:15, 4:30, 3:20])
    with pytest.raises(InputError, match="template-context"):
        train_bundle(population, tmp_path / "x.dstdb", "x", "MR", "blob", context=65, **kw)
