"""Round trip through a real PACS: Debian's Orthanc on loopback.

1. The writers' objects, sent with a pynetdicom SCU beside their CT, are stored by
   Orthanc in one study and read back (REST and DICOMweb) to the same findings.
2. The whole node: a CT sent with storescu to ``dicomnode serve`` (tiny random bundle)
   comes back to Orthanc as SR, SC, SEG and KOS in the CT's study; the SR fetched from
   Orthanc parses to what the node's chain produced (its results/<job>/summary.json), and
   every result object Orthanc holds passes dciodvfy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from dicomnode.writers import WriterOptions, build_result_objects, read_findings
from pipeline.types import CLASS_NAMES, TASK_NAMES

from conftest import wait_for
from orthanc import OrthancServer, orthanc_missing_reason, running_orthanc
from writer_inputs import dciodvfy, make_inputs

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(
        orthanc_missing_reason(dicomweb=True) is not None, reason=orthanc_missing_reason(dicomweb=True) or ""
    ),
]

#: Modality of each kind of object as Orthanc lists its series.
RESULT_MODALITIES = {"sr": "SR", "sc": "OT", "seg": "SEG", "kos": "KO", "lobe_seg": "SEG"}


def _series_by_modality(pacs: OrthancServer, study_uid: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for series in pacs.series_of_study(study_uid):
        out.setdefault(series["MainDicomTags"].get("Modality", ""), []).append(series)
    return out


def _has_all(pacs: OrthancServer, study_uid: str, ct_count: int) -> dict[str, list[dict]] | None:
    found = _series_by_modality(pacs, study_uid)
    if len(found.get("CT", [{}])[0].get("Instances", [])) != ct_count:
        return None
    return found if all(m in found for m in RESULT_MODALITIES.values()) else None


def _c_store(pacs: OrthancServer, datasets: list[pydicom.Dataset]) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="WRITERTEST")
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet)
    assert assoc.is_established, "Orthanc refused the association"
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            assert status and status.Status == 0x0000, f"C-STORE of {ds.SOPClassUID} answered {status}"
    finally:
        assoc.release()


def test_writer_objects_round_trip_through_orthanc(tmp_path):
    inputs = make_inputs(seed=11, n_slices=24, size=96)
    objects = build_result_objects(inputs.result, inputs.volume, inputs.sources, WriterOptions(uid_seed="rt"))
    assert all(objects[kind] for kind in RESULT_MODALITIES), {k: len(v) for k, v in objects.items()}
    study_uid = str(inputs.sources[0].StudyInstanceUID)
    with running_orthanc(tmp_path, aet="PACS", dicomweb=True) as pacs:
        _c_store(pacs, list(inputs.sources) + [ds for kind in objects for ds in objects[kind]])
        found = wait_for(
            lambda: _has_all(pacs, study_uid, len(inputs.sources)),
            30,
            what="Orthanc to hold the CT and every result object",
        )
        for modality in set(RESULT_MODALITIES.values()):
            kinds = [k for k, m in RESULT_MODALITIES.items() if m == modality]
            assert len(found[modality]) == len(kinds), f"{kinds}: one series each expected"
            held = sum(len(series["Instances"]) for series in found[modality])
            assert held == sum(len(objects[k]) for k in kinds), modality

        sr_bytes = pacs.instance_file(found["SR"][0]["Instances"][0])
        findings = read_findings(pydicom.dcmread(pydicom.filebase.DicomBytesIO(sr_bytes)))
        assert findings.decision == inputs.result.decision.value
        for name in CLASS_NAMES:
            assert findings.probabilities[name] == pytest.approx(
                inputs.result.case_scores.probabilities[name], abs=1e-4
            )
        assert sorted(findings.infected_sop_uids) == sorted(
            str(inputs.sources[z].SOPInstanceUID) for z in inputs.result.infected.z_indices
        )

        # DICOMweb (what OHIF reads): the six series of the study, by QIDO-RS.
        qido = json.loads(pacs.get_bytes(f"/dicom-web/studies/{study_uid}/series"))
        modalities = sorted(item["00080060"]["Value"][0] for item in qido)
        assert modalities == sorted(["CT", *RESULT_MODALITIES.values()])


def _summary(data_dir: Path) -> dict:
    paths = sorted(data_dir.rglob("summary.json"))
    assert len(paths) == 1, f"expected one job summary under {data_dir}, found {paths}"
    return json.loads(paths[0].read_text())


def test_node_sends_every_result_object_to_orthanc(tmp_path, tiny_bundle):
    from dicomnode.synthetic import write_ct_series
    from pipeline.phantom import make_phantom

    from node_helpers import NodeProcess, storescu

    phantom = make_phantom("covid19", seed=21, n_slices=24, size_px=96)
    series = write_ct_series(phantom.volume, tmp_path / "ct")
    with running_orthanc(tmp_path, aet="PACS", dicomweb=True) as pacs:
        # The scanner's CT reaches the PACS too; the node adds its results to that study.
        assert storescu(pacs.dicom_port, series.paths, called_ae=pacs.aet).returncode == 0
        node = NodeProcess(
            tmp_path / "node", tiny_bundle, destinations=[f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"], quiet_seconds=1.0
        )
        node.start()
        try:
            sent = storescu(node.port, series.paths)
            assert sent.returncode == 0, sent.stdout + sent.stderr
            found = wait_for(
                lambda: _has_all(pacs, series.study_uid, len(series.paths)), 240, what="the node's results in Orthanc"
            )
        except BaseException:
            print(node.tail())
            raise
        finally:
            node.stop()

        summary = _summary(tmp_path / "node")
        sr_bytes = pacs.instance_file(found["SR"][0]["Instances"][0])
        findings = read_findings(pydicom.dcmread(pydicom.filebase.DicomBytesIO(sr_bytes)))
        assert findings.decision == summary["decision"]
        if summary["decision"] != "out_of_domain":  # out of domain the SR reports no probability
            for name in CLASS_NAMES:
                assert findings.probabilities[name] == pytest.approx(summary["probabilities"][name], abs=1e-4)
            for name in TASK_NAMES:
                assert findings.tasks[name] == pytest.approx(summary["tasks"][name], abs=1e-4)
        assert findings.lung_volume_ml == pytest.approx(summary["lung_volume_ml"], abs=0.051)
        by_number = {
            int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber): str(uid)
            for p, uid in zip(series.paths, series.sop_uids, strict=True)
        }
        # The locator's slices: stated as infectious under a pneumonia decision, else flagged
        # as no finding, and not reported at all out of domain.
        located = findings.infected_sop_uids + findings.flagged_sop_uids
        expected = [] if summary["decision"] == "out_of_domain" else [by_number[n] for n in summary["infected_slices"]]
        assert sorted(located) == sorted(expected)
        assert (findings.algorithm_name, findings.bundle_sha256) == (
            summary["model"]["name"],
            summary["model"]["sha256"],
        )

        for modality in RESULT_MODALITIES.values():
            for instance in found[modality][0]["Instances"]:
                ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(pacs.instance_file(instance)))
                assert ds.StudyInstanceUID == series.study_uid
                check = dciodvfy(ds, tmp_path, f"{modality}-{instance}.dcm")
                assert check.errors == [], check.output
