"""Every object states ``result.decision``, never the argmax: a confident COVID-19 result,
a confident CAP result, an indeterminate split (CAP 50.2% vs COVID-19 49.7%) and an
out-of-domain study whose classifier still says CAP 99%."""

from __future__ import annotations

from functools import lru_cache

import highdicom as hd
import pytest

from dicomnode.writers import WriterError, WriterOptions, build_result_objects, codes, read_findings
from dicomnode.writers.sc import overlay_caption

from writer_inputs import (
    DECISION_CASES,
    TEST_THRESHOLDS,
    dciodvfy,
    to_bytes_and_back,
)

CASES = DECISION_CASES
#: What no object may say under a decision that names no class.
CLASS_CLAIMS = (
    "AI result",
    "AI decision: COVID-19",
    "AI decision: Community",
    "COVID-19 infectious",
    "Infectious slices (",
    "infectious slices found",
)


class Case:
    def __init__(self, name: str) -> None:
        self.name = name
        self.inputs = CASES[name]()
        built = build_result_objects(
            self.inputs.result, self.inputs.volume, self.inputs.sources, WriterOptions(uid_seed=f"decision-{name}")
        )
        self.objects = {kind: [to_bytes_and_back(ds) for ds in datasets] for kind, datasets in built.items()}
        self.sr = self.objects["sr"][0]
        self.findings = read_findings(self.sr)

    def uids(self, zs) -> list[str]:
        """SOP Instance UIDs of slices zs, in z order."""
        return [str(self.inputs.sources[z].SOPInstanceUID) for z in sorted(zs)]


@lru_cache(maxsize=None)
def built(name: str) -> Case:
    """Each case built once per test session (the tests only read it)."""
    return Case(name)


@pytest.fixture(params=list(CASES))
def case(request) -> Case:
    return built(request.param)


def _walk(items):
    for item in items:
        yield item
        yield from _walk(getattr(item, "ContentSequence", []))


def _items(ds, code) -> list:
    return [
        item
        for item in _walk(ds.ContentSequence)
        if item.ConceptNameCodeSequence[0].CodeValue == code.value
        and item.ConceptNameCodeSequence[0].CodingSchemeDesignator == code.scheme_designator
    ]


def _texts(ds) -> list[str]:
    return [str(item.TextValue) for item in _walk(ds.ContentSequence) if item.ValueType == "TEXT"]


def test_inputs_are_what_the_cases_say(case):
    res = case.inputs.result
    assert res.decision.value == case.name
    if case.name in ("indeterminate", "out_of_domain"):
        assert res.case_scores.label == "cap", "the argmax must differ from the decision"
        assert res.infected.z_indices and res.attention, "the locator and Grad-CAM must have something to show"


def test_sr_impression_is_the_decision_coded(case):
    expected = codes.DECISION[case.name]
    impressions = _items(case.sr, codes.IMPRESSION)
    assert len(impressions) == 2  # in the case group and in Qualitative Evaluations
    for item in impressions:
        concept = item.ConceptCodeSequence[0]
        assert (concept.CodeValue, concept.CodingSchemeDesignator) == (expected.value, expected.scheme_designator)
    assert case.findings.decision == case.name
    if case.name == "indeterminate":
        assert (expected.value, expected.scheme_designator) == ("373068000", "SCT")
    if case.name == "out_of_domain":
        assert expected.scheme_designator == codes.PRIVATE_SCHEME and "cannot assess" in expected.meaning
    group = [
        g
        for g in hd.sr.Comprehensive3DSR.from_dataset(case.sr).content.get_planar_roi_measurement_groups()
        if g.tracking_identifier.startswith("AI case result")
    ][0]
    shown = {
        "covid19": "COVID-19",
        "cap": "Community-acquired pneumonia",
        "indeterminate": "Indeterminate",
        "out_of_domain": "Cannot assess (out of domain)",
    }[case.name]
    assert group.tracking_identifier.startswith(f"AI case result: {shown}, image ")


def test_sr_claims_a_class_only_under_a_class_decision(case):
    diagnosis_codes = {(c.value, c.scheme_designator) for c in codes.DIAGNOSIS.values()}
    coded = {
        (item.ConceptCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodingSchemeDesignator)
        for item in _walk(case.sr.ContentSequence)
        if item.ValueType == "CODE"
    }
    summary = case.findings.summary
    if case.name in ("covid19", "cap"):
        assert (codes.DIAGNOSIS[case.name].value, codes.DIAGNOSIS[case.name].scheme_designator) in coded
        assert summary.startswith(f"AI decision: {'COVID-19' if case.name == 'covid19' else 'Community-acquired'}")
        return
    assert not coded & diagnosis_codes, "a decision that names no class must not code a diagnosis"
    for text in _texts(case.sr):
        assert not any(claim in text for claim in CLASS_CLAIMS), text
    if case.name == "indeterminate":
        assert summary.startswith(
            "AI decision: indeterminate. CAP 50.2% vs COVID-19 49.7% are within the "
            "model's 10-point margin; no diagnosis is stated."
        )
        assert case.findings.probabilities["cap"] == pytest.approx(0.502)
    else:
        assert summary.startswith(
            "AI decision: cannot assess this study (out of domain). The AI model cannot "
            "assess this study: it differs from the model's training data"
        )
        assert case.findings.probabilities == {} and case.findings.tasks == {}
        names = [
            m.ConceptNameCodeSequence[0].CodeMeaning for m in _walk(case.sr.ContentSequence) if m.ValueType == "NUM"
        ]
        claims = [n for n in names if "probability" in n or (n.endswith(" score") and "Out-of-domain" not in n)]
        assert claims == [], claims
        for word in ("CAP", "Community", "99.0", "COVID-19 probability"):
            assert word not in summary, word


def test_sr_carries_thresholds_domain_score_and_lung_volume(case):
    found, res = case.findings, case.inputs.result
    assert found.out_of_domain_score == pytest.approx(res.domain.score)
    assert found.out_of_domain_threshold == 1.0
    assert found.lung_volume_ml == pytest.approx(res.lung_volume_ml, abs=0.05)
    if case.name == "out_of_domain":
        assert found.thresholds == {}  # no class operating point was used
    else:
        assert found.thresholds == pytest.approx(TEST_THRESHOLDS)
        assert "Operating points: pneumonia vs no pneumonia 50%" in found.summary
        assert "indeterminate margin 10 points" in found.summary
    assert found.decision_reason == res.decision.reason


def test_infected_slices_are_worded_by_the_decision(case):
    found, res = case.findings, case.inputs.result
    summary = found.summary
    located = sorted(case.uids(res.infected.z_indices))
    other_groups = [
        g.tracking_identifier
        for g in hd.sr.Comprehensive3DSR.from_dataset(case.sr).content.get_planar_roi_measurement_groups()
        # The case group and the lobes' severity groups (test_writers_sr) say no slice is infectious.
        if not g.tracking_identifier.startswith(("AI case result", "AI lobe severity"))
    ]
    if case.name == "covid19":
        assert sorted(found.infected_sop_uids) == located and found.flagged_sop_uids == ()
        assert f"COVID-19 infectious slices: {len(located)}" in summary
        assert other_groups and all(g.startswith("COVID-19 infectious slice, image") for g in other_groups)
    elif case.name == "cap":
        assert sorted(found.infected_sop_uids) == located and found.flagged_sop_uids == ()
        assert f"Infectious slices (CAP): {len(located)}" in summary and "COVID-19 infectious" not in summary
        assert other_groups and all(g.startswith("Infectious slice (CAP), image") for g in other_groups)
    elif case.name == "indeterminate":
        assert found.infected_sop_uids == () and sorted(found.flagged_sop_uids) == located
        assert _items(case.sr, codes.INFECTED_SLICE_COUNT) == []
        assert len(_items(case.sr, codes.LOCATOR_FLAGGED_COUNT)) == 1
        assert "not reported as infectious slices because no diagnosis is stated" in summary
        assert other_groups == []
    else:
        assert found.infected_sop_uids == () and found.flagged_sop_uids == ()
        assert _items(case.sr, codes.INFECTED_SLICE_COUNT) == _items(case.sr, codes.LOCATOR_FLAGGED_COUNT) == []
        assert _items(case.sr, codes.INFECTED_SLICE_SCORE) == [] and other_groups == []
        assert "infectious" not in summary and "locator" not in summary


def test_out_of_domain_draws_the_lung_not_the_attention():
    case = built("out_of_domain")
    (group,) = hd.sr.Comprehensive3DSR.from_dataset(case.sr).content.get_planar_roi_measurement_groups()
    assert group.finding_type.value == codes.LUNG.value
    names = [m.name.meaning for m in group.get_measurements()]
    assert names[:2] == [codes.OUT_OF_DOMAIN_SCORE.meaning, codes.OUT_OF_DOMAIN_THRESHOLD.meaning]
    assert codes.VOLUME.meaning in names


def test_kos_follows_the_decision(case):
    kos_list, res = case.objects["kos"], case.inputs.result
    if case.name == "out_of_domain":
        assert kos_list == [], "out of domain the model points at nothing"
        return
    (kos,) = kos_list
    referenced = [
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in kos.ContentSequence
        if item.ValueType == "IMAGE"
    ]
    (text,) = [
        item.TextValue
        for item in kos.ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "113012"
    ]
    if case.name == "covid19":
        assert referenced == case.uids(res.infected.z_indices)
        assert text.startswith("COVID-19 infectious slices found by AI") and "AI decision: COVID-19" in text
    elif case.name == "cap":
        assert referenced == case.uids(res.infected.z_indices)
        assert text.startswith("Infectious slices (CAP) found by AI") and "COVID-19 infectious" not in text
        assert "AI decision: Community-acquired pneumonia" in text
    else:
        assert referenced == case.uids({a.z_index for a in res.attention})
        assert text.startswith("Slices the AI explained with Grad-CAM") and "AI decision: indeterminate" in text
        assert not any(claim in text for claim in CLASS_CLAIMS), text


def test_sc_captions_follow_the_decision(case):
    overlays, res = case.objects["sc"], case.inputs.result
    if case.name == "out_of_domain":
        assert overlays == [], "out of domain no Grad-CAM overlay is made"
        assert case.objects["seg"], "the lung segmentation is still delivered"
        return
    assert overlays
    decision = {
        "covid19": "AI decision: COVID-19",
        "cap": "AI decision: CAP",
        "indeterminate": "AI decision: indeterminate",
    }[case.name]
    slice_word = {"covid19": "COVID-19 infectious slice", "cap": "infectious slice (CAP)", "indeterminate": None}
    by_uid = {str(s.SOPInstanceUID): z for z, s in enumerate(case.inputs.sources)}
    for ds in overlays:
        z = by_uid[str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        caption = overlay_caption(res, case.inputs.volume, z, res.case_scores.label)
        assert caption[0] == decision
        if slice_word[case.name]:
            assert caption[2].endswith(f"| {slice_word[case.name]}")
        else:
            assert "infectious" not in " ".join(caption)
        assert decision.replace("CAP", "Community-acquired pneumonia") in ds.ImageComments


@pytest.mark.peers
def test_every_object_passes_dciodvfy(case, tmp_path):
    checked = 0
    for kind, datasets in case.objects.items():
        for i, ds in enumerate(datasets[:2]):
            result = dciodvfy(ds, tmp_path, f"{kind}-{i}.dcm")
            assert result.errors == [], f"{case.name} {kind}:\n{result.output}"
            assert result.unexpected_warnings == [], f"{case.name} {kind}:\n{result.output}"
            checked += 1
    assert checked >= 2


def test_read_findings_refuses_a_class_claim_out_of_domain():
    """The reader's self-check: an out-of-domain SR with a class probability is broken."""
    import copy

    ood, cap = built("out_of_domain"), built("cap")
    tampered = copy.deepcopy(ood.sr)
    group = _items(tampered, codes.OUT_OF_DOMAIN_SCORE)[0]
    probability = _items(cap.sr, codes.CLASS_PROBABILITY["cap"])[0]
    container = next(
        item
        for item in _walk(tampered.ContentSequence)
        if any(child is group for child in getattr(item, "ContentSequence", []))
    )
    container.ContentSequence.append(copy.deepcopy(probability))
    with pytest.raises(WriterError, match="must claim no class"):
        read_findings(tampered)


def test_sr_grades_severity_except_out_of_domain(case):
    """The MosMedData-style grade and the GGO / consolidation volumes of the lesion map are
    in the case group, never out of domain (the map is not measured there)."""
    meanings = [
        str(seq[0].CodeMeaning)
        for item in _walk(case.sr.ContentSequence)
        for seq in (getattr(item, "ConceptNameCodeSequence", None), getattr(item, "ConceptCodeSequence", None))
        if seq
    ]
    has_grade = any(m.startswith("CT severity grade") for m in meanings)
    has_ggo = any(m == "Volume of ground-glass opacity" for m in meanings)
    assert has_grade == has_ggo == (case.name != "out_of_domain"), meanings
    summary = " ".join(_texts(case.sr))
    assert ("Severity: lesions involve" in summary) == (case.name != "out_of_domain")
    if case.name != "out_of_domain":
        grade = case.inputs.result.severity.mosmed_grade
        assert any(m.startswith(f"CT-{grade}:") for m in meanings)


def test_every_object_names_the_ai_model_as_contributing_equipment(case):
    """IHE AI Results: each object carries a Contributing Equipment item for the AI model
    whose device UID and serial number follow the model bundle, the same UID the SR's
    observer device context gives (highdicom adds an item of its own, the library)."""
    model = case.inputs.result.model
    sr_device_uids = {
        str(item.UID)
        for item in hd.sr.utils.find_content_items(case.sr, recursive=True)
        if item.ValueType == "UIDREF" and item.ConceptNameCodeSequence[0].CodeValue == "121012"
    }
    for kind, datasets in case.objects.items():
        for ds in datasets:
            (item,) = [e for e in ds.ContributingEquipmentSequence if "DeviceUID" in e]
            purpose = item.PurposeOfReferenceCodeSequence[0]
            assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM"), kind
            assert item.ManufacturerModelName == model.name, kind
            assert item.DeviceSerialNumber == model.sha256, kind
            assert model.version in list(item.SoftwareVersions), kind
            assert {str(item.DeviceUID)} == sr_device_uids, kind


def test_the_device_uid_changes_with_the_model_bundle():
    from dataclasses import replace

    from dicomnode.writers.common import contributing_equipment, device_uid

    model = built("covid19").inputs.result.model
    other = replace(model, sha256="0" * 64)
    options = WriterOptions()
    assert device_uid(model, options) == device_uid(model, options)
    assert device_uid(model, options) != device_uid(other, options)
    assert contributing_equipment(other, options)[0].DeviceUID == device_uid(other, options)
