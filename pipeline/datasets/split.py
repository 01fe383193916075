"""Patient-level splits: every scan of a patient goes to the same cohort."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Sequence

import numpy as np

from ..types import CLASS_NAMES
from .base import Case, DatasetError

__all__ = ["patient_split"]


def _fractions(fractions: float | Sequence[float]) -> list[float]:
    if isinstance(fractions, (int, float)):
        f = float(fractions)
        if not 0.0 < f < 1.0:
            raise DatasetError(
                f"a single split fraction must be between 0 and 1 (the second cohort's share), got {fractions}"
            )
        return [1.0 - f, f]
    out = [float(f) for f in fractions]
    if len(out) < 2 or any(not f >= 0 for f in out) or sum(out) <= 0:
        raise DatasetError(
            f"split fractions must be two or more non-negative numbers with a positive sum, got {tuple(fractions)}"
        )
    total = sum(out)
    return [f / total for f in out]


def patient_split(cases: Sequence[Case], fractions: float | Sequence[float], seed: int = 0) -> tuple[list[Case], ...]:
    """Split cases into cohorts by patient, stratified by label, deterministically.

    ``fractions`` are the cohorts' shares of the cases (normalised to sum 1), or one
    number f meaning (1 - f, f). Patients are grouped by their most frequent label,
    shuffled with ``seed``, and each goes to the cohort furthest below its target share
    of that label's scans. Cases keep their input order inside each cohort. No patient
    is in two cohorts.
    """
    shares = _fractions(fractions)
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(cases):
        by_patient[str(c.patient_id)].append(i)
    by_label: dict[str, list[str]] = defaultdict(list)
    for pid, idx in by_patient.items():
        counts = Counter(cases[i].label for i in idx)
        # Most frequent label; ties broken by class order so the result is stable.
        label = max(counts, key=lambda lab: (counts[lab], -CLASS_NAMES.index(lab)))
        by_label[label].append(pid)
    rng = np.random.default_rng([int(seed), 0x5B117])
    cohort_of: dict[str, int] = {}
    for label in CLASS_NAMES:
        pids = sorted(by_label.get(label, []))
        rng.shuffle(pids)
        total = sum(len(by_patient[p]) for p in pids)
        assigned = [0] * len(shares)
        for pid in pids:
            deficit = [shares[k] * total - assigned[k] for k in range(len(shares))]
            k = int(np.argmax(deficit))
            cohort_of[pid] = k
            assigned[k] += len(by_patient[pid])
    out: tuple[list[Case], ...] = tuple([] for _ in shares)
    for c in cases:
        out[cohort_of[str(c.patient_id)]].append(c)
    return out
