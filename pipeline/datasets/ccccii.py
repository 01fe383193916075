"""CC-CCII: ``<class>/<patient>/<scan>/<slice image>``.

Classes: NCP = ``covid19``, CP = ``cap`` (common pneumonia), Normal = ``non_pneumonia``
(folder names matched without regard to case). Slices are ordered by the number in
their file names. The images hold grey values, not HU: they are mapped to pseudo-HU as
``v / 255 * 1500 - 1400`` (as the paper's code did). Pixel spacing and slice thickness
are unknown: the volume says 1 mm (``ASSUMED_SPACING_MM``), so volumes in ml are not
meaningful for this data set.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..types import CTVolume
from .base import Case, CaseData, Dataset, DatasetError
from .images import IMAGE_SUFFIXES, read_slice_stack, slice_number

__all__ = ["open_ccccii", "looks_like_ccccii", "CCCII_CLASSES", "grey_to_pseudo_hu", "ASSUMED_SPACING_MM"]

CCCII_CLASSES = {"ncp": "covid19", "cp": "cap", "normal": "non_pneumonia"}
#: Grey value -> pseudo-HU: v / GREY_MAX * GREY_SPAN_HU + GREY_OFFSET_HU (paper code).
GREY_MAX, GREY_SPAN_HU, GREY_OFFSET_HU = 255.0, 1500.0, -1400.0
ASSUMED_SPACING_MM = (1.0, 1.0, 1.0)


def grey_to_pseudo_hu(grey):
    """Map 8-bit grey values to pseudo-HU (-1400 .. 100)."""
    return grey / GREY_MAX * GREY_SPAN_HU + GREY_OFFSET_HU


def _class_dirs(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        return {}
    return {p.name.lower(): p for p in root.iterdir() if p.is_dir() and p.name.lower() in CCCII_CLASSES}


def looks_like_ccccii(root: Path) -> bool:
    return bool(_class_dirs(Path(root)))


def _images(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def _ordered(files: list[Path], scan: Path) -> list[Path]:
    numbered = sorted((slice_number(f), f.name, f) for f in files)
    nums = [n for n, _, _ in numbered]
    if len(set(nums)) != len(nums):
        dup = sorted({n for n in nums if nums.count(n) > 1})[:3]
        raise DatasetError(
            f"{scan}: slice number(s) {dup} appear in more than one file name; each slice needs its own number"
        )
    return [f for _, _, f in numbered]


def _load(scan: Path) -> CaseData:
    files = _images(scan) if scan.is_dir() else []
    grey = read_slice_stack(_ordered(files, scan), scan)
    hu = grey_to_pseudo_hu(grey).astype("float32")
    return CaseData(CTVolume(hu=hu, spacing_mm=ASSUMED_SPACING_MM))


def open_ccccii(root: Path, spec: str | None = None) -> Dataset:
    root = Path(root)
    classes = _class_dirs(root)
    if not classes:
        raise DatasetError(
            f"{root}: not a CC-CCII folder; expected class folders NCP, CP and/or Normal "
            "holding <patient>/<scan>/<slice images>"
        )
    cases = []
    counts = {}
    for key in sorted(classes):
        label = CCCII_CLASSES[key]
        class_dir = classes[key]
        n = 0
        for patient in sorted(p for p in class_dir.iterdir() if p.is_dir()):
            # A patient folder with images directly in it is one scan (seen in some copies).
            scans = sorted(s for s in patient.iterdir() if s.is_dir())
            if _images(patient):
                scans = [patient] + scans
            for scan in scans:
                files = _images(scan)
                if not files:
                    continue
                _ordered(files, scan)  # a bad file name is reported now, not mid-training
                scan_name = "0" if scan == patient else scan.name
                cases.append(
                    Case(
                        case_id=f"{class_dir.name}-{patient.name}-{scan_name}",
                        patient_id=patient.name,
                        label=label,
                        source=str(scan),
                        extras={"class_folder": class_dir.name},
                        loader=partial(_load, scan),
                    )
                )
                n += 1
        counts[class_dir.name] = n
    if not cases:
        raise DatasetError(
            f"{root}: the class folders hold no <patient>/<scan>/ folders of slice images ({', '.join(IMAGE_SUFFIXES)})"
        )
    details = {
        "root": str(root.resolve()),
        "scans_per_class_folder": counts,
        "hu": "pseudo-HU = grey / 255 * 1500 - 1400",
        "spacing_mm": "unknown (1 mm assumed)",
    }
    return Dataset(spec or str(root), "cc-ccii", cases, synthetic=False, details=details)
