"""The report: Comprehensive 3D SR holding a TID 1500 Measurement Report.

Layout (docs/objects.md shows it as ``dsrdump`` prints it)::

    Imaging Measurement Report (TID 1500)
      language, device observer (product, bundle name/version), procedure "CT Chest",
      image library (the source slices the report draws on; the whole series is the
      evidence in the header)
      Imaging Measurements
        Measurement Group "AI case result" (TID 1410) on the key slice:
            closed POLYLINE (attention region, else lung outline), finding site Lung,
            algorithm identification (TID 4019: bundle name, version, sha256, parameters),
            NUM: probability of each class, fused score of each task (%),
                 lung volume (ml), number of COVID-19 infectious slices (each slice
                 referenced by SOP Instance UID as its source image), the key slice's
                 infectious slice score (%)
            Impression = diagnosis (SNOMED CT)
        Measurement Group per other explained COVID-19 infectious slice (TID 1410):
            closed POLYLINE on that slice, NUM infectious slice score (%)
      Qualitative Evaluations
        Impression = diagnosis; TEXT Summary (plain words); TEXT Disclaimer

Why image-anchored groups only: OHIF v3 reads a TID 1500 report only through
measurement groups with image coordinates and fails on a group without them (TID 1501),
so the case-level numbers ride on a region of the key slice, where OHIF draws them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from pipeline.types import CLASS_NAMES, TASK_NAMES, AnalysisResult, AttentionMap, CTVolume

from . import codes
from .common import (
    CLASS_DISPLAY,
    UidMaker,
    disclaimer,
    largest_contour,
    model_text,
    overlay_slices,
    primary_slice,
    series_description,
)
from .options import WriterError, WriterOptions

CASE_GROUP_ID = "AI case result"
LUNG_METHOD_DISPLAY = {"unet": "U-Net", "classical": "HU-threshold"}
INFECTED_GROUP_ID = "COVID-19 infectious slice"


def build_sr(result: AnalysisResult, volume: CTVolume, sources: Sequence[Dataset],
             options: WriterOptions, uid: UidMaker) -> Dataset:
    """The TID 1500 report as a Comprehensive 3D SR dataset (``uid``: name -> UID)."""
    model = result.model
    algorithm = algorithm_identification(result, options)
    attention = {a.z_index: a for a in result.attention}

    key_z = primary_slice(result)
    scores = np.nan_to_num(result.infected.scores, nan=0.0)
    groups = [_case_group(result, volume, sources, key_z, attention, algorithm, uid)]
    # One more group per other explained infectious slice (at most the chain's explained
    # slices, so a viewer draws a handful of regions, not one per infectious slice; all
    # infectious slices are referenced from the case group's count).
    drawn = [z for z in overlay_slices(result, len(result.attention)) if z != key_z
             and z in result.infected.z_indices]
    for z in sorted(drawn):
        region, region_type = _region(result, sources, z, attention)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=uid(f"sr-tracking-infected-{z}"),
                identifier=f"{INFECTED_GROUP_ID}, image {volume.slice_label(z)}"),
            referenced_region=region,
            finding_type=region_type,
            finding_sites=[hd.sr.FindingSite(codes.LUNG)],
            # TID 4019 once, in the case group: the same algorithm made every group.
            measurements=[_percent(codes.INFECTED_SLICE_SCORE, float(scores[z]))],
        ))

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        # One UID per product version and bundle: the same "device" across reports.
        uid=str(generate_uid(entropy_srcs=[options.product_name, options.product_version, model.sha256])),
        name=f"{options.product_name} {options.product_version}",
        manufacturer_name=options.manufacturer,
        model_name=f"{model.name} {model.version}",
    )
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=dcm_codes.cid270.Device,
            observer_identifying_attributes=device,
        ))
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=codes.CT_CHEST,
        imaging_measurements=groups,
        # The images the report draws on; every referenced image is in the evidence (header).
        referenced_images=[sources[z] for z in sorted({key_z, *drawn})],
    )
    report[0].ContentSequence.append(_qualitative_evaluations(result, volume, options))

    sr = hd.sr.Comprehensive3DSR(
        evidence=list(sources),
        content=report[0],
        series_instance_uid=uid("sr-series"),
        series_number=options.sr_series_number,
        sop_instance_uid=uid("sr-instance"),
        instance_number=1,
        manufacturer=options.manufacturer,
        institution_name=options.institution_name,
        is_complete=True,
        is_final=False,  # an AI result nobody has verified yet: PRELIMINARY
        is_verified=False,
        series_description=series_description("report", model),
        manufacturer_model_name=options.product_name,
        software_versions=[options.product_version, f"{model.name} {model.version}"],
        coding_schemes=[private_coding_scheme()],
    )
    return sr


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
        ],
    )


def _percent(name: Code, probability: float) -> hd.sr.Measurement:
    if not np.isfinite(probability):
        raise WriterError(f"{name.meaning} is not a number ({probability}); the chain result is broken")
    return hd.sr.Measurement(name=name, value=round(100.0 * float(probability), 2), unit=codes.PERCENT)


def _region(result: AnalysisResult, sources: Sequence[Dataset], z: int,
            attention: Mapping[int, AttentionMap]) -> tuple[hd.sr.ImageRegion, Code]:
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
            return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=contour,
                                     source_image=source), what
    rows, cols = result.lung_mask.mask.shape[1:]
    centre = np.array([[cols / 2.0, rows / 2.0]], dtype=np.float32)
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POINT, graphic_data=centre,
                             source_image=source), codes.LUNG


def _case_group(result: AnalysisResult, volume: CTVolume, sources: Sequence[Dataset], z: int,
                attention: Mapping[int, AttentionMap], algorithm: hd.sr.AlgorithmIdentification,
                uid: UidMaker) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    case = result.case_scores
    measurements = [_percent(codes.CLASS_PROBABILITY[name], case.probabilities[name])
                    for name in _display_order(case.label)]
    measurements += [_percent(codes.TASK_SCORE[name], case.tasks[name]) for name in TASK_NAMES]
    measurements.append(hd.sr.Measurement(
        name=codes.VOLUME, value=round(float(result.lung_volume_ml), 1), unit=codes.MILLILITER,
        finding_sites=[hd.sr.FindingSite(codes.LUNG)]))
    infected = sorted(set(int(z) for z in result.infected.z_indices))
    measurements.append(hd.sr.Measurement(
        name=codes.INFECTED_SLICE_COUNT, value=len(infected), unit=codes.SLICES,
        # Each infectious slice by SOP Instance UID ("Source of Measurement" images).
        referenced_images=[hd.sr.SourceImageForMeasurement(str(sources[z].SOPClassUID),
                                                           str(sources[z].SOPInstanceUID)) for z in infected]
        or None))
    if z in infected:
        measurements.append(_percent(codes.INFECTED_SLICE_SCORE, float(np.nan_to_num(result.infected.scores[z]))))
    region, region_type = _region(result, sources, z, attention)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uid("sr-tracking-case"),
            identifier=f"{CASE_GROUP_ID}: {CLASS_DISPLAY[case.label]}, image {volume.slice_label(z)}"),
        referenced_region=region,
        finding_type=region_type,
        finding_sites=[hd.sr.FindingSite(codes.LUNG)],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.IMPRESSION, codes.DIAGNOSIS[case.label])],
    )


def _display_order(label: str) -> list[str]:
    """The decided class first (OHIF shows the first NUM items on the image), then the others."""
    return [label] + [n for n in CLASS_NAMES if n != label]


def _qualitative_evaluations(result: AnalysisResult, volume: CTVolume,
                             options: WriterOptions) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12: case-level coded finding and the plain-text summary."""
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.CodeContentItem(name=codes.IMPRESSION, value=codes.DIAGNOSIS[result.case_scores.label],
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS),
        hd.sr.TextContentItem(name=codes.SUMMARY, value=summary_text(result, volume, options),
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS),
        hd.sr.TextContentItem(name=codes.DISCLAIMER, value=disclaimer(result.model),
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS),
    ])
    return container


def slice_ranges(labels: Sequence[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9' (how a reader names runs of images)."""
    labels = sorted(set(int(v) for v in labels))
    parts: list[str] = []
    start = prev = None
    for v in labels:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = v
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ", ".join(parts)


def summary_text(result: AnalysisResult, volume: CTVolume, options: WriterOptions) -> str:
    """What the report says, in the words a radiologist reads."""
    case = result.case_scores
    probs = ", ".join(f"{CLASS_DISPLAY[n]} {100 * case.probabilities[n]:.1f}%" for n in _display_order(case.label))
    tasks = "; ".join(f"{codes.TASK_SCORE[n].meaning.replace(' score', '')} {100 * case.tasks[n]:.1f}%"
                      for n in TASK_NAMES)
    infected = [volume.slice_label(z) for z in result.infected.z_indices]
    if infected:
        infected_text = f"COVID-19 infectious slices: {len(infected)} (images {slice_ranges(infected)})."
    else:
        infected_text = "COVID-19 infectious slices: none found."
    method = LUNG_METHOD_DISPLAY.get(result.lung_mask.method, result.lung_mask.method)
    overlays = overlay_slices(result, options.max_overlays)
    overlay_text = (f"Grad-CAM overlays of images {slice_ranges([volume.slice_label(z) for z in overlays])} "
                    f"in series {options.sc_series_number}." if overlays and "sc" in options.enabled else "")
    return " ".join(part for part in [
        f"AI result: {CLASS_DISPLAY[case.label]} (probability {100 * case.probabilities[case.label]:.1f}%).",
        f"Class probabilities: {probs}.",
        f"Task-specific fused scores: {tasks}.",
        infected_text,
        f"Lung volume {result.lung_volume_ml:.0f} ml ({method} lung segmentation).",
        overlay_text,
        f"Made by {model_text(result.model, options)}.",
        disclaimer(result.model),
    ] if part)


# --- Reading a report back (tests, round trips, the node's own checks) ---------------

@dataclass(frozen=True)
class SRFindings:
    """What a report says, read back with highdicom (probabilities as 0..1)."""

    label: str
    probabilities: Mapping[str, float]
    tasks: Mapping[str, float]
    lung_volume_ml: float
    infected_count: int
    infected_sop_uids: tuple[str, ...]
    key_sop_uid: str
    algorithm_name: str
    algorithm_version: str
    bundle_sha256: str
    summary: str
    disclaimer: str


def _code_matches(concept, code) -> bool:
    return concept.value == code.value and concept.scheme_designator == code.scheme_designator


def read_findings(dataset: Dataset) -> SRFindings:
    """Parse a report made by build_sr with highdicom. Raises WriterError naming what is missing."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    report = sr.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise WriterError("SR is not a TID 1500 Measurement Report")
    groups = report.get_planar_roi_measurement_groups()
    case_groups = [g for g in groups if (g.tracking_identifier or "").startswith(CASE_GROUP_ID)]
    if len(case_groups) != 1:
        raise WriterError(f"SR has {len(case_groups)} '{CASE_GROUP_ID}' measurement groups, expected 1")
    case = case_groups[0]

    def num(group, code) -> float:
        found = group.get_measurements(name=code)
        if len(found) != 1:
            raise WriterError(f"SR group '{group.tracking_identifier}' has {len(found)} '{code.meaning}' values")
        return float(found[0].value)

    evaluations = case.get_qualitative_evaluations(name=codes.IMPRESSION)
    if len(evaluations) != 1:
        raise WriterError("SR case group has no Impression (the diagnosis)")
    label = codes.class_of_diagnosis(evaluations[0].value.value, evaluations[0].value.scheme_designator)
    if label is None:
        raise WriterError(f"SR diagnosis {evaluations[0].value.meaning!r} is not one of our classes")

    count = case.get_measurements(name=codes.INFECTED_SLICE_COUNT)
    if len(count) != 1:
        raise WriterError("SR case group has no count of COVID-19 infectious slices")
    infected_uids = [str(image.referenced_sop_instance_uid) for image in count[0].referenced_images]
    if len(infected_uids) != int(count[0].value):
        raise WriterError(f"SR counts {count[0].value} infectious slices but references {len(infected_uids)}")

    alg_name = _first_text(case, dcm_codes.DCM.AlgorithmName, recursive=True)
    alg_version = _first_text(case, dcm_codes.DCM.AlgorithmVersion, recursive=True)
    params = [str(item.value) for item in _walk(case) if _code_matches(item.name, dcm_codes.DCM.AlgorithmParameters)]
    sha = next((p.split()[-1] for p in params if p.startswith("bundle sha256 ")), "")
    qual = [item for item in report[0].ContentSequence if _code_matches(item.name, codes.QUALITATIVE_EVALUATIONS)]
    if not qual:
        raise WriterError("SR has no Qualitative Evaluations container (summary, disclaimer)")
    return SRFindings(
        label=label,
        probabilities={n: num(case, codes.CLASS_PROBABILITY[n]) / 100.0 for n in CLASS_NAMES},
        tasks={n: num(case, codes.TASK_SCORE[n]) / 100.0 for n in TASK_NAMES},
        lung_volume_ml=num(case, codes.VOLUME),
        infected_count=int(num(case, codes.INFECTED_SLICE_COUNT)),
        infected_sop_uids=tuple(infected_uids),
        key_sop_uid=_roi_sop_uid(case),
        algorithm_name=alg_name,
        algorithm_version=alg_version,
        bundle_sha256=sha,
        summary=_first_text(qual[0], codes.SUMMARY),
        disclaimer=_first_text(qual[0], codes.DISCLAIMER),
    )


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
