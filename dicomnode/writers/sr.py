"""The report: Comprehensive 3D SR holding a TID 1500 Measurement Report.

The report states ``result.decision`` (one of pipeline.types.DECISIONS), never the
argmax of the probabilities. Layout (docs/objects.md shows it as ``dsrdump`` prints it)::

    Imaging Measurement Report (TID 1500)
      language, device observer (product, bundle name/version), procedure "CT unspecified body region" (CID 100),
      image library (the source slices the report draws on; the whole series is the
      evidence in the header)
      Imaging Measurements
        Measurement Group "AI case result: <decision>" (TID 1410) on the key slice:
            closed POLYLINE (attention region, else lung outline), finding site Lung,
            algorithm identification (TID 4019: bundle name, version, sha256, parameters),
            NUM: probability of each class, fused score of each task (%) (not out of domain),
                 lung volume (ml), the locator's slices (each referenced by SOP Instance
                 UID as a source image): "Infectious slices" under a pneumonia decision,
                 "Slices flagged by lesion locator, not a finding" under no pneumonia or
                 indeterminate, none out of domain; the key slice's infectious slice score,
                 the decision thresholds and indeterminate margin (%), the out-of-domain
                 score and its threshold 1 (ratio)
            Impression = the decision (SNOMED CT diagnosis, "Undetermined", or private)
        Measurement Group per other explained infectious slice (pneumonia decisions only):
            closed POLYLINE on that slice, NUM infectious slice score (%)
      Qualitative Evaluations
        Impression = the decision; TEXT AI decision reason; TEXT Summary (plain words);
        TEXT Disclaimer

Why image-anchored groups only: OHIF v3 reads a TID 1500 report only through
measurement groups with image coordinates and fails on a group without them (TID 1501),
so the case-level numbers ride on a region of the key slice, where OHIF draws them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code

from pipeline.decision import pattern_type_shares
from pipeline.types import CLASS_NAMES, PNEUMONIA_CLASSES, TASK_NAMES, AnalysisResult, AttentionMap, CTVolume, ModelInfo

from . import codes, wording
from .common import (
    CLASS_DISPLAY,
    UidMaker,
    completeness_note,
    contributing_equipment,
    device_uid,
    disclaimer,
    largest_contour,
    lossy_source,
    model_text,
    overlay_slices,
    primary_slice,
    series_description,
)
from .options import WriterError, WriterOptions
from .sr_cxr import CXR_GROUP_ID, cxr_groups, cxr_text
from .sr_severity import lobe_groups, severity_grade, severity_measurements, severity_text
from .trend import trend_groups, trend_text
from .wording import DECISION_DISPLAY, OUT_OF_DOMAIN_THRESHOLD

CASE_GROUP_ID = "AI case result"
LUNG_METHOD_DISPLAY = {"unet": "U-Net", "classical": "HU-threshold"}


def build_sr(
    result: AnalysisResult, volume: CTVolume, sources: Sequence[Dataset], options: WriterOptions, uid: UidMaker
) -> Dataset:
    """The TID 1500 report as a Comprehensive 3D SR dataset (``uid``: name -> UID)."""
    model = result.model
    algorithm = algorithm_identification(result, options)
    # Out of domain, no attention region is drawn: the model cannot stand behind it.
    attention = {a.z_index: a for a in result.attention} if wording.shows_explanations(result) else {}

    key_z = primary_slice(result)
    groups = [_case_group(result, volume, sources, key_z, attention, algorithm, uid)]
    drawn = _infected_groups_slices(result, key_z)
    groups += [_infected_group(result, volume, sources, z, attention, uid) for z in drawn]
    lobe_group_list, lobe_zs = lobe_groups(result, volume, sources, algorithm, uid)
    groups += lobe_group_list
    groups += trend_groups(volume, sources, options.trend, key_z, algorithm, uid)
    cxr = cxr_groups(result, options.cxr_sources, algorithm, uid)
    groups += cxr
    cxr_images = list(options.cxr_sources[:1]) if cxr else []

    report = hd.sr.MeasurementReport(
        observation_context=device_observation_context(model, options),
        procedure_reported=codes.CT_PROCEDURE,
        imaging_measurements=groups,
        # The images the report draws on; every referenced image is in the evidence (header).
        referenced_images=[sources[z] for z in sorted({key_z, *drawn, *lobe_zs})] + cxr_images,
    )
    report[0].ContentSequence.append(_qualitative_evaluations(result, volume, options, sources))

    return report_dataset(
        report,
        # The prior studies' instances go to Pertinent Other Evidence (another study).
        list(sources) + cxr_images + (list(options.trend.evidence) if options.trend is not None else []),
        series_description("report", model),
        model,
        options,
        uid,
        previous_versions=list(options.previous_reports),
    )


def report_dataset(
    report: hd.sr.MeasurementReport,
    evidence: Sequence[Dataset],
    description: str,
    model: ModelInfo,
    options: WriterOptions,
    uid: UidMaker,
    previous_versions: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """The SR instance of a report: our identity, the bundle, PRELIMINARY and unverified
    (an AI result nobody has verified yet), the private coding scheme."""
    return hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report[0],
        series_instance_uid=uid("sr-series"),
        series_number=options.sr_series_number,
        sop_instance_uid=uid("sr-instance"),
        instance_number=1,
        manufacturer=options.manufacturer,
        institution_name=options.institution_name,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=description,
        manufacturer_model_name=options.product_name,
        software_versions=[options.product_version, f"{model.name} {model.version}"],
        coding_schemes=[private_coding_scheme()],
        previous_versions=list(previous_versions) or None,
        contributing_equipment=contributing_equipment(model, options),
    )


def _infected_groups_slices(result: AnalysisResult, key_z: int) -> list[int]:
    """Slices that get a group of their own: the other explained infectious slices, under a
    pneumonia decision only (at most the chain's explained slices, so a viewer draws a
    handful of regions, not one per infectious slice; all infectious slices are referenced
    from the case group's count)."""
    if not wording.states_infected_slices(result):
        return []
    return sorted(
        z for z in overlay_slices(result, len(result.attention)) if z != key_z and z in result.infected.z_indices
    )


def _infected_group(
    result: AnalysisResult,
    volume: CTVolume,
    sources: Sequence[Dataset],
    z: int,
    attention: Mapping[int, AttentionMap],
    uid: UidMaker,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    region, region_type = _region(result, sources, z, attention)
    name = wording.infected_name(result.decision.value, plural=False)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uid(f"sr-tracking-infected-{z}"),
            identifier=f"{wording.upper_first(name)}, image {volume.slice_label(z)}",
        ),
        referenced_region=region,
        finding_type=region_type,
        finding_sites=[hd.sr.FindingSite(codes.LUNG)],
        # TID 4019 once, in the case group: the same algorithm made every group.
        measurements=[_percent(codes.INFECTED_SLICE_SCORE, float(np.nan_to_num(result.infected.scores[z])))],
    )


def private_coding_scheme() -> CodingSchemeIdentificationItem:
    """Coding Scheme Identification item that declares 99COVIDNODE."""
    return CodingSchemeIdentificationItem(
        designator=codes.PRIVATE_SCHEME,
        name=codes.PRIVATE_SCHEME_NAME,
        version=codes.PRIVATE_SCHEME_VERSION,
        responsible_organization="COVID-CT-Node project (see docs/objects.md)",
    )


def algorithm_identification(result: AnalysisResult, options: WriterOptions) -> hd.sr.AlgorithmIdentification:
    """TID 4019: the bundle is the algorithm; its sha256 and the chain's settings are parameters."""
    model = result.model
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[
            f"bundle sha256 {model.sha256}",
            f"top-K {result.case_scores.top_k}",
            f"infectious slice threshold {result.infected.threshold:g}",
            f"lung segmentation {result.lung_mask.method}",
            f"software {options.product_name} {options.product_version}",
            # Operating points without a coded item, and each domain check's scaled score,
            # so that nothing the decision rests on is lost.
            *(f"decision threshold {k} {v:g}" for k, v in wording.extra_thresholds(result.decision.thresholds).items()),
            *(f"domain check {k} {float(v):.4g}" for k, v in result.domain.components.items()),
        ],
    )


def _percent(name: Code, probability: float) -> hd.sr.Measurement:
    if not np.isfinite(probability):
        raise WriterError(f"{name.meaning} is not a number ({probability}); the chain result is broken")
    return hd.sr.Measurement(name=name, value=round(100.0 * float(probability), 2), unit=codes.PERCENT)


def _region(
    result: AnalysisResult, sources: Sequence[Dataset], z: int, attention: Mapping[int, AttentionMap]
) -> tuple[hd.sr.ImageRegion, Code]:
    """The region drawn on slice z: the largest attention region, else the lung outline,
    else the image centre (a point), with the code of what it outlines."""
    source = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=str(sources[z].SOPClassUID),
        referenced_sop_instance_uid=str(sources[z].SOPInstanceUID),
    )
    att = attention.get(z)
    candidates = []
    if att is not None:
        candidates.append((att.regions, codes.ATTENTION_REGION))
    candidates.append((result.lung_mask.mask[z], codes.LUNG))
    for mask, what in candidates:
        contour = largest_contour(mask)
        if contour is not None:
            return hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=contour, source_image=source
            ), what
    rows, cols = result.lung_mask.mask.shape[1:]
    centre = np.array([[cols / 2.0, rows / 2.0]], dtype=np.float32)
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT, graphic_data=centre, source_image=source
    ), codes.LUNG


def _case_group(
    result: AnalysisResult,
    volume: CTVolume,
    sources: Sequence[Dataset],
    z: int,
    attention: Mapping[int, AttentionMap],
    algorithm: hd.sr.AlgorithmIdentification,
    uid: UidMaker,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    region, region_type = _region(result, sources, z, attention)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uid("sr-tracking-case"),
            identifier=f"{CASE_GROUP_ID}: {DECISION_DISPLAY[result.decision.value]}, image {volume.slice_label(z)}",
        ),
        referenced_region=region,
        finding_type=region_type,
        finding_sites=[hd.sr.FindingSite(codes.LUNG)],
        algorithm_id=algorithm,
        measurements=_case_measurements(result, sources, z),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(codes.IMPRESSION, codes.DECISION[result.decision.value]),
            *severity_grade(result),
        ],
    )


def _case_measurements(result: AnalysisResult, sources: Sequence[Dataset], z: int) -> list[hd.sr.Measurement]:
    """The case group's NUM items. OHIF draws the first five beside the region, so they
    lead with what the decision rests on: the decided (or the two closest) classes'
    probabilities; out of domain, the out-of-domain score (no probabilities at all)."""
    volume_ml = hd.sr.Measurement(
        name=codes.VOLUME,
        value=round(float(result.lung_volume_ml), 1),
        unit=codes.MILLILITER,
        finding_sites=[hd.sr.FindingSite(codes.LUNG)],
    )
    if not wording.shows_probabilities(result):
        return [*_domain_measurements(result), volume_ml]
    case = result.case_scores
    # With a lesion pattern model the decision rests on the lesions: their share of the
    # lung and the types their pattern points to lead; the classifier's probabilities follow.
    shares = pattern_type_shares(result.lesion_pattern)
    lesions = _lesion_measurements(result)
    measurements = []
    if shares is not None:
        measurements = lesions[1:] + [
            _percent(codes.PATTERN_TYPE_SHARE[name], shares[name]) for name in _pattern_order(result, shares)
        ]
        lesions = lesions[:1]
    measurements += [
        _percent(codes.CLASS_PROBABILITY[name], case.probabilities[name]) for name in _display_order(result)
    ]
    measurements += [_percent(codes.TASK_SCORE[name], case.tasks[name]) for name in TASK_NAMES]
    measurements.append(volume_ml)
    measurements += lesions
    measurements += severity_measurements(result)
    measurements += _located_measurements(result, sources, z)
    measurements += _threshold_measurements(result)
    measurements += _domain_measurements(result)
    return measurements


def _located_measurements(result: AnalysisResult, sources: Sequence[Dataset], z: int) -> list[hd.sr.Measurement]:
    """The locator's slices as a count, each slice referenced by SOP Instance UID ("Source
    of Measurement" images): "Infectious slices" under a pneumonia decision, else a
    concept that says they are no finding. Not called out of domain."""
    located = sorted(set(int(v) for v in result.infected.z_indices))
    as_finding = wording.states_infected_slices(result)
    out = [
        hd.sr.Measurement(
            name=codes.INFECTED_SLICE_COUNT if as_finding else codes.LOCATOR_FLAGGED_COUNT,
            value=len(located),
            unit=codes.SLICES,
            referenced_images=[
                hd.sr.SourceImageForMeasurement(str(sources[v].SOPClassUID), str(sources[v].SOPInstanceUID))
                for v in located
            ]
            or None,
        )
    ]
    if as_finding and z in located:
        out.append(_percent(codes.INFECTED_SLICE_SCORE, float(np.nan_to_num(result.infected.scores[z]))))
    return out


def _lesion_measurements(result: AnalysisResult) -> list[hd.sr.Measurement]:
    """The lung U-Net's lesion burden (volume, share of the lung), when it made a lesion map."""
    if result.lesion is None:
        return []
    return [
        hd.sr.Measurement(
            name=codes.LESION_VOLUME,
            value=round(float(result.lesion.volume_ml), 1),
            unit=codes.MILLILITER,
            finding_sites=[hd.sr.FindingSite(codes.LUNG)],
        ),
        _percent(codes.LESION_SHARE, float(result.lesion.lung_share)),
    ]


def _threshold_measurements(result: AnalysisResult) -> list[hd.sr.Measurement]:
    """The operating points the decision used (model card): task thresholds, the margin
    and the lesion share threshold."""
    thresholds = result.decision.thresholds
    out = [
        _percent(codes.DECISION_THRESHOLD[name], float(thresholds[name])) for name in TASK_NAMES if name in thresholds
    ]
    if "margin" in thresholds:
        out.append(_percent(codes.INDETERMINATE_MARGIN, float(thresholds["margin"])))
    if "lesion_share_threshold" in thresholds:
        out.append(_percent(codes.LESION_SHARE_THRESHOLD, float(thresholds["lesion_share_threshold"])))
    return out


def _domain_measurements(result: AnalysisResult) -> list[hd.sr.Measurement]:
    """Out-of-domain score and its threshold (a ratio: above 1 the study is out of domain)."""
    score = float(result.domain.score)
    if not np.isfinite(score):
        raise WriterError(f"out-of-domain score is not a number ({score}); the chain result is broken")
    return [
        hd.sr.Measurement(name=codes.OUT_OF_DOMAIN_SCORE, value=round(score, 4), unit=codes.RATIO),
        hd.sr.Measurement(name=codes.OUT_OF_DOMAIN_THRESHOLD, value=OUT_OF_DOMAIN_THRESHOLD, unit=codes.RATIO),
    ]


def _display_order(result: AnalysisResult) -> list[str]:
    """The decided class first (OHIF shows the first NUM items on the image), then the
    others; with no decided class, the most probable first (the two that were close)."""
    decided = result.decision.value
    if decided in CLASS_NAMES:
        return [decided] + [n for n in CLASS_NAMES if n != decided]
    probs = result.case_scores.probabilities
    return sorted(CLASS_NAMES, key=lambda n: (-float(probs[n]), CLASS_NAMES.index(n)))


def _qualitative_evaluations(
    result: AnalysisResult, volume: CTVolume, options: WriterOptions, sources: Sequence[Dataset]
) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12: the decision (coded), why, the plain-text summary, the disclaimer."""
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    lossy = lossy_source(sources)
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.CodeContentItem(
                name=codes.IMPRESSION, value=codes.DECISION[result.decision.value], relationship_type=contains
            ),
            hd.sr.TextContentItem(
                name=codes.DECISION_REASON, value=decision_reason(result), relationship_type=contains
            ),
            hd.sr.TextContentItem(
                name=codes.SUMMARY,
                value=summary_text(result, volume, options, lossy, sources),
                relationship_type=contains,
            ),
            hd.sr.TextContentItem(name=codes.DISCLAIMER, value=disclaimer(result.model), relationship_type=contains),
        ]
    )
    return container


def decision_reason(result: AnalysisResult) -> str:
    """The chain's reason; a TEXT item cannot be empty, so a plain one when it gave none."""
    return result.decision.reason.strip() or f"{wording.decision_line(result)} (no reason given by the chain)"


def slice_ranges(labels: Sequence[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9' (how a reader names runs of images)."""
    runs: list[tuple[int, int]] = []
    for v in sorted({int(v) for v in labels}):
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def summary_text(
    result: AnalysisResult,
    volume: CTVolume,
    options: WriterOptions,
    lossy: str | None = None,
    sources: Sequence[Dataset] | None = None,
) -> str:
    """What the report says, in the words a radiologist reads; it leads with the decision.
    ``lossy``: how the source images were lossy compressed (common.lossy_source), if they were."""
    method = LUNG_METHOD_DISPLAY.get(result.lung_mask.method, result.lung_mask.method)
    seg_text = (
        f"Lung segmentation in series {options.seg_series_number}."
        if "seg" in options.enabled and result.lung_mask.mask.any()
        else ""
    )
    lobes = result.lung_mask.lobes
    if "lobe_seg" in options.enabled and lobes is not None and lobes.any() and result.decision.value != "out_of_domain":
        seg_text = f"{seg_text} Lobe segmentation in series {options.lobe_seg_series_number}.".strip()
    incomplete = completeness_note(result, sources) if sources is not None else None
    tail = [
        f"Warning: the series may be incomplete ({incomplete}); the lung volume and the result may be wrong."
        if incomplete
        else "",
        f"This report replaces {len(options.previous_reports)} earlier report(s) of this series, made before "
        f"all of its images had arrived."
        if options.previous_reports
        else "",
        f"The source images were lossy compressed ({lossy}): fine texture such as ground glass may be altered."
        if lossy
        else "",
        f"Lung volume {result.lung_volume_ml:.0f} ml ({method} lung segmentation).",
        seg_text,
        f"Made by {model_text(result.model, options)}.",
        disclaimer(result.model),
    ]
    if not wording.shows_probabilities(result):
        head = [
            f"{wording.decision_line(result)}.",
            wording.out_of_domain_text(result),
            _reason_sentence(result),
            cxr_text(result),
            trend_text(options.trend),
        ]
        return _join(head + tail)
    case = result.case_scores
    probs = ", ".join(f"{CLASS_DISPLAY[n]} {100 * case.probabilities[n]:.1f}%" for n in _display_order(result))
    tasks = "; ".join(
        f"{codes.TASK_SCORE[n].meaning.replace(' score', '')} {100 * case.tasks[n]:.1f}%" for n in TASK_NAMES
    )
    labels = [volume.slice_label(z) for z in result.infected.z_indices]
    overlays = overlay_slices(result, options.max_overlays)
    overlay_text = (
        f"Grad-CAM overlays of images {slice_ranges([volume.slice_label(z) for z in overlays])} "
        f"in series {options.sc_series_number}."
        if overlays and "sc" in options.enabled
        else ""
    )
    operating = wording.threshold_text(result.decision.thresholds)
    head = [
        f"{wording.decision_line(result)}.",
        wording.indeterminate_text(result) if result.decision.value == "indeterminate" else "",
        _reason_sentence(result),
        f"Class probabilities (slice classifier): {probs}.",
        _pattern_sentence(result),
        f"Task-specific fused scores: {tasks}.",
        f"Operating points: {operating}." if operating else "",
        f"Out-of-domain score {result.domain.score:.2f} (threshold {OUT_OF_DOMAIN_THRESHOLD:.2f}: "
        f"{'in domain' if result.domain.in_domain else 'out of domain'}).",
        wording.located_text(result, labels, slice_ranges(labels)),
        overlay_text,
        severity_text(result),
        cxr_text(result),
        trend_text(options.trend),
    ]
    return _join(head + tail)


def _pattern_order(result: AnalysisResult, shares: Mapping[str, float]) -> list[str]:
    """The decided type first, then the others by share (most probable first)."""
    ranked = sorted(PNEUMONIA_CLASSES, key=lambda n: (-float(shares[n]), PNEUMONIA_CLASSES.index(n)))
    decided = result.decision.value
    return [decided] + [n for n in ranked if n != decided] if decided in PNEUMONIA_CLASSES else ranked


def _pattern_sentence(result: AnalysisResult) -> str:
    """The lesion pattern model's pneumonia types, when the bundle has one."""
    shares = pattern_type_shares(result.lesion_pattern)
    if shares is None:
        return ""
    text = ", ".join(f"{CLASS_DISPLAY[k]} {100 * shares[k]:.1f}%" for k in _pattern_order(result, shares))
    return f"Pneumonia type by the lesion pattern (where the lesions lie and how dense they are): {text}."


def _reason_sentence(result: AnalysisResult) -> str:
    reason = result.decision.reason.strip()
    return f"Decision reason: {reason.rstrip('.')}." if reason else ""


def _join(parts: Sequence[str]) -> str:
    """Sentences joined by spaces; a part that ends a line (a table) is not followed by one."""
    text = ""
    for part in (p for p in parts if p):
        text += part if not text or text.endswith("\n") else f" {part}"
    return text.rstrip("\n")


# --- Reading a report back (tests, round trips, the node's own checks) ---------------


@dataclass(frozen=True)
class SRFindings:
    """What a report says, read back with highdicom (probabilities and thresholds as 0..1).

    ``decision`` is the Impression (one of pipeline.types.DECISIONS). ``probabilities``
    and ``tasks`` are empty for an out-of-domain report (it reports none).
    ``infected_sop_uids``: the infectious slices the report states (pneumonia decisions);
    ``flagged_sop_uids``: slices the locator flagged that the report says are no finding.
    """

    decision: str
    decision_reason: str
    thresholds: Mapping[str, float]
    out_of_domain_score: float
    out_of_domain_threshold: float
    probabilities: Mapping[str, float]
    tasks: Mapping[str, float]
    lung_volume_ml: float
    infected_count: int
    infected_sop_uids: tuple[str, ...]
    flagged_sop_uids: tuple[str, ...]
    key_sop_uid: str
    algorithm_name: str
    algorithm_version: str
    bundle_sha256: str
    summary: str
    disclaimer: str
    #: The lesion pattern's share of each pneumonia type (0..1); empty without a pattern model.
    pattern_shares: Mapping[str, float] = field(default_factory=dict)
    #: The CXR branch (writers.sr_cxr): the radiograph model's probabilities, the fused ones
    #: (empty when not fused), the fused decision (None: not fused) and the image it read.
    cxr_probabilities: Mapping[str, float] = field(default_factory=dict)
    fused_probabilities: Mapping[str, float] = field(default_factory=dict)
    fused_decision: str | None = None
    cxr_sop_uid: str | None = None


def _code_matches(concept, code) -> bool:
    return concept.value == code.value and concept.scheme_designator == code.scheme_designator


def _optional_num(group, code) -> float | None:
    """The one value of a measurement, or None without one (WriterError for two)."""
    found = group.get_measurements(name=code)
    if len(found) > 1:
        raise WriterError(f"SR group '{group.tracking_identifier}' has {len(found)} '{code.meaning}' values")
    return float(found[0].value) if found else None


def _num(group, code) -> float:
    """The one value of a measurement the report must have (WriterError otherwise)."""
    value = _optional_num(group, code)
    if value is None:
        raise WriterError(f"SR group '{group.tracking_identifier}' has 0 '{code.meaning}' values")
    return value


def _impression(items, where: str) -> str:
    """The decision an Impression code stands for; WriterError unless exactly one, known."""
    found = [item for item in items if _code_matches(item.name, codes.IMPRESSION)]
    if len(found) != 1:
        raise WriterError(f"SR {where} has {len(found)} Impressions (the decision), expected 1")
    value = found[0].value
    decision = codes.decision_of_code(value.value, value.scheme_designator)
    if decision is None:
        raise WriterError(f"SR decision {value.meaning!r} ({where}) is not one of our decisions")
    return decision


def _located(case, decision: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(infectious, flagged) slices by SOP Instance UID, checked against the decision: only
    a pneumonia decision may state infectious slices; out of domain, no locator count."""
    uids: dict[str, tuple[str, ...]] = {}
    for code in (codes.INFECTED_SLICE_COUNT, codes.LOCATOR_FLAGGED_COUNT):
        found = case.get_measurements(name=code)
        if len(found) > 1:
            raise WriterError(f"SR case group has {len(found)} '{code.meaning}' counts")
        if found:
            refs = tuple(str(image.referenced_sop_instance_uid) for image in found[0].referenced_images)
            if len(refs) != int(found[0].value):
                raise WriterError(f"SR counts {found[0].value} '{code.meaning}' but references {len(refs)}")
            uids[code.value] = refs
    expected = (
        {codes.INFECTED_SLICE_COUNT.value}
        if decision in PNEUMONIA_CLASSES
        else set()
        if decision == "out_of_domain"
        else {codes.LOCATOR_FLAGGED_COUNT.value}
    )
    if set(uids) != expected:
        raise WriterError(
            f"SR under decision {decision!r} has slice counts {sorted(uids)}, expected "
            f"{sorted(expected)}: infectious slices are stated under a pneumonia decision only"
        )
    return uids.get(codes.INFECTED_SLICE_COUNT.value, ()), uids.get(codes.LOCATOR_FLAGGED_COUNT.value, ())


def _thresholds(case) -> dict[str, float]:
    out = {name: _optional_num(case, code) for name, code in codes.DECISION_THRESHOLD.items()}
    out["margin"] = _optional_num(case, codes.INDETERMINATE_MARGIN)
    return {k: v / 100.0 for k, v in out.items() if v is not None}


def _probabilities(case, decision: str) -> tuple[dict[str, float], dict[str, float]]:
    """Class probabilities and task scores (0..1); none, and none allowed, out of domain."""
    if decision == "out_of_domain":
        claimed = [
            c.meaning
            for c in (*codes.CLASS_PROBABILITY.values(), *codes.TASK_SCORE.values(), *codes.PATTERN_TYPE_SHARE.values())
            if case.get_measurements(name=c)
        ]
        if claimed:
            raise WriterError(f"SR under an out-of-domain decision reports {claimed}: it must claim no class")
        return {}, {}
    return (
        {n: _num(case, codes.CLASS_PROBABILITY[n]) / 100.0 for n in CLASS_NAMES},
        {n: _num(case, codes.TASK_SCORE[n]) / 100.0 for n in TASK_NAMES},
    )


def read_findings(dataset: Dataset) -> SRFindings:
    """Parse a report made by build_sr with highdicom. Raises WriterError naming what is
    missing, or what contradicts the decision (a class claim out of domain, infectious
    slices without a pneumonia decision, two different Impressions)."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    report = sr.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise WriterError("SR is not a TID 1500 Measurement Report")
    groups = report.get_planar_roi_measurement_groups()
    case_groups = [g for g in groups if (g.tracking_identifier or "").startswith(CASE_GROUP_ID)]
    if len(case_groups) != 1:
        raise WriterError(f"SR has {len(case_groups)} '{CASE_GROUP_ID}' measurement groups, expected 1")
    case = case_groups[0]
    decision = _impression(case.get_qualitative_evaluations(name=codes.IMPRESSION), "case group")
    qual = [item for item in report[0].ContentSequence if _code_matches(item.name, codes.QUALITATIVE_EVALUATIONS)]
    if not qual:
        raise WriterError("SR has no Qualitative Evaluations container (decision, summary, disclaimer)")
    stated = _impression(qual[0].ContentSequence, "Qualitative Evaluations")
    if stated != decision:
        raise WriterError(f"SR states decision {stated!r} at its root but {decision!r} in the case group")
    infected, flagged = _located(case, decision)
    probabilities, tasks = _probabilities(case, decision)

    alg_name = _first_text(case, dcm_codes.DCM.AlgorithmName, recursive=True)
    alg_version = _first_text(case, dcm_codes.DCM.AlgorithmVersion, recursive=True)
    params = [str(item.value) for item in _walk(case) if _code_matches(item.name, dcm_codes.DCM.AlgorithmParameters)]
    sha = next((p.split()[-1] for p in params if p.startswith("bundle sha256 ")), "")
    return SRFindings(
        decision=decision,
        decision_reason=_first_text(qual[0], codes.DECISION_REASON),
        thresholds=_thresholds(case),
        out_of_domain_score=_num(case, codes.OUT_OF_DOMAIN_SCORE),
        out_of_domain_threshold=_num(case, codes.OUT_OF_DOMAIN_THRESHOLD),
        probabilities=probabilities,
        tasks=tasks,
        lung_volume_ml=_num(case, codes.VOLUME),
        infected_count=len(infected),
        infected_sop_uids=infected,
        flagged_sop_uids=flagged,
        key_sop_uid=_roi_sop_uid(case),
        algorithm_name=alg_name,
        algorithm_version=alg_version,
        bundle_sha256=sha,
        summary=_first_text(qual[0], codes.SUMMARY),
        disclaimer=_first_text(qual[0], codes.DISCLAIMER),
        pattern_shares={
            n: v / 100.0 for n, code in codes.PATTERN_TYPE_SHARE.items() if (v := _optional_num(case, code)) is not None
        },
        **_cxr_findings(groups),
    )


def _cxr_findings(groups) -> dict:
    """SRFindings' CXR fields from the report's CXR group (writers.sr_cxr), if it has one."""
    found = [g for g in groups if (g.tracking_identifier or "").startswith(CXR_GROUP_ID)]
    if not found:
        return {}
    if len(found) > 1:
        raise WriterError(f"SR has {len(found)} '{CXR_GROUP_ID}' groups, expected at most 1")
    group = found[0]
    decisions = group.get_qualitative_evaluations(name=codes.CXR_FUSED_DECISION)
    fused_decision = None
    if decisions:
        value = decisions[0].value
        fused_decision = codes.decision_of_code(value.value, value.scheme_designator)
    return {
        "cxr_probabilities": {
            n: v / 100.0 for n, code in codes.CXR_PROBABILITY.items() if (v := _optional_num(group, code)) is not None
        },
        "fused_probabilities": {
            n: v / 100.0 for n, code in codes.FUSED_PROBABILITY.items() if (v := _optional_num(group, code)) is not None
        },
        "fused_decision": fused_decision,
        "cxr_sop_uid": _roi_sop_uid(group),
    }


def _roi_sop_uid(group) -> str:
    """SOP Instance UID of the image a group's region is drawn on."""
    image_item = group.roi.ContentSequence[0]  # the SCOORD's SELECTED FROM image
    return str(image_item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)


def _walk(items):
    for item in items:
        yield item
        yield from _walk(getattr(item, "ContentSequence", []))


def _first_text(container, code, recursive: bool = False) -> str:
    items = _walk(container.ContentSequence) if not recursive else _walk(container)
    for item in items:
        if _code_matches(item.name, code):
            return str(item.value)
    return ""


def device_observation_context(model: ModelInfo, options: WriterOptions) -> hd.sr.ObservationContext:
    """The observer of every report we write: this product and its bundle, as a device."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        # One UID per product version and bundle: the same "device" across reports.
        uid=device_uid(model, options),
        name=f"{options.product_name} {options.product_version}",
        manufacturer_name=options.manufacturer,
        model_name=f"{model.name} {model.version}",
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=dcm_codes.cid270.Device, observer_identifying_attributes=device
        )
    )
