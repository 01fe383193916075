"""The phenotype study's features: every pneumonia case of a cohort -> the radiomics
phenotype of its attentional regions (pipeline.phenotype), one row of a FeatureTable.

Per case whose truth is a pneumonia class (CAP, influenza, COVID-19; the paper extracts
"attentional regions only in pneumonia subjects"): the chain (``pipeline.chain.analyze``,
without its own explanation and phenotype) segments, classifies and locates; then
Guided Grad-CAM explains the case's true class on the slices the chain's rule picks for
it (``pipeline.explain.select_slices``: the highest-scoring infectious slices, else the
slices most probable for that class), and the phenotype is computed on those attentional
regions with the study's radiomics settings. Explaining the true class, not the
decision, keeps the regions defined for every case: a case the chain calls wrongly, or
out of domain (where the chain explains nothing), still shows what the network attends
to for its class. A case without any attentional region has no features and is listed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .params import ChainParams, PhenotypeStudyParams
from .phenotype_stats import FeatureTable, PhenotypeStudyError
from .types import PNEUMONIA_CLASSES, PipelineError


@dataclass(frozen=True)
class CaseInfo:
    """What the chain said of a case that has features (for features.csv)."""

    case_id: str
    label: str
    decision: str
    region_count: int
    explained_slices: tuple[int, ...]


@dataclass(frozen=True)
class SkippedCase:
    """A pneumonia case without features, and why."""

    case_id: str
    label: str
    reason: str


@dataclass(frozen=True)
class CohortFeatures:
    """The study's input: the feature table, what the chain said per case, and the
    cases left out (no attentional region, or a chain failure with skip_failed)."""

    table: FeatureTable
    cases: tuple[CaseInfo, ...]
    skipped: tuple[SkippedCase, ...]
    n_non_pneumonia: int  # cases of the cohort the study does not look at


def radiomics_params(params: ChainParams, study: PhenotypeStudyParams) -> ChainParams:
    """``params`` with the study's image types (the node leaves LoG and wavelets off)."""
    return replace(params, radiomics_log_sigma_mm=tuple(study.log_sigma_mm), radiomics_wavelet=study.wavelet)


def case_phenotype(volume: Any, models: Any, params: ChainParams, label: str) -> tuple[Any, Any, tuple[int, ...]]:
    """(phenotype or None, the chain's result, explained slices) of one case, explaining
    its true class ``label`` (see the module docstring)."""
    from .chain import analyze, sized_for
    from .explain import explain_slices, select_slices
    from .phenotype import compute_phenotype

    result = analyze(volume, models, replace(params, max_explained_slices=0, compute_phenotype=False))
    _, z_indices = select_slices(result.case_scores, result.slice_scores, result.infected, params, label)
    cls_params = sized_for(params, models.card.architecture("classifier"))
    attention = explain_slices(volume, result.lung_mask, z_indices, label, models.classifier, cls_params)
    return compute_phenotype(volume, result.lung_mask, attention, params), result, tuple(z_indices)


def collect_features(
    cases: Iterable[Any],
    models: Any,
    params: ChainParams,
    study: PhenotypeStudyParams,
    progress: bool = True,
    skip_failed: bool = False,
    phenotype_of: Callable[..., tuple[Any, Any, tuple[int, ...]]] = case_phenotype,
) -> CohortFeatures:
    """The features of every pneumonia case (tqdm progress bar). A case the chain cannot
    analyse stops the study with a PhenotypeStudyError naming it, unless ``skip_failed``: then
    it is listed and left out. ``phenotype_of`` is ``case_phenotype`` (an argument for
    tests)."""
    from tqdm import tqdm

    all_cases = list(cases)
    pneumonia = [c for c in all_cases if c.label in PNEUMONIA_CLASSES]
    chain_params = radiomics_params(params, study)
    rows: list[tuple[CaseInfo, dict[str, float]]] = []
    skipped: list[SkippedCase] = []
    bar = tqdm(pneumonia, desc="phenotype", unit="case", disable=not progress, dynamic_ncols=True)
    for case in bar:
        try:
            phenotype, result, z_indices = phenotype_of(case.load().volume, models, chain_params, case.label)
        except (PipelineError, OSError, ValueError, RuntimeError) as e:
            message = str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
            if not skip_failed:
                raise PhenotypeStudyError(
                    f"case {case.case_id} could not be analysed: {message} "
                    "(--skip-failed leaves such cases out and lists them)"
                ) from e
            skipped.append(SkippedCase(str(case.case_id), case.label, f"chain failed: {message}"))
            continue
        if phenotype is None:
            skipped.append(SkippedCase(str(case.case_id), case.label, "no attentional region on the explained slices"))
            continue
        info = CaseInfo(str(case.case_id), case.label, result.decision.value, phenotype.region_count, z_indices)
        rows.append((info, dict(phenotype.features)))
        bar.set_postfix(regions=phenotype.region_count)
    return CohortFeatures(
        table=feature_table([r[0] for r in rows], [r[1] for r in rows]),
        cases=tuple(r[0] for r in rows),
        skipped=tuple(skipped),
        n_non_pneumonia=len(all_cases) - len(pneumonia),
    )


def feature_table(infos: Sequence[CaseInfo], features: Sequence[dict[str, float]]) -> FeatureTable:
    """One row per case over the union of the feature names (sorted; NaN where absent)."""
    names = tuple(sorted({name for f in features for name in f}))
    values = np.array([[float(f.get(n, np.nan)) for n in names] for f in features], dtype=np.float64)
    return FeatureTable(
        case_ids=tuple(i.case_id for i in infos),
        labels=tuple(i.label for i in infos),
        names=names,
        values=values.reshape(len(infos), len(names)),
    )
