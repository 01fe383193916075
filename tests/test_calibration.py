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
