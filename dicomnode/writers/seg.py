"""The chain's segmentations as DICOM Segmentations (BINARY).

``build_seg``: segment 1 "Lung"; then the lesions of the lung U-Net's lesion map when it
holds lesions (not out of domain: the model cannot stand behind its lesions there): with
a severity measurement split by density into "Ground-glass opacity" and "Consolidation"
(pipeline.severity's threshold, the one the SR's volumes use), else one "Lesions of
infection" segment. The lesions lie inside the lung, so the segments overlap (BINARY
allows it).

``build_lobe_seg``: the five lobes of the chain's lobe map, each a segment coded by CID
6170 with its laterality, in a series of its own (object kind ``lobe_seg``), so that each
destination can take or leave it.

Frames reference their source CT slices (highdicom derives the Derivation Image and
plane position of each frame from the source datasets); empty frames are left out to
keep the object small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from pipeline.severity import LOBE_TITLES, LOBES
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
GGO_LABEL = "Ground-glass opacity"
GGO_RGB = (255, 150, 255)
CONSOLIDATION_LABEL = "Consolidation"
CONSOLIDATION_RGB = (160, 0, 160)
#: One colour per lobe, in LOBES order (the right lung's blues, the left lung's oranges).
LOBE_RGB = ((70, 130, 255), (0, 200, 220), (30, 60, 180), (255, 170, 60), (200, 100, 0))


@dataclass(frozen=True)
class _Segment:
    """One segment to write: its label, coded type (and laterality) and pixels."""

    label: str
    category: Code
    kind: Code
    name: str  # the tracking UID's seed
    rgb: tuple[int, int, int]
    pixels: np.ndarray | None  # None: the SEG is built from a label map of the segments
    modifier: Code | None = None
    #: Frame Laterality of its frames: B (both lungs), R or L (a lobe).
    laterality: str = "B"


def build_seg(
    result: AnalysisResult, volume: CTVolume, sources: Sequence[Dataset], options: WriterOptions, uid: UidMaker
) -> Dataset | None:
    """The lung SEG dataset, or None when the mask is empty (nothing to show)."""
    mask = result.lung_mask.mask
    if not mask.any():
        return None
    segments = [_Segment(SEGMENT_LABEL, codes.ANATOMICAL_STRUCTURE, codes.LUNG, "lung", SEGMENT_RGB, mask)]
    segments += _lesion_segments(result, volume)
    method = "U-Net" if result.lung_mask.method == "unet" else "HU threshold (classical)"
    return _segmentation(
        result,
        sources,
        options,
        uid,
        segments,
        prefix="seg",
        series_number=options.seg_series_number,
        content_label="LUNG",
        what="lung segmentation",
        description=f"Lung segmentation ({method})",
        learned=result.lung_mask.method == "unet",
        method=result.lung_mask.method,
    )


def build_lobe_seg(
    result: AnalysisResult, volume: CTVolume, sources: Sequence[Dataset], options: WriterOptions, uid: UidMaker
) -> Dataset | None:
    """The lobe SEG dataset, or None without a lobe map (or out of domain, where the lobe
    map is not measured either)."""
    lobes = result.lung_mask.lobes
    if lobes is None or result.decision.value == "out_of_domain" or not lobes.any():
        return None
    segments: list[_Segment] = []
    # The lobes never overlap: one label map (segment numbers) instead of a stack of five
    # masks; highdicom then builds the same frames in a sixth of the time and without the
    # stack's gigabyte (300 x 512 x 512: 0.7 s against 4.6 s, +0 against +825 MiB).
    segment_of_lobe = np.zeros(len(LOBES) + 1, dtype=np.uint8)
    voxels = np.bincount(lobes.ravel(), minlength=len(LOBES) + 1)
    for number, name in enumerate(LOBES, start=1):
        if not voxels[number]:
            continue
        segment_of_lobe[number] = len(segments) + 1
        kind, side = codes.LOBE_TYPES[name]
        rgb = LOBE_RGB[number - 1]
        segments.append(
            _Segment(
                LOBE_TITLES[name],
                codes.ANATOMICAL_STRUCTURE,
                kind,
                f"lobe-{name}",
                rgb,
                None,
                side,
                laterality="R" if name.startswith("right") else "L",
            )
        )
    return _segmentation(
        result,
        sources,
        options,
        uid,
        segments,
        prefix="lobe-seg",
        series_number=options.lobe_seg_series_number,
        content_label="LOBES",
        what="lobe segmentation",
        description="Lobe segmentation (fissure-based, classical)",
        learned=False,
        method="fissures",
        label_map=segment_of_lobe[lobes],
    )


def _lesion_segments(result: AnalysisResult, volume: CTVolume) -> list[_Segment]:
    """The lesion segments (see the module's docstring); none out of domain."""
    lesion = result.lung_mask.lesion
    if lesion is None or not lesion.any() or result.decision.value == "out_of_domain":
        return []
    category = codes.MORPHOLOGICALLY_ALTERED_STRUCTURE
    if result.severity is None:
        return [_Segment(LESION_LABEL, category, codes.LESION, "lesion", LESION_RGB, lesion)]
    dense = lesion & (volume.hu >= result.severity.consolidation_hu)
    parts = [
        _Segment(GGO_LABEL, category, codes.GROUND_GLASS_OPACITY, "ggo", GGO_RGB, lesion & ~dense),
        _Segment(CONSOLIDATION_LABEL, category, codes.LUNG_CONSOLIDATION, "consolidation", CONSOLIDATION_RGB, dense),
    ]
    return [p for p in parts if p.pixels is not None and p.pixels.any()]


def _segmentation(
    result: AnalysisResult,
    sources: Sequence[Dataset],
    options: WriterOptions,
    uid: UidMaker,
    segments: Sequence[_Segment],
    *,
    prefix: str,
    series_number: int,
    content_label: str,
    what: str,
    description: str,
    learned: bool,
    method: str,
    label_map: np.ndarray | None = None,
) -> Dataset:
    """The SEG of ``segments``; ``label_map`` (z/y/x segment numbers, 0 none), when the
    segments do not overlap, replaces the stack of their masks as highdicom's input."""
    model = result.model
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"{model.name} {what}"[:LO_MAX],
        family=codes.ARTIFICIAL_INTELLIGENCE if learned else codes.MORPHOLOGICAL_OPERATIONS,
        version=model.version,
        source=options.product_name,
        parameters={"method": method, "bundle_sha256": model.sha256},
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=s.label,
            segmented_property_category=s.category,
            segmented_property_type=s.kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=uid(f"seg-tracking-{s.name}"),
            tracking_id=f"{s.label} (AI segmentation)",
            display_color=hd.color.CIELabColor.from_rgb(*s.rgb),
        )
        for number, s in enumerate(segments, start=1)
    ]
    for item, s in zip(descriptions, segments, strict=True):
        if s.modifier is not None:
            item.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept.from_code(s.modifier)
            ]
    try:
        seg = hd.seg.Segmentation(
            source_images=list(sources),
            pixel_array=_pixel_array(segments, label_map, what),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=uid(f"{prefix}-series"),
            series_number=series_number,
            sop_instance_uid=uid(f"{prefix}-instance"),
            instance_number=1,
            manufacturer=options.manufacturer,
            manufacturer_model_name=options.product_name,
            software_versions=f"{options.product_version}",
            device_serial_number=model.sha256[:16],
            content_label=content_label,
            content_description=f"{description}. {disclaimer(model)}"[:LO_MAX],
            series_description=series_description(what, model),
            omit_empty_frames=True,
            contributing_equipment=contributing_equipment(model, options),
        )
    except ValueError as e:
        raise WriterError(f"{what} SEG cannot be built from these source slices: {e}") from e
    seg.ImageComments = disclaimer(model)[:10240]
    # The body part of the series is the chest, not a paired organ, so General Series'
    # Laterality stays absent (PS3.3 C.7.3.1); said explicitly for readers and validators.
    seg.BodyPartExamined = "CHEST"
    _add_frame_anatomy(seg, segments)
    if options.institution_name:
        seg.InstitutionName = options.institution_name
    return seg


def _pixel_array(segments: Sequence[_Segment], label_map: np.ndarray | None, what: str) -> np.ndarray:
    """highdicom's input: the label map when given, else the stack of the segments' masks."""
    if label_map is not None:
        return np.asarray(label_map, dtype=np.uint8)
    masks = [s.pixels for s in segments if s.pixels is not None]
    if len(masks) != len(segments):
        raise WriterError(f"{what} SEG: a segment without pixels needs a label map")
    return np.stack(masks, axis=-1).astype(np.uint8)


def _add_frame_anatomy(seg: Dataset, segments: Sequence[_Segment]) -> None:
    """Each frame's anatomy: the lung, and its laterality (B for both lungs, R or L for a
    lobe). General Series' Laterality cannot say "both", and PixelMed asks for it unless
    some Frame Laterality is present; the Frame Anatomy macro is not in the SEG IOD's
    functional groups, so dciodvfy calls the SEG a Standard Extended SOP Class
    (docs/objects.md), which it already is for the Contributing Equipment's Device UID."""

    def anatomy(laterality: str) -> list[Dataset]:
        item = Dataset()
        item.AnatomicRegionSequence = [hd.sr.CodedConcept.from_code(codes.LUNG)]
        item.FrameLaterality = laterality
        return [item]

    sides = {s.laterality for s in segments}
    if len(sides) == 1:  # one laterality for every frame: a shared functional group
        seg.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = anatomy(sides.pop())
        return
    for frame in seg.PerFrameFunctionalGroupsSequence:
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        frame.FrameAnatomySequence = anatomy(segments[number - 1].laterality)
