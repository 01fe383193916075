"""The evaluation report in Markdown, made from metrics.json's dict alone.

Everything in the report comes from the metrics dict, so the report and the JSON can
never disagree, and a report can be re-rendered from an old metrics.json.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

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


def fmt(fig: Mapping[str, Any] | None, digits: int = 4) -> str:
    """ "0.9752 (0.9726-0.9783)" for a figure dict; "n/a" when undefined."""
    if not fig or fig.get("value") is None:
        return "n/a"
    text = f"{fig['value']:.{digits}f}"
    if fig.get("ci_low") is not None and fig.get("ci_high") is not None:
        text += f" ({fig['ci_low']:.{digits}f}-{fig['ci_high']:.{digits}f})"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _class_table(block: Mapping[str, Any]) -> list[str]:
    rows = []
    for c, auc in block["per_class_auc"].items():
        row = [c, block.get("class_counts", {}).get(c, ""), fmt(auc)]
        if "per_class_sensitivity" in block:
            row += [fmt(block["per_class_sensitivity"][c]), fmt(block["per_class_specificity"][c])]
        rows.append(row)
    header = ["class", "cases", "AUC (95% CI)"]
    if "per_class_sensitivity" in block:
        header += ["sensitivity at threshold", "specificity at threshold"]
    return _table(header, rows)


def _decision_section(m: Mapping[str, Any]) -> list[str]:
    """What the reports stated (the decision, with indeterminate and out of domain)."""
    d = m.get("decision")
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
            ["decisions made", ", ".join(f"{k} {v}" for k, v in d["counts"].items())],
            ["accuracy of the decision", fmt(d["accuracy"])],
            ["accuracy among class decisions", fmt(d["accuracy_of_stated"])],
            ["indeterminate rate", fmt(d["indeterminate_rate"])],
            ["out-of-domain rate", fmt(d["out_of_domain_rate"])],
            ["non-pneumonia cases given a pneumonia decision", d["non_pneumonia_called_pneumonia"]],
            ["largest out-of-domain score", d.get("out_of_domain_score_max")],
        ],
    )
    return L


def _where_it_looks_section(m: Mapping[str, Any]) -> list[str]:
    """Infectious slices over all classes, lesion inclusion of the mask, Grad-CAM heat."""
    rows = []
    inf = m.get("infectious_slices")
    if inf:
        rows += [
            [
                f"infectious-slice AUC, {inf['n_slices']} slices of {inf['n_cases']} cases (all classes)",
                fmt(inf["auc"]),
            ],
            [
                f"infectious-slice F1 at {inf['threshold']:.3f}"
                + (f" ({inf['f1_rule']})" if inf.get("f1_rule") else ""),
                fmt(inf["f1"]),
            ],
        ]
    non = m.get("non_pneumonia_flagged_slices")
    if non:
        rows.append([f"slices flagged per non-pneumonia case (mean; max {non['max']})", fmt(non["mean"])])
    ld = m.get("lesion_dice")
    if ld:
        rows.append(
            [
                f"lesion Dice of the U-Net's lesion map (voxels pooled over {ld['n_cases']} cases with lesions)",
                fmt(ld["dice"]),
            ]
        )
    ls = m.get("lesion_share")
    if ls and "pneumonia_auc" in ls:
        ranges = "; ".join(
            f"{k.replace('_share', '').replace('_', '-')} median {100 * v['median']:.3g}% (max {100 * v['max']:.3g}%)"
            for k, v in ls.items()
            if k.endswith("_share")
        )
        rows.append(
            [
                f"lesion share of the lung as a pneumonia score, AUC ({ls['n_cases']} cases; {ranges})",
                fmt(ls["pneumonia_auc"]),
            ]
        )
    inc = m.get("lesion_inclusion")
    if inc:
        rows.append(
            [
                f"lesion voxels inside the chain's lung mask (mean over {inc['n_cases']} cases; min {inc['min']:.3f})",
                fmt(inc["mean"]),
            ]
        )
    rows += _severity_rows(m.get("severity"))
    rows += _lobe_rows(m.get("lobes"))
    for key in ("heat_inside_lung", "heat_on_lesion"):
        h = m.get(key)
        if h:
            rows.append(
                [
                    f"{h['what']} (mean over {h['n_overlays']} overlays; min {h['min']:.3f}; "
                    f"share of overlays >= 0.8: {h['share_of_overlays_at_least_0.8']:.2f})",
                    fmt(h["mean"]),
                ]
            )
    if not rows:
        return []
    return ["## Lesions, infectious slices and where the classifier looks", ""] + _table(
        ["figure", "value (95% CI)"], rows
    )


def _severity_rows(sev: Mapping[str, Any] | None) -> list[list[str]]:
    if not sev:
        return []
    rows = [
        [
            f"whole-lung involvement, mean absolute error vs truth, points ({sev['n_cases']} cases)",
            fmt(sev["involvement_mae_points"]),
        ],
        ["whole-lung involvement, mean signed error (bias), points", fmt(sev["involvement_bias_points"])],
        ["MosMedData grade (CT-0..CT-4) from the involvement, agreement with truth", fmt(sev["grade_agreement"])],
    ]
    ba = sev.get("bland_altman_points")
    if ba and ba.get("bias") is not None:
        rows.append(
            [
                "whole-lung involvement, Bland-Altman bias and 95% limits of agreement, points",
                f"{ba['bias']:+.2f} ({ba['lower_limit']:+.2f} to {ba['upper_limit']:+.2f})",
            ]
        )
    if sev.get("grade_kappa_quadratic"):
        rows.append(
            [
                f"MosMedData grade, quadratic weighted kappa vs the truth grade ({sev['grade_n_cases']} cases; "
                f"confusion matrix rows truth CT-0..CT-4: {sev['grade_confusion']})",
                fmt(sev["grade_kappa_quadratic"]),
            ]
        )
    healthy = sev.get("non_pneumonia_involvement_percent")
    if healthy:
        rows.append(
            [
                f"involvement given to non-pneumonia cases, % of the lung (mean; max {healthy['max']:.2f})",
                f"{healthy['mean']:.3f}",
            ]
        )
    return rows


def _lobe_rows(lobes: Mapping[str, Any] | None) -> list[list[str]]:
    """Per-lobe Dice of the chain's lobe map (and involvement error) against the truth."""
    if not lobes:
        return []
    rows = [[f"lobe map, mean Dice over the five lobes vs truth ({lobes['n_cases']} cases)", fmt(lobes["mean_dice"])]]
    for name, entry in lobes["per_lobe"].items():
        rows.append([f"lobe map Dice, {name.replace('_', ' ')} lobe", fmt(entry["dice"])])
        if "involvement_mae_points" in entry:
            rows.append(
                [
                    f"{name.replace('_', ' ')} lobe involvement, mean absolute error vs truth, points "
                    f"({lobes['n_cases_with_involvement']} cases)",
                    fmt(entry["involvement_mae_points"]),
                ]
            )
    return rows


def render_report(m: Mapping[str, Any]) -> str:
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
    L += _plots_section(m)
    L += _skipped_section(m)
    return "\n".join(L)


def _header_section(m: Mapping[str, Any]) -> list[str]:
    """The bundle's disclaimer and what was evaluated, with which intervals."""
    L: list[str] = []
    bundle = m.get("bundle") or {}
    if bundle.get("disclaimer"):
        L += [f"**{bundle['disclaimer']}**", ""]
    if bundle.get("trained_on_synthetic_data"):
        L += [
            "The models were trained on synthetic phantoms only: these figures say nothing about "
            "performance on patients.",
            "",
        ]
    boot = m.get("bootstrap", {})
    L += _table(
        ["", ""],
        [
            ["bundle", f"{bundle.get('name', '?')} {bundle.get('version', '')}".strip()],
            ["bundle sha256", f"`{m.get('bundle_sha256', '?')}`"],
            ["data", f"`{m.get('data_spec', '')}`"],
            ["cases", m.get("n_cases", "?")],
            ["decision threshold", m.get("decision_threshold", "?")],
            [
                "confidence intervals",
                f"{100 * boot.get('confidence', 0.95):.0f}% bootstrap, "
                f"{boot.get('n_resamples', '?')} resamples ({boot.get('method', '')}), "
                f"seed {boot.get('seed', '?')}",
            ],
        ],
    )
    return L


def _failed_section(m: Mapping[str, Any]) -> list[str]:
    failed = m.get("failed_cases") or []
    if not failed:
        return []
    return [f"**{len(failed)} case(s) could not be analysed and are left out of every figure:**", ""] + _table(
        ["case", "error"], [[f["case_id"], str(f["error"]).replace("|", "/")] for f in failed]
    )


def _multiway_section(m: Mapping[str, Any]) -> list[str]:
    L = ["## Multi-way classification", ""]
    L += _table(
        ["figure", "value (95% CI)"],
        [
            ["multi-way AUC, micro-average", fmt(m["multiway_auc"]["micro"])],
            ["multi-way AUC, macro-average", fmt(m["multiway_auc"]["macro"])],
            ["accuracy (multi-way label)", fmt(m["accuracy"])],
        ],
    )
    L += ["### Per class (one-vs-rest; sensitivity and specificity of the class probability at the threshold)", ""]
    L += _class_table(m)
    cm = m["confusion_matrix"]
    L += ["### Confusion matrix (rows: truth, columns: predicted)", ""]
    L += _table(
        ["truth \\ predicted", *cm["labels"]],
        [[lab, *row] for lab, row in zip(cm["labels"], cm["counts"], strict=True)],
    )
    return L


def _tasks_section(m: Mapping[str, Any]) -> list[str]:
    L = ["## Binary tasks (each on the cases whose truth belongs to the task)", ""]
    rows = []
    for task, t in m["tasks"].items():
        rows.append(
            [
                task,
                f"{t['n_cases']} ({t['n_positive']} {t['positive']})",
                t.get("threshold", "?"),
                fmt(t.get("auc")),
                fmt(t.get("sensitivity")),
                fmt(t.get("specificity")),
            ]
        )
    L += _table(["task", "cases (positives)", "threshold", "AUC", "sensitivity", "specificity"], rows)
    return L


def _lung_and_locating_section(m: Mapping[str, Any]) -> list[str]:
    L: list[str] = []
    if m.get("lung_dice"):
        L += ["## Lung segmentation", ""]
        ld = m["lung_dice"]
        rows = [
            [
                f"mean Dice over {ld['n_cases']} cases, the chain's segmentation ({ld.get('method', '?')})",
                fmt(ld["mean"]),
            ]
        ]
        if ld.get("classical_mean"):
            rows.append(["mean Dice, classical HU-threshold method (reference)", fmt(ld["classical_mean"])])
        L += _table(["figure", "value (95% CI)"], rows)
    if m.get("locating"):
        loc = m["locating"]
        L += ["## COVID-infectious slice locating (COVID-19 cases with lesion masks)", ""]
        L += _table(
            ["figure", "value (95% CI)"],
            [
                [
                    "cases / slices / infected slices",
                    f"{loc['n_cases']} / {loc['n_slices']} / {loc['n_infected_slices']}",
                ],
                ["AUC", fmt(loc["auc"])],
                [f"sensitivity at {loc['threshold']}", fmt(loc["sensitivity"])],
                [f"specificity at {loc['threshold']}", fmt(loc["specificity"])],
            ],
        )
    return L


def _subsets_section(m: Mapping[str, Any]) -> list[str]:
    if not m.get("subsets"):
        return []
    L = ["## Subsets", ""]
    for key, groups in m["subsets"].items():
        L += [f"### By {key.replace('_', ' ')}", ""]
        rows = []
        for value, b in groups.items():
            rows.append(
                [
                    value,
                    b["n_cases"],
                    *(fmt(b["per_class_auc"][c], 3) for c in b["per_class_auc"]),
                    fmt(b["multiway_auc"]["micro"], 3),
                    fmt(b["accuracy"], 3),
                ]
            )
        classes = list(next(iter(groups.values()))["per_class_auc"])
        L += _table([key, "cases", *(f"AUC {c}" for c in classes), "micro AUC", "accuracy"], rows)
    return L


def _readers_section(m: Mapping[str, Any]) -> list[str]:
    readers = m.get("readers")
    if not readers:
        return []
    L = [
        "## Reader comparison",
        "",
        f"Task: `{readers['task']}` on {readers['n_cases']} cases read; sensitivity and specificity "
        f"for {readers['positive_class']}. The AI's call is "
        + (
            "the multi-way label."
            if readers["task"] == "multi_way"
            else f"the `{readers['task']}` score at the decision threshold."
        ),
        "",
    ]
    rows = []
    for r in readers["rows"]:
        rows.append(
            [r["name"], r["n_cases"], r["correct"], r["wrong"], fmt(r.get("sensitivity")), fmt(r.get("specificity"))]
        )
    L += _table(["reader", "cases", "correct", "wrong", "sensitivity", "specificity"], rows)
    L += [
        '"any reader": a case counts as correct when at least one reader was right; '
        '"all readers": only when every reader who read it was right. (The paper\'s Table 3 '
        'labels these columns the other way round: its "Any reader" is wrong if anyone is '
        "wrong.)",
        "",
    ]
    if readers.get("unmatched_case_ids"):
        L += [
            f"Readers' case ids not among the evaluated cases (left out): {', '.join(readers['unmatched_case_ids'])}",
            "",
        ]
    return L


def _plots_section(m: Mapping[str, Any]) -> list[str]:
    plots = m.get("plots") or {}
    if not plots:
        return []
    L = ["## Plots", ""]
    for key, fname in plots.items():
        title = PLOT_TITLES.get(key) or key.replace("_", " ").replace("decision curve", "Decision curve:")
        L += [f"### {title}", "", f"![{title}]({fname})", ""]
    return L


def _skipped_section(m: Mapping[str, Any]) -> list[str]:
    skipped = m.get("bootstrap", {}).get("skipped_resamples") or {}
    if not skipped:
        return []
    return [
        "## Bootstrap resamples skipped",
        "",
        "Resamples on which a figure was undefined (a class absent) are left out of its interval:",
        "",
    ] + _table(["figure", "skipped"], [[k, v] for k, v in skipped.items()])
