"""The whole of an evaluation's figures (``EvaluationMetrics``, metrics.json) and how they
were measured (bootstrap, bundle, data, chain settings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .base import json_ready, opt, put
from .classes import ClassFigures, ReaderComparison, TaskFigures
from .cxr import CxrComparison
from .findings import (
    DecisionFigures,
    HeatFigures,
    InfectiousSlices,
    LesionDice,
    LesionInclusion,
    LesionPatternFigures,
    LesionShare,
    Locating,
    LungDice,
    SlicesPerCase,
)
from .severity import LobesFigures, SeverityFigures

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
    #: CT alone vs CXR alone vs fused (a bundle with a CXR model, cases with a localizer).
    cxr: CxrComparison | None = None
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
        put(out, "decision", self.decision)
        put(out, "infectious_slices", self.infectious_slices)
        put(out, "lesion_dice", self.lesion_dice)
        put(out, "lesion_share", self.lesion_share)
        put(out, "lesion_pattern", self.lesion_pattern)
        put(out, "severity", self.severity)
        put(out, "lobes", self.lobes)
        put(out, "non_pneumonia_flagged_slices", self.non_pneumonia_flagged_slices)
        put(out, "non_pneumonia_stated_slices", self.non_pneumonia_stated_slices)
        put(out, "lesion_inclusion", self.lesion_inclusion)
        put(out, "heat_inside_lung", self.heat_inside_lung)
        put(out, "heat_on_lesion", self.heat_on_lesion)
        out["subsets"] = {
            key: {value: block.to_json() for value, block in groups.items()} for key, groups in self.subsets.items()
        }
        out["readers"] = None if self.readers is None else self.readers.to_json()
        put(out, "cxr", self.cxr)
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
            lung_dice=opt(d, "lung_dice", LungDice.from_json),
            locating=opt(d, "locating", Locating.from_json),
            decision=opt(d, "decision", DecisionFigures.from_json),
            infectious_slices=opt(d, "infectious_slices", InfectiousSlices.from_json),
            lesion_dice=opt(d, "lesion_dice", LesionDice.from_json),
            lesion_share=opt(d, "lesion_share", LesionShare.from_json),
            lesion_pattern=opt(d, "lesion_pattern", LesionPatternFigures.from_json),
            severity=opt(d, "severity", SeverityFigures.from_json),
            lobes=opt(d, "lobes", LobesFigures.from_json),
            non_pneumonia_flagged_slices=opt(d, "non_pneumonia_flagged_slices", SlicesPerCase.from_json),
            non_pneumonia_stated_slices=opt(d, "non_pneumonia_stated_slices", SlicesPerCase.from_json),
            lesion_inclusion=opt(d, "lesion_inclusion", LesionInclusion.from_json),
            heat_inside_lung=opt(d, "heat_inside_lung", HeatFigures.from_json),
            heat_on_lesion=opt(d, "heat_on_lesion", HeatFigures.from_json),
            subsets={
                str(key): {str(v): ClassFigures.from_json(b) for v, b in groups.items()}
                for key, groups in (d.get("subsets") or {}).items()
            },
            readers=opt(d, "readers", ReaderComparison.from_json),
            cxr=opt(d, "cxr", CxrComparison.from_json),
            run=EvaluationRun.from_json(d) if "chain_params" in d else None,
            plots=opt(d, "plots", lambda p: {str(k): str(v) for k, v in p.items()}),
        )
