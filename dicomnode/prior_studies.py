"""The prior studies the node asked the PACS for: the ``prior_studies`` table, its one owner.

A row ties an earlier study of a patient to the new study whose report it feeds::

    requested -> retrieved          (C-MOVE done: its series arrive through the listener)
    requested -> failed             (the C-MOVE failed; the reason is kept)
    analysed_before                 (the node had analysed it already: nothing was moved)

A study the node requested (requested, retrieved, failed: its instances may still arrive)
is a *prior*: its jobs run the chain and keep their results, and deliver them only when
``[priors] deliver_prior_results`` says so; a prior's job never looks for priors itself.
Only UIDs and dates are stored, never the patient's identity.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from enum import StrEnum

from .db import Database, now

log = logging.getLogger(__name__)


class PriorState(StrEnum):
    REQUESTED = "requested"
    RETRIEVED = "retrieved"
    ANALYSED_BEFORE = "analysed_before"
    FAILED = "failed"


#: States of a study the node itself had sent to it (its jobs are a prior's jobs).
ASKED_FOR = (PriorState.REQUESTED, PriorState.RETRIEVED, PriorState.FAILED)


@dataclass(frozen=True)
class PriorLink:
    study_uid: str
    for_study_uid: str
    study_date: _dt.date | None
    state: PriorState
    reason: str | None


class PriorStudies:
    """Reads and changes the ``prior_studies`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(
        self,
        study_uid: str,
        for_study_uid: str,
        study_date: _dt.date | None,
        state: PriorState,
        reason: str | None = None,
    ) -> None:
        """Record (or update) the link of ``study_uid`` to the new study ``for_study_uid``.
        ``analysed_before`` never replaces a link the node asked for (the new study's job
        run again finds the prior it retrieved analysed: it stays a prior)."""
        t = now()
        date = None if study_date is None else study_date.isoformat()
        keep = " WHERE prior_studies.state NOT IN ({})".format(",".join("?" * len(ASKED_FOR)))
        changed = self.db.execute(
            "INSERT INTO prior_studies(study_uid, for_study_uid, study_date, state, reason, created, updated) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(study_uid, for_study_uid) DO UPDATE SET "
            "study_date=excluded.study_date, state=excluded.state, reason=excluded.reason, updated=excluded.updated"
            + (keep if state == PriorState.ANALYSED_BEFORE else ""),
            (
                study_uid,
                for_study_uid,
                date,
                state.value,
                reason,
                t,
                t,
                *((s.value for s in ASKED_FOR) if state == PriorState.ANALYSED_BEFORE else ()),
            ),
        )
        if not changed:
            return
        log.info("prior study %s of study %s: %s%s", study_uid, for_study_uid, state, f" ({reason})" if reason else "")

    def is_prior(self, study_uid: str) -> bool:
        """True when the node asked the PACS for this study as someone's prior."""
        marks = ",".join("?" * len(ASKED_FOR))
        rows = self.db.query(
            f"SELECT 1 FROM prior_studies WHERE study_uid=? AND state IN ({marks}) LIMIT 1",
            (study_uid, *(s.value for s in ASKED_FOR)),
        )
        return bool(rows)

    def links_for(self, for_study_uid: str) -> list[PriorLink]:
        """The priors recorded for a new study, the most recent first."""
        return self._links("for_study_uid", for_study_uid)

    def links_of(self, study_uid: str) -> list[PriorLink]:
        """Every new study ``study_uid`` was recorded as a prior of."""
        return self._links("study_uid", study_uid)

    def _links(self, column: str, uid: str) -> list[PriorLink]:
        rows = self.db.query(
            f"SELECT * FROM prior_studies WHERE {column}=? ORDER BY study_date DESC, study_uid, for_study_uid", (uid,)
        )
        return [
            PriorLink(
                study_uid=r["study_uid"],
                for_study_uid=r["for_study_uid"],
                study_date=_dt.date.fromisoformat(r["study_date"]) if r["study_date"] else None,
                state=PriorState(r["state"]),
                reason=r["reason"],
            )
            for r in rows
        ]
