"""The node's one SQLite database (WAL): schema and a thread-safe connection.

Every durable state lives here: received instances, series and their assembly state,
jobs, per-(job, destination, instance) deliveries, and the prior studies asked for. One connection is shared by the
threads of one process behind a lock: writes are tiny, and SQLite serialises writers
anyway. ``synchronous=NORMAL`` in WAL mode survives a process crash (SIGKILL); after a
power loss the last commits may be missing, which is why the node rescans its storage
folder at start-up (see ``dicomnode.store.InstanceStore.rescan``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

SCHEMA_VERSION = 6

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS instances (
    sop_uid         TEXT PRIMARY KEY,
    series_uid      TEXT NOT NULL,
    study_uid       TEXT NOT NULL,
    sop_class_uid   TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    path            TEXT NOT NULL,       -- relative to the storage folder
    modality        TEXT,
    image_type      TEXT,                -- backslash-joined values
    body_part       TEXT,
    slice_thickness REAL,
    orientation     TEXT,                -- rounded ImageOrientationPatient
    position        TEXT,                -- rounded ImagePositionPatient (completion on release)
    patient_key     TEXT,                -- sha256 prefix of patient ID+name: compares, reveals nothing
    received        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);

CREATE TABLE IF NOT EXISTS series (
    series_uid      TEXT PRIMARY KEY,
    study_uid       TEXT NOT NULL,
    state           TEXT NOT NULL,       -- receiving | complete | skipped
    reason          TEXT,
    instance_count  INTEGER NOT NULL DEFAULT 0,
    first_received  REAL NOT NULL,
    last_received   REAL NOT NULL,
    completed       REAL,
    generation      INTEGER NOT NULL DEFAULT 0   -- times the series was completed
);
CREATE INDEX IF NOT EXISTS series_state ON series(state, last_received);

CREATE TABLE IF NOT EXISTS jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    series_uid      TEXT NOT NULL,
    study_uid       TEXT NOT NULL,
    generation      INTEGER NOT NULL,
    instances       TEXT NOT NULL,       -- JSON list of instance paths (relative to storage)
    state           TEXT NOT NULL,
    reason          TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    lease_until     REAL,
    not_before      REAL,                -- queued: not claimed before (a retry's backoff)
    content_sha256  TEXT,                -- the instances' datasets and the model bundle analysed
    urgent          TEXT,                -- why the series is urgent ([selection.urgent]); NULL: routine
    created         REAL NOT NULL,
    updated         REAL NOT NULL,
    UNIQUE (series_uid, generation)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);

CREATE TABLE IF NOT EXISTS deliveries (
    job_id          INTEGER NOT NULL REFERENCES jobs(id),
    destination     TEXT NOT NULL,       -- AE@host:port
    sop_uid         TEXT NOT NULL,
    kind            TEXT NOT NULL,       -- sr | sc | seg | kos
    path            TEXT NOT NULL,       -- relative to the results folder
    state           TEXT NOT NULL,       -- pending | sent | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    created         REAL NOT NULL,       -- the retry window runs from here
    first_try       REAL,
    next_try        REAL NOT NULL,
    last_error      TEXT,
    updated         REAL NOT NULL,
    PRIMARY KEY (job_id, destination, sop_uid)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_try);

CREATE TABLE IF NOT EXISTS prior_studies (
    study_uid       TEXT NOT NULL,       -- an earlier study of the patient
    for_study_uid   TEXT NOT NULL,       -- the new study whose report it feeds
    study_date      TEXT,                -- YYYY-MM-DD as the PACS gave it (NULL: unknown)
    state           TEXT NOT NULL,       -- requested | retrieved | analysed_before | failed
    reason          TEXT,
    created         REAL NOT NULL,
    updated         REAL NOT NULL,
    PRIMARY KEY (study_uid, for_study_uid)
);
CREATE INDEX IF NOT EXISTS prior_studies_for ON prior_studies(for_study_uid);
"""


class Database:
    """A SQLite connection shared by the threads of one process (serialised by a lock)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(SCHEMA)
        self._migrate()
        self._conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )

    def _migrate(self) -> None:
        """Bring a database of an earlier schema up to date (columns added, never dropped)."""
        columns = {r["name"] for r in self._conn.execute("PRAGMA table_info(jobs)").fetchall()}
        if "not_before" not in columns:  # schema 1 -> 2
            self._conn.execute("ALTER TABLE jobs ADD COLUMN not_before REAL")
        if "content_sha256" not in columns:  # schema 2 -> 3
            self._conn.execute("ALTER TABLE jobs ADD COLUMN content_sha256 TEXT")
        if "urgent" not in columns:  # schema 3 -> 4
            self._conn.execute("ALTER TABLE jobs ADD COLUMN urgent TEXT")
        if "position" not in {r["name"] for r in self._conn.execute("PRAGMA table_info(instances)").fetchall()}:
            self._conn.execute("ALTER TABLE instances ADD COLUMN position TEXT")  # schema 4 -> 5

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), holding the process lock."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One autocommitted statement; returns the number of rows changed."""
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # another process may hold the WAL; closing is still safe
            self._conn.close()


def now() -> float:
    """Wall-clock seconds; one place so that tests can read the same clock."""
    return time.time()
