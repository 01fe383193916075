"""Multi-stage fusion: a patient's scans at several dates fused into one decision (pure).

The paper (METHOD.md, module 8; Jin et al. 2020, "Subset analysis") compared stage I,
stage II "and fusion of them" and found that "fusion of stages can slightly improve the
performances"; it names no more complex rule ("We did not test more complex fusion
methods"), and its other fusion across inputs (the CXR branch) averages scores. So the
default rule here is the mean of the stages' scores:

* ``mean`` (default): each class probability, each task score, the lesion share of
  the lung and the lesion pattern's shares are the mean over the stages.
* ``max``: the pneumonia evidence of the worst stage counts (a case is pneumonia if any
  stage is, as a case is if any slice is in the task fusion): each pneumonia class takes
  its maximum over the stages, non-pneumonia its minimum, the four renormalised to sum 1;
  task scores and the lesion share take their maximum, the pattern shares their mean.
* ``latest``: the newest stage alone (the trend is shown, nothing is fused).

Stages whose decision is ``out_of_domain`` carry no scores the model stands behind and
are left out of the fusion (and named in the reason); when the current study itself is
out of domain, the multi-stage decision is ``out_of_domain`` too: earlier studies alone
do not say how the patient is now. The fused scores are decided with
the bundle's operating points (pipeline.decision.OperatingPoints), in the same order as a
single case: pneumonia or not (the lesion share against its threshold and band when the
bundle is calibrated with a lesion map and every stage has one, else the pneumonia score
against its threshold and margin), then the type (the largest of CAP / influenza /
COVID-19, blended with the lesion pattern by ``pattern_weight``; within ``margin``:
indeterminate). The infectious-slice count of a single case has no counterpart across
stages and is not required.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .decision import (
    BELOW_LESION_THRESHOLD,
    BELOW_SCORE_THRESHOLD,
    CLASSIFIER_DISAGREES,
    DISPLAY,
    NEAR_LESION_THRESHOLD,
    NEAR_SCORE_THRESHOLD,
    VERDICT_DECISION,
    OperatingPoints,
    blend_type_shares,
    pneumonia_verdict,
    type_verdict,
)
from .types import CLASS_NAMES, DECISIONS, PNEUMONIA_CLASSES, TASK_NAMES, InvalidInputError

#: The rules ``fuse_stages`` knows; the first is the default.
MULTI_STAGE_RULES: tuple[str, ...] = ("mean", "max", "latest")


@dataclass(frozen=True)
class Stage:
    """One scan of the patient as its own analysis summarised it.

    ``study_uid`` identifies the study (opaque here); ``study_date`` may be unknown (None:
    sorted first); ``current`` marks the new study the report is about. Probabilities are
    0..1 by class name (CLASS_NAMES), tasks by TASK_NAMES; ``lesion_share`` is the lesion
    share of the lung (0..1), ``involvement_percent`` the severity's involved share (0..100).
    """

    study_uid: str
    study_date: _dt.date | None
    decision: str
    probabilities: Mapping[str, float]
    tasks: Mapping[str, float] = field(default_factory=dict)
    lesion_share: float | None = None
    involvement_percent: float | None = None
    pattern: Mapping[str, float] | None = None
    current: bool = False

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise InvalidInputError(f"Stage.decision must be one of {DECISIONS}, got {self.decision!r}")
        if self.decision != "out_of_domain" and set(self.probabilities) != set(CLASS_NAMES):
            raise InvalidInputError(
                f"Stage.probabilities needs the classes {CLASS_NAMES}, got {sorted(self.probabilities)}"
            )
        values = [*self.probabilities.values(), *self.tasks.values(), *(self.pattern or {}).values()]
        if self.lesion_share is not None:
            values.append(self.lesion_share)
        if any(not (0.0 <= float(v) <= 1.0) for v in values):
            raise InvalidInputError(f"Stage of study {self.study_uid}: scores must lie in [0, 1]")

    @property
    def in_domain(self) -> bool:
        return self.decision != "out_of_domain"


@dataclass(frozen=True)
class MultiStage:
    """The stages (oldest first) and their fusion: ``decision`` (one of DECISIONS) with its
    ``reason``; ``probabilities`` / ``tasks`` / ``lesion_share`` fused by ``rule`` over the
    ``fused`` stages' study UIDs (empty when no stage was in domain)."""

    rule: str
    stages: tuple[Stage, ...]
    fused: tuple[str, ...]
    decision: str
    reason: str
    probabilities: Mapping[str, float]
    tasks: Mapping[str, float]
    lesion_share: float | None

    @property
    def current(self) -> Stage | None:
        return next((s for s in self.stages if s.current), None)

    @property
    def priors(self) -> tuple[Stage, ...]:
        return tuple(s for s in self.stages if not s.current)


def _by_date(stages: Sequence[Stage]) -> tuple[Stage, ...]:
    return tuple(sorted(stages, key=lambda s: (s.study_date or _dt.date.min, s.current)))


def _combine(values: Sequence[float], rule: str) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(v[-1] if rule == "latest" else v.max() if rule == "max" else v.mean())


def _fused_probabilities(stages: Sequence[Stage], rule: str) -> dict[str, float]:
    raw = {}
    for name in CLASS_NAMES:
        values = [float(s.probabilities[name]) for s in stages]
        raw[name] = min(values) if rule == "max" and name == "non_pneumonia" else _combine(values, rule)
    total = sum(raw.values())
    return {k: (v / total if total > 0 else 1.0 / len(raw)) for k, v in raw.items()}


def _fused_optional(values: Sequence[float | None], rule: str) -> float | None:
    """A quantity every stage has, fused; None when some stage lacks it."""
    if not values or any(v is None for v in values):
        return None
    return _combine([float(v) for v in values if v is not None], rule)


def _fused_pattern(stages: Sequence[Stage], rule: str) -> dict[str, float] | None:
    if any(s.pattern is None for s in stages):
        return None
    how = "latest" if rule == "latest" else "mean"
    return {k: _combine([float((s.pattern or {})[k]) for s in stages], how) for k in PNEUMONIA_CLASSES}


def _pneumonia_or_not(p: float, lesion_share: float | None, op: OperatingPoints) -> tuple[str | None, str]:
    """Step one (pipeline.decision.pneumonia_verdict, the single case's rule): (decision,
    reason) when not pneumonia or not surely, else (None, the evidence)."""
    t = op.pneumonia_vs_non_pneumonia
    score = f"fused pneumonia score {100 * p:.1f}% (threshold {100 * t:.1f}%)"
    verdict = pneumonia_verdict(p, lesion_share, op)
    if op.uses_lesions and lesion_share is not None:
        lt = op.lesion_share_threshold
        burden = f"fused lesion share {100 * lesion_share:.2f}% of the lung (threshold {100 * lt:.2f}%)"
        texts = {
            BELOW_LESION_THRESHOLD: f"non-pneumonia: {burden}; {score}",
            NEAR_LESION_THRESHOLD: f"indeterminate: {burden}, too close to the threshold",
            CLASSIFIER_DISAGREES: f"indeterminate: {burden}, but the {score} does not support pneumonia",
        }
        evidence = f"{burden}, {score}"
    else:
        texts = {
            NEAR_SCORE_THRESHOLD: f"indeterminate: the {score} is within {100 * op.pneumonia_margin:.0f} points",
            BELOW_SCORE_THRESHOLD: f"non-pneumonia: {score} below the threshold",
        }
        evidence = score
    if verdict is None:
        return None, evidence
    return VERDICT_DECISION[verdict], texts[verdict]


def _decide(
    probabilities: Mapping[str, float],
    tasks: Mapping[str, float],
    lesion_share: float | None,
    pattern: Mapping[str, float] | None,
    op: OperatingPoints,
) -> tuple[str, str]:
    early, evidence = _pneumonia_or_not(float(tasks["pneumonia_vs_non_pneumonia"]), lesion_share, op)
    if early is not None:
        return early, evidence
    shares = blend_type_shares(probabilities, pattern, op.pattern_weight)
    first, second, too_close = type_verdict(shares, op)
    if too_close:
        return "indeterminate", (
            f"indeterminate: pneumonia ({evidence}), but {DISPLAY[first]} {100 * shares[first]:.1f}% vs "
            f"{DISPLAY[second]} {100 * shares[second]:.1f}% are within the {100 * op.margin:.0f}-point margin"
        )
    return first, f"{DISPLAY[first]}: {evidence}, {DISPLAY[first]} {100 * shares[first]:.1f}% of the pneumonia types"


def fuse_stages(stages: Sequence[Stage], rule: str = "mean", op: OperatingPoints | None = None) -> MultiStage:
    """The stages' fusion by ``rule`` (MULTI_STAGE_RULES) and its decision by ``op``."""
    if rule not in MULTI_STAGE_RULES:
        raise InvalidInputError(f"multi-stage rule must be one of {MULTI_STAGE_RULES}, got {rule!r}")
    if not stages:
        raise InvalidInputError("multi-stage fusion needs at least one stage")
    if sum(s.current for s in stages) > 1:
        raise InvalidInputError("multi-stage fusion: at most one stage is the current study")
    op = op or OperatingPoints()
    ordered = _by_date(stages)
    used = [s for s in ordered if s.in_domain]
    if rule == "latest":
        used = used[-1:]
    left_out = len(ordered) - len(used)
    note = (
        f"; {left_out} stage(s) left out (out of domain{' or older' if rule == 'latest' else ''})" if left_out else ""
    )
    if not used:
        reason = "The model cannot assess any of the stages (all out of domain): nothing to fuse."
        return MultiStage(rule, ordered, (), "out_of_domain", reason, {}, {}, None)
    if any(s.current and not s.in_domain for s in ordered):
        reason = (
            "The model cannot assess the current study (out of domain): earlier studies alone do not "
            "say how the patient is now; no multi-stage decision is stated."
        )
        return MultiStage(rule, ordered, (), "out_of_domain", reason, {}, {}, None)
    probabilities = _fused_probabilities(used, rule)
    tasks = {
        k: _combine([float(s.tasks[k]) for s in used], rule) for k in TASK_NAMES if all(k in s.tasks for s in used)
    }
    tasks.setdefault("pneumonia_vs_non_pneumonia", 1.0 - probabilities["non_pneumonia"])
    lesion_share = _fused_optional([s.lesion_share for s in used], rule)
    decision, why = _decide(probabilities, tasks, lesion_share, _fused_pattern(used, rule), op)
    reason = f"{why[0].upper()}{why[1:]} ({rule} of {len(used)} stage(s){note})."
    return MultiStage(
        rule, ordered, tuple(s.study_uid for s in used), decision, reason, probabilities, tasks, lesion_share
    )


def stage_from_summary(
    summary: Mapping[str, object], study_uid: str, study_date: _dt.date | None, current: bool = False
) -> Stage:
    """A Stage from an analysis summary (``AnalysisResult.summary``, as ``analyze`` prints
    it and the node stores it as summary.json)."""

    def number(key: str) -> float | None:
        value = summary.get(key)
        return None if value is None else float(value)  # type: ignore[arg-type]

    pattern = summary.get("lesion_pattern_probabilities")
    decision = str(summary.get("decision", ""))
    probabilities = dict(summary.get("probabilities") or {})  # type: ignore[call-overload]
    return Stage(
        study_uid=study_uid,
        study_date=study_date,
        decision=decision,
        probabilities={k: float(v) for k, v in probabilities.items()},
        tasks={k: float(v) for k, v in dict(summary.get("tasks") or {}).items()},  # type: ignore[call-overload]
        lesion_share=number("lesion_share_of_lung"),
        involvement_percent=number("lung_involvement_percent"),
        pattern=None
        if not isinstance(pattern, Mapping)
        else {k: float(pattern.get(k, 0.0)) for k in PNEUMONIA_CLASSES},
        current=current,
    )


def _stage_summary(s: Stage) -> dict:
    return {
        "study_uid": s.study_uid,
        "study_date": None if s.study_date is None else s.study_date.isoformat(),
        "current": s.current,
        "decision": s.decision,
        "probabilities": {k: round(float(v), 4) for k, v in s.probabilities.items()} if s.in_domain else None,
        "lung_involvement_percent": s.involvement_percent,
        "lesion_share_of_lung": s.lesion_share,
    }


def multi_stage_summary(ms: MultiStage) -> dict:
    """The ``multi_stage`` entry of a summary: the trend (one entry per stage, oldest
    first) and the fused decision."""
    return {
        "rule": ms.rule,
        "stages": [_stage_summary(s) for s in ms.stages],
        "fused_studies": list(ms.fused),
        "decision": ms.decision,
        "decision_reason": ms.reason,
        "probabilities": {k: round(float(v), 4) for k, v in ms.probabilities.items()},
        "tasks": {k: round(float(v), 4) for k, v in ms.tasks.items()},
        "lesion_share_of_lung": None if ms.lesion_share is None else round(float(ms.lesion_share), 5),
    }
