"""DICOM TLS (issue 9): the listener with a certificate, client certificates checked
against a CA, and deliveries over TLS, with real DCMTK peers (storescu / storescp built
with OpenSSL) and certificates made by the openssl command for the test."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from dicomnode.config import Destination, NodeSection
from dicomnode.scp import StorageSCP
from dicomnode.store import InstanceStore

from conftest import free_port, require_tool, wait_for
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
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Test CA",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            cwd=d,
        )
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "stranger.key",
        "-out",
        "stranger.pem",
        "-days",
        "2",
        "-subj",
        "/CN=stranger",
        cwd=d,
    )
    return d


def _storescu_tls(
    port: int, files, pki: Path, key: str | None, cert: str | None, calling_ae: str = "SCANNER"
) -> subprocess.CompletedProcess:
    exe = require_tool("storescu")
    tls = ["+tls", str(pki / key), str(pki / cert)] if key else ["+tla"]
    return subprocess.run(
        [
            exe,
            *tls,
            "+cf",
            str(pki / "ca.pem"),
            "-aet",
            calling_ae,
            "-aec",
            "COVIDNODE",
            "127.0.0.1",
            str(port),
            *[str(f) for f in files],
        ],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _plain_storescu(port: int, path: Path, calling_ae: str = "SCANNER") -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_tool("storescu"), "-aet", calling_ae, "-aec", "COVIDNODE", "127.0.0.1", str(port), str(path)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_tls_listener_checks_client_certificates_and_their_ae_titles(tmp_path, pki):
    """TLS on its own port, the plain port switched off; client certificates required, the
    client certificate's subject may only call as the AE titles it is mapped to."""
    node = NodeSection(
        ae_title="COVIDNODE",
        port=0,
        tls_port=free_port(),
        bind_address="127.0.0.1",
        min_free_mb=0,
        tls_cert_file=pki / "server.pem",
        tls_key_file=pki / "server.key",
        tls_ca_file=pki / "ca.pem",
        tls_require_client_cert=True,
        tls_client_subjects={"client": ["SCANNER"]},
    )
    stored: list[str] = []
    scp = StorageSCP(node, InstanceStore(tmp_path / "storage", 0), lambda info, rel: stored.append(info.sop_uid))
    scp.start()
    try:
        assert scp.tls_port == node.tls_port and scp.port == node.tls_port  # no plain listener
        series = write_series(tmp_path / "in", n_slices=3, size=32)
        ok = _storescu_tls(scp.tls_port, series.paths, pki, "client.key", "client.pem")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert len(stored) == 3
        # Plain DICOM on the TLS port, no client certificate, a certificate of another CA, and
        # the right certificate claiming another AE title: refused, nothing stored.
        assert _plain_storescu(scp.tls_port, series.paths[0]).returncode != 0
        assert _storescu_tls(scp.tls_port, series.paths[:1], pki, None, None).returncode != 0
        assert _storescu_tls(scp.tls_port, series.paths[:1], pki, "stranger.key", "stranger.pem").returncode != 0
        assert (
            _storescu_tls(
                scp.tls_port, series.paths[:1], pki, "client.key", "client.pem", calling_ae="OTHER"
            ).returncode
            != 0
        )
        assert len(stored) == 3
    finally:
        scp.stop()


def test_plain_and_tls_listeners_side_by_side(tmp_path, pki):
    """Both ports: plain DICOM on one, TLS without client certificates on the other."""
    node = NodeSection(
        ae_title="COVIDNODE",
        port=free_port(),
        tls_port=free_port(),
        bind_address="127.0.0.1",
        min_free_mb=0,
        tls_cert_file=pki / "server.pem",
        tls_key_file=pki / "server.key",
    )
    stored: list[str] = []
    scp = StorageSCP(node, InstanceStore(tmp_path / "storage", 0), lambda info, rel: stored.append(info.sop_uid))
    scp.start()
    try:
        series = write_series(tmp_path / "in", n_slices=2, size=32)
        assert _plain_storescu(scp.port, series.paths[0]).returncode == 0
        anonymous = _storescu_tls(scp.tls_port, series.paths[1:], pki, None, None)
        assert anonymous.returncode == 0, anonymous.stdout + anonymous.stderr
        assert len(stored) == 2
    finally:
        scp.stop()


def test_bad_tls_files_are_config_problems(tmp_path, pki):
    from dicomnode.config import config_from_dict
    from dicomnode.errors import ConfigError

    with pytest.raises(ConfigError, match="tls_cert_file/tls_key_file cannot be loaded"):
        config_from_dict(
            {
                "node": {
                    "data_dir": str(tmp_path / "d"),
                    "tls_port": 2762,
                    "tls_cert_file": str(pki / "server.pem"),
                    "tls_key_file": str(pki / "client.key"),
                }
            },
            tmp_path,
        )
    with pytest.raises(ConfigError, match="tls_port is 0"):
        config_from_dict(
            {
                "node": {
                    "data_dir": str(tmp_path / "d"),
                    "tls_cert_file": str(pki / "server.pem"),
                    "tls_key_file": str(pki / "server.key"),
                }
            },
            tmp_path,
        )
    with pytest.raises(ConfigError, match="set tls = true"):
        config_from_dict(
            {
                "node": {"data_dir": str(tmp_path / "d")},
                "destinations": [
                    {"ae_title": "PACS", "host": "127.0.0.1", "port": 104, "tls_ca_file": str(pki / "ca.pem")}
                ],
            },
            tmp_path,
        )
    assert Destination(ae_title="PACS", host="h", port=1, tls=True).tls


class _TlsStoreSCP:
    """DCMTK storescp with TLS (server certificate, client certificates required)."""

    def __init__(self, out: Path, pki: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [
                require_tool("storescp"),
                "+tls",
                str(pki / "server.key"),
                str(pki / "server.pem"),
                "+cf",
                str(pki / "ca.pem"),
                "-aet",
                "PACS",
                "-od",
                str(out),
                "-uf",
                "-v",
                str(self.port),
            ],
            env=DCMTK_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=lambda: [self.lines.append(line) for line in self.proc.stdout], daemon=True).start()
        self.out = out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def test_results_are_delivered_over_tls(tmp_path, pki, tiny_bundle):
    """`serve --tls-port ... --tls-require-client-cert`: the node receives over TLS and
    delivers its results to a TLS-only PACS (its destination in the config file)."""
    pacs = _TlsStoreSCP(tmp_path / "pacs", pki)
    dest = (
        f'\n[[destinations]]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs.port}\ntls = true\n'
        f'tls_ca_file = "{pki / "ca.pem"}"\ntls_cert_file = "{pki / "client.pem"}"\n'
        f'tls_key_file = "{pki / "client.key"}"\n'
    )
    config = write_test_config(tmp_path / "config", TEST_CONFIG + dest)
    tls_port = free_port()
    node = NodeProcess(
        tmp_path / "data",
        tiny_bundle,
        config=config,
        extra_args=[
            "--tls-port",
            str(tls_port),
            "--tls-cert",
            str(pki / "server.pem"),
            "--tls-key",
            str(pki / "server.key"),
            "--tls-ca",
            str(pki / "ca.pem"),
            "--tls-require-client-cert",
        ],
    ).start()
    try:
        assert any(f"DICOM TLS on 127.0.0.1:{tls_port} (client certificates required)" in line for line in node.log)
        from dicomnode.synthetic import write_ct_series
        from pipeline.phantom import make_phantom

        series = write_ct_series(make_phantom("covid19", 5, n_slices=20, size_px=64).volume, tmp_path / "ct")
        sent = _storescu_tls(tls_port, series.paths, pki, "client.key", "client.pem")
        assert sent.returncode == 0, sent.stdout + sent.stderr

        def kinds():  # storescp names files by modality: SR3 (3D SR), SG (SEG), SC, KO
            found = {p.name.split(".")[0] for p in (tmp_path / "pacs").glob("*")}
            return found if {"SR3", "SG"} <= found else None

        wait_for(kinds, 240, interval=0.5, what="the report and the lung SEG delivered over TLS")
    finally:
        node.stop()
        pacs.stop()


def test_orthanc_routes_over_dicom_tls_both_ways(tmp_path, pki, tiny_bundle):
    """Orthanc as a TLS-only PACS (its own DICOM TLS, client certificates required): it
    sends a CT to the node's TLS port, the node sends its results back over TLS."""
    from dicomnode.synthetic import write_ct_series
    from pipeline.phantom import make_phantom

    from orthanc import orthanc_missing_reason, running_orthanc

    reason = orthanc_missing_reason(dicomweb=False)
    if reason:
        pytest.skip(reason)
    tls_port = free_port()
    orthanc_tls = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pki / "server.pem"),
        "DicomTlsPrivateKey": str(pki / "server.key"),
        "DicomTlsTrustedCertificates": str(pki / "ca.pem"),
        "DicomTlsRemoteCertificateRequired": True,
        "DicomModalities": {"node": {"AET": "COVIDNODE", "Host": "127.0.0.1", "Port": tls_port, "UseDicomTls": True}},
    }
    with running_orthanc(tmp_path, aet="PACS", dicomweb=False, extra_config=orthanc_tls) as pacs:
        dest = (
            f'\n[[destinations]]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs.dicom_port}\ntls = true\n'
            f'tls_ca_file = "{pki / "ca.pem"}"\ntls_cert_file = "{pki / "client.pem"}"\n'
            f'tls_key_file = "{pki / "client.key"}"\n'
        )
        config = write_test_config(tmp_path / "config", TEST_CONFIG + dest)
        node = NodeProcess(
            tmp_path / "data",
            tiny_bundle,
            config=config,
            extra_args=[
                "--port",
                "0",
                "--tls-port",
                str(tls_port),
                "--tls-cert",
                str(pki / "server.pem"),
                "--tls-key",
                str(pki / "server.key"),
                "--tls-ca",
                str(pki / "ca.pem"),
                "--tls-require-client-cert",
            ],
        )
        node.start()  # the last --port wins: 0, the plain port off
        try:
            assert any("listening on no plain port" in line and "DICOM TLS" in line for line in node.log)
            series = write_ct_series(make_phantom("covid19", 6, n_slices=20, size_px=64).volume, tmp_path / "ct")
            for path in series.paths:
                pacs.upload(path.read_bytes())
            study = pacs.find_study(series.study_uid)
            pacs.post_json("/modalities/node/store", {"Resources": [study], "Synchronous": True})

            def results():
                kinds = {s["MainDicomTags"].get("Modality") for s in pacs.series_of_study(series.study_uid)}
                return kinds if {"SR", "SEG"} <= kinds else None

            wait_for(results, 240, interval=1.0, what="the node's results back in Orthanc over TLS")
        finally:
            node.stop()
