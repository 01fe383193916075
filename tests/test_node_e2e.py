"""End to end with real peers: `dicomnode serve` as a subprocess, DCMTK storescu as the
scanner, DCMTK storescp as the PACS; every received object passes dciodvfy; compressed
transfer syntaxes work; unusable series are skipped with their reason in `status`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless

from conftest import REPO_ROOT, require_tool, wait_for
from node_helpers import NodeProcess, StoreSCP, dciodvfy_errors, head_volume, storescu, write_series

pytestmark = [pytest.mark.peers, pytest.mark.slow]

N_SLICES = 24
SIZE = 96


def phantom_series(out: Path, seed: int, **kwargs):
    from dicomnode.synthetic import write_ct_series
    from pipeline.phantom import make_phantom

    phantom = make_phantom("covid19", seed=seed, n_slices=N_SLICES, size_px=SIZE)
    return write_ct_series(phantom.volume, out, **kwargs)


def delivered_objects(node: NodeProcess) -> dict[str, str]:
    """SOP Instance UID -> kind of every object the node recorded as sent."""
    import sqlite3

    conn = sqlite3.connect(node.data_dir / "node.sqlite3")
    try:
        return dict(conn.execute("SELECT sop_uid, kind FROM deliveries WHERE state='sent'").fetchall())
    finally:
        conn.close()


def final(node: NodeProcess, count: int) -> list[dict]:
    """Wait until ``count`` jobs reached a final state; return them."""

    def done():
        status = node.status()
        skipped = [s for s in status["series"] if s["state"] == "skipped"]
        if skipped:
            pytest.fail(f"series skipped: {skipped[0]['reason']}\n{node.tail()}")
        jobs = status["jobs"]
        return jobs if len(jobs) >= count and all(j["state"] in ("done", "failed", "skipped") for j in jobs) else None

    return wait_for(done, 240, interval=0.3, what=f"{count} job(s) to finish")


@pytest.fixture()
def pacs(tmp_path):
    scp = StoreSCP(tmp_path / "pacs", "PACS").start()
    yield scp
    scp.stop()


@pytest.fixture()
def node_factory(tmp_path, tiny_bundle):
    started: list[NodeProcess] = []

    def make(destinations=(), quiet=1.0, data="data"):
        node = NodeProcess(tmp_path / data, tiny_bundle, destinations, quiet_seconds=quiet).start()
        started.append(node)
        return node

    yield make
    for n in started:
        n.stop()


def test_series_in_results_out_valid_dicom(tmp_path, pacs, node_factory):
    node = node_factory([f"PACS@127.0.0.1:{pacs.port}"])
    series = phantom_series(tmp_path / "in", seed=1)
    sent = storescu(node.port, series.paths)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    (job,) = final(node, 1)
    assert job["state"] == "done", node.tail()
    expected = delivered_objects(node)
    assert {"sr", "sc"} <= set(expected.values())
    wait_for(lambda: len(pacs.received_sop_uids()) >= len(expected), 30, what="storescp to store the results")
    uids = pacs.received_sop_uids()
    assert sorted(uids) == sorted(expected)  # each object once
    require_tool("dciodvfy")
    for path in pacs.files():
        assert dciodvfy_errors(path) == [], path.name
    # the results reference the source series
    sr = next(p for p in pacs.files() if dcmread(p, stop_before_pixels=True).Modality == "SR")
    assert dcmread(sr).StudyInstanceUID == series.study_uid
    # no patient names or IDs in the node's log
    log = "\n".join(node.log)
    assert "PHANTOM^DEMO" not in log and "PHANTOM-0001" not in log


def test_compressed_transfer_syntaxes_are_analysed(tmp_path, node_factory):
    """One series whose slices come in JPEG-LS, JPEG 2000 and JPEG lossless (a series may
    mix transfer syntaxes; each association proposes one): one job decodes all three."""
    node = node_factory(quiet=3.0)
    flags = {JPEGLSLossless: "-xt", JPEG2000Lossless: "-xv", JPEGLosslessSV1: "-xs"}
    plain = phantom_series(tmp_path / "in", seed=10)
    parts = [plain.paths[i::3] for i in range(3)]
    for part, ts in zip(parts, flags, strict=True):
        for path in part:
            if ts == JPEGLosslessSV1:  # pydicom cannot encode it: DCMTK's dcmcjpeg does
                subprocess.run([require_tool("dcmcjpeg"), "+e1", str(path), str(path) + ".j"], check=True)
                Path(str(path) + ".j").replace(path)
            else:
                ds = dcmread(path)
                ds.compress(ts)
                ds.save_as(path, enforce_file_format=True)
        sent = storescu(node.port, part, extra=[flags[ts]])
        assert sent.returncode == 0, sent.stdout + sent.stderr
    (job,) = final(node, 1)
    assert job["state"] == "done", node.tail()
    stored = [
        str(dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        for p in (node.data_dir / "storage").rglob("*.dcm")
    ]
    assert len(stored) == N_SLICES and set(stored) == {str(ts) for ts in flags}


def test_unusable_series_are_skipped_with_reasons_in_status(tmp_path, node_factory):
    node = node_factory(quiet=0.5)
    cases = {
        "mr": write_series(tmp_path / "mr", n_slices=20, modality="MR"),
        "few": write_series(tmp_path / "few", n_slices=5),
        "scout": write_series(tmp_path / "scout", n_slices=20, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
    }
    no_pixels = write_series(tmp_path / "nopix", n_slices=20)
    for path in no_pixels.paths:  # headers only: the loader must refuse, not crash
        ds = dcmread(path)
        del ds.PixelData
        ds.save_as(path, enforce_file_format=True)
    cases["nopix"] = no_pixels
    from dicomnode.synthetic import write_ct_series

    cases["head"] = write_ct_series(head_volume(), tmp_path / "head")
    # mixed patients: one series UID, two patient IDs
    a = write_series(
        tmp_path / "mixa",
        n_slices=10,
        seed=1,
        series_uid="1.2.826.0.1.3680043.10.1.77",
        study_uid="1.2.826.0.1.3680043.10.1.76",
        patient_id="A",
    )
    b = write_series(
        tmp_path / "mixb",
        n_slices=10,
        seed=2,
        series_uid="1.2.826.0.1.3680043.10.1.77",
        study_uid="1.2.826.0.1.3680043.10.1.76",
        patient_id="B",
    )
    for s in cases.values():
        assert storescu(node.port, s.paths).returncode == 0
    assert storescu(node.port, [*a.paths, *b.paths]).returncode == 0

    def all_skipped():
        rows = node.status()["series"]
        return rows if len(rows) == 6 and all(r["state"] == "skipped" for r in rows) else None

    rows = {r["series_uid"]: r["reason"] for r in wait_for(all_skipped, 180, what="6 skipped series")}
    assert "modality MR" in rows[cases["mr"].series_uid]
    assert "too few slices: 5" in rows[cases["few"].series_uid]
    assert "localizer images only" in rows[cases["scout"].series_uid]
    assert "disagree on the patient" in rows[a.series_uid]
    assert "pixel data" in rows[no_pixels.series_uid].lower(), rows[no_pixels.series_uid]
    assert "not a chest CT" in rows[cases["head"].series_uid]
    # Only the header-less series and the head CT got as far as a job: the loader refused the
    # one, the chain the other (a clear skip, not a failed job).
    jobs = {j["series_uid"]: j for j in node.jobs()}
    assert set(jobs) == {no_pixels.series_uid, cases["head"].series_uid}
    assert all(j["state"] == "skipped" for j in jobs.values())
    out = subprocess.run(
        [sys.executable, "-m", "dicomnode.cli", "status", "--data-dir", str(node.data_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "too few slices: 5" in out.stdout and "modality MR" in out.stdout


def test_sigterm_stops_cleanly(tmp_path, node_factory):
    node = node_factory()
    assert node.stop() == 0
    assert any(line.strip() == "stopped" for line in node.log), node.tail()
    assert not list((node.data_dir / "storage").rglob("*.tmp"))


def test_a_whole_series_is_complete_when_its_sender_releases(tmp_path, node_factory):
    """Issue 13: no quiet period for a series whose sender released and whose slices are
    whole; a series with a gap still waits for it (real storescu, a 120 s quiet period)."""
    import time

    node = node_factory(quiet=120.0)
    whole = write_series(tmp_path / "whole", n_slices=20, seed=3)
    with_gap = write_series(tmp_path / "gap", n_slices=20, seed=4)
    start = time.monotonic()
    assert storescu(node.port, whole.paths).returncode == 0
    assert storescu(node.port, [p for i, p in enumerate(with_gap.paths) if i != 10]).returncode == 0

    def queued():
        rows = {s["series_uid"]: s for s in node.status()["series"]}
        row = rows.get(whole.series_uid)
        return rows if row is not None and row["state"] != "receiving" else None

    rows = wait_for(queued, 30, interval=0.2, what="the whole series to complete on release")
    assert time.monotonic() - start < 60  # far inside the 120 s quiet period
    assert rows[with_gap.series_uid]["state"] == "receiving"
    # Logged just after the transaction that status already sees: wait for the line too.
    wait_for(
        lambda: any("complete on release" in line for line in node.log) or None,
        10,
        interval=0.2,
        what="the completion on release in the log",
    )
    # The node logs this after it answered the release, so storescu may have exited first.
    wait_for(
        lambda: any("waits for the quiet period: uneven slice spacing" in line for line in node.log) or None,
        10,
        interval=0.2,
        what="the gap series to be kept waiting",
    )


def test_a_bundle_upgrade_loses_no_waiting_series(tmp_path, tiny_bundle):
    """docs/admin.md, 'Upgrading the model bundle': stop the node with a series still
    waiting, start it with another bundle: the series is analysed by the new one."""
    import json

    from conftest import make_tiny_bundle
    from node_helpers import TEST_CONFIG, write_test_config

    no_release = TEST_CONFIG.replace("min_free_mb = 0\n", "min_free_mb = 0\ncomplete_on_release = false\n")
    config = write_test_config(tmp_path / "config", no_release)
    old = NodeProcess(tmp_path / "data", tiny_bundle, quiet_seconds=600.0, config=config).start()
    series = phantom_series(tmp_path / "ct", seed=9)
    assert storescu(old.port, series.paths).returncode == 0
    assert old.stop() == 0  # the series is still in its quiet period: no job yet
    new_bundle = make_tiny_bundle(tmp_path / "bundle-v2", seed=7)
    new = NodeProcess(tmp_path / "data", new_bundle, quiet_seconds=1.0, config=config).start()
    try:
        (job,) = final(new, 1)
        summary = json.loads((new.data_dir / "results" / str(job["id"]) / "summary.json").read_text())
        from pipeline.models import load_bundle

        assert summary["model"]["sha256"] == load_bundle(new_bundle, "cpu").sha256
    finally:
        new.stop()
