"""A private Orthanc for tests and trials: started on free localhost ports with its storage in a
folder of its own, the DICOMweb plugin loaded, remote access and authentication off, and stopped
afterwards. Nothing global is touched (no service, no system configuration).

    with local_orthanc(folder) as server:      # server.dicomweb: http://127.0.0.1:PORT/dicom-web
        archive(server.dicomweb, …)

Debian/Ubuntu: `apt-get install orthanc orthanc-dicomweb` (the packaged service need not run).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from .client import PacsError

#: where distributions put the DICOMweb plugin
PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
    "/usr/lib/*/orthanc/libOrthancDicomWeb.so*",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/local/lib/orthanc/libOrthancDicomWeb.so*",
)


def find_orthanc() -> Optional[str]:
    """The Orthanc executable, or None."""
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if os.access(p, os.X_OK)), None)


def find_dicomweb_plugin() -> Optional[str]:
    """The DICOMweb plugin library, or None."""
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LocalOrthanc:
    process: subprocess.Popen
    folder: Path
    http_port: int
    dicom_port: int
    aet: str

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.rest}/dicom-web"

    @property
    def log(self) -> Path:
        return self.folder / "orthanc.log"


def config(folder: Path, http_port: int, dicom_port: int, aet: str, plugin: str) -> dict:
    """The configuration file's content (docs/PACS.md shows it)."""
    return {
        "Name": aet,
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpThreadsCount": 8,
        "ConcurrentJobs": 1,
        "StableAge": 1,
        "SaveJobs": False,
    }


@contextlib.contextmanager
def local_orthanc(folder, aet: str = "DEEPSTDTEST", startup_s: float = 60.0) -> Iterator[LocalOrthanc]:
    """Start Orthanc with its storage under `folder` on free ports; stop it on leaving."""
    import requests

    binary, plugin = find_orthanc(), find_dicomweb_plugin()
    if binary is None or plugin is None:
        missing = "Orthanc" if binary is None else "the Orthanc DICOMweb plugin"
        raise PacsError(f"{missing} is not installed (Debian: apt-get install orthanc orthanc-dicomweb)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config(folder, http_port, dicom_port, aet, plugin), indent=2))
    with open(folder / "orthanc.log", "wb") as log:
        process = subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    server = LocalOrthanc(process, folder, http_port, dicom_port, aet)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                tail = server.log.read_text(errors="replace")[-600:]
                raise PacsError(f"Orthanc exited at start (status {process.returncode}): {' '.join(tail.split())}")
            try:
                if requests.get(f"{server.dicomweb}/studies", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise PacsError(f"Orthanc did not answer within {startup_s:g} s (log: {server.log})")
            time.sleep(0.2)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
