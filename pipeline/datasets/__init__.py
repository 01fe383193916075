"""Readers of training and evaluation data sets, all yielding ``Case`` objects.

``open_dataset(spec)`` understands:

- ``phantom:count=40,seed=1000,mix=1:1:1:1[,slices=40,size=128,per_patient=1]``
  synthetic phantoms (``pipeline.phantom``);
- a manifest CSV path (``manifest:`` prefix optional), see ``manifest.py``;
- a MosMedData folder (``mosmed:`` prefix optional), see ``mosmed.py``;
- a CC-CCII folder (``ccccii:`` prefix optional), see ``ccccii.py``.

A bad spec, a missing or unreadable file or an unknown label raises ``DatasetError``
(an ``InvalidInputError``) whose message names the file or row and what to do.
"""

from __future__ import annotations

from pathlib import Path

from .base import Case, CaseData, Dataset, DatasetError
from .ccccii import looks_like_ccccii, open_ccccii
from .manifest import open_manifest
from .mosmed import looks_like_mosmed, open_mosmed
from .phantoms import case_localizer, open_phantoms
from .split import patient_split

__all__ = [
    "Case",
    "CaseData",
    "Dataset",
    "DatasetError",
    "case_localizer",
    "open_dataset",
    "patient_split",
    "SPEC_HELP",
]

SPEC_HELP = (
    "'phantom:count=N,seed=S[,mix=1:1:1:1,slices=Z,size=PX,per_patient=K]', a manifest CSV "
    "(columns path,label[,case_id,patient_id,sex,age,stage,lung_mask,lesion_mask]), a MosMedData "
    "folder (CT-0..CT-4) or a CC-CCII folder (NCP/CP/Normal)"
)

_PREFIXES = ("phantom", "manifest", "csv", "mosmed", "ccccii", "cc-ccii")


def open_dataset(spec: str) -> Dataset:
    """Open the data set a spec names (see the module docstring)."""
    try:
        return _open(spec)
    except OSError as e:  # permissions and the like while listing folders or reading a CSV
        raise DatasetError(
            f"data spec {spec!r}: {e.filename or ''}: {e.strerror or e}; check that the files and folders are readable"
        ) from e


def _open(spec: str) -> Dataset:
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError(f"empty data spec; give {SPEC_HELP}")
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    # "C:\data.csv" or "/x:y" are paths, not prefixed specs: only known prefixes count.
    if kind in _PREFIXES and rest:
        if kind == "phantom":
            return open_phantoms(spec)
        path = Path(rest).expanduser()
        if kind in ("manifest", "csv"):
            return open_manifest(path, spec)
        if kind == "mosmed":
            return open_mosmed(path, spec)
        return open_ccccii(path, spec)
    if kind == "phantom":
        return open_phantoms(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return open_manifest(path, spec)
        raise DatasetError(f"{path}: a file but not a manifest .csv; give {SPEC_HELP}")
    if path.is_dir():
        if looks_like_mosmed(path):
            return open_mosmed(path, spec)
        if looks_like_ccccii(path):
            return open_ccccii(path, spec)
        raise DatasetError(
            f"{path}: a folder in no known layout (MosMedData CT-0..CT-4, or CC-CCII "
            f"NCP/CP/Normal); for other data write a manifest CSV. Give {SPEC_HELP}"
        )
    raise DatasetError(f"data spec {spec!r}: no such file or folder, and not a known spec; give {SPEC_HELP}")
