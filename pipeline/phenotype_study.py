"""The phenotype study of METHOD.md module 6, composed: a cohort and a loaded bundle -> a
report folder. Like ``pipeline.chain`` it only wires the steps:

1. ``pipeline.phenotype_cohort.collect_features``: the radiomics phenotype of the
   attentional regions of every pneumonia case (original, LoG and wavelet image types x
   six feature families, distance to the pleura, 2-D contour and 3-D grey-level fractal
   dimensions);
2. ``pipeline.phenotype_stats.compare`` per comparison (COVID-19 vs CAP, COVID-19 vs
   influenza): LASSO selection, t-test and KS test with Benjamini-Hochberg correction;
3. ``pipeline.phenotype_plots``: a cluster heat map per comparison, the shape features;
4. ``pipeline.phenotype_report``: features.csv, selected.json, tests.csv, report.md.

``dicomnode phenotype`` only parses, loads and calls ``run_phenotype_study``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .params import ChainParams, PhenotypeStudyParams
from .phenotype import FEATURE_CLASSES
from .phenotype_cohort import CohortFeatures, collect_features, radiomics_params
from .phenotype_plots import SHAPE_FEATURES, plot_cluster_heatmap, plot_shape_features
from .phenotype_report import StudyRun, render_report, write_features_csv, write_selected_json, write_tests_csv
from .phenotype_stats import COMPARISONS, ComparisonResult, PhenotypeStudyError, compare


@dataclass(frozen=True)
class StudyOutcome:
    """What the study wrote: the cohort's features, the comparisons and the plot files."""

    cohort: CohortFeatures
    results: tuple[ComparisonResult, ...]
    plots: dict[str, str]
    out_dir: Path


def study_settings(params: ChainParams, study: PhenotypeStudyParams) -> dict[str, dict[str, Any]]:
    """The settings the report and selected.json state, in words and numbers."""
    try:
        import radiomics

        library = f"pyradiomics {radiomics.__version__}"
    except ImportError:
        library = "numpy first-order features only (pyradiomics not installed)"
    image_types = ["original"]
    if study.log_sigma_mm:
        image_types.append(f"LoG sigma {', '.join(f'{s:g}' for s in study.log_sigma_mm)} mm (2-D)")
    if study.wavelet:
        image_types.append("wavelet (pyradiomics default: coif1, level 1; 2-D: LL, LH, HL, HH)")
    return {
        "radiomics": {
            "library": library,
            "image types": "; ".join(image_types),
            "feature classes": ", ".join(FEATURE_CLASSES),
            "bin width (HU)": params.radiomics_bin_width,
            "geometry": "2-D per explained slice (force2D), slices averaged weighted by region area",
            "left out": "pyradiomics' deprecated features; GLCM SumAverage (= 2 x JointAverage)",
        },
        "attentional regions": {
            "explained class": "the case's true class (Guided Grad-CAM)",
            "slices": f"at most {params.max_explained_slices}, the chain's rule (infectious slices first)",
            "threshold of the normalised map": params.attention_threshold,
            "opening/closing disk radius (px)": params.attention_morph_radius_px,
            "minimum region area (px of a 512 px slice)": params.attention_min_area_px,
            "lung margin (px of a 512 px slice)": params.lung_margin_px,
        },
        "shape features": {
            "pleura_distance_mm": "centroid of each region to the nearest non-lung pixel, mean over regions",
            "fractal_dimension_2d": "box counting of the regions' contour, mean over slices",
            "fractal_dimension_3d_grey": "differential box counting of the grey-level surface, mean over slices",
        },
        "statistics": {
            "comparisons": ", ".join(f"{c.positive} vs {c.negative}" for c in COMPARISONS),
            "candidate features": f"measured in at least {1 - study.max_missing_fraction:.0%} of the cases, "
            "not constant",
            "LASSO": f"L1 logistic regression (scikit-learn, liblinear) on standardised, median-imputed "
            f"features; {study.lasso_cs} strengths from l1_min_c to {study.lasso_path_ratio:g} x it; "
            f"{study.cv_folds}-fold stratified CV (seed {study.seed}) on log loss; one-standard-error rule",
            "selection rule": f"non-zero coefficients, at most {study.max_selected} by absolute value",
            "tests": "Welch's t-test and two-sample Kolmogorov-Smirnov test (scipy), per candidate feature",
            "multiple testing": f"Benjamini-Hochberg per test and comparison; significant: FDR < {study.fdr_alpha}",
        },
    }


def _draw_plots(cohort: CohortFeatures, results: Sequence[ComparisonResult], out: Path) -> dict[str, str]:
    """The heat map of each comparison that ran, and the shape features; name -> file."""
    plots: dict[str, str] = {}
    table = cohort.table
    for r in results:
        if r.selection is None:
            continue
        sub = table.of_classes((r.comparison.positive, r.comparison.negative))
        columns = [sub.names.index(f) for f in r.selection.features]
        name = f"heatmap_{r.comparison.name}.png"
        title = f"{r.comparison.positive} vs {r.comparison.negative}: LASSO-selected features"
        plot_cluster_heatmap(sub.values[:, columns], sub.labels, r.selection.features, out / name, title)
        plots[f"heatmap_{r.comparison.name}"] = name
    if len(table.case_ids):
        shape = [
            table.values[:, table.names.index(n)] if n in table.names else np.full(len(table.case_ids), np.nan)
            for n, _ in SHAPE_FEATURES
        ]
        plot_shape_features(
            shape, table.labels, out / "shape_features.png", "Shape features of the attentional regions"
        )
        plots["shape_features"] = "shape_features.png"
    return plots


def check_case_ids(cases: Sequence[Any]) -> None:
    """PhenotypeStudyError when two cases share an id (features.csv names cases by id)."""
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            raise PhenotypeStudyError(
                f"case id {case.case_id!r} appears twice in the cohort; give each --data spec its own "
                "seed (phantom specs with the same seed name their cases alike)"
            )
        seen.add(case.case_id)


def run_phenotype_study(
    bundle: Any,
    cases: Sequence[Any],
    out_dir: Path | str,
    run: StudyRun,
    params: ChainParams = ChainParams(),
    study: PhenotypeStudyParams = PhenotypeStudyParams(),
    progress: bool = True,
    skip_failed: bool = False,
) -> StudyOutcome:
    """The whole study on ``cases`` (``pipeline.datasets`` Case objects) with a loaded
    ``pipeline.models.ModelBundle``; writes the folder and returns what it wrote."""
    check_case_ids(cases)
    cohort = collect_features(cases, bundle, params, study, progress=progress, skip_failed=skip_failed)
    results = tuple(compare(cohort.table, c, study) for c in COMPARISONS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _draw_plots(cohort, results, out)
    write_features_csv(cohort, out / "features.csv")
    write_tests_csv(results, out / "tests.csv")
    write_selected_json(results, run, out / "selected.json")
    report = render_report(cohort, results, run, plots, study.fdr_alpha, study.report_top_tests)
    (out / "report.md").write_text(report)
    return StudyOutcome(cohort, results, plots, out)


__all__ = ["StudyOutcome", "StudyRun", "check_case_ids", "run_phenotype_study", "study_settings", "radiomics_params"]
