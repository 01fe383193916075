"""Severity figures: whole-lung involvement and MosMedData grade against the truth, and
the lobe map per lobe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .base import Figure, count_rows, opt, opt_float, put

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
        return cls(opt_float(d.get("bias")), opt_float(d.get("lower_limit")), opt_float(d.get("upper_limit")))


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
            count_rows(d["grade_confusion"]),
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
        put(out, "non_pneumonia_involvement_percent", self.non_pneumonia_involvement_percent)
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
            non_pneumonia_involvement_percent=opt(d, "non_pneumonia_involvement_percent", HealthyInvolvement.from_json),
            grade=GradeFigures.from_json(d) if "grade_kappa_quadratic" in d else None,
        )


@dataclass(frozen=True)
class LobeFigures:
    """One lobe: Dice of the chain's lobe map, mean absolute involvement error (points)."""

    dice: Figure
    involvement_mae_points: Figure | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dice": self.dice.to_json()}
        put(out, "involvement_mae_points", self.involvement_mae_points)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LobeFigures:
        return cls(Figure.from_json(d["dice"]), opt(d, "involvement_mae_points", Figure.from_json))


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
