"""deepstd.pacs against a real PACS: a private Orthanc (DICOMweb plugin) started on free localhost
ports with its storage in a temporary folder, stopped afterwards. The chest CT and a prostate MR
series are stored by STOW-RS, archived into DeepSTD objects (the originals deleted once the stored
objects are verified), restored, and compared; the failure cases (server down, wrong URL, timeout,
HTTP 500, a series deleted mid-way, deletion on a server that is not Orthanc) each give a one-line
PacsError or a recorded, resumable item failure.

Skipped when Orthanc is absent (fails under DEEPSTD_REQUIRE_DATA=1; CI installs it)."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading

import numpy as np
import pydicom
import pytest
import requests
from shared_data import REQUIRE_DATA, data_path

from deepstd import codec, read
from deepstd import dicom_object as obj
from deepstd.batch import manifest
from deepstd.errors import InputError
from deepstd.pacs import PacsError, Server, ServerUnreachable, archive, parse_bundles, parse_query, restore
from deepstd.pacs.orthanc import find_dicomweb_plugin, find_orthanc, free_port, local_orthanc

BUNDLES = {"CT": "ct-torso", "MR": "prostate-t2"}
RATIO = 256
#: both test studies (chest CT 2007-04-04, prostate MR 2011-07-07): a date-range query
QUERY = {"StudyDate": "20070101-20111231"}


def need_orthanc() -> None:
    if find_orthanc() is None or find_dicomweb_plugin() is None:
        reason = "Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"
        if REQUIRE_DATA:
            pytest.fail(reason + " and DEEPSTD_REQUIRE_DATA=1")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    need_orthanc()
    with local_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def upload(server: Server, folder) -> tuple:
    """STOW-RS every file of a series folder; (StudyInstanceUID, SeriesInstanceUID)."""
    datasets = [pydicom.dcmread(path) for path in sorted(folder.iterdir()) if path.suffix == ".dcm"]
    assert server.store(datasets) == len(datasets)
    return str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


# --- servers that misbehave -----------------------------------------------------------------------
@contextlib.contextmanager
def http_server(handler_for):
    """A local HTTP server answering every request with `handler_for(method, path) -> (status, body)`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self):
            status, body = handler_for(self.command, self.path)
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_query_parsing():
    assert parse_query(["Modality=CT", "StudyDate=20070101-20071231"]) == {
        "Modality": "CT",
        "StudyDate": "20070101-20071231",
    }
    assert parse_query(["StudyDate=20070101-", "0020000D=1.2.3"]) == {
        "StudyDate": "20070101-",
        "StudyInstanceUID": "1.2.3",
    }
    with pytest.raises(InputError, match="not a DICOM keyword"):
        parse_query(["Modallity=CT"])
    with pytest.raises(InputError, match="YYYYMMDD"):
        parse_query(["StudyDate=2007-01-01"])
    with pytest.raises(InputError, match="KEYWORD=VALUE"):
        parse_query(["CT"])


def test_bundle_parsing():
    assert parse_bundles(["ct-torso"]) == "ct-torso"
    assert parse_bundles(["/data/b=1/x.dstdb"]) == "/data/b=1/x.dstdb"  # not MODALITY=: a path
    assert parse_bundles(["ct=ct-torso", "MR=prostate-t2", "la-mr"]) == {
        "CT": "ct-torso",
        "MR": "prostate-t2",
        "*": "la-mr",
    }
    with pytest.raises(InputError, match="already given"):
        parse_bundles(["CT=ct-torso", "CT=la-mr"])
    with pytest.raises(InputError, match="MODALITY=BUNDLE"):
        parse_bundles(["CT="])


def test_server_down_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    with pytest.raises(ServerUnreachable) as info:
        archive(url, {"Modality": "CT"}, "ct-torso", 256, tmp_path / "work")
    assert "connection refused" in one_line_error(info)
    with pytest.raises(PacsError, match="connection refused"):
        restore(url, {}, tmp_path / "work")
    with pytest.raises(PacsError, match="not a DICOMweb URL"):
        archive("ftp://127.0.0.1/dicom-web", {}, "ct-torso", 256, tmp_path / "work")


def test_a_bad_effort_is_refused_before_the_server_is_asked(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens: a request would fail otherwise
    with pytest.raises(InputError, match="effort must be one of 0, 1, 2, got 3"):
        archive(url, {}, "ct-torso", 256, tmp_path / "work", effort=3)
    assert not (tmp_path / "work").exists()


def test_timeout_is_one_line(tmp_path):
    """A server that accepts the connection but never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web"
        with pytest.raises(ServerUnreachable) as info:
            archive(url, {}, "ct-torso", 256, tmp_path / "work", timeout=1.0)
    assert "did not answer within 1 s" in one_line_error(info)


def test_http_errors_are_one_line(tmp_path):
    with http_server(lambda method, path: (500, None)) as root:
        with pytest.raises(PacsError) as info:
            archive(root + "/dicom-web", {}, "ct-torso", 256, tmp_path / "work")
    assert "server error (HTTP 500" in one_line_error(info)
    with http_server(lambda method, path: (401, None)) as root:
        with pytest.raises(PacsError, match="access denied"):
            restore(root + "/dicom-web", {}, tmp_path / "work")


def test_deleting_needs_orthanc(tmp_path):
    """DICOMweb has no delete: on a server whose REST API is not Orthanc's, delete_originals is
    refused before anything is archived; without it the job runs."""
    with http_server(lambda method, path: (200, []) if "/dicom-web/" in path else (404, None)) as root:
        with pytest.raises(PacsError, match="deleting originals needs Orthanc's REST API") as info:
            archive(root + "/dicom-web", {}, "ct-torso", 256, tmp_path / "work", delete_originals=True)
        one_line_error(info)
        totals = archive(root + "/dicom-web", {}, "ct-torso", 256, tmp_path / "work")
    assert totals["series"] == 0 and totals["archived"] == 0


def test_wrong_url_path(orthanc, tmp_path):
    with pytest.raises(PacsError) as info:
        archive(orthanc.rest + "/not-dicom-web", QUERY, BUNDLES, RATIO, tmp_path / "work")
    assert "HTTP 404" in one_line_error(info) and "DICOMweb root" in str(info.value)


# --- the round trip ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_archive_and_restore_round_trip(orthanc, tmp_path, one_thread, monkeypatch):
    ct_dir, mr_dir = data_path("ct", "chest_ct_dicom"), data_path("dicom_edge", "unsigned_12bit")
    server = Server(orthanc.dicomweb)
    ct_study, ct_uid = upload(server, ct_dir)
    mr_study, mr_uid = upload(server, mr_dir)
    before = int(server.statistics()["TotalDiskSize"])
    originals = {ct_uid: int(server.series_statistics(ct_uid)["DiskSize"])}
    work = tmp_path / "work"

    # 1. the MR series is deleted between the query and its retrieval: that item fails and is
    #    recorded, the CT is archived
    deleted = []

    def vanish(event):
        if event.stage == "retrieve" and mr_uid in event.message and not deleted:
            originals[mr_uid] = int(server.series_statistics(mr_uid)["DiskSize"])
            requests.delete(f"{orthanc.rest}/series/{server.orthanc_series_id(mr_uid)}", timeout=30).raise_for_status()
            deleted.append(mr_uid)

    first = archive(orthanc.dicomweb, QUERY, BUNDLES, RATIO, work, progress=vanish, threads=1)
    assert deleted and (first["series"], first["archived"], first["errors"]) == (2, 1, 1), first
    records = manifest.latest(manifest.load(work))
    gone = records[f"archive/{mr_uid}"]
    assert gone["status"] == "error" and "no longer on the server" in gone["error"]
    assert any(mr_uid in line and "no longer on the server" in line for line in first["failures"])
    assert records[f"archive/{ct_uid}"]["status"] == "ok" and not records[f"archive/{ct_uid}"]["deleted"]

    # 2. the MR is back; the rerun resumes: the CT is not coded again (only re-verified, then its
    #    originals deleted); the MR is coded, but storing its object fails (HTTP 500): its originals
    #    stay on the server and the object stays in the work folder
    upload(server, mr_dir)
    real_store = Server.store

    def store_fails_once(self, datasets, what="a store (STOW-RS)"):
        if "DeepSTD object" in what and not failed:
            failed.append(what)
            raise PacsError(f"the DICOM server at {self.url}: server error (HTTP 500 Internal Server Error) on {what}")
        return real_store(self, datasets, what)

    failed: list = []
    monkeypatch.setattr(Server, "store", store_fails_once)
    second = archive(orthanc.dicomweb, QUERY, BUNDLES, RATIO, work, delete_originals=True)
    assert failed and (second["done"], second["archived"], second["deleted"], second["errors"]) == (1, 0, 1, 1), second
    records = manifest.latest(manifest.load(work))
    assert records[f"archive/{mr_uid}"]["status"] == "error" and "HTTP 500" in records[f"archive/{mr_uid}"]["error"]
    assert int(server.series_statistics(mr_uid)["CountInstances"]) == 15  # originals kept
    monkeypatch.undo()

    # 3. the next run stores the object already made (not coded again), verifies it, deletes the originals
    lines: list = []
    third = archive(orthanc.dicomweb, QUERY, BUNDLES, RATIO, work, delete_originals=True, log=lines.append)
    # (the CT's originals are gone: only its object is found, and left alone)
    assert (third["series"], third["objects_seen"], third["archived"], third["deleted"], third["errors"]) == (
        1,
        1,
        1,
        1,
        0,
    ), third
    assert any(mr_uid in line and "object made in an earlier run" in line for line in lines), lines
    records = manifest.latest(manifest.load(work))
    objects = {uid: records[f"archive/{uid}"] for uid in (ct_uid, mr_uid)}
    assert all(r["status"] == "ok" and r["deleted"] and r["verified"] for r in objects.values())
    for uid in (ct_uid, mr_uid):  # each coded once
        assert (
            len([r for r in manifest.load(work) if r["output"] == f"archive/{uid}" and r["status"] == "encoded"]) == 1
        )

    # the server now holds the two DeepSTD objects and not the originals
    remaining = {s["series_uid"]: s for s in server.search_series(QUERY)}
    assert set(remaining) == {r["object_series_uid"] for r in objects.values()}
    stored = {uid: int(server.series_statistics(r["object_series_uid"])["DiskSize"]) for uid, r in objects.items()}
    after = int(server.statistics()["TotalDiskSize"])
    assert after == sum(stored.values()) and before == sum(originals.values())
    assert before / after > 150, (before, after)
    for uid, record in objects.items():
        copy = server.retrieve_instance(record["study_uid"], record["object_series_uid"], record["object_sop_uid"])
        path = tmp_path / f"{uid}.dcm"
        copy.save_as(path, enforce_file_format=True)
        assert obj.is_deepstd_object(path) and obj.object_info(path)["source_series_uid"] == uid
        server.store([copy])  # sent again: the same instance, kept once
        assert int(server.series_statistics(record["object_series_uid"])["CountInstances"]) == 1
        assert dciodvfy_errors(path) == []

    # 4. nothing left to archive: the objects are left alone
    fourth = archive(orthanc.dicomweb, QUERY, BUNDLES, RATIO, work, delete_originals=True)
    assert (fourth["series"], fourth["objects_seen"], fourth["archived"]) == (0, 2, 0), fourth

    # restore, twice: the second run finds both done
    restored = restore(orthanc.dicomweb, QUERY, work)
    assert (restored["objects"], restored["restored"], restored["errors"], restored["failed"]) == (2, 2, 0, 0), restored
    again = restore(orthanc.dicomweb, QUERY, work)
    assert (again["done"], again["restored"]) == (2, 0), again
    records = manifest.latest(manifest.load(work))
    for source_dir, study, uid in ((ct_dir, ct_study, ct_uid), (mr_dir, mr_study, mr_uid)):
        made = objects[uid]
        back = records[f"restore/{made['object_series_uid']}"]
        assert back["status"] == "ok" and back["decode_matches_archive"] is True
        folder = tmp_path / f"restored-{uid}"
        folder.mkdir()
        files = list(server.iter_series(study, back["restored_series_uid"]))
        for k, ds in enumerate(files):
            ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)
        volume, original = read(folder), read(source_dir)
        # geometry equal to the original's
        assert volume.size == original.size and volume.dtype == original.dtype
        assert np.allclose(volume.spacing, original.spacing, atol=1e-5)
        assert np.allclose(volume.origin, original.origin, atol=1e-4)
        assert np.allclose(volume.direction, original.direction, atol=1e-6)
        # voxels: exactly those of the local decode made when archiving (its SHA-256 is in the
        # object), within the codec's loss of the original
        assert obj.voxel_sha256(volume) == made["voxel_sha256"]
        error = np.abs(volume.array - original.array)
        span = float(original.array.max() - original.array.min())
        assert float(error.mean()) < 0.1 * span, (uid, float(error.mean()), span)  # 256x: CT ≈ 2 %, MR ≈ 5 %
        # key tags: same patient and study, a new series, marked lossy
        first_file = files[0]
        source_first = pydicom.dcmread(sorted(source_dir.iterdir())[0], stop_before_pixels=True)
        assert first_file.PatientID == source_first.PatientID
        assert first_file.StudyInstanceUID == source_first.StudyInstanceUID == study
        assert first_file.SeriesInstanceUID not in (uid, made["object_series_uid"])
        assert first_file.LossyImageCompression == "01" and "DEEPSTD" in first_file.LossyImageCompressionMethod
        assert len(files) == original.size[2]
    # and one exact comparison with a decode made here, of the payload the server holds (the MR: quick)
    made = objects[mr_uid]
    payload = obj.unwrap(server.retrieve_instance(made["study_uid"], made["object_series_uid"], made["object_sop_uid"]))
    local = codec.decode(payload)
    assert np.array_equal(local.to_dtype_array(), read(tmp_path / f"restored-{mr_uid}").to_dtype_array())


def dciodvfy_errors(path) -> list:
    import shutil
    import subprocess

    tool = shutil.which("dciodvfy")
    if tool is None:
        if REQUIRE_DATA:
            pytest.fail("dciodvfy (dicom3tools) is not installed and DEEPSTD_REQUIRE_DATA=1")
        return []
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
