"""The admin HTTP API and /metrics of a running node (issue 10, items 1, 2 and 4): a real
`dicomnode serve` process, a real DCMTK storescu, plain HTTP over loopback."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, wait_for
from node_helpers import NodeProcess, storescu, write_series

pytestmark = pytest.mark.peers


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, method="POST", data=b"", headers={"Authorization": f"Bearer {token}"} if token else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample of the Prometheus text (0 when absent)."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(\{[^}]*\})?") + r" ([0-9.e+-]+)"
    m = re.search(r"^" + pattern + "$", text, re.M)
    return float(m.group(m.lastindex)) if m else 0.0


@pytest.fixture
def node(tmp_path, tiny_bundle):
    http_port = free_port()
    n = NodeProcess(
        tmp_path / "data",
        tiny_bundle,
        quiet_seconds=1.0,
        extra_args=["--http-port", str(http_port), "--http-bind", "127.0.0.1"],
    ).start()
    n.url = f"http://127.0.0.1:{http_port}"
    yield n
    n.stop()


def test_health_readiness_tables_metrics_and_actions(node, tmp_path: Path):
    assert any(f"admin API and metrics on {node.url}" in line for line in node.log)
    assert _get(node.url + "/healthz") == (200, b'{"status":"alive"}')
    # Ready only once the bundle is loaded and warmed up (and the rest is fine).
    status, body = wait_for(
        lambda: (lambda r: r if r[0] == 200 else None)(_get(node.url + "/readyz")), 60, what="/readyz to turn green"
    )
    checks = json.loads(body)["checks"]
    assert set(checks) == {"database", "storage", "model_bundle", "listener"}
    assert checks["model_bundle"]["name"] and len(checks["model_bundle"]["sha256"]) == 64
    _, spec = _get(node.url + "/openapi.json")
    paths = json.loads(spec)["paths"]
    assert {"/api/series", "/api/jobs", "/api/deliveries", "/api/jobs/{job_id}/retry", "/metrics"} <= set(paths)

    _, before = _get(node.url + "/metrics")
    assert _metric(before.decode(), "dicomnode_instances_received_total", 'calling_ae="SCANNER"') == 0
    assert "dicomnode_model_bundle_info{" in before.decode()

    series = write_series(tmp_path / "in", n_slices=20, size=64)  # noise, not a chest CT: skipped
    sent = storescu(node.port, series.paths)
    assert sent.returncode == 0, sent.stdout + sent.stderr

    def skipped_job():
        _, body = _get(node.url + "/api/jobs?state=skipped")
        items = json.loads(body)["items"]
        return items[0] if items else None

    job = wait_for(skipped_job, 120, interval=0.3, what="the job to be skipped")
    assert "not a chest CT" in job["reason"]
    _, text = _get(node.url + "/metrics")
    text = text.decode()
    assert _metric(text, "dicomnode_instances_received_total", 'calling_ae="SCANNER"') == 20
    assert _metric(text, "dicomnode_bytes_received_total", 'calling_ae="SCANNER"') > 20 * 64 * 64
    assert _metric(text, "dicomnode_jobs", 'state="skipped"') == 1
    assert _metric(text, "dicomnode_disk_free_bytes") > 0
    _, series_page = _get(node.url + "/api/series?limit=5")
    page = json.loads(series_page)
    assert page["total"] == 1 and page["items"][0]["series_uid"] == series.series_uid
    assert page["items"][0]["instance_count"] == 20
    assert _get(node.url + "/api/jobs?state=bogus")[0] == 422

    # Actions: a skipped job can be retried; cancelling a job that is not queued is refused.
    assert _post(f"{node.url}/api/jobs/{job['id']}/cancel")[0] == 409
    code, answer = _post(f"{node.url}/api/jobs/{job['id']}/retry")
    assert code == 200 and answer["state"] == "queued"
    wait_for(
        lambda: (lambda j: j if j and j["attempts"] == 1 else None)(skipped_job()),
        120,
        interval=0.3,
        what="the retried job to run again",
    )
    assert _post(f"{node.url}/api/jobs/999/retry")[0] == 409
    # No patient identity anywhere in what the API says.
    for path in ("/api/series", "/api/jobs", "/api/deliveries", "/metrics"):
        body = _get(node.url + path)[1].decode()
        assert "PHANTOM" not in body and "Patient" not in body


def test_token_is_required_when_configured_and_off_loopback(tmp_path, tiny_bundle):
    http_port = free_port()
    node = NodeProcess(
        tmp_path / "data",
        tiny_bundle,
        extra_args=["--http-port", str(http_port)],
        env={"DICOMNODE_HTTP_TOKEN": "s3cret-token"},
    ).start()
    try:
        url = f"http://127.0.0.1:{http_port}"
        assert _get(url + "/healthz")[0] == 200  # the process probe stays open
        assert _get(url + "/api/jobs")[0] == 401
        assert _get(url + "/metrics", token="wrong")[0] == 401
        assert _get(url + "/api/jobs", token="s3cret-token")[0] == 200
        assert "s3cret-token" not in "\n".join(node.log)
    finally:
        node.stop()
    # Bound beyond loopback without a token: the node refuses to start, and says why.
    refused = NodeProcess(
        tmp_path / "data2",
        tiny_bundle,
        extra_args=["--http-port", str(free_port()), "--http-bind", "0.0.0.0"],
        env={"DICOMNODE_HTTP_TOKEN": ""},
    )
    with pytest.raises(AssertionError, match="DICOMNODE_HTTP_TOKEN"):
        refused.start()


def _dashboard_driver_missing() -> str | None:
    import shutil

    from ohif.harness import CHROMIUM, PLAYWRIGHT

    if not Path(CHROMIUM).is_file():
        return f"chromium not found at {CHROMIUM}"
    if shutil.which("node") is None:
        return "node not found"
    if not PLAYWRIGHT.is_file():
        return "playwright-core missing: run tests/ohif/setup.sh"
    return None


def test_dashboard_shows_what_an_admin_needs_and_its_retry_button_works(node, tmp_path: Path):
    """The page in headless chromium: readiness and model, the failed/skipped job with its
    reason and a retry button that works, the job's timeline, the series; no patient identity."""
    import subprocess

    missing = _dashboard_driver_missing()
    if missing:
        pytest.skip(missing)
    from ohif.harness import CHROMIUM

    wait_for(lambda: _get(node.url + "/readyz")[0] == 200, 60, what="/readyz to turn green")
    series = write_series(tmp_path / "in", n_slices=20, size=64)
    assert storescu(node.port, series.paths).returncode == 0

    def skipped():
        items = json.loads(_get(node.url + "/api/jobs?state=skipped")[1])["items"]
        return items[0] if items else None

    job = wait_for(skipped, 120, interval=0.3, what="the job to be skipped")
    driver = Path(__file__).with_name("dashboard_driver.js")
    options = {
        "url": node.url + "/dashboard",
        "outDir": str(tmp_path),
        "clickRetryOfJob": job["id"],
        "timelineOfJob": job["id"],
        "chromium": CHROMIUM,
    }
    proc = subprocess.run(["node", str(driver), json.dumps(options)], capture_output=True, text=True, timeout=120)
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert report["ok"], report
    before = report["before"]
    assert "node ready" in before["summary"] and "model" in before["summary"]
    (failure,) = [r for r in before["failures"] if r[0] == str(job["id"])]
    assert failure[2] == "skipped" and "not a chest CT" in failure[3] and failure[4] == "retry"
    assert any(r[0] == series.series_uid and r[2] == "skipped" and r[3] == "20" for r in before["series"])
    timeline = report["timeline"]
    assert "first instance received" in timeline and "series complete" in timeline and "job skipped" in timeline
    wait_for(
        lambda: any(f"admin: job {job['id']} -> queued" in line for line in node.log),
        10,
        what="the retry to reach the node",
    )
    assert report["errors"] == []
    page_text = json.dumps(report)
    assert "PHANTOM" not in page_text and "Patient" not in page_text
    assert Path(report["screenshot"]).stat().st_size > 10_000


def test_urgent_series_are_marked_and_counted(tmp_path, tiny_bundle):
    """Issue 10, item 5: a series from a calling AE the rules name is urgent; the API, the
    timeline and the metrics say so, a routine one stays routine (real storescu senders)."""
    from node_helpers import TEST_CONFIG, write_test_config

    config = write_test_config(
        tmp_path / "config",
        TEST_CONFIG.replace("[pipeline]", '[selection.urgent]\ncalling_ae_titles = ["ER_CT"]\n[pipeline]'),
    )
    http_port = free_port()
    node = NodeProcess(
        tmp_path / "data",
        tiny_bundle,
        quiet_seconds=1.0,
        config=config,
        extra_args=["--http-port", str(http_port), "--http-bind", "127.0.0.1"],
    ).start()
    try:
        url = f"http://127.0.0.1:{http_port}"
        routine = write_series(tmp_path / "routine", n_slices=16, size=48, seed=1)
        urgent = write_series(tmp_path / "urgent", n_slices=16, size=48, seed=2)
        for series, sender in ((routine, "CT_WARD"), (urgent, "ER_CT")):
            sent = storescu(node.port, series.paths, calling_ae=sender)
            assert sent.returncode == 0, sent.stdout + sent.stderr

        def both_jobs():
            items = json.loads(_get(url + "/api/jobs")[1])["items"]
            return {j["series_uid"]: j for j in items} if len(items) == 2 else None

        jobs = wait_for(both_jobs, 60, interval=0.3, what="two jobs")
        assert jobs[urgent.series_uid]["urgent"] == "sent by ER_CT"
        assert jobs[routine.series_uid]["urgent"] is None
        timeline = json.loads(_get(f"{url}/api/jobs/{jobs[urgent.series_uid]['id']}/timeline")[1])
        assert any("urgent: sent by ER_CT" in e["what"] for e in timeline["events"])
        assert "dicomnode_queue_urgent " in _get(url + "/metrics")[1].decode()
        assert any("urgent (sent by ER_CT)" in line for line in node.log)
    finally:
        node.stop()


def test_the_audit_trail_records_who_sent_what_and_what_admins_did(node, tmp_path: Path):
    """Issue 9: associations (accepted, refused), instances per series, jobs, admin actions
    as JSON lines with UIDs only; `status --audit` shows them."""
    import subprocess
    import sys

    from conftest import REPO_ROOT

    series = write_series(tmp_path / "in", n_slices=20, size=64)  # noise: its job is skipped
    assert storescu(node.port, series.paths).returncode == 0
    assert storescu(node.port, series.paths[:1], called_ae="SOMEONE").returncode != 0

    def skipped_job():
        items = json.loads(_get(node.url + "/api/jobs?state=skipped")[1])["items"]
        return items[0] if items else None

    job = wait_for(skipped_job, 120, interval=0.3, what="the job to be skipped")
    assert _post(f"{node.url}/api/jobs/{job['id']}/retry")[0] == 200
    audit_file = node.data_dir / "audit" / "audit.jsonl"

    def events():
        lines = [json.loads(line) for line in audit_file.read_text().splitlines()] if audit_file.is_file() else []
        return lines if any(e["event"] == "admin" for e in lines) else None

    lines = wait_for(events, 30, what="the admin action in the audit trail")
    kinds = {(e["event"], e["outcome"]) for e in lines}
    assert {
        ("association", "accepted"),
        ("association", "refused"),
        ("instances_received", "success"),
        ("job", "skipped"),
        ("admin", "success"),
    } <= kinds, kinds
    received = [e for e in lines if e["event"] == "instances_received"][0]
    assert received["series_uid"] == series.series_uid and received["instances"] == 20
    assert received["calling_ae"] == "SCANNER" and received["event_id"].startswith("DCM 110104")
    refused = [e for e in lines if e["outcome"] == "refused"][0]
    assert "SOMEONE" in refused["reason"] and refused["address"] == "127.0.0.1"
    text = audit_file.read_text()
    assert "PHANTOM" not in text and "PatientName" not in text  # UIDs only
    out = subprocess.run(
        [sys.executable, "-m", "dicomnode.cli", "status", "--data-dir", str(node.data_dir), "--audit", "50"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "audit trail" in out.stdout and "instances_received" in out.stdout
