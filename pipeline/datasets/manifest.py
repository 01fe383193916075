"""Manifest CSV: one row per scan, paths relative to the CSV.

Columns: ``path`` (DICOM series folder or NIfTI volume) and ``label`` (one of
CLASS_NAMES) are required; ``case_id``, ``patient_id``, ``sex``, ``age``, ``stage``,
``lung_mask``, ``lesion_mask`` (NIfTI) and ``severity`` (the MosMedData-style grade,
CT-0 .. CT-4; kept in ``Case.extras["severity"]``) are optional. Every row is checked when the
manifest is opened (files exist, label known, ids unique); voxels are read on load.
"""

from __future__ import annotations

import csv
import hashlib
from functools import partial
from pathlib import Path

from ..types import CLASS_NAMES
from .base import Case, CaseData, Dataset, DatasetError, normalise_sex, parse_age, parse_severity_grade
from .images import read_mask, read_volume

__all__ = ["open_manifest", "MANIFEST_COLUMNS"]

MANIFEST_COLUMNS = (
    "path",
    "label",
    "case_id",
    "patient_id",
    "sex",
    "age",
    "stage",
    "lung_mask",
    "lesion_mask",
    "severity",
)
_REQUIRED = ("path", "label")


def _load(path: Path, lung: Path | None, lesion: Path | None) -> CaseData:
    volume = read_volume(path, orient_lps=True)
    return CaseData(
        volume,
        read_mask(lung, volume.shape, orient_lps=True) if lung else None,
        read_mask(lesion, volume.shape, orient_lps=True) if lesion else None,
    )


def _case_id_from(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_table(csv_path: Path) -> tuple[bytes, list[str], list[list[str]]]:
    """The manifest's bytes, its checked header (lower case) and its rows."""
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: manifest CSV not found")
    raw = csv_path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{csv_path}: not UTF-8 text ({e}); save the manifest as UTF-8 CSV") from e
    rows = list(csv.reader(text.splitlines()))
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise DatasetError(
            f"{csv_path}: empty manifest; the first row must be a header with at least "
            f"the columns {', '.join(_REQUIRED)}"
        )
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise DatasetError(
            f"{csv_path}: header {rows[0]} lacks column(s) {', '.join(missing)}; "
            f"columns are {', '.join(MANIFEST_COLUMNS)} (path and label required)"
        )
    unknown = [h for h in header if h and h not in MANIFEST_COLUMNS]
    if unknown:
        raise DatasetError(
            f"{csv_path}: unknown column(s) {', '.join(unknown)}; known columns are {', '.join(MANIFEST_COLUMNS)}"
        )
    if len(set(header)) != len(header):
        raise DatasetError(f"{csv_path}: a column appears twice in the header {rows[0]}")
    return raw, header, rows[1:]


def _resolve(base: Path, value: str) -> Path:
    return (base / value).resolve() if not Path(value).is_absolute() else Path(value)


def _case_from_row(rec: dict[str, str], where: str, base: Path) -> Case:
    """One checked row as a Case (its files exist, its label and fields are valid)."""
    if not rec["path"]:
        raise DatasetError(f"{where}: empty path")
    label = rec["label"]
    if label not in CLASS_NAMES:
        raise DatasetError(f"{where}: label {label!r} is not one of {', '.join(CLASS_NAMES)}")
    path = _resolve(base, rec["path"])
    if not path.exists():
        raise DatasetError(
            f"{where}: {path} does not exist (path {rec['path']!r} is read relative to the CSV's folder {base})"
        )
    masks = {}
    for col in ("lung_mask", "lesion_mask"):
        value = rec.get(col, "")
        if value:
            mpath = _resolve(base, value)
            if not mpath.is_file():
                raise DatasetError(f"{where}: {col} {mpath} does not exist (read relative to {base})")
            masks[col] = mpath
    grade = parse_severity_grade(rec.get("severity"), where)
    return Case(
        case_id=rec.get("case_id") or _case_id_from(path),
        patient_id=rec.get("patient_id") or rec.get("case_id") or _case_id_from(path),
        label=label,
        sex=normalise_sex(rec.get("sex"), where),
        age=parse_age(rec.get("age"), where),
        stage=rec.get("stage") or None,
        source=str(path),
        extras={"severity": grade} if grade else {},
        loader=partial(_load, path, masks.get("lung_mask"), masks.get("lesion_mask")),
    )


def open_manifest(csv_path: Path, spec: str | None = None) -> Dataset:
    csv_path = Path(csv_path)
    raw, header, rows = _read_table(csv_path)
    base = csv_path.parent
    cases = []
    seen: dict[str, int] = {}
    for line_no, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank lines are harmless
        where = f"{csv_path} line {line_no}"
        if len(row) > len(header):
            raise DatasetError(
                f"{where}: {len(row)} fields but the header has {len(header)}; quote fields that contain commas"
            )
        rec = {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header)}
        case = _case_from_row(rec, where, base)
        if case.case_id in seen:
            raise DatasetError(
                f"{where}: case_id {case.case_id!r} already used on line {seen[case.case_id]}; "
                f"give each row a unique case_id"
            )
        seen[case.case_id] = line_no
        cases.append(case)
    if not cases:
        raise DatasetError(f"{csv_path}: the manifest has a header but no rows")
    details = {"manifest": str(csv_path.resolve()), "manifest_sha256": hashlib.sha256(raw).hexdigest()}
    return Dataset(spec or str(csv_path), "manifest", cases, synthetic=False, details=details)
