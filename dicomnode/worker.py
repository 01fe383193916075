"""The worker: the only place where I/O and compute meet.

claim a job -> load the series (``dicomnode.volume.load_series``) -> load the models once
per process (``pipeline.models.load_bundle_cached``) -> ``pipeline.chain.analyze`` ->
with ``[priors]``, for a new study: its prior studies found, retrieved and analysed, this
job running their jobs while it waits (``dicomnode.multistage``), the dates fused ->
``dicomnode.writers.build_result_objects`` -> persist the objects under
``results/<job>/`` -> record one delivery per (destination, object) and move the job to
``delivering`` in one transaction -> wake delivery.

Results are persisted before any delivery starts, and built with UIDs derived from the
job (``WriterOptions.uid_seed``), so a node killed at any point re-sends the very same
objects: a destination receives each result once (at worst the same SOP Instance again).
Every error becomes a recorded job state with a reason; nothing escapes the thread. A
full disk while writing the results is transient: the partial results are removed and
the job is queued again after a backoff.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from .config import OBJECT_KINDS, NodeConfig
from .db import now
from .delivery import Delivery
from .errors import QueueError
from .header import dataset_sha256, validate_uid
from .multistage import PriorsGathered, PriorsStep
from .prior_studies import PriorStudies
from .queue import Job, JobQueue, JobState
from .radiograph_job import is_radiograph_job
from .series import SeriesAssembler
from .store import fsync_dir

log = logging.getLogger(__name__)

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_FIRST_DELAY_S, DISK_FULL_MAX_DELAY_S = 30.0, 900.0


def write_dataset_durably(ds, path: Path) -> None:
    """Save a pydicom Dataset atomically (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        ds.save_as(f, enforce_file_format=True)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def persist_fhir_bundle(
    summary: dict, result: Any, sources: Sequence[Any], job_dir: Path, job_id: int
) -> tuple[str, str, str]:
    """Write the job's FHIR transaction Bundle (dicomnode.fhir) durably; returns its
    written-object row (kind ``fhir``)."""
    from dicomnode.fhir import build_report_bundle
    from dicomnode.study_refs import refs_from_sources
    from dicomnode.writers import wording
    from dicomnode.writers.common import key_slices

    keys = [sources[z] for z in key_slices(result)] if wording.shows_explanations(result) else []
    first = sources[0]
    bundle = build_report_bundle(summary, refs_from_sources(first, keys), f"{first.SeriesInstanceUID}/job-{job_id}")
    path = job_dir / "fhir" / "report.json"
    _write_text_durably(path, bundle.model_dump_json(indent=1))
    return "fhir", f"fhir-job-{job_id}", str(path.relative_to(job_dir.parent))


def _write_text_durably(path: Path, text: str) -> None:
    """Write ``text`` as ``path`` through a fsynced temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def persist_hl7_message(
    summary: dict, result: Any, sources: Sequence[Any], job_dir: Path, job_id: int, dest: Any
) -> tuple[str, str, str]:
    """Write the job's ORU^R01 for one HL7 destination (its MSH-5/6) durably; returns its
    written-object row (kind ``hl7``, one per destination: each has its own header)."""
    from dicomnode.hl7 import build_oru, destination_tag
    from dicomnode.study_refs import refs_from_sources

    first = sources[0]
    tag = destination_tag(dest.key)
    control_id = f"{job_id}-{tag}"  # MSH-10: unique per job and destination, <= 20 characters
    message = build_oru(
        summary,
        refs_from_sources(first, []),
        str(getattr(first, "PatientName", "") or ""),
        control_id,
        dest.receiving_application,
        dest.receiving_facility,
        dest.sending_facility,
    )
    path = job_dir / "hl7" / f"oru-{tag}.hl7"
    _write_text_durably(path, message)
    return "hl7", f"hl7-{job_id}-{tag}", str(path.relative_to(job_dir.parent))


def persist_results(objects: Mapping[str, Sequence], job_dir: Path, summary: dict | None) -> list[tuple[str, str, str]]:
    """Write every result object under ``job_dir`` (replacing an earlier attempt's).

    Returns (kind, SOP Instance UID, path relative to the results root) per object.
    """
    if job_dir.exists():
        shutil.rmtree(job_dir)  # a previous, interrupted attempt: nothing of it was delivered
    job_dir.mkdir(parents=True)
    written = []
    for kind, datasets in objects.items():
        kind_dir = job_dir / kind
        kind_dir.mkdir(exist_ok=True)
        for ds in datasets:
            uid = validate_uid(ds.SOPInstanceUID, f"{kind} SOP Instance UID")  # becomes a file name
            path = kind_dir / f"{uid}.dcm"
            write_dataset_durably(ds, path)
            written.append((kind, uid, str(path.relative_to(job_dir.parent))))
        fsync_dir(kind_dir)
    if summary is not None:
        _write_text_durably(job_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    fsync_dir(job_dir)
    fsync_dir(job_dir.parent)
    return written


def content_fingerprint(paths: Sequence[Path], bundle_sha256: str) -> str:
    """sha256 over the datasets of a series' files and the model bundle: equal for an
    identical re-send analysed with the same bundle, whatever the order or the sender."""
    h = hashlib.sha256(f"bundle {bundle_sha256}\n".encode())
    for digest in sorted(dataset_sha256(p) for p in paths):
        h.update(digest.encode() + b"\n")
    return h.hexdigest()


def identical_reason(earlier: int) -> str:
    """A re-sent series' job whose content an earlier job analysed already."""
    return f"identical to job {earlier} (same instances, same model bundle): its results stand, none made again"


def log_analysis(job_id: int, series_uid: str, result: Any, seconds: float) -> None:
    """One log line per analysis: the stages' seconds and the decision (never the patient)."""
    steps = ", ".join(f"{k} {v:.1f}" for k, v in result.timings_s.items() if k != "total")
    # The decision is what every object states; the argmax alone would mislead a reader
    # of the log on an indeterminate or out-of-domain case.
    log.info(
        "job %d: analysed series %s in %.1f s (%s): decision %s (%s; most probable class %s, out-of-domain score %.2f)",
        job_id,
        series_uid,
        seconds,
        steps,
        result.decision.value,
        result.decision.reason or "no reason given",
        result.case_scores.label,
        result.domain.score,
    )
    if result.cxr is not None:
        log.info(
            "job %d: CXR branch on localizer %s: %s; %s",
            job_id,
            ",".join(result.cxr.radiograph.sop_uids) or "?",
            ", ".join(f"{k} {v:.3f}" for k, v in result.cxr.probabilities.items()),
            result.cxr.reason,
        )


def run_chain(cfg: NodeConfig, bundle: Any, job_id: int, series_uid: str, volume: Any, localizer: Any = None) -> Any:
    """``pipeline.chain.analyze`` with the node's settings, and the CXR branch on the study's
    ``localizer`` (a pipeline Radiograph, or None: ``read_job_localizer``), logged (one
    line, no patient data); NotAChestCTError propagates (the caller skips the series with
    its reason)."""
    from pipeline.chain import analyze
    from pipeline.cxr import with_cxr
    from pipeline.params import ChainParams

    params = ChainParams(top_k=cfg.pipeline.top_k, device=cfg.pipeline.device)
    t0 = now()
    result = with_cxr(analyze(volume, bundle, params), localizer, bundle)
    log_analysis(job_id, series_uid, result, now() - t0)
    return result


def read_job_localizer(cfg: NodeConfig, bundle: Any, present: Sequence[Path], first: Any) -> tuple[Any, Any] | None:
    """The study's localizer for the CXR branch (dicomnode.localizer): (Radiograph, its
    dataset), or None when ``[cxr]`` is off, the bundle has no CXR model or the study none."""
    if not cfg.cxr.enabled or getattr(bundle, "cxr", None) is None:
        return None
    from dicomnode.localizer import study_localizer

    return study_localizer(present, first, cfg.cxr.localizer_image_types)


def present_files(storage_root: Path, instances: Sequence[str]) -> list[Path]:
    """The job's instance files still in storage."""
    return [p for p in (storage_root / rel for rel in instances) if p.is_file()]


def read_job_series(cfg: NodeConfig, present: Sequence[Path]) -> tuple[Any, list]:
    """The series as (CTVolume, source datasets); raises SeriesRejected with the reason."""
    from dicomnode.volume import load_series  # late: heavy imports

    return load_series(
        present,
        min_slices=cfg.selection.min_slices_readable,
        refuse_image_types=cfg.selection.refuse_image_types,
    )


def build_job_objects(
    cfg: NodeConfig,
    job_id: int,
    series_uid: str,
    result: Any,
    volume: Any,
    sources: Sequence,
    previous: Sequence,
    trend: Any = None,
    cxr_sources: Sequence = (),
) -> Mapping[str, Sequence]:
    """The result objects some destination wants (with none: every kind), with UIDs derived
    from the job, so that a job run twice makes the very same objects."""
    from dicomnode.writers import build_result_objects
    from dicomnode.writers.options import WriterOptions

    kinds = {k for d in cfg.destinations for k in d.objects} or set(OBJECT_KINDS)
    options = WriterOptions(
        enabled=frozenset(kinds),
        max_overlays=cfg.pipeline.max_overlays,
        uid_seed=f"{series_uid}/job-{job_id}",
        previous_reports=tuple(previous),
        trend=trend,
        cxr_sources=tuple(cxr_sources),
    )
    return build_result_objects(result, volume, sources, options)


def persist_job_outputs(
    cfg: NodeConfig, objects: Mapping[str, Sequence], job_dir: Path, summary: dict, result: Any, sources: Sequence
) -> list[tuple[str, str, str]]:
    """Write the DICOM objects, the summary, the FHIR Bundle and the HL7 messages of job
    ``job_dir.name`` durably under ``job_dir``; the written-object rows (paths relative to
    ``job_dir.parent``). An OSError (a full disk among them) propagates."""
    job_id = int(job_dir.name)
    written = persist_results(objects, job_dir, summary)
    if cfg.fhir_destinations:
        written.append(persist_fhir_bundle(summary, result, sources, job_dir, job_id))
    for dest in cfg.hl7_destinations:
        written.append(persist_hl7_message(summary, result, sources, job_dir, job_id, dest))
    return written


def read_earlier_reports(results_root: Path, earlier_jobs: Sequence[int], job_id: int) -> list:
    """The SRs of earlier analyses of the series (before late instances arrived): the new
    report replaces them and says so (Predecessor Documents Sequence)."""
    import pydicom

    reports = []
    for earlier in earlier_jobs:
        for path in sorted((results_root / str(earlier) / "sr").glob("*.dcm")):
            try:
                reports.append(pydicom.dcmread(path))
            except (OSError, ValueError) as e:
                log.warning("job %d: earlier report %s unreadable (%s); not referenced", job_id, path.name, e)
    return reports


def disk_full_delay_s(attempts: int) -> float:
    """The backoff of a job whose results found the disk full: 30 s doubling per attempt,
    at most 15 min."""
    return min(DISK_FULL_MAX_DELAY_S, DISK_FULL_FIRST_DELAY_S * 2 ** max(0, attempts - 1))


def nothing_to_send_reason(cfg: NodeConfig, written: Sequence[tuple[str, str, str]]) -> str:
    """Why a job ends with no delivery: no destination at all, or none wants what was
    made (an out-of-domain result has no SC and no KOS, and a destination may want
    only those)."""
    if not cfg.destinations:
        return "no destination configured: results kept in the results folder"
    made = sorted({kind for kind, _, _ in written})
    return f"no destination wants the objects made ({', '.join(made) or 'none'}): results kept in the results folder"


def hand_over(
    cfg: NodeConfig,
    queue: JobQueue,
    delivery: Delivery,
    job: Job,
    written: Sequence[tuple[str, str, str]],
    kept: bool = False,
) -> JobState:
    """Record the deliveries of a claimed job's persisted results and move the job on, in
    one transaction (QueueError when the claim no longer holds); wakes delivery. ``kept``:
    a prior study's results, kept in the results folder and not delivered."""
    t = now()
    with queue.db.transaction() as conn:
        count = 0 if kept else delivery.record_in(conn, job.id, written, t)
        new = JobState.DELIVERING if count else JobState.DONE
        if count:
            reason = None
        elif kept:
            reason = "prior study of a later study: results kept in the results folder, not delivered"
        else:
            reason = nothing_to_send_reason(cfg, written)
        queue.transition_in(conn, job.id, new, reason, expect=JobState.RUNNING, attempts=job.attempts, at=t)
    log.info("job %d -> %s (%d object(s), %d delivery(ies))", job.id, new, len(written), count)
    if count:
        delivery.kick()
    return new


def finish_job(
    queue: JobQueue, assembler: SeriesAssembler, audit: Any, job: Job, state: JobState, reason: str | None
) -> JobState:
    """Record a claimed job's final (or given-back) state; the series is marked skipped
    with the reason, and the audit trail gets the outcome. Returns the job's state."""
    try:
        queue.transition(job.id, state, reason, expect=JobState.RUNNING, attempts=job.attempts)
    except QueueError as e:
        log.warning("job %d: could not record %s (%s)", job.id, state, e)
        return queue.get(job.id).state
    if state == JobState.SKIPPED and reason:
        assembler.mark_skipped(job.series_uid, reason)
    if audit is not None:
        audit(
            "job",
            "success" if state == JobState.DONE else str(state.value),
            job_id=job.id,
            series_uid=job.series_uid,
            study_uid=job.study_uid,
            attempt=job.attempts,
            reason=reason or "",
        )
    return state


class _GivenBack(Exception):
    """The job was given back to the queue (the node is stopping); nothing more to record."""


class Worker:
    """Runs jobs from the queue in a background thread (``start``/``stop``)."""

    def __init__(
        self,
        cfg: NodeConfig,
        queue: JobQueue,
        assembler: SeriesAssembler,
        delivery: Delivery,
        storage_root: Path,
        results_root: Path,
        name: str = "worker-1",
        metrics=None,
        ready: threading.Event | None = None,
        audit=None,
    ) -> None:
        self.cfg = cfg
        self.audit = audit  # dicomnode.audit.AuditLog.record, or None
        self.queue = queue
        self.assembler = assembler
        self.delivery = delivery
        self.storage_root = storage_root
        self.results_root = results_root
        self.name = name
        self.metrics = metrics  # dicomnode.telemetry.NodeMetrics, or None
        #: Set once the node has loaded the bundle: jobs wait for it (no cold first job, and
        #: no second thread importing torch/MONAI at the same time, which MONAI does not survive).
        self.ready = ready
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: Job | None = None
        #: Prior studies of a new study ([priors]): looked up, retrieved and their jobs
        #: run while the new study's job waits for them (dicomnode.multistage).
        self.priors = PriorsStep(cfg, queue, PriorStudies(queue.db), results_root, self.run_job, self._stop)

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def kick(self, *_: object) -> None:
        """Wake the worker now (a job was enqueued)."""
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """Stop taking jobs; wait up to ``timeout`` s for the running one, else give it back."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            job = self.current
            if self._thread.is_alive() and job is not None:
                try:
                    self.queue.transition(
                        job.id,
                        JobState.QUEUED,
                        "given back: node stopped during the job",
                        expect=JobState.RUNNING,
                        attempts=job.attempts,
                    )
                except QueueError:
                    pass  # it finished or moved on meanwhile

    def _loop(self) -> None:
        while self.ready is not None and not self.ready.wait(0.5):
            if self._stop.is_set():
                return
        while not self._stop.is_set():
            try:
                job = self.queue.claim()
            except Exception:
                log.exception("%s: cannot claim a job; retrying", self.name)
                job = None
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self.current = job
            try:
                self.run_job(job)
            except Exception:  # run_job records errors; this is the last net
                log.exception("job %d: unexpected error", job.id)
            finally:
                self.current = None

    # -- one job --------------------------------------------------------------------
    def run_job(self, job: Job) -> JobState:
        """Process a claimed job to its next recorded state; returns that state."""
        try:
            return self._run(job)
        except _GivenBack:
            return JobState.QUEUED
        except QueueError as e:
            log.warning("job %d: claim lost (%s); leaving it to its new owner", job.id, e)
            return self.queue.get(job.id).state
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
            log.exception("job %d failed: %s", job.id, reason)
            return self._finish(job, JobState.FAILED, reason[:500])

    def _finish(self, job: Job, state: JobState, reason: str | None) -> JobState:
        return finish_job(self.queue, self.assembler, self.audit, job, state, reason)

    def _run(self, job: Job) -> JobState:
        from dicomnode.volume import SeriesRejected  # late: heavy imports

        present = present_files(self.storage_root, job.instances)
        if not present:
            return self._finish(job, JobState.SKIPPED, "the series' files are no longer in storage")
        if is_radiograph_job(self.cfg, present):
            return self._run_radiograph(job, present)
        try:
            volume, sources = read_job_series(self.cfg, present)
        except SeriesRejected as e:
            return self._finish(job, JobState.SKIPPED, str(getattr(e, "reason", e)))
        self.queue.renew(job)

        from pipeline.models import load_bundle_cached
        from pipeline.types import NotAChestCTError

        bundle = load_bundle_cached(self.cfg.bundle_dir, self.cfg.pipeline.device)
        earlier = self.queue.record_content(job, content_fingerprint(present, bundle.info.sha256))
        if earlier is not None:  # a PACS re-sent the same series: one result set per content
            return self._finish(job, JobState.DONE, identical_reason(earlier))
        localizer = read_job_localizer(self.cfg, bundle, present, sources[0])
        try:
            result = run_chain(self.cfg, bundle, job.id, job.series_uid, volume, localizer and localizer[0])
        except NotAChestCTError as e:  # a clear skip with the reason, not a failed job
            return self._finish(job, JobState.SKIPPED, str(e)[:500])
        if self.metrics is not None:
            self.metrics.chain_timings(dict(result.timings_s))
        if not self.queue.renew(job):
            raise QueueError(f"job {job.id}: lease lost during analysis")

        previous = read_earlier_reports(self.results_root, self.queue.analysed_before(job), job.id)
        summary = result.summary(volume)
        trend = self._multi_stage(job, summary, sources[0], bundle.operating_points)
        if trend is not None:
            summary["multi_stage"] = trend.summary
        cxr_sources = (localizer[1],) if localizer is not None and result.cxr is not None else ()
        objects = build_job_objects(
            self.cfg, job.id, job.series_uid, result, volume, sources, previous, trend, cxr_sources
        )
        job_dir = self.results_root / str(job.id)
        try:
            written = persist_job_outputs(self.cfg, objects, job_dir, summary, result, sources)
        except OSError as e:
            if e.errno not in DISK_FULL_ERRNOS:
                raise
            return self._retry_when_space(job, job_dir, e)
        kept = not self.cfg.priors.deliver_prior_results and self.priors.links.is_prior(job.study_uid)
        return hand_over(self.cfg, self.queue, self.delivery, job, written, kept)

    def _run_radiograph(self, job: Job, present: Sequence[Path]) -> JobState:
        """A plain radiograph sent alone (dicomnode.radiograph_job): its SR only."""
        from dicomnode.radiograph_job import radiograph_job
        from pipeline.models import load_bundle_cached

        bundle = load_bundle_cached(self.cfg.bundle_dir, self.cfg.pipeline.device)
        outcome = radiograph_job(self.cfg, bundle, job.id, job.series_uid, present)
        if isinstance(outcome, str):
            return self._finish(job, JobState.SKIPPED, outcome[:500])
        objects, summary = outcome
        if self.cfg.fhir_destinations or self.cfg.hl7_destinations:
            log.info("job %d: a radiograph alone: no FHIR or HL7 payload is made for it", job.id)
        job_dir = self.results_root / str(job.id)
        try:
            written = persist_results(objects, job_dir, summary)
        except OSError as e:
            if e.errno not in DISK_FULL_ERRNOS:
                raise
            return self._retry_when_space(job, job_dir, e)
        return hand_over(self.cfg, self.queue, self.delivery, job, written)

    def _multi_stage(self, job: Job, summary: dict, first: Any, operating_points: Any) -> Any:
        """The trend and fused decision of a new study with its priors ([priors] on, not a
        prior's own job); None otherwise. Warnings are logged, audited and reported."""
        from dicomnode.multistage import trend_of

        if not self.priors.applies(job):
            return None
        gathered: PriorsGathered = self.priors.gather(job, first)
        if self._stop.is_set():  # the wait was cut short: run again after the restart, priors included
            self.queue.transition(
                job.id,
                JobState.QUEUED,
                "given back: node stopped while waiting for prior studies",
                expect=JobState.RUNNING,
                attempts=job.attempts,
            )
            raise _GivenBack()
        for warning in gathered.warnings:
            log.warning("job %d: %s", job.id, warning)
            if self.audit is not None:
                self.audit("priors", "warning", job_id=job.id, study_uid=job.study_uid, reason=warning[:500])
        if not self.queue.renew(job):
            raise QueueError(f"job {job.id}: lease lost while waiting for prior studies")
        return trend_of(job, summary, first, gathered, self.cfg.priors, operating_points, self.storage_root)

    def _retry_when_space(self, job: Job, job_dir: Path, error: OSError) -> JobState:
        """Out of space is transient: no partial result is left, and the job runs again
        after a backoff (30 s doubling per attempt, at most 15 min)."""
        shutil.rmtree(job_dir, ignore_errors=True)
        delay = disk_full_delay_s(job.attempts)
        log.error(
            "job %d: disk full while writing its results (%s); partial results removed, retried in %.0f s: "
            "free space in %s",
            job.id,
            error.strerror,
            delay,
            self.results_root,
        )
        self.queue.retry_later(job, f"disk full while writing results ({error.strerror}); retried", delay)
        return JobState.QUEUED
