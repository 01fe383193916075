"""The classification figures: the class block (per class and multi-way), the binary
tasks, and the reader comparison (Table 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .base import Figure, count_rows, figure_map, opt, put

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
        return cls(tuple(d["labels"]), count_rows(d["counts"]))


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
        put(out, "confusion_matrix", self.confusion_matrix)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ClassFigures:
        return cls(
            n_cases=int(d["n_cases"]),
            class_counts={str(k): int(v) for k, v in (d.get("class_counts") or {}).items()},
            per_class_auc=figure_map(d["per_class_auc"]),
            multiway_auc=MultiwayAuc.from_json(d["multiway_auc"]),
            accuracy=Figure.from_json(d["accuracy"]),
            per_class_sensitivity=opt(d, "per_class_sensitivity", figure_map),
            per_class_specificity=opt(d, "per_class_specificity", figure_map),
            confusion_matrix=opt(d, "confusion_matrix", ConfusionMatrix.from_json),
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
        put(out, "auc", self.auc)
        put(out, "sensitivity", self.sensitivity)
        put(out, "specificity", self.specificity)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TaskFigures:
        return cls(
            n_cases=int(d["n_cases"]),
            n_positive=int(d["n_positive"]),
            positive=str(d["positive"]),
            cohort=tuple(d.get("cohort") or ()),
            threshold=float(d["threshold"]),
            auc=opt(d, "auc", Figure.from_json),
            sensitivity=opt(d, "sensitivity", Figure.from_json),
            specificity=opt(d, "specificity", Figure.from_json),
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
        put(out, "sensitivity", self.sensitivity)
        put(out, "specificity", self.specificity)
        put(out, "meaning", self.meaning)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ReaderRow:
        return cls(
            str(d["name"]),
            int(d["n_cases"]),
            int(d["correct"]),
            int(d["wrong"]),
            opt(d, "sensitivity", Figure.from_json),
            opt(d, "specificity", Figure.from_json),
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
