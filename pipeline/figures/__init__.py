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

Modules: ``base`` (``Figure`` and the JSON helpers), ``classes`` (class block, binary
tasks, readers), ``findings`` (lung, locator, decision, lesions, heat), ``severity``
(involvement, grade, lobes), ``evaluation`` (``EvaluationMetrics`` and how it was
measured). Import from ``pipeline.figures``.
"""

from .base import Figure, json_ready
from .classes import ClassFigures, ConfusionMatrix, MultiwayAuc, ReaderComparison, ReaderRow, TaskFigures
from .cxr import CxrComparison, ScoreFigures
from .evaluation import BootstrapInfo, BundleSummary, ChainSummary, EvaluationMetrics, EvaluationRun, FailedCase
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
    ShareRange,
    SlicesPerCase,
)
from .severity import BlandAltman, GradeFigures, HealthyInvolvement, LobeFigures, LobesFigures, SeverityFigures

__all__ = [
    "CxrComparison",
    "ScoreFigures",
    "BlandAltman",
    "BootstrapInfo",
    "BundleSummary",
    "ChainSummary",
    "ClassFigures",
    "ConfusionMatrix",
    "DecisionFigures",
    "EvaluationMetrics",
    "EvaluationRun",
    "FailedCase",
    "Figure",
    "GradeFigures",
    "HealthyInvolvement",
    "HeatFigures",
    "InfectiousSlices",
    "LesionDice",
    "LesionInclusion",
    "LesionPatternFigures",
    "LesionShare",
    "LobeFigures",
    "LobesFigures",
    "Locating",
    "LungDice",
    "MultiwayAuc",
    "ReaderComparison",
    "ReaderRow",
    "SeverityFigures",
    "ShareRange",
    "SlicesPerCase",
    "TaskFigures",
    "json_ready",
]
