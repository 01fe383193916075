"""The CXR branch on the DICOM side: the localizer as a DICOM instance and read back
(dicomnode.synthetic, dicomnode.localizer), the SR's CXR group (writers.sr_cxr, dciodvfy),
and the FHIR / HL7 output."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pydicom
import pytest

from dicomnode.localizer import localizer_files, read_radiograph, study_localizer
from dicomnode.synthetic import localizer_dataset
from dicomnode.writers import WriterOptions, build_result_objects, read_findings
from pipeline.phantom import make_phantom
from pipeline.types import CxrResult

from writer_inputs import dciodvfy, make_indeterminate_inputs, make_inputs, to_bytes_and_back


def _cxr(inputs, fused: bool = True) -> tuple[CxrResult, pydicom.Dataset]:
    loc = make_phantom("covid19", 3, 24, 96).localizer()
    ds = localizer_dataset(loc, inputs.sources[0])
    radiograph = read_radiograph(ds)
    cxr = CxrResult(
        classes=("covid19", "cap"),
        probabilities={"covid19": 0.64, "cap": 0.36},
        radiograph=radiograph,
        ct={"covid19": 0.8, "cap": 0.2},
        fused={"covid19": 0.72, "cap": 0.28} if fused else None,
        fused_decision="covid19" if fused else None,
        reason="fused (mean ...): covid19" if fused else "not fused: the CT decision is indeterminate, ...",
    )
    return cxr, ds


def test_localizer_dataset_round_trips_to_the_projection(tmp_path):
    inputs = make_inputs(seed=2)
    loc = make_phantom("cap", 4, 24, 96).localizer()
    ds = to_bytes_and_back(localizer_dataset(loc, inputs.sources[0]))
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert ds.StudyInstanceUID == inputs.sources[0].StudyInstanceUID
    assert ds.SeriesInstanceUID != inputs.sources[0].SeriesInstanceUID
    back = read_radiograph(ds)
    assert back.image.shape == loc.image.shape
    assert np.abs(back.image - loc.image).max() <= 0.0006  # stored in thousandths
    assert back.pixel_spacing_mm == pytest.approx(loc.pixel_spacing_mm, abs=1e-4)
    assert back.geometry["source_to_detector_mm"] == pytest.approx(1040.0)
    assert back.sop_uids == (str(ds.SOPInstanceUID),)
    result = dciodvfy(ds, tmp_path, "localizer.dcm")
    assert result.errors == [] and result.warnings == [], result.output


def test_monochrome1_radiographs_are_inverted():
    inputs = make_inputs(seed=2)
    ds = localizer_dataset(make_phantom("cap", 4, 24, 96).localizer(), inputs.sources[0])
    plain = read_radiograph(ds).image
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = read_radiograph(ds).image
    assert np.allclose(inverted, plain.max() - plain, atol=1e-5)


def test_study_localizer_finds_the_frontal_scout_beside_the_ct(tmp_path):
    inputs = make_inputs(seed=2)
    study = tmp_path / "storage" / str(inputs.sources[0].StudyInstanceUID)
    ct_dir = study / str(inputs.sources[0].SeriesInstanceUID)
    ct_dir.mkdir(parents=True)
    paths = []
    for ds in inputs.sources[:3]:
        paths.append(ct_dir / f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    assert study_localizer(paths, inputs.sources[0], ["LOCALIZER"]) is None  # none yet
    loc = localizer_dataset(make_phantom("cap", 4, 24, 96).localizer(), inputs.sources[0], series_number=1)
    lateral = localizer_dataset(make_phantom("cap", 4, 24, 96).localizer(), inputs.sources[0], series_number=3)
    lateral.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    other_patient = localizer_dataset(make_phantom("cap", 5, 24, 96).localizer(), inputs.sources[0], series_number=4)
    other_patient.PatientID = "SOMEONE-ELSE"
    for ds in (loc, lateral, other_patient):
        folder = study / str(ds.SeriesInstanceUID)
        folder.mkdir(exist_ok=True)
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    assert [p.stem for p in localizer_files(study, ct_dir, "PHANTOM-0001", ["LOCALIZER"])] == [str(loc.SOPInstanceUID)]
    found = study_localizer(paths, inputs.sources[0], ["LOCALIZER"])
    assert found is not None
    radiograph, ds = found
    assert radiograph.sop_uids == (str(loc.SOPInstanceUID),) and ds.SOPInstanceUID == loc.SOPInstanceUID
    assert study_localizer(paths, inputs.sources[0], ["SCOUT"]) is None  # another configured image type


@pytest.mark.parametrize("fused", [True, False])
def test_sr_carries_the_cxr_and_fused_scores_and_the_localizer(tmp_path, fused):
    inputs = make_inputs(seed=3, label="covid19") if fused else make_indeterminate_inputs(seed=3)
    cxr, loc = _cxr(inputs, fused)
    result = replace(inputs.result, cxr=cxr)
    options = WriterOptions(enabled=frozenset({"sr"}), uid_seed="cxr", cxr_sources=(loc,))
    sr = build_result_objects(result, inputs.volume, inputs.sources, options)["sr"][0]
    check = dciodvfy(sr, tmp_path, "sr.dcm")
    assert check.errors == [], check.output
    assert check.unexpected_warnings == [], check.unexpected_warnings
    findings = read_findings(to_bytes_and_back(sr))
    assert findings.decision == inputs.result.decision.value  # the Impression stays the CT's
    assert findings.cxr_probabilities == pytest.approx({"covid19": 0.64, "cap": 0.36})
    assert findings.cxr_sop_uid == str(loc.SOPInstanceUID)
    if fused:
        assert findings.fused_probabilities == pytest.approx({"covid19": 0.72, "cap": 0.28})
        assert findings.fused_decision == "covid19"
        assert "Fused (mean of the two): COVID-19 72.0%" in findings.summary
    else:
        assert findings.fused_probabilities == {} and findings.fused_decision is None
        assert "Not fused: the CT decision is indeterminate" in findings.summary
    assert "CXR branch: the CT localizer (scout) read as a chest x-ray" in findings.summary
    # The localizer is evidence of the report (same study) and in its image library.
    evidence = {
        str(item.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert str(loc.SOPInstanceUID) in evidence and str(inputs.sources[0].SOPInstanceUID) in evidence


def test_sr_without_cxr_has_no_cxr_group():
    inputs = make_inputs(seed=3)
    sr = build_result_objects(inputs.result, inputs.volume, inputs.sources, WriterOptions(enabled={"sr"}))["sr"][0]
    findings = read_findings(sr)
    assert findings.cxr_probabilities == {} and findings.cxr_sop_uid is None
    assert "CXR branch" not in findings.summary


def test_fhir_and_hl7_carry_the_cxr_branch():
    from dicomnode.fhir import build_report_bundle
    from dicomnode.hl7 import build_oru
    from dicomnode.study_refs import refs_from_sources

    inputs = make_inputs(seed=3, label="covid19")
    cxr, loc = _cxr(inputs)
    summary = replace(inputs.result, cxr=cxr).summary(inputs.volume)
    refs = refs_from_sources(inputs.sources[0], [])
    bundle = build_report_bundle(summary, refs, "job-1").model_dump()
    obs = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    (fused,) = [o for o in obs if o["code"]["coding"][0]["code"] == "FUSDECISION"]
    assert fused["valueCodeableConcept"]["text"] == "COVID-19"
    comps = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in fused["component"]}
    assert comps == {"XP_COVID19": 64.0, "XP_CAP": 36.0, "FP_COVID19": 72.0, "FP_CAP": 28.0}
    assert str(loc.SOPInstanceUID) in fused["note"][0]["text"]
    message = build_oru(summary, refs, "PHANTOM^DEMO", "1-a")
    assert "FP_COVID19^AI CT and radiograph fused probability of covid19" in message
    assert "FUSDECISION^AI CT and radiograph fused decision^99COVIDNODE||covid19^COVID-19" in message
    assert str(loc.SOPInstanceUID) in message
    # Not fused: the radiograph's own scores, no fused decision.
    cxr_alone = replace(cxr, fused=None, fused_decision=None, reason="not fused: the CT decision is indeterminate")
    summary2 = replace(inputs.result, cxr=cxr_alone).summary(inputs.volume)
    message2 = build_oru(summary2, refs, "PHANTOM^DEMO", "1-b")
    assert "XP_CAP" in message2 and "FUSDECISION" not in message2


def test_analyze_with_a_localizer_adds_the_cxr_branch(tmp_path, capsys, tiny_bundle, tiny_bundle_with_cxr):
    import argparse
    import json

    from dicomnode.commands import analyze as analyze_cmd
    from dicomnode.synthetic import write_ct_series

    phantom = make_phantom("cap", 8, 24, 96)
    series = write_ct_series(phantom.volume, tmp_path / "ct")
    loc = localizer_dataset(phantom.localizer(), pydicom.dcmread(series.paths[0]))
    loc.save_as(tmp_path / "scout.dcm", enforce_file_format=True)

    def run(bundle) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser()
        analyze_cmd.add_arguments(parser)
        argv = [str(tmp_path / "ct"), "--out", str(tmp_path / "out"), "--bundle", str(bundle), "--device", "cpu"]
        code = analyze_cmd.run(parser.parse_args(argv + ["--localizer", str(tmp_path / "scout.dcm")]))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run(tiny_bundle_with_cxr)
    assert code == 0
    cxr = json.loads(out)["cxr"]
    assert cxr["images"] == [str(loc.SOPInstanceUID)] and set(cxr["probabilities"]) == {"covid19", "cap"}
    (sr_path,) = sorted((tmp_path / "out" / "sr").glob("*.dcm"))
    findings = read_findings(pydicom.dcmread(sr_path))
    assert findings.cxr_sop_uid == str(loc.SOPInstanceUID)
    # A bundle without a CXR model: a one-line error, exit 2.
    code, _, err = run(tiny_bundle)
    assert code == 2 and "has no CXR model" in err


@pytest.mark.parametrize("orientation", [True, False])
def test_radiograph_only_sr_validates(tmp_path, orientation):
    from dicomnode.synthetic import radiograph_dataset
    from dicomnode.writers.common import uid_maker
    from dicomnode.writers.sr_radiograph import build_radiograph_sr

    from writer_inputs import TEST_MODEL

    inputs = make_inputs(seed=2)
    film = to_bytes_and_back(radiograph_dataset(make_phantom("cap", 4, 24, 96).localizer(), inputs.sources[0]))
    if not orientation:
        del film.PatientOrientation
    radiograph = read_radiograph(film, "radiograph")
    cxr = CxrResult(("covid19", "cap"), {"covid19": 0.3, "cap": 0.7}, radiograph, None, None, None, "radiograph alone")
    options = WriterOptions(uid_seed="xr")
    sr = build_radiograph_sr(cxr, film, TEST_MODEL, options, uid_maker(options, [film]))
    check = dciodvfy(sr, tmp_path, "xr-sr.dcm")
    assert check.errors == [] and check.unexpected_warnings == [], check.output
    assert sr.StudyInstanceUID == film.StudyInstanceUID and sr.PreliminaryFlag == "PRELIMINARY"
    text = sr.ContentSequence[-1].ContentSequence[0].TextValue
    assert "70.0%" in text and "30.0%" in text and "no diagnosis is stated" in text


def test_select_instances_takes_radiographs_alone_only_when_asked():
    from dicomnode.config import SelectionSection
    from dicomnode.series import select_instances

    rows = [
        {
            "modality": "DX",
            "path": "a",
            "study_uid": "1",
            "patient_key": "p",
            "image_type": "ORIGINAL\\PRIMARY",
            "body_part": "CHEST",
            "orientation": None,
            "slice_thickness": None,
        },
    ]
    assert not select_instances(rows, SelectionSection()).accepted  # modality DX is not CT
    assert select_instances(rows, SelectionSection(), radiographs=("DX", "CR")).paths == ("a",)
    ct = [dict(rows[0], modality="CT")]
    assert select_instances(ct, SelectionSection(), radiographs=("DX",)).reason is not None  # the CT rules apply
