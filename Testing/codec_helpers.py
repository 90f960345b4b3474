"""Synthetic scans and a tiny untrained bundle for codec tests (test_codec.py, test_batch.py).

A plain module, not conftest: the suite has two conftest.py files and `from conftest import`
picks the wrong one.
"""

from __future__ import annotations

import numpy as np
from shared_data import OBLIQUE_DIRECTION

from deepstd import Volume
from deepstd.bundle import load_bundle, save_bundle
from deepstd.texture import TextureCodec, TextureConfig

TINY = TextureConfig(channels=8, latent=8, hyper=8, levels=3, pos_dim=4)
FAST_REGISTRATION = {"steps": 40, "width": 16, "depth": 2, "omega": 12.0, "batch": 512, "threshold": -0.5}


def blob_volume(
    size_xyz, spacing, origin=(0.0, 0.0, 0.0), direction=OBLIQUE_DIRECTION, seed=0, dtype="int16"
) -> Volume:
    """Smooth ellipsoidal 'anatomy' with texture, in an MR-like unsigned range."""
    rng = np.random.default_rng(seed)
    x, y, z = size_xyz
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, z), np.linspace(-1, 1, y), np.linspace(-1, 1, x), indexing="ij")
    body = np.exp(-((xx / 0.7) ** 2 + (yy / 0.6) ** 2 + (zz / 0.8) ** 2) * 2)
    array = 800 * body + 200 * np.sin(6 * xx) * np.cos(5 * yy) * body + rng.normal(0, 10, body.shape)
    return Volume(
        np.clip(array, 0, None).round().astype(np.float32), spacing, origin, direction, dtype=dtype, units="unitless"
    )


def tiny_bundle(folder):
    """A bundle with a synthetic template and an untrained small texture network, saved in `folder`."""
    template = blob_volume((48, 40, 24), (1.0, 1.0, 2.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    texture = TextureCodec.untrained(TINY).to_bytes()
    config = {
        "name": "tiny",
        "modality": "MR",
        "region": "test blob",
        "registration": FAST_REGISTRATION,
        "texture": {"block": 32},
    }
    return load_bundle(save_bundle(folder / "tiny.dstdb", config, template, texture=texture))


def sperr_section(values: np.ndarray, bits_per_voxel: float) -> bytes:
    """A refine section of version 3 (SPERR, as the encoder wrote before version 4), written here
    independently of `deepstd.refine`, which only reads SPERR sections now: SPERR's 18-byte
    header dropped, the chunk's prelude without its two constant bytes, the bit count a varint."""
    import struct

    import imagecodecs

    from deepstd.container import varint

    data = np.ascontiguousarray(values, dtype=np.float32)
    stream = bytes(imagecodecs.sperr_encode(data, bits_per_voxel, mode="bpp", chunks=data.shape, numthreads=1))
    chunk = stream[18:]
    flags, mean, second, planes, bits = struct.unpack_from("<B8s8sBQ", chunk)
    assert (flags, planes) == (0x80, 32), "a SPERR chunk of another prelude (a constant field?)"
    return bytes([3]) + mean + second + varint(bits) + chunk[struct.calcsize("<B8s8sBQ") :]
