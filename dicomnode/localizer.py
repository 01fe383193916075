"""The CXR branch's input on the DICOM side: a study's localizer, or a radiograph, as a
``pipeline.types.Radiograph``.

A CT study's localizer (scout) arrives as a series of its own, stored like any other
(``<storage>/<study>/<series>/<sop>.dcm``) and recorded as skipped ("localizer images
only": it is no volume). When the CT series of the same study is analysed, the worker
asks ``study_localizer`` for it: the other series folders of the study are read (headers
only), instances whose ImageType holds one of ``[cxr] localizer_image_types`` and whose
Patient ID is the CT's are kept, and the frontal one (AP/PA: rows along the patient's x,
columns along z) is read; with several, the last by series and instance number. Being on
disk is the pairing rule, so a scale-out worker, which shares the data folder, finds it
too. A localizer that arrives after its CT was analysed is not used for that report.

``read_radiograph`` turns one image (a localizer, or a DX/CR film) into a Radiograph:
stored values rescaled, MONOCHROME1 inverted (the pipeline wants larger = denser), the
pixel spacing (Pixel Spacing, else Imager Pixel Spacing), the view and the distances it
has. Logs name UIDs only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipeline.types import InvalidInputError, Radiograph

log = logging.getLogger(__name__)

#: Header elements read to find a localizer (pixel data is read only for the chosen one).
HEADER_TAGS = (
    "ImageType",
    "PatientID",
    "SOPInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "ImageOrientationPatient",
    "Modality",
)
#: A direction cosine counts as along an axis within this.
AXIS_TOLERANCE = 0.1
VIEWS = {"AP": "AP", "PA": "PA", "LL": "LAT", "RL": "LAT", "LATERAL": "LAT", "LAT": "LAT"}


def _image_types(ds: Dataset) -> set[str]:
    raw = ds.get("ImageType") or []
    values = [raw] if isinstance(raw, str) else list(raw)
    return {str(v).strip().upper() for v in values}


def is_frontal(ds: Dataset) -> bool:
    """True for an AP/PA projection (rows along the patient's x, columns along z), or a
    localizer that does not say (no Image Orientation)."""
    iop = ds.get("ImageOrientationPatient")
    if not iop or len(iop) != 6:
        return True
    row, col = np.abs(np.asarray([float(v) for v in iop[:3]])), np.abs(np.asarray([float(v) for v in iop[3:]]))
    return bool(row[0] > 1 - AXIS_TOLERANCE and col[2] > 1 - AXIS_TOLERANCE)


def _header(path: Path) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    except (InvalidDicomError, OSError, EOFError, ValueError):
        return None


def localizer_files(study_dir: Path, ct_series_dir: Path, patient_id: str, image_types: Sequence[str]) -> list[Path]:
    """The frontal localizer instances of the study beside the CT's series folder, in
    (series number, instance number) order."""
    wanted = {t.upper() for t in image_types}
    found: list[tuple[int, int, Path]] = []
    for series_dir in sorted(p for p in study_dir.iterdir() if p.is_dir() and p != ct_series_dir):
        for path in sorted(series_dir.glob("*.dcm")):
            ds = _header(path)
            if ds is None or not wanted & _image_types(ds) or str(ds.get("PatientID", "")) != patient_id:
                continue
            if is_frontal(ds):
                found.append((int(ds.get("SeriesNumber") or 0), int(ds.get("InstanceNumber") or 0), path))
    return [p for _, _, p in sorted(found)]


def _spacing(ds: Dataset) -> tuple[float, float]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return float(value[0]), float(value[1])
    raise InvalidInputError(
        f"image {ds.get('SOPInstanceUID', '?')} has no Pixel Spacing or Imager Pixel Spacing; "
        "the CXR model needs the image's scale"
    )


def read_radiograph(ds: Dataset, source: str = "localizer") -> Radiograph:
    """One projection image as a Radiograph (module docstring); InvalidInputError when it
    cannot be one (several frames or samples, no spacing)."""
    if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise InvalidInputError(f"image {ds.get('SOPInstanceUID', '?')} is not a single grey-scale frame")
    pixels = ds.pixel_array.astype(np.float32)
    pixels = pixels * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        pixels = float(pixels.max()) - pixels
    geometry = {
        key: float(ds.get(keyword))
        for key, keyword in (
            ("source_to_patient_mm", "DistanceSourceToPatient"),
            ("source_to_detector_mm", "DistanceSourceToDetector"),
        )
        if ds.get(keyword) is not None
    }
    return Radiograph(
        image=np.ascontiguousarray(pixels, dtype=np.float32),
        pixel_spacing_mm=_spacing(ds),
        view=VIEWS.get(str(ds.get("ViewPosition", "") or "AP").upper(), "AP"),
        source=source,
        geometry=geometry,
        sop_uids=(str(ds.SOPInstanceUID),),
    )


def study_localizer(
    present: Sequence[Path], first: Any, image_types: Sequence[str]
) -> tuple[Radiograph, Dataset] | None:
    """The study's frontal localizer beside the CT series whose files are ``present``
    (``first``: one of its datasets), read; None when the study has none (or none readable)."""
    if not present:
        return None
    series_dir = Path(present[0]).parent
    files = localizer_files(series_dir.parent, series_dir, str(first.get("PatientID", "")), image_types)
    for path in reversed(files):
        try:
            ds = pydicom.dcmread(path)
            return read_radiograph(ds, "localizer"), ds
        except (InvalidDicomError, OSError, EOFError, ValueError, AttributeError) as e:
            log.warning("localizer %s of study %s unreadable (%s); not used", path.stem, series_dir.parent.name, e)
    return None
