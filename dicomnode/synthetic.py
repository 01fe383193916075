"""Valid CT Image Storage instances made from a volume: what a scanner would send.

Used by the demo command, the benchmarks and the tests, so every part of the product
is exercised with the same kind of series. The identities are fake by construction
(phantoms); callers choose them so tests can check that they are copied, not logged.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from pipeline.types import CTVolume, Radiograph

#: Stored values are HU + 1024 in unsigned 12 bits, as many scanners write them.
RESCALE_INTERCEPT = -1024.0
_MAX_STORED = 4095

UNCOMPRESSED = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)


@dataclass(frozen=True)
class SyntheticSeries:
    paths: tuple[Path, ...]
    study_uid: str
    series_uid: str
    sop_uids: tuple[str, ...]


def _slice_positions(volume: CTVolume) -> np.ndarray:
    """Patient-frame position (x, y, z) of the first voxel of each z slice."""
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    normal = direction[:, 2]
    origin = np.asarray(volume.origin_mm, dtype=float)
    return origin[None, :] + np.arange(volume.shape[0])[:, None] * volume.spacing_mm[0] * normal[None, :]


def _set_pixels(ds: Dataset, stored: np.ndarray) -> None:
    """The image pixel and CT image elements of one slice's stored values (12 bits, HU
    after the rescale) and its lung window."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT:.0f}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.PixelData = stored.tobytes()


def ct_datasets(
    volume: CTVolume,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient_name: str = "PHANTOM^DEMO",
    patient_id: str = "PHANTOM-0001",
    patient_sex: str = "O",
    patient_birth_date: str = "19700101",
    study_uid: str | None = None,
    series_uid: str | None = None,
    accession_number: str = "SYN0001",
    series_number: int = 2,
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    study_description: str = "CT CHEST (SYNTHETIC PHANTOM)",
    series_description: str = "Chest 1.0 (synthetic)",
) -> list[Dataset]:
    """One CT Image Storage dataset per z slice, in z order, pixel data encoded."""
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    now = _dt.datetime(2026, 1, 1, 12, 0, 0)
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    orientation = [float(v) for v in (*direction[:, 0], *direction[:, 1])]
    positions = _slice_positions(volume)
    stored = np.clip(np.rint(volume.hu - RESCALE_INTERCEPT), 0, _MAX_STORED).astype(np.uint16)
    out: list[Dataset] = []
    for z in range(volume.shape[0]):
        sop_uid = UID(volume.slice_uids[z]) if volume.slice_uids else generate_uid()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = list(image_type)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = now.strftime("%H%M%S")
        ds.AccessionNumber = accession_number
        ds.Modality = modality
        ds.Manufacturer = "Synthetic"
        ds.ManufacturerModelName = "Phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = study_description
        ds.SeriesDescription = series_description
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = patient_birth_date
        ds.PatientSex = patient_sex
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{volume.spacing_mm[0]:.3f}"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = volume.slice_numbers[z] if volume.slice_numbers else z + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [round(float(v), 4) for v in positions[z]]
        ds.ImageOrientationPatient = orientation
        ds.SliceLocation = round(float(positions[z][2]), 4)
        ds.PixelSpacing = [f"{volume.spacing_mm[1]:.4f}", f"{volume.spacing_mm[2]:.4f}"]
        _set_pixels(ds, stored[z])
        if transfer_syntax == ImplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif transfer_syntax not in UNCOMPRESSED:
            # pydicom's encoders: JPEG-LS (pyjpegls), JPEG 2000 (pylibjpeg-openjpeg), RLE.
            ds.compress(UID(transfer_syntax), stored[z])
        out.append(ds)
    return out


def write_ct_series(volume: CTVolume, out_dir: Path | str, **kwargs) -> SyntheticSeries:
    """Write ``ct_datasets(volume, **kwargs)`` as one file per slice into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    datasets = ct_datasets(volume, **kwargs)
    paths = []
    for i, ds in enumerate(datasets):
        path = out / f"CT{i + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return SyntheticSeries(
        paths=tuple(paths),
        study_uid=str(datasets[0].StudyInstanceUID),
        series_uid=str(datasets[0].SeriesInstanceUID),
        sop_uids=tuple(str(ds.SOPInstanceUID) for ds in datasets),
    )


#: A localizer's stored values: the line integral of the attenuation x 1000 (16 bits).
LOCALIZER_SCALE = 1000.0


def localizer_dataset(
    radiograph: Radiograph, like: Dataset, *, series_uid: str | None = None, series_number: int = 1
) -> Dataset:
    """The CT localizer (scout) of ``radiograph`` (pipeline.projection) as a CT Image Storage
    instance of the study of ``like`` (one of its CT datasets: patient and study copied):
    ImageType ORIGINAL\\PRIMARY\\LOCALIZER, a coronal plane (rows along the patient's x,
    columns down z), the pixel spacing at the isocentre and the source distances."""
    from copy import deepcopy

    ds = deepcopy(like)
    for keyword in ("SliceLocation", "PixelData", "WindowCenter", "WindowWidth", "RescaleType"):
        if keyword in ds:
            delattr(ds, keyword)
    # The beam's extent along the table per row, as scanners state it for a topogram.
    ds.SliceThickness = f"{radiograph.pixel_spacing_mm[0]:.3f}"
    sop_uid = generate_uid(entropy_srcs=[str(like.StudyInstanceUID), "localizer", str(series_number)])
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid or generate_uid(entropy_srcs=[str(like.StudyInstanceUID), "localizer-series"])
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "Topogram AP (synthetic)"
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[str(like.StudyInstanceUID), "localizer-frame"])
    g = radiograph.geometry
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    ds.ImagePositionPatient = [
        round(float(g.get("first_column_x_mm", 0.0)), 4),
        round(float(g.get("isocenter_y_mm", 0.0)), 4),
        round(float(g.get("first_row_z_mm", 0.0)), 4),
    ]
    ds.PixelSpacing = [f"{radiograph.pixel_spacing_mm[0]:.4f}", f"{radiograph.pixel_spacing_mm[1]:.4f}"]
    if "source_to_isocenter_mm" in g:
        ds.DistanceSourceToPatient = f"{float(g['source_to_isocenter_mm']):.1f}"
    if "source_to_detector_mm" in g:
        ds.DistanceSourceToDetector = f"{float(g['source_to_detector_mm']):.1f}"
    stored = np.clip(np.rint(radiograph.image * LOCALIZER_SCALE), 0, 65535).astype(np.uint16)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = f"{1.0 / LOCALIZER_SCALE:g}"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def radiograph_dataset(radiograph: Radiograph, like: Dataset, *, view: str = "PA") -> Dataset:
    """``radiograph`` as a plain chest film sent alone: a Digital X-Ray Image (for
    presentation) of the patient of ``like`` in a study and series of its own, with the
    Imager Pixel Spacing and View Position a DX carries (the test input of
    ``[cxr] radiographs_alone``; not meant to pass every DX module's rules)."""
    ds = localizer_dataset(radiograph, like)
    for keyword in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "FrameOfReferenceUID",
        "PositionReferenceIndicator",
        "SliceThickness",
        "PixelSpacing",
        "KVP",
    ):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(like.StudyInstanceUID), "radiograph-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(like.StudyInstanceUID), "radiograph-series"])
    ds.Modality = "DX"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ViewPosition = view
    # Row direction towards the patient's left, columns towards the feet (a chest film as read).
    ds.PatientOrientation = ["L", "F"] if view in ("PA", "AP") else ["P", "F"]
    ds.ImagerPixelSpacing = [f"{radiograph.pixel_spacing_mm[0]:.4f}", f"{radiograph.pixel_spacing_mm[1]:.4f}"]
    ds.SeriesDescription = f"Chest {view} (synthetic)"
    ds.StudyDescription = "XR CHEST (SYNTHETIC PHANTOM)"
    return ds
