"""The SR's multi-stage content: the trend over the patient's study dates and the fused
decision (pipeline.stages), with references to the prior studies.

``Trend`` is what the worker hands the writers (dicomnode.multistage.trend_of). With at
least one prior analysed, the report gains, after the case group:

* one measurement group per study date, oldest first, "AI trend <date> (prior|this
  study): <decision>": TID 1502 time point context (Time Point = the date, Subject Time
  Point Identifier = the study's Study Instance UID; no Time Point Order, a NUM that OHIF
  would draw as the first label), NUM each class
  probability (the stage's decision first) and the lesions' share of the lung (the
  severity's involvement), CODE "AI decision of this study date";
* one group "AI multi-stage result: <fused decision>": NUM the fused class probabilities
  and pneumonia score, CODE "AI multi-stage decision" (never a second Impression: the
  report's Impression stays the new study's own decision);
* the prior studies' analysed instances in the header's Pertinent Other Evidence;
* a paragraph and a table in the plain-text summary.

OHIF reads only image-anchored groups (docs/objects.md), so each group lies on the key
slice of the new study, on a point of its own down the left edge of the image (OHIF
writes a group's labels beside its region: on one shared region they overlapped); its
first NUM items are what OHIF labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from pipeline.stages import MultiStage, Stage, multi_stage_summary
from pipeline.types import CLASS_NAMES, CTVolume

from . import codes
from .common import CLASS_DISPLAY, UidMaker
from .wording import DECISION_DISPLAY

TREND_GROUP_ID = "AI trend"
MULTI_STAGE_GROUP_ID = "AI multi-stage result"
#: Where the trend groups' points lie on the key slice (fractions of the image): the
#: margin from the left and top edge, and the step down between groups (room for the five
#: labels OHIF writes beside each).
ANCHOR_MARGIN, ANCHOR_STEP = 0.04, 0.15
#: Column heads of the summary's trend table.
SHORT = {"non_pneumonia": "no pn.", "cap": "CAP", "influenza": "flu", "covid19": "COVID"}
RULE_TEXT = {
    "mean": "the mean of the dates' scores",
    "max": "the highest pneumonia evidence of any date",
    "latest": "the newest study alone (nothing fused)",
}


@dataclass(frozen=True)
class Trend:
    """The new study's priors as the report states them: ``stages`` (None when no prior
    was analysed), the prior instances' headers (``evidence``), the warnings (``notes``)
    and the look-back window (None: not a PACS query, e.g. ``analyze --prior``)."""

    stages: MultiStage | None
    evidence: tuple[Any, ...] = ()
    notes: tuple[str, ...] = ()
    lookback_days: int | None = None

    @property
    def summary(self) -> dict:
        """The summary's ``multi_stage`` entry."""
        entry: dict[str, Any] = {} if self.lookback_days is None else {"lookback_days": self.lookback_days}
        entry["warnings"] = list(self.notes)
        if self.stages is None:
            entry.update(stages=[], decision=None)
        else:
            entry.update(multi_stage_summary(self.stages))
        return entry


def _date(stage: Stage) -> str:
    return "date unknown" if stage.study_date is None else stage.study_date.isoformat()


def _anchor(sources: Sequence[Dataset], z: int, slot: int, slots: int) -> hd.sr.ImageRegion:
    """A point near the left edge of slice ``z``, one row of labels per ``slot``: OHIF
    writes a group's labels beside its region, so groups on one region would print their
    labels over each other (seen in OHIF 3.13.2); oldest date at the top, the fused result
    last."""
    source = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=str(sources[z].SOPClassUID),
        referenced_sop_instance_uid=str(sources[z].SOPInstanceUID),
    )
    rows, cols = int(sources[z].Rows), int(sources[z].Columns)
    step = min(ANCHOR_STEP, (1.0 - 2 * ANCHOR_MARGIN) / max(1, slots - 1))
    point = np.array([[ANCHOR_MARGIN * cols, (ANCHOR_MARGIN + slot * step) * rows]], dtype=np.float32)
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POINT, graphic_data=point, source_image=source)


def _probabilities(probabilities: dict, decision: str) -> list[hd.sr.Measurement]:
    order = [decision] if decision in CLASS_NAMES else []
    order += sorted((n for n in CLASS_NAMES if n not in order), key=lambda n: -float(probabilities[n]))
    return [
        hd.sr.Measurement(
            name=codes.CLASS_PROBABILITY[n], value=round(100.0 * float(probabilities[n]), 2), unit=codes.PERCENT
        )
        for n in order
    ]


def _stage_measurements(stage: Stage) -> list[hd.sr.Measurement]:
    out = []
    if stage.involvement_percent is not None:
        out.append(
            hd.sr.Measurement(
                name=codes.LESION_SHARE,
                value=round(float(stage.involvement_percent), 2),
                unit=codes.PERCENT,
                finding_sites=[hd.sr.FindingSite(codes.LUNG)],
            )
        )
    if stage.in_domain:
        out = _probabilities(dict(stage.probabilities), stage.decision) + out
    return out


def trend_groups(
    volume: CTVolume,
    sources: Sequence[Dataset],
    trend: Trend | None,
    z: int,
    algorithm: hd.sr.AlgorithmIdentification,
    uid: UidMaker,
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """One group per study date and the fused group, on slice ``z``; none without priors."""
    if trend is None or trend.stages is None:
        return []
    ms, image = trend.stages, volume.slice_label(z)
    groups = []
    for slot, stage in enumerate(ms.stages):
        which = "this study" if stage.current else "prior"
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uid(f"sr-tracking-trend-{stage.study_uid}"),
                    identifier=f"{TREND_GROUP_ID} {_date(stage)} ({which}): "
                    f"{DECISION_DISPLAY[stage.decision]}, image {image}",
                ),
                referenced_region=_anchor(sources, z, slot, len(ms.stages) + 1),
                # No Time Point Order: OHIF would draw it (a NUM) as the region's first label.
                time_point_context=hd.sr.TimePointContext(
                    time_point=_date(stage), subject_time_point_identifier=stage.study_uid
                ),
                finding_type=codes.LUNG,
                finding_sites=[hd.sr.FindingSite(codes.LUNG)],
                algorithm_id=algorithm,
                measurements=_stage_measurements(stage),
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(codes.STAGE_DECISION, codes.DECISION[stage.decision])
                ],
            )
        )
    groups.append(_fused_group(sources, ms, z, image, algorithm, uid))
    return groups


def _fused_group(
    sources: Sequence[Dataset],
    ms: MultiStage,
    z: int,
    image: int,
    algorithm: hd.sr.AlgorithmIdentification,
    uid: UidMaker,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    measurements = _probabilities(dict(ms.probabilities), ms.decision) if ms.probabilities else []
    if "pneumonia_vs_non_pneumonia" in ms.tasks:
        p = float(ms.tasks["pneumonia_vs_non_pneumonia"])
        name = codes.TASK_SCORE["pneumonia_vs_non_pneumonia"]
        measurements.append(hd.sr.Measurement(name=name, value=round(100.0 * p, 2), unit=codes.PERCENT))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uid("sr-tracking-multi-stage"),
            identifier=f"{MULTI_STAGE_GROUP_ID}: {DECISION_DISPLAY[ms.decision]} "
            f"({len(ms.stages)} study dates), image {image}",
        ),
        referenced_region=_anchor(sources, z, len(ms.stages), len(ms.stages) + 1),
        finding_type=codes.LUNG,
        finding_sites=[hd.sr.FindingSite(codes.LUNG)],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.MULTI_STAGE_DECISION, codes.DECISION[ms.decision])],
    )


def _row(stage: Stage) -> str:
    which = "this study" if stage.current else "prior"
    probs = (
        "  ".join(f"{100 * float(stage.probabilities[n]):5.1f}%" for n in CLASS_NAMES)
        if stage.in_domain
        else "   (no probabilities: out of domain)  "
    )
    inv = "   n/a" if stage.involvement_percent is None else f"{stage.involvement_percent:5.1f}%"
    return f"  {_date(stage):<12} {which:<11} {DECISION_DISPLAY[stage.decision]:<28} {probs}  {inv}"


def trend_text(trend: Trend | None) -> str:
    """The summary's multi-stage paragraph and trend table; empty without [priors]."""
    if trend is None:
        return ""
    notes = " ".join(f"Prior studies: {n.rstrip('.')}." for n in trend.notes)
    if trend.stages is None:
        found = f"No analysed prior study of the patient in the last {trend.lookback_days} days."
        return f"{found} {notes}".strip()
    ms = trend.stages
    heads = "  ".join(f"{SHORT[n]:>6}" for n in CLASS_NAMES)
    rows = "\n".join(_row(s) for s in ms.stages)
    return (
        f"Multi-stage: AI decision over {len(ms.stages)} study dates: {DECISION_DISPLAY[ms.decision]} "
        f"(rule: {RULE_TEXT.get(ms.rule, ms.rule)}). Why: {ms.reason}{(' ' + notes) if notes else ''}\n"
        f"Trend by study date (class probabilities: {', '.join(CLASS_DISPLAY[n] for n in CLASS_NAMES)}; "
        f"lesions' share of the lungs):\n"
        f"  {'date':<12} {'study':<11} {'AI decision':<28} {heads}  lungs\n{rows}\n"
    )
