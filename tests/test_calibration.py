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


CLASSES_6X = ["non_pneumonia", "cap", "influenza", "covid19"] * 6


def _calibration_records(seed: int, healthy_false_flags, lesion_map: bool):
    """24 calibration records: pneumonia cases have lesions on slices 10-19 and locator
    scores 0.6-1 there, 0-0.4 elsewhere; ``healthy_false_flags(i)`` gives the slices a
    healthy case's locator wrongly scores 0.95; with ``lesion_map`` the U-Net's lesion
    areas and shares come with them (lesions only where the truth has them)."""
    from pipeline.evaluate import CaseRecord

    rng = np.random.default_rng(seed)
    records = []
    for i, truth in enumerate(CLASSES_6X):
        pneu = truth != "non_pneumonia"
        lesion = np.zeros(30, bool)
        if pneu:
            lesion[10:20] = True
        scores = np.where(lesion, rng.uniform(0.6, 1.0, 30), rng.uniform(0.0, 0.4, 30))
        if not pneu:
            scores[list(healthy_false_flags(i))] = 0.95
        tasks = np.array([0.8 if pneu else 0.3, 0.7 if truth == "covid19" else 0.4, 0.7 if truth == "covid19" else 0.4])
        extra = (
            dict(slice_lesion_mm2=np.where(lesion, 200.0, 0.0), lesion_share=0.05 if pneu else 1e-4)
            if lesion_map
            else {}
        )
        records.append(
            CaseRecord(
                case_id=f"c{i}",
                truth=truth,
                probabilities=np.full(4, 0.25),
                tasks=tasks,
                predicted="cap",
                slice_scores=scores,
                slice_truth=lesion,
                **extra,
            )
        )
    return records


def test_operating_points_from_records() -> None:
    from pipeline.calibration import choose_operating_points

    # one healthy slice the locator gets wrong in some cases
    records = _calibration_records(1, lambda i: [3] if i % 3 == 0 else [], lesion_map=False)
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

    # three healthy slices the locator gets wrong, on which the U-Net finds no lesion
    records = _calibration_records(2, lambda i: [3, 4, 5], lesion_map=True)
    op = choose_operating_points(records)
    assert op.min_infected_slices == 1
    assert 1e-4 < op.lesion_share_threshold < 0.05 and op.uses_lesions
    assert "lesion" in op.rule
