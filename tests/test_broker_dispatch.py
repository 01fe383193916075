"""The two halves of scale-out without the broker in between: a RemoteWorker analyses a
request from the shared data folder, the node's Dispatcher records the reply through the
queue and delivery. Real database, real bundle, real files; the broker's own redelivery
is tested with Redis in tests/test_scale_out.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.broker.dispatcher import Dispatcher
from dicomnode.broker.messages import AnalysisReply, AnalysisRequest, Outcome
from dicomnode.broker.remote import INCOMING, RemoteWorker
from dicomnode.broker.transport import Transport
from dicomnode.config import BrokerSection, NodeConfig, NodeSection, PipelineSection
from dicomnode.db import Database
from dicomnode.delivery import Delivery
from dicomnode.errors import BrokerError
from dicomnode.header import read_file_header
from dicomnode.queue import JobQueue, JobState
from dicomnode.series import SeriesAssembler
from dicomnode.synthetic import write_ct_series
from pipeline.phantom import make_phantom


class Harness:
    """The node's queue and dispatcher and one remote worker on one data folder. The
    broker URL points nowhere: nothing here sends a message."""

    def __init__(self, tmp_path: Path, bundle: Path) -> None:
        self.storage = tmp_path / "storage"
        self.results = tmp_path / "results"
        self.results.mkdir()
        cfg = NodeConfig(
            node=NodeSection(data_dir=tmp_path),
            pipeline=PipelineSection(bundle=bundle, device="cpu"),
            broker=BrokerSection(url="redis://127.0.0.1:1/0"),
        )
        self.db = Database(tmp_path / "node.sqlite3")
        self.queue = JobQueue(self.db)
        self.assembler = SeriesAssembler(self.db, self.queue, cfg.selection, cfg.node.quiet_seconds)
        delivery = Delivery(self.db, (), cfg.delivery, self.results, cfg.node.ae_title, queue=self.queue)
        self.dispatcher = Dispatcher(cfg, self.queue, self.assembler, delivery, self.results)
        self.worker = RemoteWorker(cfg, Transport(cfg.broker), "worker-t")

    def receive(self, paths) -> int:
        for path in paths:
            self.assembler.record_instance(read_file_header(path), str(path.relative_to(self.storage)))
        info = read_file_header(paths[0])
        return self.queue.enqueue(info.series_uid, info.study_uid, [str(p.relative_to(self.storage)) for p in paths])

    def claimed_request(self) -> AnalysisRequest:
        job = self.queue.claim()
        assert job is not None
        return AnalysisRequest(job.id, job.attempts, job.series_uid, job.study_uid, job.instances)


@pytest.fixture
def harness(tmp_path: Path, tiny_bundle: Path):
    h = Harness(tmp_path, tiny_bundle)
    h.worker.load()
    yield h
    h.db.close()


@pytest.fixture
def series(harness):
    phantom = make_phantom("covid19", 5, n_slices=24, size_px=96)
    return write_ct_series(phantom.volume, harness.storage / "s")


def test_an_analysed_reply_is_recorded_once_and_its_results_move_into_place(harness, series) -> None:
    job_id = harness.receive(series.paths)
    request = harness.claimed_request()
    reply = harness.worker.analyse(request)
    assert reply.outcome == Outcome.ANALYSED, reply.reason
    staged = harness.results / INCOMING / str(reply.staging)
    assert (staged / str(job_id) / "summary.json").is_file()
    assert not (harness.results / str(job_id)).exists()  # the node alone writes results/<job>

    again = AnalysisReply.decode(reply.encode())  # as it travels
    assert harness.dispatcher.apply(again) == JobState.DONE  # no destination: done at once
    assert not staged.exists()
    assert all((harness.results / path).is_file() for _, _, path in reply.written)
    assert harness.queue.get(job_id).state == JobState.DONE

    assert harness.dispatcher.apply(again) is None  # a duplicate changes nothing
    assert harness.queue.get(job_id).state == JobState.DONE


def test_a_reply_of_a_claim_given_out_again_is_ignored_and_its_staging_removed(harness, series) -> None:
    job_id = harness.receive(series.paths)
    old = harness.claimed_request()
    harness.queue.reap(at=1e12)  # the lease expired: the job is queued again
    new = harness.claimed_request()
    assert new.attempts == old.attempts + 1
    stale = harness.worker.analyse(old)
    assert harness.dispatcher.apply(stale) is None
    assert not (harness.results / INCOMING / str(stale.staging)).exists()
    left = harness.worker.analyse(old)  # as if its reply were lost: only the sweep finds it
    current = harness.worker.analyse(new)  # the claim that holds: kept for its reply
    assert harness.dispatcher.sweep_incoming() == 1
    assert not (harness.results / INCOMING / str(left.staging)).exists()
    assert (harness.results / INCOMING / str(current.staging)).is_dir()
    assert harness.queue.get(job_id).state == JobState.RUNNING  # still the new claim's
    assert harness.dispatcher.apply(current) == JobState.DONE


def test_a_reply_naming_files_outside_its_job_is_refused_and_the_job_given_back(harness, series) -> None:
    job_id = harness.receive(series.paths)
    reply = harness.worker.analyse(harness.claimed_request())
    forged = AnalysisReply.decode({**reply.encode(), "written": [["sr", "1.2.3", "../../etc/passwd"]]})
    assert harness.dispatcher.apply(forged) == JobState.QUEUED
    assert harness.queue.get(job_id).state == JobState.QUEUED


def test_a_series_gone_from_storage_is_skipped_with_the_reason(harness, series) -> None:
    job_id = harness.receive(series.paths)
    for p in series.paths:
        p.unlink()
    reply = harness.worker.analyse(harness.claimed_request())
    assert reply.outcome == Outcome.SKIPPED
    assert harness.dispatcher.apply(reply) == JobState.SKIPPED
    job = harness.queue.get(job_id)
    assert job.state == JobState.SKIPPED and "no longer in storage" in str(job.reason)


def test_malformed_messages_raise_broker_error() -> None:
    with pytest.raises(BrokerError, match="malformed analysis request"):
        AnalysisRequest.decode({"job_id": "x"})
    with pytest.raises(BrokerError, match="malformed analysis reply"):
        AnalysisReply.decode({"job_id": 1, "attempts": 1, "outcome": "maybe", "worker": "w"})


def test_a_worker_serves_any_node_whose_data_folder_it_sees(harness, series, tmp_path) -> None:
    """Several listeners (nodes, each with its own data folder and SQLite) share the
    workers: a request names its node's folder and reply queue."""
    from dataclasses import replace

    from dicomnode.broker.transport import results_queue

    assert results_queue(tmp_path / "a") != results_queue(tmp_path / "b")
    assert harness.dispatcher.reply_queue == results_queue(tmp_path)
    job_id = harness.receive(series.paths)
    request = replace(harness.claimed_request(), data_dir=str(tmp_path))
    other_cfg = harness.worker.cfg.model_copy(
        update={"node": harness.worker.cfg.node.model_copy(update={"data_dir": tmp_path / "elsewhere"})}
    )
    elsewhere = RemoteWorker(other_cfg, harness.worker.transport, "worker-elsewhere")
    elsewhere.bundle = harness.worker.bundle
    reply = elsewhere.analyse(request)
    assert reply.outcome == Outcome.ANALYSED, reply.reason
    assert harness.dispatcher.apply(reply) == JobState.DONE
    assert (harness.results / str(job_id) / "summary.json").is_file()

    unreachable = elsewhere.analyse(replace(request, data_dir=str(tmp_path / "not-mounted")))
    assert unreachable.outcome == Outcome.FAILED and "mount it at the same path" in str(unreachable.reason)


def test_the_broker_password_never_reaches_a_log_line() -> None:
    from dicomnode.broker.transport import safe_url

    assert safe_url("redis://:s3cret@10.0.0.7:6379/0") == "redis://:***@10.0.0.7:6379/0"
    assert safe_url("rediss://user:s3cret@redis/1") == "rediss://user:***@redis/1"
    assert safe_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_a_request_is_tried_again_only_when_its_reply_could_not_be_sent() -> None:
    from dramatiq.middleware.time_limit import TimeLimitExceeded

    from dicomnode.broker.transport import REPLY_RETRIES, broker_failures_only

    assert broker_failures_only(0, BrokerError("redis down"))
    assert not broker_failures_only(REPLY_RETRIES, BrokerError("redis down"))
    assert not broker_failures_only(0, TimeLimitExceeded())
    assert not broker_failures_only(0, ValueError("a bug"))
