"""The phenotype study's files: ``features.csv``, ``selected.json``, ``tests.csv`` and
``report.md`` (the plots are pipeline.phenotype_plots'). Each writer takes the study's
typed results and a path; nothing here computes a statistic.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .phenotype_cohort import CohortFeatures
from .phenotype_stats import ComparisonResult, FeatureTest

#: tests.csv columns, in order.
TEST_COLUMNS = (
    "comparison",
    "feature",
    "n_positive",
    "n_negative",
    "mean_positive",
    "mean_negative",
    "t_statistic",
    "t_p",
    "t_p_bh",
    "ks_statistic",
    "ks_p",
    "ks_p_bh",
    "lasso_selected",
)
#: features.csv columns before the features.
CASE_COLUMNS = ("case_id", "label", "decision", "region_count", "explained_slices")


@dataclass(frozen=True)
class StudyRun:
    """What the report says about how the study was made."""

    data_spec: str
    synthetic_data: bool
    bundle_name: str
    bundle_version: str
    bundle_sha256: str
    bundle_trained_on_synthetic_data: bool
    bundle_disclaimer: str
    settings: Mapping[str, Any]


def _number(value: float) -> str:
    """A CSV cell: empty for NaN, else the shortest text that reads back the same."""
    return "" if not math.isfinite(value) else repr(float(value))


def write_features_csv(cohort: CohortFeatures, path: Path) -> None:
    """One row per case with features: what the chain said, then every feature."""
    table = cohort.table
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow((*CASE_COLUMNS, *table.names))
        for info, row in zip(cohort.cases, table.values, strict=True):
            explained = " ".join(str(z) for z in info.explained_slices)
            writer.writerow(
                (info.case_id, info.label, info.decision, info.region_count, explained, *(_number(v) for v in row))
            )


def write_tests_csv(results: Sequence[ComparisonResult], path: Path) -> None:
    """Every candidate feature's tests, per comparison, in the comparison's feature order."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TEST_COLUMNS)
        for r in results:
            chosen = set(r.selection.features) if r.selection else set()
            for t in r.tests:
                writer.writerow(
                    (
                        r.comparison.name,
                        t.feature,
                        t.n_positive,
                        t.n_negative,
                        *(
                            _number(v)
                            for v in (
                                t.mean_positive,
                                t.mean_negative,
                                t.t_statistic,
                                t.t_p,
                                t.t_p_bh,
                                t.ks_statistic,
                                t.ks_p,
                                t.ks_p_bh,
                            )
                        ),
                        int(t.feature in chosen),
                    )
                )


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def selected_json(results: Sequence[ComparisonResult], run: StudyRun) -> dict[str, Any]:
    """selected.json: per comparison the LASSO selection with its coefficients, and the
    settings it was made with."""
    comparisons = {}
    for r in results:
        s = r.selection
        comparisons[r.comparison.name] = {
            "positive": r.comparison.positive,
            "negative": r.comparison.negative,
            "n_positive": r.n_positive,
            "n_negative": r.n_negative,
            "n_candidate_features": len(r.candidates),
            "n_left_out_features": len(r.left_out),
            "note": r.note or None,
            "lasso": None
            if s is None
            else {
                "c": s.c,
                "cv_folds": s.cv_folds,
                "cv_log_loss": _finite_or_none(s.cv_log_loss),
                "n_nonzero": s.n_nonzero,
            },
            "selected": []
            if s is None
            else [{"feature": f, "coefficient": c} for f, c in zip(s.features, s.coefficients, strict=True)],
        }
    return {
        "data_spec": run.data_spec,
        "synthetic_data": run.synthetic_data,
        "bundle": {"name": run.bundle_name, "version": run.bundle_version, "sha256": run.bundle_sha256},
        "settings": dict(run.settings),
        "comparisons": comparisons,
    }


def write_selected_json(results: Sequence[ComparisonResult], run: StudyRun, path: Path) -> None:
    path.write_text(json.dumps(selected_json(results, run), indent=2, allow_nan=False) + "\n")


# ----------------------------------------------------------------------- report.md


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def _honesty_lines(run: StudyRun) -> list[str]:
    lines = []
    if run.synthetic_data:
        lines.append(
            "> **Synthetic data.** The cases are computer-generated phantoms. Their lesions follow the "
            "generator's recipe per class, so every feature, selection and p-value below describes the "
            "generator and this model, not COVID-19, CAP or influenza. This report shows what the study "
            "computes and how it reads; it is no medical finding."
        )
    if run.bundle_trained_on_synthetic_data or run.bundle_disclaimer:
        lines.append(f"> **Model.** {run.bundle_disclaimer or 'Trained on synthetic data.'}")
    return lines


def _cohort_lines(cohort: CohortFeatures, run: StudyRun) -> list[str]:
    counts = {c: cohort.table.labels.count(c) for c in ("covid19", "cap", "influenza")}
    lines = [
        "## Cohort",
        "",
        f"- Data: `{run.data_spec}`",
        f"- Bundle: {run.bundle_name} {run.bundle_version} (card sha256 `{run.bundle_sha256[:16]}...`)",
        "- Pneumonia cases with features: " + ", ".join(f"{c} {n}" for c, n in counts.items()),
        f"- Non-pneumonia cases (not studied): {cohort.n_non_pneumonia}",
        f"- Pneumonia cases without features: {len(cohort.skipped)}",
    ]
    lines += [f"  - `{s.case_id}` ({s.label}): {s.reason}" for s in cohort.skipped]
    return lines + [""]


def _settings_lines(settings: Mapping[str, Any]) -> list[str]:
    lines = ["## Settings", ""]
    for section, values in settings.items():
        lines.append(f"- **{section}**")
        lines += [f"  - {key}: {value}" for key, value in values.items()]
    return lines + [""]


def _test_row(t: FeatureTest, coefficient: float | None) -> str:
    coef = "" if coefficient is None else f"{coefficient:+.3f}"
    return (
        f"| `{t.feature}` | {coef} | {t.mean_positive:.4g} | {t.mean_negative:.4g} | {_p(t.t_p)} | "
        f"{_p(t.t_p_bh)} | {t.ks_statistic:.2f} | {_p(t.ks_p)} | {_p(t.ks_p_bh)} |"
    )


_TEST_HEADER = (
    "| feature | LASSO coef. | mean {pos} | mean {neg} | t-test p | t-test p (BH) | KS D | KS p | KS p (BH) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
)


def _comparison_lines(r: ComparisonResult, alpha: float, top: int, heatmap: str | None) -> list[str]:
    c = r.comparison
    lines = [
        f"## {c.positive} vs {c.negative}",
        "",
        f"{r.n_positive} {c.positive} and {r.n_negative} {c.negative} cases.",
    ]
    if r.note:
        return lines + ["", f"The comparison was {r.note}.", ""]
    s = r.selection
    assert s is not None  # a comparison that ran has a selection
    tests = {t.feature: t for t in r.tests}
    header = [h.format(pos=c.positive, neg=c.negative) for h in _TEST_HEADER]
    lines += [
        f"{len(r.candidates)} candidate features ({len(r.left_out)} left out: missing in too many cases or constant).",
        "",
        f"### LASSO selection ({len(s.features)} of {s.n_nonzero} non-zero; C = {s.c:.4g}, "
        f"{s.cv_folds}-fold CV log loss {s.cv_log_loss:.3f})",
        "",
    ]
    if s.features:
        lines += [*header, *(_test_row(tests[f], k) for f, k in zip(s.features, s.coefficients, strict=True)), ""]
    else:
        lines += ["LASSO kept no feature: none separates the classes better than chance in cross-validation.", ""]
    ranked = sorted(r.tests, key=lambda t: (math.inf if not math.isfinite(t.t_p) else t.t_p, t.feature))
    significant = sum(1 for t in r.tests if t.t_p_bh < alpha)
    significant_ks = sum(1 for t in r.tests if t.ks_p_bh < alpha)
    chosen = dict(zip(s.features, s.coefficients, strict=True))
    lines += [
        f"### Univariate tests (top {min(top, len(ranked))} of {len(ranked)} by t-test p; all in tests.csv)",
        "",
        f"Significant after Benjamini-Hochberg at FDR {alpha}: {significant} by t-test, {significant_ks} by KS test.",
        "",
        *header,
        *(_test_row(t, chosen.get(t.feature)) for t in ranked[:top]),
        "",
    ]
    if heatmap:
        lines += [f"![cluster heat map, {c.positive} vs {c.negative}]({heatmap})", ""]
    return lines


def render_report(
    cohort: CohortFeatures,
    results: Sequence[ComparisonResult],
    run: StudyRun,
    plots: Mapping[str, str],
    alpha: float,
    top: int,
) -> str:
    """report.md: cohort, settings, per comparison the selection, tests and heat map."""
    lines = ["# Phenotype study report", ""]
    for paragraph in _honesty_lines(run):  # separate quotes: one paragraph each
        lines += [paragraph, ""]
    lines += _cohort_lines(cohort, run)
    for r in results:
        lines += _comparison_lines(r, alpha, top, plots.get(f"heatmap_{r.comparison.name}"))
    if "shape_features" in plots:
        lines += ["## Shape features", "", f"![shape features by class]({plots['shape_features']})", ""]
    lines += _settings_lines(run.settings)
    lines += [
        "## Files",
        "",
        "- `features.csv`: one row per case with features (all features, NaN left empty)",
        "- `selected.json`: the LASSO selection per comparison, with coefficients and settings",
        "- `tests.csv`: t-test and KS test per candidate feature and comparison, raw and BH-adjusted",
        *(f"- `{name}`" for name in plots.values()),
        "",
    ]
    return "\n".join(lines)
