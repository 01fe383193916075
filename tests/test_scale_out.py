"""Scale-out with real processes: Debian's redis-server on a free loopback port, the node
(`dicomnode serve` with [broker]) and two `dicomnode worker` processes, DCMTK storescu as
the scanner and storescp as the PACS. Eight series are each analysed and delivered
exactly once, also when one worker is killed (SIGKILL) in the middle of a job: the other
worker finishes it, once the dead one's heartbeat is old enough. A node killed while a
worker analyses takes the result when it is back."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from test_node_e2e import phantom_series

from conftest import wait_for
from node_helpers import TEST_CONFIG, NodeProcess, RedisServer, StoreSCP, WorkerProcess, storescu, write_test_config

pytestmark = [pytest.mark.peers, pytest.mark.slow]

N_SERIES = 8
#: Short, so that the test waits seconds for the dead worker's job; maintenance on every
#: broker command, so that the first command after that moves the job on (docs/admin.md).
BROKER = """
[broker]
url = "{url}"
namespace = "test"
heartbeat_timeout_s = 5
maintenance_chance = 1.0
max_in_flight = 4
"""


def broker_config(folder: Path, url: str) -> Path:
    return write_test_config(folder, TEST_CONFIG + BROKER.format(url=url))


def job_rows(node: NodeProcess) -> list[dict]:
    try:
        return node.jobs()
    except sqlite3.Error:
        return []


def accepted_by(node: NodeProcess) -> dict[int, list[str]]:
    """Job id -> the workers whose reply the node recorded (from its log)."""
    found: dict[int, list[str]] = {}
    for line in node.log:
        m = re.search(r"job (\d+): analysed by (\S+) \(attempt", line)
        if m:
            found.setdefault(int(m[1]), []).append(m[2])
    return found


def worker_jobs(worker: WorkerProcess, event: str) -> list[int]:
    """Ids of the jobs the worker logged as ``started`` or ``replied``."""
    pattern = re.compile(rf": job (\d+) \(attempt \d+\) {event}")
    return [int(m[1]) for line in list(worker.log) if (m := pattern.search(line))]


def in_progress(worker: WorkerProcess) -> list[int]:
    replied = set(worker_jobs(worker, "replied"))
    return [j for j in worker_jobs(worker, "started") if j not in replied]


@pytest.fixture()
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_two_workers_each_series_once_and_a_killed_workers_job_finished_by_the_other(
    tmp_path, tiny_bundle, redis_server
):
    pacs = StoreSCP(tmp_path / "pacs", "PACS").start()
    config = broker_config(tmp_path / "config", redis_server.url)
    data = tmp_path / "data"
    node = NodeProcess(data, tiny_bundle, [f"PACS@127.0.0.1:{pacs.port}"], quiet_seconds=0.5, config=config)
    workers = [WorkerProcess(config, data, tiny_bundle, name) for name in ("worker-a", "worker-b")]
    try:
        node.start()
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready()
        victim, survivor = workers
        all_series = [phantom_series(tmp_path / f"in{i}", seed=100 + i) for i in range(N_SERIES)]
        for series in all_series:
            assert storescu(node.port, series.paths).returncode == 0
        killed_job = wait_for(lambda: in_progress(victim), 120, interval=0.01, what="worker-a to start a job")[0]
        victim.kill()
        assert killed_job not in worker_jobs(victim, "replied"), "worker-a was not killed in the middle of the job"

        def all_final():
            jobs = job_rows(node)
            finished = all(j["state"] in ("done", "failed", "skipped") for j in jobs)
            return jobs if len(jobs) == N_SERIES and finished else None

        jobs = wait_for(all_final, 240, interval=0.3, what=f"{N_SERIES} jobs to finish")
        assert [j["state"] for j in jobs] == ["done"] * N_SERIES, node.tail()
        assert all(j["attempts"] == 1 for j in jobs)  # the broker redelivered the same claim

        accepted = accepted_by(node)
        assert sorted(accepted) == sorted(j["id"] for j in jobs)
        assert all(len(by) == 1 for by in accepted.values()), accepted  # each analysis recorded once
        assert accepted[killed_job] == ["worker-b"]
        assert killed_job in worker_jobs(survivor, "started")

        conn = sqlite3.connect(data / "node.sqlite3")
        sent = conn.execute("SELECT job_id, sop_uid FROM deliveries WHERE state='sent'").fetchall()
        conn.close()
        assert {job_id for job_id, _ in sent} == set(accepted)  # every job delivered something
        want = sorted(uid for _, uid in sent)
        wait_for(lambda: len(pacs.received_sop_uids()) >= len(want), 30, what="the PACS to store")
        assert sorted(pacs.received_sop_uids()) == want  # each result exactly once
        assert not list((data / "results" / ".incoming").glob("*"))  # nothing staged left behind
        assert survivor.stop() == 0 and node.stop() == 0  # SIGTERM stops both cleanly
    finally:
        for w in workers:
            w.stop()
        node.stop()
        pacs.stop()


def test_a_node_killed_while_a_worker_analyses_takes_the_result_after_its_restart(tmp_path, tiny_bundle, redis_server):
    """The job stays with the worker; its reply waits in Redis for the restarted node,
    which records it under the same claim and delivers each object once."""
    pacs = StoreSCP(tmp_path / "pacs", "PACS").start()
    config = broker_config(tmp_path / "config", redis_server.url)
    data = tmp_path / "data"
    node = NodeProcess(data, tiny_bundle, [f"PACS@127.0.0.1:{pacs.port}"], quiet_seconds=0.5, config=config)
    worker = WorkerProcess(config, data, tiny_bundle, "worker-a")
    try:
        node.start()
        worker.start().wait_ready()
        series = phantom_series(tmp_path / "in", seed=42)
        assert storescu(node.port, series.paths).returncode == 0
        job = wait_for(lambda: worker_jobs(worker, "started"), 120, interval=0.01, what="the worker to start")[0]
        node.kill()
        wait_for(lambda: job in worker_jobs(worker, "replied"), 120, what="the worker to reply")
        assert [j["state"] for j in job_rows(node)] == ["running"]  # nobody has recorded it yet
        node.start()
        wait_for(lambda: [j["state"] for j in job_rows(node)] == ["done"], 120, interval=0.3, what="the job to end")
        assert job_rows(node)[0]["attempts"] == 1 and accepted_by(node) == {job: ["worker-a"]}
        conn = sqlite3.connect(data / "node.sqlite3")
        want = sorted(uid for (uid,) in conn.execute("SELECT sop_uid FROM deliveries WHERE state='sent'"))
        conn.close()
        wait_for(lambda: len(pacs.received_sop_uids()) >= len(want), 30, what="the PACS to store")
        assert want and sorted(pacs.received_sop_uids()) == want
    finally:
        worker.stop()
        node.stop()
        pacs.stop()


def test_worker_without_broker_in_its_config_says_so(tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    config = write_test_config(tmp_path / "config")
    out = subprocess.run(
        [sys.executable, "-m", "dicomnode.cli", "worker", "--config", str(config)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "has no [broker] url" in out.stdout
