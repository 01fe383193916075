"""DICOM TLS (issue 9): the listener with a certificate, client certificates checked
against a CA, and deliveries over TLS, with real DCMTK peers (storescu / storescp built
with OpenSSL) and certificates made by the openssl command for the test."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import free_port, require_tool, wait_for
from dicomnode.config import Destination, NodeSection
from dicomnode.scp import StorageSCP
from dicomnode.store import InstanceStore
from node_helpers import DCMTK_ENV, TEST_CONFIG, NodeProcess, write_series, write_test_config

pytestmark = pytest.mark.peers


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("openssl not installed")
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it,
    and a stranger's self-signed certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=Test CA", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "stranger.key", "-out", "stranger.pem",
             "-days", "2", "-subj", "/CN=stranger", cwd=d)
    return d


def _storescu_tls(port: int, files, pki: Path, key: str | None, cert: str | None) -> subprocess.CompletedProcess:
    exe = require_tool("storescu")
    tls = ["+tls", str(pki / key), str(pki / cert)] if key else ["+tla"]
    return subprocess.run([exe, *tls, "+cf", str(pki / "ca.pem"), "-aet", "SCANNER", "-aec", "COVIDNODE",
                           "127.0.0.1", str(port), *[str(f) for f in files]],
                          env=DCMTK_ENV, capture_output=True, text=True, timeout=60)


def test_the_listener_speaks_tls_and_checks_client_certificates(tmp_path, pki):
    node = NodeSection(ae_title="COVIDNODE", port=free_port(), bind_address="127.0.0.1", min_free_mb=0,
                       tls_cert_file=pki / "server.pem", tls_key_file=pki / "server.key", tls_ca_file=pki / "ca.pem")
    stored: list[str] = []
    scp = StorageSCP(node, InstanceStore(tmp_path / "storage", 0), lambda info, rel: stored.append(info.sop_uid))
    scp.start()
    try:
        series = write_series(tmp_path / "in", n_slices=3, size=32)
        ok = _storescu_tls(scp.port, series.paths, pki, "client.key", "client.pem")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert len(stored) == 3
        # Plain DICOM, no client certificate, a certificate of another CA: refused, nothing stored.
        plain = subprocess.run([require_tool("storescu"), "-aet", "SCANNER", "-aec", "COVIDNODE", "127.0.0.1",
                                str(scp.port), str(series.paths[0])], env=DCMTK_ENV, capture_output=True, text=True,
                               timeout=60)
        assert plain.returncode != 0
        assert _storescu_tls(scp.port, series.paths[:1], pki, None, None).returncode != 0
        assert _storescu_tls(scp.port, series.paths[:1], pki, "stranger.key", "stranger.pem").returncode != 0
        assert len(stored) == 3
    finally:
        scp.stop()


def test_bad_tls_files_are_config_problems(tmp_path, pki):
    from dicomnode.config import config_from_dict
    from dicomnode.errors import ConfigError

    with pytest.raises(ConfigError, match="tls_cert_file/tls_key_file cannot be loaded"):
        config_from_dict({"node": {"data_dir": str(tmp_path / "d"), "tls_cert_file": str(pki / "server.pem"),
                                   "tls_key_file": str(pki / "client.key")}}, tmp_path)
    with pytest.raises(ConfigError, match="set tls = true"):
        config_from_dict({"node": {"data_dir": str(tmp_path / "d")}, "destinations": [
            {"ae_title": "PACS", "host": "127.0.0.1", "port": 104, "tls_ca_file": str(pki / "ca.pem")}]}, tmp_path)
    assert Destination(ae_title="PACS", host="h", port=1, tls=True).tls


class _TlsStoreSCP:
    """DCMTK storescp with TLS (server certificate, client certificates required)."""

    def __init__(self, out: Path, pki: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [require_tool("storescp"), "+tls", str(pki / "server.key"), str(pki / "server.pem"), "+cf",
             str(pki / "ca.pem"), "-aet", "PACS", "-od", str(out), "-uf", "-v", str(self.port)],
            env=DCMTK_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=lambda: [self.lines.append(line) for line in self.proc.stdout], daemon=True).start()
        self.out = out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def test_results_are_delivered_over_tls(tmp_path, pki, tiny_bundle):
    """The node receives over TLS and delivers its results to a TLS-only PACS."""
    pacs = _TlsStoreSCP(tmp_path / "pacs", pki)
    node_tls = (f'tls_cert_file = "{pki / "server.pem"}"\ntls_key_file = "{pki / "server.key"}"\n'
                f'tls_ca_file = "{pki / "ca.pem"}"\n')
    dest = (f'\n[[destinations]]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs.port}\ntls = true\n'
            f'tls_ca_file = "{pki / "ca.pem"}"\ntls_cert_file = "{pki / "client.pem"}"\n'
            f'tls_key_file = "{pki / "client.key"}"\n')
    config = write_test_config(tmp_path / "config", TEST_CONFIG.replace("min_free_mb = 0\n",
                                                                        "min_free_mb = 0\n" + node_tls) + dest)
    node = NodeProcess(tmp_path / "data", tiny_bundle, config=config).start()
    try:
        from pipeline.phantom import make_phantom
        from dicomnode.synthetic import write_ct_series

        series = write_ct_series(make_phantom("covid19", 5, n_slices=20, size_px=64).volume, tmp_path / "ct")
        sent = _storescu_tls(node.port, series.paths, pki, "client.key", "client.pem")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        def kinds():  # storescp names files by modality: SR3 (3D SR), SG (SEG), SC, KO
            found = {p.name.split(".")[0] for p in (tmp_path / "pacs").glob("*")}
            return found if {"SR3", "SG"} <= found else None

        wait_for(kinds, 240, interval=0.5, what="the report and the lung SEG delivered over TLS")
    finally:
        node.stop()
        pacs.stop()
