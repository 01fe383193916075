"""Delivery: C-STORE of persisted result objects to each destination, with durable retries.

Every (job, destination, SOP instance) is a row of ``deliveries``: ``pending`` with a
``next_try`` time, ``sent`` once the destination answered success, or ``failed`` when the
retry window ran out. Because the rows live in SQLite, retries survive restarts: the
scheduler's timer (``deliver_due``) only looks for due rows, so a restarted node simply
picks them up. The retry window runs from when the delivery was recorded. Backoff is
exponential: base * 2^(attempts-1), capped at the maximum.
A row is marked sent right after its C-STORE succeeded, so a restart re-sends at most the
one object that was in flight (same SOP Instance UID: the destination sees a duplicate,
not a second result).

A destination is identified by ``AE@host:port``; only the kinds in its ``objects`` list
are recorded for it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections import defaultdict
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from .config import DeliverySection, Destination, FhirDestination, Hl7Destination, NodeSection
from .db import Database, now
from .queue import JobQueue, JobState
from .tls import client_context

log = logging.getLogger(__name__)

DEFAULT_NETWORK_TIMEOUT_S: float = NodeSection.model_fields["network_timeout_s"].default


class DeliveryState(StrEnum):
    """One (job, destination, object) row of ``deliveries`` (the stored strings never change)::

    pending -> sent | failed      (success, or the retry window ran out)
    failed -> pending             (an admin's retry: ``retry_failed``)
    """

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


PENDING, SENT, FAILED = DeliveryState.PENDING.value, DeliveryState.SENT.value, DeliveryState.FAILED.value


#: The kind of a job's FHIR Bundle among its written objects (dicomnode.fhir).
FHIR_KIND = "fhir"
#: The kind of a job's HL7 v2 ORU^R01 message (dicomnode.hl7).
HL7_KIND = "hl7"
#: Transfer syntaxes proposed for every object, besides the one it was written in.
PROPOSED_TRANSFER_SYNTAXES: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def destination_key(d: Destination) -> str:
    return f"{d.ae_title}@{d.host}:{d.port}"


def backoff_seconds(attempts: int, base: float, maximum: float) -> float:
    """Wait before try ``attempts + 1`` (attempts >= 1)."""
    return min(maximum, base * (2 ** max(0, attempts - 1)))


@contextmanager
def _wake_on_abort(assoc, poll_s: float = 0.1) -> Iterator[None]:
    """While a C-STORE waits for its response, end the wait when the peer aborts or the
    connection drops (issue 9, defect 14).

    pynetdicom pauses the association's reactor during a send and waits on the DIMSE
    queue for up to ``dimse_timeout``; an A-ABORT that arrives meanwhile is left in the
    DUL's queue unread, so the wait ran its full 60 s. Here a watcher peeks at the DUL (as
    the ACSE does) and hands the waiter "no response", which pynetdicom treats as a
    missing response: the association is aborted and the object stays pending.
    """
    done = threading.Event()

    def watch() -> None:
        while not done.wait(poll_s):
            try:
                gone = assoc.acse.is_aborted() or not assoc.dul.is_alive()
            except Exception:  # the association is being torn down: nothing to wake
                return
            if gone:
                assoc.dimse.msg_queue.put((None, None))
                return

    watcher = threading.Thread(target=watch, name="delivery-abort-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join(1.0)


class Delivery:
    """Records, sends and retries result deliveries."""

    def __init__(
        self,
        db: Database,
        destinations: Sequence[Destination],
        settings: DeliverySection,
        results_root: Path,
        calling_ae: str,
        audit: Callable[..., None] | None = None,
        queue: JobQueue | None = None,
        network_timeout_s: float = DEFAULT_NETWORK_TIMEOUT_S,
        fhir_destinations: Sequence[FhirDestination] = (),
        hl7_destinations: Sequence[Hl7Destination] = (),
    ) -> None:
        """``audit``: told of each run's outcome per destination (dicomnode.audit); ``queue``:
        the owner of job states (a job's state follows its deliveries); ``network_timeout_s``:
        ``[node] network_timeout_s``, the longest wait for a destination's answer;
        ``fhir_destinations``: FHIR servers, sent the jobs' ``fhir`` objects (Bundles);
        ``hl7_destinations``: MLLP receivers, sent the jobs' ``hl7`` objects (ORU^R01)."""
        self.db = db
        self.queue = queue if queue is not None else JobQueue(db)
        self.network_timeout_s = network_timeout_s
        self.audit = audit
        self.destinations = {destination_key(d): d for d in destinations}
        self.fhir_destinations = {d.key: d for d in fhir_destinations}
        self.hl7_destinations = {d.key: d for d in hl7_destinations}
        self.settings = settings
        self.results_root = results_root
        self.calling_ae = calling_ae
        self._run_lock = threading.Lock()
        #: Called by ``kick``; the node points it at the scheduler ("run the timer now").
        self.on_kick: Callable[[], None] | None = None

    # -- recording ------------------------------------------------------------------
    def record_in(
        self, conn: sqlite3.Connection, job_id: int, written: Iterable[tuple[str, str, str]], at: float
    ) -> int:
        """Insert one pending row per (destination, object) the destination wants.

        Inside the worker's transaction; returns how many rows. Existing rows (a rebuilt
        job after a crash) are kept as they are, so nothing is sent twice.
        """
        count = 0
        for kind, sop_uid, path in written:
            if kind == FHIR_KIND:
                wanted = list(self.fhir_destinations)
            elif kind == HL7_KIND:  # one message per destination, tagged with it (dicomnode.hl7)
                from .hl7 import destination_tag

                wanted = [k for k in self.hl7_destinations if sop_uid.endswith(f"-{destination_tag(k)}")]
            else:
                wanted = [key for key, dest in self.destinations.items() if kind in dest.objects]
            for key in wanted:
                conn.execute(
                    "INSERT OR IGNORE INTO deliveries(job_id, destination, sop_uid, kind, path, state, "
                    "attempts, created, next_try, updated) VALUES (?,?,?,?,?,?,0,?,?,?)",
                    (job_id, key, sop_uid, kind, path, PENDING, at, at, at),
                )
                count += 1
        return count

    # -- sending --------------------------------------------------------------------
    def kick(self) -> None:
        """Ask the timer to run now (new deliveries were recorded)."""
        if self.on_kick is not None:
            self.on_kick()

    def deliver_due(self, at: float | None = None) -> int:
        """Send every due pending delivery; returns how many were sent. Never raises."""
        if not self._run_lock.acquire(blocking=False):
            return 0  # another run is in progress
        try:
            t = now() if at is None else at
            rows = self.db.query(
                "SELECT * FROM deliveries WHERE state=? AND next_try<=? ORDER BY job_id, kind", (PENDING, t)
            )
            by_dest: dict[str, list[sqlite3.Row]] = defaultdict(list)
            for row in rows:
                by_dest[row["destination"]].append(row)
            sent = 0
            for key, items in by_dest.items():
                done = 0
                try:
                    done = self._send_to(key, items)
                except Exception as e:  # a bug must not stop the timer
                    log.exception("delivery to %s failed unexpectedly", key)
                    self._retry(items, f"internal error: {type(e).__name__}: {e}")
                sent += done
                if self.audit is not None:
                    self.audit(
                        "delivery",
                        "success" if done == len(items) else "failure" if done == 0 else "partial",
                        destination=key,
                        objects=len(items),
                        sent=done,
                        job_ids=sorted({int(r["job_id"]) for r in items}),
                        sop_uids=[str(r["sop_uid"]) for r in items],
                    )
            self._settle_jobs()
            return sent
        finally:
            self._run_lock.release()

    def _send_to(self, key: str, rows: Sequence[sqlite3.Row]) -> int:
        if key in self.fhir_destinations:
            return self._send_fhir(self.fhir_destinations[key], rows)
        if key in self.hl7_destinations:
            return self._send_hl7(self.hl7_destinations[key], rows)
        dest = self.destinations.get(key)
        if dest is None:
            self._fail(rows, f"destination {key} is no longer configured")
            return 0
        datasets = []
        for row in rows:
            path = self.results_root / row["path"]
            try:
                datasets.append((row, dcmread(path)))
            except Exception as e:
                self._fail([row], f"result file {row['path']} cannot be read: {e}")
        if not datasets:
            return 0
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.connection_timeout = self.settings.connect_timeout_seconds
        ae.dimse_timeout = ae.network_timeout = self.network_timeout_s
        for sop_class in sorted({str(ds.SOPClassUID) for _, ds in datasets}):
            tss = sorted(
                {str(ds.file_meta.TransferSyntaxUID) for _, ds in datasets if str(ds.SOPClassUID) == sop_class}
                | set(PROPOSED_TRANSFER_SYNTAXES)
            )
            ae.add_requested_context(sop_class, tss)
        try:
            tls = client_context(dest)
        except ValueError as e:  # config check names this too; retried until the files are fixed
            self._retry([r for r, _ in datasets], str(e))
            return 0
        assoc = ae.associate(
            dest.host, dest.port, ae_title=dest.ae_title, tls_args=(tls, dest.host) if tls is not None else None
        )
        if not assoc.is_established:
            why = "association rejected" if assoc.is_rejected else "cannot connect"
            self._retry([r for r, _ in datasets], f"{why} ({dest.label})")
            return 0
        sent = 0
        try:
            for row, ds in datasets:
                try:
                    with _wake_on_abort(assoc):
                        status = assoc.send_c_store(ds)
                except Exception as e:
                    self._retry([row], f"C-STORE error: {type(e).__name__}: {e}")
                    if not assoc.is_established:
                        break
                    continue
                code = getattr(status, "Status", None)
                if code is not None and (code == 0x0000 or 0xB000 <= code <= 0xBFFF):
                    self._mark_sent(row)
                    sent += 1
                else:
                    shown = f"0x{code:04X}" if code is not None else "no response"
                    self._retry([row], f"C-STORE status {shown}")
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        # Rows not attempted (association lost) stay pending and are due again next run.
        if sent:
            log.info("sent %d object(s) to %s", sent, dest.label)
        return sent

    def _send_each(
        self,
        rows: Sequence[sqlite3.Row],
        send: Callable[[bytes], object],
        what: str,
        label: str,
        error: type[Exception],
    ) -> int:
        """Send each row's result file with ``send``; ``error`` (a refusal, no answer)
        is retried like a refused C-STORE, an unreadable file fails the row."""
        sent = 0
        for row in rows:
            try:
                body = (self.results_root / row["path"]).read_bytes()
            except OSError as e:
                self._fail([row], f"result file {row['path']} cannot be read: {e.strerror}")
                continue
            try:
                send(body)
            except error as e:
                self._retry([row], str(e))
                continue
            self._mark_sent(row)
            sent += 1
        if sent:
            log.info("sent %d %s to %s", sent, what, label)
        return sent

    def _send_fhir(self, dest: FhirDestination, rows: Sequence[sqlite3.Row]) -> int:
        """POST each Bundle to the FHIR server."""
        from .fhir import FhirSendError, post_bundle  # late: fhir.resources only when used

        token = os.environ.get(dest.token_env, "") if dest.token_env else ""
        ca = str(dest.ca_file) if dest.ca_file is not None else None
        return self._send_each(
            rows,
            lambda body: post_bundle(dest.url, body, dest.timeout_s, token, ca),
            "FHIR report(s)",
            dest.label,
            FhirSendError,
        )

    def _send_hl7(self, dest: Hl7Destination, rows: Sequence[sqlite3.Row]) -> int:
        """Send each ORU^R01 over MLLP; anything but an AA acknowledgement is retried."""
        import ssl

        from .hl7 import Hl7Error, message_control_id, send_mllp

        tls = (
            ssl.create_default_context(cafile=str(dest.tls_ca_file) if dest.tls_ca_file else None) if dest.tls else None
        )

        def send(body: bytes) -> None:
            # Bytes, decoded: read_text would turn the CR segment separators into LF.
            message = body.decode("utf-8", "replace")
            send_mllp(dest.host, dest.port, message, message_control_id(message), dest.timeout_s, tls)

        return self._send_each(rows, send, "HL7 message(s)", dest.label, Hl7Error)

    def _mark_sent(self, row: sqlite3.Row) -> None:
        t = now()
        self.db.execute(
            "UPDATE deliveries SET state=?, attempts=attempts+1, first_try=COALESCE(first_try, ?), "
            "last_error=NULL, updated=? WHERE job_id=? AND destination=? AND sop_uid=?",
            (SENT, t, t, row["job_id"], row["destination"], row["sop_uid"]),
        )

    def _retry(self, rows: Sequence[sqlite3.Row], error: str) -> None:
        t = now()
        window = self.settings.retry_window_hours * 3600.0
        with self.db.transaction() as conn:
            for row in rows:
                current = conn.execute(
                    "SELECT attempts, first_try, created FROM deliveries "
                    "WHERE job_id=? AND destination=? AND sop_uid=?",
                    (row["job_id"], row["destination"], row["sop_uid"]),
                ).fetchone()
                attempts = current["attempts"] + 1
                first = current["first_try"] if current["first_try"] is not None else t
                if t - current["created"] >= window:
                    conn.execute(
                        "UPDATE deliveries SET state=?, attempts=?, first_try=?, last_error=?, updated=? "
                        "WHERE job_id=? AND destination=? AND sop_uid=?",
                        (
                            FAILED,
                            attempts,
                            first,
                            f"gave up after {attempts} tries: {error}",
                            t,
                            row["job_id"],
                            row["destination"],
                            row["sop_uid"],
                        ),
                    )
                    log.error(
                        "DELIVERY FAILED: job %d object %s to %s: gave up after %d tries over %.1f h (%s)",
                        row["job_id"],
                        row["sop_uid"],
                        row["destination"],
                        attempts,
                        (t - current["created"]) / 3600,
                        error,
                    )
                else:
                    wait = backoff_seconds(
                        attempts, self.settings.backoff_base_seconds, self.settings.backoff_max_seconds
                    )
                    conn.execute(
                        "UPDATE deliveries SET attempts=?, first_try=?, next_try=?, last_error=?, updated=? "
                        "WHERE job_id=? AND destination=? AND sop_uid=?",
                        (attempts, first, t + wait, error, t, row["job_id"], row["destination"], row["sop_uid"]),
                    )
        if rows:
            log.warning(
                "delivery of %d object(s) to %s failed (%s); next try in %.0f s",
                len(rows),
                rows[0]["destination"],
                error,
                backoff_seconds(
                    rows[0]["attempts"] + 1, self.settings.backoff_base_seconds, self.settings.backoff_max_seconds
                ),
            )

    def _fail(self, rows: Sequence[sqlite3.Row], error: str) -> None:
        t = now()
        for row in rows:
            self.db.execute(
                "UPDATE deliveries SET state=?, last_error=?, updated=? WHERE job_id=? AND destination=? AND sop_uid=?",
                (FAILED, error, t, row["job_id"], row["destination"], row["sop_uid"]),
            )
            log.error(
                "DELIVERY FAILED: job %d object %s to %s: %s", row["job_id"], row["sop_uid"], row["destination"], error
            )

    def states(self, job_id: int | None = None) -> list[DeliveryState]:
        """The state of every delivery (of one job), in row order."""
        if job_id is None:
            rows = self.db.query("SELECT state FROM deliveries ORDER BY rowid")
        else:
            rows = self.db.query("SELECT state FROM deliveries WHERE job_id=? ORDER BY rowid", (job_id,))
        return [DeliveryState(r["state"]) for r in rows]

    def records(self, job_id: int | None = None) -> list[dict]:
        """Every delivery (of one job) as a dict: job, destination, object, state (a
        DeliveryState), attempts and the last error; in row order."""
        where, args = ("", ()) if job_id is None else (" WHERE job_id=?", (job_id,))
        rows = self.db.query(
            "SELECT job_id, destination, sop_uid, kind, state, attempts, last_error FROM deliveries"
            f"{where} ORDER BY rowid",
            args,
        )
        return [dict(r, state=DeliveryState(r["state"])) for r in rows]

    def retry_failed(self, job_id: int) -> int:
        """An admin's retry of a job's failed deliveries: pending again with a new retry
        window, the job back to delivering; returns how many."""
        t = now()
        with self.db.transaction() as conn:
            n = conn.execute(
                "UPDATE deliveries SET state=?, next_try=?, created=?, updated=? WHERE job_id=? AND state=?",
                (PENDING, t, t, t, job_id, FAILED),
            ).rowcount
            if n:
                self.queue.redeliver_in(conn, job_id, "deliveries retried by an admin", t)
        return n

    def _settle_jobs(self) -> None:
        """Jobs in 'delivering' with nothing pending become done, or failed if any failed
        (the queue changes the state; this only counts the deliveries)."""
        t = now()
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT j.id, SUM(d.state=?) AS pending, SUM(d.state=?) AS failed, COUNT(d.sop_uid) AS total "
                "FROM jobs j LEFT JOIN deliveries d ON d.job_id=j.id WHERE j.state=? GROUP BY j.id",
                (PENDING, FAILED, JobState.DELIVERING.value),
            ).fetchall()
            for row in rows:
                if not row["pending"]:
                    self.queue.delivered_in(conn, int(row["id"]), int(row["failed"] or 0), int(row["total"]), t)
