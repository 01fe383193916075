"""Grad-CAM overlays as Secondary Capture images (one new series in the source study).

Each image is the source slice in the lung window with the Guided Grad-CAM heat map
blended in, the lung outlined in green, the attention regions in white and a caption
burned in (BurnedInAnnotation YES). Position, orientation, pixel spacing and frame of
reference are copied from the source slice so viewers can place it beside the CT (they
are not part of the SC IOD: dciodvfy calls the result a Standard Extended SOP Class).

The caption states the decision ("AI decision: indeterminate", never the argmax) and
names an infectious slice only under a pneumonia decision. Out of domain no overlay is
made: there is nothing the model can stand behind to explain.
"""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from pipeline.types import AnalysisResult, CTVolume

from . import codes, wording
from .common import (
    CLASS_DISPLAY,
    UidMaker,
    contributing_equipment,
    disclaimer,
    is_demo,
    lossy_source,
    model_text,
    overlay_slices,
    series_description,
)
from .options import WriterOptions
from .render import render_overlay


def build_sc(
    result: AnalysisResult, volume: CTVolume, sources: Sequence[Dataset], options: WriterOptions, uid: UidMaker
) -> list[Dataset]:
    """One RGB Secondary Capture per overlay slice (at most options.max_overlays), in z order;
    none for an out-of-domain decision."""
    if not wording.shows_explanations(result):
        return []
    attention = {a.z_index: a for a in result.attention}
    chosen = sorted(overlay_slices(result, options.max_overlays))
    series_uid = uid("sc-series")
    lossy = lossy_source(sources)
    images: list[Dataset] = []
    for number, z in enumerate(chosen, start=1):
        att = attention[z]
        source = sources[z]
        target = CLASS_DISPLAY[att.target_class]
        caption = overlay_caption(result, volume, z, att.target_class)
        pixels = render_overlay(volume.hu[z], att.heat, result.lung_mask.mask[z], att.regions, caption)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_uid,
            series_number=options.sc_series_number,
            sop_instance_uid=uid(f"sc-instance-{z}"),
            instance_number=number,
            manufacturer=options.manufacturer,
            pixel_spacing=_pixel_spacing(source),  # type: ignore[arg-type]  # highdicom's hint says int; mm are float
            patient_orientation=patient_orientation(source),
            series_description=series_description("Grad-CAM", result.model),
            manufacturer_model_name=options.product_name,
            software_versions=[options.product_version, f"{result.model.name} {result.model.version}"],
            contributing_equipment=contributing_equipment(result.model, options),
        )
        if "BodyPartExamined" in source:  # General Series; tells validators no laterality is due
            sc.BodyPartExamined = source.BodyPartExamined
        _reference_source(sc, source)
        _copy_geometry(sc, source)
        sc.BurnedInAnnotation = "YES"
        # A picture derived from a lossy source is lossy too (PS3.3 C.7.6.1.1.5).
        sc.LossyImageCompression = "01" if lossy else "00"
        sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        sc.DerivationDescription = (
            f"Guided Grad-CAM of the {target} class blended on the lung window "
            f"(W1500 L-600); lung outline green, attention regions white"
        )[:1024]
        sc.ImageComments = (
            f"Grad-CAM overlay of image {volume.slice_label(z)}. {wording.decision_line(result)}. "
            f"{model_text(result.model, options)}. {disclaimer(result.model)}"
        )[:10240]
        if options.institution_name:
            sc.InstitutionName = options.institution_name
        images.append(sc)
    return images


def overlay_caption(result: AnalysisResult, volume: CTVolume, z: int, target_class: str) -> list[str]:
    """The burned-in lines: the decision, the class explained, the image, the disclaimer."""
    prob = 100.0 * result.case_scores.probabilities[target_class]
    located = wording.states_infected_slices(result) and z in result.infected.z_indices
    return [
        wording.caption_line(result),
        f"Grad-CAM of {wording.CLASS_SHORT[target_class]} ({prob:.0f}%)",
        f"Image {volume.slice_label(z)}"
        + (f" | {wording.infected_name(result.decision.value, plural=False)}" if located else ""),
        "DEMO - not for clinical use" if is_demo(result.model) else "Not for clinical use",
    ]


def _pixel_spacing(source: Dataset) -> tuple[float, float] | None:
    spacing = source.get("PixelSpacing")
    return (float(spacing[0]), float(spacing[1])) if spacing else None


def patient_orientation(source: Dataset) -> tuple[str, str]:
    """Patient Orientation (row, column directions as letters) from Image Orientation (Patient)."""
    iop = [float(v) for v in source.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    return _letters(iop[:3]), _letters(iop[3:])


def _letters(vector: Sequence[float]) -> str:
    positive, negative = ("L", "P", "H"), ("R", "A", "F")
    order = np.argsort(-np.abs(np.asarray(vector)))
    letters = [positive[i] if vector[i] > 0 else negative[i] for i in order if abs(vector[i]) > 0.25]
    return "".join(letters) or "L"


def _reference_source(sc: Dataset, source: Dataset) -> None:
    """Source Image Sequence (what the picture was derived from) and Referenced Image
    Sequence (what it belongs beside), both to the one CT slice."""
    derived = Dataset()
    derived.ReferencedSOPClassUID = source.SOPClassUID
    derived.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = Dataset()
    purpose.CodeValue = codes.SOURCE_IMAGE_FOR_PROCESSING.value
    purpose.CodingSchemeDesignator = codes.SOURCE_IMAGE_FOR_PROCESSING.scheme_designator
    purpose.CodeMeaning = codes.SOURCE_IMAGE_FOR_PROCESSING.meaning
    derived.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [derived]
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.ReferencedImageSequence = [ref]


def _copy_geometry(sc: Dataset, source: Dataset) -> None:
    for keyword in (
        "FrameOfReferenceUID",
        "PositionReferenceIndicator",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "SliceThickness",
        "SliceLocation",
    ):
        if keyword in source:
            setattr(sc, keyword, source[keyword].value)
