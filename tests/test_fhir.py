"""FHIR R4 output: the transaction Bundle is valid (fhir.resources), says the decision and
nothing more, reaches a real FHIR receiver on loopback, and a receiver that is down or
failing gets it later through the same durable retries as a DICOM destination."""

from __future__ import annotations

import json
import time

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir_server import FhirReceiver

from dicomnode.config import DeliverySection, FhirDestination, NodeConfig, config_from_dict
from dicomnode.db import Database
from dicomnode.delivery import FAILED, PENDING, SENT, Delivery
from dicomnode.errors import ConfigError
from dicomnode.fhir import CODE_SYSTEM
from dicomnode.queue import JobQueue, JobState
from dicomnode.worker import persist_fhir_bundle

from conftest import free_port
from writer_inputs import make_indeterminate_inputs, make_inputs, make_out_of_domain_inputs

INPUTS = {
    "covid19": lambda: make_inputs(seed=3, n_slices=16, size=64, label="covid19"),
    "indeterminate": lambda: make_indeterminate_inputs(seed=3, n_slices=16, size=64),
    "out_of_domain": lambda: make_out_of_domain_inputs(seed=3, n_slices=16, size=64),
}


def written_bundle(tmp_path, name: str, job_id: int = 1):
    inputs = INPUTS[name]()
    summary = inputs.result.summary(inputs.volume)
    row = persist_fhir_bundle(summary, inputs.result, inputs.sources, tmp_path / "results" / str(job_id), job_id)
    return inputs, summary, row, json.loads((tmp_path / "results" / row[2]).read_text())


def resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


@pytest.mark.parametrize("name", list(INPUTS))
def test_bundle_is_valid_and_states_the_decision_only(tmp_path, name):
    inputs, summary, row, bundle = written_bundle(tmp_path, name)
    Bundle.model_validate(bundle)  # what a FHIR server parses
    assert row[0] == "fhir"
    [report] = resources(bundle, "DiagnosticReport")
    assert report["status"] == "preliminary"
    assert summary["disclaimer"] in report["conclusion"]
    assert ("conclusionCode" in report) == (name == "covid19")  # no coded finding unless a pneumonia is stated
    [decision] = [o for o in resources(bundle, "Observation") if o["code"]["coding"][0]["code"] == "DECISION"]
    assert (
        decision["valueCodeableConcept"]["text"]
        .lower()
        .startswith({"covid19": "covid", "indeterminate": "indeterminate", "out_of_domain": "out of domain"}[name])
    )
    [study] = resources(bundle, "ImagingStudy")
    assert study["identifier"][0]["value"] == f"urn:oid:{inputs.sources[0].StudyInstanceUID}"
    assert study["series"][0]["uid"] == str(inputs.sources[0].SeriesInstanceUID)
    keys = study["series"][0].get("instance", [])
    assert (len(keys) > 0) == (name != "out_of_domain")  # nothing is pointed at out of domain
    text = json.dumps(bundle)
    assert str(inputs.sources[0].PatientName) not in text  # the patient by identifier only
    assert report["subject"]["identifier"]["value"] == str(inputs.sources[0].PatientID)


def test_the_probabilities_are_observations_in_percent(tmp_path):
    _, summary, _, bundle = written_bundle(tmp_path, "covid19")
    by_code = {o["code"]["coding"][0]["code"]: o for o in resources(bundle, "Observation")}
    for cls, p in summary["probabilities"].items():
        assert by_code[f"P_{cls.upper()}"]["valueQuantity"]["value"] == pytest.approx(100 * p, abs=1e-3)
    assert by_code["LUNG_VOLUME_ML"]["valueQuantity"]["unit"] == "mL"
    assert by_code["NINFECTED"]["valueInteger"] == len(summary["infected_slices"])
    assert by_code["CTGRADE"]["valueCodeableConcept"]["text"] == summary["mosmed_grade"]


@pytest.fixture()
def node_db(tmp_path):
    db = Database(tmp_path / "node.sqlite3")
    yield db, JobQueue(db)
    db.close()


def _job_with_bundle(db, queue, delivery, tmp_path):
    job_id = queue.enqueue("1.2.3", "1.2", ["x.dcm"])
    job = queue.claim()
    _, _, row, _ = written_bundle(tmp_path, "covid19", job_id)
    with db.transaction() as conn:
        assert delivery.record_in(conn, job_id, [row], time.time()) == 1
        queue.transition_in(conn, job_id, JobState.DELIVERING, expect=JobState.RUNNING, attempts=job.attempts)
    return job_id


def test_a_receiver_gets_the_report(node_db, tmp_path, monkeypatch):
    db, queue = node_db
    monkeypatch.setenv("TEST_FHIR_TOKEN", "s3cret")
    fhir = FhirReceiver(token="s3cret").start()
    try:
        dest = FhirDestination(url=fhir.url, token_env="TEST_FHIR_TOKEN")
        delivery = Delivery(
            db, (), DeliverySection(), tmp_path / "results", "COVIDNODE", queue=queue, fhir_destinations=[dest]
        )
        job_id = _job_with_bundle(db, queue, delivery, tmp_path)
        assert delivery.deliver_due() == 1
        [row] = delivery.records()
        assert row["state"] == SENT and row["destination"] == f"FHIR@{fhir.url}"
        assert queue.get(job_id).state == JobState.DONE
        [report] = fhir.resources["DiagnosticReport"]
        assert report["identifier"][0]["system"] == CODE_SYSTEM
        assert len(fhir.resources["Observation"]) == len(report["result"])
    finally:
        fhir.stop()


def test_a_receiver_that_is_down_gets_the_report_later_once(node_db, tmp_path):
    db, queue = node_db
    port = free_port()
    dest = FhirDestination(url=f"http://127.0.0.1:{port}/fhir")
    delivery = Delivery(
        db,
        (),
        DeliverySection(backoff_base_seconds=1),
        tmp_path / "results",
        "COVIDNODE",
        queue=queue,
        fhir_destinations=[dest],
    )
    job_id = _job_with_bundle(db, queue, delivery, tmp_path)
    assert delivery.deliver_due() == 0  # nothing listens
    [row] = delivery.records()
    assert row["state"] == PENDING and row["attempts"] == 1 and "cannot reach" in row["last_error"]
    fhir = FhirReceiver(port=port).start()
    try:
        fhir.failing = True  # up, but answering 503
        assert delivery.deliver_due(at=time.time() + 60) == 0
        [row] = delivery.records()
        assert row["state"] == PENDING and row["attempts"] == 2 and "HTTP 503" in row["last_error"]
        fhir.failing = False
        assert delivery.deliver_due(at=time.time() + 600) == 1
        assert queue.get(job_id).state == JobState.DONE
        # A retried POST of the same job (e.g. after a crash before 'sent' was written)
        # does not make a second report: the Bundle's create is conditional.
        db.execute("UPDATE deliveries SET state=?, next_try=0", (PENDING,))
        assert delivery.deliver_due() == 1
        assert len(fhir.resources["DiagnosticReport"]) == 1 and fhir.posts == 3
    finally:
        fhir.stop()


def test_the_retry_window_ends_in_failed(node_db, tmp_path):
    db, queue = node_db
    dest = FhirDestination(url=f"http://127.0.0.1:{free_port()}/fhir", timeout_s=2)
    delivery = Delivery(
        db,
        (),
        DeliverySection(retry_window_hours=0.0001),
        tmp_path / "results",
        "COVIDNODE",
        queue=queue,
        fhir_destinations=[dest],
    )
    job_id = _job_with_bundle(db, queue, delivery, tmp_path)
    time.sleep(0.5)  # past the 0.36 s window
    delivery.deliver_due()
    [row] = delivery.records()
    assert row["state"] == FAILED and "gave up" in row["last_error"]
    assert queue.get(job_id).state == JobState.FAILED


def _problems(text: str, tmp_path) -> list[str]:
    import tomllib

    try:
        config_from_dict(tomllib.loads(text), tmp_path)
    except ConfigError as e:
        return list(e.problems)
    return []


def test_config_names_fhir_mistakes(monkeypatch, tmp_path):
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    shape = _problems(
        """
[[fhir_destinations]]
url = "ftp://ehr.example"
[[fhir_destinations]]
ulr = "https://ehr.example/fhir"
""",
        tmp_path,
    )
    assert any("[[fhir_destinations]] #1" in p and "ftp://" in p for p in shape), shape
    assert any("did you mean 'url'" in p for p in shape), shape
    meaning = _problems(
        f"""
[node]
data_dir = "{tmp_path / "data"}"
[[fhir_destinations]]
url = "http://ehr.example/fhir"
token_env = "NO_SUCH_TOKEN_VAR"
[[fhir_destinations]]
url = "http://ehr.example/fhir/"
""",
        tmp_path,
    )
    assert any("NO_SUCH_TOKEN_VAR" in p and "not set" in p for p in meaning), meaning
    assert any("clear text" in p for p in meaning), meaning
    assert any("duplicate" in p for p in meaning), meaning
    ok = NodeConfig(fhir_destinations=[FhirDestination(url="https://ehr.example/fhir/")])
    assert ok.fhir_destinations[0].url == "https://ehr.example/fhir"


def test_the_worker_sends_an_analysed_series_to_the_ehr(tmp_path, tiny_bundle):
    """A real worker and bundle: a CT series is analysed, its Bundle written with the
    results and delivered; the receiver holds the report of that study."""
    from dicomnode.config import NodeSection, PipelineSection
    from dicomnode.header import read_file_header
    from dicomnode.series import SeriesAssembler
    from dicomnode.synthetic import write_ct_series
    from dicomnode.worker import Worker
    from pipeline.phantom import make_phantom

    fhir = FhirReceiver().start()
    try:
        dest = FhirDestination(url=fhir.url)
        cfg = NodeConfig(
            node=NodeSection(data_dir=tmp_path), pipeline=PipelineSection(bundle=tiny_bundle), fhir_destinations=[dest]
        )
        db = Database(tmp_path / "node.sqlite3")
        queue = JobQueue(db)
        assembler = SeriesAssembler(db, queue, cfg.selection, cfg.node.quiet_seconds)
        (tmp_path / "results").mkdir()
        delivery = Delivery(
            db,
            (),
            cfg.delivery,
            tmp_path / "results",
            "COVIDNODE",
            queue=queue,
            fhir_destinations=cfg.fhir_destinations,
        )
        worker = Worker(cfg, queue, assembler, delivery, tmp_path / "storage", tmp_path / "results")
        series = write_ct_series(make_phantom("covid19", 5, n_slices=24, size_px=96).volume, tmp_path / "storage" / "s")
        for path in series.paths:
            assembler.record_instance(read_file_header(path), str(path.relative_to(tmp_path / "storage")))
        info = read_file_header(series.paths[0])
        job_id = queue.enqueue(
            info.series_uid, info.study_uid, [str(p.relative_to(tmp_path / "storage")) for p in series.paths]
        )
        assert worker.run_job(queue.claim()) == JobState.DELIVERING
        assert delivery.deliver_due() == 1
        assert queue.get(job_id).state == JobState.DONE
        [study] = fhir.resources["ImagingStudy"]
        assert study["identifier"][0]["value"] == f"urn:oid:{info.study_uid}"
        [report] = fhir.resources["DiagnosticReport"]
        summary = json.loads((tmp_path / "results" / str(job_id) / "summary.json").read_text())
        assert summary["disclaimer"] in report["conclusion"]
        db.close()
    finally:
        fhir.stop()


MULTI_STAGE = {
    "lookback_days": 730,
    "warnings": [],
    "rule": "mean",
    "stages": [
        {
            "study_uid": "1.2.826.0.1.3680043.8.498.7",
            "study_date": "2025-11-20",
            "current": False,
            "decision": "non_pneumonia",
            "probabilities": {"non_pneumonia": 0.8, "cap": 0.1, "influenza": 0.05, "covid19": 0.05},
            "lung_involvement_percent": 0.4,
            "lesion_share_of_lung": None,
        },
        {
            "study_uid": "1.2.3",
            "study_date": "2026-01-01",
            "current": True,
            "decision": "covid19",
            "probabilities": {"non_pneumonia": 0.1, "cap": 0.1, "influenza": 0.1, "covid19": 0.7},
            "lung_involvement_percent": 4.7,
            "lesion_share_of_lung": None,
        },
    ],
    "fused_studies": ["1.2.826.0.1.3680043.8.498.7", "1.2.3"],
    "decision": "indeterminate",
    "decision_reason": "Indeterminate: fused pneumonia score 50.0% (mean of 2 stage(s)).",
    "probabilities": {"non_pneumonia": 0.45, "cap": 0.1, "influenza": 0.075, "covid19": 0.375},
    "tasks": {"pneumonia_vs_non_pneumonia": 0.5},
    "lesion_share_of_lung": None,
}


def test_the_multi_stage_decision_is_an_observation_with_the_trend(tmp_path):
    inputs = INPUTS["covid19"]()
    summary = {**inputs.result.summary(inputs.volume), "multi_stage": MULTI_STAGE}
    row = persist_fhir_bundle(summary, inputs.result, inputs.sources, tmp_path / "results" / "1", 1)
    bundle = json.loads((tmp_path / "results" / row[2]).read_text())
    Bundle.model_validate(bundle)
    [multi] = [o for o in resources(bundle, "Observation") if o["code"]["coding"][0]["code"] == "MSDECISION"]
    assert multi["valueCodeableConcept"] == {"text": "Indeterminate: no diagnosis stated"}  # no SNOMED code
    fused = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in multi["component"]}
    assert fused["P_COVID19"] == pytest.approx(37.5)
    note = multi["note"][0]["text"]
    assert (
        "2025-11-20 (prior, study 1.2.826.0.1.3680043.8.498.7): No pneumonia" in note and "lungs involved 0.4%" in note
    )
    logical = [r for r in multi["derivedFrom"] if "identifier" in r]
    assert logical == [
        {
            "type": "ImagingStudy",
            "identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2.826.0.1.3680043.8.498.7"},
        }
    ]
    # without priors analysed, no such Observation
    empty = {
        **summary,
        "multi_stage": {"lookback_days": 730, "warnings": ["PACS down"], "stages": [], "decision": None},
    }
    row = persist_fhir_bundle(empty, inputs.result, inputs.sources, tmp_path / "results" / "2", 2)
    bundle = json.loads((tmp_path / "results" / row[2]).read_text())
    assert not [o for o in resources(bundle, "Observation") if o["code"]["coding"][0]["code"] == "MSDECISION"]
