"""The TID 1500 report: valid DICOM, readable back by highdicom, shaped for OHIF."""

from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pytest

from dicomnode.writers import WriterError, WriterOptions, build_result_objects, codes, read_findings
from pipeline.severity import LOBE_TITLES
from pipeline.types import CLASS_NAMES, TASK_NAMES

from writer_inputs import dciodvfy, make_inputs, to_bytes_and_back


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(seed=3, n_slices=24, size=96)


@pytest.fixture(scope="module")
def sr(inputs):
    objects = build_result_objects(
        inputs.result, inputs.volume, inputs.sources, WriterOptions(enabled={"sr"}, uid_seed="job-sr")
    )
    assert list(objects) == ["sr"] and len(objects["sr"]) == 1
    return to_bytes_and_back(objects["sr"][0])


@pytest.mark.peers
def test_sr_passes_dciodvfy(sr, tmp_path):
    result = dciodvfy(sr, tmp_path, "sr.dcm")
    assert result.errors == [], result.output
    assert result.unexpected_warnings == [], result.output


def test_sr_reads_back_to_the_chain_findings(sr, inputs):
    found = read_findings(sr)
    res, sources = inputs.result, inputs.sources
    assert found.decision == res.decision.value == "covid19"
    assert found.decision_reason == res.decision.reason
    assert found.thresholds == pytest.approx(dict(res.decision.thresholds), abs=1e-6)
    assert found.out_of_domain_score == pytest.approx(res.domain.score) and found.out_of_domain_threshold == 1.0
    for name in CLASS_NAMES:  # stored in percent with two decimals
        assert found.probabilities[name] == pytest.approx(res.case_scores.probabilities[name], abs=1e-4)
    for name in TASK_NAMES:
        assert found.tasks[name] == pytest.approx(res.case_scores.tasks[name], abs=1e-4)
    assert found.lung_volume_ml == pytest.approx(res.lung_volume_ml, abs=0.05)
    assert res.infected.z_indices, "the test inputs must have infectious slices"
    assert found.infected_count == len(res.infected.z_indices) and found.flagged_sop_uids == ()
    assert sorted(found.infected_sop_uids) == sorted(str(sources[z].SOPInstanceUID) for z in res.infected.z_indices)
    # The key slice is an explained infectious slice.
    key_z = [str(s.SOPInstanceUID) for s in sources].index(found.key_sop_uid)
    assert key_z in res.infected.z_indices and key_z in [a.z_index for a in res.attention]
    assert (found.algorithm_name, found.algorithm_version, found.bundle_sha256) == (
        res.model.name,
        res.model.version,
        res.model.sha256,
    )
    assert found.disclaimer == res.model.disclaimer
    assert "COVID-19" in found.summary and res.model.disclaimer in found.summary


def test_sr_copies_identity_and_names_itself(sr, inputs):
    src = inputs.sources[0]
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
    ):
        assert sr[keyword].value == src[keyword].value, keyword
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    assert sr.Modality == "SR" and sr.SeriesNumber == 901
    assert "not for clinical use" in sr.SeriesDescription and len(sr.SeriesDescription) <= 64
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.PreliminaryFlag == "PRELIMINARY"
    assert any(item.CodingSchemeDesignator == codes.PRIVATE_SCHEME for item in sr.CodingSchemeIdentificationSequence)
    # Evidence: the whole source series.
    evidence = {uids[2] for uids in hd.sr.Comprehensive3DSR.from_dataset(sr).get_evidence()}
    assert evidence == {str(s.SOPInstanceUID) for s in inputs.sources}


def test_sr_has_only_image_anchored_measurement_groups(sr, inputs):
    """OHIF 3.12-3.14 fails on a TID 1501 group (no image coordinates): none may exist,
    and every planar group draws a region on one of the source slices."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    assert report.get_image_measurement_groups() == []
    assert report.get_volumetric_roi_measurement_groups() == []
    groups = report.get_planar_roi_measurement_groups()
    res = inputs.result
    explained_infected = {a.z_index for a in res.attention} & set(res.infected.z_indices)
    assert len(explained_infected) >= 2, "the test inputs must explain several infectious slices"
    # The case group on the key slice, one more per other explained infectious slice, then
    # one per involved lobe (sr_severity).
    involved = [p for p in res.severity.lobes if p.score > 0]
    assert involved, "the test inputs must involve some lobe"
    lobe_groups = [g for g in groups if str(g.tracking_identifier).startswith("AI lobe severity")]
    groups_by_slice = [g for g in groups if g not in lobe_groups]
    assert len(lobe_groups) == len(involved)
    assert len(groups_by_slice) == len(explained_infected)
    assert {_sop(g) for g in groups_by_slice} == {str(inputs.sources[z].SOPInstanceUID) for z in explained_infected}
    source_uids = {str(s.SOPInstanceUID) for s in inputs.sources}
    rows, cols = inputs.volume.shape[1:]
    for group in groups:
        roi = group.roi
        assert roi is not None and roi.graphic_type in (hd.sr.GraphicTypeValues.POLYLINE, hd.sr.GraphicTypeValues.POINT)
        points = np.asarray(roi.value).reshape(-1, 2)
        if roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE:
            assert len(points) >= 4 and np.allclose(points[0], points[-1]), "polygon must be closed"
        assert points[:, 0].min() >= 0 and points[:, 0].max() <= cols
        assert points[:, 1].min() >= 0 and points[:, 1].max() <= rows
        assert roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID in source_uids
        assert group.get_measurements(), "OHIF labels a group with its NUM items: each needs one"


def _sop(group) -> str:
    return str(group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)


def test_sr_without_infectious_slices_or_attention_still_anchors_the_result(tmp_path):
    inputs = make_inputs(seed=4, n_slices=20, size=96, label="non_pneumonia", infected=False, with_attention=False)
    sr = to_bytes_and_back(
        build_result_objects(inputs.result, inputs.volume, inputs.sources, WriterOptions(enabled={"sr"}))["sr"][0]
    )
    found = read_findings(sr)
    assert found.decision == "non_pneumonia" and found.infected_count == 0 and found.infected_sop_uids == ()
    assert found.flagged_sop_uids == ()  # "no pneumonia": the count is the locator's, flagged none
    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_planar_roi_measurement_groups()
    assert len(groups) == 1
    assert groups[0].finding_type.value == codes.LUNG.value  # the lung outline, no attention region
    assert found.summary.startswith("AI decision: No pneumonia") and "infectious" not in found.summary


def test_uid_seed_rebuilds_the_same_objects_and_no_seed_new_ones(inputs):
    def uids(options):
        objects = build_result_objects(inputs.result, inputs.volume, inputs.sources, options)
        return [(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)) for kind in objects for ds in objects[kind]]

    first = uids(WriterOptions(uid_seed="job-42"))
    assert first == uids(WriterOptions(uid_seed="job-42"))
    assert set(first).isdisjoint(uids(WriterOptions(uid_seed="job-43", enabled={"sr", "kos"})))
    assert set(first).isdisjoint(uids(WriterOptions(enabled={"sc", "seg"})))
    assert len({sop for _, sop in first}) == len(first)


def test_enabled_kinds_are_respected(inputs):
    objects = build_result_objects(inputs.result, inputs.volume, inputs.sources, WriterOptions.for_kinds(["kos", "sr"]))
    assert list(objects) == ["sr", "kos"]
    assert build_result_objects(inputs.result, inputs.volume, inputs.sources, WriterOptions(enabled=frozenset())) == {}
    with pytest.raises(WriterError, match="unknown object kind"):
        WriterOptions(enabled={"sr", "pdf"})


def test_sources_out_of_order_are_refused(inputs):
    shuffled = list(reversed(inputs.sources))
    with pytest.raises(WriterError, match="z order"):
        build_result_objects(inputs.result, inputs.volume, shuffled, WriterOptions(enabled={"sr"}))
    with pytest.raises(WriterError, match="source datasets for a volume"):
        build_result_objects(inputs.result, inputs.volume, inputs.sources[:-1], WriterOptions(enabled={"sr"}))


@pytest.mark.peers
def test_dsrdump_prints_the_findings(sr, tmp_path):
    exe = shutil.which("dsrdump")
    if exe is None:
        pytest.skip("dsrdump not installed (Debian package dcmtk; .ci/run installs it)")
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "COVID-19 probability" in out.stdout and "Imaging Measurement Report" in out.stdout


def test_sources_missing_type2_identity_still_give_valid_objects(tmp_path):
    """A scanner that leaves out Type 2 attributes (not even empty) must not break the
    writers, and the caller's datasets must stay as they were."""
    inputs = make_inputs(seed=12, n_slices=20, size=96)
    for ds in inputs.sources:
        del ds.PatientBirthDate, ds.AccessionNumber, ds.SliceThickness
    objects = build_result_objects(inputs.result, inputs.volume, inputs.sources, WriterOptions())
    assert all("PatientBirthDate" not in ds and "SliceThickness" not in ds for ds in inputs.sources)
    sr = objects["sr"][0]
    assert sr.PatientBirthDate == "" and sr.AccessionNumber == ""
    if shutil.which("dciodvfy"):
        for kind in ("sr", "seg"):
            check = dciodvfy(objects[kind][0], tmp_path, f"{kind}.dcm")
            assert check.errors == [], check.output


def test_sources_without_geometry_are_refused_with_a_reason(inputs):
    import copy

    broken = [copy.copy(ds) for ds in inputs.sources]
    broken[3] = copy.deepcopy(inputs.sources[3])
    del broken[3].ImagePositionPatient
    with pytest.raises(WriterError, match="source slice 3 .* has no ImagePositionPatient"):
        build_result_objects(inputs.result, inputs.volume, broken, WriterOptions(enabled={"sr"}))


def test_lossy_sources_are_named_in_the_summary_and_the_overlays():
    """A result drawn from lossy JPEG sources says so; its overlays are marked lossy (PS3.3 C.7.6.1.1.5)."""
    from pydicom.uid import JPEGBaseline8Bit

    from dicomnode.writers import WriterOptions, build_result_objects

    from writer_inputs import make_inputs

    inputs = make_inputs(seed=11, n_slices=24, size=96)
    for ds in inputs.sources:
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    objects = build_result_objects(inputs.result, inputs.volume, inputs.sources, WriterOptions(enabled={"sr", "sc"}))
    sr = objects["sr"][0]
    texts = [str(item.TextValue) for item in sr.ContentSequence[-1].ContentSequence if "TextValue" in item]
    assert any("lossy compressed (JPEG baseline)" in t for t in texts)
    assert objects["sc"] and all(sc.LossyImageCompression == "01" for sc in objects["sc"])
    plain = make_inputs(seed=11, n_slices=24, size=96)
    objects = build_result_objects(plain.result, plain.volume, plain.sources, WriterOptions(enabled={"sr", "sc"}))
    assert all(sc.LossyImageCompression == "00" for sc in objects["sc"])


def test_fewer_images_than_the_scanner_declared_is_flagged():
    from dicomnode.writers import WriterOptions, build_result_objects
    from dicomnode.writers.common import completeness_note

    from writer_inputs import make_inputs

    inputs = make_inputs(seed=12, n_slices=24, size=96)
    assert completeness_note(inputs.result, inputs.sources) is None
    for ds in inputs.sources:
        ds.ImagesInAcquisition = 100
    assert completeness_note(inputs.result, inputs.sources) == "24 of 100 images (Images in Acquisition)"
    sr = build_result_objects(inputs.result, inputs.volume, inputs.sources, WriterOptions(enabled={"sr"}))["sr"][0]
    texts = " ".join(str(i.TextValue) for i in sr.ContentSequence[-1].ContentSequence if "TextValue" in i)
    assert "may be incomplete (24 of 100 images" in texts


def test_lesion_pattern_leads_the_case_group_and_reads_back(tmp_path):
    """With a lesion pattern model the case group leads with what the decision rests on
    (lesion share, the pattern's type shares, the decided type first); OHIF draws the
    first five numbers. Out of domain, no type share is reported."""
    from dataclasses import replace

    from pipeline.lesion_pattern import FEATURE_NAMES
    from pipeline.types import LesionBurden, LesionPattern

    from writer_inputs import make_out_of_domain_inputs

    def with_pattern(inp):
        nz = inp.volume.shape[0]
        pattern = LesionPattern(
            features={k: 0.0 for k in FEATURE_NAMES},
            probabilities={"non_pneumonia": 0.1, "cap": 0.18, "influenza": 0.09, "covid19": 0.63},
        )
        burden = LesionBurden(volume_ml=120.0, lung_share=0.04, slice_area_mm2=np.zeros(nz))
        return replace(inp, result=replace(inp.result, lesion_pattern=pattern, lesion=burden))

    inp = with_pattern(make_inputs(seed=2))
    sr = build_result_objects(inp.result, inp.volume, inp.sources, WriterOptions(enabled=("sr",)))["sr"][0]
    assert dciodvfy(sr, tmp_path).errors == []
    case = [
        g
        for g in hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_planar_roi_measurement_groups()
        if g.tracking_identifier.startswith("AI case result")
    ][0]
    names = [m.name.value for m in case.get_measurements()]
    assert names[:4] == [
        codes.LESION_SHARE.value,
        codes.PATTERN_TYPE_SHARE["covid19"].value,
        codes.PATTERN_TYPE_SHARE["cap"].value,
        codes.PATTERN_TYPE_SHARE["influenza"].value,
    ]
    assert names.count(codes.LESION_SHARE.value) == 1
    found = read_findings(to_bytes_and_back(sr))
    assert found.pattern_shares == pytest.approx({"cap": 0.2, "influenza": 0.1, "covid19": 0.7}, abs=1e-3)
    assert "COVID-19 70.0%, Community-acquired pneumonia 20.0%" in found.summary

    ood = with_pattern(make_out_of_domain_inputs(seed=2))
    sr = build_result_objects(ood.result, ood.volume, ood.sources, WriterOptions(enabled=("sr",)))["sr"][0]
    assert read_findings(to_bytes_and_back(sr)).pattern_shares == {}


def test_sr_reports_each_involved_lobe_on_its_image_and_the_lobe_table(sr, inputs):
    """Issue 15: per lobe the involved share and score (image-anchored, OHIF draws them),
    the CT severity score in the case group, and every lobe in the summary's table."""
    from dicomnode.writers import codes

    severity = inputs.result.severity
    assert severity.ct_severity_score is not None and len(severity.lobes) == 5
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    groups = report.get_planar_roi_measurement_groups()
    by_lobe = {}
    for g in groups:
        values = {m.name.value: m.value for m in g.get_measurements()}
        if codes.LOBE_SCORE.value in values:
            by_lobe[str(g.tracking_identifier)] = values
    involved = {p.name: p for p in severity.lobes if p.score > 0}
    assert len(by_lobe) == len(involved)
    for part in involved.values():
        values = next(v for k, v in by_lobe.items() if LOBE_TITLES[part.name] in k)
        assert values[codes.LOBE_SCORE.value] == part.score
        assert abs(values[codes.LOBE_INVOLVEMENT.value] - round(part.involvement_percent, 2)) < 1e-6
    case_values = {m.name.value: m.value for g in groups for m in g.get_measurements()}
    assert case_values[codes.CT_SEVERITY_SCORE.value] == severity.ct_severity_score
    text = read_findings(sr).summary
    assert f"CT severity score {severity.ct_severity_score} of 25" in text
    for part in severity.lobes:
        assert any(
            line.strip().startswith(LOBE_TITLES[part.name]) and f"score {part.score}" in line
            for line in text.splitlines()
        ), text
