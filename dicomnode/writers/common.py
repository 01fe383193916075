"""Helpers every writer shares: input checks, UIDs, wording, key slices, contours."""

from __future__ import annotations

from typing import Callable, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pipeline.types import AnalysisResult, CTVolume, ModelInfo

from . import codes
from .options import WriterError, WriterOptions

#: name -> UID (see uid_maker): how the builders get every UID they need.
UidMaker = Callable[[str], str]

#: Short wording of each class for descriptions and burned-in text.
CLASS_DISPLAY = {
    "non_pneumonia": "No pneumonia",
    "cap": "Community-acquired pneumonia",
    "influenza": "Influenza",
    "covid19": "COVID-19",
}
#: VR LO (Series Description, Content Label...) holds at most 64 characters.
LO_MAX = 64


def check_inputs(result: AnalysisResult, volume: CTVolume, sources: Sequence[Dataset]) -> None:
    """Raise WriterError unless result, volume and sources describe the same slices."""
    nz = volume.shape[0]
    if len(sources) != nz:
        raise WriterError(
            f"{len(sources)} source datasets for a volume of {nz} slices: pass the "
            f"series' datasets in the volume's z order (dicomnode.volume.load_series)"
        )
    if result.lung_mask.mask.shape != volume.shape:
        raise WriterError(
            f"lung mask shape {result.lung_mask.mask.shape} differs from the volume's "
            f"{volume.shape}: the result was made from another volume"
        )
    if len(result.infected.scores) != nz:
        raise WriterError(f"infected-slice scores cover {len(result.infected.scores)} slices, the volume {nz}")
    study_uids = {str(ds.StudyInstanceUID) for ds in sources}
    if len(study_uids) != 1:
        raise WriterError(f"source datasets come from {len(study_uids)} studies; results need one")
    for z, ds in enumerate(sources):
        absent = [kw for kw in REQUIRED_SOURCE_ATTRIBUTES if not ds.get(kw)]
        if absent:
            raise WriterError(
                f"source slice {z} (SOP Instance {ds.get('SOPInstanceUID', '?')}) has no "
                f"{', '.join(absent)}: results need the CT's identity and geometry; "
                f"such a series should have been refused when it was loaded"
            )
        if volume.slice_uids and str(ds.SOPInstanceUID) != volume.slice_uids[z]:
            raise WriterError(
                f"source dataset {z} is SOP Instance {ds.SOPInstanceUID}, the volume's slice "
                f"{z} is {volume.slice_uids[z]}: sources must be in the volume's z order"
            )
        if (int(ds.Rows), int(ds.Columns)) != volume.shape[1:]:
            raise WriterError(
                f"source dataset {z} is {ds.Rows}x{ds.Columns} pixels, the volume {volume.shape[1]}x{volume.shape[2]}"
            )
    for att in result.attention:
        if att.heat.shape != volume.shape[1:]:
            raise WriterError(
                f"attention map of slice {att.z_index} is {att.heat.shape}, slices are {volume.shape[1:]}"
            )
        if not 0 <= att.z_index < nz:
            raise WriterError(f"attention map of slice {att.z_index} is outside the volume (0..{nz - 1})")


#: Attributes every source slice must have: the results reference and overlay the CT.
REQUIRED_SOURCE_ATTRIBUTES = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "FrameOfReferenceUID",
)
#: Type 2 attributes highdicom copies from the sources into every object. Scanners that
#: leave one out entirely get it back empty in our copies (never in their datasets).
TYPE2_IDENTITY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def source_views(sources: Sequence[Dataset], volume: CTVolume) -> list[Dataset]:
    """Copies of the source datasets (elements shared, never changed) in which the Type 2
    attributes the writers copy are present, empty when the scanner left them out, and
    an absent or empty Slice Thickness is the volume's slice spacing."""
    views = []
    for ds in sources:
        missing = [kw for kw in TYPE2_IDENTITY if kw not in ds]
        thickness_missing = not ds.get("SliceThickness")
        if not missing and not thickness_missing:
            views.append(ds)
            continue
        view = Dataset()
        for element in ds:
            view.add(element)
        if hasattr(ds, "file_meta"):
            view.file_meta = ds.file_meta
        for kw in missing:
            setattr(view, kw, "")
        if thickness_missing:
            view.SliceThickness = f"{volume.spacing_mm[0]:.4g}"
        views.append(view)
    return views


#: Transfer syntaxes whose pixel data lost information (JPEG baseline/extended, JPEG-LS
#: near-lossless, JPEG 2000 irreversible): -> the words a report uses.
LOSSY_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG baseline",
    "1.2.840.10008.1.2.4.51": "JPEG extended",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000 (lossy)",
}


def lossy_source(sources: Sequence[Dataset]) -> str | None:
    """How the source images were lossy compressed (e.g. "JPEG baseline"), or None: from the
    transfer syntax they arrived in and from Lossy Image Compression (0028,2110)."""
    for ds in sources:
        ts = str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", ""))
        if ts in LOSSY_TRANSFER_SYNTAXES:
            return LOSSY_TRANSFER_SYNTAXES[ts]
        if str(ds.get("LossyImageCompression", "")).strip() == "01":
            method = ds.get("LossyImageCompressionMethod")
            named = method if isinstance(method, str) else ", ".join(map(str, method or []))
            return f"lossy ({named or 'method unknown'})"
    return None


#: The lung in the first or last slice larger than this share of the largest lung slice:
#: the lungs run on past the end of the series (a transfer cut short, a scan too short).
LUNG_AT_END_FRACTION = 0.35


def completeness_note(result: AnalysisResult, sources: Sequence[Dataset]) -> str | None:
    """Why the series looks incomplete, or None: fewer images than the scanner declared
    (Images in Acquisition), or lungs cut off by the first or last slice."""
    declared = [
        int(ds.ImagesInAcquisition) for ds in sources if str(ds.get("ImagesInAcquisition", "")).strip().isdigit()
    ]
    if declared and max(declared) > len(sources):
        return f"{len(sources)} of {max(declared)} images (Images in Acquisition)"
    area = result.lung_mask.mask.reshape(result.lung_mask.mask.shape[0], -1).sum(axis=1)
    if area.size >= 3 and area.max() > 0:
        ends = [name for name, a in (("first", area[0]), ("last", area[-1])) if a > LUNG_AT_END_FRACTION * area.max()]
        if ends:
            return f"the lungs are cut off at the {' and '.join(ends)} image{'s' if len(ends) > 1 else ''}"
    return None


def uid_maker(options: WriterOptions, sources: Sequence[Dataset]) -> UidMaker:
    """A function name -> UID. With options.uid_seed the UIDs are reproducible: the same
    job and source series give the same UID for the same name."""
    if options.uid_seed is None:
        return lambda name: str(generate_uid())
    series_uid = str(sources[0].SeriesInstanceUID)
    seed = str(options.uid_seed)
    return lambda name: str(generate_uid(entropy_srcs=[seed, series_uid, name]))


def is_demo(model: ModelInfo) -> bool:
    return model.trained_on_synthetic_data


def disclaimer(model: ModelInfo) -> str:
    """The bundle's disclaimer; a plain one when the bundle has none."""
    text = model.disclaimer.strip()
    return text or "Research software: not a medical device. Not for clinical use."


def series_description(what: str, model: ModelInfo, subject: str = "COVID-19 CT") -> str:
    """e.g. 'AI COVID-19 CT report (DEMO, not for clinical use)', at most 64 characters."""
    tag = "DEMO, not for clinical use" if is_demo(model) else "not for clinical use"
    text = f"AI {subject} {what} ({tag})"
    return text[:LO_MAX]


def device_uid(model: ModelInfo, options: WriterOptions) -> str:
    """The AI "device" of every object: one UID per product version and model bundle, so it
    changes with the bundle (its sha256) and stays the same across reports made with it."""
    return str(generate_uid(entropy_srcs=[options.product_name, options.product_version, model.sha256]))


def contributing_equipment(model: ModelInfo, options: WriterOptions) -> list[hd.ContributingEquipment]:
    """The Contributing Equipment item that names the AI model (IHE AI Results): maker,
    bundle name, software versions (node and bundle), the bundle's sha256 as serial number
    and the device UID above (Device UID is a Type 3 attribute of the item)."""
    item = hd.ContributingEquipment(
        manufacturer=options.manufacturer,
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=model.name[:LO_MAX],
        software_versions=[options.product_version, model.version],
        device_serial_number=model.sha256[:LO_MAX],
        institution_name=options.institution_name,
        contribution_description=f"AI analysis: {model_text(model, options)}"[:1024],  # VR ST
    )
    item.DeviceUID = device_uid(model, options)
    return [item]


def model_text(model: ModelInfo, options: WriterOptions) -> str:
    return (
        f"{options.product_name} {options.product_version}, model bundle {model.name} "
        f"{model.version} (sha256 {model.sha256})"
    )


def _infected_order(result: AnalysisResult) -> list[int]:
    """Infected slices, the highest locator score first."""
    scores = np.nan_to_num(result.infected.scores, nan=-1.0)
    return sorted(result.infected.z_indices, key=lambda z: (-scores[z], z))


def overlay_slices(result: AnalysisResult, max_n: int) -> list[int]:
    """Slices that get a Grad-CAM overlay: the explained slices that are infected (highest
    locator score first); when none is infected, the explained slices in the chain's order.
    None for an out-of-domain decision: the model cannot stand behind what it looked at."""
    if result.decision.value == "out_of_domain":
        return []
    explained = [a.z_index for a in result.attention]
    infected = [z for z in _infected_order(result) if z in explained]
    chosen = infected or explained
    return chosen[:max_n]


def top_classified_slice(result: AnalysisResult) -> int:
    """The classified slice with the highest probability of the most probable class."""
    col = list(result.case_scores.probabilities).index(result.case_scores.label)
    scores = result.slice_scores
    return int(scores.z_indices[int(np.argmax(scores.probabilities[:, col]))])


def largest_lung_slice(result: AnalysisResult) -> int:
    """The slice with the most lung (where an out-of-domain report draws the lung outline)."""
    area = result.lung_mask.mask.reshape(result.lung_mask.mask.shape[0], -1).sum(1)
    return int(np.argmax(area)) if area.any() else top_classified_slice(result)


def key_slices(result: AnalysisResult) -> list[int]:
    """Slices a reader should look at, sorted by z: the infectious slices under a pneumonia
    decision; else (or without any) the explained slices, else the top-scoring classified
    slice. Under another decision the locator's slices are no finding, so not key images."""
    if result.decision.is_pneumonia and result.infected.z_indices:
        return sorted(set(int(z) for z in result.infected.z_indices))
    if result.attention:
        return sorted({int(a.z_index) for a in result.attention})
    return [top_classified_slice(result)]


def primary_slice(result: AnalysisResult) -> int:
    """The one slice that carries the case-level results in the report."""
    if result.decision.value == "out_of_domain":
        return largest_lung_slice(result)
    overlays = overlay_slices(result, 1)
    if overlays:
        return overlays[0]
    infected = _infected_order(result) if result.decision.is_pneumonia else []
    if infected:
        return infected[0]
    return top_classified_slice(result)


def largest_contour(mask: np.ndarray, max_points: int = 96) -> np.ndarray | None:
    """Outline of the largest connected part of a 2-D mask as a closed polygon.

    Returns (n, 2) float (column, row) in DICOM image coordinates (0,0 is the top-left
    corner of the top-left pixel, so pixel centres are at +0.5), first point repeated
    last; None when the mask is empty. At most ``max_points`` points (evenly sampled),
    so reports stay small.
    """
    import contourpy  # matplotlib's contour engine, installed with it

    if mask.ndim != 2:
        raise WriterError(f"largest_contour needs a 2-D mask, got shape {mask.shape}")
    if not mask.any():
        return None
    # Pad so that parts touching the border still give closed lines.
    padded = np.pad(mask.astype(np.float32), 1)
    lines = contourpy.contour_generator(z=padded, line_type="Separate").lines(0.5)
    lines = [np.asarray(line, dtype=float) for line in lines if len(line) >= 4]
    if not lines:
        return None
    line = max(lines, key=_polygon_area)
    if np.allclose(line[0], line[-1]):
        line = line[:-1]
    if len(line) > max_points - 1:
        idx = np.linspace(0, len(line), max_points - 1, endpoint=False).astype(int)
        line = line[idx]
    line = line - 1.0 + 0.5  # undo the padding, then pixel centre -> DICOM image coordinates
    line[:, 0] = np.clip(line[:, 0], 0.0, mask.shape[1])
    line[:, 1] = np.clip(line[:, 1], 0.0, mask.shape[0])
    return np.vstack([line, line[:1]]).astype(np.float32)


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
