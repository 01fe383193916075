"""Durable job queue in the node's SQLite database.

A job is the analysis of one completed series (one *generation* of it: a series re-opened
by a late instance gets a new job). States::

    queued -> running -> delivering -> done
                  |            '-----> failed      (a destination never took the results)
                  |--> queued          (lease expired / node restarted: given back;
                  |                     disk full: retried after a backoff, ``not_before``)
                  |--> failed          (error, or too many attempts)
                  '--> skipped         (not a usable chest CT, with the reason)
    queued -> skipped                  (superseded by a newer generation of the series;
                                        cancelled by an admin)
    failed, skipped -> queued          (retried by an admin: dicomnode.admin_api)
    failed -> delivering               (an admin sends its failed deliveries again)

A claim takes a lease (``lease_until``); the worker renews it while it works. The reaper
gives jobs whose lease expired back to the queue, or marks them failed after
``max_attempts`` claims, so that a series that kills the process every time cannot keep
the node busy forever. At start-up a node gives back every job left ``running`` (the
data folder is locked to one node process, so those belonged to a dead process).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from typing import Sequence

from .db import Database, now
from .errors import QueueError

log = logging.getLogger(__name__)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DELIVERING = "delivering"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.SKIPPED}),
    JobState.RUNNING: frozenset(
        {JobState.QUEUED, JobState.DELIVERING, JobState.DONE, JobState.FAILED, JobState.SKIPPED}
    ),
    JobState.DELIVERING: frozenset({JobState.DONE, JobState.FAILED}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.SKIPPED: frozenset(),
}
#: Changes only an admin asks for: a retry (``requeue``), or sending a failed job's failed
#: deliveries again (``redeliver_in``, from Delivery.retry_failed).
ADMIN_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.FAILED: frozenset({JobState.QUEUED, JobState.DELIVERING}),
    JobState.SKIPPED: frozenset({JobState.QUEUED}),
}
#: Final states only an admin's retry leaves.
ADMIN_RETRYABLE = frozenset(s for s, to in ADMIN_ALLOWED.items() if JobState.QUEUED in to)
FINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.SKIPPED})


@dataclass(frozen=True)
class Job:
    id: int
    series_uid: str
    study_uid: str
    generation: int
    instances: tuple[str, ...]
    state: JobState
    reason: str | None
    attempts: int
    lease_until: float | None
    #: Why the series is urgent ([selection.urgent]); None: routine.
    urgent: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        return cls(
            id=row["id"],
            series_uid=row["series_uid"],
            study_uid=row["study_uid"],
            generation=row["generation"],
            instances=tuple(json.loads(row["instances"])),
            state=JobState(row["state"]),
            reason=row["reason"],
            attempts=row["attempts"],
            lease_until=row["lease_until"],
            urgent=row["urgent"],
        )


class JobQueue:
    """Jobs in SQLite: enqueue, claim with a lease, transition, reap."""

    def __init__(self, db: Database, lease_seconds: float = 3600.0, max_attempts: int = 3) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts

    # -- creating -------------------------------------------------------------------
    def enqueue_in(
        self,
        conn: sqlite3.Connection,
        series_uid: str,
        study_uid: str,
        generation: int,
        instances: Sequence[str],
        at: float | None = None,
        urgent: str | None = None,
    ) -> int:
        """Insert a queued job inside the caller's transaction; returns its id.

        Queued jobs of earlier generations of the same series are skipped: the new job
        covers every instance they had and more. ``urgent``: why the job goes first.
        """
        t = now() if at is None else at
        conn.execute(
            "UPDATE jobs SET state=?, reason=?, updated=? WHERE series_uid=? AND state=? AND generation<?",
            (
                JobState.SKIPPED.value,
                f"superseded by generation {generation} (late instances)",
                t,
                series_uid,
                JobState.QUEUED.value,
                generation,
            ),
        )
        cur = conn.execute(
            "INSERT INTO jobs(series_uid, study_uid, generation, instances, state, attempts, urgent, created, updated) "
            "VALUES (?,?,?,?,?,0,?,?,?)",
            (series_uid, study_uid, generation, json.dumps(list(instances)), JobState.QUEUED.value, urgent, t, t),
        )
        if cur.lastrowid is None:  # sqlite3 always sets it after an INSERT
            raise QueueError(f"series {series_uid}: the new job has no row id")
        return cur.lastrowid

    def enqueue(
        self,
        series_uid: str,
        study_uid: str,
        instances: Sequence[str],
        generation: int = 1,
        at: float | None = None,
        urgent: str | None = None,
    ) -> int:
        with self.db.transaction() as conn:
            return self.enqueue_in(conn, series_uid, study_uid, generation, instances, at, urgent)

    # -- working --------------------------------------------------------------------
    def claim(self, at: float | None = None, studies: Sequence[str] | None = None) -> Job | None:
        """Take the oldest urgent queued job, else the oldest routine one (state running,
        attempts+1, lease set), or None. ``studies``: only a job of one of these studies
        (a new study's job runs its priors' jobs while it waits for them)."""
        t = now() if at is None else at
        among = "" if studies is None else f" AND study_uid IN ({','.join('?' * len(studies))})"
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT id FROM jobs WHERE state=? AND (not_before IS NULL OR not_before <= ?)"
                f"{among} ORDER BY urgent IS NULL, id LIMIT 1",
                (JobState.QUEUED.value, t, *(studies or ())),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET state=?, attempts=attempts+1, lease_until=?, not_before=NULL, updated=? WHERE id=?",
                (JobState.RUNNING.value, t + self.lease_seconds, t, row["id"]),
            )
            job = Job.from_row(conn.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone())
        log.info(
            "job %d claimed (series %s, attempt %d%s)",
            job.id,
            job.series_uid,
            job.attempts,
            ", urgent" if job.urgent else "",
        )
        return job

    def still_mine(self, job: Job) -> bool:
        """True while ``job`` (as claimed) is still running under that claim."""
        rows = self.db.query("SELECT state, attempts FROM jobs WHERE id=?", (job.id,))
        return bool(rows) and rows[0]["state"] == JobState.RUNNING.value and rows[0]["attempts"] == job.attempts

    def renew(self, job: Job, at: float | None = None) -> bool:
        """Extend the lease of a claimed job; False when the claim was lost."""
        t = now() if at is None else at
        return (
            self.db.execute(
                "UPDATE jobs SET lease_until=?, updated=? WHERE id=? AND state=? AND attempts=?",
                (t + self.lease_seconds, t, job.id, JobState.RUNNING.value, job.attempts),
            )
            == 1
        )

    def transition_in(
        self,
        conn: sqlite3.Connection,
        job_id: int,
        new: JobState,
        reason: str | None = None,
        expect: JobState | None = None,
        attempts: int | None = None,
        at: float | None = None,
    ) -> None:
        """Change a job's state inside the caller's transaction, checking the state machine.

        ``expect``/``attempts`` make the change conditional on the claim still holding;
        QueueError says when it does not.
        """
        row = conn.execute("SELECT state, attempts FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise QueueError(f"job {job_id} does not exist")
        current = JobState(row["state"])
        if expect is not None and current != expect:
            raise QueueError(f"job {job_id} is {current}, not {expect}; another worker or the reaper changed it")
        if attempts is not None and row["attempts"] != attempts:
            raise QueueError(f"job {job_id} was claimed again (attempt {row['attempts']}); this claim is stale")
        if new not in ALLOWED[current]:
            raise QueueError(f"job {job_id}: {current} -> {new} is not an allowed state change")
        t = now() if at is None else at
        lease = None if new != JobState.RUNNING else t + self.lease_seconds
        conn.execute(
            "UPDATE jobs SET state=?, reason=?, lease_until=?, updated=? WHERE id=?",
            (new.value, reason, lease, t, job_id),
        )

    def transition(
        self,
        job_id: int,
        new: JobState,
        reason: str | None = None,
        expect: JobState | None = None,
        attempts: int | None = None,
        at: float | None = None,
    ) -> None:
        with self.db.transaction() as conn:
            self.transition_in(conn, job_id, new, reason, expect, attempts, at)
        log.info("job %d -> %s%s", job_id, new, f" ({reason})" if reason else "")

    def delivered_in(
        self, conn: sqlite3.Connection, job_id: int, failed: int, total: int, at: float | None = None
    ) -> None:
        """A delivering job's deliveries all ended (inside the caller's transaction): done,
        or failed when ``failed`` of the ``total`` objects never reached a destination."""
        if failed:
            reason = f"{failed} of {total} deliveries failed"
            self.transition_in(conn, job_id, JobState.FAILED, reason, expect=JobState.DELIVERING, at=at)
            log.error("job %d failed: %s", job_id, reason)
        else:
            self.transition_in(conn, job_id, JobState.DONE, None, expect=JobState.DELIVERING, at=at)
            log.info("job %d done: %d object deliveries sent", job_id, total)

    def redeliver_in(self, conn: sqlite3.Connection, job_id: int, reason: str, at: float | None = None) -> bool:
        """An admin sends a failed job's failed deliveries again (inside the caller's
        transaction): failed -> delivering; False when the job is not failed."""
        row = conn.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None or JobState(row["state"]) != JobState.FAILED:
            return False
        t = now() if at is None else at
        conn.execute(
            "UPDATE jobs SET state=?, reason=?, lease_until=NULL, updated=? WHERE id=?",
            (JobState.DELIVERING.value, reason, t, job_id),
        )
        return True

    def retry_later(self, job: Job, reason: str, delay_s: float, at: float | None = None) -> float:
        """Give a claimed job back to the queue, not to be claimed for ``delay_s`` (a
        transient failure: disk full, ...); returns when it may run again."""
        t = now() if at is None else at
        with self.db.transaction() as conn:
            self.transition_in(
                conn, job.id, JobState.QUEUED, reason, expect=JobState.RUNNING, attempts=job.attempts, at=t
            )
            conn.execute("UPDATE jobs SET not_before=? WHERE id=?", (t + delay_s, job.id))
        log.warning("job %d -> queued, retried in %.0f s (%s)", job.id, delay_s, reason)
        return t + delay_s

    def requeue(self, job_id: int, reason: str) -> None:
        """An admin's retry: a failed or skipped job is queued again, its attempts reset."""
        with self.db.transaction() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or JobState(row["state"]) not in ADMIN_RETRYABLE:
                raise QueueError(
                    f"job {job_id} is {row['state'] if row else 'unknown'}: only a failed or skipped job can be retried"
                )
            conn.execute(
                "UPDATE jobs SET state=?, reason=?, attempts=0, lease_until=NULL, not_before=NULL, "
                "content_sha256=NULL, updated=? WHERE id=?",
                (JobState.QUEUED.value, reason, now(), job_id),
            )

    def cancel(self, job_id: int, reason: str) -> None:
        """An admin's cancel: a queued job is skipped (a running one finishes)."""
        with self.db.transaction() as conn:
            self.transition_in(conn, job_id, JobState.SKIPPED, reason, expect=JobState.QUEUED)

    def record_content(self, job: Job, content_sha256: str) -> int | None:
        """Note what a claimed job analyses; returns an earlier job of the same series that
        analysed the very same content and delivered (or is delivering) it, else None."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE jobs SET content_sha256=? WHERE id=?", (content_sha256, job.id))
            row = conn.execute(
                "SELECT id FROM jobs WHERE series_uid=? AND id<>? AND content_sha256=? AND state IN "
                "(?, ?) ORDER BY id DESC LIMIT 1",
                (job.series_uid, job.id, content_sha256, JobState.DONE.value, JobState.DELIVERING.value),
            ).fetchone()
        return None if row is None else int(row["id"])

    def analysed_before(self, job: Job) -> list[int]:
        """Ids of the earlier jobs of ``job``'s series whose results were made (done or
        delivering), oldest first: the reports a new one replaces."""
        rows = self.db.query(
            "SELECT id FROM jobs WHERE series_uid=? AND id<? AND state IN (?, ?) ORDER BY id",
            (job.series_uid, job.id, JobState.DONE.value, JobState.DELIVERING.value),
        )
        return [int(r["id"]) for r in rows]

    # -- recovering -----------------------------------------------------------------
    def _give_back(self, where: str, params: Sequence[object], why: str, at: float | None) -> list[int]:
        t = now() if at is None else at
        changed: list[int] = []
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"SELECT id, attempts FROM jobs WHERE state=? AND {where}", (JobState.RUNNING.value, *params)
            ).fetchall()
            for row in rows:
                if row["attempts"] >= self.max_attempts:
                    conn.execute(
                        "UPDATE jobs SET state=?, reason=?, lease_until=NULL, updated=? WHERE id=?",
                        (JobState.FAILED.value, f"gave up after {row['attempts']} attempts ({why})", t, row["id"]),
                    )
                    log.error("job %d failed: gave up after %d attempts (%s)", row["id"], row["attempts"], why)
                else:
                    conn.execute(
                        "UPDATE jobs SET state=?, reason=?, lease_until=NULL, updated=? WHERE id=?",
                        (JobState.QUEUED.value, f"given back: {why}", t, row["id"]),
                    )
                    log.warning("job %d given back to the queue (%s)", row["id"], why)
                changed.append(row["id"])
        return changed

    def reap(self, at: float | None = None) -> list[int]:
        """Give back running jobs whose lease expired; returns their ids."""
        t = now() if at is None else at
        return self._give_back("lease_until < ?", (t,), "lease expired", t)

    def recover_after_restart(self, at: float | None = None) -> list[int]:
        """Give back every running job: this process holds the data folder lock, so any
        job still 'running' belonged to a node that died."""
        return self._give_back("1=1", (), "node restarted during the job", at)

    # -- reading --------------------------------------------------------------------
    def get(self, job_id: int) -> Job:
        rows = self.db.query("SELECT * FROM jobs WHERE id=?", (job_id,))
        if not rows:
            raise QueueError(f"job {job_id} does not exist")
        return Job.from_row(rows[0])

    def of_study(self, study_uid: str) -> list[Job]:
        """Every job of the study's series, oldest first."""
        return [
            Job.from_row(r) for r in self.db.query("SELECT * FROM jobs WHERE study_uid=? ORDER BY id", (study_uid,))
        ]

    def recent(self, limit: int = 20) -> list[Job]:
        return [Job.from_row(r) for r in self.db.query("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))]

    def counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self.db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}
