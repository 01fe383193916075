"""Job queue: state machine, claims, leases and the reaper, restart recovery."""

from __future__ import annotations

import pytest

from dicomnode.db import Database
from dicomnode.errors import QueueError
from dicomnode.queue import ALLOWED, FINAL, JobQueue, JobState

T0 = 2_000_000.0


@pytest.fixture()
def queue(tmp_path):
    db = Database(tmp_path / "node.sqlite3")
    yield JobQueue(db, lease_seconds=60, max_attempts=2)
    db.close()


def test_states_are_str_enum_and_final_states_are_final():
    assert JobState.QUEUED == "queued" and str(JobState.DELIVERING) == "delivering"
    assert all(ALLOWED[s] == frozenset() for s in FINAL)


def test_claim_order_and_happy_path(queue):
    a = queue.enqueue("1.2.1", "1.2", ["a.dcm"], at=T0)
    b = queue.enqueue("1.2.2", "1.2", ["b.dcm"], at=T0)
    job = queue.claim(at=T0 + 1)
    assert job.id == a and job.state == JobState.RUNNING and job.attempts == 1
    assert job.lease_until == T0 + 61 and job.instances == ("a.dcm",)
    queue.transition(a, JobState.DELIVERING, expect=JobState.RUNNING, attempts=1)
    queue.transition(a, JobState.DONE)
    assert queue.get(a).state == JobState.DONE
    assert queue.claim(at=T0 + 2).id == b
    assert queue.claim(at=T0 + 3) is None


def test_forbidden_transitions_raise(queue):
    a = queue.enqueue("1.2.1", "1.2", [], at=T0)
    with pytest.raises(QueueError, match="not an allowed state change"):
        queue.transition(a, JobState.DONE)
    queue.claim(at=T0)
    queue.transition(a, JobState.FAILED, "boom")
    with pytest.raises(QueueError):
        queue.transition(a, JobState.QUEUED)
    with pytest.raises(QueueError, match="does not exist"):
        queue.transition(999, JobState.DONE)


def test_expired_lease_is_reaped_and_stale_claim_cannot_finish(queue):
    a = queue.enqueue("1.2.1", "1.2", [], at=T0)
    first = queue.claim(at=T0)
    assert queue.reap(at=T0 + 30) == []  # lease still valid
    assert queue.renew(first, at=T0 + 30)
    assert queue.reap(at=T0 + 89) == []
    assert queue.reap(at=T0 + 91) == [a]
    job = queue.get(a)
    assert job.state == JobState.QUEUED and "lease expired" in job.reason
    second = queue.claim(at=T0 + 92)
    assert second.attempts == 2
    assert not queue.still_mine(first) and queue.still_mine(second)
    assert not queue.renew(first, at=T0 + 93)
    with pytest.raises(QueueError, match="stale"):
        queue.transition(a, JobState.DONE, expect=JobState.RUNNING, attempts=first.attempts)


def test_too_many_attempts_fail_the_job(queue):
    a = queue.enqueue("1.2.1", "1.2", [], at=T0)
    queue.claim(at=T0)
    queue.recover_after_restart(at=T0 + 1)
    queue.claim(at=T0 + 2)
    assert queue.recover_after_restart(at=T0 + 3) == [a]
    job = queue.get(a)
    assert job.state == JobState.FAILED and "gave up after 2 attempts" in job.reason


def test_restart_gives_back_running_jobs_and_keeps_the_rest(queue):
    a = queue.enqueue("1.2.1", "1.2", [], at=T0)
    b = queue.enqueue("1.2.2", "1.2", [], at=T0)
    queue.claim(at=T0)
    assert queue.recover_after_restart(at=T0 + 1) == [a]
    assert queue.get(a).state == JobState.QUEUED and queue.get(b).state == JobState.QUEUED
    assert queue.counts() == {"queued": 2}


def test_jobs_survive_reopening_the_database(tmp_path):
    db = Database(tmp_path / "q.sqlite3")
    JobQueue(db).enqueue("1.2.1", "1.2", ["x.dcm"], at=T0)
    db.close()
    db2 = Database(tmp_path / "q.sqlite3")
    job = JobQueue(db2).claim(at=T0)
    assert job is not None and job.instances == ("x.dcm",)
    assert db2.query("PRAGMA journal_mode")[0][0] == "wal"
    db2.close()
