"""The SR's multi-stage content (dicomnode/writers/trend.py): one group per study date and
the fused group, all image-anchored (OHIF), the prior study in Pertinent Other Evidence,
the trend table in the summary; still valid DICOM and read back like any report."""

from __future__ import annotations

import datetime as dt

import highdicom as hd
import numpy as np
import pytest

from dicomnode.synthetic import ct_datasets
from dicomnode.writers import WriterOptions, build_result_objects, codes, read_findings
from dicomnode.writers.trend import Trend, trend_text
from pipeline.stages import fuse_stages, stage_from_summary
from pipeline.types import CTVolume

from writer_inputs import dciodvfy, make_inputs, pixelmed, to_bytes_and_back

PRIOR_SUMMARY = {
    "decision": "non_pneumonia",
    "probabilities": {"non_pneumonia": 0.82, "cap": 0.06, "influenza": 0.05, "covid19": 0.07},
    "tasks": {"pneumonia_vs_non_pneumonia": 0.2, "covid19_vs_cap": 0.5, "covid19_vs_influenza": 0.5},
    "lesion_share_of_lung": None,
    "lung_involvement_percent": 0.4,
}


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(seed=3, n_slices=24, size=96)


@pytest.fixture(scope="module")
def prior_headers(inputs):
    hu = np.full((4, 16, 16), -700.0, np.float32)
    src = inputs.sources[0]
    datasets = ct_datasets(CTVolume(hu=hu, spacing_mm=(2.0, 1.0, 1.0)), patient_id=str(src.PatientID))
    for ds in datasets:
        ds.PatientName, ds.StudyDate = src.PatientName, "20251120"
        del ds.PixelData
    return datasets


@pytest.fixture(scope="module")
def trend(inputs, prior_headers):
    current = stage_from_summary(
        inputs.result.summary(inputs.volume), str(inputs.sources[0].StudyInstanceUID), dt.date(2026, 1, 1), True
    )
    prior = stage_from_summary(PRIOR_SUMMARY, str(prior_headers[0].StudyInstanceUID), dt.date(2025, 11, 20))
    fused = fuse_stages([current, prior], "mean")
    return Trend(fused, tuple(prior_headers), ("one warning.",), 730)


@pytest.fixture(scope="module")
def sr(inputs, trend):
    options = WriterOptions(enabled={"sr"}, uid_seed="job-trend", trend=trend)
    return to_bytes_and_back(build_result_objects(inputs.result, inputs.volume, inputs.sources, options)["sr"][0])


@pytest.mark.peers
def test_sr_with_a_trend_passes_dciodvfy(sr, tmp_path):
    result = dciodvfy(sr, tmp_path, "sr-trend.dcm")
    assert result.errors == [], result.output
    assert result.unexpected_warnings == [], result.output


def test_one_group_per_date_and_the_fused_group_on_the_key_slice(sr, inputs, trend, prior_headers):
    found = read_findings(sr)  # the report's own decision is unchanged
    assert found.decision == inputs.result.decision.value
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    assert report.get_image_measurement_groups() == [] and report.get_volumetric_roi_measurement_groups() == []
    groups = report.get_planar_roi_measurement_groups()
    dated = [g for g in groups if str(g.tracking_identifier).startswith("AI trend ")]
    fused = [g for g in groups if str(g.tracking_identifier).startswith("AI multi-stage result")]
    assert [str(g.tracking_identifier).split(" (")[0] for g in dated] == ["AI trend 2025-11-20", "AI trend 2026-01-01"]
    assert "(prior): No pneumonia" in str(dated[0].tracking_identifier)
    assert len(fused) == 1 and trend.stages.decision in ("covid19", "indeterminate", "non_pneumonia")
    for group in [*dated, *fused]:
        image = group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        assert image == found.key_sop_uid
    # each date: its class probabilities (its decision first) and the lungs' involvement
    first = dated[0].get_measurements(name=codes.CLASS_PROBABILITY["non_pneumonia"])
    assert first[0].value == pytest.approx(82.0)
    assert dated[0].get_measurements(name=codes.LESION_SHARE)[0].value == pytest.approx(0.4)
    walk = list(_walk(dated[0]))
    assert any(str(i.value) == str(prior_headers[0].StudyInstanceUID) for i in walk if i.ValueType == "TEXT")
    assert any(str(i.value) == "2025-11-20" for i in walk if i.ValueType == "TEXT")
    decision = fused[0].get_qualitative_evaluations(name=codes.MULTI_STAGE_DECISION)
    assert decision[0].value.value == codes.DECISION[trend.stages.decision].value
    assert fused[0].get_qualitative_evaluations(name=codes.IMPRESSION) == []


def test_the_prior_study_is_pertinent_other_evidence(sr, prior_headers):
    (study,) = sr.PertinentOtherEvidenceSequence
    assert study.StudyInstanceUID == prior_headers[0].StudyInstanceUID
    refs = {r.ReferencedSOPInstanceUID for s in study.ReferencedSeriesSequence for r in s.ReferencedSOPSequence}
    assert refs == {str(ds.SOPInstanceUID) for ds in prior_headers}
    current = {str(s.StudyInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence}
    assert current == {str(sr.StudyInstanceUID)}


def test_the_summary_carries_the_trend_table(sr, trend):
    text = read_findings(sr).summary
    assert "Multi-stage: AI decision over 2 study dates" in text and "Prior studies: one warning." in text
    assert "2025-11-20   prior       No pneumonia" in text and "2026-01-01   this study" in text
    assert "  82.0%" in text and "0.4%" in text
    assert trend_text(None) == ""
    assert "in the last 730 days" in trend_text(Trend(None, (), (), 730))


def _walk(group):
    stack = list(group)
    while stack:
        item = stack.pop(0)
        yield item
        stack.extend(getattr(item, "ContentSequence", []))


@pytest.mark.peers
def test_pixelmed_finds_no_error_in_a_report_with_a_trend(sr, tmp_path):
    result = pixelmed(sr, tmp_path, "sr-trend.dcm")
    assert result.errors == [], result.output
    # the dates' and the fused decisions are qualitative evaluations of their groups, like
    # the Impression: PixelMed's TID 1410 rules do not list them by name (docs/objects.md)
    ours = [w for w in result.warnings if "STAGEDEC" in w or "MSDEC" in w]
    assert ours and all("Content Item not in template" in w for w in ours)
