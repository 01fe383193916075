"""``dicomnode worker``'s side: analyse the jobs the node hands to the broker.

A ``RemoteWorker`` loads and warms the bundle once, then for each AnalysisRequest: reads
the series from ``<data_dir>/storage`` (shared with the node), runs the chain, builds the
result objects (UIDs derived from the job, as in the embedded worker), writes them durably
under ``<data_dir>/results/.incoming/<job>-a<attempt>-<token>/<job>/`` and sends an
AnalysisReply. Only then does the handler return, and Dramatiq acknowledge the request: a
worker that dies before leaves the request to another worker; one that dies after replying
leaves a duplicate that the node ignores. The worker never opens the node's database.
"""

from __future__ import annotations

import errno
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from ..config import NodeConfig
from ..worker import (
    DISK_FULL_ERRNOS,
    build_job_objects,
    content_fingerprint,
    disk_full_delay_s,
    persist_job_outputs,
    present_files,
    read_earlier_reports,
    read_job_localizer,
    read_job_series,
    run_chain,
)
from .messages import AnalysisReply, AnalysisRequest, Outcome
from .transport import RESULTS_ACTOR, Transport, results_queue

log = logging.getLogger(__name__)

#: Where workers put finished results for the node to take over (under the results root).
INCOMING = ".incoming"


class RemoteWorker:
    """One worker process: the bundle loaded once, one request at a time."""

    def __init__(self, cfg: NodeConfig, transport: Transport, name: str) -> None:
        self.cfg = cfg
        self.transport = transport
        self.name = name
        self.data_dir = Path(cfg.node.data_dir)
        self.bundle: Any = None

    def load(self) -> None:
        """Load the bundle and run each network once (no cold first job)."""
        from pipeline.models import load_bundle_cached, warm_up

        self.bundle = load_bundle_cached(self.cfg.bundle_dir, self.cfg.pipeline.device)
        warm_up(self.bundle)
        log.info(
            "%s: model bundle %s %s loaded and warmed up", self.name, self.bundle.info.name, self.bundle.info.version
        )

    def handle(self, payload: dict) -> None:
        """The Dramatiq actor: analyse, persist, reply (the ack follows the return)."""
        request = AnalysisRequest.decode(payload)
        log.info(
            "%s: job %d (attempt %d) started: series %s",
            self.name,
            request.job_id,
            request.attempts,
            request.series_uid,
        )
        reply = self.analyse(request)
        self.transport.send(request.reply_queue or results_queue(self.data_dir), RESULTS_ACTOR, reply.encode())
        log.info("%s: job %d (attempt %d) replied: %s", self.name, request.job_id, request.attempts, reply.outcome)

    def analyse(self, request: AnalysisRequest) -> AnalysisReply:
        """The request's reply; every error becomes a FAILED reply with its reason."""
        try:
            return self._analyse(request)
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"[:500]
            log.exception("%s: job %d failed: %s", self.name, request.job_id, reason)
            return self._reply(request, Outcome.FAILED, reason)

    def _reply(self, request: AnalysisRequest, outcome: Outcome, reason: str | None = None, **extra) -> AnalysisReply:
        return AnalysisReply(request.job_id, request.attempts, outcome, self.name, reason, **extra)

    def _analyse(self, request: AnalysisRequest) -> AnalysisReply:
        from dicomnode.volume import SeriesRejected  # late: heavy imports
        from pipeline.types import NotAChestCTError

        data_dir = Path(request.data_dir) if request.data_dir else self.data_dir
        storage_root, results_root = data_dir / "storage", data_dir / "results"
        if not (storage_root.is_dir() and results_root.is_dir()):
            reason = f"the node's data folder {data_dir} is not reachable from {self.name}: mount it at the same path"
            return self._reply(request, Outcome.FAILED, reason)
        present = present_files(storage_root, request.instances)
        if not present:
            return self._reply(request, Outcome.SKIPPED, "the series' files are no longer in storage")
        try:
            volume, sources = read_job_series(self.cfg, present)
        except SeriesRejected as e:
            return self._reply(request, Outcome.SKIPPED, str(getattr(e, "reason", e)))
        fingerprint = content_fingerprint(present, self.bundle.info.sha256)
        localizer = read_job_localizer(self.cfg, self.bundle, present, sources[0])
        try:
            result = run_chain(
                self.cfg, self.bundle, request.job_id, request.series_uid, volume, localizer and localizer[0]
            )
        except NotAChestCTError as e:
            return self._reply(request, Outcome.SKIPPED, str(e)[:500])
        previous = read_earlier_reports(results_root, request.earlier_jobs, request.job_id)
        cxr_sources = (localizer[1],) if localizer is not None and result.cxr is not None else ()
        objects = build_job_objects(
            self.cfg, request.job_id, request.series_uid, result, volume, sources, previous, cxr_sources=cxr_sources
        )
        staging = f"{request.job_id}-a{request.attempts}-{uuid.uuid4().hex[:12]}"
        job_dir = results_root / INCOMING / staging / str(request.job_id)
        try:
            written = persist_job_outputs(self.cfg, objects, job_dir, result.summary(volume), result, sources)
        except OSError as e:
            shutil.rmtree(job_dir.parent, ignore_errors=True)
            if e.errno not in DISK_FULL_ERRNOS:
                raise
            reason = f"disk full while writing results ({e.strerror or errno.errorcode.get(e.errno or 0)}); retried"
            return self._reply(request, Outcome.RETRY, reason, retry_after_s=disk_full_delay_s(request.attempts))
        return self._reply(
            request,
            Outcome.ANALYSED,
            staging=staging,
            written=tuple(written),
            content_sha256=fingerprint,
            timings_s=dict(result.timings_s),
        )
