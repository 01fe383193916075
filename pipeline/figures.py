"""An evaluation's figures (``metrics.json``) as typed data.

``pipeline.evaluate.compute_metrics`` returns an ``EvaluationMetrics``; the report
(pipeline.report), the plots (pipeline.plots), the model card (pipeline.models) and
``dicomnode evaluate`` read its attributes. Every bootstrapped figure is a ``Figure``
(value and percentile interval, None where undefined). Sections an evaluation could not
measure (no masks, no readers...) are None.

``EvaluationMetrics.to_json()`` gives the one JSON shape of metrics.json: its keys, their
order and their values are those the evaluation has always written, so every reader of
the file is unchanged. ``EvaluationMetrics.from_json()`` reads such a file back (or the
part of one a model card keeps: missing optional sections are None); for a file written
by ``to_json``, ``from_json(d).to_json() == d``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from .metrics import Estimate

T = TypeVar("T")


def json_ready(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, so metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)  # paths and the like in a data set's description


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    """``out[key]`` = the value's JSON, left out when the value is None."""
    if value is not None:
        out[key] = value.to_json() if hasattr(value, "to_json") else value


def _opt(d: Mapping[str, Any], key: str, parse: Callable[[Any], T]) -> T | None:
    """``parse(d[key])``, None when the key is absent or null."""
    value = d.get(key)
    return None if value is None else parse(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Figure:
    """A figure with its bootstrap percentile interval; None where undefined (a class
    absent) and, for the bounds, where no interval was asked for."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None

    @classmethod
    def from_estimate(cls, est: Estimate) -> Figure:
        d = est.as_dict()
        return cls(d["value"], d["ci_low"], d["ci_high"])

    def to_json(self) -> dict[str, float | None]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Figure:
        return cls(_opt_float(d.get("value")), _opt_float(d.get("ci_low")), _opt_float(d.get("ci_high")))


def _figures(d: Mapping[str, Any]) -> dict[str, Figure]:
    return {str(k): Figure.from_json(v) for k, v in d.items()}


def _counts(rows: Sequence[Sequence[Any]]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(x) for x in row) for row in rows)


# -------------------------------------------------------------- the class block


@dataclass(frozen=True)
class MultiwayAuc:
    micro: Figure
    macro: Figure

    def to_json(self) -> dict[str, Any]:
        return {"micro": self.micro.to_json(), "macro": self.macro.to_json()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MultiwayAuc:
        return cls(Figure.from_json(d["micro"]), Figure.from_json(d["macro"]))


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts of the multi-way label, rows truth, columns predicted."""

    labels: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]

    def to_json(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "rows": "truth", "columns": "predicted", "counts": self.counts}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ConfusionMatrix:
        return cls(tuple(d["labels"]), _counts(d["counts"]))


@dataclass(frozen=True)
class ClassFigures:
    """Per-class and multi-way figures on one set of cases; sensitivity, specificity and
    the confusion matrix only for the whole cohort (not for subsets)."""

    n_cases: int
    class_counts: Mapping[str, int]
    per_class_auc: Mapping[str, Figure]
    multiway_auc: MultiwayAuc
    accuracy: Figure
    per_class_sensitivity: Mapping[str, Figure] | None = None
    per_class_specificity: Mapping[str, Figure] | None = None
    confusion_matrix: ConfusionMatrix | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_cases": self.n_cases,
            "class_counts": dict(self.class_counts),
            "per_class_auc": {c: f.to_json() for c, f in self.per_class_auc.items()},
            "multiway_auc": self.multiway_auc.to_json(),
            "accuracy": self.accuracy.to_json(),
        }
        for key, figs in (
            ("per_class_sensitivity", self.per_class_sensitivity),
            ("per_class_specificity", self.per_class_specificity),
        ):
            if figs is not None:
                out[key] = {c: f.to_json() for c, f in figs.items()}
        _put(out, "confusion_matrix", self.confusion_matrix)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ClassFigures:
        return cls(
            n_cases=int(d["n_cases"]),
            class_counts={str(k): int(v) for k, v in (d.get("class_counts") or {}).items()},
            per_class_auc=_figures(d["per_class_auc"]),
            multiway_auc=MultiwayAuc.from_json(d["multiway_auc"]),
            accuracy=Figure.from_json(d["accuracy"]),
            per_class_sensitivity=_opt(d, "per_class_sensitivity", _figures),
            per_class_specificity=_opt(d, "per_class_specificity", _figures),
            confusion_matrix=_opt(d, "confusion_matrix", ConfusionMatrix.from_json),
        )


# ------------------------------------------------------- tasks, lung, locating


@dataclass(frozen=True)
class TaskFigures:
    """One binary task on its cohort; the figures are None when the cohort is empty."""

    n_cases: int
    n_positive: int
    positive: str
    cohort: tuple[str, ...]
    threshold: float
    auc: Figure | None = None
    sensitivity: Figure | None = None
    specificity: Figure | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_cases": self.n_cases,
            "n_positive": self.n_positive,
            "positive": self.positive,
            "cohort": list(self.cohort),
            "threshold": self.threshold,
        }
        _put(out, "auc", self.auc)
        _put(out, "sensitivity", self.sensitivity)
        _put(out, "specificity", self.specificity)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TaskFigures:
        return cls(
            n_cases=int(d["n_cases"]),
            n_positive=int(d["n_positive"]),
            positive=str(d["positive"]),
            cohort=tuple(d.get("cohort") or ()),
            threshold=float(d["threshold"]),
            auc=_opt(d, "auc", Figure.from_json),
            sensitivity=_opt(d, "sensitivity", Figure.from_json),
            specificity=_opt(d, "specificity", Figure.from_json),
        )


@dataclass(frozen=True)
class LungDice:
    """Mean lung Dice of the chain's segmentation ``method`` (and of the classical one)."""

    n_cases: int
    method: str
    mean: Figure
    classical_mean: Figure | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "n_cases": self.n_cases,
            "method": self.method,
            "mean": self.mean.to_json(),
            "classical_mean": None if self.classical_mean is None else self.classical_mean.to_json(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LungDice:
        return cls(
            int(d["n_cases"]),
            str(d["method"]),
            Figure.from_json(d["mean"]),
            _opt(d, "classical_mean", Figure.from_json),
        )


@dataclass(frozen=True)
class Locating:
    """The locator on COVID-19 cases with lesion masks (the paper's cohort)."""

    n_cases: int
    n_slices: int
    n_infected_slices: int
    threshold: float
    auc: Figure
    sensitivity: Figure
    specificity: Figure

    def to_json(self) -> dict[str, Any]:
        return {
            "n_cases": self.n_cases,
            "n_slices": self.n_slices,
            "n_infected_slices": self.n_infected_slices,
            "threshold": self.threshold,
            "auc": self.auc.to_json(),
            "sensitivity": self.sensitivity.to_json(),
            "specificity": self.specificity.to_json(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Locating:
        return cls(
            int(d["n_cases"]),
            int(d["n_slices"]),
            int(d["n_infected_slices"]),
            d["threshold"],
            Figure.from_json(d["auc"]),
            Figure.from_json(d["sensitivity"]),
            Figure.from_json(d["specificity"]),
        )


# ------------------------------------------------ what the report states, lesions


@dataclass(frozen=True)
class DecisionFigures:
    """The stated decision (a class, indeterminate or out of domain) against the truth."""

    n_cases: int
    counts: Mapping[str, int]
    accuracy: Figure
    indeterminate_rate: Figure
    out_of_domain_rate: Figure
    accuracy_of_stated: Figure
    non_pneumonia_called_pneumonia: int
    out_of_domain_score_max: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "n_cases": self.n_cases,
            "counts": dict(self.counts),
            "accuracy": self.accuracy.to_json(),
            "indeterminate_rate": self.indeterminate_rate.to_json(),
            "out_of_domain_rate": self.out_of_domain_rate.to_json(),
            "accuracy_of_stated": self.accuracy_of_stated.to_json(),
            "non_pneumonia_called_pneumonia": self.non_pneumonia_called_pneumonia,
            "out_of_domain_score_max": self.out_of_domain_score_max,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DecisionFigures:
        return cls(
            n_cases=int(d["n_cases"]),
            counts={str(k): int(v) for k, v in d["counts"].items()},
            accuracy=Figure.from_json(d["accuracy"]),
            indeterminate_rate=Figure.from_json(d["indeterminate_rate"]),
            out_of_domain_rate=Figure.from_json(d["out_of_domain_rate"]),
            accuracy_of_stated=Figure.from_json(d["accuracy_of_stated"]),
            non_pneumonia_called_pneumonia=int(d["non_pneumonia_called_pneumonia"]),
            out_of_domain_score_max=_opt_float(d.get("out_of_domain_score_max")),
        )


@dataclass(frozen=True)
class InfectiousSlices:
    """Infectious-slice AUC and F1 over every case with lesion masks (all classes);
    ``f1_rule`` says what was counted as flagged, when it is not the locator's score."""

    n_cases: int
    n_slices: int
    threshold: float
    cohort: str
    auc: Figure
    f1: Figure
    f1_rule: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_cases": self.n_cases,
            "n_slices": self.n_slices,
            "threshold": self.threshold,
            "cohort": self.cohort,
            "auc": self.auc.to_json(),
            "f1": self.f1.to_json(),
        }
        _put(out, "f1_rule", self.f1_rule)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> InfectiousSlices:
        return cls(
            int(d["n_cases"]),
            int(d["n_slices"]),
            d["threshold"],
            str(d["cohort"]),
            Figure.from_json(d["auc"]),
            Figure.from_json(d["f1"]),
            d.get("f1_rule"),
        )


@dataclass(frozen=True)
class LesionDice:
    """The U-Net's lesion map against the truth, voxels pooled over ``cohort``."""

    n_cases: int
    cohort: str
    dice: Figure

    def to_json(self) -> dict[str, Any]:
        return {"n_cases": self.n_cases, "cohort": self.cohort, "dice": self.dice.to_json()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LesionDice:
        return cls(int(d["n_cases"]), str(d["cohort"]), Figure.from_json(d["dice"]))


@dataclass(frozen=True)
class ShareRange:
    """Min, median and max of the lesion share of the lung (a fraction) in a group."""

    min: float
    median: float
    max: float

    def to_json(self) -> dict[str, float]:
        return {"min": self.min, "median": self.median, "max": self.max}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ShareRange:
        return cls(float(d["min"]), float(d["median"]), float(d["max"]))


@dataclass(frozen=True)
class LesionShare:
    """The U-Net's lesion share of the lung as a pneumonia score."""

    n_cases: int
    pneumonia_auc: Figure | None = None
    non_pneumonia_share: ShareRange | None = None
    pneumonia_share: ShareRange | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_cases": self.n_cases}
        _put(out, "pneumonia_auc", self.pneumonia_auc)
        _put(out, "non_pneumonia_share", self.non_pneumonia_share)
        _put(out, "pneumonia_share", self.pneumonia_share)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LesionShare:
        return cls(
            int(d["n_cases"]),
            _opt(d, "pneumonia_auc", Figure.from_json),
            _opt(d, "non_pneumonia_share", ShareRange.from_json),
            _opt(d, "pneumonia_share", ShareRange.from_json),
        )


@dataclass(frozen=True)
class LesionPatternFigures:
    """The lesion pattern model alone, and the pneumonia type it and the slice classifier
    give the pneumonia cases (None without pneumonia cases)."""

    n_cases: int
    multiway_auc_macro: Figure
    pneumonia_cases: int | None = None
    type_accuracy: Figure | None = None
    type_accuracy_classifier: Figure | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_cases": self.n_cases, "multiway_auc_macro": self.multiway_auc_macro.to_json()}
        _put(out, "pneumonia_cases", self.pneumonia_cases)
        _put(out, "type_accuracy", self.type_accuracy)
        _put(out, "type_accuracy_classifier", self.type_accuracy_classifier)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LesionPatternFigures:
        return cls(
            int(d["n_cases"]),
            Figure.from_json(d["multiway_auc_macro"]),
            _opt(d, "pneumonia_cases", int),
            _opt(d, "type_accuracy", Figure.from_json),
            _opt(d, "type_accuracy_classifier", Figure.from_json),
        )


# ------------------------------------------------------------- severity, lobes


@dataclass(frozen=True)
class HealthyInvolvement:
    """Involvement (% of the lung) the chain gave the non-pneumonia cases."""

    mean: float
    max: float
    n_cases: int

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "max": self.max, "n_cases": self.n_cases}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HealthyInvolvement:
        return cls(float(d["mean"]), float(d["max"]), int(d["n_cases"]))


@dataclass(frozen=True)
class BlandAltman:
    """Bias and 95% limits of agreement, points (None with fewer than two cases)."""

    bias: float | None
    lower_limit: float | None
    upper_limit: float | None

    def to_json(self) -> dict[str, float | None]:
        return {"bias": self.bias, "lower_limit": self.lower_limit, "upper_limit": self.upper_limit}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BlandAltman:
        return cls(_opt_float(d.get("bias")), _opt_float(d.get("lower_limit")), _opt_float(d.get("upper_limit")))


@dataclass(frozen=True)
class GradeFigures:
    """The MosMedData grade of the chain's involvement against the truth grade
    (metrics.json: the ``grade_*`` keys of "severity")."""

    cohort: str
    n_cases: int
    confusion: tuple[tuple[int, ...], ...]  # rows truth CT-0..CT-4, columns the chain's grade
    kappa_quadratic: Figure

    def to_json(self) -> dict[str, Any]:
        return {
            "grade_cohort": self.cohort,
            "grade_n_cases": self.n_cases,
            "grade_confusion": self.confusion,
            "grade_kappa_quadratic": self.kappa_quadratic.to_json(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GradeFigures:
        return cls(
            str(d["grade_cohort"]),
            int(d["grade_n_cases"]),
            _counts(d["grade_confusion"]),
            Figure.from_json(d["grade_kappa_quadratic"]),
        )


@dataclass(frozen=True)
class SeverityFigures:
    """Whole-lung involvement (pipeline.severity) against the truth masks."""

    n_cases: int
    cohort: str
    involvement_mae_points: Figure
    involvement_bias_points: Figure
    grade_agreement: Figure
    bland_altman_points: BlandAltman
    non_pneumonia_involvement_percent: HealthyInvolvement | None = None
    grade: GradeFigures | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_cases": self.n_cases,
            "cohort": self.cohort,
            "involvement_mae_points": self.involvement_mae_points.to_json(),
            "involvement_bias_points": self.involvement_bias_points.to_json(),
            "grade_agreement": self.grade_agreement.to_json(),
        }
        _put(out, "non_pneumonia_involvement_percent", self.non_pneumonia_involvement_percent)
        out["bland_altman_points"] = self.bland_altman_points.to_json()
        if self.grade is not None:
            out.update(self.grade.to_json())
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SeverityFigures:
        return cls(
            n_cases=int(d["n_cases"]),
            cohort=str(d["cohort"]),
            involvement_mae_points=Figure.from_json(d["involvement_mae_points"]),
            involvement_bias_points=Figure.from_json(d["involvement_bias_points"]),
            grade_agreement=Figure.from_json(d["grade_agreement"]),
            bland_altman_points=BlandAltman.from_json(d.get("bland_altman_points") or {}),
            non_pneumonia_involvement_percent=_opt(
                d, "non_pneumonia_involvement_percent", HealthyInvolvement.from_json
            ),
            grade=GradeFigures.from_json(d) if "grade_kappa_quadratic" in d else None,
        )


@dataclass(frozen=True)
class LobeFigures:
    """One lobe: Dice of the chain's lobe map, mean absolute involvement error (points)."""

    dice: Figure
    involvement_mae_points: Figure | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dice": self.dice.to_json()}
        _put(out, "involvement_mae_points", self.involvement_mae_points)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LobeFigures:
        return cls(Figure.from_json(d["dice"]), _opt(d, "involvement_mae_points", Figure.from_json))


@dataclass(frozen=True)
class LobesFigures:
    """The chain's lobe map against the truth lobe map; ``per_lobe`` in severity.LOBES order."""

    n_cases: int
    n_cases_with_involvement: int
    cohort: str
    mean_dice: Figure
    per_lobe: Mapping[str, LobeFigures]

    def to_json(self) -> dict[str, Any]:
        return {
            "n_cases": self.n_cases,
            "n_cases_with_involvement": self.n_cases_with_involvement,
            "cohort": self.cohort,
            "mean_dice": self.mean_dice.to_json(),
            "per_lobe": {name: lobe.to_json() for name, lobe in self.per_lobe.items()},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LobesFigures:
        return cls(
            int(d["n_cases"]),
            int(d["n_cases_with_involvement"]),
            str(d["cohort"]),
            Figure.from_json(d["mean_dice"]),
            {str(k): LobeFigures.from_json(v) for k, v in d["per_lobe"].items()},
        )


# ---------------------------------------- healthy cases, inclusion, Grad-CAM heat


@dataclass(frozen=True)
class SlicesPerCase:
    """Infectious slices per non-pneumonia case (flagged by the locator, or stated)."""

    n_cases: int
    max: int
    mean: Figure

    def to_json(self) -> dict[str, Any]:
        return {"n_cases": self.n_cases, "max": self.max, "mean": self.mean.to_json()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SlicesPerCase:
        return cls(int(d["n_cases"]), int(d["max"]), Figure.from_json(d["mean"]))


@dataclass(frozen=True)
class LesionInclusion:
    """Share of the lesion voxels inside the chain's lung mask."""

    n_cases: int
    min: float
    mean: Figure

    def to_json(self) -> dict[str, Any]:
        return {"n_cases": self.n_cases, "min": self.min, "mean": self.mean.to_json()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LesionInclusion:
        return cls(int(d["n_cases"]), float(d["min"]), Figure.from_json(d["mean"]))


@dataclass(frozen=True)
class HeatFigures:
    """Where the Guided Grad-CAM heat of the overlays lies (``what`` says which share)."""

    what: str
    n_cases: int
    n_overlays: int
    min: float
    share_at_least_0_8: float  # metrics.json: "share_of_overlays_at_least_0.8"
    mean: Figure

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "n_cases": self.n_cases,
            "n_overlays": self.n_overlays,
            "min": self.min,
            "share_of_overlays_at_least_0.8": self.share_at_least_0_8,
            "mean": self.mean.to_json(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HeatFigures:
        return cls(
            str(d["what"]),
            int(d["n_cases"]),
            int(d["n_overlays"]),
            float(d["min"]),
            float(d["share_of_overlays_at_least_0.8"]),
            Figure.from_json(d["mean"]),
        )


# ------------------------------------------------------------------ readers


@dataclass(frozen=True)
class ReaderRow:
    """One row of Table 3: the AI, a reader (with sensitivity and specificity) or a
    pooled row ("any reader", "all readers", with its ``meaning``)."""

    name: str
    n_cases: int
    correct: int
    wrong: int
    sensitivity: Figure | None = None
    specificity: Figure | None = None
    meaning: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "n_cases": self.n_cases, "correct": self.correct, "wrong": self.wrong}
        _put(out, "sensitivity", self.sensitivity)
        _put(out, "specificity", self.specificity)
        _put(out, "meaning", self.meaning)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ReaderRow:
        return cls(
            str(d["name"]),
            int(d["n_cases"]),
            int(d["correct"]),
            int(d["wrong"]),
            _opt(d, "sensitivity", Figure.from_json),
            _opt(d, "specificity", Figure.from_json),
            d.get("meaning"),
        )


@dataclass(frozen=True)
class ReaderComparison:
    """Table 3: the AI against each reader on the cases the readers read."""

    task: str
    positive_class: str
    n_cases: int
    readers: tuple[str, ...]
    case_ids: tuple[str, ...]
    unmatched_case_ids: tuple[str, ...]
    rows: tuple[ReaderRow, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "positive_class": self.positive_class,
            "n_cases": self.n_cases,
            "readers": list(self.readers),
            "case_ids": list(self.case_ids),
            "unmatched_case_ids": list(self.unmatched_case_ids),
            "rows": [row.to_json() for row in self.rows],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ReaderComparison:
        return cls(
            str(d["task"]),
            str(d["positive_class"]),
            int(d["n_cases"]),
            tuple(d["readers"]),
            tuple(d["case_ids"]),
            tuple(d.get("unmatched_case_ids") or ()),
            tuple(ReaderRow.from_json(r) for r in d["rows"]),
        )


# -------------------------------------------------------- how it was measured


@dataclass(frozen=True)
class BootstrapInfo:
    """How the intervals were made, and the resamples each figure had to leave out."""

    n_resamples: int
    seed: int
    confidence: float
    method: str
    skipped_resamples: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "confidence": self.confidence,
            "method": self.method,
            "skipped_resamples": dict(self.skipped_resamples),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BootstrapInfo:
        return cls(
            int(d["n_resamples"]),
            int(d["seed"]),
            d["confidence"],
            str(d.get("method", "")),
            {str(k): int(v) for k, v in (d.get("skipped_resamples") or {}).items()},
        )


@dataclass(frozen=True)
class BundleSummary:
    """The evaluated model bundle as metrics.json names it."""

    path: str
    name: str
    version: str
    trained_on_synthetic_data: bool
    disclaimer: str

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "version": self.version,
            "trained_on_synthetic_data": self.trained_on_synthetic_data,
            "disclaimer": self.disclaimer,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BundleSummary:
        return cls(
            str(d.get("path", "")),
            str(d.get("name", "?")),
            str(d.get("version", "")),
            bool(d.get("trained_on_synthetic_data", False)),
            str(d.get("disclaimer", "")),
        )


@dataclass(frozen=True)
class FailedCase:
    """A case the chain could not analyse (``--skip-failed``), left out of every figure."""

    case_id: str
    error: str

    def to_json(self) -> dict[str, str]:
        return {"case_id": self.case_id, "error": self.error}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FailedCase:
        return cls(str(d["case_id"]), str(d["error"]))


@dataclass(frozen=True)
class ChainSummary:
    """The chain settings the cases were scored with."""

    top_k: int
    decision_threshold: float
    locator_threshold: float
    max_slices: int

    def to_json(self) -> dict[str, Any]:
        return {
            "top_k": self.top_k,
            "decision_threshold": self.decision_threshold,
            "locator_threshold": self.locator_threshold,
            "max_slices": self.max_slices,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ChainSummary:
        return cls(d["top_k"], d["decision_threshold"], d["locator_threshold"], d["max_slices"])


@dataclass(frozen=True)
class EvaluationRun:
    """What was evaluated and how (``evaluate_bundle`` adds it; the first keys of metrics.json)."""

    data_spec: str
    #: The data set's own description (``Dataset.describe()``): its shape is the reader's.
    data: Mapping[str, Any]
    bundle_sha256: str
    bundle: BundleSummary
    failed_cases: tuple[FailedCase, ...]
    chain_params: ChainSummary
    #: The bundle card's operating points (pipeline.decision.OperatingPoints.as_card()).
    operating_points: Mapping[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "data_spec": self.data_spec,
            "data": self.data,
            "bundle_sha256": self.bundle_sha256,
            "bundle": self.bundle.to_json(),
            "failed_cases": [f.to_json() for f in self.failed_cases],
            "chain_params": self.chain_params.to_json(),
            "operating_points": self.operating_points,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EvaluationRun:
        return cls(
            data_spec=str(d.get("data_spec", "")),
            data=d.get("data") or {},
            bundle_sha256=str(d.get("bundle_sha256", "?")),
            bundle=BundleSummary.from_json(d.get("bundle") or {}),
            failed_cases=tuple(FailedCase.from_json(f) for f in d.get("failed_cases") or ()),
            chain_params=ChainSummary.from_json(d["chain_params"]),
            operating_points=d.get("operating_points"),
        )


# ----------------------------------------------------------------- the whole


@dataclass(frozen=True)
class EvaluationMetrics:
    """Every figure of an evaluation (see the module docstring). ``run`` is None for
    metrics computed without a bundle run (``compute_metrics`` alone), ``plots`` until
    ``write_outputs`` drew them ({what: PNG file name})."""

    decision_threshold: float | None
    classes: ClassFigures
    tasks: Mapping[str, TaskFigures]
    bootstrap: BootstrapInfo
    lung_dice: LungDice | None = None
    locating: Locating | None = None
    decision: DecisionFigures | None = None
    infectious_slices: InfectiousSlices | None = None
    lesion_dice: LesionDice | None = None
    lesion_share: LesionShare | None = None
    lesion_pattern: LesionPatternFigures | None = None
    severity: SeverityFigures | None = None
    lobes: LobesFigures | None = None
    non_pneumonia_flagged_slices: SlicesPerCase | None = None
    non_pneumonia_stated_slices: SlicesPerCase | None = None
    lesion_inclusion: LesionInclusion | None = None
    heat_inside_lung: HeatFigures | None = None
    heat_on_lesion: HeatFigures | None = None
    #: The class block by subset key (sex, age_band, stage) and value.
    subsets: Mapping[str, Mapping[str, ClassFigures]] = field(default_factory=dict)
    readers: ReaderComparison | None = None
    run: EvaluationRun | None = None
    plots: Mapping[str, str] | None = None

    @property
    def n_cases(self) -> int:
        return self.classes.n_cases

    def to_json(self) -> dict[str, Any]:
        """The metrics.json dict: strict JSON (NaN -> null), keys in the file's order."""
        out: dict[str, Any] = {} if self.run is None else self.run.to_json()
        out.update(n_cases=self.n_cases, decision_threshold=self.decision_threshold)
        out.update(self.classes.to_json())
        out["tasks"] = {name: t.to_json() for name, t in self.tasks.items()}
        out["lung_dice"] = None if self.lung_dice is None else self.lung_dice.to_json()
        out["locating"] = None if self.locating is None else self.locating.to_json()
        _put(out, "decision", self.decision)
        _put(out, "infectious_slices", self.infectious_slices)
        _put(out, "lesion_dice", self.lesion_dice)
        _put(out, "lesion_share", self.lesion_share)
        _put(out, "lesion_pattern", self.lesion_pattern)
        _put(out, "severity", self.severity)
        _put(out, "lobes", self.lobes)
        _put(out, "non_pneumonia_flagged_slices", self.non_pneumonia_flagged_slices)
        _put(out, "non_pneumonia_stated_slices", self.non_pneumonia_stated_slices)
        _put(out, "lesion_inclusion", self.lesion_inclusion)
        _put(out, "heat_inside_lung", self.heat_inside_lung)
        _put(out, "heat_on_lesion", self.heat_on_lesion)
        out["subsets"] = {
            key: {value: block.to_json() for value, block in groups.items()} for key, groups in self.subsets.items()
        }
        out["readers"] = None if self.readers is None else self.readers.to_json()
        out["bootstrap"] = self.bootstrap.to_json()
        if self.plots is not None:
            out["plots"] = dict(self.plots)
        result: dict[str, Any] = json_ready(out)
        return result

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EvaluationMetrics:
        """Read a metrics.json dict (or a model card's copy of its figures) back."""
        return cls(
            decision_threshold=d.get("decision_threshold"),
            classes=ClassFigures.from_json(d),
            tasks={str(k): TaskFigures.from_json(v) for k, v in (d.get("tasks") or {}).items()},
            bootstrap=BootstrapInfo.from_json(d["bootstrap"]),
            lung_dice=_opt(d, "lung_dice", LungDice.from_json),
            locating=_opt(d, "locating", Locating.from_json),
            decision=_opt(d, "decision", DecisionFigures.from_json),
            infectious_slices=_opt(d, "infectious_slices", InfectiousSlices.from_json),
            lesion_dice=_opt(d, "lesion_dice", LesionDice.from_json),
            lesion_share=_opt(d, "lesion_share", LesionShare.from_json),
            lesion_pattern=_opt(d, "lesion_pattern", LesionPatternFigures.from_json),
            severity=_opt(d, "severity", SeverityFigures.from_json),
            lobes=_opt(d, "lobes", LobesFigures.from_json),
            non_pneumonia_flagged_slices=_opt(d, "non_pneumonia_flagged_slices", SlicesPerCase.from_json),
            non_pneumonia_stated_slices=_opt(d, "non_pneumonia_stated_slices", SlicesPerCase.from_json),
            lesion_inclusion=_opt(d, "lesion_inclusion", LesionInclusion.from_json),
            heat_inside_lung=_opt(d, "heat_inside_lung", HeatFigures.from_json),
            heat_on_lesion=_opt(d, "heat_on_lesion", HeatFigures.from_json),
            subsets={
                str(key): {str(v): ClassFigures.from_json(b) for v, b in groups.items()}
                for key, groups in (d.get("subsets") or {}).items()
            },
            readers=_opt(d, "readers", ReaderComparison.from_json),
            run=EvaluationRun.from_json(d) if "chain_params" in d else None,
            plots=_opt(d, "plots", lambda p: {str(k): str(v) for k, v in p.items()}),
        )
