"""The evaluation report in Markdown, made from the evaluation's figures alone.

Everything in the report comes from the ``pipeline.figures.EvaluationMetrics`` whose
``to_json()`` is metrics.json, so the report and the JSON can never disagree, and a
report can be re-rendered from an old metrics.json
(``render_report(EvaluationMetrics.from_json(json.loads(text)))``).
"""

from __future__ import annotations

from typing import Any, Sequence

from .figures import (
    ClassFigures,
    EvaluationMetrics,
    Figure,
    LesionShare,
    LobesFigures,
    SeverityFigures,
)

#: Titles of the plots, in report order.
PLOT_TITLES: dict[str, str] = {
    "roc": "ROC per class and micro-average",
    "roc_covid19": "COVID-19 ROC (with the readers' operating points when given)",
    "roc_tasks": "ROC of the binary tasks",
    "pr": "Precision-recall per class",
    "confusion_matrix": "Confusion matrix",
    "roc_locating": "COVID-infectious slice locating ROC",
    "tsne": "t-SNE of case features",
    "bland_altman_involvement": "Bland-Altman: whole-lung involvement, chain minus truth",
    "grade_confusion": "MosMedData grade (CT-0..CT-4): truth vs chain",
}


def fmt(fig: Figure | None, digits: int = 4) -> str:
    """ "0.9752 (0.9726-0.9783)" for a figure; "n/a" when undefined."""
    if fig is None or fig.value is None:
        return "n/a"
    text = f"{fig.value:.{digits}f}"
    if fig.ci_low is not None and fig.ci_high is not None:
        text += f" ({fig.ci_low:.{digits}f}-{fig.ci_high:.{digits}f})"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _class_table(block: ClassFigures) -> list[str]:
    rows = []
    sens, spec = block.per_class_sensitivity, block.per_class_specificity
    for c, auc in block.per_class_auc.items():
        row: list[Any] = [c, block.class_counts.get(c, ""), fmt(auc)]
        if sens is not None and spec is not None:
            row += [fmt(sens[c]), fmt(spec[c])]
        rows.append(row)
    header = ["class", "cases", "AUC (95% CI)"]
    if sens is not None:
        header += ["sensitivity at threshold", "specificity at threshold"]
    return _table(header, rows)


def _decision_section(m: EvaluationMetrics) -> list[str]:
    """What the reports stated (the decision, with indeterminate and out of domain)."""
    d = m.decision
    if not d:
        return []
    L = [
        "## The stated decision",
        "",
        "What the SR, KOS and overlays say: a class, `indeterminate` or `out_of_domain` "
        "(operating points from the bundle's card). Indeterminate and out-of-domain count as not correct.",
        "",
    ]
    L += _table(
        ["figure", "value (95% CI)"],
        [
            ["decisions made", ", ".join(f"{k} {v}" for k, v in d.counts.items())],
            ["accuracy of the decision", fmt(d.accuracy)],
            ["accuracy among class decisions", fmt(d.accuracy_of_stated)],
            ["indeterminate rate", fmt(d.indeterminate_rate)],
            ["out-of-domain rate", fmt(d.out_of_domain_rate)],
            ["non-pneumonia cases given a pneumonia decision", d.non_pneumonia_called_pneumonia],
            ["largest out-of-domain score", d.out_of_domain_score_max],
        ],
    )
    return L


def _where_it_looks_section(m: EvaluationMetrics) -> list[str]:
    """Infectious slices over all classes, lesion inclusion of the mask, Grad-CAM heat."""
    rows: list[list[Any]] = []
    inf = m.infectious_slices
    if inf:
        rows += [
            [
                f"infectious-slice AUC, {inf.n_slices} slices of {inf.n_cases} cases (all classes)",
                fmt(inf.auc),
            ],
            [
                f"infectious-slice F1 at {inf.threshold:.3f}" + (f" ({inf.f1_rule})" if inf.f1_rule else ""),
                fmt(inf.f1),
            ],
        ]
    non = m.non_pneumonia_flagged_slices
    if non:
        rows.append([f"slices flagged per non-pneumonia case (mean; max {non.max})", fmt(non.mean)])
    ld = m.lesion_dice
    if ld:
        rows.append(
            [
                f"lesion Dice of the U-Net's lesion map (voxels pooled over {ld.n_cases} cases with lesions)",
                fmt(ld.dice),
            ]
        )
    rows += _lesion_share_rows(m.lesion_share)
    inc = m.lesion_inclusion
    if inc:
        rows.append(
            [
                f"lesion voxels inside the chain's lung mask (mean over {inc.n_cases} cases; min {inc.min:.3f})",
                fmt(inc.mean),
            ]
        )
    rows += _severity_rows(m.severity)
    rows += _lobe_rows(m.lobes)
    for h in (m.heat_inside_lung, m.heat_on_lesion):
        if h:
            rows.append(
                [
                    f"{h.what} (mean over {h.n_overlays} overlays; min {h.min:.3f}; "
                    f"share of overlays >= 0.8: {h.share_at_least_0_8:.2f})",
                    fmt(h.mean),
                ]
            )
    if not rows:
        return []
    return ["## Lesions, infectious slices and where the classifier looks", ""] + _table(
        ["figure", "value (95% CI)"], rows
    )


def _lesion_share_rows(ls: LesionShare | None) -> list[list[Any]]:
    """The lesion share of the lung as a pneumonia score, with its range by group."""
    if not ls or ls.pneumonia_auc is None:
        return []
    ranges = "; ".join(
        f"{name} median {100 * v.median:.3g}% (max {100 * v.max:.3g}%)"
        for name, v in (("non-pneumonia", ls.non_pneumonia_share), ("pneumonia", ls.pneumonia_share))
        if v is not None
    )
    return [
        [
            f"lesion share of the lung as a pneumonia score, AUC ({ls.n_cases} cases; {ranges})",
            fmt(ls.pneumonia_auc),
        ]
    ]


def _severity_rows(sev: SeverityFigures | None) -> list[list[Any]]:
    if not sev:
        return []
    rows: list[list[Any]] = [
        [
            f"whole-lung involvement, mean absolute error vs truth, points ({sev.n_cases} cases)",
            fmt(sev.involvement_mae_points),
        ],
        ["whole-lung involvement, mean signed error (bias), points", fmt(sev.involvement_bias_points)],
        ["MosMedData grade (CT-0..CT-4) from the involvement, agreement with truth", fmt(sev.grade_agreement)],
    ]
    ba = sev.bland_altman_points
    if ba.bias is not None:
        rows.append(
            [
                "whole-lung involvement, Bland-Altman bias and 95% limits of agreement, points",
                f"{ba.bias:+.2f} ({ba.lower_limit:+.2f} to {ba.upper_limit:+.2f})",
            ]
        )
    grade = sev.grade
    if grade is not None:
        confusion = [list(row) for row in grade.confusion]
        rows.append(
            [
                f"MosMedData grade, quadratic weighted kappa vs the truth grade ({grade.n_cases} cases; "
                f"confusion matrix rows truth CT-0..CT-4: {confusion})",
                fmt(grade.kappa_quadratic),
            ]
        )
    healthy = sev.non_pneumonia_involvement_percent
    if healthy:
        rows.append(
            [
                f"involvement given to non-pneumonia cases, % of the lung (mean; max {healthy.max:.2f})",
                f"{healthy.mean:.3f}",
            ]
        )
    return rows


def _lobe_rows(lobes: LobesFigures | None) -> list[list[Any]]:
    """Per-lobe Dice of the chain's lobe map (and involvement error) against the truth."""
    if not lobes:
        return []
    rows: list[list[Any]] = [
        [f"lobe map, mean Dice over the five lobes vs truth ({lobes.n_cases} cases)", fmt(lobes.mean_dice)]
    ]
    for name, entry in lobes.per_lobe.items():
        rows.append([f"lobe map Dice, {name.replace('_', ' ')} lobe", fmt(entry.dice)])
        if entry.involvement_mae_points is not None:
            rows.append(
                [
                    f"{name.replace('_', ' ')} lobe involvement, mean absolute error vs truth, points "
                    f"({lobes.n_cases_with_involvement} cases)",
                    fmt(entry.involvement_mae_points),
                ]
            )
    return rows


def render_report(m: EvaluationMetrics) -> str:
    """Markdown text of the whole evaluation."""
    L: list[str] = ["# Evaluation report", ""]
    L += _header_section(m)
    L += _failed_section(m)
    L += _decision_section(m)
    L += _multiway_section(m)
    L += _tasks_section(m)
    L += _lung_and_locating_section(m)
    L += _where_it_looks_section(m)
    L += _subsets_section(m)
    L += _readers_section(m)
    L += _cxr_section(m)
    L += _plots_section(m)
    L += _skipped_section(m)
    return "\n".join(L)


def _cxr_section(m: EvaluationMetrics) -> list[str]:
    """CT alone vs CXR alone vs fused (pipeline.figures.cxr), when the bundle has a CXR model."""
    from .figures.cxr import comparison_markdown

    if m.cxr is None:
        return []
    return ["## CXR branch: CT alone, CXR alone, fused", "", *comparison_markdown(m.cxr)]


def _header_section(m: EvaluationMetrics) -> list[str]:
    """The bundle's disclaimer and what was evaluated, with which intervals."""
    L: list[str] = []
    run = m.run
    bundle = None if run is None else run.bundle
    if bundle is not None and bundle.disclaimer:
        L += [f"**{bundle.disclaimer}**", ""]
    if bundle is not None and bundle.trained_on_synthetic_data:
        L += [
            "The models were trained on synthetic phantoms only: these figures say nothing about "
            "performance on patients.",
            "",
        ]
    boot = m.bootstrap
    L += _table(
        ["", ""],
        [
            ["bundle", "?" if bundle is None else f"{bundle.name} {bundle.version}".strip()],
            ["bundle sha256", f"`{'?' if run is None else run.bundle_sha256}`"],
            ["data", f"`{'' if run is None else run.data_spec}`"],
            ["cases", m.n_cases],
            ["decision threshold", "?" if m.decision_threshold is None else m.decision_threshold],
            [
                "confidence intervals",
                f"{100 * boot.confidence:.0f}% bootstrap, "
                f"{boot.n_resamples} resamples ({boot.method}), "
                f"seed {boot.seed}",
            ],
        ],
    )
    return L


def _failed_section(m: EvaluationMetrics) -> list[str]:
    failed = () if m.run is None else m.run.failed_cases
    if not failed:
        return []
    return [f"**{len(failed)} case(s) could not be analysed and are left out of every figure:**", ""] + _table(
        ["case", "error"], [[f.case_id, f.error.replace("|", "/")] for f in failed]
    )


def _multiway_section(m: EvaluationMetrics) -> list[str]:
    c = m.classes
    L = ["## Multi-way classification", ""]
    L += _table(
        ["figure", "value (95% CI)"],
        [
            ["multi-way AUC, micro-average", fmt(c.multiway_auc.micro)],
            ["multi-way AUC, macro-average", fmt(c.multiway_auc.macro)],
            ["accuracy (multi-way label)", fmt(c.accuracy)],
        ],
    )
    L += ["### Per class (one-vs-rest; sensitivity and specificity of the class probability at the threshold)", ""]
    L += _class_table(c)
    cm = c.confusion_matrix
    if cm is not None:
        L += ["### Confusion matrix (rows: truth, columns: predicted)", ""]
        L += _table(
            ["truth \\ predicted", *cm.labels],
            [[lab, *row] for lab, row in zip(cm.labels, cm.counts, strict=True)],
        )
    return L


def _tasks_section(m: EvaluationMetrics) -> list[str]:
    L = ["## Binary tasks (each on the cases whose truth belongs to the task)", ""]
    rows = []
    for task, t in m.tasks.items():
        rows.append(
            [
                task,
                f"{t.n_cases} ({t.n_positive} {t.positive})",
                t.threshold,
                fmt(t.auc),
                fmt(t.sensitivity),
                fmt(t.specificity),
            ]
        )
    L += _table(["task", "cases (positives)", "threshold", "AUC", "sensitivity", "specificity"], rows)
    return L


def _lung_and_locating_section(m: EvaluationMetrics) -> list[str]:
    L: list[str] = []
    ld = m.lung_dice
    if ld:
        L += ["## Lung segmentation", ""]
        rows = [[f"mean Dice over {ld.n_cases} cases, the chain's segmentation ({ld.method})", fmt(ld.mean)]]
        if ld.classical_mean is not None:
            rows.append(["mean Dice, classical HU-threshold method (reference)", fmt(ld.classical_mean)])
        L += _table(["figure", "value (95% CI)"], rows)
    loc = m.locating
    if loc:
        L += ["## COVID-infectious slice locating (COVID-19 cases with lesion masks)", ""]
        L += _table(
            ["figure", "value (95% CI)"],
            [
                ["cases / slices / infected slices", f"{loc.n_cases} / {loc.n_slices} / {loc.n_infected_slices}"],
                ["AUC", fmt(loc.auc)],
                [f"sensitivity at {loc.threshold}", fmt(loc.sensitivity)],
                [f"specificity at {loc.threshold}", fmt(loc.specificity)],
            ],
        )
    return L


def _subsets_section(m: EvaluationMetrics) -> list[str]:
    if not m.subsets:
        return []
    L = ["## Subsets", ""]
    for key, groups in m.subsets.items():
        L += [f"### By {key.replace('_', ' ')}", ""]
        rows = []
        for value, b in groups.items():
            rows.append(
                [
                    value,
                    b.n_cases,
                    *(fmt(auc, 3) for auc in b.per_class_auc.values()),
                    fmt(b.multiway_auc.micro, 3),
                    fmt(b.accuracy, 3),
                ]
            )
        classes = list(next(iter(groups.values())).per_class_auc)
        L += _table([key, "cases", *(f"AUC {c}" for c in classes), "micro AUC", "accuracy"], rows)
    return L


def _readers_section(m: EvaluationMetrics) -> list[str]:
    readers = m.readers
    if not readers:
        return []
    L = [
        "## Reader comparison",
        "",
        f"Task: `{readers.task}` on {readers.n_cases} cases read; sensitivity and specificity "
        f"for {readers.positive_class}. The AI's call is "
        + (
            "the multi-way label."
            if readers.task == "multi_way"
            else f"the `{readers.task}` score at the decision threshold."
        ),
        "",
    ]
    rows = [[r.name, r.n_cases, r.correct, r.wrong, fmt(r.sensitivity), fmt(r.specificity)] for r in readers.rows]
    L += _table(["reader", "cases", "correct", "wrong", "sensitivity", "specificity"], rows)
    L += [
        '"any reader": a case counts as correct when at least one reader was right; '
        '"all readers": only when every reader who read it was right. (The paper\'s Table 3 '
        'labels these columns the other way round: its "Any reader" is wrong if anyone is '
        "wrong.)",
        "",
    ]
    if readers.unmatched_case_ids:
        L += [
            f"Readers' case ids not among the evaluated cases (left out): {', '.join(readers.unmatched_case_ids)}",
            "",
        ]
    return L


def _plots_section(m: EvaluationMetrics) -> list[str]:
    plots = m.plots or {}
    if not plots:
        return []
    L = ["## Plots", ""]
    for key, fname in plots.items():
        title = PLOT_TITLES.get(key) or key.replace("_", " ").replace("decision curve", "Decision curve:")
        L += [f"### {title}", "", f"![{title}]({fname})", ""]
    return L


def _skipped_section(m: EvaluationMetrics) -> list[str]:
    skipped = m.bootstrap.skipped_resamples
    if not skipped:
        return []
    return [
        "## Bootstrap resamples skipped",
        "",
        "Resamples on which a figure was undefined (a class absent) are left out of its interval:",
        "",
    ] + _table(["figure", "skipped"], [[k, v] for k, v in skipped.items()])
