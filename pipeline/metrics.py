"""Evaluation metrics of the paper's protocol (Table 2 / Table 3), on plain numpy arrays.

Everything here is a pure function: labels are integer class indices (CLASS_NAMES order)
or booleans, scores are floats. A metric that is undefined on its input (an AUC with one
class only, a sensitivity without positives) returns NaN rather than raising, so that
the bootstrap can skip and count such resamples.

The AUC is computed from ranks (Mann-Whitney U with average ranks for ties), which is
the same number as the trapezoidal ROC area scikit-learn reports, and fast enough to be
recomputed for a thousand resamples of thousands of cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.stats import rankdata

# --------------------------------------------------------------------------- basics


def _as_bool(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype != bool:
        y = y.astype(bool)
    return y


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the positives ``y_true`` (bool).

    NaN when only one class is present (the AUC is undefined then).
    """
    y = _as_bool(y_true).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"roc_auc: y_true has {y.size} values but score has {s.size}")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties: a tie counts one half, as on the ROC
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n,) integer labels -> (n, n_classes) bool."""
    labels = np.asarray(labels, dtype=np.int64)
    return labels[:, None] == np.arange(n_classes)[None, :]


def per_class_auc(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest AUC of each column of ``probs`` (n, C); NaN for an absent class."""
    y = one_hot(labels, probs.shape[1])
    return np.array([roc_auc(y[:, c], probs[:, c]) for c in range(probs.shape[1])])


def micro_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Micro-averaged multi-way AUC: every (case, class) pair is one binary decision
    (the paper's code reports this one as "multi-way AUC")."""
    y = one_hot(labels, probs.shape[1])
    return roc_auc(y.ravel(), np.asarray(probs).ravel())


def macro_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Unweighted mean of the one-vs-rest AUCs; NaN unless every class is present
    (scikit-learn refuses then too)."""
    aucs = per_class_auc(labels, probs)
    return float(np.mean(aucs)) if np.all(np.isfinite(aucs)) else float("nan")


def sensitivity(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """TP / (TP + FN); NaN without positives."""
    y, p = _as_bool(y_true), _as_bool(y_pred)
    n_pos = int(y.sum())
    return float(np.sum(y & p) / n_pos) if n_pos else float("nan")


def specificity(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """TN / (TN + FP); NaN without negatives."""
    y, p = _as_bool(y_true), _as_bool(y_pred)
    n_neg = int((~y).sum())
    return float(np.sum(~y & ~p) / n_neg) if n_neg else float("nan")


def f1_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 of binary predictions (NaN when there is no positive, true or predicted)."""
    t, p = _as_bool(y_true), _as_bool(y_pred)
    tp = int(np.count_nonzero(t & p))
    denom = int(np.count_nonzero(t)) + int(np.count_nonzero(p))
    return float("nan") if denom == 0 else 2.0 * tp / denom


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    return float(np.mean(labels == predicted)) if labels.size else float("nan")


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts, rows = truth, columns = prediction (scikit-learn's layout)."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return m


def quadratic_weighted_kappa(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Cohen's kappa with quadratic weights of two ordinal ratings 0..n_classes-1 (how
    MosMedData-style grades are compared): 1 = full agreement, 0 = chance; NaN when the
    expected disagreement is 0 (every rating in one class on both sides)."""
    observed = confusion_counts(labels, predicted, n_classes).astype(np.float64)
    total = observed.sum()
    if total == 0:
        return float("nan")
    i, j = np.indices((n_classes, n_classes))
    weights = (i - j) ** 2 / max(1, (n_classes - 1) ** 2)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / total
    disagreement = float((weights * expected).sum())
    return float("nan") if disagreement == 0 else 1.0 - float((weights * observed).sum()) / disagreement


def bland_altman(truth: np.ndarray, measured: np.ndarray) -> tuple[float, float, float]:
    """Bias (mean of measured - truth) and the 95% limits of agreement (bias -/+ 1.96 SD
    of the differences, sample SD); NaN without at least two pairs."""
    diff = np.asarray(measured, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    if diff.size < 2:
        return float("nan"), float("nan"), float("nan")
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    return bias, bias - 1.96 * sd, bias + 1.96 * sd


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two bool masks; 1.0 when both are empty (they agree)."""
    a, b = _as_bool(a), _as_bool(b)
    if a.shape != b.shape:
        raise ValueError(f"dice: mask shapes differ {a.shape} vs {b.shape}")
    return dice_from_counts(int(np.sum(a & b)), int(a.sum()), int(b.sum()))


def dice_from_counts(overlap: float, a: float, b: float) -> float:
    """Dice from voxel counts: 2 * overlap / (a + b); 1.0 when both are empty. Pooled
    over cases, the counts are sums (what the lesion Dice of an evaluation reports)."""
    total = a + b
    return 1.0 if total == 0 else float(2.0 * overlap / total)


# ------------------------------------------------------------------ curves for plots


def _counts_per_threshold(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """True and false positives at every distinct threshold (highest first), and the
    numbers of positives and negatives (at least 1, so rates stay defined)."""
    y = _as_bool(y_true).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    return tp, fp, max(int(y.sum()), 1), max(int((~y).sum()), 1)


def roc_curve_points(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of every distinct threshold, from (0, 0) to (1, 1)."""
    tp, fp, n_pos, n_neg = _counts_per_threshold(y_true, score)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def pr_curve_points(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) of every distinct threshold, highest threshold first."""
    tp, fp, n_pos, _ = _counts_per_threshold(y_true, score)
    return np.r_[0.0, tp / n_pos], np.r_[1.0, tp / np.maximum(tp + fp, 1)]


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the step PR curve, sum over thresholds of (R_k - R_k-1) * P_k
    (scikit-learn's average_precision_score); NaN without positives."""
    y = _as_bool(y_true).ravel()
    if not y.any():
        return float("nan")
    recall, precision = pr_curve_points(y, score)
    return float(np.sum(np.diff(recall) * precision[1:]))


def net_benefit(y_true: np.ndarray, score: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Decision-curve net benefit of treating the cases with score >= pt:
    TP/n - FP/n * pt / (1 - pt), for each threshold pt in [0, 1)."""
    y = _as_bool(y_true).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    pt = np.asarray(thresholds, dtype=np.float64)
    if np.any((pt < 0) | (pt >= 1)):
        raise ValueError("net_benefit: thresholds must lie in [0, 1)")
    n = y.size
    treated = s[None, :] >= pt[:, None]
    tp = np.sum(treated & y[None, :], axis=1)
    fp = np.sum(treated & ~y[None, :], axis=1)
    return tp / n - fp / n * pt / (1.0 - pt)


def net_benefit_treat_all(y_true: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit of treating everyone: prevalence - (1 - prevalence) * pt / (1 - pt).
    (Treating no one has net benefit 0 at every threshold.)"""
    y = _as_bool(y_true).ravel()
    prevalence = float(y.mean())
    pt = np.asarray(thresholds, dtype=np.float64)
    return prevalence - (1.0 - prevalence) * pt / (1.0 - pt)


# ------------------------------------------------------------------------ bootstrap


@dataclass(frozen=True)
class Estimate:
    """A figure with its bootstrap percentile interval.

    ``n_skipped`` counts the resamples on which the figure was undefined (a class absent)
    and which were left out of the interval.
    """

    value: float
    ci_low: float
    ci_high: float
    n_resamples: int
    n_skipped: int

    def as_dict(self) -> dict[str, float | None]:
        """The JSON shape of every figure: {"value", "ci_low", "ci_high"} (NaN -> None)."""
        return {
            "value": _finite_or_none(self.value),
            "ci_low": _finite_or_none(self.ci_low),
            "ci_high": _finite_or_none(self.ci_high),
        }


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) case indices drawn with replacement, seeded. The same matrix is
    used for every figure, so the intervals of different figures are paired."""
    if n < 1:
        raise ValueError("resample_indices: no cases to resample")
    if n_resamples < 0:
        raise ValueError("resample_indices: the number of resamples cannot be negative")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_resamples, n), dtype=np.int64)


def bootstrap(statistic: Callable[[np.ndarray], float], resamples: np.ndarray, confidence: float = 0.95) -> Estimate:
    """Point estimate on all cases plus the percentile interval over ``resamples``.

    ``statistic`` takes an index array into the cases and returns a float (NaN when
    undefined on those cases). ``resamples`` comes from ``resample_indices``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap: confidence must lie in (0, 1), got {confidence}")
    n = resamples.shape[1] if resamples.ndim == 2 and resamples.shape[0] else None
    if n is None:
        raise ValueError(
            "bootstrap: resamples must be a non-empty (n_resamples, n) array; "
            "use resample_indices(n, n_resamples, seed)"
        )
    value = float(statistic(np.arange(n)))
    values = np.array([statistic(idx) for idx in resamples], dtype=np.float64)
    ok = np.isfinite(values)
    n_skipped = int((~ok).sum())
    if ok.any():
        alpha = (1.0 - confidence) / 2.0
        lo, hi = np.percentile(values[ok], [100.0 * alpha, 100.0 * (1.0 - alpha)])
    else:
        lo = hi = float("nan")
    return Estimate(
        value=value, ci_low=float(lo), ci_high=float(hi), n_resamples=int(resamples.shape[0]), n_skipped=n_skipped
    )


def point_only(value: float) -> Estimate:
    """A figure without interval (no resamples asked for)."""
    return Estimate(value=float(value), ci_low=float("nan"), ci_high=float("nan"), n_resamples=0, n_skipped=0)


def pooled_slices(per_case: Sequence[np.ndarray], index: np.ndarray) -> np.ndarray:
    """Concatenate the per-case slice arrays of the cases in ``index`` (repeats
    included), so slice-level figures are resampled by case, keeping slices of a
    case together."""
    parts = [per_case[i] for i in index]
    return np.concatenate(parts) if parts else np.zeros(0)


# ------------------------------------------------------------------ reader study


@dataclass(frozen=True)
class ReaderRow:
    """One row of the Table 3 comparison (a reader, the AI, or a pooled row)."""

    name: str
    n_cases: int
    correct: int
    wrong: int
    sensitivity: float  # for the task's positive class
    specificity: float


def reader_row(name: str, correct: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> ReaderRow:
    """Correct/wrong counts of one reader (``correct`` per case read) and the
    sensitivity/specificity of the reader's positive calls ``y_pred`` for ``y_true``."""
    correct, y, p = _as_bool(correct), _as_bool(y_true), _as_bool(y_pred)
    if not correct.shape == y.shape == p.shape:
        raise ValueError(f"reader_row: {name!r} needs one correct/truth/call per case read")
    n_ok = int(correct.sum())
    return ReaderRow(
        name=name,
        n_cases=int(correct.size),
        correct=n_ok,
        wrong=int(correct.size) - n_ok,
        sensitivity=sensitivity(y, p),
        specificity=specificity(y, p),
    )


def pooled_reader_rows(correct_by_reader: Sequence[Sequence[bool | None]]) -> tuple[ReaderRow, ReaderRow]:
    """ "any reader" (a case is correct when at least one reader got it right) and
    "all readers" (correct only when every reader who read it got it right).

    ``correct_by_reader[r][i]`` says whether reader r was right on case i, None when r
    did not read i; cases no reader read are left out. Sensitivity/specificity are not
    defined for a pooled row (there is no single call) and are NaN.
    """
    if not correct_by_reader:
        raise ValueError("pooled_reader_rows: no readers")
    n = len(correct_by_reader[0])
    any_ok, all_ok, read = np.zeros(n, bool), np.ones(n, bool), np.zeros(n, bool)
    for marks in correct_by_reader:
        if len(marks) != n:
            raise ValueError("pooled_reader_rows: every reader needs one entry (or None) per case")
        for i, ok in enumerate(marks):
            if ok is None:
                continue
            read[i] = True
            any_ok[i] |= bool(ok)
            all_ok[i] &= bool(ok)
    m = int(read.sum())
    nan = float("nan")
    return (
        ReaderRow("any reader", m, int(any_ok[read].sum()), m - int(any_ok[read].sum()), nan, nan),
        ReaderRow("all readers", m, int(all_ok[read].sum()), m - int(all_ok[read].sum()), nan, nan),
    )
