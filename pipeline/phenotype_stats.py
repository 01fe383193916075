"""Statistics of the phenotype study between two classes (METHOD.md, module 6): pure numpy,
scipy and scikit-learn over a feature table; no files, no models.

For a comparison (COVID-19 vs CAP, COVID-19 vs influenza) on the cases of its two classes:

1. Candidate features: a feature missing (NaN) in more than
   ``PhenotypeStudyParams.max_missing_fraction`` of the cases, or constant over them, is
   left out (and listed); it can separate nothing.
2. LASSO: missing values imputed with the feature's median over the comparison's cases,
   every feature standardised (zero mean, unit variance), then scikit-learn's
   ``LogisticRegressionCV`` with an L1 penalty (liblinear) over a log grid of strengths,
   stratified folds (seeded), scored by log loss. The strength is chosen with the
   one-standard-error rule (the strongest penalty whose mean cross-validated log loss is
   within one standard error of the best: the sparsest model the data cannot tell from
   the best one; the best alone keeps noise features on small cohorts), and the L1 model
   refitted on all the comparison's cases with it. Rule: the features with a non-zero
   coefficient, the ``max_selected`` (12, as in the paper) largest in absolute value when
   there are more. A positive coefficient points towards the positive class (COVID-19).
3. Per candidate feature, on its measured values: Welch's two-sample t-test (unequal
   variances) and the two-sample Kolmogorov-Smirnov test (scipy), each corrected for
   multiple testing over the comparison's candidates with Benjamini-Hochberg (false
   discovery rate; ``fdr_alpha`` is the level the report calls significant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

from .params import PhenotypeStudyParams
from .types import CLASS_NAMES, PipelineError


class PhenotypeStudyError(PipelineError):
    """The study cannot run on these cases (the message says why and what to do)."""


@dataclass(frozen=True)
class Comparison:
    """Two classes compared: ``positive`` (coefficients > 0 point to it) vs ``negative``."""

    name: str
    positive: str
    negative: str

    def __post_init__(self) -> None:
        for cls in (self.positive, self.negative):
            if cls not in CLASS_NAMES:
                raise ValueError(f"Comparison class {cls!r} is not one of {CLASS_NAMES}")


#: The paper's comparisons: COVID-19 against each other pneumonia.
COMPARISONS = (
    Comparison("covid19_vs_cap", "covid19", "cap"),
    Comparison("covid19_vs_influenza", "covid19", "influenza"),
)


@dataclass(frozen=True)
class FeatureTable:
    """Features per case: ``values[i, j]`` is feature ``names[j]`` of case ``case_ids[i]``
    (float64, NaN where the case has no value)."""

    case_ids: tuple[str, ...]
    labels: tuple[str, ...]
    names: tuple[str, ...]
    values: np.ndarray

    def __post_init__(self) -> None:
        shape = (len(self.case_ids), len(self.names))
        if not isinstance(self.values, np.ndarray) or self.values.shape != shape:
            raise ValueError(f"FeatureTable.values must have shape {shape}, got {getattr(self.values, 'shape', None)}")
        if len(self.labels) != len(self.case_ids):
            raise ValueError("FeatureTable.labels must give one label per case")
        if len(set(self.names)) != len(self.names):
            raise ValueError("FeatureTable.names must be unique")

    def of_classes(self, classes: Sequence[str]) -> FeatureTable:
        """The rows of the cases whose label is in ``classes``."""
        rows = [i for i, label in enumerate(self.labels) if label in classes]
        return FeatureTable(
            tuple(self.case_ids[i] for i in rows),
            tuple(self.labels[i] for i in rows),
            self.names,
            self.values[rows],
        )


@dataclass(frozen=True)
class FeatureTest:
    """Univariate tests of one feature; ``*_p_bh`` are Benjamini-Hochberg adjusted."""

    feature: str
    n_positive: int
    n_negative: int
    mean_positive: float
    mean_negative: float
    t_statistic: float
    t_p: float
    t_p_bh: float
    ks_statistic: float
    ks_p: float
    ks_p_bh: float


@dataclass(frozen=True)
class LassoSelection:
    """The features the L1 logistic regression kept, with their coefficients (on
    standardised features, in order of decreasing absolute value)."""

    features: tuple[str, ...]
    coefficients: tuple[float, ...]
    c: float  # the inverse regularisation strength chosen (one-standard-error rule)
    cv_folds: int
    cv_log_loss: float  # mean cross-validated log loss at ``c``
    n_nonzero: int  # non-zero coefficients at ``c`` (before the cap at max_selected)


@dataclass(frozen=True)
class ComparisonResult:
    """Everything the study found for one comparison; ``note`` says why a part is
    missing (too few cases)."""

    comparison: Comparison
    n_positive: int
    n_negative: int
    candidates: tuple[str, ...]
    left_out: tuple[str, ...]
    selection: LassoSelection | None
    tests: tuple[FeatureTest, ...]
    note: str = ""


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (scipy), NaN kept where the p-value is NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        adjusted[finite] = stats.false_discovery_control(p[finite], method="bh")
    return adjusted


def candidate_columns(values: np.ndarray, max_missing_fraction: float) -> np.ndarray:
    """Indices of the columns measured in enough rows and not constant over them."""
    finite = np.isfinite(values)
    enough = finite.mean(axis=0) >= 1.0 - max_missing_fraction if len(values) else np.zeros(values.shape[1], bool)
    keep = []
    for j in np.flatnonzero(enough):
        column = values[finite[:, j], j]
        if column.size >= 2 and np.ptp(column) > 0:
            keep.append(int(j))
    return np.asarray(keep, dtype=np.int64)


def standardised_imputed(values: np.ndarray) -> np.ndarray:
    """Columns with NaN set to their median, then scaled to zero mean and unit variance."""
    x = np.array(values, dtype=np.float64)
    medians = np.nanmedian(x, axis=0)
    rows, cols = np.nonzero(~np.isfinite(x))
    x[rows, cols] = medians[cols]
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


def select_features_lasso(
    values: np.ndarray, is_positive: np.ndarray, names: Sequence[str], params: PhenotypeStudyParams
) -> LassoSelection:
    """The L1 logistic regression's selection (the rule is in the module docstring)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import l1_min_c

    y = np.asarray(is_positive, dtype=bool)
    folds = min(params.cv_folds, int(y.sum()), int((~y).sum()))
    if folds < 2:
        raise PhenotypeStudyError("LASSO needs at least 2 cases of each class")
    x = standardised_imputed(values)
    # The LASSO path as glmnet lays it out: from the strength that keeps one feature down
    # by lasso_path_ratio (near-unpenalised fits of a small cohort separate it by chance).
    smallest_c = l1_min_c(x, y.astype(int), loss="log")
    search = LogisticRegressionCV(
        Cs=smallest_c * np.logspace(0, np.log10(params.lasso_path_ratio), params.lasso_cs),
        l1_ratios=(1.0,),
        solver="liblinear",
        cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=params.seed),
        scoring="neg_log_loss",
        max_iter=params.lasso_max_iter,
        random_state=params.seed,
        use_legacy_attributes=False,
        refit=False,
    ).fit(x, y.astype(int))
    grid = np.asarray(search.Cs_, dtype=np.float64)
    at = one_standard_error_choice(np.asarray(search.scores_, dtype=np.float64).reshape(folds, grid.size))
    model = LogisticRegression(
        C=float(grid[at]), l1_ratio=1.0, solver="liblinear", max_iter=params.lasso_max_iter, random_state=params.seed
    ).fit(x, y.astype(int))
    coefficients = np.asarray(model.coef_, dtype=np.float64).ravel()
    nonzero = [int(j) for j in np.flatnonzero(coefficients)]
    # Largest |coefficient| first; equal ones in name order, so the choice is reproducible.
    order = sorted(nonzero, key=lambda j: (-abs(coefficients[j]), names[j]))[: params.max_selected]
    return LassoSelection(
        features=tuple(names[j] for j in order),
        coefficients=tuple(float(coefficients[j]) for j in order),
        c=float(grid[at]),
        cv_folds=folds,
        cv_log_loss=float(-np.asarray(search.scores_).reshape(folds, grid.size)[:, at].mean()),
        n_nonzero=len(nonzero),
    )


def one_standard_error_choice(fold_scores: np.ndarray) -> int:
    """Index of the strongest penalty (smallest C; the grid increases) whose mean score
    over the folds (rows) is within one standard error of the best mean: the sparsest
    model the cross-validation cannot tell from the best one."""
    mean = fold_scores.mean(axis=0)
    standard_error = fold_scores.std(axis=0, ddof=1) / np.sqrt(fold_scores.shape[0])
    best = int(np.argmax(mean))
    return int(np.flatnonzero(mean >= mean[best] - standard_error[best])[0])


def univariate_tests(values: np.ndarray, is_positive: np.ndarray, names: Sequence[str]) -> tuple[FeatureTest, ...]:
    """Welch's t-test and the KS test per column on its measured values, both adjusted
    with Benjamini-Hochberg over the columns."""
    y = np.asarray(is_positive, dtype=bool)
    raw = []
    for j in range(values.shape[1]):
        pos, neg = values[y, j], values[~y, j]
        pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
        if min(pos.size, neg.size) >= 2:
            t = stats.ttest_ind(pos, neg, equal_var=False)
            ks = stats.ks_2samp(pos, neg)
            t_stat, t_p, ks_stat, ks_p = float(t.statistic), float(t.pvalue), float(ks.statistic), float(ks.pvalue)
        else:
            t_stat = t_p = ks_stat = ks_p = float("nan")
        raw.append((pos, neg, t_stat, t_p, ks_stat, ks_p))
    t_bh = benjamini_hochberg([r[3] for r in raw])
    ks_bh = benjamini_hochberg([r[5] for r in raw])
    return tuple(
        FeatureTest(
            feature=names[j],
            n_positive=int(pos.size),
            n_negative=int(neg.size),
            mean_positive=float(pos.mean()) if pos.size else float("nan"),
            mean_negative=float(neg.mean()) if neg.size else float("nan"),
            t_statistic=t_stat,
            t_p=t_p,
            t_p_bh=float(t_bh[j]),
            ks_statistic=ks_stat,
            ks_p=ks_p,
            ks_p_bh=float(ks_bh[j]),
        )
        for j, (pos, neg, t_stat, t_p, ks_stat, ks_p) in enumerate(raw)
    )


def compare(table: FeatureTable, comparison: Comparison, params: PhenotypeStudyParams) -> ComparisonResult:
    """LASSO selection and univariate tests between the comparison's two classes."""
    sub = table.of_classes((comparison.positive, comparison.negative))
    is_positive = np.array([label == comparison.positive for label in sub.labels], dtype=bool)
    n_pos, n_neg = int(is_positive.sum()), int((~is_positive).sum())
    if min(n_pos, n_neg) < params.min_cases_per_class:
        note = (
            f"not run: {n_pos} {comparison.positive} and {n_neg} {comparison.negative} cases with features; "
            f"each class needs at least {params.min_cases_per_class}"
        )
        return ComparisonResult(comparison, n_pos, n_neg, (), (), None, (), note)
    kept = candidate_columns(sub.values, params.max_missing_fraction)
    candidates = tuple(sub.names[j] for j in kept)
    left_out = tuple(n for n in sub.names if n not in set(candidates))
    if not candidates:
        note = "not run: every feature is missing in too many cases or constant"
        return ComparisonResult(comparison, n_pos, n_neg, (), left_out, None, (), note)
    values = sub.values[:, kept]
    return ComparisonResult(
        comparison,
        n_pos,
        n_neg,
        candidates,
        left_out,
        select_features_lasso(values, is_positive, candidates, params),
        univariate_tests(values, is_positive, candidates),
    )
