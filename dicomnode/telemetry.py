"""Prometheus metrics of one node (prometheus-client), in a registry of its own.

Two kinds of figure:

* events counted where they happen: instances and bytes received per calling AE,
  C-STOREs refused, chain seconds per stage (a histogram the worker feeds);
* state read when Prometheus scrapes (``NodeCollector``): series by state, jobs by state
  and the queue depth, deliveries by state and their retries, associations active and
  refused (from the listener), duplicates, free disk space, and the model bundle as an
  info metric. Reading state at scrape time keeps one owner per fact: the database and
  the listener, not a copy of them here.

Labels hold AE titles and states only, never UIDs or patient data.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from .logsafe import peer_text

#: Chain stage durations: 10 ms to ~10 min.
STAGE_BUCKETS = (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300, 600)


class NodeMetrics:
    """The node's registry and its event counters; ``render()`` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.instances = Counter(
            "dicomnode_instances_received", "Instances stored (C-STORE success)", ["calling_ae"], registry=self.registry
        )
        self.bytes = Counter("dicomnode_bytes_received", "Dataset bytes stored", ["calling_ae"], registry=self.registry)
        self.refused = Counter(
            "dicomnode_cstore_refused",
            "C-STOREs answered with a failure status",
            ["calling_ae", "status"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "dicomnode_chain_stage_seconds",
            "AI chain seconds per stage",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )

    def stored(self, calling_ae: str, n_bytes: int, status: int) -> None:
        ae = peer_text(calling_ae, 16) or "?"
        if status == 0x0000:
            self.instances.labels(ae).inc()
            self.bytes.labels(ae).inc(n_bytes)
        else:
            self.refused.labels(ae, f"0x{status:04X}").inc()

    def chain_timings(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            if stage != "total":
                self.stage_seconds.labels(stage).observe(float(seconds))

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class NodeCollector(Collector):
    """State figures read at scrape time from the node's parts (see the module doc)."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def describe(self) -> list:
        return []  # read at scrape time: nothing to check at registration

    def collect(self) -> Iterator[Any]:
        node = self.node
        db = node.db
        if db is not None:
            yield _by_state(
                "dicomnode_series",
                "Series by state",
                db.query("SELECT state, COUNT(*) AS n FROM series GROUP BY state"),
            )
            jobs = db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
            yield _by_state("dicomnode_jobs", "Jobs by state", jobs)
            queued = sum(r["n"] for r in jobs if r["state"] == "queued")
            yield GaugeMetricFamily("dicomnode_queue_depth", "Jobs waiting for a worker", value=queued)
            urgent = db.query("SELECT COUNT(*) AS n FROM jobs WHERE state='queued' AND urgent IS NOT NULL")[0]["n"]
            yield GaugeMetricFamily(
                "dicomnode_queue_urgent", "Urgent jobs waiting for a worker ([selection.urgent])", value=urgent
            )
            yield _by_state(
                "dicomnode_deliveries",
                "Object deliveries by state",
                db.query("SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state"),
            )
            retries = db.query("SELECT COALESCE(SUM(MAX(attempts - 1, 0)), 0) AS n FROM deliveries")[0]["n"]
            yield CounterMetricFamily("dicomnode_delivery_retries", "C-STORE retries of deliveries", value=retries)
        scp = getattr(node, "scp", None)
        stats = scp.stats() if scp is not None else {}
        yield GaugeMetricFamily(
            "dicomnode_associations_active", "DICOM associations open", value=stats.get("active", 0)
        )
        yield CounterMetricFamily(
            "dicomnode_associations_refused",
            "Associations refused or aborted by the node",
            value=stats.get("refused", 0),
        )
        store = getattr(node, "store", None)
        if store is not None:
            dup = CounterMetricFamily("dicomnode_duplicate_instances", "Instances received again", labels=["content"])
            for kind, n in store.duplicates.items():
                dup.add_metric([kind], n)
            yield dup
            st = os.statvfs(store.root)
            yield GaugeMetricFamily(
                "dicomnode_disk_free_bytes", "Free space of the storage folder", value=st.f_bavail * st.f_frsize
            )
        info = getattr(node, "bundle_info", None)
        if info is not None:
            yield InfoMetricFamily(
                "dicomnode_model_bundle",
                "Model bundle loaded by the workers",
                value={"name": info.name, "version": info.version, "sha256": info.sha256},
            )


def _by_state(name: str, doc: str, rows: list) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["state"])
    for row in rows:
        family.add_metric([str(row["state"])], row["n"])
    return family
