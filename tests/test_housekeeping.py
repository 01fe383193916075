"""Storage housekeeping (issue 9): series are purged by age or by size only after every
result was delivered; never a path outside the node's folders; the disk watermark
refuses associations before a series is cut short."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import SelectionSection
from dicomnode.db import Database
from dicomnode.header import InstanceInfo
from dicomnode.housekeeping import Housekeeper, purgeable
from dicomnode.queue import JobQueue, JobState
from dicomnode.series import SeriesAssembler, SeriesState, series_state

T0 = 1_000_000.0
DAY = 86400.0


def _series(db, asm, storage: Path, results: Path, uid: str, t: float, n: int = 4, size: int = 1000) -> int:
    """A completed series with ``n`` instance files of ``size`` bytes and a result folder; returns its job id."""
    for i in range(n):
        rel = f"1.2/{uid}/{uid}.{i}.dcm"
        (storage / rel).parent.mkdir(parents=True, exist_ok=True)
        (storage / rel).write_bytes(b"x" * size)
        asm.record_instance(
            InstanceInfo(
                sop_uid=f"{uid}.{i}",
                series_uid=uid,
                study_uid="1.2",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax="1.2.840.10008.1.2.1",
                modality="CT",
                orientation="1\\0\\0\\0\\1\\0",
                patient_key="p",
            ),
            rel,
            received=t,
        )
    asm.complete_due(at=t + 20)
    job = db.query("SELECT id FROM jobs WHERE series_uid=?", (uid,))[0]["id"]
    (results / str(job)).mkdir(parents=True)
    (results / str(job) / "sr.dcm").write_bytes(b"y" * size)
    return job


@pytest.fixture()
def env(tmp_path):
    db = Database(tmp_path / "node.sqlite3")
    queue = JobQueue(db)
    asm = SeriesAssembler(db, queue, SelectionSection(min_slices=2), quiet_seconds=10)
    storage, results = tmp_path / "storage", tmp_path / "results"
    storage.mkdir()
    results.mkdir()
    yield db, queue, asm, storage, results
    db.close()


def _finish(db, job: int, delivery_state: str | None = "sent") -> None:
    db.execute("UPDATE jobs SET state='done' WHERE id=?", (job,))
    if delivery_state:
        db.execute(
            "INSERT INTO deliveries(job_id, destination, sop_uid, kind, path, state, created, next_try, "
            "updated) VALUES (?, 'PACS@h:104', ?, 'sr', 'x', ?, 0, 0, 0)",
            (job, f"9.{job}", delivery_state),
        )


def test_only_delivered_series_are_purged_and_only_when_old(env):
    db, _queue, asm, storage, results = env
    old = _series(db, asm, storage, results, "1.2.3", T0)
    pending = _series(db, asm, storage, results, "1.2.4", T0)
    failed = _series(db, asm, storage, results, "1.2.5", T0)
    young = _series(db, asm, storage, results, "1.2.6", T0 + 9 * DAY)
    running = _series(db, asm, storage, results, "1.2.7", T0)
    _finish(db, old)
    _finish(db, pending, "pending")
    _finish(db, failed, "failed")
    _finish(db, young)
    db.execute("UPDATE jobs SET state=? WHERE id=?", (JobState.RUNNING.value, running))
    assert [r["series_uid"] for r in purgeable(db)] == ["1.2.3", "1.2.6"]
    audit: list[tuple] = []
    keeper = Housekeeper(
        db, storage, results, retention_days=7, max_storage_gb=0, audit=lambda *a, **k: audit.append((a, k))
    )
    report = keeper.run(at=T0 + 10 * DAY)
    assert report.series == ("1.2.3",) and report.bytes_freed == 5000
    assert not (storage / "1.2" / "1.2.3").exists() and not (results / str(old)).exists()
    for uid, job in (("1.2.4", pending), ("1.2.5", failed), ("1.2.6", young), ("1.2.7", running)):
        assert (storage / "1.2" / uid).is_dir() and (results / str(job)).is_dir(), uid
    row = db.query("SELECT state, reason FROM series WHERE series_uid='1.2.3'")[0]
    assert row["state"] == SeriesState.PURGED and "retention_days" in row["reason"]
    assert audit[0][0] == ("purge", "success") and audit[0][1]["series_uid"] == "1.2.3"


def test_size_rule_purges_the_oldest_delivered_first(env):
    db, _queue, asm, storage, results = env
    jobs = [_series(db, asm, storage, results, f"1.3.{i}", T0 + i * 100, n=4, size=100_000) for i in range(3)]
    for job in jobs:
        _finish(db, job)
    keeper = Housekeeper(db, storage, results, retention_days=0, max_storage_gb=0.9e6 / 1024**3)
    report = keeper.run(at=T0 + 1000)
    assert report.series == ("1.3.0", "1.3.1")  # 1.5 MB held (0.5 MB each), 0.9 MB allowed: the two oldest go
    assert (storage / "1.2" / "1.3.2").is_dir()


def test_a_row_pointing_outside_the_storage_is_never_deleted(env, tmp_path):
    db, _queue, asm, storage, results = env
    job = _series(db, asm, storage, results, "1.4.1", T0)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    db.execute("UPDATE instances SET path=? WHERE sop_uid='1.4.1.0'", ("../precious.txt",))
    _finish(db, job)
    Housekeeper(db, storage, results, retention_days=1, max_storage_gb=0).run(at=T0 + 2 * DAY)
    assert outside.read_text() == "keep me"


def test_a_late_instance_opens_a_purged_series_again(env):
    db, _queue, asm, storage, results = env
    job = _series(db, asm, storage, results, "1.5.1", T0)
    _finish(db, job)
    Housekeeper(db, storage, results, retention_days=1, max_storage_gb=0).run(at=T0 + 2 * DAY)
    asm.record_instance(
        InstanceInfo(
            sop_uid="1.5.1.9",
            series_uid="1.5.1",
            study_uid="1.2",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax="1.2.840.10008.1.2.1",
        ),
        "1.2/1.5.1/1.5.1.9.dcm",
        received=T0 + 3 * DAY,
    )
    assert series_state(db, "1.5.1") == SeriesState.RECEIVING


@pytest.mark.peers
def test_the_disk_watermark_refuses_associations_before_a_series(tmp_path):
    """Below [node] refuse_associations_below_mb the listener refuses new associations
    (transient, so senders retry later) instead of failing in the middle of a series."""
    from dicomnode.config import NodeSection
    from dicomnode.scp import StorageSCP
    from dicomnode.store import InstanceStore

    from conftest import free_port
    from node_helpers import storescu, write_series

    store = InstanceStore(tmp_path / "storage", 0)
    far_above = store.free_bytes() // 2**20 + 10_000_000  # more than this disk will ever have free
    node = NodeSection(
        ae_title="COVIDNODE",
        port=free_port(),
        bind_address="127.0.0.1",
        min_free_mb=0,
        refuse_associations_below_mb=far_above,
    )
    stored: list[str] = []
    scp = StorageSCP(node, store, lambda info, rel: stored.append(info.sop_uid))
    scp.start()
    try:
        series = write_series(tmp_path / "in", n_slices=2, size=32)
        refused = storescu(scp.port, series.paths)
        assert refused.returncode != 0 and stored == []
        said = refused.stdout + refused.stderr
        assert "Local Limit Exceeded" in said or "Rejected" in said
    finally:
        scp.stop()


@pytest.mark.peers
def test_a_running_node_purges_what_it_delivered(tmp_path, tiny_bundle):
    """The node's timer: a series analysed and delivered to a real PACS (storescp) is
    purged by the size rule; the audit trail says so (real peers)."""
    import json

    from conftest import wait_for
    from node_helpers import TEST_CONFIG, NodeProcess, StoreSCP, storescu, write_test_config

    pacs = StoreSCP(tmp_path / "pacs", "PACS").start()
    config = write_test_config(
        tmp_path / "config", TEST_CONFIG + "[housekeeping]\nmax_storage_gb = 0.000001\ninterval_minutes = 0.02\n"
    )
    node = NodeProcess(
        tmp_path / "data", tiny_bundle, destinations=[f"PACS@127.0.0.1:{pacs.port}"], config=config
    ).start()
    try:
        from dicomnode.synthetic import write_ct_series
        from pipeline.phantom import make_phantom

        series = write_ct_series(make_phantom("covid19", 8, n_slices=20, size_px=64).volume, tmp_path / "ct")
        assert storescu(node.port, series.paths).returncode == 0

        def purged():
            rows = {s["series_uid"]: s for s in node.status()["series"]}
            row = rows.get(series.series_uid)
            return row if row is not None and row["state"] == "purged" else None

        row = wait_for(purged, 240, interval=0.5, what="the delivered series to be purged")
        assert "max_storage_gb" in row["reason"]
        assert (tmp_path / "data" / "storage").is_dir()
        assert not list((tmp_path / "data" / "storage").rglob("*.dcm"))
        assert pacs.received_sop_uids()  # delivered before it was purged
        lines = [json.loads(x) for x in (tmp_path / "data" / "audit" / "audit.jsonl").read_text().splitlines()]
        assert any(e["event"] == "purge" and e["series_uid"] == series.series_uid for e in lines)
    finally:
        node.stop()
        pacs.stop()
