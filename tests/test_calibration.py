"""Operating points chosen on validation data (pipeline.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.calibration import youden_threshold
from pipeline.types import InvalidInputError


def test_youden_separates_separable_scores_midway() -> None:
    y = np.array([0, 0, 0, 1, 1, 1], bool)
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert youden_threshold(y, s) == pytest.approx(0.5)


def test_youden_respects_a_minimum_specificity() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200, bool), np.ones(200, bool)]
    s = np.r_[rng.normal(0.4, 0.1, 200), rng.normal(0.6, 0.1, 200)].clip(0, 1)
    t_free = youden_threshold(y, s)
    t_strict = youden_threshold(y, s, min_specificity=0.99)
    assert t_strict > t_free
    assert np.mean(s[~y] < t_strict) >= 0.99


def test_youden_needs_both_classes() -> None:
    with pytest.raises(InvalidInputError):
        youden_threshold(np.ones(4, bool), np.linspace(0, 1, 4))


def test_operating_points_from_records() -> None:
    from pipeline.calibration import choose_operating_points
    from pipeline.evaluate import CaseRecord

    rng = np.random.default_rng(1)
    records = []
    for i, truth in enumerate(["non_pneumonia", "cap", "influenza", "covid19"] * 6):
        pneu = truth != "non_pneumonia"
        lesion = np.zeros(30, bool)
        if pneu:
            lesion[10:20] = True
        scores = np.where(lesion, rng.uniform(0.6, 1.0, 30), rng.uniform(0.0, 0.4, 30))
        if truth == "non_pneumonia" and i % 3 == 0:
            scores[3] = 0.95  # one healthy slice the locator gets wrong in some cases
        tasks = np.array([0.8 if pneu else 0.3, 0.7 if truth == "covid19" else 0.4,
                          0.7 if truth == "covid19" else 0.4])
        records.append(CaseRecord(case_id=f"c{i}", truth=truth, probabilities=np.full(4, 0.25), tasks=tasks,
                                  predicted="cap", slice_scores=scores, slice_truth=lesion))
    op = choose_operating_points(records)
    assert 0.3 < op.pneumonia_vs_non_pneumonia < 0.8
    assert 0.4 < op.covid19_vs_cap < 0.7
    assert 0.4 <= op.locator_threshold <= 0.6
    # One wrongly flagged slice in some healthy cases: a pneumonia decision needs two.
    assert op.min_infected_slices == 2
    assert "Youden" in op.rule


def test_lesion_share_threshold_lies_between_the_cohorts_on_a_log_scale() -> None:
    from pipeline.calibration import lesion_share_threshold

    healthy = np.array([0.0, 1e-4, 3e-4, 5e-4])
    sick = np.array([0.02, 0.05, 0.1, 0.3])
    t = lesion_share_threshold(np.r_[np.zeros(4, bool), np.ones(4, bool)], np.r_[healthy, sick])
    assert 5e-4 < t < 0.02
    assert t == pytest.approx(np.sqrt(5e-4 * 0.02), rel=1e-6)  # the geometric middle


def test_locator_threshold_counts_only_slices_with_a_lesion() -> None:
    """With a lesion map, a healthy slice the locator flags but the U-Net sees no lesion on
    is never reported, so it does not raise min_infected_slices."""
    from pipeline.calibration import choose_operating_points
    from pipeline.evaluate import CaseRecord

    rng = np.random.default_rng(2)
    records = []
    for i, truth in enumerate(["non_pneumonia", "cap", "influenza", "covid19"] * 6):
        pneu = truth != "non_pneumonia"
        lesion = np.zeros(30, bool)
        if pneu:
            lesion[10:20] = True
        scores = np.where(lesion, rng.uniform(0.6, 1.0, 30), rng.uniform(0.0, 0.4, 30))
        if not pneu:
            scores[3:6] = 0.95  # three healthy slices the locator gets wrong...
        area = np.where(lesion, 200.0, 0.0)  # ...on which the U-Net finds no lesion
        records.append(CaseRecord(case_id=f"c{i}", truth=truth, probabilities=np.full(4, 0.25),
                                  tasks=np.array([0.8 if pneu else 0.3, 0.5, 0.5]), predicted="cap",
                                  slice_scores=scores, slice_truth=lesion, slice_lesion_mm2=area,
                                  lesion_share=0.05 if pneu else 1e-4))
    op = choose_operating_points(records)
    assert op.min_infected_slices == 1
    assert 1e-4 < op.lesion_share_threshold < 0.05 and op.uses_lesions
    assert "lesion" in op.rule
