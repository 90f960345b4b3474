"""The encode → decode → measure round trip `bench`, `demo` and `batch` share (deepstd.evaluate), on a
32³ crop of a held-out hippocampus scan with the shipped `hippocampus-mr` bundle at 64x."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shared_data import data_path

from deepstd import metrics, read
from deepstd.bundle import load_bundle
from deepstd.evaluate import round_trip

RATIO = 64


@pytest.fixture(scope="module")
def bundle():
    return load_bundle("hippocampus-mr")


@pytest.fixture(scope="module")
def crop():
    """32³ voxels of hippocampus_338 (held out of the bundle's training), origin moved with the crop."""
    scan = read(data_path("hippocampus_mr", "images", "hippocampus_338.nii.gz"))
    z0, y0, x0 = 5, 5, 2
    origin = tuple(float(c) for c in (scan.index_to_physical() @ np.array([x0, y0, z0, 1.0]))[:3])
    return scan.with_array(np.ascontiguousarray(scan.array[z0 : z0 + 32, y0 : y0 + 32, x0 : x0 + 32]), origin=origin)


@pytest.fixture(scope="module")
def trip(bundle, crop):
    torch.set_num_threads(2)
    return round_trip(crop, bundle, ratio=RATIO, device="cpu")


def test_metrics_are_deepstd_metrics_of_the_decoded_volume(crop, trip):
    budget = crop.raw_bytes // RATIO
    assert 0.9 * budget <= len(trip.data) <= budget
    decoded = trip.decoded
    assert decoded.same_grid(crop) and decoded.dtype == crop.dtype
    assert trip.metrics == {
        "psnr": metrics.psnr(crop.array, decoded.array),
        "ssim": metrics.ssim(crop.array, decoded.array),
        "mae": metrics.mae(crop.array, decoded.array),
    }
    assert 15 < trip.metrics["psnr"] < 60 and 0 < trip.metrics["ssim"] <= 1 and trip.metrics["mae"] > 0
    assert trip.encode_s > 0 and trip.decode_s > 0
    assert trip.warnings == decoded.meta.get("warnings", [])


def test_encode_only_skips_decoding_and_measuring(bundle, crop):
    torch.set_num_threads(2)
    encoded = round_trip(crop, bundle, ratio=RATIO, decode=False, device="cpu")
    assert len(encoded.data) <= crop.raw_bytes // RATIO and encoded.encode_s > 0
    assert encoded.decoded is None and encoded.decode_s is None and encoded.metrics is None
    assert encoded.warnings == []
