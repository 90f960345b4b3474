"""Downstream agreement (deepstd.downstream and `bench --downstream`): a small 3D U-Net segments the
original and the decoded scan; Dice / HD95 between the two label maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from codec_helpers import blob_volume
from shared_data import data_path

from deepstd import downstream
from deepstd.errors import BundleError, InputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def volume():
    return blob_volume((30, 26, 14), (1.1, 0.9, 2.7), origin=(-20.0, 13.5, 4.0), seed=5)


@pytest.fixture(scope="module")
def segmenter(volume, tmp_path_factory):
    """A tiny network briefly trained (downstream.train, 40 steps) to label the blob's medium and bright
    parts as classes 1 and 2."""
    from deepstd.io import write

    folder = tmp_path_factory.mktemp("seg")
    labels = np.where(volume.array > 400, 2, np.where(volume.array > 100, 1, 0)).astype(np.float32)
    image = write(volume, folder / "blob.nii.gz")
    label = write(volume.with_array(labels, dtype="uint8"), folder / "blob-labels.nii.gz")
    config = downstream.default_config(
        classes=3, channels=4, levels=2, working_spacing=[1.5, 1.5, 2.0], name="tiny-seg"
    )
    return downstream.train(
        [(image, label)], config, steps=40, patch=(16, 16, 16), batch=2, lr=1e-2, holdout_pairs=[(image, label)]
    )


def test_segment_is_a_deterministic_uint8_label_map_on_the_scan_grid(volume, segmenter):
    labels = downstream.segment(volume, segmenter)
    assert labels.shape == volume.array.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2}
    assert segmenter.config["validation"]["mean_dice"] > 0.5  # it learnt something
    assert np.array_equal(labels, downstream.segment(volume, segmenter))
    tiled = downstream.segment(volume, segmenter, max_voxels=100)  # overlapping tiles path
    assert tiled.shape == labels.shape and tiled.dtype == np.uint8


def test_one_tile_over_the_whole_input_is_the_untiled_inference(volume, segmenter):
    """The working grid (19 x 16 x 22) fits in one default 96-voxel tile: the tiled path then runs
    the very same network call, so its probabilities and labels are exactly the untiled ones."""
    import torch

    x = downstream.prepare(volume, segmenter.config)
    assert max(x.shape[2:]) < 96
    whole = downstream.predict(segmenter, x)
    tiled = downstream.predict(segmenter, x, max_voxels=100)
    assert tiled.shape == whole.shape and torch.equal(tiled, whole)
    assert np.array_equal(downstream.segment(volume, segmenter, max_voxels=100), downstream.segment(volume, segmenter))


def pointwise_segmenter(levels: int):
    """A 'network' whose output at a voxel depends on that voxel alone (a 1x1x1 convolution): tiling
    cannot change its result, so tiled inference must reproduce untiled inference."""
    import torch

    net = torch.nn.Conv3d(1, 3, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([-8.0, 0.0, 8.0]).view(3, 1, 1, 1, 1))
        net.bias.copy_(torch.tensor([4.0, 0.0, -4.0]))
    config = downstream.default_config(classes=3, channels=4, levels=levels)
    return downstream.Segmenter("pointwise", config, net.eval())


@pytest.mark.parametrize("levels, tile", [(0, 5), (0, 7), (2, 8), (1, 12)])
def test_overlapping_tiles_reproduce_untiled_inference_for_a_local_network(volume, levels, tile):
    """Every voxel is covered, each tile's output lands where its input came from, and overlaps are
    averaged: with a tile-invariant network the tiled probabilities equal the untiled ones."""
    seg = pointwise_segmenter(levels)
    x = downstream.prepare(volume, downstream.default_config(working_spacing=[1.5, 1.5, 2.0]))
    shape = tuple(x.shape[2:])
    assert all(n > tile for n in shape)  # several overlapping tiles per axis
    whole = downstream.predict(seg, x)
    tiled = downstream.predict(seg, x, max_voxels=0, tile=tile)
    assert tiled.shape == whole.shape == (1, 3) + shape
    assert bool((tiled - whole).abs().max() < 1e-6)
    assert float(whole.std(dim=(2, 3, 4)).min()) > 0.05  # the probabilities do vary in space


def test_small_tiles_stay_close_to_untiled_inference_for_the_trained_network(volume, segmenter):
    """Instance norm and zero padding make a U-Net's tiles differ from the whole (the code promises
    no equality there), but most labels must still agree."""
    x = downstream.prepare(volume, segmenter.config)
    whole = downstream.predict(segmenter, x)
    tiled = downstream.predict(segmenter, x, max_voxels=0, tile=16)
    assert tiled.shape == whole.shape
    assert float((tiled.argmax(1) == whole.argmax(1)).float().mean()) > 0.85
    assert float((tiled - whole).abs().mean()) < 0.1


def test_agreement_of_a_scan_with_itself_is_perfect(volume, segmenter):
    result = downstream.agreement(volume, volume, segmenter)
    assert result["dice"] == 1.0 and result["hd95"] == 0.0
    assert len(result["dice_per_class"]) == 2
    noisy = volume.array + np.random.default_rng(0).normal(0, 150, volume.array.shape).astype(np.float32)
    other = downstream.agreement(volume, noisy, segmenter)  # an array on the original's grid works too
    assert 0.0 <= other["dice"] <= 1.0 and other["hd95"] >= 0.0
    with pytest.raises(InputError, match="grid"):
        downstream.agreement(volume, volume.array[:-1], segmenter)


def test_label_agreement_uses_the_spacing_in_mm():
    a = np.zeros((10, 10, 10), np.uint8)
    a[3:7, 3:7, 3:7] = 1
    b = np.roll(a, 1, axis=0)  # one voxel along z
    result = downstream.label_agreement(a, b, 2, spacing_xyz=(1.0, 1.0, 3.0))
    assert result["dice"] == pytest.approx(0.75) and result["hd95"] == pytest.approx(3.0)


def test_weights_round_trip_and_corrupt_files_are_refused(segmenter, volume, tmp_path):
    path = downstream.save_segmenter(segmenter, tmp_path / "tiny.safetensors")
    assert path.stat().st_size < 2 << 20
    loaded = downstream.load_segmenter(path)
    assert loaded.config == segmenter.config and loaded.name == "tiny-seg"
    assert np.array_equal(downstream.segment(volume, loaded), downstream.segment(volume, segmenter))

    data = path.read_bytes()
    cases = {"garbage": b"not a segmenter at all", "truncated": data[: len(data) // 2], "empty": b""}
    header = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + header])
    config = json.loads(meta["__metadata__"]["config"])
    config["channels"] = 6  # weights no longer match
    meta["__metadata__"]["config"] = json.dumps(config)
    text = json.dumps(meta).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    cases["mismatched"] = len(text).to_bytes(8, "little") + text + data[8 + header :]
    for what, content in cases.items():
        bad = tmp_path / f"{what}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(BundleError, match=r"segmenter|weights") as info:
            downstream.load_segmenter(bad)
        assert str(bad) in str(info.value), what
    with pytest.raises(BundleError, match="not found"):
        downstream.load_segmenter("no-such-segmenter")


def test_bench_downstream_adds_dice_and_hd95(tiny_bundle, scan, segmenter, tmp_path):
    from deepstd import bench
    from deepstd.io import write

    source = write(scan, tmp_path / "scan.nii.gz")
    weights = downstream.save_segmenter(segmenter, tmp_path / "seg.safetensors")
    out = tmp_path / "results.jsonl"
    records = bench.run([source], tiny_bundle, out, ratios=[24], peer_names=["sperr3d"], downstream=weights)
    ok = [r for r in records if r["status"] == "ok"]
    assert ok and any(r["codec"] == "deepstd" for r in ok)
    for r in ok:
        assert 0.0 <= r["dice"] <= 1.0 and r["hd95"] >= 0.0 and r["segmenter"] == "tiny-seg"
    table = bench.summary(bench.load(out))
    assert "Downstream agreement" in table and "| deepstd |" in table


@pytest.mark.slow
def test_shipped_la_segmenter_agrees_with_the_ground_truth_on_a_held_out_scan():
    if "la-mr" not in downstream.shipped_segmenters():
        pytest.skip("no shipped la-mr segmenter (train it with scripts/train_segmenter.py)")
    from deepstd.io import read

    seg = downstream.load_segmenter("la-mr")
    held_out = seg.config["training"]["holdout_files"]
    image = data_path("left_atrium_mr", "images", held_out[0])
    label = data_path("left_atrium_mr", "labels", held_out[0])
    volume = read(image)
    truth = np.rint(read(label).array).astype(np.uint8)
    predicted = downstream.segment(volume, seg)
    from deepstd import metrics

    assert metrics.dice(truth, predicted, label=1) > 0.7
