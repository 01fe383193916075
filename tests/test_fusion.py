"""Task-specific fusion on hand-computed examples (METHOD.md, module 3)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.fusion import fuse, fuse_slice_scores, top_k_mean
from pipeline.params import ChainParams
from pipeline.types import CLASS_NAMES, TASK_NAMES, InvalidInputError, SliceScores

# Columns: non_pneumonia, cap, influenza, covid19.
P = np.array(
    [
        [0.7, 0.1, 0.1, 0.1],
        [0.1, 0.1, 0.1, 0.7],
        [0.4, 0.2, 0.2, 0.2],
        [0.1, 0.6, 0.1, 0.2],
    ]
)


def test_top_k_mean() -> None:
    assert top_k_mean(np.array([0.1, 0.9, 0.5, 0.3]), 2) == pytest.approx(0.7)
    assert top_k_mean(np.array([0.1, 0.9]), 5) == pytest.approx(0.5)  # K capped
    with pytest.raises(InvalidInputError):
        top_k_mean(np.array([]), 1)


def test_multiway_top2_by_hand() -> None:
    s = fuse(P, top_k=2)
    # non = mean(0.7, 0.1, 0.4, 0.1) = 0.325; cap = (0.6+0.2)/2 = 0.4;
    # flu = (0.2+0.1)/2 = 0.15; covid = (0.7+0.2)/2 = 0.45; total 1.325.
    expected = np.array([0.325, 0.4, 0.15, 0.45]) / 1.325
    np.testing.assert_allclose([s.probabilities[c] for c in CLASS_NAMES], expected, atol=1e-9)
    assert s.label == "covid19"
    assert s.top_k == 2
    assert tuple(s.tasks) == TASK_NAMES


def test_pneumonia_vs_non_pneumonia_by_hand() -> None:
    # Per-slice pneumonia sums 0.3, 0.9, 0.6, 0.9 -> top-2 mean 0.9; non mean 0.325.
    s = fuse(P, top_k=2)
    assert s.tasks["pneumonia_vs_non_pneumonia"] == pytest.approx(0.9 / (0.9 + 0.325))


def test_covid_vs_cap_by_hand() -> None:
    # Muted pairs (covid, cap) per slice: (.5,.5) (.875,.125) (.5,.5) (.25,.75).
    # top-2 covid = (.875+.5)/2 = .6875; top-2 cap = (.75+.5)/2 = .625.
    s = fuse(P, top_k=2)
    assert s.tasks["covid19_vs_cap"] == pytest.approx(0.6875 / (0.6875 + 0.625))


def test_covid_vs_influenza_by_hand() -> None:
    # Muted pairs (covid, flu): (.5,.5) (.875,.125) (.5,.5) (2/3,1/3).
    # top-2 covid = (.875 + 2/3)/2; top-2 flu = .5.
    covid = (0.875 + 2 / 3) / 2
    s = fuse(P, top_k=2)
    assert s.tasks["covid19_vs_influenza"] == pytest.approx(covid / (covid + 0.5))


def test_k_larger_than_slice_count_is_the_plain_mean() -> None:
    s = fuse(P, top_k=10)
    assert s.top_k == 4
    # With K = n every class is a plain mean; the means already sum to 1.
    np.testing.assert_allclose([s.probabilities[c] for c in CLASS_NAMES], P.mean(axis=0), atol=1e-9)
    assert s.label == "non_pneumonia"
    assert s.tasks["pneumonia_vs_non_pneumonia"] == pytest.approx(0.675 / (0.675 + 0.325))


def test_top1_makes_one_infected_slice_decisive() -> None:
    # Nine clean slices and one COVID-19 slice: the case is COVID-19 with K = 1.
    p = np.tile([0.97, 0.01, 0.01, 0.01], (10, 1))
    p[4] = [0.02, 0.03, 0.05, 0.90]
    s = fuse(p, top_k=1)
    non = (9 * 0.97 + 0.02) / 10
    np.testing.assert_allclose(s.probabilities["covid19"], 0.90 / (non + 0.03 + 0.05 + 0.90))
    assert s.label == "covid19"
    assert s.tasks["pneumonia_vs_non_pneumonia"] == pytest.approx(0.98 / (0.98 + non))


def test_muted_pair_of_zeros_counts_as_even() -> None:
    p = np.array([[1.0, 0.0, 0.0, 0.0]])
    s = fuse(p, top_k=3)
    assert s.tasks["covid19_vs_cap"] == pytest.approx(0.5)
    assert s.tasks["pneumonia_vs_non_pneumonia"] == pytest.approx(0.0)
    assert s.label == "non_pneumonia"


def test_fuse_slice_scores_uses_params_top_k() -> None:
    scores = SliceScores(z_indices=np.arange(4), probabilities=P)
    assert fuse_slice_scores(scores, ChainParams(top_k=1)).top_k == 1
    assert fuse_slice_scores(scores, ChainParams()).top_k == 3


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="score matrix"):
        fuse(np.zeros((3, 3)), 3)
    with pytest.raises(InvalidInputError, match="score matrix"):
        fuse(np.zeros((0, 4)), 3)
    with pytest.raises(InvalidInputError, match="non-negative"):
        fuse(np.array([[np.nan, 0, 0, 1.0]]), 3)
