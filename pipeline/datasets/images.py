"""Reading scans from disk: NIfTI volumes and DICOM series folders (SimpleITK), and
stacks of 2-D slice images (PIL). Every failure is a DatasetError naming the file.

SimpleITK indexes x/y/z; everything here returns z/y/x arrays and (z, y, x) spacing as
``pipeline.types.CTVolume`` expects. ``origin_mm`` and ``direction`` stay in SimpleITK's
own (x, y, z) convention, as CTVolume documents. The data set readers reorient NIfTI
volumes and masks to LPS axes (``reorient_to_lps``); DICOM series keep the
order SimpleITK sorts them in, so that ``slice_uids`` stay with their slices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..types import CTVolume, InvalidInputError
from .base import DatasetError

__all__ = [
    "NIFTI_SUFFIXES",
    "IMAGE_SUFFIXES",
    "is_nifti",
    "read_volume",
    "read_nifti_lps",
    "VoxelGrid",
    "read_mask",
    "read_slice_stack",
    "slice_number",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: DICOM tags read along with a series (SOP Instance UID, Instance Number).
_TAG_SOP_UID, _TAG_INSTANCE = "0008|0018", "0020|0013"


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in NIFTI_SUFFIXES)


def _sitk():
    import SimpleITK as sitk  # imported late: only readers of real files need it

    return sitk


def read_nifti_image(path: Path, what: str = "volume"):
    """The SimpleITK image of a NIfTI file; a DatasetError naming the file if unreadable."""
    try:
        return _sitk().ReadImage(str(path))
    except RuntimeError as e:
        hint = "; is the file complete?" if what == "volume" else ""
        raise DatasetError(f"{path}: cannot read the NIfTI {what} ({str(e).strip().splitlines()[-1]}){hint}") from e


def check_ct_image(image, path: Path) -> None:
    """A DatasetError unless the SimpleITK image is a 3-D grey-value volume."""
    if image.GetDimension() != 3:
        raise DatasetError(f"{path}: a {image.GetDimension()}-D image; a CT volume must be 3-D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(
            f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel; expected a grey-value CT volume"
        )


def image_to_volume(image, path: Path, slice_uids: Sequence[str] = (), slice_numbers: Sequence[int] = ()) -> CTVolume:
    sitk = _sitk()
    check_ct_image(image, path)
    hu = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)  # z, y, x
    sx, sy, sz = image.GetSpacing()
    ox, oy, oz = image.GetOrigin()
    try:
        return CTVolume(
            hu=np.ascontiguousarray(hu),
            spacing_mm=(float(sz), float(sy), float(sx)),
            origin_mm=(float(ox), float(oy), float(oz)),
            direction=tuple(float(v) for v in image.GetDirection()),
            slice_uids=tuple(slice_uids),
            slice_numbers=tuple(slice_numbers),
        )
    except InvalidInputError as e:
        raise DatasetError(f"{path}: {e}") from e


def _read_dicom_folder(folder: Path) -> CTVolume:
    sitk = _sitk()
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as e:
        raise DatasetError(f"{folder}: cannot list DICOM series ({e})") from e
    if not series:
        raise DatasetError(
            f"{folder}: no DICOM series found; give a folder of one CT series' files or a NIfTI volume (.nii/.nii.gz)"
        )
    if len(series) > 1:
        raise DatasetError(
            f"{folder}: {len(series)} DICOM series in one folder; put each series in "
            "its own folder and list them as separate rows"
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise DatasetError(
            f"{folder}: the DICOM series cannot be read ({str(e).strip().splitlines()[-1]}); "
            "check that every file is a readable CT image of one series"
        ) from e
    uids, numbers = [], []
    for i in range(len(files)):
        uid = reader.GetMetaData(i, _TAG_SOP_UID).strip() if reader.HasMetaDataKey(i, _TAG_SOP_UID) else ""
        num = reader.GetMetaData(i, _TAG_INSTANCE).strip() if reader.HasMetaDataKey(i, _TAG_INSTANCE) else ""
        uids.append(uid)
        numbers.append(int(num) if re.fullmatch(r"[+-]?\d+", num) else None)
    keep_uids = uids if all(uids) else []
    keep_numbers = [n for n in numbers if n is not None]
    if len(keep_numbers) != len(numbers):
        keep_numbers = []
    return image_to_volume(image, folder, keep_uids, keep_numbers)


@dataclass(frozen=True)
class VoxelGrid:
    """The voxel grid of an input file (SimpleITK x/y/z convention)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    #: The file's slice axis is the LPS volume's z axis (possibly reversed): the volume's
    #: slices carry the file's own slice indices. False: an oblique or non-axial file.
    axial: bool = True


def read_nifti_lps(path: Path) -> tuple[CTVolume, VoxelGrid]:
    """A NIfTI volume reoriented to LPS axes, as DICOM series and the training data are
    (NIfTI files are often stored flipped, RAS), and the file's own grid for saving a
    mask back onto it.

    When the file's slice axis is the volume's z axis (possibly reversed), each z slice
    is labelled with the file's slice index (``slice_numbers``), so the reported slices
    are the file's own; otherwise ``VoxelGrid.axial`` is False and slices are z indices.
    """
    image = read_nifti_image(path)
    check_ct_image(image, path)  # before reorienting, which needs a 3-D image
    size, spacing, origin, direction = image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    oriented = reorient_to_lps(image, path)
    del image
    nz = oriented.GetSize()[2]
    file_axes = np.asarray(direction, dtype=float).reshape(3, 3)
    z_axis = np.asarray(oriented.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    along = file_axes.T @ z_axis  # the volume's z axis in the file's index axes
    axial = abs(abs(along[2]) - 1.0) < 1e-3
    numbers: tuple[int, ...] = ()
    if axial and along[2] < 0:
        numbers = tuple(range(nz - 1, -1, -1))  # the file stores slices top to bottom
    grid = VoxelGrid(
        tuple(int(v) for v in size),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in origin),
        tuple(float(v) for v in direction),
        axial,
    )
    return image_to_volume(oriented, path, slice_numbers=numbers), grid


def read_volume(path: Path, orient_lps: bool = False) -> CTVolume:
    """A CT volume from a NIfTI file or a DICOM series folder.

    With ``orient_lps`` a NIfTI volume is reoriented to LPS axes (the data set readers
    do this, so that training and evaluation see one orientation); without it the
    file's own voxel grid is kept (what ``dicomnode analyze`` needs to save a mask on
    the input's grid). DICOM series are never reoriented.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(
            f"{path}: no such file or folder; check the path (paths in a manifest are relative to the CSV file)"
        )
    if path.is_dir():
        return _read_dicom_folder(path)
    if not is_nifti(path):
        raise DatasetError(f"{path}: not a NIfTI volume (.nii, .nii.gz) nor a DICOM series folder")
    image = read_nifti_image(path, "volume")
    return image_to_volume(reorient_to_lps(image, path) if orient_lps else image, path)


def reorient_to_lps(image, path: Path):
    """Reorient a NIfTI image to LPS axes (rows anterior to posterior, columns patient's
    right to left, z inferior to superior), as DICOM series read: NIfTI files are often
    stored flipped (RAS), and the networks expect one orientation. Masks get the same."""
    sitk = _sitk()
    if image.GetDimension() != 3:
        return image
    try:
        return sitk.DICOMOrient(image, "LPS")
    except RuntimeError as e:
        raise DatasetError(f"{path}: cannot reorient the volume to LPS ({str(e).strip().splitlines()[-1]})") from e


def read_mask(path: Path, shape: tuple[int, int, int], orient_lps: bool = False) -> np.ndarray:
    """A bool z/y/x mask (voxels > 0) from a NIfTI file, checked against ``shape``;
    ``orient_lps`` as for ``read_volume`` (use the same value for a scan and its masks)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: mask file not found; check the path (relative to the CSV)")
    if not is_nifti(path):
        raise DatasetError(f"{path}: masks must be NIfTI volumes (.nii, .nii.gz)")
    image = read_nifti_image(path, "mask")
    mask = _sitk().GetArrayFromImage(reorient_to_lps(image, path) if orient_lps else image) > 0
    if mask.shape != tuple(shape):
        raise DatasetError(
            f"{path}: mask has shape {mask.shape} (z, y, x) but its scan {tuple(shape)}; "
            "draw the mask on the scan's own grid"
        )
    return mask


_NUMBER = re.compile(r"\d+")


def slice_number(path: Path) -> int:
    """The slice number in a file name (its last run of digits)."""
    found = _NUMBER.findall(path.name.split(".")[0])
    if not found:
        raise DatasetError(
            f"{path}: the file name holds no slice number; slices are ordered by it (e.g. 0001.png, 0002.png)"
        )
    return int(found[-1])


def read_slice_stack(files: Sequence[Path], where: Path) -> np.ndarray:
    """Grey values (float32 z/y/x, 0..255) of 2-D images, in the given order."""
    from PIL import Image, UnidentifiedImageError

    slices: list[np.ndarray] = []
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("L"), dtype=np.float32)
        except (OSError, UnidentifiedImageError) as e:
            raise DatasetError(f"{f}: cannot read the slice image ({e})") from e
        if slices and arr.shape != slices[0].shape:
            raise DatasetError(
                f"{f}: slice is {arr.shape[1]}x{arr.shape[0]} px but the first slice of "
                f"{where} is {slices[0].shape[1]}x{slices[0].shape[0]}; one scan must have "
                "one matrix size"
            )
        slices.append(arr)
    if not slices:
        raise DatasetError(f"{where}: no slice images ({', '.join(IMAGE_SUFFIXES)})")
    return np.stack(slices)
