"""The CXR branch's figures: CT alone, CXR alone and fused, on the cases of the CXR's classes.

The paper's comparison (module 7): one positive class (the CXR model's first, COVID-19
by default) against the others of its class set, on the cases whose truth is one of
them. Each score is renormalised over the class set (pipeline.cxr); "fused" is the mean
of the CT's and the CXR's score of every such case (score-level, as the paper). The node
states a fused decision only where the CT's decision allows it (pipeline.cxr.fuse):
``fused_cases`` counts those, ``not_fused`` the others by why, and the two decision
accuracies compare the CT's decision and the fused one on the fused cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .base import Figure, opt


@dataclass(frozen=True)
class ScoreFigures:
    """One score's AUC, and sensitivity / specificity / accuracy at the threshold."""

    auc: Figure
    sensitivity: Figure
    specificity: Figure
    accuracy: Figure

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k).to_json() for k in ("auc", "sensitivity", "specificity", "accuracy")}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ScoreFigures:
        return cls(*(Figure.from_json(d[k]) for k in ("auc", "sensitivity", "specificity", "accuracy")))


@dataclass(frozen=True)
class CxrComparison:
    """CT alone vs CXR alone vs fused (module docstring)."""

    classes: tuple[str, ...]
    positive: str
    n_cases: int
    n_positive: int
    threshold: float
    ct: ScoreFigures
    cxr: ScoreFigures
    fused: ScoreFigures
    #: Fused AUC minus the CT's, bootstrapped on the same resamples (paired).
    fused_minus_ct_auc: Figure
    fused_cases: int
    not_fused: Mapping[str, int] = field(default_factory=dict)
    ct_decision_accuracy_fused_cases: Figure | None = None
    fused_decision_accuracy: Figure | None = None
    rule: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "positive": self.positive,
            "n_cases": self.n_cases,
            "n_positive": self.n_positive,
            "threshold": self.threshold,
            "ct": self.ct.to_json(),
            "cxr": self.cxr.to_json(),
            "fused": self.fused.to_json(),
            "fused_minus_ct_auc": self.fused_minus_ct_auc.to_json(),
            "fused_cases": self.fused_cases,
            "not_fused": dict(self.not_fused),
            "ct_decision_accuracy_fused_cases": None
            if self.ct_decision_accuracy_fused_cases is None
            else self.ct_decision_accuracy_fused_cases.to_json(),
            "fused_decision_accuracy": None
            if self.fused_decision_accuracy is None
            else self.fused_decision_accuracy.to_json(),
            "rule": self.rule,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CxrComparison:
        return cls(
            classes=tuple(str(c) for c in d["classes"]),
            positive=str(d["positive"]),
            n_cases=int(d["n_cases"]),
            n_positive=int(d["n_positive"]),
            threshold=float(d["threshold"]),
            ct=ScoreFigures.from_json(d["ct"]),
            cxr=ScoreFigures.from_json(d["cxr"]),
            fused=ScoreFigures.from_json(d["fused"]),
            fused_minus_ct_auc=Figure.from_json(d["fused_minus_ct_auc"]),
            fused_cases=int(d.get("fused_cases", 0)),
            not_fused={str(k): int(v) for k, v in (d.get("not_fused") or {}).items()},
            ct_decision_accuracy_fused_cases=opt(d, "ct_decision_accuracy_fused_cases", Figure.from_json),
            fused_decision_accuracy=opt(d, "fused_decision_accuracy", Figure.from_json),
            rule=str(d.get("rule", "")),
        )


def _fmt(figure: Figure | None) -> str:
    return "n/a" if figure is None else figure.text()


def comparison_markdown(c: CxrComparison) -> list[str]:
    """The comparison as Markdown lines: the paper's table (CT alone, CXR alone, fused)."""
    others = ", ".join(x for x in c.classes if x != c.positive)
    lines = [
        f"{c.positive} against {others}, on the {c.n_cases} cases whose truth is one of them "
        f"({c.n_positive} {c.positive}); sensitivity, specificity and accuracy at {c.threshold:g}; "
        "95% bootstrap intervals over cases in brackets. Fusion: " + (c.rule or "mean of the two scores") + ".",
        "",
        "| score | AUC | sensitivity | specificity | accuracy |",
        "|---|---|---|---|---|",
    ]
    for name, block in (("CT alone", c.ct), ("CXR alone (localizer)", c.cxr), ("fused (mean)", c.fused)):
        lines.append(
            f"| {name} | {_fmt(block.auc)} | {_fmt(block.sensitivity)} | {_fmt(block.specificity)} | "
            f"{_fmt(block.accuracy)} |"
        )
    not_fused = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in c.not_fused.items()) or "none"
    lines += [
        "",
        f"Fused AUC minus the CT's (paired bootstrap): {_fmt(c.fused_minus_ct_auc)}. The node states a fused "
        f"decision on {c.fused_cases} of the {c.n_cases} cases (not fused: {not_fused}); on those, the CT's "
        f"decision is right in {_fmt(c.ct_decision_accuracy_fused_cases)} and the fused one in "
        f"{_fmt(c.fused_decision_accuracy)}.",
        "",
    ]
    return lines
