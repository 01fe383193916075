"""Evaluation of a model bundle with the paper's protocol (Table 2 and Table 3).

Three steps, each usable alone:

1. ``score_cases``: every case of a dataset -> ``pipeline.chain.analyze`` -> a
   ``CaseRecord`` (truth, fused scores, max-pooled features, lung Dice and slice-level
   locating data when the dataset has masks). The models are an argument.
2. ``compute_metrics``: records -> ``pipeline.figures.EvaluationMetrics``, typed figures
   whose ``to_json()`` is ``metrics.json`` (every figure as {"value", "ci_low", "ci_high"}
   with a seeded case bootstrap).
3. ``write_outputs``: records + metrics -> ``scores.csv``, ``metrics.json``, PNG plots
   and ``report.md`` in a folder.

``evaluate_bundle`` runs all three; ``dicomnode evaluate`` only parses, loads and calls it.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import figures as F
from . import metrics as M
from .params import ChainParams, EvalParams
from .severity import LOBES, MOSMED_GRADE_BOUNDS, mosmed_grade
from .types import CLASS_NAMES, PNEUMONIA_CLASSES, TASK_NAMES, PipelineError

#: scores.csv columns, in order.
SCORE_COLUMNS: tuple[str, ...] = (
    "case_id",
    "truth",
    *(f"p_{c}" for c in CLASS_NAMES),
    *TASK_NAMES,
    "predicted",
    "decision",
    "out_of_domain_score",
    "flagged_slices",
    "lesion_share",
    *(f"pattern_p_{c}" for c in CLASS_NAMES),
)

#: For each binary task: (positive class, classes of the cases it is measured on).
#: The pneumonia task is measured on all cases; its positives are the three pneumonias.
TASK_COHORTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pneumonia_vs_non_pneumonia": ("pneumonia", CLASS_NAMES),
    "covid19_vs_cap": ("covid19", ("covid19", "cap")),
    "covid19_vs_influenza": ("covid19", ("covid19", "influenza")),
}


class EvaluationError(PipelineError):
    """The evaluation cannot go on (a case failed, a readers file is wrong...)."""


@dataclass(frozen=True)
class CaseRecord:
    """What the evaluation keeps of one analysed case (arrays are small)."""

    case_id: str
    truth: str
    probabilities: np.ndarray  # (4,) CLASS_NAMES order
    tasks: np.ndarray  # (3,) TASK_NAMES order
    predicted: str
    features: np.ndarray | None = None  # max-pooled penultimate features
    sex: str | None = None
    age: float | None = None
    stage: str | None = None
    lung_dice: float | None = None
    lung_method: str | None = None  # "unet" or "classical": what the chain used
    lung_dice_classical: float | None = None  # reference method, when the chain used the U-Net
    slice_scores: np.ndarray | None = None  # locator scores of scored slices only
    slice_truth: np.ndarray | None = None  # bool, same slices
    decision: str = ""  # what the report states (DECISIONS); "" when not made
    out_of_domain_score: float = float("nan")
    n_flagged_slices: int = 0  # slices the locator reported at the bundle's threshold
    lesion_inclusion: float | None = None  # share of lesion voxels inside the chain's lung mask
    heat_inside_lung: tuple[float, ...] = ()  # raw Guided Grad-CAM share inside the lung, per overlay
    heat_on_lesion: tuple[float, ...] = ()  # shown heat share on lesion pixels, per overlay
    slice_features: np.ndarray | None = None  # (n_slices, f) classified slices' features (calibration)
    image_stats: Mapping[str, float] | None = None  # pipeline.domain.image_statistics (calibration)
    slice_flagged: np.ndarray | None = None  # bool, scored slices: reported infectious (lesion-gated)
    slice_lesion_mm2: np.ndarray | None = None  # scored slices: lesion area of the U-Net's lesion map
    lesion_share: float | None = None  # U-Net lesion share of the lung (None: no lesion map)
    lesion_overlap: tuple[int, int, int] | None = None  # lesion voxels (predicted & truth, predicted, truth)
    pattern_probabilities: np.ndarray | None = None  # (4,) the lesion pattern model's, CLASS_NAMES order
    involvement_percent: float | None = None  # pipeline.severity: the lesion map's share of the lung mask
    involvement_truth_percent: float | None = None  # the truth lesion mask's share of the truth lung mask
    # Per lobe (severity.LOBES order; nan where neither map holds the lobe), with a truth lobe map:
    lobe_dice: tuple[float, ...] | None = None  # Dice of the chain's lobe map against the truth's
    lobe_involvement_error: tuple[float, ...] | None = None  # involvement, chain minus truth, points
    #: The truth's MosMedData-style grade 0-4: the data set's (manifest ``severity``,
    #: MosMedData's group), else the grade of the truth masks' involvement; None: neither.
    grade_truth: int | None = None
    # The CXR branch (a bundle with a CXR model, a case with a localizer; pipeline.cxr):
    cxr_classes: tuple[str, ...] = ()  # the CXR model's classes
    cxr_scores: np.ndarray | None = None  # its probabilities, cxr_classes order
    ct_cxr_scores: np.ndarray | None = None  # the CT's scores over the same classes (renormalised)
    fused_decision: str | None = None  # what the node would state fused; None: not fused
    not_fused: str | None = None  # why not: "ct_indeterminate", "ct_out_of_domain", "ct_other_class"

    def __post_init__(self) -> None:
        if self.truth not in CLASS_NAMES:
            raise ValueError(f"case {self.case_id}: truth {self.truth!r} is not one of {CLASS_NAMES}")
        if self.predicted not in CLASS_NAMES:
            raise ValueError(f"case {self.case_id}: predicted {self.predicted!r} is not one of {CLASS_NAMES}")


@dataclass(frozen=True)
class ReaderCall:
    """One line of a readers file: reader ``reader`` called case ``case_id`` ``call``."""

    case_id: str
    reader: str
    call: str


# ----------------------------------------------------------------------- scoring


def _loaded_parts(loaded: Any) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """(volume, lung_mask, lesion_mask) from what ``Case.load()`` returns (a tuple or an
    object with those attributes)."""
    if isinstance(loaded, tuple):
        parts = list(loaded) + [None, None]
        return parts[0], parts[1], parts[2]
    volume = getattr(loaded, "volume", loaded)
    return volume, getattr(loaded, "lung_mask", None), getattr(loaded, "lesion_mask", None)


def _text_or_none(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _age_or_none(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        age = float(value)
    except (TypeError, ValueError):
        return None
    return age if math.isfinite(age) else None


def record_from_result(
    case: Any,
    result: Any,
    lung_mask: np.ndarray | None,
    lesion_mask: np.ndarray | None,
    eval_params: EvalParams = EvalParams(),
    classical_mask: np.ndarray | None = None,
    lobe_mask: np.ndarray | None = None,
) -> CaseRecord:
    """Turn one AnalysisResult (and the case's truth masks and lobe map, if any) into a
    CaseRecord. ``classical_mask``: the reference segmentation, when one was made."""
    cs = result.case_scores
    feats = result.slice_scores.features
    pooled = None if feats is None or len(feats) == 0 else np.asarray(feats, dtype=np.float32).max(axis=0)
    lung_dice = lung_dice_classical = None
    if lung_mask is not None:
        lung_dice = M.dice(np.asarray(lung_mask, bool), result.lung_mask.mask)
        if classical_mask is not None:
            lung_dice_classical = M.dice(np.asarray(lung_mask, bool), classical_mask)
    lesion_overlap = None
    slice_scores, slice_truth, slice_flagged, slice_lesion_mm2 = _slice_fields(case, result, lesion_mask, eval_params)
    burden = getattr(result, "lesion", None)
    predicted_lesion = getattr(result.lung_mask, "lesion", None)
    if predicted_lesion is not None and lesion_mask is not None:
        truth_lesion = np.asarray(lesion_mask, bool)
        lesion_overlap = (
            int(np.count_nonzero(predicted_lesion & truth_lesion)),
            int(np.count_nonzero(predicted_lesion)),
            int(np.count_nonzero(truth_lesion)),
        )
    inclusion, heat_in, heat_les = _mask_figures(result, lung_mask, lesion_mask)
    pattern = getattr(result, "lesion_pattern", None)
    pattern_probs = None
    if pattern is not None and pattern.probabilities is not None:
        pattern_probs = np.array([pattern.probabilities.get(c, 0.0) for c in CLASS_NAMES], dtype=np.float64)
    record = CaseRecord(
        case_id=str(case.case_id),
        truth=str(case.label),
        probabilities=np.array([cs.probabilities[c] for c in CLASS_NAMES], dtype=np.float64),
        tasks=np.array([cs.tasks[t] for t in TASK_NAMES], dtype=np.float64),
        predicted=str(cs.label),
        features=pooled,
        sex=_text_or_none(getattr(case, "sex", None)),
        age=_age_or_none(getattr(case, "age", None)),
        stage=_text_or_none(getattr(case, "stage", None)),
        lung_dice=lung_dice,
        lung_method=str(result.lung_mask.method),
        lung_dice_classical=lung_dice_classical,
        decision=str(getattr(getattr(result, "decision", None), "value", "")),
        out_of_domain_score=float(getattr(getattr(result, "domain", None), "score", float("nan"))),
        n_flagged_slices=len(result.infected.z_indices),
        lesion_inclusion=inclusion,
        heat_inside_lung=heat_in,
        heat_on_lesion=heat_les,
        slice_features=None if feats is None else np.asarray(feats, dtype=np.float32),
        image_stats=dict(getattr(getattr(result, "domain", None), "image_stats", {}) or {}) or None,
        lesion_share=None if burden is None else float(burden.lung_share),
        lesion_overlap=lesion_overlap,
        pattern_probabilities=pattern_probs,
        slice_scores=slice_scores,
        slice_truth=slice_truth,
        slice_flagged=slice_flagged,
        slice_lesion_mm2=slice_lesion_mm2,
    )
    severity = _severity_record_fields(case, result, lung_mask, lesion_mask)
    return replace(record, **severity, **_lobe_record_fields(result, lobe_mask, lesion_mask))


def _slice_fields(
    case: Any, result: Any, lesion_mask: np.ndarray | None, eval_params: EvalParams
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """CaseRecord's per-slice fields (scored slices only): locator scores, truth, flags,
    the U-Net's lesion area; all None without a lesion truth."""
    slice_scores = slice_truth = slice_flagged = slice_lesion_mm2 = None
    if lesion_mask is not None:
        lesion = np.asarray(lesion_mask, bool)
        scores = np.asarray(result.infected.scores, dtype=np.float64)
        if lesion.shape[0] != scores.shape[0]:
            raise EvaluationError(
                f"case {case.case_id}: lesion mask has {lesion.shape[0]} slices, "
                f"the volume {scores.shape[0]}; the masks must be aligned with the volume"
            )
        truth = lesion.reshape(lesion.shape[0], -1).sum(axis=1) > eval_params.lesion_min_px
        scored = np.isfinite(scores)
        slice_scores, slice_truth = scores[scored], truth[scored]
        flagged = np.zeros(scores.shape[0], dtype=bool)
        flagged[list(result.infected.z_indices)] = True
        slice_flagged = flagged[scored]
    burden = getattr(result, "lesion", None)
    if burden is not None and slice_scores is not None:
        slice_lesion_mm2 = np.asarray(burden.slice_area_mm2, dtype=np.float64)[scored]
    return slice_scores, slice_truth, slice_flagged, slice_lesion_mm2


def _severity_record_fields(
    case: Any, result: Any, lung_mask: np.ndarray | None, lesion_mask: np.ndarray | None
) -> dict[str, Any]:
    """CaseRecord's whole-lung severity fields: the chain's involvement, the truth masks'
    and the truth grade (see CaseRecord.grade_truth)."""
    severity = getattr(result, "severity", None)
    truth_involvement = None
    if lesion_mask is not None and lung_mask is not None and np.any(lung_mask):
        truth_lung = np.asarray(lung_mask, bool)
        truth_involvement = (
            100.0 * np.count_nonzero(np.asarray(lesion_mask, bool) & truth_lung) / np.count_nonzero(truth_lung)
        )
    stated = str((getattr(case, "extras", None) or {}).get("severity") or "")
    grade = int(stated[3:]) if stated.startswith("CT-") else None
    if grade is None and truth_involvement is not None:
        grade = mosmed_grade(truth_involvement)
    return {
        "involvement_percent": None if severity is None else float(severity.lungs.involvement_percent),
        "involvement_truth_percent": truth_involvement,
        "grade_truth": grade,
    }


def _lobe_record_fields(result: Any, lobe_mask: np.ndarray | None, lesion_mask: np.ndarray | None) -> dict[str, Any]:
    """CaseRecord's per-lobe fields: the chain's lobe map (LungMask.lobes) against the
    truth lobe map, and, with a lesion truth and a severity per lobe, the involvement
    error per lobe. Empty without a truth lobe map or a chain lobe map."""
    predicted = getattr(result.lung_mask, "lobes", None)
    if lobe_mask is None or predicted is None:
        return {}
    truth = np.asarray(lobe_mask)
    dice = []
    for i in range(1, len(LOBES) + 1):
        a, b = predicted == i, truth == i
        dice.append(M.dice(b, a) if a.any() or b.any() else float("nan"))
    out: dict[str, Any] = {"lobe_dice": tuple(dice)}
    severity = getattr(result, "severity", None)
    if lesion_mask is not None and severity is not None and severity.lobes:
        lesion = np.asarray(lesion_mask, bool)
        stated = {lobe.name: lobe.involvement_percent for lobe in severity.lobes}
        errors = []
        for i, name in enumerate(LOBES, start=1):
            region = truth == i
            true_pct = 100.0 * np.count_nonzero(lesion & region) / (int(np.count_nonzero(region)) or 1)
            errors.append(float(stated[name]) - true_pct if name in stated and region.any() else float("nan"))
        out["lobe_involvement_error"] = tuple(errors)
    return out


def _loaded_lobes(loaded: Any) -> np.ndarray | None:
    """The truth lobe map of what ``Case.load()`` returned (CaseData.lobe_mask), if any."""
    if isinstance(loaded, tuple) and not hasattr(loaded, "lobe_mask"):
        return loaded[3] if len(loaded) > 3 else None
    return getattr(loaded, "lobe_mask", None)


def _mask_figures(
    result: Any, lung_mask: np.ndarray | None, lesion_mask: np.ndarray | None
) -> tuple[float | None, tuple[float, ...], tuple[float, ...]]:
    """Lesion inclusion of the chain's lung mask, and per overlay the raw heat share
    inside the lung and the shown heat share on lesions (when the case has lesions)."""
    inclusion = None
    lesion = None if lesion_mask is None else np.asarray(lesion_mask, bool)
    if lesion is not None and lesion.any():
        inclusion = float(np.count_nonzero(lesion & result.lung_mask.mask)) / float(np.count_nonzero(lesion))
    heat_in: list[float] = []
    heat_les: list[float] = []
    for att in getattr(result, "attention", ()):
        if np.isfinite(att.raw_inside_lung):
            heat_in.append(float(att.raw_inside_lung))
        total = float(att.heat.sum())
        if lesion is not None and lesion[att.z_index].any() and total > 0:
            heat_les.append(float(att.heat[lesion[att.z_index]].sum()) / total)
    return inclusion, tuple(heat_in), tuple(heat_les)


def score_cases(
    cases: Iterable[Any],
    models: Any,
    params: ChainParams,
    eval_params: EvalParams = EvalParams(),
    progress: bool = True,
    analyze: Callable[..., Any] | None = None,
    classical: Callable[[Any, ChainParams], np.ndarray] | None = None,
    on_failure: Callable[[str, str], None] | None = None,
) -> list[CaseRecord]:
    """Load and analyse every case (tqdm progress bar). A case that fails stops the
    evaluation with an EvaluationError naming it (leaving it out silently would bias the
    figures), unless ``on_failure(case_id, message)`` is given: then it is told and the
    case is left out.

    ``analyze`` defaults to ``pipeline.chain.analyze`` and ``classical`` (the reference
    lung segmentation) to ``pipeline.lung.segment_lungs_classical`` (arguments for tests).
    """
    from tqdm import tqdm

    if analyze is None:
        from .chain import analyze as chain_analyze

        analyze = chain_analyze
    if classical is None:
        from .lung import segment_lungs_classical

        classical = segment_lungs_classical
    cases = list(cases)
    records: list[CaseRecord] = []
    bar = tqdm(cases, desc="evaluate", unit="case", disable=not progress, dynamic_ncols=True)
    for case in bar:
        try:
            loaded = case.load()
            volume, lung_mask, lesion_mask = _loaded_parts(loaded)
            result = analyze(volume, models, params)
            reference = None
            if lung_mask is not None and eval_params.classical_reference and result.lung_mask.method != "classical":
                reference = classical(volume, params)
        except (PipelineError, OSError, ValueError, RuntimeError) as e:
            message = str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
            if on_failure is None:
                raise EvaluationError(
                    f"case {case.case_id} could not be analysed: {message} "
                    f"(--skip-failed leaves such cases out and lists them)"
                ) from e
            on_failure(str(case.case_id), message)
            continue
        record = record_from_result(case, result, lung_mask, lesion_mask, eval_params, reference, _loaded_lobes(loaded))
        records.append(replace(record, **_cxr_fields(case, loaded, result, models)))
        bar.set_postfix(last=records[-1].decision or records[-1].predicted)
    if not records:
        raise EvaluationError(
            "no case could be evaluated: check the --data spec"
            if cases
            else "the dataset holds no cases: check the --data spec"
        )
    return records


def _cxr_fields(case: Any, loaded: Any, result: Any, models: Any) -> dict[str, Any]:
    """The CaseRecord's CXR fields: the bundle's CXR model on the case's localizer (a
    phantom's projection, pipeline.datasets.case_localizer); {} without either."""
    if getattr(models, "cxr", None) is None or not hasattr(case, "extras") or not hasattr(loaded, "volume"):
        return {}
    from .cxr import bundle_cxr, ct_class_scores
    from .datasets import case_localizer

    radiograph = case_localizer(case, loaded)
    cx = None if radiograph is None else bundle_cxr(radiograph, models, result)
    if cx is None:
        return {}
    ct = ct_class_scores(result, cx.classes, float(models.operating_points.pattern_weight))
    decision = result.decision.value
    why = None
    if cx.fused_decision is None:
        why = f"ct_{decision}" if decision in ("indeterminate", "out_of_domain") else "ct_other_class"
    return {
        "cxr_classes": cx.classes,
        "cxr_scores": np.array([cx.probabilities[c] for c in cx.classes], dtype=np.float64),
        "ct_cxr_scores": np.array([ct[c] for c in cx.classes], dtype=np.float64),
        "fused_decision": cx.fused_decision,
        "not_fused": why,
    }


# ----------------------------------------------------------------------- metrics


def case_arrays(records: Sequence[CaseRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    labels = np.array([CLASS_NAMES.index(r.truth) for r in records], dtype=np.int64)
    probs = np.stack([r.probabilities for r in records])
    tasks = np.stack([r.tasks for r in records])
    predicted = np.array([CLASS_NAMES.index(r.predicted) for r in records], dtype=np.int64)
    return labels, probs, tasks, predicted


Statistic = Callable[[np.ndarray], float]


def _one_vs_rest_auc(labels: np.ndarray, probs: np.ndarray, i: int) -> Statistic:
    """AUC of class ``i`` against the rest, on the cases an index array picks."""
    return lambda idx: M.roc_auc(labels[idx] == i, probs[idx, i])


def _one_vs_rest_rate(
    rate: Callable[[np.ndarray, np.ndarray], float], labels: np.ndarray, probs: np.ndarray, i: int, threshold: float
) -> Statistic:
    """Sensitivity or specificity of class ``i`` at ``threshold`` on the picked cases."""
    return lambda idx: rate(labels[idx] == i, probs[idx, i] >= threshold)


def _task_auc(y: np.ndarray, s: np.ndarray) -> Statistic:
    return lambda j: M.roc_auc(y[j], s[j])


def _task_rate(
    rate: Callable[[np.ndarray, np.ndarray], float], y: np.ndarray, s: np.ndarray, threshold: float
) -> Statistic:
    return lambda j: rate(y[j], s[j] >= threshold)


def _pooled_mean(per_case: Sequence[np.ndarray]) -> Statistic:
    """Mean over every value of the picked cases pooled."""
    return lambda j: float(np.mean(np.concatenate([per_case[i] for i in j])))


def given_arrays(values: Iterable[np.ndarray | None], what: str) -> list[np.ndarray]:
    """The arrays of records already filtered to have them (PipelineError if one is missing)."""
    out = []
    for v in values:
        if v is None:
            raise PipelineError(f"evaluation: a case selected for {what} has none")
        out.append(v)
    return out


class _Figures:
    """Bootstraps figures over one set of cases and counts the skipped resamples."""

    def __init__(self, n: int, eval_params: EvalParams, skipped: dict[str, int], prefix: str) -> None:
        self.n = n
        self.conf = eval_params.confidence
        self.resamples = (
            M.resample_indices(n, eval_params.n_bootstrap, eval_params.seed) if eval_params.n_bootstrap else None
        )
        self.skipped = skipped
        self.prefix = prefix

    def __call__(self, name: str, statistic: Callable[[np.ndarray], float]) -> F.Figure:
        if self.resamples is None:
            est = M.point_only(statistic(np.arange(self.n)))
        else:
            est = M.bootstrap(statistic, self.resamples, self.conf)
        if est.n_skipped:
            self.skipped[f"{self.prefix}{name}"] = est.n_skipped
        return F.Figure.from_estimate(est)


def _class_block(
    labels: np.ndarray, probs: np.ndarray, predicted: np.ndarray, fig: _Figures, threshold: float, full: bool
) -> F.ClassFigures:
    """Per-class AUC, multi-way AUC, accuracy (and, when ``full``, sens/spec at the
    threshold and the confusion matrix) for one set of cases."""
    block = F.ClassFigures(
        n_cases=int(labels.size),
        class_counts={c: int(np.sum(labels == i)) for i, c in enumerate(CLASS_NAMES)},
        per_class_auc={
            c: fig(f"per_class_auc.{c}", _one_vs_rest_auc(labels, probs, i)) for i, c in enumerate(CLASS_NAMES)
        },
        multiway_auc=F.MultiwayAuc(
            micro=fig("multiway_auc.micro", lambda idx: M.micro_auc(labels[idx], probs[idx])),
            macro=fig("multiway_auc.macro", lambda idx: M.macro_auc(labels[idx], probs[idx])),
        ),
        accuracy=fig("accuracy", lambda idx: M.accuracy(labels[idx], predicted[idx])),
    )
    if not full:
        return block
    return replace(
        block,
        per_class_sensitivity={
            c: fig(f"per_class_sensitivity.{c}", _one_vs_rest_rate(M.sensitivity, labels, probs, i, threshold))
            for i, c in enumerate(CLASS_NAMES)
        },
        per_class_specificity={
            c: fig(f"per_class_specificity.{c}", _one_vs_rest_rate(M.specificity, labels, probs, i, threshold))
            for i, c in enumerate(CLASS_NAMES)
        },
        confusion_matrix=F.ConfusionMatrix(
            labels=CLASS_NAMES,
            counts=tuple(tuple(row) for row in M.confusion_counts(labels, predicted, len(CLASS_NAMES)).tolist()),
        ),
    )


def task_cohort(task: str, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the cases the task is measured on, their positives (bool))."""
    positive, classes = TASK_COHORTS[task]
    in_cohort = np.isin(labels, [CLASS_NAMES.index(c) for c in classes])
    idx = np.flatnonzero(in_cohort)
    if positive == "pneumonia":
        y = labels[idx] != CLASS_NAMES.index("non_pneumonia")
    else:
        y = labels[idx] == CLASS_NAMES.index(positive)
    return idx, y


def _age_band(age: float | None, edges: Sequence[int]) -> str | None:
    if age is None:
        return None
    if age < edges[0]:
        return f"<{edges[0]}"
    for lo, hi in pairwise(edges):
        if lo <= age < hi:
            return f"{lo}-{hi - 1}"
    return f">={edges[-1]}"


def _subset_order(key: str, eval_params: EvalParams) -> Callable[[str], tuple]:
    """Sort key of subset values: age bands youngest first, numbers as numbers."""
    if key == "age_band":
        edges = eval_params.age_band_edges
        bands = [_age_band(edges[0] - 1, edges)] + [_age_band(e, edges) for e in edges]
        return lambda v: (bands.index(v) if v in bands else len(bands), v)

    def natural(v: str) -> tuple:
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)

    return natural


def _task_figures(
    labels: np.ndarray,
    tasks: np.ndarray,
    threshold: float,
    task_thresholds: Mapping[str, float],
    eval_params: EvalParams,
    skipped: dict[str, int],
) -> dict[str, F.TaskFigures]:
    """Each binary task on its cohort: AUC, and sensitivity/specificity at its threshold."""
    out: dict[str, F.TaskFigures] = {}
    for t_i, task in enumerate(TASK_NAMES):
        idx, y = task_cohort(task, labels)
        t_task = float(task_thresholds.get(task, threshold))
        entry = F.TaskFigures(
            n_cases=int(idx.size),
            n_positive=int(y.sum()),
            positive=TASK_COHORTS[task][0],
            cohort=TASK_COHORTS[task][1],
            threshold=t_task,
        )
        if idx.size:
            s = tasks[idx, t_i]
            tf = _Figures(idx.size, eval_params, skipped, f"tasks.{task}.")
            entry = replace(
                entry,
                auc=tf("auc", _task_auc(y, s)),
                sensitivity=tf("sensitivity", _task_rate(M.sensitivity, y, s, t_task)),
                specificity=tf("specificity", _task_rate(M.specificity, y, s, t_task)),
            )
        out[task] = entry
    return out


def _lung_dice_figures(
    records: Sequence[CaseRecord], eval_params: EvalParams, skipped: dict[str, int]
) -> F.LungDice | None:
    """Mean lung Dice of the chain's segmentation (and of the classical reference)."""
    with_lung = [r for r in records if r.lung_dice is not None]
    if not with_lung:
        return None
    dices = np.array([r.lung_dice for r in with_lung], dtype=np.float64)
    methods = sorted({r.lung_method or "unknown" for r in with_lung})
    lf = _Figures(dices.size, eval_params, skipped, "lung_dice.")
    mean = lf("mean", lambda j: float(np.mean(dices[j])))
    classical_mean = None
    ref = np.array([np.nan if r.lung_dice_classical is None else r.lung_dice_classical for r in with_lung])
    if np.all(np.isfinite(ref)):
        classical_mean = lf("classical_mean", lambda j: float(np.mean(ref[j])))
    return F.LungDice(n_cases=int(dices.size), method="+".join(methods), mean=mean, classical_mean=classical_mean)


def _locating_figures(
    records: Sequence[CaseRecord], eval_params: EvalParams, skipped: dict[str, int], locator_threshold: float
) -> F.Locating | None:
    """The paper measures the locator on COVID-19 cases with marked lesions; slices are
    resampled with their case (they are not independent)."""
    loc = [r for r in records if r.slice_scores is not None and r.truth == "covid19" and r.slice_scores.size]
    if not loc:
        return None
    sc = given_arrays((r.slice_scores for r in loc), "slice scores")
    tr = given_arrays((r.slice_truth for r in loc), "slice truth")
    lf = _Figures(len(loc), eval_params, skipped, "locating.")
    return F.Locating(
        n_cases=len(loc),
        n_slices=int(sum(s.size for s in sc)),
        n_infected_slices=int(sum(t.sum() for t in tr)),
        threshold=locator_threshold,
        auc=lf("auc", lambda j: M.roc_auc(M.pooled_slices(tr, j), M.pooled_slices(sc, j))),
        sensitivity=lf(
            "sensitivity", lambda j: M.sensitivity(M.pooled_slices(tr, j), M.pooled_slices(sc, j) >= locator_threshold)
        ),
        specificity=lf(
            "specificity", lambda j: M.specificity(M.pooled_slices(tr, j), M.pooled_slices(sc, j) >= locator_threshold)
        ),
    )


def _subset_figures(
    records: Sequence[CaseRecord],
    labels: np.ndarray,
    probs: np.ndarray,
    predicted: np.ndarray,
    threshold: float,
    eval_params: EvalParams,
    skipped: dict[str, int],
) -> dict[str, dict[str, F.ClassFigures]]:
    """The class block by sex, age band and stage (where the data say them)."""
    out: dict[str, dict[str, F.ClassFigures]] = {}
    keys: dict[str, Callable[[CaseRecord], str | None]] = {
        "sex": lambda r: r.sex,
        "age_band": lambda r: _age_band(r.age, eval_params.age_band_edges),
        "stage": lambda r: r.stage,
    }
    for key, get in keys.items():
        values = [get(r) for r in records]
        present = sorted({v for v in values if v is not None}, key=_subset_order(key, eval_params))
        if not present:
            continue
        out[key] = {}
        for v in present:
            idx = np.array([i for i, x in enumerate(values) if x == v], dtype=np.int64)
            sf = _Figures(idx.size, eval_params, skipped, f"subsets.{key}.{v}.")
            out[key][v] = _class_block(labels[idx], probs[idx], predicted[idx], sf, threshold, full=False)
    return out


def compute_metrics(
    records: Sequence[CaseRecord],
    threshold: float = 0.5,
    eval_params: EvalParams = EvalParams(),
    locator_threshold: float = 0.5,
    reader_calls: Sequence[ReaderCall] | None = None,
    reader_task_name: str = "auto",
    task_thresholds: Mapping[str, float] | None = None,
) -> F.EvaluationMetrics:
    """Every figure of the protocol (see module docstring); ``.to_json()`` is metrics.json.

    ``task_thresholds``: each binary task's operating point (the bundle's calibrated
    ones); ``threshold`` for the tasks it does not name and the per-class figures."""
    task_thresholds = dict(task_thresholds or {})
    if not records:
        raise EvaluationError("no cases to evaluate")
    labels, probs, tasks, predicted = case_arrays(records)
    skipped: dict[str, int] = {}
    ep = eval_params
    fig = _Figures(len(records), ep, skipped, "")
    flagged, stated = _healthy_slice_figures(records, ep, skipped)
    readers = None
    if reader_calls:
        readers = reader_comparison(records, reader_calls, threshold, ep, skipped, reader_task_name)
    return F.EvaluationMetrics(
        decision_threshold=threshold,
        classes=_class_block(labels, probs, predicted, fig, threshold, full=True),
        tasks=_task_figures(labels, tasks, threshold, task_thresholds, ep, skipped),
        lung_dice=_lung_dice_figures(records, ep, skipped),
        locating=_locating_figures(records, ep, skipped, locator_threshold),
        decision=_decision_figures(records, ep, skipped),
        infectious_slices=_infectious_slice_figures(records, ep, skipped, locator_threshold),
        lesion_dice=_lesion_dice_figures(records, ep, skipped),
        lesion_share=_lesion_share_figures(records, ep, skipped),
        lesion_pattern=_pattern_figures(records, ep, skipped),
        severity=_severity_figures(records, ep, skipped),
        lobes=_lobe_figures(records, ep, skipped),
        non_pneumonia_flagged_slices=flagged,
        non_pneumonia_stated_slices=stated,
        lesion_inclusion=_inclusion_figures(records, ep, skipped),
        heat_inside_lung=_heat_figures(records, ep, skipped, "heat_inside_lung"),
        heat_on_lesion=_heat_figures(records, ep, skipped, "heat_on_lesion"),
        subsets=_subset_figures(records, labels, probs, predicted, threshold, ep, skipped),
        readers=readers,
        cxr=_cxr_figures(records, threshold, ep, skipped),
        bootstrap=F.BootstrapInfo(
            n_resamples=ep.n_bootstrap,
            seed=ep.seed,
            confidence=ep.confidence,
            method="percentile, cases resampled with replacement",
            skipped_resamples=dict(sorted(skipped.items())),
        ),
    )


def _score_figures(fig: _Figures, name: str, y: np.ndarray, s: np.ndarray, threshold: float) -> F.ScoreFigures:
    return F.ScoreFigures(
        auc=fig(f"{name}.auc", _task_auc(y, s)),
        sensitivity=fig(f"{name}.sensitivity", _task_rate(M.sensitivity, y, s, threshold)),
        specificity=fig(f"{name}.specificity", _task_rate(M.specificity, y, s, threshold)),
        accuracy=fig(f"{name}.accuracy", lambda j: float(np.mean((s[j] >= threshold) == y[j]))),
    )


def _cxr_figures(
    records: Sequence[CaseRecord], threshold: float, eval_params: EvalParams, skipped: dict[str, int]
) -> F.CxrComparison | None:
    """CT alone vs CXR alone vs fused on the cases of the CXR's classes (pipeline.figures.cxr)."""
    from .cxr import FUSION_RULE

    sel = [r for r in records if r.cxr_scores is not None and r.ct_cxr_scores is not None and r.truth in r.cxr_classes]
    if not sel:
        return None
    classes = sel[0].cxr_classes
    y = np.array([r.truth == classes[0] for r in sel])
    ct = np.array([float(given_arrays([r.ct_cxr_scores], "the CXR comparison")[0][0]) for r in sel])
    cx = np.array([float(given_arrays([r.cxr_scores], "the CXR comparison")[0][0]) for r in sel])
    fu = 0.5 * (ct + cx)
    fig = _Figures(len(sel), eval_params, skipped, "cxr.")
    fused_idx = [i for i, r in enumerate(sel) if r.fused_decision is not None]
    ct_right = np.array([sel[i].decision == sel[i].truth for i in fused_idx], dtype=float)
    fused_right = np.array([sel[i].fused_decision == sel[i].truth for i in fused_idx], dtype=float)
    dfig = _Figures(len(fused_idx), eval_params, skipped, "cxr.decisions.") if fused_idx else None
    return F.CxrComparison(
        classes=tuple(classes),
        positive=classes[0],
        n_cases=len(sel),
        n_positive=int(y.sum()),
        threshold=float(threshold),
        ct=_score_figures(fig, "ct", y, ct, threshold),
        cxr=_score_figures(fig, "cxr", y, cx, threshold),
        fused=_score_figures(fig, "fused", y, fu, threshold),
        fused_minus_ct_auc=fig("fused_minus_ct_auc", lambda j: M.roc_auc(y[j], fu[j]) - M.roc_auc(y[j], ct[j])),
        fused_cases=len(fused_idx),
        not_fused=dict(sorted(Counter(str(r.not_fused) for r in sel if r.not_fused).items())),
        ct_decision_accuracy_fused_cases=None if dfig is None else dfig("ct", lambda j: float(np.mean(ct_right[j]))),
        fused_decision_accuracy=None if dfig is None else dfig("fused", lambda j: float(np.mean(fused_right[j]))),
        rule=FUSION_RULE,
    )


def write_cxr_scores_csv(records: Sequence[CaseRecord], path: Path) -> bool:
    """cxr_scores.csv: per case with a CXR score, the CT's, the CXR's and the fused score of
    each CXR class, the CT decision and the fused one; False (nothing written) without any."""
    rows = [r for r in records if r.cxr_scores is not None and r.ct_cxr_scores is not None]
    if not rows:
        return False
    classes = rows[0].cxr_classes
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        head = [f"{kind}_{c}" for kind in ("ct", "cxr", "fused") for c in classes]
        w.writerow(["case_id", "truth", *head, "decision", "fused_decision", "not_fused"])
        for r in rows:
            ct, cx = np.asarray(r.ct_cxr_scores), np.asarray(r.cxr_scores)
            values = [*ct, *cx, *(0.5 * (ct + cx))]
            w.writerow(
                [r.case_id, r.truth, *(f"{v:.6f}" for v in values)]
                + [r.decision, r.fused_decision or "", r.not_fused or ""]
            )
    return True


def _lesion_dice_figures(
    records: Sequence[CaseRecord], eval_params: EvalParams, skipped: dict[str, int]
) -> F.LesionDice | None:
    """The U-Net's lesion map against the truth: lesion Dice, voxels pooled over the
    cases with lesions."""
    overlap = [r for r in records if r.lesion_overlap is not None and r.lesion_overlap[2] > 0]
    if not overlap:
        return None
    ov = np.array([r.lesion_overlap for r in overlap], dtype=np.float64)
    f = _Figures(len(overlap), eval_params, skipped, "lesion_dice.")
    return F.LesionDice(
        n_cases=len(overlap),
        cohort="cases with lesion masks holding lesions",
        dice=f("dice", lambda j: M.dice_from_counts(ov[j, 0].sum(), ov[j, 1].sum(), ov[j, 2].sum())),
    )


def _lesion_share_figures(
    records: Sequence[CaseRecord], eval_params: EvalParams, skipped: dict[str, int]
) -> F.LesionShare | None:
    """The lesion share of the lung as a pneumonia score (AUC), and its range by group."""
    shares = [r for r in records if r.lesion_share is not None]
    if not shares:
        return None
    share = np.array([r.lesion_share for r in shares], dtype=np.float64)
    pneu = np.array([r.truth != "non_pneumonia" for r in shares], dtype=bool)
    f = _Figures(len(shares), eval_params, skipped, "lesion_share.")
    auc = None
    if pneu.any() and (~pneu).any():
        auc = f("pneumonia_auc", lambda j: M.roc_auc(pneu[j], share[j]))

    def share_range(sel: np.ndarray) -> F.ShareRange | None:
        if not sel.any():
            return None
        return F.ShareRange(float(share[sel].min()), float(np.median(share[sel])), float(share[sel].max()))

    return F.LesionShare(
        n_cases=len(shares),
        pneumonia_auc=auc,
        non_pneumonia_share=share_range(~pneu),
        pneumonia_share=share_range(pneu),
    )


def _column_mean(values: np.ndarray, column: int) -> Callable[[np.ndarray], float]:
    """A statistic for _Figures: the nan-ignoring mean of one column over resampled rows."""

    def mean(rows: np.ndarray) -> float:
        return float(np.nanmean(values[rows, column]))

    return mean


def _lobe_figures(
    records: Sequence[CaseRecord], eval_params: EvalParams, skipped: dict[str, int]
) -> F.LobesFigures | None:
    """Per lobe: mean Dice of the chain's lobe map against the truth's, and the mean
    absolute involvement error (points), over the cases that have them."""
    rows = [r for r in records if r.lobe_dice is not None]
    if not rows:
        return None
    dice = np.array([r.lobe_dice for r in rows], dtype=np.float64)
    errs = [r for r in rows if r.lobe_involvement_error is not None]
    err = np.array([r.lobe_involvement_error for r in errs], dtype=np.float64).reshape(len(errs), len(LOBES))
    f = _Figures(len(rows), eval_params, skipped, "lobes.")
    g = _Figures(len(errs), eval_params, skipped, "lobes.")
    per_lobe: dict[str, F.LobeFigures] = {}
    for i, name in enumerate(LOBES):
        mae = None
        lobe_dice = f(f"{name}.dice", _column_mean(dice, i))
        if errs:
            mae = g(f"{name}.involvement_mae_points", _column_mean(np.abs(err), i))
        per_lobe[name] = F.LobeFigures(dice=lobe_dice, involvement_mae_points=mae)
    return F.LobesFigures(
        n_cases=len(rows),
        n_cases_with_involvement=len(errs),
        cohort="cases with a truth lobe map (phantoms) where the chain segmented lobes",
        mean_dice=f("mean_dice", lambda j: float(np.nanmean(dice[j]))),
        per_lobe=per_lobe,
    )


def _severity_figures(
    records: Sequence[CaseRecord], eval_params: EvalParams, skipped: dict[str, int]
) -> F.SeverityFigures | None:
    """Whole-lung involvement (pipeline.severity) against the truth masks: mean absolute
    and mean signed error in percentage points, the involvement given to non-pneumonia
    cases, and agreement of the MosMedData grades the two involvements fall in."""
    rows = [r for r in records if r.involvement_percent is not None and r.involvement_truth_percent is not None]
    if not rows:
        return None
    pred = np.array([r.involvement_percent for r in rows], dtype=np.float64)
    true = np.array([r.involvement_truth_percent for r in rows], dtype=np.float64)
    healthy = np.array([r.truth == "non_pneumonia" for r in rows], dtype=bool)
    f = _Figures(len(rows), eval_params, skipped, "severity.")
    mae = f("involvement_mae_points", lambda j: float(np.mean(np.abs(pred[j] - true[j]))))
    bias_fig = f("involvement_bias_points", lambda j: float(np.mean(pred[j] - true[j])))
    agreement = f(
        "grade_agreement",
        lambda j: float(np.mean([mosmed_grade(a) == mosmed_grade(b) for a, b in zip(pred[j], true[j], strict=True)])),
    )
    healthy_involvement = None
    if healthy.any():
        healthy_involvement = F.HealthyInvolvement(
            mean=float(pred[healthy].mean()), max=float(pred[healthy].max()), n_cases=int(healthy.sum())
        )
    bias, low, high = (float(v) if np.isfinite(v) else None for v in M.bland_altman(true, pred))
    return F.SeverityFigures(
        n_cases=len(rows),
        cohort="cases with truth lung and lesion masks and a stated severity (not out of domain)",
        involvement_mae_points=mae,
        involvement_bias_points=bias_fig,
        grade_agreement=agreement,
        bland_altman_points=F.BlandAltman(bias=bias, lower_limit=low, upper_limit=high),
        non_pneumonia_involvement_percent=healthy_involvement,
        grade=_grade_figures(records, eval_params, skipped),
    )


def _grade_figures(
    records: Sequence[CaseRecord], eval_params: EvalParams, skipped: dict[str, int]
) -> F.GradeFigures | None:
    """The grade from the chain's involvement against the truth grade (CaseRecord.grade_truth:
    the data set's, e.g. MosMedData's CT-0..CT-4 group, else the truth masks'): confusion
    counts (rows truth) and quadratic weighted kappa with its bootstrap interval."""
    rows = [r for r in records if r.involvement_percent is not None and r.grade_truth is not None]
    if not rows:
        return None
    truth = np.array([r.grade_truth for r in rows], dtype=np.int64)
    graded = np.array([mosmed_grade(float(r.involvement_percent or 0.0)) for r in rows], dtype=np.int64)
    f = _Figures(len(rows), eval_params, skipped, "severity.")
    n_grades = len(MOSMED_GRADE_BOUNDS) + 2  # CT-0 (none), then one grade per band
    return F.GradeFigures(
        cohort="cases with a stated severity and a truth grade (data set's, else the truth masks')",
        n_cases=len(rows),
        confusion=tuple(tuple(row) for row in M.confusion_counts(truth, graded, n_grades).tolist()),
        kappa_quadratic=f("grade_kappa_quadratic", lambda j: M.quadratic_weighted_kappa(truth[j], graded[j], n_grades)),
    )


def pneumonia_type(probabilities: np.ndarray) -> np.ndarray:
    """Index (into CLASS_NAMES) of the most probable pneumonia class of each row."""
    p = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    return 1 + np.argmax(p[:, 1:], axis=1)


def _pattern_figures(
    records: Sequence[CaseRecord], eval_params: EvalParams, skipped: dict[str, int]
) -> F.LesionPatternFigures | None:
    """The lesion pattern model on its own: 4-class AUC, and the pneumonia type (the most
    probable of the three pneumonia classes) on the pneumonia cases, beside the slice
    classifier's type on the same cases."""
    with_pattern = [r for r in records if r.pattern_probabilities is not None]
    if not with_pattern:
        return None
    labels = np.array([CLASS_NAMES.index(r.truth) for r in with_pattern])
    pattern = np.stack(given_arrays((r.pattern_probabilities for r in with_pattern), "the lesion pattern"))
    classifier = np.stack([r.probabilities for r in with_pattern])
    f = _Figures(len(with_pattern), eval_params, skipped, "lesion_pattern.")
    entry = F.LesionPatternFigures(
        n_cases=len(with_pattern),
        multiway_auc_macro=f("multiway_auc_macro", lambda j: M.macro_auc(labels[j], pattern[j])),
    )
    pneu = np.flatnonzero(labels > 0)
    if not pneu.size:
        return entry
    g = _Figures(int(pneu.size), eval_params, skipped, "lesion_pattern.")
    lab = labels[pneu]
    by_pattern, by_classifier = pneumonia_type(pattern[pneu]), pneumonia_type(classifier[pneu])
    return replace(
        entry,
        pneumonia_cases=int(pneu.size),
        type_accuracy=g("type_accuracy", lambda j: M.accuracy(lab[j], by_pattern[j])),
        type_accuracy_classifier=g("type_accuracy_classifier", lambda j: M.accuracy(lab[j], by_classifier[j])),
    )


def _decision_figures(
    records: Sequence[CaseRecord], eval_params: EvalParams, skipped: dict[str, int]
) -> F.DecisionFigures | None:
    """What the report states and whether it is true: accuracy of the stated decision
    (indeterminate and out-of-domain count as not correct) and the rates of the
    non-class decisions."""
    decided = [r for r in records if r.decision]
    if not decided:
        return None
    dec = np.array([r.decision for r in decided])
    truth = np.array([r.truth for r in decided])
    df = _Figures(len(decided), eval_params, skipped, "decision.")
    stated = np.isin(dec, CLASS_NAMES)
    return F.DecisionFigures(
        n_cases=len(decided),
        counts={d: int(np.sum(dec == d)) for d in sorted(set(dec.tolist()))},
        accuracy=df("accuracy", lambda j: float(np.mean(dec[j] == truth[j]))),
        indeterminate_rate=df("indeterminate_rate", lambda j: float(np.mean(dec[j] == "indeterminate"))),
        out_of_domain_rate=df("out_of_domain_rate", lambda j: float(np.mean(dec[j] == "out_of_domain"))),
        accuracy_of_stated=df(
            "accuracy_of_stated",
            lambda j: float(np.mean(dec[j][stated[j]] == truth[j][stated[j]])) if stated[j].any() else float("nan"),
        ),
        non_pneumonia_called_pneumonia=int(
            np.sum((truth == "non_pneumonia") & np.isin(dec, ("cap", "influenza", "covid19")))
        ),
        out_of_domain_score_max=float(np.nanmax([r.out_of_domain_score for r in decided]))
        if any(np.isfinite(r.out_of_domain_score) for r in decided)
        else None,
    )


def _infectious_slice_figures(
    records: Sequence[CaseRecord], eval_params: EvalParams, skipped: dict[str, int], locator_threshold: float
) -> F.InfectiousSlices | None:
    """Infectious-slice AUC and F1 over every case with lesion masks (all classes)."""
    loc = [r for r in records if r.slice_scores is not None and r.slice_scores.size]
    if not loc:
        return None
    sc = given_arrays((r.slice_scores for r in loc), "slice scores")
    tr = given_arrays((r.slice_truth for r in loc), "slice truth")
    lf = _Figures(len(loc), eval_params, skipped, "infectious_slices.")
    auc = lf("auc", lambda j: M.roc_auc(M.pooled_slices(tr, j), M.pooled_slices(sc, j)))
    f1_rule = None
    if all(r.slice_flagged is not None for r in loc):
        fl = given_arrays((r.slice_flagged for r in loc), "flagged slices")
        f1 = lf("f1", lambda j: M.f1_score(M.pooled_slices(tr, j), M.pooled_slices(fl, j)))
        f1_rule = "slices the report lists (locator flag, and a lesion when there is a lesion map)"
    else:
        f1 = lf("f1", lambda j: M.f1_score(M.pooled_slices(tr, j), M.pooled_slices(sc, j) >= locator_threshold))
    return F.InfectiousSlices(
        n_cases=len(loc),
        n_slices=int(sum(x.size for x in sc)),
        threshold=locator_threshold,
        cohort="every case with lesion masks (all classes)",
        auc=auc,
        f1=f1,
        f1_rule=f1_rule,
    )


def _healthy_slice_figures(
    records: Sequence[CaseRecord], eval_params: EvalParams, skipped: dict[str, int]
) -> tuple[F.SlicesPerCase | None, F.SlicesPerCase | None]:
    """Slices flagged by the locator, and slices the report states, per non-pneumonia case."""
    non = [r for r in records if r.truth == "non_pneumonia"]
    if not non:
        return None, None
    flagged = np.array([r.n_flagged_slices for r in non], dtype=np.float64)
    nf = _Figures(len(non), eval_params, skipped, "non_pneumonia_flagged.")
    # What the report lists as infectious slices: only a pneumonia decision lists them
    # (dicomnode.writers.wording); a healthy case wrongly called pneumonia counts here.
    stated = np.array([r.n_flagged_slices if r.decision in PNEUMONIA_CLASSES else 0 for r in non], dtype=np.float64)
    return (
        F.SlicesPerCase(
            n_cases=len(non), max=int(flagged.max()), mean=nf("mean", lambda j: float(np.mean(flagged[j])))
        ),
        F.SlicesPerCase(
            n_cases=len(non), max=int(stated.max()), mean=nf("stated_mean", lambda j: float(np.mean(stated[j])))
        ),
    )


def _inclusion_figures(
    records: Sequence[CaseRecord], eval_params: EvalParams, skipped: dict[str, int]
) -> F.LesionInclusion | None:
    """Lesion inclusion of the chain's lung mask, over the cases with lesions."""
    inc = np.array([r.lesion_inclusion for r in records if r.lesion_inclusion is not None], dtype=np.float64)
    if not inc.size:
        return None
    f = _Figures(inc.size, eval_params, skipped, "lesion_inclusion.")
    return F.LesionInclusion(
        n_cases=int(inc.size), min=float(inc.min()), mean=f("mean", lambda j: float(np.mean(inc[j])))
    )


#: Grad-CAM heat figures: CaseRecord attribute (and metrics.json key) -> what it measures.
_HEAT_WHAT: dict[str, str] = {
    "heat_inside_lung": "raw Guided Grad-CAM inside the lung mask",
    "heat_on_lesion": "shown heat on lesion pixels",
}


def _heat_figures(
    records: Sequence[CaseRecord], eval_params: EvalParams, skipped: dict[str, int], attr: str
) -> F.HeatFigures | None:
    """Where the Grad-CAM heat lies (``attr``: a CaseRecord heat field, see _HEAT_WHAT)."""
    per_case = [np.asarray(getattr(r, attr), dtype=np.float64) for r in records if getattr(r, attr)]
    if not per_case:
        return None
    every = np.concatenate(per_case)
    f = _Figures(len(per_case), eval_params, skipped, f"{attr}.")
    return F.HeatFigures(
        what=_HEAT_WHAT[attr],
        n_cases=len(per_case),
        n_overlays=int(every.size),
        min=float(every.min()),
        share_at_least_0_8=float(np.mean(every >= 0.8)),
        mean=f("mean", _pooled_mean(per_case)),
    )


# ------------------------------------------------------------------- reader study


def read_readers_csv(path: Path | str) -> list[ReaderCall]:
    """Read a readers file (header ``case_id,reader,call``; call is a class name)."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"case_id", "reader", "call"} - set(reader.fieldnames or ())
            if missing:
                raise EvaluationError(
                    f"readers file {path}: header lacks {sorted(missing)}; it needs the columns case_id,reader,call"
                )
            calls = []
            for line, row in enumerate(reader, start=2):
                call = (row.get("call") or "").strip()
                if call not in CLASS_NAMES:
                    raise EvaluationError(
                        f"readers file {path} line {line}: call {call!r} is not one of {', '.join(CLASS_NAMES)}"
                    )
                case_id, name = (row.get("case_id") or "").strip(), (row.get("reader") or "").strip()
                if not case_id or not name:
                    raise EvaluationError(f"readers file {path} line {line}: case_id and reader must not be empty")
                calls.append(ReaderCall(case_id, name, call))
    except OSError as e:
        raise EvaluationError(f"readers file {path} cannot be read: {e}") from e
    if not calls:
        raise EvaluationError(f"readers file {path} holds no calls")
    return calls


#: Tasks a reader study can be read for ("auto": see ``reader_task``).
READER_TASKS: tuple[str, ...] = ("auto", "multi_way", *TASK_NAMES)


def reader_task(truths: Iterable[str], requested: str = "auto") -> str:
    """The task a reader cohort was read for. "auto": a COVID-19-vs-X pair when every
    case is of that pair (the readers then knew only two classes, as in the paper's
    cohorts), else the multi-way task. The pneumonia-or-non-pneumonia task must be
    asked for: its cohort cannot be told from a multi-way one by the truths."""
    if requested not in READER_TASKS:
        raise EvaluationError(f"unknown reader task {requested!r}; expected one of {', '.join(READER_TASKS)}")
    if requested != "auto":
        return requested
    present = set(truths)
    for task in ("covid19_vs_cap", "covid19_vs_influenza"):
        if present <= set(TASK_COHORTS[task][1]):
            return task
    return "multi_way"


def reader_positive_class(task: str) -> str:
    """The class whose sensitivity/specificity the comparison reports: pneumonia for the
    pneumonia task, COVID-19 otherwise (as in Table 3)."""
    return "pneumonia" if task == "pneumonia_vs_non_pneumonia" else "covid19"


def is_positive(task: str, label: str) -> bool:
    """Whether a class name (a truth or a call) is the task's positive."""
    if task == "pneumonia_vs_non_pneumonia":
        return label != "non_pneumonia"
    return label == "covid19"


def is_correct(task: str, truth: str, call: str) -> bool:
    """A multi-way call must name the class; a binary task's call only the right side
    (a CAP call on an influenza case is right in "pneumonia vs non-pneumonia")."""
    if task == "multi_way":
        return call == truth
    return is_positive(task, call) == is_positive(task, truth)


def ai_decisions(records: Sequence[CaseRecord], task: str, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(correct, called positive) of the AI per case: the multi-way label for the
    multi-way task, else the task's fused score at the threshold."""
    if task == "multi_way":
        correct = np.array([r.predicted == r.truth for r in records], bool)
        positive = np.array([is_positive(task, r.predicted) for r in records], bool)
        return correct, positive
    t_i = TASK_NAMES.index(task)
    positive = np.array([r.tasks[t_i] >= threshold for r in records], bool)
    truth = np.array([is_positive(task, r.truth) for r in records], bool)
    return positive == truth, positive


def reader_comparison(
    records: Sequence[CaseRecord],
    reader_calls: Sequence[ReaderCall],
    threshold: float,
    eval_params: EvalParams = EvalParams(),
    skipped: dict[str, int] | None = None,
    task: str = "auto",
) -> F.ReaderComparison:
    """Table 3: the AI against each reader on the cases the readers read."""
    skipped = {} if skipped is None else skipped
    by_id = {r.case_id: r for r in records}
    order = {cid: k for k, cid in enumerate(by_id)}
    unmatched = sorted({c.case_id for c in reader_calls if c.case_id not in by_id})
    calls = [c for c in reader_calls if c.case_id in by_id]
    if not calls:
        raise EvaluationError(
            "none of the readers' case_ids is among the evaluated cases; "
            "check that the readers file uses the dataset's case ids"
        )
    cohort_ids = sorted({c.case_id for c in calls}, key=order.__getitem__)
    cohort = [by_id[i] for i in cohort_ids]
    task = reader_task([r.truth for r in cohort], task)
    positive = reader_positive_class(task)
    readers = sorted({c.reader for c in calls})
    table: dict[str, dict[str, str]] = {name: {} for name in readers}
    for c in calls:
        prior = table[c.reader].get(c.case_id)
        if prior is not None and prior != c.call:
            raise EvaluationError(
                f"readers file: reader {c.reader!r} has two different calls for case {c.case_id!r}; keep one"
            )
        table[c.reader][c.case_id] = c.call

    def row(name: str, ids: list[str], correct: np.ndarray, called: np.ndarray) -> F.ReaderRow:
        y = np.array([is_positive(task, by_id[i].truth) for i in ids], bool)
        base = M.reader_row(name, correct, y, called)
        f = _Figures(len(ids), eval_params, skipped, f"readers.{name}.")
        return F.ReaderRow(
            name=name,
            n_cases=base.n_cases,
            correct=base.correct,
            wrong=base.wrong,
            sensitivity=f("sensitivity", lambda j: M.sensitivity(y[j], called[j])),
            specificity=f("specificity", lambda j: M.specificity(y[j], called[j])),
        )

    rows = [row("AI", cohort_ids, *ai_decisions(cohort, task, threshold))]
    for name in readers:
        ids = [i for i in cohort_ids if i in table[name]]
        correct = np.array([is_correct(task, by_id[i].truth, table[name][i]) for i in ids], bool)
        called = np.array([is_positive(task, table[name][i]) for i in ids], bool)
        rows.append(row(name, ids, correct, called))
    marks = [
        [None if i not in table[name] else is_correct(task, by_id[i].truth, table[name][i]) for i in cohort_ids]
        for name in readers
    ]
    any_row, all_row = M.pooled_reader_rows(marks)
    for pooled, meaning in (
        (any_row, "correct when at least one reader was right"),
        (all_row, "correct only when every reader was right"),
    ):
        rows.append(F.ReaderRow(pooled.name, pooled.n_cases, pooled.correct, pooled.wrong, meaning=meaning))
    return F.ReaderComparison(
        task=task,
        positive_class=positive,
        n_cases=len(cohort_ids),
        readers=tuple(readers),
        case_ids=tuple(cohort_ids),
        unmatched_case_ids=tuple(unmatched),
        rows=tuple(rows),
    )


# ------------------------------------------------------------------------- outputs


def write_scores_csv(records: Sequence[CaseRecord], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SCORE_COLUMNS)
        for r in records:
            w.writerow(
                [
                    r.case_id,
                    r.truth,
                    *(f"{x:.6f}" for x in r.probabilities),
                    *(f"{x:.6f}" for x in r.tasks),
                    r.predicted,
                    r.decision,
                    f"{r.out_of_domain_score:.4f}",
                    r.n_flagged_slices,
                    "" if r.lesion_share is None else f"{r.lesion_share:.6f}",
                    *(
                        ("",) * len(CLASS_NAMES)
                        if r.pattern_probabilities is None
                        else (f"{x:.6f}" for x in r.pattern_probabilities)
                    ),
                ]
            )


def tsne_embedding(
    features: np.ndarray, seed: int, max_perplexity: float, exact_max_cases: int = 500
) -> np.ndarray | None:
    """2-D t-SNE of the case features; None with fewer than 3 cases (nothing to show).
    The perplexity must stay below the number of cases: (n - 1) / 3, at most the cap."""
    from sklearn.manifold import TSNE

    n = features.shape[0]
    if n < 3:
        return None
    perplexity = float(min(max_perplexity, max(1.0, (n - 1) / 3.0)))
    method = "exact" if n <= exact_max_cases else "barnes_hut"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, method=method)
    return tsne.fit_transform(np.asarray(features, dtype=np.float64))


def write_outputs(
    records: Sequence[CaseRecord],
    metrics: F.EvaluationMetrics,
    out_dir: Path | str,
    eval_params: EvalParams = EvalParams(),
    threshold: float = 0.5,
    plots: bool = True,
) -> F.EvaluationMetrics:
    """scores.csv, the PNG plots, metrics.json and report.md in ``out_dir``; returns
    the metrics with the plot file names (``plots``)."""
    from .report import render_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_scores_csv(records, out / "scores.csv")
    write_cxr_scores_csv(records, out / "cxr_scores.csv")
    drawn: dict[str, str] = {}
    if plots:
        from .plots import make_plots

        drawn = make_plots(records, metrics, out, eval_params, threshold)
    metrics = replace(metrics, plots=drawn)
    (out / "metrics.json").write_text(json.dumps(metrics.to_json(), indent=2, allow_nan=False) + "\n")
    (out / "report.md").write_text(render_report(metrics))
    return metrics


def scoring_params(params: ChainParams) -> ChainParams:
    """``params`` without the radiomics phenotype (no score depends on it and it costs
    most of the chain's time on small volumes). Guided Grad-CAM stays: where the
    classifier looks is measured (heat inside the lung, on lesions)."""
    return replace(params, compute_phenotype=False)


def evaluate_bundle(
    bundle: Any,
    dataset: Sequence[Any] | str,
    params: ChainParams,
    out_dir: Path | str,
    n_bootstrap: int = 1000,
    seed: int = 0,
    readers: Path | str | Sequence[ReaderCall] | None = None,
    data_spec: str | None = None,
    progress: bool = True,
    eval_params: EvalParams | None = None,
    reader_task: str = "auto",
    skip_failed: bool = False,
) -> F.EvaluationMetrics:
    """Evaluate a loaded ``pipeline.models.ModelBundle`` on a dataset and write the
    report folder. Returns the metrics (``to_json()`` is what metrics.json holds). The
    chain runs with ``scoring_params(params)``.

    ``bundle`` may also be a bundle folder (loaded on ``params.device``) and ``dataset``
    a data spec for ``pipeline.datasets.open_dataset``. ``reader_task``: see
    ``reader_task()``. ``skip_failed``: a case the chain cannot analyse is listed under
    "failed_cases" and left out, instead of stopping the evaluation.
    """
    if isinstance(bundle, (str, Path)):
        from .models import load_bundle

        bundle = load_bundle(bundle, params.device)
    if isinstance(dataset, str):
        from .datasets import open_dataset

        data_spec = dataset if data_spec is None else data_spec
        dataset = open_dataset(dataset)
    ep = replace(eval_params or EvalParams(), n_bootstrap=n_bootstrap, seed=seed)
    params = scoring_params(params)
    reader_calls: list[ReaderCall] | None
    if isinstance(readers, (str, Path)):
        reader_calls = read_readers_csv(readers)
    else:
        reader_calls = list(readers) if readers else None
    failed: list[F.FailedCase] = []
    records = score_cases(
        dataset,
        bundle,
        params,
        ep,
        progress=progress,
        on_failure=(lambda cid, err: failed.append(F.FailedCase(cid, err))) if skip_failed else None,
    )
    op = getattr(bundle, "operating_points", None)
    locator_threshold = op.locator_threshold if op is not None else params.locator_threshold
    task_thresholds = {t: getattr(op, t) for t in TASK_NAMES} if op is not None else None
    metrics = compute_metrics(
        records, params.decision_threshold, ep, locator_threshold, reader_calls, reader_task, task_thresholds
    )
    describe = dataset.describe() if hasattr(dataset, "describe") else {}
    info = bundle.info
    run = F.EvaluationRun(
        data_spec=data_spec if data_spec is not None else str(describe.get("spec", "")),
        data=describe,
        bundle_sha256=bundle.sha256,
        bundle=F.BundleSummary(
            path=str(bundle.path),
            name=info.name,
            version=info.version,
            trained_on_synthetic_data=info.trained_on_synthetic_data,
            disclaimer=info.disclaimer,
        ),
        failed_cases=tuple(failed),
        chain_params=F.ChainSummary(
            top_k=params.top_k,
            decision_threshold=params.decision_threshold,
            locator_threshold=locator_threshold,
            max_slices=params.max_slices,
        ),
        operating_points=op.as_card() if op is not None else None,
    )
    return write_outputs(records, replace(metrics, run=run), out_dir, ep, params.decision_threshold)


def headline(metrics: F.EvaluationMetrics) -> dict[str, Any]:
    """The figures a model card quotes (values only, CIs kept), as JSON."""
    classes, run = metrics.classes, metrics.run
    out: dict[str, Any] = {
        "data_spec": None if run is None else run.data_spec,
        "n_cases": metrics.n_cases,
        "bundle_sha256": None if run is None else run.bundle_sha256,
        "multiway_auc_micro": classes.multiway_auc.micro.to_json(),
        "multiway_auc_macro": classes.multiway_auc.macro.to_json(),
        "per_class_auc": {c: f.to_json() for c, f in classes.per_class_auc.items()},
        "accuracy": classes.accuracy.to_json(),
        "covid19_sensitivity": (classes.per_class_sensitivity or {})["covid19"].to_json(),
        "covid19_specificity": (classes.per_class_specificity or {})["covid19"].to_json(),
        "task_auc": {t: None if v.auc is None else v.auc.to_json() for t, v in metrics.tasks.items()},
        "bootstrap_resamples": metrics.bootstrap.n_resamples,
    }
    if metrics.lung_dice:
        classical = metrics.lung_dice.classical_mean
        out["lung_dice"] = {
            "method": metrics.lung_dice.method,
            "mean": metrics.lung_dice.mean.to_json(),
            "classical_mean": None if classical is None else classical.to_json(),
        }
    if metrics.locating:
        out["locating_auc"] = metrics.locating.auc.to_json()
    return out
