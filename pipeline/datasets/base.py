"""The common shape of every data set: ``Case`` (one scan) and ``Dataset`` (a sequence).

A case knows its label and demographics at once; its voxels are read only when
``Case.load()`` is called, so opening a data set of thousands of scans is cheap and a
broken file is reported when (and where) it is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence, overload

import numpy as np

from ..types import CLASS_NAMES, CTVolume, InvalidInputError

__all__ = ["Case", "CaseData", "Dataset", "DatasetError", "normalise_sex", "parse_age"]


class DatasetError(InvalidInputError):
    """A data set spec, manifest row or file cannot be used (the message says which, and
    what to do)."""


class CaseData(NamedTuple):
    """What ``Case.load()`` returns: the volume and, when the data set has them, masks
    (bool z/y/x, same shape as the volume) and a lobe map (uint8, 1-5 in
    ``pipeline.severity.LOBES`` order, 0 outside the lung; phantoms only). A tuple:
    ``volume, lung, lesion, lobes = case.load()``.
    """

    volume: CTVolume
    lung_mask: np.ndarray | None = None
    lesion_mask: np.ndarray | None = None
    lobe_mask: np.ndarray | None = None


@dataclass(frozen=True)
class Case:
    """One scan of a data set.

    ``label`` is one of CLASS_NAMES; ``sex`` is "M", "F" or None; ``age`` in years or
    None; ``stage`` the scan's rank among the patient's scans by date (as text) or None.
    ``source`` says where the voxels come from (a path, or the phantom recipe);
    ``extras`` holds reader-specific facts (e.g. the MosMedData severity group).
    """

    case_id: str
    patient_id: str
    label: str
    sex: str | None = None
    age: float | None = None
    stage: str | None = None
    source: str = ""
    # Not compared (nor hashed): a Case stays usable as a dict key or set member.
    extras: Mapping[str, str] = field(default_factory=dict, compare=False)
    loader: Callable[[], CaseData] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.label not in CLASS_NAMES:
            raise DatasetError(f"case {self.case_id!r}: label {self.label!r} is not one of {CLASS_NAMES}")
        if not str(self.case_id) or not str(self.patient_id):
            raise DatasetError(f"a case needs a case_id and a patient_id (got {self.case_id!r}, {self.patient_id!r})")
        if self.sex is not None and self.sex not in ("M", "F"):
            raise DatasetError(f"case {self.case_id!r}: sex must be 'M', 'F' or empty, got {self.sex!r}")

    def load(self) -> CaseData:
        """Read the scan (and masks) now; raises DatasetError naming the file on failure."""
        if self.loader is None:
            raise DatasetError(f"case {self.case_id!r} has no loader (built by hand without one)")
        try:
            data = self.loader()
        except OSError as e:  # permissions, vanished files, full disks: name the file
            raise DatasetError(
                f"case {self.case_id!r}: {e.filename or self.source}: {e.strerror or e}; "
                "check that the file is readable"
            ) from e
        shape = data.volume.shape
        for name, mask in (("lung_mask", data.lung_mask), ("lesion_mask", data.lesion_mask)):
            if mask is not None and mask.shape != shape:
                raise DatasetError(
                    f"case {self.case_id!r}: {name} has shape {mask.shape} but the volume {shape} "
                    f"({self.source}); the mask must be drawn on the same grid as the scan"
                )
        return data


class Dataset(Sequence[Case]):
    """An ordered, immutable collection of cases and a description for model cards."""

    def __init__(
        self, spec: str, kind: str, cases: Sequence[Case], synthetic: bool, details: Mapping[str, Any] | None = None
    ) -> None:
        ids = [c.case_id for c in cases]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise DatasetError(f"data set {spec!r} has duplicate case ids {dup}; make case_id unique")
        self.spec = spec
        self.kind = kind
        self.cases: tuple[Case, ...] = tuple(cases)
        self.synthetic = synthetic
        self._details = dict(details or {})

    @overload
    def __getitem__(self, index: int) -> Case: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Case]: ...

    def __getitem__(self, index):
        return self.cases[index]

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __repr__(self) -> str:
        return f"Dataset(kind={self.kind!r}, cases={len(self)}, spec={self.spec!r})"

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: spec, kind, counts per label, patients, details."""
        labels = {name: sum(1 for c in self.cases if c.label == name) for name in CLASS_NAMES}
        return {
            "spec": self.spec,
            "kind": self.kind,
            "synthetic": self.synthetic,
            "cases": len(self.cases),
            "patients": len({c.patient_id for c in self.cases}),
            "labels": labels,
            **self._details,
        }


def normalise_sex(value: str | None, where: str) -> str | None:
    """'M'/'F' from the usual spellings; None for empty; DatasetError otherwise."""
    if value is None:
        return None
    text = str(value).strip().upper()
    if not text:
        return None
    if text in ("M", "MALE", "MAN"):
        return "M"
    if text in ("F", "FEMALE", "WOMAN", "W"):
        return "F"
    if text in ("O", "U", "OTHER", "UNKNOWN"):  # DICOM's "O" and common spellings of unknown
        return None
    raise DatasetError(f"{where}: sex {value!r} is not M or F (leave it empty if unknown)")


def parse_severity_grade(value: str | None, where: str) -> str | None:
    """A MosMedData-style severity grade ("CT-2", "ct2", "2") as "CT-0" .. "CT-4"; None
    when empty. Raises DatasetError naming the row for anything else."""
    text = (value or "").strip().upper().replace(" ", "")
    if not text:
        return None
    digits = text[3:] if text.startswith("CT-") else text[2:] if text.startswith("CT") else text
    if digits in ("0", "1", "2", "3", "4"):
        return f"CT-{digits}"
    raise DatasetError(f"{where}: severity {value!r} is not a grade CT-0 .. CT-4")


def parse_age(value: str | None, where: str) -> float | None:
    """Age in years from '61', '61.5' or DICOM's '061Y' (also 'M' months, 'W' weeks,
    'D' days); None for empty; DatasetError otherwise."""
    import math
    import re

    if value is None or not str(value).strip():
        return None
    text = str(value).strip().upper()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([YMWD]?)", text)
    if m is None:
        raise DatasetError(f"{where}: age {value!r} is not a number of years (leave it empty if unknown)")
    years = float(m.group(1)) / {"": 1, "Y": 1, "M": 12, "W": 52.1775, "D": 365.25}[m.group(2)]
    if not math.isfinite(years) or years > 130:
        raise DatasetError(f"{where}: age {value!r} is not a plausible age in years")
    return years
