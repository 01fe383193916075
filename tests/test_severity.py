"""Severity quantification on hand-made masks: exact shares and scores."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.severity import LOBES, SeverityError, lobe_score, mosmed_grade, quantify_severity


@pytest.mark.parametrize(
    ("percent", "score"),
    [(0, 0), (0.01, 1), (4.99, 1), (5, 2), (25, 2), (25.01, 3), (50, 3), (50.5, 4), (75, 4), (75.01, 5), (100, 5)],
)
def test_lobe_score_bands(percent, score):
    assert lobe_score(percent) == score


@pytest.mark.parametrize(
    ("percent", "grade"), [(0, 0), (0.5, 1), (24.9, 1), (25, 2), (49.9, 2), (50, 3), (74.9, 3), (75, 4), (100, 4)]
)
def test_mosmed_grade_bands(percent, grade):
    assert mosmed_grade(percent) == grade


def _five_lobes() -> tuple[np.ndarray, np.ndarray]:
    """A 5 x 10 x 10 lung whose z slab i is lobe i + 1 (100 voxels each)."""
    lung = np.ones((5, 10, 10), dtype=bool)
    lobes = np.repeat(np.arange(1, 6), 100).reshape(5, 10, 10)
    return lung, lobes


def test_exact_shares_scores_and_sum():
    lung, lobes = _five_lobes()
    lesion = np.zeros_like(lung)
    hu = np.full(lung.shape, -800.0)
    fill = {0: 0, 1: 3, 2: 20, 3: 60, 4: 90}  # voxels of lesion per lobe (of 100)
    for z, n in fill.items():
        lesion[z].flat[:n] = True
    hu[3].flat[:10] = 20.0  # ten voxels of the left upper lobe's lesion are consolidation
    sev = quantify_severity(lung, lesion, voxel_ml=0.5, hu=hu, lobes=lobes, min_involved_ml=0.0)
    assert [lobe.name for lobe in sev.lobes] == list(LOBES)
    assert [lobe.involvement_percent for lobe in sev.lobes] == [0.0, 3.0, 20.0, 60.0, 90.0]
    assert [lobe.score for lobe in sev.lobes] == [0, 1, 2, 4, 5]
    assert sev.ct_severity_score == 12
    assert sev.lungs.involvement_percent == pytest.approx(100.0 * 173 / 500)
    assert sev.mosmed_label == "CT-2"
    assert sev.lobes[3].consolidation_ml == pytest.approx(5.0) and sev.lobes[3].ggo_ml == pytest.approx(25.0)
    assert sev.lungs.lesion_ml == pytest.approx(173 * 0.5)


def test_missing_lobe_gives_no_severity_score():
    lung, lobes = _five_lobes()
    lobes[lobes == 2] = 0  # the middle lobe was not segmented
    lesion = np.zeros_like(lung)
    lesion[0].flat[:50] = True
    sev = quantify_severity(lung, lesion, voxel_ml=1.0, lobes=lobes)
    assert [lobe.name for lobe in sev.lobes] == ["right_upper", "right_lower", "left_upper", "left_lower"]
    assert sev.ct_severity_score is None
    assert sev.lobes[0].score == 3


def test_without_lobes_only_the_whole_lung():
    lung = np.zeros((4, 8, 8), dtype=bool)
    lung[:, 2:6, 2:6] = True
    lesion = np.ones_like(lung)  # lesion outside the lung is not counted
    sev = quantify_severity(lung, lesion, voxel_ml=1.0)
    assert sev.lobes == () and sev.ct_severity_score is None
    assert sev.lungs.involvement_percent == 100.0 and sev.mosmed_grade == 4
    assert sev.lungs.ggo_ml == 0.0  # no HU given: no split


def test_empty_lung_and_tiny_lesions():
    empty = quantify_severity(np.zeros((3, 4, 4), bool), np.zeros((3, 4, 4), bool), voxel_ml=1.0)
    assert empty.lungs.involvement_percent == 0.0 and empty.mosmed_grade == 0
    lung, lobes = _five_lobes()
    lesion = np.zeros_like(lung)
    lesion[2, 0, 0] = True  # one stray voxel of 0.05 ml
    sev = quantify_severity(lung, lesion, voxel_ml=0.05, lobes=lobes, min_involved_ml=0.1)
    assert sev.ct_severity_score == 0 and sev.lungs.lesion_ml == 0.0


def test_bad_inputs_are_named():
    lung, lobes = _five_lobes()
    with pytest.raises(SeverityError, match="shape"):
        quantify_severity(lung, lung[:2], voxel_ml=1.0)
    with pytest.raises(SeverityError, match="labels"):
        quantify_severity(lung, lung, voxel_ml=1.0, lobes=lobes * 2)
    with pytest.raises(SeverityError, match="positive"):
        quantify_severity(lung, lung, voxel_ml=0.0)
