"""Crash recovery with real peers: a node killed with SIGKILL in the middle of a job and
started again finishes the job and sends each result exactly once per destination; a
restart also records instances whose files were stored but never recorded."""

from __future__ import annotations

import sqlite3

import pytest
from test_node_e2e import phantom_series

from conftest import wait_for
from node_helpers import NodeProcess, StoreSCP, storescu

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def job_states(node: NodeProcess) -> list[str]:
    try:
        return [j["state"] for j in node.jobs()]
    except sqlite3.Error:
        return []


def test_sigkill_during_the_job_then_restart_delivers_exactly_once(tmp_path, tiny_bundle):
    pacs = StoreSCP(tmp_path / "pacs", "PACS").start()
    viewer = StoreSCP(tmp_path / "viewer", "VIEWER").start()
    dests = [f"PACS@127.0.0.1:{pacs.port}", f"VIEWER@127.0.0.1:{viewer.port}"]
    node = NodeProcess(tmp_path / "data", tiny_bundle, dests, quiet_seconds=0.5).start()
    try:
        series = phantom_series(tmp_path / "in", seed=3)
        assert storescu(node.port, series.paths).returncode == 0
        wait_for(lambda: job_states(node) == ["running"], 60, interval=0.02, what="the job to start")
        node.kill()
        assert job_states(node) == ["running"]  # the dead node left it so
        node.start()
        wait_for(lambda: job_states(node) == ["done"], 240, interval=0.3, what="the job to finish after restart")
        job = node.jobs()[0]
        assert job["attempts"] == 2
        conn = sqlite3.connect(node.data_dir / "node.sqlite3")
        sent = conn.execute("SELECT destination, sop_uid FROM deliveries WHERE state='sent'").fetchall()
        conn.close()
        per_dest = {d: sorted(u for dd, u in sent if dd == d) for d in {d for d, _ in sent}}
        assert len(per_dest) == 2
        for scp in (pacs, viewer):
            want = next(v for k, v in per_dest.items() if k.startswith(scp.ae_title + "@"))
            wait_for(
                lambda scp=scp, want=want: len(scp.received_sop_uids()) >= len(want),
                30,
                what=f"{scp.ae_title} to store",
            )
            assert sorted(scp.received_sop_uids()) == want  # each result exactly once
    finally:
        node.stop()
        pacs.stop()
        viewer.stop()


def test_sigkill_while_delivering_then_restart_sends_the_rest(tmp_path, tiny_bundle):
    pacs_port_holder = StoreSCP(tmp_path / "pacs", "PACS")  # not started yet: the PACS is down
    dest = f"PACS@127.0.0.1:{pacs_port_holder.port}"
    node = NodeProcess(tmp_path / "data", tiny_bundle, [dest], quiet_seconds=0.5).start()
    try:
        series = phantom_series(tmp_path / "in", seed=4)
        assert storescu(node.port, series.paths).returncode == 0
        wait_for(
            lambda: job_states(node) == ["delivering"] and node.status()["pending_deliveries"] > 0,
            240,
            interval=0.2,
            what="the job to wait for its destination",
        )
        node.kill()
        pacs = pacs_port_holder.start()
        node.start()
        wait_for(lambda: job_states(node) == ["done"], 120, interval=0.3, what="delivery after restart")
        conn = sqlite3.connect(node.data_dir / "node.sqlite3")
        want = sorted(u for (u,) in conn.execute("SELECT sop_uid FROM deliveries WHERE state='sent'"))
        conn.close()
        wait_for(lambda: len(pacs.received_sop_uids()) >= len(want), 30, what="the PACS to store")
        assert sorted(pacs.received_sop_uids()) == want
    finally:
        node.stop()
        pacs_port_holder.stop()


def test_sigterm_during_a_job_leaves_it_finished_or_given_back(tmp_path, tiny_bundle):
    node = NodeProcess(tmp_path / "data", tiny_bundle, quiet_seconds=0.5).start()
    try:
        series = phantom_series(tmp_path / "in", seed=5)
        assert storescu(node.port, series.paths).returncode == 0
        wait_for(lambda: job_states(node) == ["running"], 60, interval=0.02, what="the job to start")
        assert node.stop() == 0
        assert job_states(node) in (["done"], ["queued"]), node.tail()
        assert not list((tmp_path / "data").rglob("*.tmp"))
        node.start()
        wait_for(lambda: job_states(node) == ["done"], 240, interval=0.3, what="the job to be done")
    finally:
        node.stop()


def test_restart_records_instances_stored_but_not_recorded(tmp_path):
    """A file durable on disk but missing from the database (e.g. power loss after the
    answer) is found by the start-up rescan and becomes part of its series."""
    import io

    from pydicom.uid import ExplicitVRLittleEndian

    from dicomnode.header import encode_file_meta, parse_header
    from dicomnode.store import InstanceStore

    from node_helpers import write_series

    series = write_series(tmp_path / "in", n_slices=3, size=32)
    store = InstanceStore(tmp_path / "data" / "storage", 0)
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    for p in series.paths:
        ds = dcmread(p)
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write_dataset(buf, ds)
        info = parse_header(io.BytesIO(buf.getvalue()), ExplicitVRLittleEndian)
        store.store(info, encode_file_meta(info.sop_class_uid, info.sop_uid, ExplicitVRLittleEndian), buf.getvalue())
    (store.root / series.study_uid / series.series_uid / ".1.2.3.dead.tmp").write_bytes(b"half a file")
    node = NodeProcess(tmp_path / "data", None, quiet_seconds=3600).start()
    try:
        rows = node.status()["series"]
        assert [(r["series_uid"], r["instance_count"]) for r in rows] == [(series.series_uid, 3)]
        assert not list(store.root.rglob("*.tmp"))
        assert any("database had missed" in line for line in node.log)
    finally:
        node.stop()


def _acknowledged(output: list[str]) -> int:
    """How many C-STOREs one ``storescu -v`` was answered with success."""
    return sum(1 for line in output if "Received Store Response (Success)" in line)


def test_sigkill_while_eight_associations_send_keeps_every_acknowledged_instance(tmp_path):
    """SIGKILL while 8 senders are storing: after the restart (journal replay, rescan) every
    instance answered with success is a whole file and recorded in its series."""
    import subprocess
    import threading

    from pydicom import dcmread

    from conftest import require_tool
    from node_helpers import DCMTK_ENV, write_series

    senders = [write_series(tmp_path / f"in{k}", n_slices=40, size=256, seed=k) for k in range(8)]
    node = NodeProcess(tmp_path / "data", None, quiet_seconds=3600).start()
    outputs: list[list[str]] = [[] for _ in senders]
    procs = [
        subprocess.Popen(
            [require_tool("storescu"), "-v", "-aet", "SCANNER", "-aec", "COVIDNODE", "127.0.0.1", str(node.port)]
            + [str(p) for p in series.paths],
            env=DCMTK_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for series in senders
    ]

    def drain(proc: subprocess.Popen, out: list[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)

    readers = [threading.Thread(target=drain, args=(p, o), daemon=True) for p, o in zip(procs, outputs, strict=True)]
    for r in readers:
        r.start()
    try:
        wait_for(lambda: sum(_acknowledged(o) for o in outputs) >= 40, 120, interval=0.01, what="40 answers")
        node.kill()
        for p, r in zip(procs, readers, strict=True):
            p.wait(60)
            r.join(10)
        acked = [_acknowledged(o) for o in outputs]
        assert sum(acked) >= 40
        node.start()
        counts = {r["series_uid"]: r["instance_count"] for r in node.status()["series"]}
        storage = node.data_dir / "storage"
        for series, n in zip(senders, acked, strict=True):
            assert counts.get(series.series_uid, 0) >= n
            for sop_uid, source in zip(series.sop_uids[:n], series.paths[:n], strict=True):
                stored = dcmread(storage / series.study_uid / series.series_uid / f"{sop_uid}.dcm")
                assert stored.PixelData == dcmread(source).PixelData
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        node.stop()
