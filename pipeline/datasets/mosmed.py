"""MosMedData (COVID19_1110): NIfTI volumes in CT-0 .. CT-4 folders.

CT-0 holds scans without signs of viral pneumonia (``non_pneumonia``); CT-1 .. CT-4 are
COVID-19 of rising severity (``covid19``; the group is kept in ``Case.extras``). The
folders may sit in the given folder or in its ``studies/`` sub-folder; lesion masks, when
present, are ``masks/<study>_mask.nii[.gz]`` beside ``studies/``. One scan per patient.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from .base import Case, CaseData, Dataset, DatasetError
from .images import is_nifti, read_mask, read_volume

__all__ = ["open_mosmed", "looks_like_mosmed", "MOSMED_GROUPS"]

MOSMED_GROUPS = {"CT-0": "non_pneumonia", "CT-1": "covid19", "CT-2": "covid19", "CT-3": "covid19", "CT-4": "covid19"}


def _studies_dir(root: Path) -> Path | None:
    for cand in (root, root / "studies"):
        if cand.is_dir() and any((cand / g).is_dir() for g in MOSMED_GROUPS):
            return cand
    return None


def looks_like_mosmed(root: Path) -> bool:
    return _studies_dir(Path(root)) is not None


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def _load(path: Path, lesion: Path | None) -> CaseData:
    volume = read_volume(path, orient_lps=True)
    return CaseData(volume, None, read_mask(lesion, volume.shape, orient_lps=True) if lesion else None)


def open_mosmed(root: Path, spec: str | None = None) -> Dataset:
    root = Path(root)
    studies = _studies_dir(root)
    if studies is None:
        raise DatasetError(
            f"{root}: not a MosMedData folder; expected folders {', '.join(MOSMED_GROUPS)} "
            "(in it or in its studies/ sub-folder) holding .nii/.nii.gz volumes"
        )
    mask_dirs = [d for d in (studies.parent / "masks", studies / "masks") if d.is_dir()]
    cases = []
    groups = {}
    for group, label in MOSMED_GROUPS.items():
        folder = studies / group
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p))
        groups[group] = len(files)
        for f in files:
            stem = _stem(f)
            lesion = next(
                (
                    d / f"{stem}_mask{ext}"
                    for d in mask_dirs
                    for ext in (".nii.gz", ".nii")
                    if (d / f"{stem}_mask{ext}").is_file()
                ),
                None,
            )
            cases.append(
                Case(
                    case_id=stem,
                    patient_id=stem,
                    label=label,
                    source=str(f),
                    extras={"group": group, "severity": group},
                    loader=partial(_load, f, lesion),
                )
            )
    if not cases:
        raise DatasetError(f"{studies}: the CT-0 .. CT-4 folders hold no .nii/.nii.gz volumes")
    details = {
        "root": str(root.resolve()),
        "groups": groups,
        "lesion_masks": sum(1 for d in mask_dirs for _ in d.glob("*_mask.nii*")),
    }
    return Dataset(spec or str(root), "mosmeddata", cases, synthetic=False, details=details)
