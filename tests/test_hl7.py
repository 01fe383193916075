"""HL7 v2.5 ORU^R01 over MLLP: the message validates (hl7apy) and carries the same
results as the FHIR report, a loopback MLLP receiver acknowledges it, and an error
acknowledgement, a hang-up or a receiver that is down are retried like a DICOM delivery."""

from __future__ import annotations

import time

import pytest
from hl7apy.parser import parse_message
from mllp_server import MllpReceiver

from dicomnode.config import DeliverySection, Hl7Destination
from dicomnode.db import Database
from dicomnode.delivery import PENDING, SENT, Delivery
from dicomnode.queue import JobQueue, JobState
from dicomnode.worker import persist_hl7_message

from conftest import free_port
from writer_inputs import make_indeterminate_inputs, make_inputs


def written_message(tmp_path, dest, name="covid19", job_id=1):
    inputs = (
        make_inputs(seed=3, n_slices=16, size=64, label="covid19")
        if name == "covid19"
        else make_indeterminate_inputs(seed=3, n_slices=16, size=64)
    )
    summary = inputs.result.summary(inputs.volume)
    row = persist_hl7_message(summary, inputs.result, inputs.sources, tmp_path / "results" / str(job_id), job_id, dest)
    return inputs, summary, row, (tmp_path / "results" / row[2]).read_bytes().decode("utf-8")


def obx(message: str) -> dict[str, list[str]]:
    out = {}
    for seg in message.split("\r"):
        f = seg.split("|")
        if f[0] == "OBX":
            out[f[3].split("^")[0]] = f
    return out


@pytest.mark.parametrize("name", ["covid19", "indeterminate"])
def test_oru_validates_and_carries_the_results(tmp_path, name):
    dest = Hl7Destination(host="127.0.0.1", port=2575, receiving_application="RIS", receiving_facility="HOSP")
    inputs, summary, row, message = written_message(tmp_path, dest, name)
    parsed = parse_message(message, find_groups=True)
    parsed.validate()
    assert parsed.msh.msh_9.to_er7() == "ORU^R01^ORU_R01" and parsed.msh.msh_5.to_er7() == "RIS"
    values = obx(message)
    assert values["DECISION"][5].split("^")[0] == summary["decision"]
    for cls, p in summary["probabilities"].items():
        assert float(values[f"P_{cls.upper()}"][5]) == pytest.approx(100 * p, abs=1e-3)
    assert values["110180"][5] == str(inputs.sources[0].StudyInstanceUID)
    assert values["CTGRADE"][5].split("^")[1] == summary["mosmed_grade"]
    assert all(f[11] == "P" for f in values.values())  # preliminary: no radiologist confirmed it
    assert "\\F\\" not in summary["disclaimer"] and summary["disclaimer"][:40] in message.replace("\\F\\", "|")
    assert message.split("\r")[1].split("|")[3].startswith(str(inputs.sources[0].PatientID))


@pytest.fixture()
def node_db(tmp_path):
    db = Database(tmp_path / "node.sqlite3")
    yield db, JobQueue(db)
    db.close()


def _job(db, queue, delivery, tmp_path, dest):
    job_id = queue.enqueue("1.2.3", "1.2", ["x.dcm"])
    job = queue.claim()
    _, _, row, _ = written_message(tmp_path, dest, job_id=job_id)
    with db.transaction() as conn:
        assert delivery.record_in(conn, job_id, [row], time.time()) == 1
        queue.transition_in(conn, job_id, JobState.DELIVERING, expect=JobState.RUNNING, attempts=job.attempts)
    return job_id


def test_acknowledged_message_is_sent_once(node_db, tmp_path):
    db, queue = node_db
    ris = MllpReceiver().start()
    try:
        dest = Hl7Destination(host="127.0.0.1", port=ris.port)
        other = Hl7Destination(host="127.0.0.1", port=free_port())  # its own message, not this one
        delivery = Delivery(
            db, (), DeliverySection(), tmp_path / "results", "COVIDNODE", queue=queue, hl7_destinations=[dest, other]
        )
        job_id = _job(db, queue, delivery, tmp_path, dest)
        assert delivery.deliver_due() == 1 and delivery.deliver_due() == 0
        [row] = delivery.records()
        assert row["state"] == SENT and row["destination"] == dest.key
        assert queue.get(job_id).state == JobState.DONE
        assert len(ris.messages) == 1 and "\n" not in ris.messages[0]  # CR-separated, as sent
        parse_message(ris.messages[0], find_groups=True).validate()
    finally:
        ris.stop()


def test_nak_hangup_and_down_are_retried(node_db, tmp_path):
    db, queue = node_db
    port = free_port()
    dest = Hl7Destination(host="127.0.0.1", port=port, timeout_s=5)
    delivery = Delivery(
        db,
        (),
        DeliverySection(backoff_base_seconds=1),
        tmp_path / "results",
        "COVIDNODE",
        queue=queue,
        hl7_destinations=[dest],
    )
    job_id = _job(db, queue, delivery, tmp_path, dest)
    assert delivery.deliver_due() == 0
    [row] = delivery.records()
    assert row["state"] == PENDING and "cannot reach" in row["last_error"]
    ris = MllpReceiver(port=port).start()
    try:
        ris.answer = "AE"
        assert delivery.deliver_due(at=time.time() + 60) == 0
        [row] = delivery.records()
        assert row["attempts"] == 2 and "answered AE" in row["last_error"]
        ris.answer = None  # hangs up without an acknowledgement
        assert delivery.deliver_due(at=time.time() + 600) == 0
        [row] = delivery.records()
        assert row["attempts"] == 3 and "closed the connection" in row["last_error"]
        ris.answer = "AA"
        assert delivery.deliver_due(at=time.time() + 6000) == 1
        assert queue.get(job_id).state == JobState.DONE
        assert len(ris.messages) == 3
    finally:
        ris.stop()


def test_the_multi_stage_decision_and_trend_are_obx(tmp_path):
    from test_fhir import MULTI_STAGE

    from dicomnode.hl7 import build_oru
    from dicomnode.study_refs import StudyRefs

    inputs = make_inputs(seed=3, n_slices=16, size=64, label="covid19")
    summary = {**inputs.result.summary(inputs.volume), "multi_stage": MULTI_STAGE}
    message = build_oru(summary, StudyRefs("1.2.3", "1.2.3.4", "P1", study_datetime="2026-01-01"), "", "1-a")
    values = obx(message)
    assert values["MSDECISION"][5].split("^")[0] == "indeterminate"
    assert "2025-11-20 (prior, study 1.2.826.0.1.3680043.8.498.7): No pneumonia" in values["MSTREND"][5]
    assert "MSDECISION" not in obx(
        build_oru(inputs.result.summary(inputs.volume), StudyRefs("1.2.3", "1.2.3.4", "P1"), "", "1-b")
    )
