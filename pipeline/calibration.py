"""Operating points and the out-of-domain reference, chosen on a validation cohort.

``dicomnode calibrate`` runs the chain of a trained bundle on a calibration cohort (cases
drawn like the training data, never trained on, never used for the figures of the model
card) with ``pipeline.evaluate.score_cases`` and hands the records here. Stated rules:

* each binary task's threshold: Youden's J (sensitivity + specificity - 1) maximised over
  the task's cohort (``TASK_COHORTS`` of pipeline.evaluate), ties to the middle of the
  tied range;
* the locator's slice threshold: Youden's J over every scored slice of cases with lesion
  masks, among thresholds with slice specificity >= ``LOCATOR_MIN_SPECIFICITY`` (a
  healthy CT must not come back with a list of "infectious" slices);
* the lesion evidence a pneumonia decision needs (``min_infected_slices``): one more than
  the ``FLAGGED_QUANTILE`` quantile of the slices flagged (at the chosen locator
  threshold) in the cohort's non-pneumonia cases, at least 1 and at most
  ``MAX_MIN_INFECTED_SLICES``;
* with a lesion map (3-class U-Net): the lesion share of the lung separating pneumonia
  from non-pneumonia (``lesion_share_threshold``): Youden's J on the logarithm of the
  share (the geometric middle between neighbouring cases), and the locator's threshold
  and the healthy flags above are counted on the slices the report would list (locator
  flag and a lesion of ``lesion_slice_min_mm2``);
* with a lesion pattern model (pipeline.lesion_pattern): its weight in the pneumonia type
  (``pattern_weight``) is fixed at ``PATTERN_WEIGHT``, not chosen here: a calibration
  cohort is drawn like the training data, where the slice classifier reads its own
  generators' texture well; what the weight must serve is a CT of another generator, and
  across phantom families the classifier's type was no better than chance (model card,
  cross-family columns) while the pattern's held;
* the indeterminate margins and the lesion band: fixed, stated values (``OperatingPoints`` defaults);
* the domain reference: fitted on the even-numbered cases, its thresholds set on the
  odd-numbered ones (pipeline.domain.fit_domain_reference).

Pure: records in, ``OperatingPoints`` and ``DomainReference`` out.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from .decision import OperatingPoints
from .domain import DomainReference, fit_domain_reference
from .params import ChainParams
from .types import CLASS_NAMES, TASK_NAMES, InvalidInputError

LOCATOR_MIN_SPECIFICITY = 0.97
FLAGGED_QUANTILE = 0.95
MAX_MIN_INFECTED_SLICES = 5
RULE = (
    "task thresholds: Youden's J on the calibration cohort; locator: Youden's J among thresholds with "
    f"slice specificity >= {LOCATOR_MIN_SPECIFICITY}; min_infected_slices: 1 + the {FLAGGED_QUANTILE:.0%} "
    f"quantile of slices flagged in non-pneumonia calibration cases (1 to {MAX_MIN_INFECTED_SLICES}); "
    "margins: fixed"
)
LESION_RULE = (
    "; lesion_share_threshold: Youden's J on log10 of the U-Net's lesion share of the lung; locator "
    "threshold and healthy flags counted on slices that also hold a lesion; lesion_band: fixed"
)
PATTERN_WEIGHT = 1.0
PATTERN_RULE = (
    f"; pattern_weight: fixed {PATTERN_WEIGHT} (the pneumonia type is read from the lesion pattern "
    "model; the slice classifier's type is reported beside it)"
)
#: Shares below this count as this (a log needs a floor; 1e-5 of a lung is ~0.05 ml).
LESION_SHARE_FLOOR = 1e-5


def youden_threshold(y_true: np.ndarray, score: np.ndarray, min_specificity: float = 0.0) -> float:
    """The threshold maximising sensitivity + specificity - 1 (``score >= t`` is positive),
    among thresholds whose specificity is at least ``min_specificity``; midway between
    neighbouring scores so that a small shift does not flip the calibration cases. The
    score may be on any scale (probabilities, log shares)."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    if y.all() or not y.any():
        raise InvalidInputError("a threshold needs positive and negative calibration cases")
    values = np.unique(s)
    cuts = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2.0, [values[-1] + 1e-6]])
    best, best_j = 0.5, -np.inf
    for t in cuts:
        pred = s >= t
        sens = float(np.mean(pred[y]))
        spec = float(np.mean(~pred[~y]))
        if spec + 1e-12 < min_specificity:
            continue
        j = sens + spec - 1.0
        if j > best_j + 1e-12:
            best, best_j = float(t), j
    return best


def _probability_threshold(y_true: np.ndarray, score: np.ndarray, min_specificity: float = 0.0) -> float:
    """``youden_threshold`` of a probability, kept in [0, 1] (the cut below the lowest
    score may fall just under 0)."""
    return float(np.clip(youden_threshold(y_true, score, min_specificity), 0.0, 1.0))


def lesion_share_threshold(is_pneumonia: np.ndarray, share: np.ndarray) -> float:
    """Youden's J threshold of the lesion share, chosen on its logarithm."""
    log_share = np.log10(np.clip(np.asarray(share, dtype=np.float64), LESION_SHARE_FLOOR, 1.0))
    return float(min(1.0, 10.0 ** youden_threshold(is_pneumonia, log_share)))


def choose_operating_points(
    records: Sequence, base: OperatingPoints = OperatingPoints(), chain: ChainParams = ChainParams()
) -> OperatingPoints:
    """Task, lesion and locator thresholds from calibration records (pipeline.evaluate.CaseRecord)."""
    from .evaluate import TASK_COHORTS

    truth = np.array([r.truth for r in records])
    tasks = np.stack([r.tasks for r in records])
    chosen: dict[str, Any] = {}
    for t_i, task in enumerate(TASK_NAMES):
        positive, cohort = TASK_COHORTS[task]
        idx = np.isin(truth, cohort)
        y = (truth[idx] != "non_pneumonia") if positive == "pneumonia" else (truth[idx] == positive)
        chosen[task] = _probability_threshold(y, tasks[idx, t_i])
    rule = RULE
    lesions = all(r.lesion_share is not None for r in records)
    if lesions:
        share = np.array([r.lesion_share for r in records], dtype=np.float64)
        chosen["lesion_share_threshold"] = lesion_share_threshold(truth != "non_pneumonia", share)
        rule += LESION_RULE
    if records and all(getattr(r, "pattern_probabilities", None) is not None for r in records):
        chosen["pattern_weight"] = PATTERN_WEIGHT
        rule += PATTERN_RULE
    loc = [r for r in records if r.slice_scores is not None and r.slice_scores.size]
    gate = lesions and all(r.slice_lesion_mm2 is not None for r in loc)

    def reported(r) -> np.ndarray:  # the score a slice would be listed with (0: never listed)
        return r.slice_scores * (r.slice_lesion_mm2 >= chain.lesion_slice_min_mm2) if gate else r.slice_scores

    if loc:
        y = np.concatenate([r.slice_truth for r in loc])
        s = np.concatenate([reported(r) for r in loc])
        chosen["locator_threshold"] = _probability_threshold(y, s, LOCATOR_MIN_SPECIFICITY)
        healthy = [
            int(np.count_nonzero(reported(r) >= chosen["locator_threshold"])) for r in loc if r.truth == "non_pneumonia"
        ]
        if healthy:
            need = int(np.ceil(np.quantile(healthy, FLAGGED_QUANTILE))) + 1
            chosen["min_infected_slices"] = int(np.clip(need, 1, MAX_MIN_INFECTED_SLICES))
    return replace(base, **chosen, rule=rule)


def fit_reference(records: Sequence) -> DomainReference:
    """The domain reference from calibration records with slice features and image stats."""
    usable = [r for r in records if r.slice_features is not None and r.image_stats]
    if len(usable) < 4:
        raise InvalidInputError(
            f"the domain reference needs at least 4 calibration cases with features, got {len(usable)}"
        )
    fit, held = usable[0::2], usable[1::2]
    return fit_domain_reference(
        [r.slice_features for r in fit],
        [r.image_stats for r in fit],
        [r.slice_features for r in held],
        [r.image_stats for r in held],
    )


def class_counts(records: Sequence) -> dict[str, int]:
    truth = [r.truth for r in records]
    return {c: truth.count(c) for c in CLASS_NAMES}
