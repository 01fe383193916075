"""The node: wires listener, store, assembler, queue, worker, delivery and timers.

``Node(cfg).start()`` locks the data folder (one node process per folder), opens the
database, recovers what a killed predecessor left (temp files, instances stored but not
recorded, jobs left running), starts the timers (apscheduler: series quiet period, lease
reaper, delivery retries), the worker(s) and finally the listener. ``stop()`` undoes it in
reverse: stop accepting, let the running job finish (or give it back), stop the timers,
close the database.

Data folder layout::

    node.sqlite3        instances, series, jobs, deliveries (WAL)
    node.lock           held (flock) while a node runs on this folder
    storage/<study>/<series>/<sop>.dcm
    results/<job>/<kind>/<sop>.dcm, results/<job>/summary.json
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

from .admin_api import HttpServer, build_app, token_for
from .audit import AuditLog
from .broker.dispatcher import Dispatcher
from .config import NodeConfig
from .db import Database
from .delivery import Delivery
from .errors import DataDirLockedError, StoreError
from .header import read_file_header
from .housekeeping import Housekeeper
from .queue import JobQueue
from .scp import StorageSCP
from .series import SeriesAssembler
from .store import InstanceStore
from .telemetry import NodeCollector, NodeMetrics
from .worker import Worker

if TYPE_CHECKING:
    from pipeline.types import ModelInfo

log = logging.getLogger(__name__)

DB_FILE = "node.sqlite3"
LOCK_FILE = "node.lock"
REAP_INTERVAL_S = 30.0


def data_paths(data_dir: Path) -> dict[str, Path]:
    return {
        "db": data_dir / DB_FILE,
        "storage": data_dir / "storage",
        "journal": data_dir / "journal",
        "results": data_dir / "results",
        "lock": data_dir / LOCK_FILE,
    }


class Node:
    """One running node; ``start``/``stop`` (also usable as a context manager)."""

    def __init__(self, cfg: NodeConfig, stop_timeout_s: float = 60.0) -> None:
        self.cfg = cfg
        self.stop_timeout_s = stop_timeout_s
        self.paths = data_paths(Path(cfg.node.data_dir))
        self._lock_fd: int | None = None
        self.metrics = NodeMetrics()
        self.metrics.add_collector(NodeCollector(self))
        self.http: HttpServer | None = None
        #: The loaded, warmed-up bundle's identity (None until the warm-up finished).
        self.bundle_info: ModelInfo | None = None
        self.bundle_error: str | None = None
        #: Set when the warm-up ended (loaded or failed): the workers start then.
        self.warmed = threading.Event()
        self.db: Database | None = None
        self.scp: StorageSCP | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.workers: list[Worker] = []
        #: With [broker] on: hands jobs to ``dicomnode worker`` processes (no worker thread here).
        self.dispatcher: Dispatcher | None = None
        #: The audit trail (dicomnode.audit), opened at start.
        self.audit: AuditLog | None = None

    def audit_record(self, event: str, outcome: str = "success", **fields) -> None:
        """An audit event (no-op before start): the admin API's actions come here."""
        if self.audit is not None:
            self.audit.record(event, outcome, **fields)

    # -- start ----------------------------------------------------------------------
    def _lock(self) -> None:
        self.paths["lock"].parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.paths["lock"], os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirLockedError(
                f"another node is running on {self.paths['lock'].parent}; stop it or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _read_header(self, rel_path: str):
        """A stored instance's header with its file meta (the urgent rules read it)."""
        import pydicom

        return pydicom.dcmread(self.store.root / rel_path, stop_before_pixels=True)

    def start(self) -> "Node":
        cfg = self.cfg
        self._lock()
        try:
            self.db = Database(self.paths["db"])
            self.store = InstanceStore(
                self.paths["storage"],
                cfg.node.min_free_mb,
                journal_dir=self.paths["journal"] if cfg.node.journal else None,
                journal_segment_mb=cfg.node.journal_segment_mb,
            )
            self.paths["results"].mkdir(parents=True, exist_ok=True)
            self.queue = JobQueue(self.db, cfg.node.job_lease_seconds, cfg.node.max_job_attempts)
            self.audit = AuditLog(cfg.node.data_dir / "audit")
            self.delivery = Delivery(
                self.db,
                cfg.destinations,
                cfg.delivery,
                self.paths["results"],
                cfg.node.ae_title,
                audit=self.audit.record,
                queue=self.queue,
                network_timeout_s=cfg.node.network_timeout_s,
                fhir_destinations=cfg.fhir_destinations,
                hl7_destinations=cfg.hl7_destinations,
            )
            self.assembler = SeriesAssembler(
                self.db,
                self.queue,
                cfg.selection,
                cfg.node.quiet_seconds,
                on_enqueued=self._job_enqueued,
                read_header=self._read_header,
                radiographs=cfg.cxr.radiograph_modalities if cfg.cxr.radiographs_alone else (),
            )
            self._make_workers()
            token = token_for(cfg.http) if cfg.http.port else None
            self._recover()
            self._start_timers()
            if self.dispatcher is not None:
                self._identify_bundle()
                self.dispatcher.start()
            else:
                threading.Thread(target=self._warm_up, name="bundle-warm-up", daemon=True).start()
            for w in self.workers:
                w.start()
            self.scp = StorageSCP(
                cfg.node,
                self.store,
                self.assembler.record_instance,
                observe=self.metrics.stored,
                on_released=(self.assembler.complete_released if cfg.node.complete_on_release else None),
                audit=self.audit.record,
            )
            self.scp.start()
            if cfg.http.port:
                self.http = HttpServer(build_app(self, token), cfg.http.bind_address, cfg.http.port).start()
        except BaseException:
            self.stop()
            raise
        log.info(
            "node started: AE %s on %s:%d, data in %s",
            cfg.node.ae_title,
            cfg.node.bind_address,
            self.scp.port,
            cfg.node.data_dir,
        )
        return self

    def _make_workers(self) -> None:
        """The in-process worker threads, or with [broker] on the dispatcher instead."""
        if self.audit is None:
            raise RuntimeError("the workers are made after the audit log is open")
        cfg = self.cfg
        if cfg.broker.enabled:
            self.dispatcher = Dispatcher(
                cfg,
                self.queue,
                self.assembler,
                self.delivery,
                self.paths["results"],
                metrics=self.metrics,
                audit=self.audit.record,
            )
        self.workers = [
            Worker(
                cfg,
                self.queue,
                self.assembler,
                self.delivery,
                self.store.root,
                self.paths["results"],
                name=f"worker-{i + 1}",
                metrics=self.metrics,
                ready=self.warmed,
                audit=self.audit.record,
            )
            for i in range(0 if self.dispatcher is not None else cfg.node.workers)
        ]

    def _warm_up(self) -> None:
        """Load the bundle and run each network once, so that the first case is not cold;
        /readyz turns green after it."""
        try:
            from pipeline.models import load_bundle_cached, warm_up

            bundle = load_bundle_cached(self.cfg.bundle_dir, self.cfg.pipeline.device)
            warm_up(bundle)
            self.bundle_info = bundle.info
            log.info("model bundle %s %s loaded and warmed up", bundle.info.name, bundle.info.version)
        except Exception as e:  # the node still receives; jobs fail with the reason
            self.bundle_error = f"{type(e).__name__}: {e}"
            log.error("model bundle %s cannot be loaded: %s", self.cfg.bundle_dir, self.bundle_error)
        finally:
            self.warmed.set()

    def _identify_bundle(self) -> None:
        """With a broker the workers load the bundle; the node only names it (its card)."""
        try:
            from pipeline.models import bundle_info

            self.bundle_info = bundle_info(self.cfg.bundle_dir)
        except Exception as e:  # the node still receives; the workers say more
            self.bundle_error = f"{type(e).__name__}: {e}"
            log.error("model bundle %s cannot be read: %s", self.cfg.bundle_dir, self.bundle_error)
        finally:
            self.warmed.set()

    def _recover(self) -> None:
        removed = self.store.remove_temp_files()
        if removed:
            log.warning("removed %d partial file(s) left by an interrupted write", removed)
        known = self.assembler.known_paths()
        found = 0
        for rel in self.store.scan():
            if str(rel) in known:
                continue
            path = self.store.root / rel
            try:
                info = read_file_header(path)
            except StoreError as e:
                log.warning("stored file %s is unreadable (%s); left aside", rel, e)
                continue
            self.assembler.record_instance(info, str(rel), received=path.stat().st_mtime)
            found += 1
        if found:
            log.warning("recorded %d stored instance(s) the database had missed", found)
        if self.dispatcher is not None:
            # Running jobs are at the workers (or their replies wait in the broker): they
            # stay running; one the broker never got runs again when its lease expires.
            return
        given_back = self.queue.recover_after_restart()
        if given_back:
            log.warning("%d job(s) left running by a stopped node were given back", len(given_back))

    def _start_timers(self) -> None:
        cfg = self.cfg
        if self.db is None or self.audit is None:
            raise RuntimeError("the timers start after the database and the audit log are open")
        sched = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}, timezone=dt.timezone.utc
        )
        tick = max(0.1, min(1.0, cfg.node.quiet_seconds / 4))
        sched.add_job(self.assembler.complete_due, "interval", seconds=tick, id="series-quiet-period")
        sched.add_job(self.queue.reap, "interval", seconds=REAP_INTERVAL_S, id="lease-reaper")
        keeper = Housekeeper(
            self.db,
            self.store.root,
            self.paths["results"],
            cfg.housekeeping.retention_days,
            cfg.housekeeping.max_storage_gb,
            audit=self.audit.record,
        )
        if keeper.active:
            sched.add_job(
                keeper.run,
                "interval",
                minutes=cfg.housekeeping.interval_minutes,
                id="housekeeping",
                max_instances=1,
                coalesce=True,
            )
        sched.add_job(
            self.delivery.deliver_due,
            "interval",
            seconds=cfg.delivery.poll_seconds,
            id="delivery",
            next_run_time=dt.datetime.now(dt.timezone.utc),
        )
        self.delivery.on_kick = self._kick_delivery
        sched.start()
        self.scheduler = sched

    def _kick_delivery(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.modify_job("delivery", next_run_time=dt.datetime.now(dt.timezone.utc))

    def _job_enqueued(self, job_id: int) -> None:
        for w in self.workers:
            w.kick()
        if self.dispatcher is not None:
            self.dispatcher.kick()

    @property
    def port(self) -> int:
        return self.scp.port if self.scp is not None else self.cfg.node.port

    @property
    def tls_port(self) -> int | None:
        """The DICOM TLS listener's port, None without one."""
        return self.scp.tls_port if self.scp is not None else (self.cfg.node.tls_port or None)

    # -- stop -----------------------------------------------------------------------
    def stop(self) -> None:
        """Stop accepting, finish or give back the running job, stop timers, close the DB."""
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.scp is not None:
            self.scp.stop()
            self.scp = None
        store = getattr(self, "store", None)  # set at start
        if store is not None:
            store.close()  # checkpoints the journal
        for w in self.workers:
            w.stop(self.stop_timeout_s)
        self.workers = []
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
        if self.scheduler is not None:
            try:
                self.scheduler.shutdown(wait=True)
            except Exception:
                log.exception("timer shutdown failed")
            self.scheduler = None
        if self.db is not None:
            self.db.close()
            self.db = None
        if self.audit is not None:
            self.audit.close()
            self.audit = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("node stopped")

    def __enter__(self) -> "Node":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
