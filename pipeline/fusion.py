"""Task-specific fusion: slice scores -> case scores (METHOD.md, module 3). Pure numpy.

A case is pneumonia if any of its slices is, so each pneumonia class is fused with the
mean of its K highest slice scores, while non-pneumonia is the mean over all slices:

* multi-way: ``[mean(p_non), topK(p_cap), topK(p_flu), topK(p_covid)]``, normalised to
  sum 1; the label is the largest.
* pneumonia vs non-pneumonia: per slice ``p_cap + p_flu + p_covid``; its top-K mean
  against the all-slice mean of ``p_non``, normalised (the pneumonia share is reported).
* COVID-19 vs CAP and COVID-19 vs influenza: the other classes are muted (only the two
  columns kept, renormalised per slice); both are pneumonia classes, so each takes its
  top-K mean, and the pair is normalised (the COVID-19 share is reported).

K is ``params.top_k``, capped at the number of classified slices.
"""

from __future__ import annotations

import numpy as np

from .params import ChainParams
from .types import CLASS_NAMES, TASK_NAMES, CaseScores, InvalidInputError, SliceScores

NON, CAP, FLU, COVID = (CLASS_NAMES.index(n) for n in ("non_pneumonia", "cap", "influenza", "covid19"))
#: Guards a division when every score of a pair is zero (then the pair is 0.5 / 0.5).
_EPS = 1e-12


def top_k_mean(values: np.ndarray, k: int) -> float:
    """Mean of the ``k`` largest of ``values`` (all of them when there are fewer)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise InvalidInputError("top_k_mean needs at least one value")
    if k < 1:
        raise InvalidInputError(f"top-K needs K >= 1, got {k}")
    k = min(int(k), v.size)
    return float(np.mean(np.partition(v, v.size - k)[v.size - k :]))


def _share(first: float, second: float) -> float:
    """``first / (first + second)``, 0.5 when both are zero."""
    total = first + second
    return 0.5 if total < _EPS else first / total


def multiway(probabilities: np.ndarray, top_k: int) -> np.ndarray:
    """Fused 4-class probabilities (sum 1) of an (n_slices, 4) slice score matrix."""
    p = _check(probabilities)
    fused = np.array([p[:, NON].mean()] + [top_k_mean(p[:, c], top_k) for c in (CAP, FLU, COVID)])
    total = fused.sum()
    if total < _EPS:
        return np.full(len(CLASS_NAMES), 1.0 / len(CLASS_NAMES))
    return fused / total


def pneumonia_vs_non(probabilities: np.ndarray, top_k: int) -> float:
    """Fused probability of pneumonia (any of CAP, influenza, COVID-19)."""
    p = _check(probabilities)
    pneumonia = p[:, CAP] + p[:, FLU] + p[:, COVID]
    return _share(top_k_mean(pneumonia, top_k), float(p[:, NON].mean()))


def covid_vs(probabilities: np.ndarray, other: int, top_k: int) -> float:
    """Fused probability of COVID-19 against one other pneumonia class (others muted)."""
    p = _check(probabilities)
    pair = p[:, [COVID, other]]
    sums = pair.sum(axis=1, keepdims=True)
    # A slice where both columns are zero says nothing about the pair: count it as even.
    pair = np.where(sums < _EPS, 0.5, pair / np.maximum(sums, _EPS))
    return _share(top_k_mean(pair[:, 0], top_k), top_k_mean(pair[:, 1], top_k))


def fuse(probabilities: np.ndarray, top_k: int) -> CaseScores:
    """Case scores of the four tasks from an (n_slices, 4) slice score matrix."""
    p = _check(probabilities)
    k = min(int(top_k), p.shape[0])
    multi = multiway(p, k)
    tasks = {
        TASK_NAMES[0]: pneumonia_vs_non(p, k),
        TASK_NAMES[1]: covid_vs(p, CAP, k),
        TASK_NAMES[2]: covid_vs(p, FLU, k),
    }
    return CaseScores(
        probabilities={name: float(v) for name, v in zip(CLASS_NAMES, multi, strict=True)},
        tasks={name: float(tasks[name]) for name in TASK_NAMES},
        label=CLASS_NAMES[int(np.argmax(multi))],
        top_k=k,
    )


def fuse_slice_scores(scores: SliceScores, params: ChainParams) -> CaseScores:
    """``fuse`` of a SliceScores with ``params.top_k``."""
    return fuse(scores.probabilities, params.top_k)


def _check(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(CLASS_NAMES) or p.shape[0] == 0:
        raise InvalidInputError(
            f"fusion needs an (n_slices >= 1, {len(CLASS_NAMES)}) score matrix, got shape {p.shape}"
        )
    if not np.all(np.isfinite(p)) or p.min() < 0:
        raise InvalidInputError("fusion needs finite, non-negative slice scores")
    return p
