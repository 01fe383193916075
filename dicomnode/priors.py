"""Prior studies: ask the PACS for a patient's earlier chest CT studies and have them sent.

The paper's multi-stage analysis compares a patient's scans over time. The node finds the
earlier studies itself: a C-FIND at study level (Study Root) for the patient, studies
dated within ``[priors] lookback_days`` before the new one that hold ``[priors]
modality``, the most recent first, at most ``max_studies``; then a C-MOVE of each to the
node's own AE title, so the instances arrive through the listener like any other series
(stored durably, completed, analysed).

Only UIDs and counts are logged, never the patient's identity. Every network problem is a
PriorsError saying what failed and where; the caller decides when to try again.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from typing import Iterator

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import time
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from .config import PriorsSection
from .errors import PriorsError

log = logging.getLogger(__name__)

#: The Query/Retrieve SOP classes the node uses as SCU (docs/conformance.md, generated).
QUERY_RETRIEVE_SOP_CLASSES: dict[str, str] = {
    "C-FIND": str(StudyRootQueryRetrieveInformationModelFind),
    "C-MOVE": str(StudyRootQueryRetrieveInformationModelMove),
}
#: C-FIND/C-MOVE statuses (PS3.4 C.4): pending, success, and the warning of a move with
#: failed sub-operations.
PENDING = (0xFF00, 0xFF01)
SUCCESS = 0x0000
MOVE_WARNING = 0xB000


@dataclass(frozen=True)
class PriorStudy:
    """An earlier study of the patient as the PACS described it."""

    study_uid: str
    study_date: _dt.date | None
    accession_number: str
    description: str
    modalities: tuple[str, ...]


@dataclass(frozen=True)
class MoveOutcome:
    """What a C-MOVE of one study reported: sub-operations completed, failed, warned."""

    study_uid: str
    completed: int
    failed: int
    warning: int

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.completed > 0


def parse_da(value: object) -> _dt.date | None:
    """A DICOM DA value (YYYYMMDD) as a date; None when empty or malformed."""
    text = str(value or "").strip()
    try:
        return _dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def study_query(patient_id: str, before: _dt.date, cfg: PriorsSection) -> Dataset:
    """The C-FIND identifier: the patient's studies dated in the look-back window up to
    ``before`` (inclusive: a same-day earlier study counts; the new study is excluded by
    UID), asking for the attributes PriorStudy holds."""
    first = before - _dt.timedelta(days=cfg.lookback_days)
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = patient_id
    ds.StudyDate = f"{first:%Y%m%d}-{before:%Y%m%d}"
    ds.StudyInstanceUID = ""
    ds.AccessionNumber = ""
    ds.StudyDescription = ""
    ds.ModalitiesInStudy = ""
    return ds


def _association(cfg: PriorsSection, calling_ae: str, context: str):
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.connection_timeout = min(cfg.timeout_s, 30.0)
    ae.dimse_timeout = ae.network_timeout = cfg.timeout_s
    ae.add_requested_context(context)
    assoc = ae.associate(cfg.host, cfg.port, ae_title=cfg.ae_title)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "cannot be reached"
        raise PriorsError(f"PACS {cfg.ae_title}@{cfg.host}:{cfg.port} {why} (query/retrieve for prior studies)")
    return assoc


def _responses(what: str, responses: Iterator) -> Iterator[tuple[int, Dataset | None]]:
    for status, identifier in responses:
        if status is None or "Status" not in status:
            raise PriorsError(f"{what}: the PACS sent no response (timeout or aborted association)")
        yield int(status.Status), identifier


def find_prior_studies(
    cfg: PriorsSection, calling_ae: str, patient_id: str, study_uid: str, study_date: _dt.date
) -> list[PriorStudy]:
    """The patient's earlier studies with ``cfg.modality``, most recent first, at most
    ``cfg.max_studies``; the study ``study_uid`` itself and later studies left out."""
    assoc = _association(cfg, calling_ae, StudyRootQueryRetrieveInformationModelFind)
    found: list[PriorStudy] = []
    try:
        query = study_query(patient_id, study_date, cfg)
        responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        for code, identifier in _responses("C-FIND of prior studies", responses):
            if code in PENDING and identifier is not None:
                found.append(_prior_from(identifier))
            elif code != SUCCESS:
                raise PriorsError(f"C-FIND of prior studies failed with status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    wanted = cfg.modality.upper()
    earlier = [
        p
        for p in found
        if p.study_uid != study_uid
        and (p.study_date is None or p.study_date <= study_date)
        # A PACS that ignores ModalitiesInStudy returns it empty: the series decide later.
        and (not p.modalities or wanted in p.modalities)
    ]
    earlier.sort(key=lambda p: (p.study_date or _dt.date.min, p.study_uid), reverse=True)
    log.info("prior studies of study %s: %d found, %d kept", study_uid, len(found), min(len(earlier), cfg.max_studies))
    return earlier[: cfg.max_studies]


def _prior_from(identifier: Dataset) -> PriorStudy:
    modalities = identifier.get("ModalitiesInStudy", "") or ()
    if isinstance(modalities, str):
        modalities = [m for m in modalities.split("\\") if m]
    return PriorStudy(
        study_uid=str(identifier.get("StudyInstanceUID", "")),
        study_date=parse_da(identifier.get("StudyDate", "")),
        accession_number=str(identifier.get("AccessionNumber", "") or ""),
        description=str(identifier.get("StudyDescription", "") or ""),
        modalities=tuple(str(m).upper() for m in modalities),
    )


def retrieve_study(cfg: PriorsSection, calling_ae: str, move_destination: str, study_uid: str) -> MoveOutcome:
    """C-MOVE the whole study to ``move_destination`` (the node's own AE title); returns
    the sub-operation counts of the final response. The instances arrive on the node's
    listener while this waits."""
    assoc = _association(cfg, calling_ae, StudyRootQueryRetrieveInformationModelMove)
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    final: Dataset | None = None
    try:
        for status, _ in assoc.send_c_move(ds, move_destination, StudyRootQueryRetrieveInformationModelMove):
            if status is None or "Status" not in status:
                raise PriorsError(f"C-MOVE of study {study_uid}: the PACS sent no response (timeout or abort)")
            final = status
    finally:
        if assoc.is_established:
            assoc.release()
    code = None if final is None else int(final.Status)
    if code is None or code not in (SUCCESS, MOVE_WARNING):
        shown = "no final response" if code is None else f"status 0x{code:04X}"
        raise PriorsError(f"C-MOVE of study {study_uid} to {move_destination} failed ({shown})")
    assert final is not None

    def count(name: str) -> int:
        return int(final.get(name, 0) or 0)

    outcome = MoveOutcome(
        study_uid,
        completed=count("NumberOfCompletedSuboperations"),
        failed=count("NumberOfFailedSuboperations"),
        warning=count("NumberOfWarningSuboperations"),
    )
    log.info(
        "prior study %s moved to %s: %d completed, %d failed, %d warning",
        study_uid,
        move_destination,
        outcome.completed,
        outcome.failed,
        outcome.warning,
    )
    return outcome
