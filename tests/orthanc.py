"""Run Debian's Orthanc as a real PACS on loopback for tests.

Usage::

    from orthanc import orthanc_missing_reason, running_orthanc  # tests/ is on sys.path (conftest)

    pytestmark = pytest.mark.skipif(orthanc_missing_reason() is not None,
                                    reason=orthanc_missing_reason() or "")

    with running_orthanc(tmp_path, aet="PACS", dicomweb=True) as pacs:
        pacs.dicom_port, pacs.http_url, pacs.dicomweb_url
        pacs.get_json("/studies")

Orthanc gets its own configuration, storage and index under a folder of ``tmp_path``,
free HTTP and DICOM ports on 127.0.0.1, and is stopped (SIGTERM, then SIGKILL) when
the block ends. Readiness is found by polling its REST API and its DICOM port, never
by sleeping a fixed time. Only the standard library is used, so any test can import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

#: Where Debian installs the Orthanc server binary (it is in /usr/sbin, often not on PATH).
ORTHANC_BINARIES = ("Orthanc", "/usr/sbin/Orthanc")
#: Where Debian's ``orthanc-dicomweb`` puts the DICOMweb plugin; the environment
#: variable ORTHANC_DICOMWEB_PLUGIN overrides it on other systems.
DICOMWEB_PLUGIN_PATHS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7",
)
LOOPBACK = "127.0.0.1"


class OrthancError(RuntimeError):
    """Orthanc could not be started, or a REST call to it failed."""


def find_orthanc_binary() -> str | None:
    """Path of the Orthanc executable, or None when it is not installed."""
    env = os.environ.get("ORTHANC_BINARY")
    if env:
        return env if Path(env).is_file() else None
    for name in ORTHANC_BINARIES:
        found = shutil.which(name) or (name if Path(name).is_file() else None)
        if found:
            return found
    return None


def find_dicomweb_plugin() -> str | None:
    """Path of the DICOMweb plugin shared library, or None when it is not installed."""
    env = os.environ.get("ORTHANC_DICOMWEB_PLUGIN")
    candidates = (env,) if env else DICOMWEB_PLUGIN_PATHS
    for path in candidates:
        if path and Path(path).is_file():
            return path
    return None


def orthanc_missing_reason(dicomweb: bool = False) -> str | None:
    """Why Orthanc cannot be run here (for ``pytest.skip``), or None when it can."""
    if find_orthanc_binary() is None:
        return "Orthanc is not installed (Debian package 'orthanc'; .ci/run installs it)"
    if dicomweb and find_dicomweb_plugin() is None:
        return (
            "Orthanc's DICOMweb plugin is not installed (Debian package 'orthanc-dicomweb'; "
            "or set ORTHANC_DICOMWEB_PLUGIN to the .so)"
        )
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class OrthancServer:
    """A running Orthanc: where to reach it, plus small REST helpers."""

    http_url: str  # e.g. http://127.0.0.1:8042 (no trailing slash)
    dicom_port: int
    aet: str
    host: str
    work_dir: Path  # configuration, storage, index and log live here
    log_path: Path
    dicomweb: bool

    @property
    def dicomweb_url(self) -> str:
        """Root of the DICOMweb API (QIDO-RS/WADO-RS/STOW-RS), no trailing slash."""
        if not self.dicomweb:
            raise OrthancError("this Orthanc was started without the DICOMweb plugin (dicomweb=False)")
        return f"{self.http_url}/dicom-web"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> bytes:
        """One HTTP call to ``http_url + path``; raises OrthancError with Orthanc's answer."""
        url = path if path.startswith("http") else f"{self.http_url}{path}"
        req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:500].decode("utf-8", "replace")
            raise OrthancError(f"Orthanc {method} {path} answered HTTP {e.code}: {detail}") from e
        except urllib.error.URLError as e:
            raise OrthancError(
                f"Orthanc {method} {path} failed: {e.reason} (is it running? log: {self.log_path})"
            ) from e

    def get_json(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def get_bytes(self, path: str) -> bytes:
        return self.request("GET", path)

    def post_json(self, path: str, payload: Any) -> Any:
        answer = self.request("POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        return json.loads(answer) if answer else None

    def upload(self, dicom_bytes: bytes) -> Any:
        """Store one DICOM file over REST (POST /instances); returns Orthanc's answer."""
        return json.loads(self.request("POST", "/instances", dicom_bytes, {"Content-Type": "application/dicom"}))

    def studies(self) -> list[str]:
        """Orthanc ids of every stored study."""
        return list(self.get_json("/studies"))

    def find_study(self, study_uid: str) -> str | None:
        """Orthanc id of the study with this StudyInstanceUID, or None when not stored."""
        # /tools/lookup takes the raw UID as its body, not JSON.
        answer = json.loads(self.request("POST", "/tools/lookup", study_uid.encode()))
        ids = [a["ID"] for a in answer if a.get("Type") == "Study"]
        return ids[0] if ids else None

    def series_of_study(self, study_uid: str) -> list[dict]:
        """Every series of the study (Orthanc's expanded JSON: MainDicomTags, Instances...)."""
        study_id = self.find_study(study_uid)
        if study_id is None:
            return []
        return list(self.get_json(f"/studies/{study_id}/series"))

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file of one instance (Orthanc id), as bytes."""
        return self.get_bytes(f"/instances/{instance_id}/file")


def _write_config(
    work_dir: Path,
    aet: str,
    http_port: int,
    dicom_port: int,
    dicomweb: bool,
    modalities: Mapping[str, tuple[str, str, int]],
    extra: Mapping[str, Any],
) -> Path:
    plugin = find_dicomweb_plugin() if dicomweb else None
    config: dict[str, Any] = {
        "Name": f"test-{aet}",
        "StorageDirectory": str(work_dir / "storage"),
        "IndexDirectory": str(work_dir / "index"),
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        # Tests talk over loopback only; no credentials to manage.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "UnknownSopClassAccepted": False,
        "DicomModalities": {name: [a, h, p] for name, (a, h, p) in modalities.items()},
        # A test folder is thrown away: no job persistence, no compression, quick stability.
        "SaveJobs": False,
        "StorageCompression": False,
        "StableAge": 1,
        "HttpDescribeErrors": True,
        "Plugins": [plugin] if plugin else [],
    }
    if plugin:
        config["DicomWeb"] = {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        }
    config.update(extra)
    path = work_dir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # Orthanc closes its index cleanly on SIGTERM
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


@contextlib.contextmanager
def running_orthanc(
    tmp_path: Path,
    aet: str = "ORTHANC",
    dicomweb: bool = True,
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    extra_config: Mapping[str, Any] | None = None,
    start_timeout_s: float = 60.0,
) -> Iterator[OrthancServer]:
    """Start Orthanc on free loopback ports, yield an OrthancServer, stop it afterwards.

    ``modalities`` maps a name to (AE title, host, port) of peers Orthanc may send to
    (C-MOVE/C-STORE). ``extra_config`` entries override the generated configuration.
    Raises OrthancError (with the tail of Orthanc's log) if it does not come up.
    """
    binary = find_orthanc_binary()
    reason = orthanc_missing_reason(dicomweb)
    if binary is None or reason is not None:
        raise OrthancError(reason or "Orthanc is not installed")
    work_dir = Path(tmp_path) / f"orthanc-{aet}"
    last_error = ""
    # A free port may be taken by someone else between our probe and Orthanc's bind:
    # try a few times with new ports rather than fail the test.
    for attempt in range(3):
        attempt_dir = work_dir / f"attempt{attempt}"
        (attempt_dir / "logs").mkdir(parents=True, exist_ok=True)
        http_port, dicom_port = _free_port(), _free_port()
        while dicom_port == http_port:
            dicom_port = _free_port()
        config = _write_config(attempt_dir, aet, http_port, dicom_port, dicomweb, modalities or {}, extra_config or {})
        log_path = attempt_dir / "logs" / "orthanc.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [binary, "--no-jobs", str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=attempt_dir
            )
        server = OrthancServer(
            http_url=f"http://{LOOPBACK}:{http_port}",
            dicom_port=dicom_port,
            aet=aet,
            host=LOOPBACK,
            work_dir=attempt_dir,
            log_path=log_path,
            dicomweb=dicomweb,
        )
        try:
            if _wait_ready(server, proc, start_timeout_s):
                try:
                    yield server
                finally:
                    _stop(proc)
                return
            last_error = log_path.read_text(errors="replace")[-2000:]
        finally:
            _stop(proc)
    raise OrthancError(f"Orthanc did not start after 3 attempts; last log:\n{last_error}")


def _wait_ready(server: OrthancServer, proc: subprocess.Popen, timeout_s: float) -> bool:
    """Poll until /system answers and the DICOM port accepts; False if Orthanc exits."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            system = server.get_json("/system")
            if system.get("DicomAet") == server.aet and _port_open(server.dicom_port):
                if not server.dicomweb or _plugin_loaded(server):
                    return True
        except (OrthancError, ValueError):
            pass
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    return False


def _plugin_loaded(server: OrthancServer) -> bool:
    try:
        return "dicom-web" in server.get_json("/plugins")
    except OrthancError:
        return False
