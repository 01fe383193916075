"""The node's side of scale-out: jobs out to the broker, results back into the queue.

``Dispatcher`` replaces the in-process workers when ``[broker]`` is on. A thread claims
queued jobs from the SQLite queue (urgent first, as ever; state running, with the lease)
while fewer than ``max_in_flight`` are running, and sends each claim as an
AnalysisRequest. A Dramatiq consumer in this process takes the workers' AnalysisReplies
and records each through the owners of the states: ``JobQueue`` (transitions, checked
against the claim: job id *and* attempt), ``Delivery.record_in`` (via
``dicomnode.worker.hand_over``) and ``SeriesAssembler.mark_skipped``. A reply for a claim
that no longer holds (a duplicate, or a job the reaper gave out again) changes nothing and
its staged results are removed: each result is recorded, hence delivered, once.

Accepting results: the staged folder ``results/.incoming/<staging>/<job>`` is renamed to
``results/<job>`` (the node alone writes there), then the deliveries are recorded with
the job's move to delivering in one transaction. A node killed in between finds the
results in place when the reply is handed to it again.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
from pathlib import Path
from typing import Any

from ..config import NodeConfig
from ..delivery import Delivery
from ..errors import BrokerError, QueueError
from ..queue import FINAL, Job, JobQueue, JobState
from ..series import SeriesAssembler
from ..store import fsync_dir
from ..worker import finish_job, hand_over, identical_reason
from .messages import AnalysisReply, AnalysisRequest, Outcome
from .remote import INCOMING
from .transport import ANALYSIS_ACTOR, ANALYSIS_QUEUE, REPLY_RETRIES, RESULTS_ACTOR, Transport, results_queue

log = logging.getLogger(__name__)

#: A staging folder's name as RemoteWorker makes it (checked before it becomes a path).
STAGING_NAME = re.compile(r"(\d+)-a(\d+)-[0-9a-f]{12}")
#: After the broker refused a job, wait this long before handing out the next.
BROKER_DOWN_PAUSE_S = 5.0


class Dispatcher:
    """Hands claimed jobs to the broker and records the replies (``start``/``stop``)."""

    def __init__(
        self,
        cfg: NodeConfig,
        queue: JobQueue,
        assembler: SeriesAssembler,
        delivery: Delivery,
        results_root: Path,
        transport: Transport | None = None,
        metrics: Any = None,
        audit: Any = None,
    ) -> None:
        self.cfg = cfg
        self.queue = queue
        self.assembler = assembler
        self.delivery = delivery
        self.results_root = results_root
        self.transport = transport if transport is not None else Transport(cfg.broker)
        self.reply_queue = results_queue(cfg.node.data_dir)
        self.metrics = metrics  # dicomnode.telemetry.NodeMetrics, or None
        self.audit = audit
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self.sweep_incoming()
        self.transport.ping()
        self.transport.consume(
            self.reply_queue, RESULTS_ACTOR, self.on_reply, time_limit_s=600.0, retries=REPLY_RETRIES
        )
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self._thread.start()
        log.info("jobs go to the workers through broker %s (at most %d at once)", self.transport.url, self.window)

    @property
    def window(self) -> int:
        return self.cfg.broker.max_in_flight

    def kick(self, *_: object) -> None:
        """Hand out jobs now (one was queued, or one finished)."""
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop handing out jobs and taking replies; jobs at the workers stay with them
        (their replies wait in the broker for the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.transport.close(timeout_s)

    # -- out --------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.dispatch_due()
            except Exception:
                log.exception("dispatcher: cannot hand out jobs; retrying")
                sent = 0
            if not sent:
                self._wake.wait(1.0)
                self._wake.clear()

    def dispatch_due(self) -> int:
        """Claim and send jobs while fewer than the window are running; returns how many."""
        sent = 0
        while not self._stop.is_set() and self.queue.counts().get(JobState.RUNNING.value, 0) < self.window:
            job = self.queue.claim()
            if job is None:
                break
            if not self._send(job):
                self._stop.wait(BROKER_DOWN_PAUSE_S)
                break
            sent += 1
        return sent

    def _send(self, job: Job) -> bool:
        request = AnalysisRequest(
            job.id,
            job.attempts,
            job.series_uid,
            job.study_uid,
            job.instances,
            tuple(self.queue.analysed_before(job)),
            data_dir=str(Path(self.cfg.node.data_dir).resolve()),
            reply_queue=self.reply_queue,
        )
        try:
            self.transport.send(ANALYSIS_QUEUE, ANALYSIS_ACTOR, request.encode())
        except BrokerError as e:
            log.error("job %d: %s; given back to the queue", job.id, e)
            try:
                self.queue.transition(
                    job.id, JobState.QUEUED, "given back: the broker did not take it", JobState.RUNNING, job.attempts
                )
            except QueueError:
                pass  # the reaper or an admin moved it meanwhile
            return False
        log.info("job %d (attempt %d) handed to the workers", job.id, job.attempts)
        return True

    # -- back -------------------------------------------------------------------------
    def on_reply(self, payload: dict) -> None:
        """The Dramatiq actor of the results queue (the ack follows the return)."""
        reply = AnalysisReply.decode(payload)
        try:
            self.apply(reply)
        finally:
            self.kick()

    def apply(self, reply: AnalysisReply) -> JobState | None:
        """Record one reply; returns the job's new state, None when the reply was stale."""
        try:
            job = self.queue.get(reply.job_id)
        except QueueError:
            job = None
        if job is None or job.state != JobState.RUNNING or job.attempts != reply.attempts:
            now_is = f"{job.state}, attempt {job.attempts}" if job else "unknown"
            log.warning(
                "job %d: reply of attempt %d from %s ignored (the job is %s): recorded once already",
                reply.job_id,
                reply.attempts,
                reply.worker,
                now_is,
            )
            self._discard(reply)
            return None
        log.info("job %d: %s by %s (attempt %d)", job.id, reply.outcome, reply.worker, job.attempts)
        if reply.outcome == Outcome.ANALYSED:
            return self._accept(job, reply)
        if reply.outcome == Outcome.RETRY:
            self.queue.retry_later(job, reply.reason or "transient failure; retried", reply.retry_after_s)
            return JobState.QUEUED
        state = JobState.SKIPPED if reply.outcome == Outcome.SKIPPED else JobState.FAILED
        return finish_job(self.queue, self.assembler, self.audit, job, state, reply.reason)

    def _accept(self, job: Job, reply: AnalysisReply) -> JobState:
        if self.metrics is not None and reply.timings_s:
            self.metrics.chain_timings(dict(reply.timings_s))
        if reply.content_sha256:
            earlier = self.queue.record_content(job, reply.content_sha256)
            if earlier is not None:
                self._discard(reply)
                return finish_job(self.queue, self.assembler, self.audit, job, JobState.DONE, identical_reason(earlier))
        if not self._take_results(job, reply):
            self.queue.transition(
                job.id, JobState.QUEUED, "given back: its results are missing", JobState.RUNNING, job.attempts
            )
            return JobState.QUEUED
        try:
            return hand_over(self.cfg, self.queue, self.delivery, job, reply.written)
        except QueueError as e:
            log.warning("job %d: claim lost while recording its results (%s)", job.id, e)
            return self.queue.get(job.id).state

    def _staged(self, reply: AnalysisReply) -> Path | None:
        """The reply's staging folder, when its name is one a worker makes for this job."""
        m = STAGING_NAME.fullmatch(reply.staging or "")
        if m is None or int(m[1]) != reply.job_id:
            return None
        return self.results_root / INCOMING / m[0]

    def _take_results(self, job: Job, reply: AnalysisReply) -> bool:
        """Move the staged results to results/<job>; False when they are not there."""
        staged, final = self._staged(reply), self.results_root / str(job.id)
        prefix = f"{job.id}/"
        if staged is None or not all(path.startswith(prefix) and ".." not in path for _, _, path in reply.written):
            log.error("job %d: reply from %s names results outside its own folder; ignored", job.id, reply.worker)
            return False
        if (staged / str(job.id)).is_dir():
            if final.exists():
                shutil.rmtree(final)  # an earlier attempt's, never recorded (so never delivered)
            (staged / str(job.id)).rename(final)
            fsync_dir(self.results_root)
            shutil.rmtree(staged, ignore_errors=True)
        return all((self.results_root / path).is_file() for _, _, path in reply.written)

    def sweep_incoming(self) -> int:
        """Remove staged results no reply can claim any more (their job ended or was
        claimed again: left by a worker that died after writing, or by a lost reply);
        returns how many."""
        incoming = self.results_root / INCOMING
        removed = 0
        for folder in sorted(incoming.iterdir()) if incoming.is_dir() else []:
            m = STAGING_NAME.fullmatch(folder.name)
            if m is None:
                continue
            try:
                job = self.queue.get(int(m[1]))
            except QueueError:
                job = None
            if job is None or job.state in FINAL or job.attempts > int(m[2]):
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        if removed:
            log.info("removed %d staged result folder(s) no reply can claim", removed)
        return removed

    def _discard(self, reply: AnalysisReply) -> None:
        staged = self._staged(reply)
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
