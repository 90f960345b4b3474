"""`deepstd batch` on a real Dask cluster (a scheduler and two worker processes on localhost, started
here): mirrored tree and manifest, corrupt input recorded and skipped, second run does no work,
1 worker vs 2 give the same bytes, an interrupted CLI run resumes, refusals, restore, report.

Scans are small synthetic volumes and the bundle is tiny and untrained (see codec_helpers): what
is checked here — bookkeeping, resumption, determinism — does not depend on quality.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from codec_helpers import blob_volume, tiny_bundle

from deepstd import batch, read
from deepstd.batch import manifest
from deepstd.batch.discover import file_sha256
from deepstd.errors import InputError
from deepstd.io import write

RATIO = 24
SIZE = (40, 34, 16)
SPACING = (1.1, 0.9, 2.7)


def scan(seed):
    return blob_volume(SIZE, SPACING, seed=seed)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Nested folders: NIfTI and NRRD files, one DICOM folder holding two series, a corrupt file."""
    base = tmp_path_factory.mktemp("collection")
    src = base / "src"
    write(scan(0), src / "site_a" / "s0.nii.gz")
    write(scan(1), src / "site_a" / "s1.nrrd")
    write(scan(2), src / "site_b" / "s2.nii.gz")
    dicom = src / "site_b" / "dicom"
    dicom.mkdir(parents=True)
    for seed, name in ((3, "x"), (4, "y")):
        write(scan(seed), base / name)
        for file in (base / name).iterdir():
            file.rename(dicom / f"{name}_{file.name}")
    (src / "site_a" / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08 not an image")
    (src / "README.txt").write_text("not a scan")
    return src


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    ) as local:
        yield local


@pytest.fixture(scope="module")
def compressed(collection, bundle, cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    totals = batch.compress(collection, out, bundle, RATIO, verify=True, scheduler=cluster.scheduler_address)
    return out, totals


def records_of(out):
    return manifest.latest(manifest.load(out))


def test_tree_is_mirrored_and_every_scan_recorded(collection, compressed):
    out, totals = compressed
    assert (totals["compressed"], totals["failed"], totals["skipped"]) == (5, 1, 0)
    records = records_of(out)
    dicom = sorted(name for name in records if name.startswith("site_b/dicom/"))
    assert len(dicom) == 2  # one .dstd per series of the folder
    assert set(records) == {
        "site_a/s0.nii.gz.dstd",
        "site_a/s1.nrrd.dstd",
        "site_b/s2.nii.gz.dstd",
        "site_a/broken.nii.gz.dstd",
        *dicom,
    }
    for name, record in records.items():
        if record["status"] != "ok":
            continue
        assert (out / name).stat().st_size == record["bytes"] <= record["raw_bytes"] // RATIO
        assert file_sha256(out / name) == record["output_sha256"]
        assert record["psnr"] > 0 and 0 < record["ssim"] <= 1 and record["mae"] >= 0
        assert record["bundle_sha256"] and record["encoder_version"] and record["seconds"] > 0
        assert record["voxels"] == SIZE[0] * SIZE[1] * SIZE[2]
    assert records["site_a/s0.nii.gz.dstd"]["source_sha256"] == file_sha256(collection / "site_a" / "s0.nii.gz")
    assert all(records[name]["series_uid"] for name in dicom)


def test_corrupt_input_is_recorded_with_its_reason_and_skipped(compressed):
    out, _ = compressed
    record = records_of(out)["site_a/broken.nii.gz.dstd"]
    assert record["status"] == "failed" and "cannot read image" in record["error"]
    assert "\n" not in record["error"] and not (out / "site_a" / "broken.nii.gz.dstd").exists()


def test_second_run_does_no_work_and_redoes_a_damaged_output(collection, bundle, cluster, compressed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(compressed[0], out)
    lines = len(manifest.load(out))
    totals = batch.compress(collection, out, bundle, RATIO, verify=True, scheduler=cluster.scheduler_address)
    assert (totals["compressed"], totals["skipped"], totals["failed"]) == (0, 5, 1)
    assert len(manifest.load(out)) == lines  # nothing re-run, not even the broken scan
    damaged = out / "site_a" / "s1.nrrd.dstd"
    original = damaged.read_bytes()
    damaged.write_bytes(original[:-10])
    totals = batch.compress(collection, out, bundle, RATIO, verify=True, scheduler=cluster.scheduler_address)
    assert (totals["compressed"], totals["skipped"]) == (1, 4)
    assert damaged.read_bytes() == original  # deterministic: the same bytes again


def test_another_effort_codes_again_and_is_recorded(collection, bundle, cluster, compressed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(compressed[0], out)
    totals = batch.compress(collection, out, bundle, RATIO, verify=True, scheduler=cluster.scheduler_address, effort=1)
    assert (totals["compressed"], totals["skipped"], totals["failed"]) == (5, 0, 1)
    records = records_of(out)
    assert {r["effort"] for r in records.values() if r["status"] == "ok"} == {1}
    assert all(r.get("effort", 0) == 0 for r in records_of(compressed[0]).values())
    totals = batch.compress(collection, out, bundle, RATIO, verify=True, scheduler=cluster.scheduler_address, effort=1)
    assert (totals["compressed"], totals["skipped"]) == (0, 5)
    for bad in (3, True, "2"):
        with pytest.raises(InputError, match="effort must be one of 0, 1, 2"):
            batch.compress(collection, out, bundle, RATIO, effort=bad)


def test_one_local_worker_writes_the_same_bytes_as_two(collection, bundle, compressed, tmp_path):
    """Also: a CSV list instead of a folder, and the embedded LocalCluster."""
    listing = tmp_path / "scans.csv"
    with listing.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path"])
        writer.writerows([[collection / "site_a" / "s0.nii.gz"], [collection / "site_b" / "s2.nii.gz"]])
    out = tmp_path / "one"
    totals = batch.compress(listing, out, bundle, RATIO, workers=1)
    assert totals["compressed"] == 2
    for name in ("site_a/s0.nii.gz.dstd", "site_b/s2.nii.gz.dstd"):
        assert (out / name).read_bytes() == (compressed[0] / name).read_bytes()


def test_interrupted_cli_run_resumes_where_it_stopped(bundle, cluster, tmp_path):
    """SIGINT (Ctrl-C) as soon as the first scan is in the manifest; the rest are in flight or queued."""
    count = 7
    src, out = tmp_path / "src", tmp_path / "out"
    for seed in range(count):
        write(scan(seed), src / f"scan{seed}.nii.gz")
    command = [
        sys.executable,
        "-m",
        "deepstd.cli",
        "batch",
        "compress",
        str(src),
        str(out),
        "--bundle",
        str(bundle.path),
        "--ratio",
        str(RATIO),
        "--scheduler",
        cluster.scheduler_address,
    ]
    # SIGINT restored to its default in the child: a runner started in the background ignores it
    run = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 90
    while not any(r["status"] == "ok" for r in manifest.load(out)) and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    # (Dask's client may log while shutting down, so the message is looked for, not required last)
    assert run.returncode == 130 and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    first = records_of(out)
    assert 1 <= len(first) < count
    written = {p.relative_to(out).as_posix() for p in out.glob("*.dstd")}
    # every recorded file is there; at most the one being stored when the signal came is not yet
    # recorded (complete, since writes are atomic: it is simply redone); no temporary files remain
    assert set(first) <= written and len(written) <= len(first) + 1
    assert not list(out.glob(".*"))
    totals = batch.compress(src, out, bundle, RATIO, scheduler=cluster.scheduler_address)
    assert totals["skipped"] == len(first) and totals["compressed"] == count - len(first)
    assert len(records_of(out)) == count


@pytest.mark.parametrize("how", ["Ctrl-C at a terminal", "SIGTERM"])
def test_interrupted_local_cluster_run_stops_cleanly_and_resumes(bundle, tmp_path, how):
    """The CLI's own local cluster. Ctrl-C at a terminal reaches the whole process group, workers
    included; SIGTERM (a service stopping) the driver only. Either way: no traceback, no Dask
    complaint, no leaked semaphores, no process left, a valid manifest, and the same command
    resumes."""
    import psutil

    count = 6
    src, out = tmp_path / "src", tmp_path / "out"
    for seed in range(count):
        write(scan(seed), src / f"scan{seed}.nii.gz")
    command = [sys.executable, "-m", "deepstd.cli", "batch", "compress", str(src), str(out)]
    command += ["--bundle", str(bundle.path), "--ratio", str(RATIO), "--workers", "2"]
    run = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not any(r["status"] == "ok" for r in manifest.load(out)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if how == "SIGTERM":
        run.send_signal(signal.SIGTERM)
    else:
        os.killpg(run.pid, signal.SIGINT)
    _, raw = run.communicate(timeout=90)
    stderr = raw.decode()
    expected = ("terminated", 143) if how == "SIGTERM" else ("interrupted", 130)
    assert run.returncode == expected[1], stderr
    last = stderr.strip().splitlines()[-1].rsplit("\r", 1)[-1]
    assert last == f"deepstd: {expected[0]}; finished scans are kept in {out}; run the same command again to resume"
    for noise in ("Traceback", "leaked semaphore", "KeyboardInterrupt", "distributed.", "ERROR"):
        assert noise not in stderr, stderr
    time.sleep(1)
    left = [p for p in psutil.process_iter(["status"]) if _session_of(p.pid) == run.pid]
    assert [p for p in left if p.info["status"] != psutil.STATUS_ZOMBIE] == [], left  # (zombies: dead)
    lines = (out / manifest.NAME).read_text().splitlines()
    assert all(json.loads(line)["output"] for line in lines)  # every line whole
    first = records_of(out)
    assert 1 <= len(first) < count and all(r["status"] == "ok" for r in first.values())
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{count} scans: {count - len(first)} compressed, {len(first)} already done, 0 failed" in again.stdout
    assert len(records_of(out)) == count and not list(out.glob(".*"))


def _session_of(pid: int):
    try:
        return os.getsid(pid)
    except OSError:
        return None


def test_allow_gaps_retries_a_series_that_failed_for_a_missing_slice(bundle, cluster, tmp_path):
    import inspect

    if "allow_gaps" not in inspect.signature(read).parameters:
        pytest.skip("deepstd.io.read has no allow_gaps yet")
    src, out = tmp_path / "src", tmp_path / "out"
    write(scan(5), src / "series")
    slices = sorted((src / "series").iterdir())
    slices[len(slices) // 2].unlink()
    totals = batch.compress(src, out, bundle, RATIO, scheduler=cluster.scheduler_address)
    (record,) = records_of(out).values()
    assert totals["failed"] == 1 and record["status"] == "failed" and record["allow_gaps"] is False
    again = batch.compress(src, out, bundle, RATIO, scheduler=cluster.scheduler_address)
    assert (again["compressed"], again["failed"]) == (0, 1)  # a settled failure is not retried...
    gaps = batch.compress(src, out, bundle, RATIO, scheduler=cluster.scheduler_address, allow_gaps=True)
    assert (gaps["compressed"], gaps["failed"]) == (1, 0)  # ...unless the gap is now allowed
    (record,) = records_of(out).values()
    assert record["status"] == "ok" and record["allow_gaps"] is True


@pytest.mark.parametrize("where", ["out inside src", "src inside out"])
def test_overlapping_source_and_output_are_refused(collection, bundle, where):
    out = collection / "site_a" / "out" if where == "out inside src" else collection.parent
    with pytest.raises(InputError, match="inside"):
        batch.compress(collection, out, bundle, RATIO, workers=1)
    assert not (collection / "site_a" / "out").exists()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepstd.cli",
            "batch",
            "compress",
            str(collection),
            str(out),
            "--bundle",
            str(bundle.path),
            "--ratio",
            "24",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    last = result.stderr.strip().splitlines()[-1]  # (above it: the progress bar's blank)
    assert result.returncode == 2 and last.startswith("deepstd: error:") and "inside" in last
    assert "Traceback" not in result.stderr


def test_decompress_restores_the_tree_and_dicom_as_lossy_dicom(collection, bundle, cluster, compressed, tmp_path):
    import pydicom

    out = compressed[0]
    restore = tmp_path / "restore"
    totals = batch.decompress(out, restore, bundle=bundle.path, scheduler=cluster.scheduler_address)
    assert (totals["restored"], totals["failed"]) == (5, 0)
    for name in ("site_a/s0.nii.gz", "site_a/s1.nrrd", "site_b/s2.nii.gz"):
        restored, original = read(restore / name), read(collection / name)
        assert restored.size == original.size and restored.dtype == original.dtype
    series = sorted(p for p in (restore / "site_b" / "dicom").iterdir())
    assert len(series) == 2 and all(p.is_dir() for p in series)
    first = pydicom.dcmread(next(series[0].iterdir()))
    assert first.LossyImageCompression == "01" and "DEEPSTD" in str(first.LossyImageCompressionMethod)
    again = batch.decompress(out, restore, bundle=bundle.path, scheduler=cluster.scheduler_address)
    assert (again["restored"], again["skipped"]) == (0, 5)
    with pytest.raises(InputError, match="inside"):
        batch.decompress(out, collection / "restored", bundle=bundle.path, workers=1)


def test_report_has_totals_failures_and_plots(compressed):
    report = batch.write_report(compressed[0], bandwidth_mbit=10)
    text = report["markdown"].read_text()
    assert "6 scans: 5 compressed, 1 failed" in text and "transfer at 10 Mbit/s" in text
    assert "broken.nii.gz.dstd" in text and "Worst scans" in text
    assert report["png"].stat().st_size > 10_000


def test_scan_list_json_and_bad_lists(collection, tmp_path):
    from deepstd.batch.discover import find_scans

    listing = tmp_path / "scans.json"
    listing.write_text(
        json.dumps([str(collection / "site_a" / "s1.nrrd"), {"path": str(collection / "site_b" / "dicom")}])
    )
    root, scans = find_scans(listing)
    assert root == collection and [s.output.split("/")[0] for s in scans] == ["site_a", "site_b", "site_b"]
    listing.write_text(json.dumps([str(tmp_path / "missing.nii.gz")]))
    with pytest.raises(InputError, match="does not exist"):
        find_scans(listing)
