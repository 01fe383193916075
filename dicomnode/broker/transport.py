"""The Dramatiq Redis broker, built from ``[broker]``: send a message, consume a queue.

Why Redis + Dramatiq (docs/admin.md, "Scaling out", says the same for admins):

- acknowledgement after the work: Dramatiq acks a message only when its actor returned,
  and our actors return after the results are on disk and the reply is sent;
- redelivery of a dead worker's job: each process heartbeats into Redis (every fetch, at
  least once per ``worker_timeout``, also while a job runs: the delay-queue consumer keeps
  polling); a process silent for ``heartbeat_timeout_s`` is dead, and the next
  *maintenance* (run by any live process on a share ``maintenance_chance`` of its broker
  commands) puts its unacknowledged messages back on the queue;
- long jobs: nothing times a message out while its worker lives; the actor's time limit
  is the job lease (``[node] job_lease_seconds``), after which the node itself gives the
  job out again;
- CUDA: the worker consumes in its own process (``dramatiq.Worker`` in-process, one
  thread, prefetch 1), never in a forked child, so a CUDA context made at start-up stays
  valid; one ``dicomnode worker`` per GPU.

Each process makes one ``Transport``; no global broker (``dramatiq.set_broker``) is used.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

from ..config import BrokerSection
from ..errors import BrokerError

log = logging.getLogger(__name__)

ANALYSIS_QUEUE = "dicomnode-analysis"
#: Prefix of the nodes' reply queues (``results_queue``).
RESULTS_QUEUE = "dicomnode-results"
ANALYSIS_ACTOR = "dicomnode_analyse"
RESULTS_ACTOR = "dicomnode_result"
#: A reply the node could not record (the database busy, ...) is tried again this often.
REPLY_RETRIES, REPLY_BACKOFF_MS = 5, 1000


def results_queue(data_dir: Path) -> str:
    """The reply queue of the node on ``data_dir``: one per node (per data folder), so
    that several listeners can share one Redis and its workers."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
    return f"{RESULTS_QUEUE}-{digest}"


def broker_failures_only(retries: int, error: BaseException) -> bool:
    """Dramatiq's ``retry_when`` of the analysis actor: try a request again only when its
    reply could not be sent (the handler turns every other error into a reply), at most
    ``REPLY_RETRIES`` times; a time limit or anything else is not retried."""
    return isinstance(error, BrokerError) and retries < REPLY_RETRIES


def safe_url(url: str) -> str:
    """The broker URL without a password (for logs and messages)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return parts._replace(netloc=f"{parts.username or ''}:***@{host}{port}").geturl()
    return url


class Transport:
    """One process's connection to the broker."""

    def __init__(self, cfg: BrokerSection) -> None:
        from dramatiq.brokers.redis import RedisBroker

        if not cfg.enabled:
            raise BrokerError("[broker] url is empty: the broker is off")
        self.url = safe_url(cfg.url)
        self.broker = RedisBroker(
            url=cfg.url,
            namespace=cfg.namespace,
            heartbeat_timeout=int(cfg.heartbeat_timeout_s * 1000),
            maintenance_chance=max(1, round(cfg.maintenance_chance * 1_000_000)),
        )
        self._workers: list[Any] = []

    def ping(self) -> None:
        """Raise BrokerError when Redis does not answer."""
        import redis

        try:
            self.broker.client.ping()
        except redis.RedisError as e:
            raise BrokerError(f"broker {self.url} does not answer: {e}") from e

    def send(self, queue_name: str, actor_name: str, payload: Mapping[str, Any]) -> None:
        """Put one message on a queue; BrokerError when Redis does not take it."""
        import redis
        from dramatiq import Message

        try:
            self.broker.enqueue(
                Message(queue_name=queue_name, actor_name=actor_name, args=(dict(payload),), kwargs={}, options={})
            )
        except redis.RedisError as e:
            raise BrokerError(f"broker {self.url} did not take the message: {e}") from e

    def consume(
        self,
        queue_name: str,
        actor_name: str,
        handler: Callable[[dict], None],
        time_limit_s: float,
        retries: int,
        retry_when: Callable[[int, BaseException], bool] | None = None,
    ) -> None:
        """Run ``handler`` on each message of the queue, one at a time, in a thread of this
        process; a message is acknowledged when the handler returned (``retries``, or
        ``retry_when`` when given: how often one it raised on is tried again, then it is
        dead-lettered)."""
        import dramatiq

        options: dict[str, Any] = {"retry_when": retry_when} if retry_when is not None else {}
        dramatiq.actor(
            broker=self.broker,
            actor_name=actor_name,
            queue_name=queue_name,
            max_retries=retries,
            min_backoff=REPLY_BACKOFF_MS,
            time_limit=int(time_limit_s * 1000),
            **options,
        )(handler)
        worker = dramatiq.Worker(self.broker, queues={queue_name}, worker_threads=1)
        worker.queue_prefetch = 1  # a worker holds one job at a time: a dead one strands only that one
        worker.start()
        self._workers.append(worker)
        log.info("consuming %s on broker %s", queue_name, self.url)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop consuming (a running handler may finish within ``timeout_s``), disconnect."""
        for worker in self._workers:
            try:
                worker.stop(timeout=int(timeout_s * 1000))
            except Exception:
                log.exception("broker consumer did not stop cleanly")
        self._workers = []
        self.broker.close()
