"""Series assembler: stored instances -> completed series -> a job, or a skip with a reason.

Each stored instance is recorded in the database and moves its series' ``last_received``
forward. A timer (``complete_due``, run by the node's scheduler) completes every series
that has been quiet for ``quiet_seconds``: the selection rules (``[selection]``, data,
not code) choose the instances to analyse, and the series is either queued as a job or
recorded as skipped with the reason. Because the quiet timer is derived from the
database, a node restarted during the quiet period completes the series all the same.

Urgent series (``[selection.urgent]``): once a series is accepted, the first selected
instance's stored header is read and matched against the rules (sending AE, modality,
body part, configured tags); a match makes the job urgent, claimed before every routine
job, with the rule that matched recorded as the reason. No rules: nothing is read.

Completion on release (``[node] complete_on_release``, on by default): when the last
association that sent instances of a series releases normally, the series is complete at
once, without the quiet period, if its slices are whole: one orientation, every instance
with a position, positions along the slice normal distinct and evenly spaced (no gap). A
series that is not whole, or whose sender aborted, waits for the quiet period as before.

Late instances: an instance that arrives after its series was completed re-opens the
series (state ``receiving`` again); after a new quiet period the whole series, old and
new instances, becomes a new job (generation + 1). A still-queued job of the earlier
generation is skipped as superseded; a running one finishes and delivers its results.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise
from typing import Any, Callable, Sequence

from .config import SelectionSection, UrgentRules
from .db import Database, now
from .errors import SeriesRejected
from .header import InstanceInfo
from .queue import JobQueue
from .volume import along_normal, spacing_problem

log = logging.getLogger(__name__)


class SeriesState(StrEnum):
    """A series' state in the ``series`` table (the stored strings never change)::

    receiving -> complete | skipped -> purged     (housekeeping, dicomnode.housekeeping)
    complete | skipped -> receiving               (a late instance re-opens the series)
    """

    #: Instances arrive; the quiet period runs.
    RECEIVING = "receiving"
    #: Complete, selected and handed to a job (the job has its own state, dicomnode.queue).
    COMPLETE = "complete"
    #: Complete but not analysable, or rejected later by the volume loader (``reason``).
    SKIPPED = "skipped"
    #: Housekeeping removed its files; the rows stay for ``status`` and the audit trail.
    PURGED = "purged"


@dataclass(frozen=True)
class Selection:
    """The outcome of the rules on one series: the instance paths to analyse, or why not."""

    paths: tuple[str, ...]
    reason: str | None

    @property
    def accepted(self) -> bool:
        return self.reason is None


def select_instances(rows: Sequence[dict], rules: SelectionSection, radiographs: Sequence[str] = ()) -> Selection:
    """Apply the selection rules to a series' instance rows (dicts with the columns of
    the ``instances`` table). ``radiographs``: modalities of plain radiographs accepted
    alone (``[cxr] radiographs_alone``; dicomnode.radiograph_job), every instance of them.
    Pure: unit-testable without a database."""
    if not rows:
        return Selection((), "no instances")
    wanted = {m.upper() for m in radiographs}
    if wanted and {(r["modality"] or "").upper() for r in rows} <= wanted:
        return Selection(tuple(r["path"] for r in rows), None)
    modalities = Counter(r["modality"] or "(none)" for r in rows)
    allowed = {m.upper() for m in rules.modalities}
    if allowed and not set(modalities) <= allowed:
        found = ", ".join(sorted(modalities))
        return Selection((), f"modality {found} is not one of {', '.join(sorted(allowed))}")
    if len({r["study_uid"] for r in rows}) > 1:
        return Selection((), "instances disagree on the study (several Study Instance UIDs)")
    if len({r["patient_key"] for r in rows}) > 1:
        return Selection((), "instances disagree on the patient (several patient IDs or names)")
    refused = {t.upper() for t in rules.refuse_image_types}
    kept = [r for r in rows if not refused & set((r["image_type"] or "").split("\\"))]
    if not kept:
        kinds = " or ".join(sorted(refused))
        return Selection((), f"{kinds.lower()} images only ({len(rows)} instances, none usable)")
    if rules.body_parts:
        parts = {r["body_part"] or "(none)" for r in kept}
        wanted = {p.upper() for p in rules.body_parts}
        if not parts & wanted:
            return Selection((), f"body part {', '.join(sorted(parts))} is not one of {', '.join(sorted(wanted))}")
    if len({r["orientation"] for r in kept}) > 1:
        return Selection((), "mixed orientation (instances have different Image Orientation (Patient))")
    if rules.max_slice_thickness_mm > 0:
        thick = [r["slice_thickness"] for r in kept if r["slice_thickness"] is not None]
        if thick and max(thick) > rules.max_slice_thickness_mm:
            return Selection(
                (), f"slice thickness {max(thick):g} mm is above the {rules.max_slice_thickness_mm:g} mm limit"
            )
    if len(kept) < rules.min_slices:
        return Selection((), f"too few slices: {len(kept)} (at least {rules.min_slices} needed)")
    return Selection(tuple(r["path"] for r in kept), None)


def _values(ds: Any, keyword: str) -> set[str]:
    value = ds.get(keyword) if ds is not None else None
    if value is None:
        return set()
    items = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    return {str(v).strip().upper() for v in items if str(v).strip()}


def urgent_reason(rules: UrgentRules, header: Any) -> str | None:
    """Why a series whose first instance has this header (a pydicom Dataset with its
    ``file_meta``) is urgent, or None. Pure: the rule that matched, in plain words."""
    if not rules.active:
        return None
    meta = getattr(header, "file_meta", None)
    sender = _values(meta, "SourceApplicationEntityTitle")
    titles = {t.upper() for t in rules.calling_ae_titles}
    if sender & titles:
        return f"sent by {sorted(sender & titles)[0]}"
    for keyword, wanted in (("Modality", rules.modalities), ("BodyPartExamined", rules.body_parts)):
        hit = _values(header, keyword) & {w.upper() for w in wanted}
        if hit:
            return f"{keyword} {sorted(hit)[0]}"
    for keyword, wanted in rules.tags:
        hit = _values(header, keyword) & {str(w).strip().upper() for w in wanted}
        if hit:
            return f"{keyword} {sorted(hit)[0]}"
    return None


def slices_are_whole(rows: Sequence[dict]) -> str | None:
    """None when the instance rows form gap-free, evenly spaced slices of one orientation
    (the volume loader's rule, dicomnode.volume.spacing_problem); else why not, in words."""
    orientations = {r.get("orientation") or "" for r in rows}
    if len(orientations) != 1 or "" in orientations:
        return "no single orientation"
    try:
        orientation = [float(v) for v in next(iter(orientations)).split("\\")]
        points = [[float(v) for v in (r.get("position") or "").split("\\")] for r in rows]
    except ValueError:
        return "an instance has no position"
    if len(orientation) != 6 or any(len(p) != 3 for p in points):
        return "an instance has no position"
    if len(points) < 2:
        return "a single slice"
    try:
        _order, along, _normal = along_normal(orientation, points)
    except SeriesRejected as e:
        return e.reason
    problem = spacing_problem(along)
    if problem is None:
        return None
    if problem[0] == "duplicate_position":
        return "slices share a position"
    steps = [b - a for a, b in pairwise(along)]
    return f"uneven slice spacing (steps {min(steps):.2f} to {max(steps):.2f} mm: a gap or extra slices)"


class SeriesAssembler:
    """Records instances, completes quiet series, enqueues jobs or records skips."""

    def __init__(
        self,
        db: Database,
        queue: JobQueue,
        rules: SelectionSection,
        quiet_seconds: float,
        on_enqueued: Callable[[int], None] | None = None,
        read_header: Callable[[str], Any] | None = None,
        radiographs: Sequence[str] = (),
    ) -> None:
        """``read_header``: a stored instance's path -> its header (pydicom, file meta
        included), for the urgent rules; None: every series is routine. ``radiographs``:
        modalities accepted alone as plain radiographs (select_instances)."""
        self.radiographs = tuple(radiographs)
        self.db = db
        self.queue = queue
        self.read_header = read_header
        self.rules = rules
        self.quiet_seconds = quiet_seconds
        self.on_enqueued = on_enqueued
        self._tick_lock = threading.Lock()

    def record_instance(self, info: InstanceInfo, rel_path: str, received: float | None = None) -> None:
        """Record a stored instance (a duplicate replaces its row) and reset the quiet timer."""
        t = now() if received is None else received
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO instances(sop_uid, series_uid, study_uid, sop_class_uid, transfer_syntax, "
                "path, modality, image_type, body_part, slice_thickness, orientation, position, patient_key, "
                "received) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    info.sop_uid,
                    info.series_uid,
                    info.study_uid,
                    info.sop_class_uid,
                    info.transfer_syntax,
                    rel_path,
                    info.modality,
                    info.image_type,
                    info.body_part,
                    info.slice_thickness,
                    info.orientation,
                    info.position,
                    info.patient_key,
                    t,
                ),
            )
            row = conn.execute("SELECT state FROM series WHERE series_uid=?", (info.series_uid,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO series(series_uid, study_uid, state, instance_count, first_received, "
                    "last_received) VALUES (?,?,?,1,?,?)",
                    (info.series_uid, info.study_uid, SeriesState.RECEIVING.value, t, t),
                )
            else:
                if row["state"] != SeriesState.RECEIVING:
                    log.info("series %s re-opened by late instance %s", info.series_uid, info.sop_uid)
                conn.execute(
                    "UPDATE series SET state=?, reason=NULL, last_received=MAX(last_received, ?), "
                    "instance_count=(SELECT COUNT(*) FROM instances WHERE series_uid=?) "
                    "WHERE series_uid=?",
                    (SeriesState.RECEIVING.value, t, info.series_uid, info.series_uid),
                )

    def complete_due(self, at: float | None = None) -> list[str]:
        """Complete every series quiet for ``quiet_seconds``; returns their UIDs."""
        t = now() if at is None else at
        done: list[str] = []
        enqueued: list[int] = []
        with self._tick_lock:
            due = self.db.query(
                "SELECT series_uid FROM series WHERE state=? AND last_received <= ?",
                (SeriesState.RECEIVING.value, t - self.quiet_seconds),
            )
            for row in due:
                job_id = self._complete(row["series_uid"], t)
                done.append(row["series_uid"])
                if job_id is not None:
                    enqueued.append(job_id)
        if self.on_enqueued is not None:
            for job_id in enqueued:
                self.on_enqueued(job_id)
        return done

    def complete_released(self, series_uid: str, at: float | None = None) -> int | None:
        """The last association that sent ``series_uid`` released: complete it now when its
        slices are whole (module doc); returns the job id, or None (it waits for the quiet
        period, or was skipped, or is not receiving)."""
        t = now() if at is None else at
        with self._tick_lock:
            job_id = self._complete(series_uid, t, on_release=True)
        if job_id is not None and self.on_enqueued is not None:
            self.on_enqueued(job_id)
        return job_id

    def _complete(self, series_uid: str, t: float, on_release: bool = False) -> int | None:
        with self.db.transaction() as conn:
            series = conn.execute("SELECT * FROM series WHERE series_uid=?", (series_uid,)).fetchone()
            if series is None or series["state"] != SeriesState.RECEIVING:
                return None
            if not on_release and series["last_received"] > t - self.quiet_seconds:
                return None  # an instance arrived meanwhile: the timer starts again
            rows = [
                dict(r)
                for r in conn.execute(
                    "SELECT * FROM instances WHERE series_uid=? ORDER BY path", (series_uid,)
                ).fetchall()
            ]
            selection = select_instances(rows, self.rules, self.radiographs)
            if on_release:
                kept = set(selection.paths)
                why = slices_are_whole([r for r in rows if r["path"] in kept]) if selection.accepted else None
                if why is not None:
                    log.info("series %s: sender released, but it waits for the quiet period: %s", series_uid, why)
                    return None
                if not selection.accepted:
                    return None  # the quiet period gives the sender time to send the rest
            generation = series["generation"] + 1
            if selection.accepted:
                urgent = self._urgency(series_uid, selection.paths[0])
                job_id = self.queue.enqueue_in(
                    conn, series_uid, series["study_uid"], generation, selection.paths, t, urgent
                )
                conn.execute(
                    "UPDATE series SET state=?, reason=NULL, completed=?, generation=?, "
                    "instance_count=? WHERE series_uid=?",
                    (SeriesState.COMPLETE.value, t, generation, len(rows), series_uid),
                )
            else:
                job_id = None
                conn.execute(
                    "UPDATE series SET state=?, reason=?, completed=?, generation=?, instance_count=? "
                    "WHERE series_uid=?",
                    (SeriesState.SKIPPED.value, selection.reason, t, generation, len(rows), series_uid),
                )
        if job_id is None:
            log.info("series %s skipped: %s", series_uid, selection.reason)
        else:
            log.info(
                "series %s complete%s (%d instances, %d selected): job %d%s",
                series_uid,
                " on release" if on_release else "",
                len(rows),
                len(selection.paths),
                job_id,
                f", urgent ({urgent})" if urgent else "",
            )
        return job_id

    def _urgency(self, series_uid: str, first_path: str) -> str | None:
        """The urgent rules on the series' first selected instance; a header that cannot
        be read makes the series routine (logged), never a lost series."""
        if self.read_header is None or not self.rules.urgent.active:
            return None
        try:
            return urgent_reason(self.rules.urgent, self.read_header(first_path))
        except Exception as e:  # a damaged file is the volume loader's to reject
            log.warning(
                "series %s: header of %s not readable for the urgent rules (%s); routine",
                series_uid,
                first_path,
                type(e).__name__,
            )
            return None

    def mark_skipped(self, series_uid: str, reason: str) -> None:
        """Record a series as skipped after the fact (e.g. the volume loader rejected it)."""
        self.db.execute(
            "UPDATE series SET state=?, reason=? WHERE series_uid=? AND state<>?",
            (SeriesState.SKIPPED.value, reason, series_uid, SeriesState.RECEIVING.value),
        )
        log.info("series %s skipped: %s", series_uid, reason)

    def state(self, series_uid: str) -> SeriesState | None:
        """The series' state, or None for a series never received."""
        return series_state(self.db, series_uid)

    def known_paths(self) -> set[str]:
        return {r["path"] for r in self.db.query("SELECT path FROM instances")}


def series_state(db: Database, series_uid: str) -> SeriesState | None:
    """The state of a series in the database, or None for one never received."""
    rows = db.query("SELECT state FROM series WHERE series_uid=?", (series_uid,))
    return SeriesState(rows[0]["state"]) if rows else None


def series_of_study(db: Database, study_uid: str) -> dict[str, SeriesState]:
    """Series UID -> state of every series of a study the node received."""
    rows = db.query("SELECT series_uid, state FROM series WHERE study_uid=?", (study_uid,))
    return {r["series_uid"]: SeriesState(r["state"]) for r in rows}


def mark_purged_in(conn: sqlite3.Connection, series_uid: str, why: str) -> None:
    """Housekeeping removed the series' files (inside its transaction): state ``purged``."""
    conn.execute(
        "UPDATE series SET state=?, reason=? WHERE series_uid=?",
        (SeriesState.PURGED.value, f"purged ({why})", series_uid),
    )
