"""Issue 9, defect 8: a full disk while the worker writes results is transient. The
partial results are removed, the job is queued again after a backoff, and it completes
once there is space: no result is lost and none is left half-written."""

from __future__ import annotations

import errno
from pathlib import Path

from dicomnode.config import NodeConfig, NodeSection, PipelineSection
from dicomnode.db import Database, now
from dicomnode.delivery import Delivery
from dicomnode.queue import JobQueue, JobState
from dicomnode.series import SeriesAssembler
from dicomnode.store import read_file_header
from dicomnode.synthetic import write_ct_series
from dicomnode import worker as worker_module
from dicomnode.worker import Worker
from pipeline.phantom import make_phantom


def test_disk_full_while_writing_results_is_retried_after_a_backoff(tmp_path: Path, tiny_bundle: Path,
                                                                    monkeypatch) -> None:
    phantom = make_phantom("covid19", 5, n_slices=24, size_px=96)
    storage = tmp_path / "storage"
    series = write_ct_series(phantom.volume, storage / "s")
    cfg = NodeConfig(node=NodeSection(data_dir=tmp_path), pipeline=PipelineSection(bundle=tiny_bundle))
    db = Database(tmp_path / "node.sqlite3")
    queue = JobQueue(db)
    assembler = SeriesAssembler(db, queue, cfg.selection, cfg.node.quiet_seconds)
    delivery = Delivery(db, (), cfg.delivery, tmp_path / "results", cfg.node.ae_title)
    results = tmp_path / "results"
    results.mkdir()
    for path in series.paths:
        assembler.record_instance(read_file_header(path), str(path.relative_to(storage)))
    job_id = queue.enqueue(series.series_uid, series.study_uid,
                           [str(p.relative_to(storage)) for p in series.paths])
    w = Worker(cfg, queue, assembler, delivery, storage, results)

    real_write = worker_module.write_dataset_durably
    written: list[Path] = []

    def fills_the_disk(ds, path):  # the first object lands, the second finds the disk full
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(ds, path)
        written.append(path)

    monkeypatch.setattr(worker_module, "write_dataset_durably", fills_the_disk)
    before = now()
    assert w.run_job(queue.claim()) == JobState.QUEUED
    job = queue.get(job_id)
    assert job.state == JobState.QUEUED and "disk full" in job.reason
    assert written and not (results / str(job_id)).exists(), "partial results must be removed"
    assert queue.claim() is None, "a retried job waits for its backoff"
    not_before = db.query("SELECT not_before FROM jobs WHERE id=?", (job_id,))[0]["not_before"]
    assert before + 29 < not_before < now() + 31

    monkeypatch.setattr(worker_module, "write_dataset_durably", real_write)  # space is back
    retry = queue.claim(at=not_before + 1)
    assert retry is not None and retry.id == job_id and retry.attempts == 2
    assert w.run_job(retry) == JobState.DONE
    assert (results / str(job_id) / "summary.json").is_file()
    db.close()
