"""A CT series on disk -> ``pipeline.types.CTVolume`` (HU, z/y/x) plus its source datasets.

Slices are sorted along the slice normal (the cross product of the row and column
directions of ImageOrientationPatient) by the projection of ImagePositionPatient on it,
or by InstanceNumber when the series has no geometry. HU = stored value x RescaleSlope +
RescaleIntercept, slice by slice. Compressed transfer syntaxes are decoded by pydicom's
pixel plugins (pylibjpeg, pyjpegls).

A series the chain cannot use raises ``SeriesRejected`` whose ``code`` names the problem
(for the database and for tests) and whose message says what was wrong and what to do.
Messages name UIDs and attribute keywords only, never patient identities.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipeline.types import CTVolume

from .config import SelectionSection
from .errors import SeriesRejected  # re-exported: callers import it from here too

#: Fewer slices than this is not a chest CT the chain can read: the configuration's default
#: (``[selection] min_slices_readable``), for callers without a configuration.
MIN_SLICES: int = SelectionSection().min_slices_readable
#: Instances of these image types are refused: the configuration's default.
DEFAULT_REFUSED_IMAGE_TYPES: tuple[str, ...] = SelectionSection().refuse_image_types
#: Direction cosines of two slices agree within this.
ORIENTATION_TOLERANCE = 1e-3
#: Two slice positions closer than this (mm) are the same position.
DUPLICATE_TOLERANCE_MM = 1e-3
#: A gap may differ from the median gap by this fraction (or 0.05 mm) before the
#: spacing is called non-uniform: scanners round positions to a few decimals.
GAP_RELATIVE_TOLERANCE = 0.05
GAP_ABSOLUTE_TOLERANCE_MM = 0.05
#: Plausible CT matrix sizes (Rows, Columns): checked before any pixel is allocated.
MIN_MATRIX, MAX_MATRIX = 16, 4096
#: Largest volume the node allocates (float32 HU), bytes.
MAX_VOLUME_BYTES = 8 * 2**30
#: Rescale slopes and intercepts a CT can have, and the HU range of real CT values
#: (air -1000, metal a few thousand; 12-16 bit scanners stay well inside it).
MAX_ABS_SLOPE, MAX_ABS_INTERCEPT = 100.0, 1e5
HU_PLAUSIBLE = (-1e4, 1e5)
#: Transfer syntaxes whose pixel data is stored as it is (its length can be checked).
NATIVE_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")


def load_series(
    paths: Sequence[Path | str],
    min_slices: int = MIN_SLICES,
    refuse_image_types: Sequence[str] = DEFAULT_REFUSED_IMAGE_TYPES,
) -> tuple[CTVolume, list[Dataset]]:
    """Read one CT series: the volume in HU (z/y/x) and the datasets in the same z order.

    ``refuse_image_types``: ``[selection] refuse_image_types`` (the localizer rule; the
    worker passes the node's). ``min_slices``: fewer slices is not a volume the chain can
    read; which series are worth a job is ``[selection] min_slices``, applied when a
    series completes (dicomnode.series), so a job of a series cut short still runs."""
    files = [Path(p) for p in paths]
    if not files:
        raise SeriesRejected("the series has no files; pass the files of one CT series", "too_few_slices")
    datasets = [_read(p) for p in files]
    _check_instances(datasets, min_slices, refuse_image_types)
    order, spacing_z, origin, direction = _geometry(datasets)
    datasets = [datasets[i] for i in order]
    hu = _pixels_hu(datasets)
    row_mm, col_mm = _pixel_spacing(datasets[0])
    volume = CTVolume(
        hu=hu,
        spacing_mm=(float(spacing_z), row_mm, col_mm),
        origin_mm=origin,
        direction=direction,
        slice_uids=tuple(str(ds.SOPInstanceUID) for ds in datasets),
        slice_numbers=tuple(_instance_number(ds, z) for z, ds in enumerate(datasets)),
    )
    return volume, datasets


# ------------------------------------------------------------------------- reading


def _read(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise SeriesRejected(
            f"{path.name} is not a readable DICOM file ({type(e).__name__}: {e}); pass only the files of one CT series",
            "unreadable",
        ) from e


def _instance_number(ds: Dataset, default_index: int) -> int:
    value = ds.get("InstanceNumber")
    try:
        return int(value) if value is not None and str(value) != "" else default_index + 1
    except (TypeError, ValueError):
        return default_index + 1


# -------------------------------------------------------------------------- checks


def _check_instances(datasets: list[Dataset], min_slices: int, refused_types: Sequence[str]) -> None:
    refused = {t.upper() for t in refused_types}
    for ds in datasets:
        uid = ds.get("SOPInstanceUID", "?")
        if "PixelData" not in ds:
            raise SeriesRejected(
                f"instance {uid} has no pixel data; send the image series, not reports or presentation states",
                "no_pixel_data",
            )
        raw_type = ds.get("ImageType") or []
        image_type = [str(raw_type).upper()] if isinstance(raw_type, str) else [str(v).upper() for v in raw_type]
        hit = refused.intersection(image_type)
        if hit:
            what = "a localizer (scout) image" if "LOCALIZER" in hit else f"of image type {'/'.join(sorted(hit))}"
            raise SeriesRejected(f"instance {uid} is {what}; send the axial CT series instead", "localizer")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise SeriesRejected(
                f"instance {uid} has {ds.SamplesPerPixel} samples per pixel; a CT series has one (grey values)",
                "unsupported_pixels",
            )
    for keyword, code in (
        ("PatientID", "mixed_patient"),
        ("StudyInstanceUID", "mixed_study"),
        ("SeriesInstanceUID", "mixed_series"),
    ):
        values = {str(ds.get(keyword, "")) for ds in datasets}
        if len(values) > 1:
            raise SeriesRejected(
                f"the instances disagree on {keyword} ({len(values)} different values); "
                f"pass the files of one series of one patient",
                code,
            )
    sizes = {(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)) for ds in datasets}
    if len(sizes) > 1:
        raise SeriesRejected(
            f"the slices have different sizes {sorted(sizes)} (Rows x Columns); a CT volume needs one size",
            "inconsistent_size",
        )
    if len(datasets) < min_slices:
        raise SeriesRejected(
            f"the series has {len(datasets)} slices, fewer than {min_slices}; send the complete chest CT series",
            "too_few_slices",
        )
    rows, cols = next(iter(sizes))
    if not (MIN_MATRIX <= rows <= MAX_MATRIX and MIN_MATRIX <= cols <= MAX_MATRIX):
        raise SeriesRejected(
            f"the slices declare {rows} x {cols} pixels (Rows x Columns); a CT slice has "
            f"{MIN_MATRIX} to {MAX_MATRIX} per side",
            "implausible_geometry",
        )
    if len(datasets) * rows * cols * 4 > MAX_VOLUME_BYTES:
        raise SeriesRejected(
            f"{len(datasets)} slices of {rows} x {cols} would need more than "
            f"{MAX_VOLUME_BYTES // 2**30} GiB; send a chest CT series",
            "implausible_geometry",
        )
    for ds in datasets:
        _check_rescale(ds)
        _check_native_length(ds, rows, cols)


def _check_rescale(ds: Dataset) -> None:
    uid = ds.get("SOPInstanceUID", "?")
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        raise SeriesRejected(
            f"instance {uid} has a RescaleSlope/RescaleIntercept that is not a number", "implausible_rescale"
        ) from None
    if (
        not (np.isfinite(slope) and np.isfinite(intercept))
        or not (0 < abs(slope) <= MAX_ABS_SLOPE)
        or abs(intercept) > MAX_ABS_INTERCEPT
    ):
        raise SeriesRejected(
            f"instance {uid} has RescaleSlope {slope:g} and RescaleIntercept {intercept:g}; a CT "
            f"has a slope of at most {MAX_ABS_SLOPE:g} and an intercept within "
            f"+-{MAX_ABS_INTERCEPT:g}",
            "implausible_rescale",
        )


def _check_native_length(ds: Dataset, rows: int, cols: int) -> None:
    """Uncompressed pixel data must hold a whole frame: a truncated file says so (not "a codec is missing")."""
    ts = str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", ""))
    if ts not in NATIVE_TRANSFER_SYNTAXES:
        return
    bits = int(ds.get("BitsAllocated", 16) or 16)
    need = rows * cols * int(ds.get("SamplesPerPixel", 1) or 1) * max(1, bits // 8)
    have = len(ds.PixelData)
    if have < need:
        raise SeriesRejected(
            f"instance {ds.get('SOPInstanceUID', '?')}: its pixel data holds {have} bytes where "
            f"{rows} x {cols} pixels of {bits} bits need {need}: the file is truncated or "
            f"damaged; send the slice again",
            "truncated_pixels",
        )


def _pixel_spacing(ds: Dataset) -> tuple[float, float]:
    ps = ds.get("PixelSpacing")
    if not ps or len(ps) != 2 or float(ps[0]) <= 0 or float(ps[1]) <= 0:
        raise SeriesRejected(
            f"instance {ds.get('SOPInstanceUID', '?')} has no valid PixelSpacing; the chain needs millimetres",
            "no_geometry",
        )
    return float(ps[0]), float(ps[1])


def along_normal(
    orientation: Sequence[float],
    positions: Sequence[Sequence[float]] | np.ndarray,
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(slice order, sorted positions along the slice normal in mm, the unit normal) of
    slices with one ImageOrientationPatient (6 values) and their ImagePositionPatient rows."""
    row_dir, col_dir = np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row_dir, col_dir)
    norm = float(np.linalg.norm(normal))
    if norm < 0.5:
        raise SeriesRejected("ImageOrientationPatient has parallel row and column directions", "no_geometry")
    normal /= norm
    along = np.asarray(positions, dtype=float) @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    return order, along[order], normal


def spacing_problem(sorted_along: np.ndarray) -> tuple[str, int] | None:
    """The first break of even slice spacing, as (code, index of the gap), or None: two
    slices at one position (``duplicate_position``) or a gap off the median spacing
    (``non_uniform_spacing``, a missing slice). The one rule of a whole series, used by the
    volume loader and by completion on release (dicomnode.series)."""
    gaps = np.diff(np.asarray(sorted_along, dtype=float))
    if gaps.size == 0:
        return None
    if np.any(gaps < DUPLICATE_TOLERANCE_MM):
        return "duplicate_position", int(np.argmax(gaps < DUPLICATE_TOLERANCE_MM))
    spacing = float(np.median(gaps))
    tolerance = max(GAP_ABSOLUTE_TOLERANCE_MM, GAP_RELATIVE_TOLERANCE * spacing)
    bad = np.flatnonzero(np.abs(gaps - spacing) > tolerance)
    return ("non_uniform_spacing", int(bad[0])) if bad.size else None


def _geometry(datasets: list[Dataset]) -> tuple[list[int], float, tuple[float, float, float], tuple[float, ...]]:
    """Slice order, slice spacing (mm), origin and direction (SimpleITK convention)."""
    have_geometry = all("ImageOrientationPatient" in ds and "ImagePositionPatient" in ds for ds in datasets)
    if not have_geometry:
        return _geometry_from_instance_numbers(datasets)
    orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    if orientations.shape[1] != 6:
        raise SeriesRejected("ImageOrientationPatient must hold 6 values", "no_geometry")
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        raise SeriesRejected(
            "the slices have different orientations (ImageOrientationPatient): the "
            "series mixes planes or stacks; send one axial series",
            "mixed_orientation",
        )
    row_dir, col_dir = orientations[0, :3], orientations[0, 3:]
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order, sorted_along, normal = along_normal(orientations[0], positions)
    gaps = np.diff(sorted_along)
    problem = spacing_problem(sorted_along)
    if problem is not None and problem[0] == "duplicate_position":
        i = problem[1]
        raise SeriesRejected(
            f"two slices share the position {sorted_along[i]:.3f} mm along the slice normal "
            f"(instances {datasets[order[i]].get('SOPInstanceUID', '?')} and "
            f"{datasets[order[i + 1]].get('SOPInstanceUID', '?')}); the series holds a "
            f"duplicate or two acquisitions",
            "duplicate_position",
        )
    spacing = float(np.median(gaps))
    if problem is not None:
        i = problem[1]
        raise SeriesRejected(
            f"non-uniform slice spacing: a gap of {gaps[i]:.3f} mm after {sorted_along[i]:.3f} mm "
            f"where the series spacing is {spacing:.3f} mm (a missing slice?); send the "
            f"complete series",
            "non_uniform_spacing",
        )
    direction = np.stack([row_dir, col_dir, normal], axis=1)  # columns: x, y, z axes
    origin = tuple(float(v) for v in positions[order[0]])
    return order, spacing, origin, tuple(float(v) for v in direction.ravel())  # type: ignore[return-value]


def _geometry_from_instance_numbers(datasets: list[Dataset]):
    numbers = [_instance_number(ds, i) for i, ds in enumerate(datasets)]
    if len(set(numbers)) != len(numbers):
        raise SeriesRejected(
            "the series has no ImagePositionPatient/ImageOrientationPatient and repeats "
            "InstanceNumbers, so its slice order is unknown",
            "duplicate_position",
        )
    ds0 = datasets[0]
    spacing = ds0.get("SpacingBetweenSlices") or ds0.get("SliceThickness")
    if not spacing or float(spacing) <= 0:
        raise SeriesRejected(
            "the series has neither slice positions nor SpacingBetweenSlices/SliceThickness; "
            "the chain cannot measure volumes",
            "no_geometry",
        )
    order = [int(i) for i in np.argsort(numbers, kind="stable")]
    return order, float(spacing), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


# -------------------------------------------------------------------------- pixels


def _pixels_hu(datasets: list[Dataset]) -> np.ndarray:
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    hu = np.empty((len(datasets), rows, cols), dtype=np.float32)

    def decode(z: int) -> None:
        ds = datasets[z]
        try:
            stored = ds.pixel_array
        except Exception as e:  # pydicom raises several types for codecs it lacks
            raise SeriesRejected(
                f"instance {ds.get('SOPInstanceUID', '?')}: pixel data in transfer syntax "
                f"{ds.file_meta.get('TransferSyntaxUID', '?')} cannot be decoded ({e}); install the "
                f"pydicom pixel plugins (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pyjpegls)",
                "unsupported_pixels",
            ) from e
        if stored.shape != (rows, cols):
            raise SeriesRejected(
                f"instance {ds.get('SOPInstanceUID', '?')} holds pixel data of shape "
                f"{stored.shape}; expected one {rows} x {cols} frame",
                "unsupported_pixels",
            )
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        np.multiply(stored, slope, out=hu[z], casting="unsafe")
        hu[z] += intercept
        low, high = float(hu[z].min()), float(hu[z].max())
        if low < HU_PLAUSIBLE[0] or high > HU_PLAUSIBLE[1]:
            raise SeriesRejected(
                f"instance {ds.get('SOPInstanceUID', '?')}: its values rescale to {low:g}..{high:g} "
                f"HU, outside any CT's range; check RescaleSlope/RescaleIntercept",
                "implausible_rescale",
            )

    # Decoding compressed frames runs in C and releases the GIL: a few threads help.
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(decode, range(len(datasets))))
    return hu
