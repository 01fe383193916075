"""The CXR branch through the node, end to end with real peers: a phantom CT series and
its localizer sent by DCMTK storescu to `dicomnode serve` (tiny random bundle with a CXR
model); the report that reaches the PACS (DCMTK storescp, then Orthanc) carries the
radiograph model's scores, the fusion and a reference to the localizer, and passes
dciodvfy."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from dicomnode.writers import read_findings

from conftest import require_tool, wait_for
from node_helpers import NodeProcess, StoreSCP, dciodvfy_errors, storescu
from orthanc import orthanc_missing_reason, running_orthanc

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def _study(tmp_path: Path, seed: int = 5) -> tuple:
    """A covid19 phantom as a CT series, and its localizer as a file of a series of its own."""
    from dicomnode.synthetic import localizer_dataset, write_ct_series
    from pipeline.phantom import make_phantom

    phantom = make_phantom("covid19", seed=seed, n_slices=24, size_px=96)
    series = write_ct_series(phantom.volume, tmp_path / "ct")
    first = pydicom.dcmread(series.paths[0])
    loc = localizer_dataset(phantom.localizer(), first)
    (tmp_path / "scout").mkdir()
    loc_path = tmp_path / "scout" / "SCOUT1.dcm"
    loc.save_as(loc_path, enforce_file_format=True)
    return series, loc, loc_path


def _ct_job_done(node: NodeProcess, series_uid: str) -> dict | None:
    status = node.status()
    rows = {s["series_uid"]: s for s in status["series"]}
    jobs = [j for j in status["jobs"] if j["series_uid"] == series_uid]
    if jobs and jobs[-1]["state"] in ("failed", "skipped"):
        pytest.fail(f"CT job {jobs[-1]['state']}: {jobs[-1].get('reason')}\n{node.tail()}")
    return jobs[-1] if jobs and jobs[-1]["state"] == "done" and rows else None


def _summary(node: NodeProcess) -> dict:
    (path,) = sorted((node.data_dir / "results").glob("*/summary.json"))
    return json.loads(path.read_text())


def _check_cxr(findings, summary: dict, loc) -> None:
    cxr = summary["cxr"]
    assert cxr is not None and cxr["images"] == [str(loc.SOPInstanceUID)] and cxr["source"] == "localizer"
    assert findings.cxr_sop_uid == str(loc.SOPInstanceUID)
    assert findings.cxr_probabilities == pytest.approx(cxr["probabilities"], abs=1e-4)
    assert set(findings.cxr_probabilities) == {"covid19", "cap"}
    if cxr["fused_decision"] is None:  # the random bundle's CT decision decides which
        assert findings.fused_probabilities == {} and "Not fused" in findings.summary
    else:
        assert findings.fused_decision == cxr["fused_decision"]
        assert findings.fused_probabilities == pytest.approx(cxr["fused_probabilities"], abs=1e-4)
    assert findings.decision == summary["decision"]  # the Impression is the CT's decision


def test_ct_and_localizer_through_the_node_to_storescp(tmp_path, tiny_bundle_with_cxr):
    require_tool("storescu")
    series, loc, loc_path = _study(tmp_path)
    pacs = StoreSCP(tmp_path / "pacs", "PACS").start()
    node = NodeProcess(tmp_path / "data", tiny_bundle_with_cxr, [f"PACS@127.0.0.1:{pacs.port}"], quiet_seconds=1.0)
    node.start()
    try:
        # A scanner sends the scout first, then the axial series.
        assert storescu(node.port, [loc_path]).returncode == 0
        sent = storescu(node.port, series.paths)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_for(lambda: _ct_job_done(node, series.series_uid), 240, interval=0.3, what="the CT job")
        rows = {s["series_uid"]: s for s in node.status()["series"]}
        assert rows[str(loc.SeriesInstanceUID)]["state"] == "skipped"  # kept in storage, no job of its own
        assert "localizer" in rows[str(loc.SeriesInstanceUID)]["reason"]

        def sr_file():
            for path in pacs.files():
                if pydicom.dcmread(path, stop_before_pixels=True).Modality == "SR":
                    return path
            return None

        path = wait_for(sr_file, 30, what="the SR at the PACS")
        findings = read_findings(pydicom.dcmread(path))
        _check_cxr(findings, _summary(node), loc)
        require_tool("dciodvfy")
        wait_for(lambda: len(pacs.files()) >= 2, 30, what="the other result objects")
        for received in pacs.files():
            assert dciodvfy_errors(received) == [], received.name
        assert any("CXR branch on localizer" in line for line in node.log)
    finally:
        node.stop()
        pacs.stop()


@pytest.mark.skipif(orthanc_missing_reason() is not None, reason=orthanc_missing_reason() or "")
def test_ct_and_localizer_through_the_node_to_orthanc(tmp_path, tiny_bundle_with_cxr):
    series, loc, loc_path = _study(tmp_path, seed=6)
    with running_orthanc(tmp_path, aet="PACS") as pacs:
        assert storescu(pacs.dicom_port, [loc_path, *series.paths], called_ae=pacs.aet).returncode == 0
        node = NodeProcess(
            tmp_path / "node",
            tiny_bundle_with_cxr,
            destinations=[f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"],
            quiet_seconds=1.0,
        )
        node.start()
        try:
            assert storescu(node.port, [loc_path]).returncode == 0
            assert storescu(node.port, series.paths).returncode == 0

            def sr_instance():
                for s in pacs.series_of_study(series.study_uid):
                    if s["MainDicomTags"].get("Modality") == "SR" and s["Instances"]:
                        return s["Instances"][0]
                return None

            instance = wait_for(sr_instance, 240, what="the node's SR in Orthanc")
            sr = pydicom.dcmread(pydicom.filebase.DicomBytesIO(pacs.instance_file(instance)))
            _check_cxr(read_findings(sr), _summary(node), loc)
            # Orthanc holds the localizer the report points at, in the same study.
            modalities = {s["MainDicomTags"].get("Modality") for s in pacs.series_of_study(series.study_uid)}
            assert "CT" in modalities and "SR" in modalities
        finally:
            node.stop()


RADIOGRAPH_CONFIG = """
[node]
ae_title = "COVIDNODE"
min_free_mb = 0
[selection]
min_slices = 16
max_slice_thickness_mm = 0
[pipeline]
device = "cpu"
[delivery]
backoff_base_seconds = 0.5
backoff_max_seconds = 2
poll_seconds = 0.5
[cxr]
radiographs_alone = true
"""


def test_a_radiograph_alone_gets_a_radiograph_only_report(tmp_path, tiny_bundle_with_cxr):
    from dicomnode.synthetic import radiograph_dataset, write_ct_series
    from pipeline.phantom import make_phantom

    from node_helpers import write_test_config

    phantom = make_phantom("cap", seed=9, n_slices=24, size_px=96)
    first = pydicom.dcmread(write_ct_series(phantom.volume, tmp_path / "ct").paths[0])
    film = radiograph_dataset(phantom.localizer(), first)
    lateral = radiograph_dataset(phantom.localizer(), first, view="LL")
    lateral.StudyInstanceUID, lateral.SeriesInstanceUID = "1.2.826.0.1.3680043.10.999.1", "1.2.826.0.1.3680043.10.999.2"
    lateral.SOPInstanceUID = lateral.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.999.3"
    (tmp_path / "xr").mkdir()
    film.save_as(tmp_path / "xr" / "PA.dcm", enforce_file_format=True)
    lateral.save_as(tmp_path / "xr" / "LL.dcm", enforce_file_format=True)
    config = write_test_config(tmp_path / "config", RADIOGRAPH_CONFIG)
    pacs = StoreSCP(tmp_path / "pacs", "PACS").start()
    node = NodeProcess(
        tmp_path / "data", tiny_bundle_with_cxr, [f"PACS@127.0.0.1:{pacs.port}"], quiet_seconds=1.0, config=config
    )
    node.start()
    try:
        assert storescu(node.port, [tmp_path / "xr" / "PA.dcm"]).returncode == 0
        assert storescu(node.port, [tmp_path / "xr" / "LL.dcm"]).returncode == 0

        def jobs_final():
            jobs = node.status()["jobs"]
            return jobs if len(jobs) == 2 and all(j["state"] in ("done", "failed", "skipped") for j in jobs) else None

        jobs = {j["series_uid"]: j for j in wait_for(jobs_final, 120, interval=0.3, what="the two radiograph jobs")}
        assert jobs[str(film.SeriesInstanceUID)]["state"] == "done", node.tail()
        lat = jobs["1.2.826.0.1.3680043.10.999.2"]
        assert lat["state"] == "skipped" and "lateral" in lat["reason"]
        path = wait_for(lambda: next(iter(pacs.files()), None), 30, what="the radiograph SR at the PACS")
        sr = pydicom.dcmread(path)
        assert sr.Modality == "SR" and sr.StudyInstanceUID == film.StudyInstanceUID
        assert "DEMO" in sr.SeriesDescription or "not for clinical use" in sr.SeriesDescription
        text = str(sr.ContentSequence[-1].ContentSequence[0].TextValue)
        assert "chest radiograph alone" in text and "no diagnosis is stated" in text and "TEST MODEL" in text
        require_tool("dciodvfy")
        assert dciodvfy_errors(path) == []
    finally:
        node.stop()
        pacs.stop()
