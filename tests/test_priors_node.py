"""Multi-stage priors through the node, end to end: Orthanc is the PACS and holds the
patient's earlier chest CT (sent to it by DCMTK storescu); the node is sent the later one,
finds the earlier by C-FIND, retrieves it by C-MOVE to itself, analyses it without
delivering its results, and delivers a report of the later study that carries the trend
of both dates and the fused decision. A PACS that is down is a recorded warning."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import get_args

import highdicom as hd
import pytest
from pydicom import dcmread

from dicomnode.commands.status import render
from dicomnode.config import PriorsSection
from dicomnode.writers import codes, read_findings
from pipeline.stages import MULTI_STAGE_RULES

from conftest import require_tool, wait_for
from node_helpers import TEST_CONFIG, NodeProcess, StoreSCP, dciodvfy_errors, free_port, storescu, write_test_config
from orthanc import orthanc_missing_reason, running_orthanc

N_SLICES, SIZE = 24, 96
PATIENT = "PRIORS-0001"
NODE_AE = "COVIDNODE"


def test_the_config_offers_the_rules_of_pipeline_stages():
    assert get_args(PriorsSection.model_fields["fusion_rule"].annotation) == MULTI_STAGE_RULES
    assert PriorsSection().fusion_rule == "mean" and PriorsSection().deliver_prior_results is False


def dated_phantom(out: Path, seed: int, date: str):
    """A 24-slice COVID-19 phantom of PATIENT, dated ``date`` (YYYYMMDD)."""
    from dicomnode.synthetic import write_ct_series
    from pipeline.phantom import make_phantom

    phantom = make_phantom("covid19", seed=seed, n_slices=N_SLICES, size_px=SIZE)
    series = write_ct_series(phantom.volume, out, patient_id=PATIENT, accession_number=f"ACC{seed}")
    for path in series.paths:
        ds = dcmread(path)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
        ds.save_as(path, enforce_file_format=True)
    return series


def priors_config(folder: Path, pacs_port: int, timeout_s: float = 120, deliver: bool = False) -> Path:
    text = TEST_CONFIG + (
        f'\n[priors]\nenabled = true\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs_port}\n'
        f"lookback_days = 365\ntimeout_s = {timeout_s}\ndeliver_prior_results = {str(deliver).lower()}\n"
    )
    return write_test_config(folder, text)


def jobs_final(node: NodeProcess, count: int) -> list[dict]:
    def done():
        jobs = node.jobs()
        return jobs if len(jobs) >= count and all(j["state"] in ("done", "failed", "skipped") for j in jobs) else None

    return wait_for(done, 300, interval=0.5, what=f"{count} job(s) to finish")


def db_rows(node: NodeProcess, sql: str) -> list[tuple]:
    conn = sqlite3.connect(node.data_dir / "node.sqlite3")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def delivered_sr(dest: StoreSCP, study_uid: str):
    srs = [dcmread(p) for p in dest.files() if dcmread(p, stop_before_pixels=True).Modality == "SR"]
    return [sr for sr in srs if sr.StudyInstanceUID == study_uid]


@pytest.mark.peers
@pytest.mark.slow
@pytest.mark.skipif(orthanc_missing_reason() is not None, reason=orthanc_missing_reason() or "")
@pytest.mark.parametrize("deliver", [False, True], ids=["prior-kept", "prior-delivered"])
def test_the_node_retrieves_the_earlier_study_and_reports_the_trend(tmp_path, tiny_bundle, deliver):
    require_tool("storescu")
    dest = StoreSCP(tmp_path / "dest", "DEST").start()
    node_port = free_port()
    modalities = {NODE_AE: (NODE_AE, "127.0.0.1", node_port)}
    try:
        with running_orthanc(tmp_path / "pacs", aet="PACS", dicomweb=False, modalities=modalities) as pacs:
            earlier = dated_phantom(tmp_path / "earlier", seed=1, date="20260110")
            later = dated_phantom(tmp_path / "later", seed=2, date="20260315")
            sent = storescu(pacs.dicom_port, earlier.paths, called_ae="PACS")
            assert sent.returncode == 0, sent.stdout + sent.stderr
            assert pacs.find_study(earlier.study_uid) is not None

            node = NodeProcess(
                tmp_path / "data",
                tiny_bundle,
                [f"DEST@127.0.0.1:{dest.port}"],
                config=priors_config(tmp_path / "config", pacs.dicom_port, deliver=deliver),
                port=node_port,
            ).start()
            try:
                sent = storescu(node.port, later.paths)
                assert sent.returncode == 0, sent.stdout + sent.stderr
                jobs = jobs_final(node, 2)
                _check_jobs(node, jobs, earlier, later, deliver)
                wait_for(lambda: delivered_sr(dest, later.study_uid), 60, what="the later study's SR")
                (sr,) = delivered_sr(dest, later.study_uid)
                _check_report(sr, earlier, later)
                if deliver:  # [priors] deliver_prior_results: the prior's own report is sent too
                    wait_for(lambda: delivered_sr(dest, earlier.study_uid), 60, what="the prior's SR")
                    assert "multi_stage" not in _summary(node, earlier.series_uid)  # a prior has no trend
                else:  # the prior's results stay at the node
                    assert delivered_sr(dest, earlier.study_uid) == []
                    received = [dcmread(p, stop_before_pixels=True) for p in dest.files()]
                    assert all(ds.StudyInstanceUID == later.study_uid for ds in received)
                require_tool("dciodvfy")
                path = next(p for p in dest.files() if dcmread(p, stop_before_pixels=True).Modality == "SR")
                assert dciodvfy_errors(path) == []
                log = "\n".join(node.log)
                assert PATIENT not in log and "PHANTOM^DEMO" not in log
            finally:
                node.stop()
    finally:
        dest.stop()


def _summary(node: NodeProcess, series_uid: str) -> dict:
    (job,) = [j for j in node.jobs() if j["series_uid"] == series_uid]
    return json.loads((node.data_dir / "results" / str(job["id"]) / "summary.json").read_text())


def _check_jobs(node: NodeProcess, jobs: list[dict], earlier, later, deliver: bool) -> None:
    by_series = {j["series_uid"]: j for j in jobs}
    prior_job, new_job = by_series[earlier.series_uid], by_series[later.series_uid]
    assert new_job["state"] == "done", node.tail()
    assert prior_job["state"] == "done", node.tail()
    (sent,) = db_rows(node, f"SELECT COUNT(*) FROM deliveries WHERE job_id={prior_job['id']}")[0]
    if deliver:
        assert sent > 0
    else:
        assert sent == 0 and "prior study" in (prior_job["reason"] or "")
    links = db_rows(node, "SELECT study_uid, for_study_uid, study_date, state FROM prior_studies")
    assert links == [(earlier.study_uid, later.study_uid, "2026-01-10", "retrieved")]
    shown = render(node.status())  # `dicomnode status` lists them
    assert "prior studies ([priors])" in shown and f"{earlier.study_uid}  {later.study_uid}  2026-01-10" in shown
    # the prior's results are kept at the node
    assert (node.data_dir / "results" / str(prior_job["id"]) / "sr").is_dir()
    summary = json.loads((node.data_dir / "results" / str(new_job["id"]) / "summary.json").read_text())
    multi = summary["multi_stage"]
    assert [s["study_date"] for s in multi["stages"]] == ["2026-01-10", "2026-03-15"]
    assert [s["study_uid"] for s in multi["stages"]] == [earlier.study_uid, later.study_uid]
    assert multi["rule"] == "mean" and multi["warnings"] == [] and multi["decision"] is not None
    assert "lung_involvement_percent" in multi["stages"][0]


def _check_report(sr, earlier, later) -> None:
    found = read_findings(sr)
    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_planar_roi_measurement_groups()
    names = [str(g.tracking_identifier) for g in groups]
    assert any(n.startswith("AI trend 2026-01-10 (prior)") for n in names), names
    assert any(n.startswith("AI trend 2026-03-15 (this study)") for n in names), names
    (fused,) = [g for g in groups if str(g.tracking_identifier).startswith("AI multi-stage result")]
    assert fused.get_qualitative_evaluations(name=codes.MULTI_STAGE_DECISION)
    assert "Multi-stage: AI decision over 2 study dates" in found.summary
    assert "2026-01-10" in found.summary and "2026-03-15" in found.summary
    (other,) = sr.PertinentOtherEvidenceSequence
    assert other.StudyInstanceUID == earlier.study_uid
    refs = {r.ReferencedSOPInstanceUID for s in other.ReferencedSeriesSequence for r in s.ReferencedSOPSequence}
    assert refs == set(earlier.sop_uids)
    assert sr.StudyInstanceUID == later.study_uid


@pytest.mark.peers
@pytest.mark.slow
def test_a_pacs_that_is_down_is_a_recorded_warning_not_a_failed_job(tmp_path, tiny_bundle):
    dest = StoreSCP(tmp_path / "dest", "DEST").start()
    try:
        node = NodeProcess(
            tmp_path / "data",
            tiny_bundle,
            [f"DEST@127.0.0.1:{dest.port}"],
            config=priors_config(tmp_path / "config", free_port(), timeout_s=5),
        ).start()
        try:
            later = dated_phantom(tmp_path / "later", seed=2, date="20260315")
            sent = storescu(node.port, later.paths)
            assert sent.returncode == 0, sent.stdout + sent.stderr
            (job,) = jobs_final(node, 1)
            assert job["state"] == "done", node.tail()
            summary = json.loads((node.data_dir / "results" / str(job["id"]) / "summary.json").read_text())
            (warning,) = summary["multi_stage"]["warnings"]
            assert "not looked up" in warning and "cannot be reached" in warning
            assert summary["multi_stage"]["stages"] == []
            wait_for(lambda: delivered_sr(dest, later.study_uid), 60, what="the SR")
            (sr,) = delivered_sr(dest, later.study_uid)
            assert "Prior studies: prior studies not looked up" in read_findings(sr).summary
            audit = [json.loads(x) for x in (node.data_dir / "audit" / "audit.jsonl").read_text().splitlines()]
            assert any(a["event"] == "priors" and a["outcome"] == "warning" for a in audit)
        finally:
            node.stop()
    finally:
        dest.stop()
