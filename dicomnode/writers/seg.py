"""The lung segmentation as a DICOM Segmentation (BINARY): segment 1 "Lung"; segment 2
"Lesions of infection" when the lung U-Net made a lesion map that holds lesions (not out
of domain: the model cannot stand behind its lesions there). The lesions lie inside the
lung, so the segments overlap (BINARY allows it).

Frames reference their source CT slices (highdicom derives the Derivation Image and
plane position of each frame from the source datasets); empty frames are left out to
keep the object small.
"""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from pipeline.types import AnalysisResult, CTVolume

from . import codes
from .common import LO_MAX, UidMaker, contributing_equipment, disclaimer, series_description
from .options import WriterError, WriterOptions

SEGMENT_LABEL = "Lung"
#: Recommended display colour (RGB), the green of the overlays' lung outline; without
#: one, viewers (OHIF) pick their own and say so.
SEGMENT_RGB = (0, 200, 0)
LESION_LABEL = "Lesions of infection"
#: The overlays' heat is red to yellow: lesions in magenta stay apart from it.
LESION_RGB = (220, 0, 220)


def build_seg(
    result: AnalysisResult, volume: CTVolume, sources: Sequence[Dataset], options: WriterOptions, uid: UidMaker
) -> Dataset | None:
    """The SEG dataset, or None when the mask is empty (nothing to show)."""
    mask = result.lung_mask.mask
    if not mask.any():
        return None
    model = result.model
    method = "U-Net" if result.lung_mask.method == "unet" else "HU threshold (classical)"
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"{model.name} lung segmentation"[:LO_MAX],
        family=codes.ARTIFICIAL_INTELLIGENCE if result.lung_mask.method == "unet" else codes.MORPHOLOGICAL_OPERATIONS,
        version=model.version,
        source=options.product_name,
        parameters={"method": result.lung_mask.method, "bundle_sha256": model.sha256},
    )

    def segment(number: int, label: str, category, kind, name: str, rgb: tuple[int, int, int]):
        return hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=uid(f"seg-tracking-{name}"),
            tracking_id=f"{label} (AI segmentation)",
            display_color=hd.color.CIELabColor.from_rgb(*rgb),
        )

    segments = [segment(1, SEGMENT_LABEL, codes.ANATOMICAL_STRUCTURE, codes.LUNG, "lung", SEGMENT_RGB)]
    pixels = mask.astype(np.uint8)
    lesion = result.lung_mask.lesion
    if lesion is not None and lesion.any() and result.decision.value != "out_of_domain":
        segments.append(
            segment(2, LESION_LABEL, codes.MORPHOLOGICALLY_ALTERED_STRUCTURE, codes.LESION, "lesion", LESION_RGB)
        )
        pixels = np.stack([mask, lesion], axis=-1).astype(np.uint8)
    try:
        seg = hd.seg.Segmentation(
            source_images=list(sources),
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments,
            series_instance_uid=uid("seg-series"),
            series_number=options.seg_series_number,
            sop_instance_uid=uid("seg-instance"),
            instance_number=1,
            manufacturer=options.manufacturer,
            manufacturer_model_name=options.product_name,
            software_versions=f"{options.product_version}",
            device_serial_number=model.sha256[:16],
            content_label="LUNG",
            content_description=f"Lung segmentation ({method}). {disclaimer(model)}"[:LO_MAX],
            series_description=series_description("lung segmentation", model),
            omit_empty_frames=True,
            contributing_equipment=contributing_equipment(model, options),
        )
    except ValueError as e:
        raise WriterError(f"lung SEG cannot be built from these source slices: {e}") from e
    seg.ImageComments = disclaimer(model)[:10240]
    # The body part of the series is the chest, not a paired organ, so General Series'
    # Laterality stays absent (PS3.3 C.7.3.1); said explicitly for readers and validators.
    seg.BodyPartExamined = "CHEST"
    if options.institution_name:
        seg.InstitutionName = options.institution_name
    return seg
