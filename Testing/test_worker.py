"""deepstd.worker, the child side of the Slicer module's jobs, run as `python -m deepstd.worker`:
the job folder, the JSON-lines protocol, exit codes, snapshots, cancel and nothing but protocol
on stdout. The encode/decode round trip is real (the shipped hippocampus-mr bundle on a crop of a
real hippocampus MR scan) and must match the package's own decode exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deepstd.volume import Volume
from deepstd.worker import EXIT_CANCELLED, EXIT_ERROR, JobFolder, partial_files, read_volume, write_volume

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hippocampus_mr" / "images"
#: one torch thread in every child: two threads on busy shared cores are many times slower
ONE_THREAD = {"threads": 1}


def real_scans(count=1):
    files = sorted(DATA.glob("*.nii.gz"))[:count] if DATA.is_dir() else []
    if len(files) < count:
        pytest.skip(f"real data not found at {DATA}")
    from deepstd import read

    return [read(f) for f in files]


@pytest.fixture(scope="module")
def crop():
    """A 28 x 40 x 24 voxel crop of a real hippocampus MR scan (int16), origin moved with it."""
    (scan,) = real_scans()
    k, j, i = 4, 5, 4
    origin = scan.index_to_physical() @ np.array([i, j, k, 1.0])
    return Volume(
        scan.array[k : k + 24, j : j + 40, i : i + 28],
        scan.spacing,
        tuple(origin[:3]),
        scan.direction,
        scan.dtype,
        scan.units,
    )


def shipped(name="hippocampus-mr"):
    from deepstd.bundle import shipped_bundles

    bundles = shipped_bundles()
    if name not in bundles:
        pytest.skip(f"the shipped bundle {name!r} is not installed")
    return str(bundles[name])


def run_worker(job_file, timeout=600):
    """Run the worker as the module does; (exit status, parsed stdout lines, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "deepstd.worker", str(job_file)], capture_output=True, timeout=timeout)
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines()]  # every line is JSON
    return proc.returncode, lines, proc.stderr.decode()


def test_volumes_travel_exactly(tmp_path, oblique_volume):
    spec = write_volume(oblique_volume, tmp_path / "v.nrrd", relative_to=tmp_path)
    assert spec == {"file": "v.nrrd", "dtype": "int16", "units": "HU"}
    back = read_volume(spec, tmp_path)
    np.testing.assert_array_equal(back.array, oblique_volume.array)
    assert back.same_grid(oblique_volume) and (back.dtype, back.units) == ("int16", "HU")
    fractional = oblique_volume.with_array(oblique_volume.array + 0.25)  # int16 in name, not in value
    back = read_volume(write_volume(fractional, tmp_path / "f.nii.gz"))
    np.testing.assert_array_equal(back.array, fractional.array)
    assert back.dtype == "int16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.nii.gz", "v.nrrd"]  # no temporaries


def test_real_encode_then_decode_through_the_worker(tmp_path, crop):
    import deepstd.codec
    from deepstd.bundle import load_bundle

    bundle = shipped()
    folder = JobFolder.create(tmp_path)
    folder.add_volume("volume", crop)
    out = tmp_path / "out" / "crop.dstd"
    rc, lines, err = run_worker(
        folder.write("encode", {"bundle": bundle, "ratio": 16, "device": "cpu", **ONE_THREAD}, {"dstd": out})
    )
    assert rc == 0, err
    assert lines[0] == {"type": "progress", "stage": "encode", "fraction": 0.0, "message": "worker started"}
    progress = [m for m in lines if m["type"] == "progress"]
    assert len(progress) > 3 and all(0.0 <= m["fraction"] <= 1.0 for m in progress)
    assert [m["type"] for m in lines].count("result") == 1 and lines[-1]["type"] == "result"
    result = lines[-1]
    data = out.read_bytes()
    assert result["path"] == str(out) and result["file_bytes"] == len(data) and data[:4] == b"DSTD"
    from deepstd.container import unpack

    assert result["warnings"] == list(unpack(data).header.get("warnings", []))  # shown in Slicer's panel
    assert result["raw_bytes"] == crop.raw_bytes and crop.raw_bytes / len(data) >= 16 * 0.98
    assert sorted(p.name for p in out.parent.iterdir()) == ["crop.dstd"]

    folder = JobFolder.create(tmp_path)
    folder.add_path("dstd", out)
    rc, lines, err = run_worker(folder.write("decode", {"bundle": bundle, "device": "cpu", **ONE_THREAD}))
    assert rc == 0, err
    decoded = read_volume(lines[-1]["volume"], folder.path)
    direct = deepstd.codec.decode(data, load_bundle(bundle), device="cpu")  # what `deepstd decode` does
    np.testing.assert_array_equal(decoded.array, direct.to_dtype_array())
    assert decoded.same_grid(crop) and decoded.dtype == crop.dtype

    # a region, the bundle found from the file's header (no bundle option)
    folder = JobFolder.create(tmp_path)
    folder.add_path("dstd", out)
    roi = [[0, 0, 10], [28, 40, 13]]
    rc, lines, err = run_worker(folder.write("decode", {"device": "cpu", "roi": roi, **ONE_THREAD}))
    assert rc == 0, err
    assert lines[-1]["dstd"]["roi"] == roi
    np.testing.assert_array_equal(read_volume(lines[-1]["volume"], folder.path).array, decoded.array[10:13])


def test_registration_streams_snapshots(tmp_path):
    moving, template = real_scans(2)
    folder = JobFolder.create(tmp_path)
    folder.add_volume("moving", moving)
    folder.add_volume("template", template)
    settings = {"steps": 50, "preview_every": 25, "probe_steps": 25}
    rc, lines, err = run_worker(folder.write("register", {"settings": settings, **ONE_THREAD}))
    assert rc == 0, err
    snapshots = [m for m in lines if m["type"] == "snapshot"]
    assert [s["step"] for s in snapshots] == [25, 50]
    for snap in snapshots:
        field = np.load(snap["path"])
        assert field.ndim == 4 and field.shape[-1] == 3 and np.isfinite(field).all()
        assert len(snap["spacing"]) == 3 and len(snap["direction"]) == 9 and "loss" in snap
    result = lines[-1]
    assert result["steps"] == 50 and result["snapshot"] == snapshots[-1] and np.isfinite(result["loss"])


def test_segment_metrics_and_residue(tmp_path, oblique_volume):
    folder = JobFolder.create(tmp_path)
    a = np.zeros(oblique_volume.array.shape, bool)
    a[1:5, 2:8, 3:9] = True
    b = a.copy()
    b[1:5, 2:8, 3] = False
    folder.add_arrays("masks", {"a0": a, "b0": b, "a1": a, "b1": a})
    rc, lines, err = run_worker(
        folder.write("segment_metrics", {"pairs": [["x", "x"], ["y", "z"]], "spacing": oblique_volume.spacing})
    )
    assert rc == 0, err
    x, y = lines[-1]["rows"]
    assert x["Dice"] == pytest.approx(2 * b.sum() / (a.sum() + b.sum())) and y["Dice"] == 1.0
    assert (y["Segment"], y["Compared with"], y["HD95"]) == ("y", "z", 0.0)

    folder = JobFolder.create(tmp_path)
    folder.add_volume("original", oblique_volume)
    folder.add_volume("decoded", oblique_volume.with_array(oblique_volume.array + 2))
    rc, lines, err = run_worker(folder.write("residue"))
    assert rc == 0, err
    assert lines[-1]["values"]["MAE"] == pytest.approx(2.0)
    np.testing.assert_allclose(read_volume(lines[-1]["residue"], folder.path).array, -2.0)


def test_the_effort_option_reaches_the_encoder(tmp_path, crop):
    """Slicer's Effort setting: 2 searches the latents (its progress says so); a bad one is refused."""
    folder = JobFolder.create(tmp_path)
    folder.add_volume("volume", crop)
    options = {"bundle": shipped(), "ratio": 64, "device": "cpu", **ONE_THREAD}
    rc, lines, err = run_worker(folder.write("encode", {**options, "effort": 2}, {"dstd": tmp_path / "a.dstd"}))
    assert rc == 0, err
    assert any(m.get("message") == "searching latents" for m in lines)
    rc, lines, _ = run_worker(folder.write("encode", {**options, "effort": 7}, {"dstd": tmp_path / "b.dstd"}))
    assert (rc, lines[-1]["kind"]) == (EXIT_ERROR, "InputError") and "effort must be one of" in lines[-1]["message"]
    assert not (tmp_path / "b.dstd").exists()


def test_deepstd_errors_exit_2_with_one_error_line(tmp_path, oblique_volume):
    folder = JobFolder.create(tmp_path)
    folder.add_volume("volume", oblique_volume)
    rc, lines, _ = run_worker(folder.write("encode", {"bundle": "no-such-bundle", "ratio": 16}, {"dstd": "x.dstd"}))
    assert rc == EXIT_ERROR
    assert lines[-1]["type"] == "error" and lines[-1]["kind"] == "BundleError"
    assert "no-such-bundle" in lines[-1]["message"] and "traceback" not in lines[-1]

    broken = tmp_path / "broken.dstd"
    broken.write_bytes(b"DSTD\x00\x01garbage")
    folder = JobFolder.create(tmp_path)
    folder.add_path("dstd", broken)
    rc, lines, _ = run_worker(folder.write("decode"))
    assert (rc, lines[-1]["kind"]) == (EXIT_ERROR, "FormatError")

    bad = tmp_path / "bad.json"
    bad.write_text('{"protocol": 1, "operation": "format-disk"}')
    rc, lines, _ = run_worker(bad)
    assert (rc, lines) == (EXIT_ERROR, [lines[0]]) and lines[0]["kind"] == "InputError"
    assert "unknown operation 'format-disk'" in lines[0]["message"]


def test_a_bug_exits_1_with_its_traceback(tmp_path):
    folder = JobFolder.create(tmp_path)
    folder.add_arrays("masks", {"a0": np.zeros((2, 2, 2), bool)})  # "b0" is missing
    rc, lines, _ = run_worker(folder.write("segment_metrics", {"pairs": [["x", "x"]]}))
    assert rc == 1
    assert lines[-1]["kind"] == "KeyError" and "Traceback" in lines[-1]["traceback"]


def test_only_protocol_lines_reach_stdout():
    code = (
        "import os, sys\n"
        "from deepstd.worker import Channel\n"
        "channel = Channel.take_stdout()\n"
        "print('a library talking')\n"
        "os.write(1, b'C code talking\\n')\n"
        "channel.send({'type': 'progress', 'stage': 's', 'fraction': 1.0, 'message': ''})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout == '{"type": "progress", "stage": "s", "fraction": 1.0, "message": ""}\n'
    assert "a library talking" in proc.stderr and "C code talking" in proc.stderr


@pytest.mark.skipif(os.name == "nt", reason="SIGTERM")
def test_sigterm_cancels_and_leaves_no_partial_file(tmp_path, crop):
    folder = JobFolder.create(tmp_path)
    folder.add_volume("volume", crop)
    out = tmp_path / "out" / "crop.dstd"
    job = folder.write("encode", {"bundle": shipped(), "ratio": 16, "device": "cpu", **ONE_THREAD}, {"dstd": out})
    proc = subprocess.Popen([sys.executable, "-m", "deepstd.worker", str(job)], stdout=subprocess.PIPE)
    seen = []
    while len(seen) < 3:  # "worker started" and two steps of the encoder: it is working
        line = proc.stdout.readline()
        assert line, "the worker ended before it was cancelled"
        seen.append(json.loads(line))
    started = time.time()
    proc.send_signal(signal.SIGTERM)
    rest = [json.loads(line) for line in proc.stdout.read().decode().splitlines()]
    assert proc.wait(30) == EXIT_CANCELLED and time.time() - started < 10
    assert rest[-1] == {"type": "error", "kind": "Cancelled", "message": "cancelled by the user"}
    assert not out.exists() and not partial_files(out)


def test_residue_in_slabs_matches_the_metrics(tmp_path, monkeypatch):
    """The residue job works slab by slab (bounded memory): same numbers as deepstd.metrics."""
    from deepstd import metrics

    rng = np.random.default_rng(2)
    array = rng.integers(-1000, 2000, (23, 30, 26)).astype(np.float32)
    original = Volume(array, (0.8, 0.8, 2.0), (1.0, 2.0, 3.0), tuple(np.eye(3).reshape(-1)), "int16", "HU")
    decoded = original.with_array(array + rng.integers(-20, 21, array.shape).astype(np.float32))
    folder = JobFolder.create(tmp_path)
    folder.add_volume("original", original)
    folder.add_volume("decoded", decoded)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "Logic"))
    job = folder.write("residue")
    code = "import deepstd.worker as w, sys; w.SLAB_VOXELS = 1000; sys.exit(w.main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", code, str(job)], capture_output=True, env=env, timeout=300)
    lines = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert out.returncode == 0, out.stderr.decode()
    values = lines[-1]["values"]
    assert values["MAE"] == pytest.approx(metrics.mae(original, decoded), rel=1e-12)
    assert values["PSNR"] == pytest.approx(metrics.psnr(original, decoded, original.data_range()), rel=1e-12)
    assert values["SSIM"] == pytest.approx(metrics.ssim(original, decoded, original.data_range()), rel=1e-12)
    assert len([m for m in lines if m["type"] == "progress" and m["stage"] == "residue"]) > 5
    np.testing.assert_array_equal(read_volume(lines[-1]["residue"], folder.path).array, array - decoded.array)
