"""The radiograph-only report: a plain DX/CR chest film sent alone (``[cxr] radiographs_alone``).

Comprehensive 3D SR holding a TID 1500 Measurement Report, like the CT report, with
procedure reported (CID 100) "XR unspecified body region" and one measurement group,
"AI radiograph result: <most probable class> (no CT, nothing fused), image <n>", drawn on
the film (writers.sr_cxr's region): NUM the CXR model's probability of each of its
classes, the most probable first. There is no CT, so there is no decision of the chain,
no Impression and nothing fused: the Qualitative Evaluations hold the plain-text summary
(the scores, what the model can tell apart and that it is no diagnosis) and the
bundle's disclaimer. Preliminary and unverified, as every report of ours.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes

from pipeline.types import CxrResult, ModelInfo

from . import codes
from .common import CLASS_DISPLAY, UidMaker, disclaimer, model_text, series_description
from .options import WriterOptions
from .sr import device_observation_context, report_dataset
from .sr_cxr import cxr_measurements, region_on

RADIOGRAPH_GROUP_ID = "AI radiograph result"
#: CID 100's entry for a projection radiograph (the region is the group's finding site).
XR_PROCEDURE = dcm_codes.cid100.XRUnspecifiedBodyRegion


def radiograph_summary(cxr: CxrResult, model: ModelInfo, options: WriterOptions) -> str:
    """The report's plain words: the CXR model's scores, and that they are no diagnosis."""
    own = ", ".join(f"{CLASS_DISPLAY[c]} {100 * float(cxr.probabilities[c]):.1f}%" for c in cxr.classes)
    tells = " from ".join(CLASS_DISPLAY[c] for c in cxr.classes)
    return (
        f"AI result on a chest radiograph alone (image {', '.join(cxr.radiograph.sop_uids)}, view "
        f"{cxr.radiograph.view}): {own}. The radiograph model only tells {tells}; it does not say whether there "
        "is a pneumonia at all, and with no CT there is nothing to fuse with: no diagnosis is stated. "
        f"Made by {model_text(model, options)}. {disclaimer(model)}"
    )


def build_radiograph_sr(
    cxr: CxrResult, source: Dataset, model: ModelInfo, options: WriterOptions, uid: UidMaker
) -> Dataset:
    """The radiograph-only TID 1500 report of ``cxr`` (read from ``source``)."""
    algorithm = hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[f"bundle sha256 {model.sha256}", f"software {options.product_name} {options.product_version}"],
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uid("sr-tracking-radiograph"),
            identifier=f"{RADIOGRAPH_GROUP_ID}: {CLASS_DISPLAY[cxr.label]} most probable (no CT, nothing fused), "
            f"image {source.get('InstanceNumber', 1)}",
        ),
        referenced_region=region_on(source),
        finding_type=codes.LUNG,
        finding_sites=[hd.sr.FindingSite(codes.LUNG)],
        algorithm_id=algorithm,
        measurements=cxr_measurements(cxr),
    )
    context = device_observation_context(model, options)
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=XR_PROCEDURE,
        imaging_measurements=[group],
        # The image library entry of a projection image is made from its Patient
        # Orientation; a film without it is still the evidence (header) and the region's image.
        referenced_images=[source] if source.get("PatientOrientation") else None,
    )
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    container = hd.sr.ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS, relationship_type=contains)
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.SUMMARY, value=radiograph_summary(cxr, model, options), relationship_type=contains
            ),
            hd.sr.TextContentItem(name=codes.DISCLAIMER, value=disclaimer(model), relationship_type=contains),
        ]
    )
    report[0].ContentSequence.append(container)
    description = series_description("report", model, subject="chest radiograph")
    return report_dataset(report, [source], description, model, options, uid)
