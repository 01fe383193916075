"""The worker against a real database, store and model bundle (issue 9):

* defect 8: a full disk while the worker writes results is transient. The partial
  results are removed, the job is queued again after a backoff, and it completes once
  there is space: no result is lost and none is left half-written;
* defect 10: a PACS that re-sends the same series gets no second result set; a series
  whose content changed is analysed again."""

from __future__ import annotations

import errno
from pathlib import Path

import pydicom
import pytest

from dicomnode import worker as worker_module
from dicomnode.config import NodeConfig, NodeSection, PipelineSection
from dicomnode.db import Database, now
from dicomnode.delivery import Delivery
from dicomnode.header import read_file_header
from dicomnode.queue import JobQueue, JobState
from dicomnode.series import SeriesAssembler
from dicomnode.synthetic import write_ct_series
from dicomnode.worker import Worker
from pipeline.phantom import make_phantom

from writer_inputs import dciodvfy


class Harness:
    """A worker with its queue, assembler and delivery on one data folder (no destinations)."""

    def __init__(self, tmp_path: Path, bundle: Path) -> None:
        self.storage = tmp_path / "storage"
        self.results = tmp_path / "results"
        self.results.mkdir()
        cfg = NodeConfig(node=NodeSection(data_dir=tmp_path), pipeline=PipelineSection(bundle=bundle))
        self.db = Database(tmp_path / "node.sqlite3")
        self.queue = JobQueue(self.db)
        self.assembler = SeriesAssembler(self.db, self.queue, cfg.selection, cfg.node.quiet_seconds)
        delivery = Delivery(self.db, (), cfg.delivery, self.results, cfg.node.ae_title)
        self.worker = Worker(cfg, self.queue, self.assembler, delivery, self.storage, self.results)

    def receive(self, paths, generation: int = 1) -> int:
        """Record the files as received and enqueue their series' job."""
        for path in paths:
            self.assembler.record_instance(read_file_header(path), str(path.relative_to(self.storage)))
        info = read_file_header(paths[0])
        return self.queue.enqueue(
            info.series_uid, info.study_uid, [str(p.relative_to(self.storage)) for p in paths], generation=generation
        )


@pytest.fixture
def harness(tmp_path: Path, tiny_bundle: Path):
    h = Harness(tmp_path, tiny_bundle)
    yield h
    h.db.close()


@pytest.fixture
def series(harness):
    phantom = make_phantom("covid19", 5, n_slices=24, size_px=96)
    return write_ct_series(phantom.volume, harness.storage / "s")


def test_disk_full_while_writing_results_is_retried_after_a_backoff(harness, series, monkeypatch) -> None:
    queue, results, db = harness.queue, harness.results, harness.db
    job_id = harness.receive(series.paths)
    w = harness.worker

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


def test_an_identical_resend_makes_no_second_result_set(harness, series) -> None:
    first = harness.receive(series.paths)
    assert harness.worker.run_job(harness.queue.claim()) == JobState.DONE
    assert (harness.results / str(first) / "sr").is_dir()
    # The PACS sends the very same instances again: a new generation of the series.
    again = harness.receive(series.paths, generation=2)
    assert harness.worker.run_job(harness.queue.claim()) == JobState.DONE
    job = harness.queue.get(again)
    assert f"identical to job {first}" in job.reason
    assert not (harness.results / str(again)).exists(), "no second SR/SC/SEG/KOS set"
    # One slice changes (a correction): the series is analysed again.
    ds = pydicom.dcmread(series.paths[3])
    ds.PixelData = (ds.pixel_array + 1).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(series.paths[3], enforce_file_format=True)
    changed = harness.receive(series.paths, generation=3)
    assert harness.worker.run_job(harness.queue.claim()) == JobState.DONE
    assert harness.queue.get(changed).reason is None or "identical" not in harness.queue.get(changed).reason
    assert (harness.results / str(changed) / "sr").is_dir()


def test_dataset_hash_ignores_the_sender_in_the_file_meta(tmp_path: Path) -> None:
    from dicomnode.header import dataset_sha256, encode_file_meta

    ds = pydicom.dcmread(
        write_ct_series(make_phantom("cap", 1, n_slices=12, size_px=32).volume, tmp_path / "s").paths[0]
    )
    body = open(ds.filename, "rb").read()
    a, b = tmp_path / "a.dcm", tmp_path / "b.dcm"
    meta_len = len(body) - len(_dataset_bytes(body))
    for path, sender in ((a, "PACS1"), (b, "SCANNER2")):
        path.write_bytes(
            encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID, sender)
            + body[meta_len:]
        )
    assert a.read_bytes() != b.read_bytes()
    assert dataset_sha256(a) == dataset_sha256(b)


def _dataset_bytes(raw: bytes) -> bytes:
    import struct

    return raw[132 + 12 + struct.unpack("<I", raw[140:144])[0] :]


@pytest.mark.peers
def test_a_series_cut_short_is_flagged_and_its_completion_replaces_the_report(harness, series, tmp_path) -> None:
    """Defect 9: a transfer interrupted after 14 of 24 slices is analysed after the quiet
    period; its report says the series may be incomplete. When the rest arrives, the new
    report references the earlier one as its predecessor and says it replaces it."""
    first = harness.receive(series.paths[:14])
    assert harness.worker.run_job(harness.queue.claim()) == JobState.DONE
    sr1 = pydicom.dcmread(next((harness.results / str(first) / "sr").glob("*.dcm")))
    assert "may be incomplete" in _summary(sr1) and "cut off at the last image" in _summary(sr1)
    assert "PredecessorDocumentsSequence" not in sr1
    second = harness.receive(series.paths, generation=2)
    assert harness.worker.run_job(harness.queue.claim()) == JobState.DONE
    sr2 = pydicom.dcmread(next((harness.results / str(second) / "sr").glob("*.dcm")))
    assert "may be incomplete" not in _summary(sr2)
    assert "replaces 1 earlier report" in _summary(sr2)
    referenced = sr2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == sr1.SOPInstanceUID
    assert sr2.SOPInstanceUID != sr1.SOPInstanceUID
    checked = dciodvfy(sr2, tmp_path, "sr_with_predecessor.dcm")
    assert checked.errors == [], checked.output


def _summary(sr) -> str:
    """The SR's summary text (TID 1500 qualitative evaluations, written by dicomnode.writers.sr)."""
    items = sr.ContentSequence[-1].ContentSequence
    return " ".join(str(i.TextValue) for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == "Summary")
