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
