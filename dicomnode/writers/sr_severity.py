"""The SR's severity content (pipeline.severity): the grade and volumes of the case group,
one image-anchored measurement group per involved lobe, and the sentence and lobe table of
the plain-text summary.

OHIF draws only groups anchored on an image region (docs/objects.md), so each involved
lobe's group lies on the slice where that lobe is largest, outlined there; lobes without
lesions get no group (five empty outlines would bury the result) but are in the table.
"""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from pipeline.severity import LOBE_TITLES, LOBES
from pipeline.types import AnalysisResult, CTVolume, Involvement

from . import codes, wording
from .common import UidMaker, largest_contour

LOBE_GROUP_ID = "AI lobe severity"


def severity_grade(result: AnalysisResult) -> list[hd.sr.QualitativeEvaluation]:
    """The MosMedData-style grade of the lesion map's involvement (none out of domain)."""
    if result.severity is None or not wording.shows_probabilities(result):
        return []
    return [hd.sr.QualitativeEvaluation(codes.SEVERITY_GRADE, codes.SEVERITY_GRADES[result.severity.mosmed_grade])]


def severity_measurements(result: AnalysisResult) -> list[hd.sr.Measurement]:
    """Ground glass and consolidation volumes of the lesion map, and the CT severity score
    when all five lobes were measured."""
    if result.severity is None:
        return []
    lungs = result.severity.lungs
    out = [
        hd.sr.Measurement(
            name=code, value=round(float(ml), 1), unit=codes.MILLILITER, finding_sites=[hd.sr.FindingSite(codes.LUNG)]
        )
        for code, ml in ((codes.GGO_VOLUME, lungs.ggo_ml), (codes.CONSOLIDATION_VOLUME, lungs.consolidation_ml))
    ]
    if result.severity.ct_severity_score is not None:
        out.append(
            hd.sr.Measurement(
                name=codes.CT_SEVERITY_SCORE, value=int(result.severity.ct_severity_score), unit=codes.SCORE_POINTS
            )
        )
    return out


def lobe_finding_site(name: str) -> hd.sr.FindingSite:
    kind, side = codes.LOBE_TYPES[name]
    return hd.sr.FindingSite(kind, laterality=side)


def lobe_groups(
    result: AnalysisResult,
    volume: CTVolume,
    sources: Sequence[Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    uid: UidMaker,
) -> tuple[list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations], list[int]]:
    """One group per involved lobe (score above 0), not out of domain; with the slices
    they lie on (for the report's image library)."""
    lobes = result.lung_mask.lobes
    if result.severity is None or lobes is None or not wording.shows_probabilities(result):
        return [], []
    groups, slices = [], []
    for part in result.severity.lobes:
        if part.score == 0:
            continue
        inside = lobes == LOBES.index(part.name) + 1
        z = int(np.argmax(inside.reshape(inside.shape[0], -1).sum(axis=1)))
        contour = largest_contour(inside[z])
        if contour is None:
            continue
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=contour,
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=str(sources[z].SOPClassUID),
                referenced_sop_instance_uid=str(sources[z].SOPInstanceUID),
            ),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uid(f"sr-tracking-lobe-{part.name}"),
                    identifier=f"{LOBE_GROUP_ID}: {LOBE_TITLES[part.name]}, image {volume.slice_label(z)}",
                ),
                referenced_region=region,
                finding_type=codes.LOBE_TYPES[part.name][0],
                finding_sites=[lobe_finding_site(part.name)],
                algorithm_id=algorithm,
                measurements=_lobe_measurements(part),
            )
        )
        slices.append(z)
    return groups, slices


def _lobe_measurements(part: Involvement) -> list[hd.sr.Measurement]:
    """What OHIF draws beside the lobe's outline: its involved share and score first."""
    site = [lobe_finding_site(part.name)]
    return [
        hd.sr.Measurement(
            name=codes.LOBE_INVOLVEMENT,
            value=round(float(part.involvement_percent), 2),
            unit=codes.PERCENT,
            finding_sites=site,
        ),
        hd.sr.Measurement(name=codes.LOBE_SCORE, value=int(part.score), unit=codes.SCORE_POINTS, finding_sites=site),
        hd.sr.Measurement(
            name=codes.LESION_VOLUME, value=round(float(part.lesion_ml), 1), unit=codes.MILLILITER, finding_sites=site
        ),
        hd.sr.Measurement(
            name=codes.VOLUME, value=round(float(part.volume_ml), 1), unit=codes.MILLILITER, finding_sites=site
        ),
    ]


def severity_text(result: AnalysisResult) -> str:
    """The severity as the summary states it, with the lobe table; empty without one."""
    s = result.severity
    if s is None:
        return ""
    grade = codes.SEVERITY_GRADES[s.mosmed_grade].meaning
    sentence = (
        f"Severity: lesions involve {s.lungs.involvement_percent:.1f}% of the lungs, grade {grade}; "
        f"ground glass {s.lungs.ggo_ml:.1f} ml, consolidation {s.lungs.consolidation_ml:.1f} ml"
    )
    if not s.lobes:
        return f"{sentence} (no lobe scores: no lobe segmentation)."
    total = (
        f"CT severity score {s.ct_severity_score} of 25"
        if s.ct_severity_score is not None
        else "no CT severity score (not every lobe was found)"
    )
    rows = "\n".join(
        f"  {LOBE_TITLES[p.name]:<18} {p.involvement_percent:5.1f}%  score {p.score}  "
        f"(lesions {p.lesion_ml:.1f} of {p.volume_ml:.0f} ml)"
        for p in s.lobes
    )
    return f"{sentence}; {total}.\nLobe involvement (lesion share of the lobe, score 0-5):\n{rows}\n"
