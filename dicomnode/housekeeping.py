"""Storage housekeeping: received series and their results are deleted once they are
done with, never before.

A series may be purged when it is complete or skipped, every job of it has reached a
final state, and every result object of those jobs was sent (none pending, none failed:
a failed delivery is an admin's to retry, with the files still there). Of those, the
node purges what is older than ``[housekeeping] retention_days`` (counted from the
series' completion), and, while the data folder holds more than ``max_storage_gb``,
the oldest first. A purged series keeps its database rows for ``status`` and the audit
trail (state ``purged``); its instance files and result folders are gone, and a late
instance opens it again like any series.

Deletion only ever touches paths inside the storage and results folders (each path is
resolved and checked), so a corrupt database row cannot make the node delete anything
else. Pure bookkeeping over the database and the file system; run by the node's timer.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .db import Database, now
from .delivery import DeliveryState
from .queue import FINAL
from .series import SeriesState, mark_purged_in

log = logging.getLogger(__name__)

FINAL_JOB_STATES = tuple(sorted(s.value for s in FINAL))


@dataclass(frozen=True)
class PurgeReport:
    series: tuple[str, ...]
    bytes_freed: int


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def purgeable(db: Database) -> list[dict[str, Any]]:
    """Series that may be purged, oldest completion first: complete or skipped, every job
    final, no result object pending or failed."""
    rows = db.query(
        "SELECT s.series_uid, s.completed FROM series s WHERE s.state IN (?, ?) "
        "AND s.completed IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.series_uid = s.series_uid "
        f"  AND j.state NOT IN ({', '.join('?' * len(FINAL_JOB_STATES))})) "
        "AND NOT EXISTS (SELECT 1 FROM deliveries d JOIN jobs j ON d.job_id = j.id "
        "  WHERE j.series_uid = s.series_uid AND d.state <> ?) "
        "ORDER BY s.completed",
        (SeriesState.COMPLETE.value, SeriesState.SKIPPED.value, *FINAL_JOB_STATES, DeliveryState.SENT.value),
    )
    return [dict(r) for r in rows]


class Housekeeper:
    """Purges series by the retention rules (module doc). ``audit``: told of each purge."""

    def __init__(
        self,
        db: Database,
        storage_root: Path,
        results_root: Path,
        retention_days: float,
        max_storage_gb: float,
        audit: Callable[..., None] | None = None,
    ) -> None:
        self.db = db
        self.storage_root = storage_root
        self.results_root = results_root
        self.retention_s = float(retention_days) * 86400.0
        self.max_bytes = int(float(max_storage_gb) * 1024**3)
        self.audit = audit

    @property
    def active(self) -> bool:
        return self.retention_s > 0 or self.max_bytes > 0

    def run(self, at: float | None = None) -> PurgeReport:
        """One pass: by age, then by size. Never raises (a failure is logged)."""
        try:
            return self._run(now() if at is None else at)
        except Exception:
            log.exception("housekeeping failed; it runs again at the next timer")
            return PurgeReport((), 0)

    def _run(self, t: float) -> PurgeReport:
        if not self.active:
            return PurgeReport((), 0)
        candidates = purgeable(self.db)
        chosen = [c for c in candidates if self.retention_s > 0 and c["completed"] <= t - self.retention_s]
        if self.max_bytes > 0:
            used = _size(self.storage_root) + _size(self.results_root)
            over = used - self.max_bytes
            for c in candidates:
                if over <= 0:
                    break
                if c not in chosen:
                    chosen.append(c)
                over -= self._series_bytes(c["series_uid"])
        purged, freed = [], 0
        for c in chosen:
            by_age = self.retention_s > 0 and c["completed"] <= t - self.retention_s
            why = "older than retention_days" if by_age else "storage over max_storage_gb"
            freed += self.purge(c["series_uid"], why)
            purged.append(c["series_uid"])
        if purged:
            log.info("housekeeping: %d series purged, %.1f MB freed", len(purged), freed / 2**20)
        return PurgeReport(tuple(purged), freed)

    def _paths(self, series_uid: str) -> tuple[list[Path], list[Path]]:
        instances = [
            self.storage_root / r["path"]
            for r in self.db.query("SELECT path FROM instances WHERE series_uid=?", (series_uid,))
        ]
        results = [
            self.results_root / str(r["id"])
            for r in self.db.query("SELECT id FROM jobs WHERE series_uid=?", (series_uid,))
        ]
        return instances, results

    def _series_bytes(self, series_uid: str) -> int:
        instances, results = self._paths(series_uid)
        return sum(p.stat().st_size for p in instances if p.is_file()) + sum(_size(p) for p in results if p.exists())

    def purge(self, series_uid: str, why: str) -> int:
        """Delete one series' instance files and result folders; returns the bytes freed."""
        instances, results = self._paths(series_uid)
        freed = 0
        for path in instances:
            if not _inside(self.storage_root, path):
                log.error("housekeeping: %s lies outside the storage folder; not deleted", path)
                continue
            try:
                freed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                pass
        for folder in {p.parent for p in instances}:
            for empty in (folder, folder.parent):  # series folder, then study folder when empty
                if _inside(self.storage_root, empty) and empty != self.storage_root.resolve():
                    try:
                        empty.rmdir()
                    except OSError:
                        break
        for folder in results:
            if folder.exists() and _inside(self.results_root, folder):
                freed += _size(folder)
                shutil.rmtree(folder, ignore_errors=True)
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM instances WHERE series_uid=?", (series_uid,))
            mark_purged_in(conn, series_uid, why)
        if self.audit is not None:
            self.audit("purge", "success", series_uid=series_uid, files=len(instances), bytes_freed=freed, reason=why)
        return freed
