"""The decision a report states, made once from the bundle's operating points.

Every output (SR, KOS, overlays, ``analyze``, ``status``) renders ``Decision``; none of
them re-derives it from probabilities. In order:

1. ``out_of_domain`` when the domain guard (pipeline.domain) says the study differs from
   the training data: no class is claimed.
2. Pneumonia or not. With lesion evidence (a 3-class U-Net and a calibrated
   ``lesion_share_threshold``): the share of the lung the U-Net marks as lesion, against
   that threshold; within a factor ``lesion_band`` of it: ``indeterminate``; below:
   ``non_pneumonia``. Above, the slice classifier must not contradict it (its pneumonia
   score at least its threshold minus ``pneumonia_margin``), else ``indeterminate``.
   Without lesion evidence: the classifier's pneumonia score against its calibrated
   threshold; within ``pneumonia_margin`` of it: ``indeterminate``; below:
   ``non_pneumonia``.
3. Without lesion evidence, a pneumonia decision needs at least ``min_infected_slices``
   slices flagged by the locator: fewer is a contradiction between two networks that both
   read texture: ``indeterminate``. With lesion evidence the lesions were measured, not
   inferred: the infectious slices (locator flag and a lesion on the slice) are reported,
   not required.
4. The pneumonia class: the largest of CAP / influenza / COVID-19 (4-class probabilities
   renormalised over the three); with a lesion pattern model (pipeline.lesion_pattern)
   and ``pattern_weight`` > 0, the blend ``pattern_weight`` x the pattern's shares +
   (1 - ``pattern_weight``) x the classifier's; when the top two are within ``margin``:
   ``indeterminate``.

``OperatingPoints`` come from the model card's ``operating_points`` (chosen on a
validation cohort by ``pipeline.calibration``); a bundle without them falls back to the
paper's 0.5 and says so in its rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from .types import (
    PNEUMONIA_CLASSES,
    TASK_NAMES,
    CaseScores,
    Decision,
    DomainCheck,
    InfectedSlices,
    LesionBurden,
    LesionPattern,
)

DISPLAY = {"non_pneumonia": "non-pneumonia", "cap": "CAP", "influenza": "influenza", "covid19": "COVID-19"}


@dataclass(frozen=True)
class OperatingPoints:
    """Thresholds and margins of the decision (fractions in [0, 1])."""

    pneumonia_vs_non_pneumonia: float = 0.5
    covid19_vs_cap: float = 0.5
    covid19_vs_influenza: float = 0.5
    locator_threshold: float = 0.5
    #: Top two pneumonia classes closer than this: indeterminate.
    margin: float = 0.10
    #: Pneumonia score closer than this to its threshold: indeterminate.
    pneumonia_margin: float = 0.05
    #: A pneumonia decision needs at least this many slices flagged by the locator.
    min_infected_slices: int = 1
    #: Lesion share of the lung (U-Net lesion map) separating pneumonia from non-pneumonia;
    #: 0: not calibrated, the classifier's pneumonia score decides.
    lesion_share_threshold: float = 0.0
    #: Lesion shares within this factor of the threshold (either side): indeterminate.
    lesion_band: float = 1.5
    #: Weight of the lesion pattern model in the pneumonia type (0: the classifier alone).
    pattern_weight: float = 0.0
    rule: str = "defaults (paper: 0.5); the bundle was not calibrated"

    def __post_init__(self) -> None:
        upper = {"min_infected_slices": 1e6, "lesion_band": 100.0}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "rule" and not (0.0 <= float(v) <= upper.get(f.name, 1.0)):
                raise ValueError(f"operating point {f.name} must lie in [0, {upper.get(f.name, 1)}], got {v}")
        if self.lesion_band < 1.0:
            raise ValueError(f"operating point lesion_band is a factor >= 1, got {self.lesion_band}")

    @property
    def uses_lesions(self) -> bool:
        return self.lesion_share_threshold > 0.0

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> "OperatingPoints":
        given = dict(card.get("operating_points") or {})
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {
            k: (int(v) if k == "min_infected_slices" else (str(v) if k == "rule" else float(v)))
            for k, v in given.items()
            if k in known
        }
        return cls(**values)

    def as_card(self) -> dict[str, Any]:
        return asdict(self)

    def thresholds(self) -> dict[str, float]:
        """The operating points a report cites (task thresholds, margins, locator)."""
        out = {name: float(getattr(self, name)) for name in TASK_NAMES}
        out.update(
            margin=self.margin,
            pneumonia_margin=self.pneumonia_margin,
            locator_threshold=self.locator_threshold,
            out_of_domain=1.0,
        )
        if self.uses_lesions:
            out.update(lesion_share_threshold=self.lesion_share_threshold, lesion_band=self.lesion_band)
        if self.pattern_weight > 0:
            out.update(pattern_weight=self.pattern_weight)
        return out


def _renormalised(probabilities: Mapping[str, float]) -> dict[str, float]:
    p = {name: float(probabilities.get(name, 0.0)) for name in PNEUMONIA_CLASSES}
    total = sum(p.values())
    return {k: (v / total if total > 0 else 1.0 / len(p)) for k, v in p.items()}


def pattern_type_shares(pattern: LesionPattern | None) -> dict[str, float] | None:
    """The lesion pattern model's CAP / influenza / COVID-19 renormalised over the three;
    None without a pattern model."""
    if pattern is None or pattern.probabilities is None:
        return None
    return _renormalised(pattern.probabilities)


def pneumonia_class_shares(
    case: CaseScores, pattern: LesionPattern | None = None, pattern_weight: float = 0.0
) -> dict[str, float]:
    """The probabilities of CAP, influenza and COVID-19 renormalised over the three: the
    classifier's, blended with the lesion pattern model's when it is given a weight."""
    return blend_type_shares(case.probabilities, None if pattern is None else pattern.probabilities, pattern_weight)


def blend_type_shares(
    probabilities: Mapping[str, float], pattern: Mapping[str, float] | None, pattern_weight: float
) -> dict[str, float]:
    """``pneumonia_class_shares`` of plain mappings: the classifier's probabilities (and
    the lesion pattern's, or None) renormalised over the pneumonia types and blended."""
    shares = _renormalised(probabilities)
    if pattern is None or pattern_weight <= 0:
        return shares
    by_pattern = _renormalised(pattern)
    w = float(pattern_weight)
    return {k: w * by_pattern[k] + (1.0 - w) * shares[k] for k in PNEUMONIA_CLASSES}


#: Step 2's verdicts (``pneumonia_verdict``): why a case is not (or not surely) pneumonia.
BELOW_LESION_THRESHOLD = "below_lesion_threshold"
NEAR_LESION_THRESHOLD = "near_lesion_threshold"
CLASSIFIER_DISAGREES = "classifier_disagrees"
NEAR_SCORE_THRESHOLD = "near_score_threshold"
BELOW_SCORE_THRESHOLD = "below_score_threshold"
#: The decision each verdict gives.
VERDICT_DECISION = {
    BELOW_LESION_THRESHOLD: "non_pneumonia",
    NEAR_LESION_THRESHOLD: "indeterminate",
    CLASSIFIER_DISAGREES: "indeterminate",
    NEAR_SCORE_THRESHOLD: "indeterminate",
    BELOW_SCORE_THRESHOLD: "non_pneumonia",
}


def pneumonia_verdict(p: float, lesion_share: float | None, op: OperatingPoints) -> str | None:
    """Step 2 of the module doc, the one rule for a single case and for fused stages
    (pipeline.stages): a verdict of ``VERDICT_DECISION``, or None (pneumonia, go on).
    ``p`` is the pneumonia score; ``lesion_share`` counts only when ``op.uses_lesions``."""
    if op.uses_lesions and lesion_share is not None:
        t, band = op.lesion_share_threshold, op.lesion_band
        if lesion_share < t / band:
            return BELOW_LESION_THRESHOLD
        if lesion_share < t * band:
            return NEAR_LESION_THRESHOLD
        if p < op.pneumonia_vs_non_pneumonia - op.pneumonia_margin:
            return CLASSIFIER_DISAGREES
        return None
    t = op.pneumonia_vs_non_pneumonia
    if abs(p - t) < op.pneumonia_margin:
        return NEAR_SCORE_THRESHOLD
    if p < t:
        return BELOW_SCORE_THRESHOLD
    return None


def type_verdict(shares: Mapping[str, float], op: OperatingPoints) -> tuple[str, str, bool]:
    """Step 4: the first and second pneumonia type by ``shares`` and whether they are
    within ``op.margin`` of each other (indeterminate)."""
    first, second = sorted(shares, key=lambda k: -shares[k])[:2]
    return first, second, shares[first] - shares[second] < op.margin


def _pct(share: float) -> str:
    """A lesion share in percent, with the digits a small share needs."""
    v = 100.0 * share
    return f"{v:.1f}%" if v >= 1 else f"{v:.2f}%" if v >= 0.01 else f"{v:.3f}%"


def _pneumonia_by_lesions(
    p: float, lesion: LesionBurden, op: OperatingPoints, th: Mapping[str, float]
) -> Decision | None:
    """Step 2 with lesion evidence: a non-pneumonia or indeterminate Decision, or None
    (pneumonia, go on)."""
    verdict = pneumonia_verdict(p, lesion.lung_share, op)
    if verdict is None:
        return None
    t = op.lesion_share_threshold
    burden = f"lesions of infection cover {_pct(lesion.lung_share)} of the lung ({lesion.volume_ml:.1f} ml)"
    classifier = (
        f"slice classifier's pneumonia score {100 * p:.1f}% (threshold {100 * op.pneumonia_vs_non_pneumonia:.1f}%)"
    )
    texts = {
        BELOW_LESION_THRESHOLD: f"Non-pneumonia: {burden}, below the model's threshold {_pct(t)}; {classifier}.",
        NEAR_LESION_THRESHOLD: f"Indeterminate: {burden}, too close to the model's threshold {_pct(t)} "
        f"to tell pneumonia from non-pneumonia; no diagnosis is stated.",
        CLASSIFIER_DISAGREES: f"Indeterminate: {burden} (threshold {_pct(t)}), but the {classifier} "
        f"does not support pneumonia; no diagnosis is stated.",
    }
    return Decision(VERDICT_DECISION[verdict], texts[verdict], th)


def decide(
    case: CaseScores,
    infected: InfectedSlices,
    domain: DomainCheck,
    op: OperatingPoints,
    lesion: LesionBurden | None = None,
    pattern: LesionPattern | None = None,
) -> Decision:
    """The decision of one case (see the module doc for the order of the rules)."""
    th = op.thresholds()
    if not domain.in_domain:
        why = "; ".join(domain.reasons) or "it differs from the model's training data"
        return Decision(
            "out_of_domain",
            f"The model cannot assess this study: {why} (out-of-domain score {domain.score:.2f}, limit 1.00).",
            th,
        )
    p = float(case.tasks["pneumonia_vs_non_pneumonia"])
    t = op.pneumonia_vs_non_pneumonia
    if op.uses_lesions and lesion is not None:
        early = _pneumonia_by_lesions(p, lesion, op, th)
        if early is not None:
            return early
        evidence = f"lesions cover {_pct(lesion.lung_share)} of the lung, pneumonia score {100 * p:.1f}%"
    else:
        verdict = pneumonia_verdict(p, None, op)
        if verdict == NEAR_SCORE_THRESHOLD:
            return Decision(
                "indeterminate",
                f"Indeterminate: the pneumonia score {100 * p:.1f}% is within "
                f"{100 * op.pneumonia_margin:.0f} points of the model's threshold "
                f"{100 * t:.1f}%; no diagnosis is stated.",
                th,
            )
        if verdict == BELOW_SCORE_THRESHOLD:
            return Decision(
                "non_pneumonia",
                f"Non-pneumonia: pneumonia score {100 * p:.1f}% is below the threshold {100 * t:.1f}%.",
                th,
            )
        evidence = f"pneumonia score {100 * p:.1f}% (threshold {100 * t:.1f}%)"
    n_slices = len(infected.z_indices)
    by_lesions = op.uses_lesions and lesion is not None
    if not by_lesions and n_slices < op.min_infected_slices:
        return Decision(
            "indeterminate",
            f"Indeterminate: pneumonia by the model ({evidence}), but the lesion "
            f"locator found {n_slices} infectious slice(s) (at least "
            f"{op.min_infected_slices} needed); no diagnosis is stated.",
            th,
        )
    shares = pneumonia_class_shares(case, pattern, op.pattern_weight)
    blended = pattern is not None and pattern.probabilities is not None and op.pattern_weight > 0
    if not blended:
        source = "the slice classifier"
    elif op.pattern_weight >= 1:
        source = "the lesion pattern"
    else:
        source = (
            f"the lesion pattern and the slice classifier ({100 * op.pattern_weight:.0f}% / "
            f"{100 * (1 - op.pattern_weight):.0f}%)"
        )
    first, second, too_close = type_verdict(shares, op)
    if too_close:
        return Decision(
            "indeterminate",
            f"Indeterminate: pneumonia ({evidence}), but "
            f"{DISPLAY[first]} {100 * shares[first]:.1f}% vs {DISPLAY[second]} "
            f"{100 * shares[second]:.1f}% ({source}) are within the model's "
            f"{100 * op.margin:.0f}-point margin; no type is stated.",
            th,
        )
    return Decision(
        first,
        f"{DISPLAY[first]}: {evidence}, {DISPLAY[first]} {100 * shares[first]:.1f}% of the "
        f"pneumonia types by {source}, {n_slices} infectious slice(s).",
        th,
    )
