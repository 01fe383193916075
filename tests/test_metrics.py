"""pipeline.metrics against scikit-learn, the bootstrap, decision curves and readers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, cohen_kappa_score, confusion_matrix, roc_auc_score, roc_curve

from pipeline import metrics as M

N_CLASSES = 4


def _scores(n: int, seed: int, signal: float = 1.5, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Labels 0..3 and softmax probabilities that carry some signal."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, size=n)
    logits = rng.normal(size=(n, N_CLASSES))
    logits[np.arange(n), labels] += signal
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if ties:  # rounding makes many tied scores, the case where AUC definitions differ
        probs = np.round(probs, 1)
    return labels, probs


@pytest.mark.parametrize("seed,ties", [(0, False), (1, False), (2, True), (3, True)])
def test_auc_equals_sklearn(seed: int, ties: bool) -> None:
    labels, probs = _scores(60, seed, ties=ties)
    for c in range(N_CLASSES):
        assert M.roc_auc(labels == c, probs[:, c]) == pytest.approx(roc_auc_score(labels == c, probs[:, c]), abs=1e-12)
    if not ties:  # sklearn requires rows summing to 1 for the multi-class forms
        assert M.micro_auc(labels, probs) == pytest.approx(
            roc_auc_score(labels, probs, multi_class="ovr", average="micro"), abs=1e-12
        )
        assert M.macro_auc(labels, probs) == pytest.approx(
            roc_auc_score(labels, probs, multi_class="ovr", average="macro"), abs=1e-12
        )
        np.testing.assert_allclose(
            M.per_class_auc(labels, probs), roc_auc_score(labels, probs, multi_class="ovr", average=None), atol=1e-12
        )
    onehot = np.eye(N_CLASSES, dtype=bool)[labels]
    assert M.micro_auc(labels, probs) == pytest.approx(roc_auc_score(onehot, probs, average="micro"), abs=1e-12)


def test_auc_undefined_with_one_class() -> None:
    assert np.isnan(M.roc_auc(np.ones(5, bool), np.linspace(0, 1, 5)))
    labels, probs = _scores(30, 4)
    labels[labels == 2] = 1
    aucs = M.per_class_auc(labels, probs)
    assert np.isnan(aucs[2]) and np.all(np.isfinite(aucs[[0, 1, 3]]))
    assert np.isnan(M.macro_auc(labels, probs))


@pytest.mark.parametrize("seed", [0, 5])
def test_sensitivity_specificity_equal_confusion_matrix(seed: int) -> None:
    labels, probs = _scores(80, seed)
    for c in range(N_CLASSES):
        y, pred = labels == c, probs[:, c] >= 0.5
        tn, fp, fn, tp = confusion_matrix(y, pred, labels=[False, True]).ravel()
        assert M.sensitivity(y, pred) == pytest.approx(tp / (tp + fn))
        assert M.specificity(y, pred) == pytest.approx(tn / (tn + fp))
    predicted = probs.argmax(axis=1)
    np.testing.assert_array_equal(
        M.confusion_counts(labels, predicted, N_CLASSES), confusion_matrix(labels, predicted, labels=range(N_CLASSES))
    )
    assert M.accuracy(labels, predicted) == pytest.approx(np.mean(labels == predicted))


def test_sensitivity_undefined_without_positives() -> None:
    assert np.isnan(M.sensitivity(np.zeros(4, bool), np.ones(4, bool)))
    assert np.isnan(M.specificity(np.ones(4, bool), np.ones(4, bool)))


def test_roc_curve_points_match_sklearn() -> None:
    labels, probs = _scores(50, 6, ties=True)
    y, s = labels == 3, probs[:, 3]
    fpr, tpr = M.roc_curve_points(y, s)
    ref_fpr, ref_tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(M.roc_auc(y, s))


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_equals_sklearn(ties: bool) -> None:
    labels, probs = _scores(70, 8, ties=ties)
    for c in range(N_CLASSES):
        assert M.average_precision(labels == c, probs[:, c]) == pytest.approx(
            average_precision_score(labels == c, probs[:, c]), abs=1e-12
        )


def test_dice() -> None:
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2] = True  # 8 voxels
    b[0, 1:3] = True  # 8 voxels, 4 shared
    assert M.dice(a, b) == pytest.approx(2 * 4 / 16)
    assert M.dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_bootstrap_contains_estimate_and_narrows() -> None:
    widths = []
    for n in (40, 400):
        labels, probs = _scores(n, 7)
        y, s = labels == 3, probs[:, 3]
        res = M.resample_indices(n, 300, seed=0)
        est = M.bootstrap(lambda idx, y=y, s=s: M.roc_auc(y[idx], s[idx]), res)
        assert est.value == pytest.approx(roc_auc_score(y, s))
        assert est.ci_low <= est.value <= est.ci_high
        assert est.n_resamples == 300 and est.n_skipped == 0
        widths.append(est.ci_high - est.ci_low)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(10) expected


def test_bootstrap_is_seeded_and_skips_undefined_resamples() -> None:
    y = np.zeros(12, bool)
    y[0] = True  # one positive: many resamples miss it
    s = np.linspace(0, 1, 12)
    stat = lambda idx: M.roc_auc(y[idx], s[idx])  # noqa: E731
    a = M.bootstrap(stat, M.resample_indices(12, 200, seed=3))
    b = M.bootstrap(stat, M.resample_indices(12, 200, seed=3))
    assert a == b
    # P(resample misses the positive) = (11/12)^12 ~ 0.35
    assert 40 < a.n_skipped < 110
    assert a.as_dict().keys() == {"value", "ci_low", "ci_high"}


def test_bootstrap_all_skipped_gives_no_interval() -> None:
    y = np.ones(5, bool)
    est = M.bootstrap(lambda idx: M.roc_auc(y[idx], np.arange(5)[idx]), M.resample_indices(5, 20, 0))
    assert est.n_skipped == 20
    assert est.as_dict() == {"value": None, "ci_low": None, "ci_high": None}


def test_net_benefit_hand_example() -> None:
    # 10 cases, 4 positive. At pt = 0.2, scores >= 0.2 treat 6 cases: 3 TP, 3 FP.
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    s = np.array([0.9, 0.7, 0.3, 0.1, 0.8, 0.4, 0.2, 0.1, 0.0, 0.05])
    pt = np.array([0.2, 0.5])
    nb = M.net_benefit(y, s, pt)
    assert nb[0] == pytest.approx(3 / 10 - 3 / 10 * 0.2 / 0.8)  # 0.225
    # At 0.5: treated 0.9, 0.7, 0.8 -> 2 TP, 1 FP
    assert nb[1] == pytest.approx(2 / 10 - 1 / 10 * 1.0)
    all_nb = M.net_benefit_treat_all(y, pt)
    assert all_nb[0] == pytest.approx(0.4 - 0.6 * 0.25)
    assert all_nb[1] == pytest.approx(0.4 - 0.6)
    with pytest.raises(ValueError, match="thresholds"):
        M.net_benefit(y, s, np.array([1.0]))


def test_reader_rows_hand_example() -> None:
    truth = np.array(["covid19", "covid19", "cap", "cap", "covid19"])
    r1 = np.array(["covid19", "cap", "cap", "covid19", "covid19"])  # 3 correct; sens 2/3, spec 1/2
    r2 = ["covid19", "covid19", "cap", "cap", None]  # read 4, all correct
    row = M.reader_row("R1", r1 == truth, truth == "covid19", r1 == "covid19")
    assert (row.correct, row.wrong, row.n_cases) == (3, 2, 5)
    assert row.sensitivity == pytest.approx(2 / 3) and row.specificity == pytest.approx(1 / 2)
    marks = [list(r1 == truth), [None if c is None else c == t for c, t in zip(r2, truth, strict=True)]]
    any_row, all_row = M.pooled_reader_rows(marks)
    assert (any_row.correct, any_row.wrong, any_row.n_cases) == (5, 0, 5)  # every case: someone right
    assert (all_row.correct, all_row.wrong) == (3, 2)  # cases 1 and 3: R1 wrong


def test_quadratic_weighted_kappa_agrees_with_hand_computed_values():
    from pipeline.metrics import quadratic_weighted_kappa

    truth = np.array([0, 1, 2, 3, 4, 1, 2])
    assert quadratic_weighted_kappa(truth, truth, 5) == pytest.approx(1.0)
    # One grade off in one case: small penalty; four grades off: large.
    near = truth.copy()
    near[0] = 1
    far = truth.copy()
    far[0] = 4
    k_near, k_far = quadratic_weighted_kappa(truth, near, 5), quadratic_weighted_kappa(truth, far, 5)
    assert 0.8 < k_near < 1.0 and k_far < k_near
    # By hand: observed [[1, 1], [0, 2]], expected [[0.5, 1.5], [0.5, 1.5]]; disagreement
    # observed 1, expected 2: kappa 1 - 1/2.
    assert quadratic_weighted_kappa(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2) == pytest.approx(0.5)
    assert np.isnan(quadratic_weighted_kappa(np.zeros(3, int), np.zeros(3, int), 5))
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
    assert quadratic_weighted_kappa(a, b, 5) == pytest.approx(cohen_kappa_score(a, b, weights="quadratic"))


def test_bland_altman_bias_and_limits():
    from pipeline.metrics import bland_altman

    truth = np.array([10.0, 20.0, 30.0, 40.0])
    bias, low, high = bland_altman(truth, truth + np.array([1.0, 3.0, 1.0, 3.0]))
    sd = np.std([1.0, 3.0, 1.0, 3.0], ddof=1)
    assert bias == pytest.approx(2.0)
    assert (low, high) == pytest.approx((2.0 - 1.96 * sd, 2.0 + 1.96 * sd))
    assert all(np.isnan(bland_altman(truth[:1], truth[:1])))
