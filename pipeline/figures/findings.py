"""What the chain found and where it looked, against the truth: lung Dice, the locator,
the stated decision, infectious slices, lesions, the lesion pattern model, slices in
healthy cases, lesion inclusion and Grad-CAM heat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .base import Figure, opt, opt_float, put


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
            opt(d, "classical_mean", Figure.from_json),
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
            out_of_domain_score_max=opt_float(d.get("out_of_domain_score_max")),
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
        put(out, "f1_rule", self.f1_rule)
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
        put(out, "pneumonia_auc", self.pneumonia_auc)
        put(out, "non_pneumonia_share", self.non_pneumonia_share)
        put(out, "pneumonia_share", self.pneumonia_share)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LesionShare:
        return cls(
            int(d["n_cases"]),
            opt(d, "pneumonia_auc", Figure.from_json),
            opt(d, "non_pneumonia_share", ShareRange.from_json),
            opt(d, "pneumonia_share", ShareRange.from_json),
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
        put(out, "pneumonia_cases", self.pneumonia_cases)
        put(out, "type_accuracy", self.type_accuracy)
        put(out, "type_accuracy_classifier", self.type_accuracy_classifier)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LesionPatternFigures:
        return cls(
            int(d["n_cases"]),
            Figure.from_json(d["multiway_auc_macro"]),
            opt(d, "pneumonia_cases", int),
            opt(d, "type_accuracy", Figure.from_json),
            opt(d, "type_accuracy_classifier", Figure.from_json),
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
