"""The SR's CXR content (pipeline.cxr): the localizer read as a chest x-ray, and its fusion.

With ``result.cxr`` and the localizer's dataset (``WriterOptions.cxr_sources``), the
report gains one measurement group, "AI CT and radiograph result: <fused decision or
'not fused'>, localizer image <n>", drawn on the localizer itself (a closed POLYLINE
round the central part of the film, so that it references the image it read and a viewer
opens it there):

* NUM the fused probability of each class both models know, the fused decision's class
  first (only when fused: pipeline.cxr.fuse), then the radiograph model's own
  probability of each of its classes (its most probable first);
* CODE "AI decision of CT and radiograph fused" = the fused decision (when fused; never
  a second Impression: the report's Impression stays the CT's decision);
* the localizer in the Image Library and in the header's evidence (same study).

The summary gets a paragraph: what the radiograph model says, the fusion rule, the fused
result or why nothing was fused. Out of domain the CT's scores are not restated.
"""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from pipeline.types import AnalysisResult, CxrResult

from . import codes
from .common import CLASS_DISPLAY, UidMaker
from .wording import DECISION_DISPLAY

CXR_GROUP_ID = "AI CT and radiograph result"
#: The region round the film: this fraction of the rows and columns is left out at each edge.
REGION_MARGIN = 0.1


def region_on(localizer: Dataset) -> hd.sr.ImageRegion:
    """A closed POLYLINE round the central part of a projection image (the region a group
    on a radiograph or localizer lies on)."""
    rows, cols = int(localizer.Rows), int(localizer.Columns)
    x0, x1 = REGION_MARGIN * cols, (1 - REGION_MARGIN) * cols
    y0, y1 = REGION_MARGIN * rows, (1 - REGION_MARGIN) * rows
    outline = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=outline,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(localizer.SOPClassUID),
            referenced_sop_instance_uid=str(localizer.SOPInstanceUID),
        ),
    )


def _ranked(scores: dict[str, float], first: str | None) -> list[str]:
    order = [first] if first in scores else []
    return order + sorted((c for c in scores if c not in order), key=lambda c: -float(scores[c]))


def _percent(name, value: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=round(100.0 * float(value), 2), unit=codes.PERCENT)


def cxr_measurements(cxr: CxrResult) -> list[hd.sr.Measurement]:
    """The group's NUM items: fused first (when fused), then the radiograph model's own."""
    out = []
    if cxr.fused is not None:
        fused = {c: float(v) for c, v in cxr.fused.items()}
        out += [_percent(codes.FUSED_PROBABILITY[c], fused[c]) for c in _ranked(fused, cxr.fused_decision)]
    own = {c: float(v) for c, v in cxr.probabilities.items()}
    return out + [_percent(codes.CXR_PROBABILITY[c], own[c]) for c in _ranked(own, cxr.label)]


def cxr_groups(
    result: AnalysisResult,
    cxr_sources: Sequence[Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    uid: UidMaker,
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """The CXR group on the localizer; none without a CXR result or its image."""
    cxr = result.cxr
    if cxr is None or not cxr_sources:
        return []
    localizer = cxr_sources[0]
    what = DECISION_DISPLAY[cxr.fused_decision] if cxr.fused_decision is not None else "not fused"
    evaluations = []
    if cxr.fused_decision is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(codes.CXR_FUSED_DECISION, codes.DECISION[cxr.fused_decision]))
    return [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=uid("sr-tracking-cxr"),
                identifier=f"{CXR_GROUP_ID}: {what}, localizer image {localizer.get('InstanceNumber', 1)}",
            ),
            referenced_region=region_on(localizer),
            finding_type=codes.LUNG,
            finding_sites=[hd.sr.FindingSite(codes.LUNG)],
            algorithm_id=algorithm,
            measurements=cxr_measurements(cxr),
            qualitative_evaluations=evaluations or None,
        )
    ]


def cxr_text(result: AnalysisResult) -> str:
    """The summary's CXR paragraph; empty without a CXR result."""
    cxr = result.cxr
    if cxr is None:
        return ""
    what = "the CT localizer (scout)" if cxr.radiograph.source == "localizer" else "the radiograph"
    images = ", ".join(cxr.radiograph.sop_uids) or "in memory"
    own = ", ".join(f"{CLASS_DISPLAY[c]} {100 * float(cxr.probabilities[c]):.1f}%" for c in cxr.classes)
    text = f"CXR branch: {what} read as a chest x-ray (image {images}): {own}."
    if cxr.ct is not None:
        ct = ", ".join(f"{CLASS_DISPLAY[c]} {100 * float(cxr.ct[c]):.1f}%" for c in cxr.classes)
        text += f" The CT over the same classes: {ct}."
    if cxr.fused is not None and cxr.fused_decision is not None:
        fused = ", ".join(f"{CLASS_DISPLAY[c]} {100 * float(cxr.fused[c]):.1f}%" for c in cxr.classes)
        text += (
            f" Fused (mean of the two): {fused}; fused decision: {DECISION_DISPLAY[cxr.fused_decision]} "
            "(stated beside the report's decision, which is the CT's)."
        )
    else:
        text += f" {cxr.reason[0].upper()}{cxr.reason[1:]}."
    return text
