"""Multi-stage analysis in the node: a new study's job gathers the patient's prior studies.

With ``[priors] enabled``, the worker calls ``PriorsStep.gather`` for a new study (never
for a prior's own job) after its series was analysed and before its report is built:

1. C-FIND (dicomnode.priors) the patient's earlier studies of ``[priors] modality`` in the
   look-back window, the most recent first, at most ``max_studies``.
2. A study the node analysed before is used as it is (``analysed_before``); any other is
   recorded as ``requested`` (dicomnode.prior_studies, before its first instance can
   arrive) and moved by C-MOVE to the node's own AE title: its series come in through the
   listener, are completed and queued like any series.
3. Wait, at most ``[priors] timeout_s``, until every series of those studies is complete
   and its job final; meanwhile this worker runs those jobs itself (``run_job``), so one
   worker never waits for a job only it could run. The listener is never blocked.
4. Each prior study's newest analysis with a summary is its stage.

Nothing here fails the new study's job: a PACS that is down, a move that fails or a prior
not analysed in time becomes a warning (logged with UIDs only, written to the audit
trail by the worker, and stated in the summary and the report), and the report goes out
with the stages it has.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import NodeConfig, PriorsSection
from .db import now
from .errors import PriorsError
from .prior_studies import PriorState, PriorStudies
from .priors import PriorStudy, find_prior_studies, parse_da, retrieve_study
from .queue import FINAL, Job, JobQueue, JobState
from .series import SeriesState, series_of_study
from .writers.trend import Trend

log = logging.getLogger(__name__)

POLL_S = 0.5


@dataclass(frozen=True)
class PriorResult:
    """A prior study's analysis: its job, its summary and the instances it analysed
    (paths relative to the storage folder)."""

    study_uid: str
    study_date: _dt.date | None
    job_id: int
    summary: dict
    instances: tuple[str, ...]


@dataclass(frozen=True)
class PriorsGathered:
    results: tuple[PriorResult, ...]
    warnings: tuple[str, ...]


class PriorsStep:
    """Finds, retrieves and waits for a new study's priors (one per worker)."""

    def __init__(
        self,
        cfg: NodeConfig,
        queue: JobQueue,
        links: PriorStudies,
        results_root: Path,
        run_job: Callable[[Job], Any],
        stop: threading.Event | None = None,
    ) -> None:
        self.cfg = cfg
        self.queue = queue
        self.links = links
        self.results_root = results_root
        self.run_job = run_job
        self.stop = stop or threading.Event()

    def applies(self, job: Job) -> bool:
        """Priors are looked up for a new study, never for a prior's own job."""
        return self.cfg.priors.enabled and not self.links.is_prior(job.study_uid)

    def gather(self, job: Job, first: Any) -> PriorsGathered:
        """The priors of ``job``'s study; ``first`` is a header of its series (Patient ID,
        Study Date)."""
        patient_id = str(getattr(first, "PatientID", "") or "").strip()
        date = parse_da(getattr(first, "StudyDate", ""))
        if not patient_id or date is None:
            return PriorsGathered((), ("the series has no Patient ID or Study Date: prior studies not looked up",))
        cfg = self.cfg.priors
        try:
            found = find_prior_studies(cfg, self.cfg.node.ae_title, patient_id, job.study_uid, date)
        except PriorsError as e:
            log.warning("job %d: prior studies of study %s not looked up: %s", job.id, job.study_uid, e)
            return PriorsGathered((), (f"prior studies not looked up: {e}",))
        fetched = [(p, *self._fetch(p, job.study_uid)) for p in found]
        warnings = [w for _, w, _ in fetched if w is not None]
        warnings += self._wait(job, [p.study_uid for p, _, wait in fetched if wait], now() + cfg.timeout_s)
        results = []
        for p in found:
            result = self._result(p.study_uid, p.study_date)
            if result is None:
                warnings.append(f"prior study {p.study_uid} ({_date_text(p.study_date)}) has no analysis result")
            else:
                results.append(result)
        return PriorsGathered(tuple(results), tuple(warnings))

    def _fetch(self, prior: PriorStudy, for_study: str) -> tuple[str | None, bool]:
        """Use the node's own analysis of ``prior``, else have the PACS send it. Returns a
        warning (the move failed, or moved nothing) and whether to wait for its analysis
        (not when nothing can come)."""
        if self._result(prior.study_uid, prior.study_date) is not None:
            self.links.record(prior.study_uid, for_study, prior.study_date, PriorState.ANALYSED_BEFORE)
            return None, False
        self.links.record(prior.study_uid, for_study, prior.study_date, PriorState.REQUESTED)
        try:
            outcome = retrieve_study(self.cfg.priors, self.cfg.node.ae_title, self.cfg.node.ae_title, prior.study_uid)
        except PriorsError as e:  # some instances may have come all the same: wait for what did
            self.links.record(prior.study_uid, for_study, prior.study_date, PriorState.FAILED, str(e)[:500])
            return f"prior study {prior.study_uid} not retrieved: {e}", True
        counts = f"{outcome.completed} instance(s) moved, {outcome.failed} failed"
        self.links.record(prior.study_uid, for_study, prior.study_date, PriorState.RETRIEVED, counts)
        return (None if outcome.ok else f"prior study {prior.study_uid}: {counts}"), outcome.completed > 0

    def _settled(self, study_uid: str) -> bool:
        """Every series of the study complete (or skipped) and every job of it final."""
        series = series_of_study(self.queue.db, study_uid)
        if not series:  # nothing arrived: settled only when nothing more can come
            links = self.links.links_of(study_uid)
            return bool(links) and all(x.state == PriorState.FAILED for x in links)
        if any(state == SeriesState.RECEIVING for state in series.values()):
            return False
        return all(j.state in FINAL for j in self.queue.of_study(study_uid))

    def _wait(self, job: Job, studies: Sequence[str], deadline: float) -> list[str]:
        """Run the priors' jobs until each prior study is settled or the deadline passed."""
        pending = [s for s in studies if not self._settled(s)]
        while pending and now() < deadline and not self.stop.is_set():
            inner = self.queue.claim(studies=pending)
            if inner is not None:
                self.run_job(inner)
            else:
                self.stop.wait(POLL_S)
            self.queue.renew(job)
            pending = [s for s in pending if not self._settled(s)]
        if pending:
            log.warning("job %d: %d prior study(ies) not analysed in time", job.id, len(pending))
        return [f"prior study {s} not analysed within {self.cfg.priors.timeout_s:g} s" for s in pending]

    def _result(self, study_uid: str, study_date: _dt.date | None) -> PriorResult | None:
        """The study's newest analysis that left a summary, or None."""
        for j in reversed(self.queue.of_study(study_uid)):
            path = self.results_root / str(j.id) / "summary.json"
            if j.state not in (JobState.DONE, JobState.DELIVERING) or not path.is_file():
                continue
            try:
                summary = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                log.warning("job %d: summary of prior study %s unreadable (%s)", j.id, study_uid, e)
                continue
            return PriorResult(study_uid, study_date, j.id, summary, j.instances)
        return None


def _date_text(date: _dt.date | None) -> str:
    return "date unknown" if date is None else date.isoformat()


def _headers(storage_root: Path, instances: Sequence[str]) -> list[Any]:
    """The stored headers of a prior's analysed instances (the report's references)."""
    import pydicom

    out = []
    for rel in instances:
        try:
            out.append(pydicom.dcmread(storage_root / rel, stop_before_pixels=True))
        except (OSError, ValueError) as e:  # purged or unreadable: not referenced
            log.warning("prior instance %s unreadable (%s); not referenced", Path(rel).name, e)
    return out


def trend_of(
    job: Job,
    summary: dict,
    first: Any,
    gathered: PriorsGathered,
    cfg: PriorsSection,
    operating_points: Any,
    storage_root: Path,
) -> Trend:
    """The new study's stage with its priors' (pipeline.stages), fused by ``cfg.fusion_rule``
    with the bundle's operating points, and what the report says of them."""
    from pipeline.stages import fuse_stages, stage_from_summary

    notes = tuple(gathered.warnings)
    if not gathered.results:
        return Trend(None, (), notes, cfg.lookback_days)
    current = stage_from_summary(summary, job.study_uid, parse_da(getattr(first, "StudyDate", "")), current=True)
    priors = [stage_from_summary(r.summary, r.study_uid, r.study_date) for r in gathered.results]
    fused = fuse_stages([current, *priors], cfg.fusion_rule, operating_points)
    evidence = tuple(h for r in gathered.results for h in _headers(storage_root, r.instances))
    return Trend(fused, evidence, notes, cfg.lookback_days)
