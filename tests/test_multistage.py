"""dicomnode.multistage.PriorsStep on a real database, without a PACS: when a prior study
is settled, the wait runs the priors' queued jobs itself, gives up at its deadline with a
warning, and the newest analysis with a summary is the prior's stage."""

from __future__ import annotations

import datetime as dt
import json
import threading

from dicomnode.config import NodeConfig, PriorsSection
from dicomnode.db import Database, now
from dicomnode.multistage import PriorsStep
from dicomnode.prior_studies import PriorState, PriorStudies
from dicomnode.queue import JobQueue, JobState


def make_step(tmp_path, run_job=None):
    db = Database(tmp_path / "node.sqlite3")
    queue = JobQueue(db)
    links = PriorStudies(db)
    cfg = NodeConfig(priors=PriorsSection(enabled=True, timeout_s=5))
    ran: list[int] = []

    def finish(job):  # the worker's run_job, reduced to what the wait relies on
        ran.append(job.id)
        queue.transition(job.id, JobState.DONE, None, expect=JobState.RUNNING)

    step = PriorsStep(cfg, queue, links, tmp_path / "results", run_job or finish, threading.Event())
    return step, db, queue, links, ran


def add_series(db, study_uid: str, series_uid: str, state: str) -> None:
    t = now()
    db.execute(
        "INSERT INTO series(series_uid, study_uid, state, instance_count, first_received, last_received) "
        "VALUES (?,?,?,1,?,?)",
        (series_uid, study_uid, state, t, t),
    )


def test_settled_needs_complete_series_and_final_jobs(tmp_path):
    step, db, queue, links, _ = make_step(tmp_path)
    links.record("1.1", "2.1", None, PriorState.REQUESTED)
    assert not step._settled("1.1")  # requested, nothing arrived yet
    links.record("1.9", "2.1", None, PriorState.FAILED, "C-MOVE failed")
    assert step._settled("1.9")  # the move failed and nothing came: nothing to wait for
    add_series(db, "1.1", "1.1.1", "receiving")
    assert not step._settled("1.1")
    db.execute("UPDATE series SET state='complete' WHERE series_uid='1.1.1'")
    job_id = queue.enqueue("1.1.1", "1.1", ["1.1/1.1.1/a.dcm"])
    assert not step._settled("1.1")
    job = queue.claim()
    assert job is not None and job.id == job_id
    queue.transition(job_id, JobState.DONE, None, expect=JobState.RUNNING)
    assert step._settled("1.1")


def test_the_wait_runs_the_priors_jobs_only(tmp_path):
    step, db, queue, links, ran = make_step(tmp_path)
    new = queue.enqueue("2.1.1", "2.1", ["2.1/2.1.1/a.dcm"])
    outer = queue.claim()
    assert outer is not None and outer.id == new
    other = queue.enqueue("3.1.1", "3.1", ["3.1/3.1.1/a.dcm"])  # another patient's study, queued first
    links.record("1.1", "2.1", dt.date(2026, 1, 10), PriorState.RETRIEVED)
    add_series(db, "1.1", "1.1.1", "complete")
    prior = queue.enqueue("1.1.1", "1.1", ["1.1/1.1.1/a.dcm"])
    assert step._wait(outer, ["1.1"], now() + 30) == []
    assert ran == [prior] and queue.get(other).state == JobState.QUEUED


def test_the_wait_gives_up_at_its_deadline_with_a_warning(tmp_path):
    step, db, queue, links, ran = make_step(tmp_path)
    queue.enqueue("2.1.1", "2.1", ["2.1/2.1.1/a.dcm"])
    outer = queue.claim()
    links.record("1.1", "2.1", None, PriorState.REQUESTED)  # its instances never come
    (warning,) = step._wait(outer, ["1.1"], now() + 0.2)
    assert "1.1 not analysed within 5 s" in warning and ran == []


def test_the_newest_analysis_with_a_summary_is_the_prior(tmp_path):
    step, db, queue, links, _ = make_step(tmp_path)
    ids = []
    for generation in (1, 2, 3):
        ids.append(queue.enqueue("1.1.1", "1.1", [f"1.1/1.1.1/{generation}.dcm"], generation=generation))
        job = queue.claim()
        queue.transition(job.id, JobState.DONE if generation < 3 else JobState.FAILED, None, expect=JobState.RUNNING)
    for job_id in ids[:2]:
        (tmp_path / "results" / str(job_id)).mkdir(parents=True)
        (tmp_path / "results" / str(job_id) / "summary.json").write_text(json.dumps({"decision": f"job {job_id}"}))
    result = step._result("1.1", dt.date(2026, 1, 10))
    assert result is not None and result.job_id == ids[1] and result.summary == {"decision": f"job {ids[1]}"}
    assert result.instances == ("1.1/1.1.1/2.dcm",) and result.study_date == dt.date(2026, 1, 10)
    assert step._result("9.9", None) is None
