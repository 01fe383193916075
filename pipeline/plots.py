"""PNG plots of an evaluation (matplotlib, Agg backend: no display needed).

Each ``plot_*`` function takes plain arrays and a path, draws one figure and closes it, so
a long evaluation does not accumulate open figures. ``make_plots`` draws an evaluation's
whole set from its case records and metrics (pipeline.figures.EvaluationMetrics;
pipeline.evaluate calls it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)
import numpy as np  # noqa: E402

from . import metrics as M  # noqa: E402
from .params import EvalParams  # noqa: E402
from .types import CLASS_NAMES, TASK_NAMES  # noqa: E402

if TYPE_CHECKING:
    from .evaluate import CaseRecord
    from .figures import EvaluationMetrics, ReaderComparison

#: ROC curves by name: (false positive rates, true positive rates, AUC).
Curves = dict[str, tuple[np.ndarray, np.ndarray, float]]

#: Figure size (inches) and resolution of every plot.
FIG_SIZE = (6.0, 5.0)
DPI = 110


def _save(fig: plt.Figure, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)


def _no_data(ax: plt.Axes, what: str) -> None:
    ax.text(
        0.5,
        0.5,
        f"no {what}: a class is missing from these cases",
        ha="center",
        va="center",
        transform=ax.transAxes,
        fontsize=9,
    )


def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
    path: Path,
    title: str,
    points: Sequence[tuple[str, float, float]] = (),
) -> None:
    """ROC curves {name: (fpr, tpr, auc)}, plus operating points (name, 1-spec, sens)
    such as the readers' of the reader study."""
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    for name, (fpr, tpr, auc) in curves.items():
        label = f"{name} (AUC {auc:.3f})" if np.isfinite(auc) else name
        ax.plot(fpr, tpr, lw=1.6, label=label, drawstyle="default")
    markers = "os^Dvp*hX"
    for k, (name, x, y) in enumerate(points):
        ax.plot([x], [y], linestyle="none", marker=markers[k % len(markers)], markersize=7, label=name)
    if not curves and not points:
        _no_data(ax, "ROC curve")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        title=title,
    )
    if curves or points:
        ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_pr(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float, float]], path: Path, title: str) -> None:
    """Precision-recall curves {name: (recall, precision, prevalence, average precision)},
    recall increasing; the prevalence is the precision of a random ranking (dotted)."""
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    for name, (recall, precision, prevalence, ap) in curves.items():
        # precision[k] holds for recalls in (recall[k-1], recall[k]]: a "pre" step
        (line,) = ax.step(recall, precision, where="pre", lw=1.6, label=f"{name} (AP {ap:.3f})")
        ax.axhline(prevalence, color=line.get_color(), lw=0.7, ls=":")
    if not curves:
        _no_data(ax, "precision-recall curve")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="recall (sensitivity)", ylabel="precision", title=title)
    if curves:
        ax.legend(loc="lower left", fontsize=8)
    _save(fig, path)


def plot_confusion(
    counts: np.ndarray, labels: Sequence[str], path: Path, title: str = "Confusion matrix (multi-way label)"
) -> None:
    """Confusion matrix (rows truth, columns prediction) with the counts written in."""
    counts = np.asarray(counts)
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    im = ax.imshow(counts, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    top = counts.max() if counts.size else 0
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(
                j,
                i,
                str(int(counts[i, j])),
                ha="center",
                va="center",
                color="white" if top and counts[i, j] > top / 2 else "black",
            )
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="truth", title=title)
    _save(fig, path)


def plot_bland_altman(
    truth: np.ndarray, measured: np.ndarray, path: Path, title: str, unit: str = "percentage points"
) -> None:
    """Bland-Altman plot: each case's difference (measured - truth) against the mean of
    the two, with the bias and the 95% limits of agreement drawn and labelled."""
    truth, measured = np.asarray(truth, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    mean, diff = (truth + measured) / 2.0, measured - truth
    ax.scatter(mean, diff, s=18, alpha=0.75, color="tab:blue")
    bias, low, high = M.bland_altman(truth, measured)
    if np.isfinite(bias):
        for y, name, style in ((bias, "bias", "-"), (low, "-1.96 SD", "--"), (high, "+1.96 SD", "--")):
            ax.axhline(y, color="tab:red", linestyle=style, linewidth=1)
            ax.annotate(
                f"{name} {y:+.2f}",
                xy=(1.0, y),
                xycoords=("axes fraction", "data"),
                ha="right",
                va="bottom",
                fontsize=8,
                color="tab:red",
            )
    else:
        _no_data(ax, "limits of agreement (fewer than two cases)")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set(xlabel=f"mean of measured and truth ({unit})", ylabel=f"measured - truth ({unit})", title=title)
    _save(fig, path)


def plot_decision_curve(
    thresholds: np.ndarray, model: np.ndarray, treat_all: np.ndarray, path: Path, title: str
) -> None:
    """Net benefit against threshold probability: the model, treat-all and treat-none."""
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    ax.plot(thresholds, model, lw=1.8, label="AI model")
    ax.plot(thresholds, treat_all, lw=1.0, color="grey", label="treat all")
    ax.plot(thresholds, np.zeros_like(thresholds), lw=1.0, color="black", ls="--", label="treat none")
    finite = np.concatenate([model[np.isfinite(model)], [0.0]])
    top = max(float(finite.max()), float(np.nanmax(treat_all[:1])) if treat_all.size else 0.0, 0.05)
    ax.set(
        xlim=(0, 1),
        ylim=(-0.05 - 0.1 * top, top * 1.15),
        xlabel="threshold probability",
        ylabel="net benefit",
        title=title,
    )
    ax.legend(loc="upper right", fontsize=8)
    _save(fig, path)


def plot_tsne(embedding: np.ndarray, truth: Sequence[str], class_names: Sequence[str], path: Path) -> None:
    """t-SNE of the case features, one colour per true class."""
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    truth_a = np.asarray(truth, dtype=object)
    for name in class_names:
        sel = truth_a == name
        if sel.any():
            ax.scatter(embedding[sel, 0], embedding[sel, 1], s=18, label=f"{name} (n={int(sel.sum())})")
    ax.set(xlabel="t-SNE 1", ylabel="t-SNE 2", title="t-SNE of case features (max-pooled slice features)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8)
    _save(fig, path)


# -- an evaluation's set of plots ------------------------------------------------------------


def make_plots(
    records: Sequence[CaseRecord],
    metrics: EvaluationMetrics,
    out_dir: Path,
    eval_params: EvalParams = EvalParams(),
    threshold: float = 0.5,
) -> dict[str, str]:
    """Write every PNG plot; returns {what: file name} for the report."""
    from .evaluate import case_arrays

    labels, probs, tasks, predicted = case_arrays(records)
    onehot = M.one_hot(labels, len(CLASS_NAMES))
    files: dict[str, str] = {}
    files.update(_class_rocs(onehot, labels, probs, out_dir))
    files.update(_covid_rocs(records, metrics, onehot, probs, out_dir))
    files.update(_task_rocs(labels, tasks, out_dir))
    files.update(_precision_recall(onehot, probs, out_dir))
    cm = metrics.classes.confusion_matrix
    counts = np.array(cm.counts) if cm is not None else M.confusion_counts(labels, predicted, len(CLASS_NAMES))
    plot_confusion(counts, CLASS_NAMES, out_dir / "confusion_matrix.png")
    files["confusion_matrix"] = "confusion_matrix.png"
    files.update(_decision_curves(onehot, labels, probs, tasks, eval_params, out_dir))
    files.update(_tsne(records, eval_params, out_dir))
    files.update(_locating_roc(records, out_dir))
    files.update(_severity_plots(records, metrics, out_dir))
    return files


def _severity_plots(records: Sequence[CaseRecord], metrics: EvaluationMetrics, out_dir: Path) -> dict[str, str]:
    """Bland-Altman of the whole-lung involvement and the grade confusion matrix, when the
    evaluation measured them (evaluate._severity_figures)."""
    grade = metrics.severity.grade if metrics.severity is not None else None
    files: dict[str, str] = {}
    rows = [r for r in records if r.involvement_percent is not None and r.involvement_truth_percent is not None]
    if rows:
        plot_bland_altman(
            np.array([r.involvement_truth_percent for r in rows], dtype=np.float64),
            np.array([r.involvement_percent for r in rows], dtype=np.float64),
            out_dir / "bland_altman_involvement.png",
            f"Whole-lung involvement: chain vs truth ({len(rows)} cases)",
        )
        files["bland_altman_involvement"] = "bland_altman_involvement.png"
    if grade is not None and grade.confusion:
        counts = np.array(grade.confusion)
        labels = [f"CT-{k}" for k in range(counts.shape[0])]
        title = f"MosMedData grade: truth vs chain ({grade.n_cases} cases)"
        plot_confusion(counts, labels, out_dir / "grade_confusion.png", title)
        files["grade_confusion"] = "grade_confusion.png"
    return files


def _class_rocs(onehot: np.ndarray, labels: np.ndarray, probs: np.ndarray, out_dir: Path) -> dict[str, str]:
    curves: Curves = {}
    for i, c in enumerate(CLASS_NAMES):
        if 0 < onehot[:, i].sum() < len(labels):
            curves[c] = (*M.roc_curve_points(onehot[:, i], probs[:, i]), M.roc_auc(onehot[:, i], probs[:, i]))
    if 0 < onehot.sum() < onehot.size:
        curves["micro-average"] = (*M.roc_curve_points(onehot.ravel(), probs.ravel()), M.micro_auc(labels, probs))
    plot_roc(curves, out_dir / "roc.png", "ROC, one-vs-rest per class and micro-average")
    return {"roc": "roc.png"}


def _readers_points(readers: ReaderComparison | None) -> list[tuple[str, float, float]]:
    if not readers:
        return []
    pts = []
    for row in readers.rows:
        if row.name in ("AI", "any reader", "all readers") or row.sensitivity is None or row.specificity is None:
            continue
        sens, spec = row.sensitivity.value, row.specificity.value
        if sens is not None and spec is not None:
            pts.append((row.name, 1.0 - spec, sens))
    return pts


def _reader_cohort_curve(records: Sequence[CaseRecord], rc: ReaderComparison) -> Curves:
    """The AI's curve on the cases the readers read, for the task they read."""
    from .evaluate import is_positive

    by_id = {r.case_id: r for r in records}
    sub = [by_id[i] for i in rc.case_ids]
    task = rc.task
    y = np.array([is_positive(task, r.truth) for r in sub], bool)
    if task == "multi_way":
        s = np.array([r.probabilities[CLASS_NAMES.index("covid19")] for r in sub])
    else:
        s = np.array([r.tasks[TASK_NAMES.index(task)] for r in sub])
    if 0 < y.sum() < y.size:
        return {f"AI, reader cohort ({task})": (*M.roc_curve_points(y, s), M.roc_auc(y, s))}
    return {}


def _covid_rocs(
    records: Sequence[CaseRecord], metrics: EvaluationMetrics, onehot: np.ndarray, probs: np.ndarray, out_dir: Path
) -> dict[str, str]:
    """COVID-19 ROC, with the readers' operating points (Fig. 2f-h of the paper) and the
    AI's curve on the reader cohort, for the task the readers read."""
    files: dict[str, str] = {}
    ci = CLASS_NAMES.index("covid19")
    covid_curves: Curves = {}
    if 0 < onehot[:, ci].sum() < len(records):
        covid_curves["AI, all cases (p_covid19)"] = (
            *M.roc_curve_points(onehot[:, ci], probs[:, ci]),
            M.roc_auc(onehot[:, ci], probs[:, ci]),
        )
    rc = metrics.readers
    reader_curves, points = (_reader_cohort_curve(records, rc) if rc else {}), _readers_points(rc)
    if rc and rc.positive_class != "covid19":
        plot_roc(reader_curves, out_dir / "roc_readers.png", f"ROC with readers: {rc.task}", points=points)
        files["roc_readers"] = "roc_readers.png"
        reader_curves, points = {}, []
    plot_roc(
        {**covid_curves, **reader_curves},
        out_dir / "roc_covid19.png",
        "COVID-19 ROC" + (" with readers" if points else ""),
        points=points,
    )
    files["roc_covid19"] = "roc_covid19.png"
    return files


def _task_rocs(labels: np.ndarray, tasks: np.ndarray, out_dir: Path) -> dict[str, str]:
    from .evaluate import task_cohort

    task_curves: Curves = {}
    for t_i, task in enumerate(TASK_NAMES):
        idx, y = task_cohort(task, labels)
        if 0 < y.sum() < y.size:
            task_curves[task] = (*M.roc_curve_points(y, tasks[idx, t_i]), M.roc_auc(y, tasks[idx, t_i]))
    plot_roc(task_curves, out_dir / "roc_tasks.png", "ROC of the binary tasks (each on its cohort)")
    return {"roc_tasks": "roc_tasks.png"}


def _precision_recall(onehot: np.ndarray, probs: np.ndarray, out_dir: Path) -> dict[str, str]:
    pr = {}
    for i, c in enumerate(CLASS_NAMES):
        if onehot[:, i].any():
            rec, prec = M.pr_curve_points(onehot[:, i], probs[:, i])
            pr[c] = (rec, prec, float(onehot[:, i].mean()), M.average_precision(onehot[:, i], probs[:, i]))
    plot_pr(pr, out_dir / "pr.png", "Precision-recall, one-vs-rest per class")
    return {"pr": "pr.png"}


def _decision_curves(
    onehot: np.ndarray, labels: np.ndarray, probs: np.ndarray, tasks: np.ndarray, eval_params: EvalParams, out_dir: Path
) -> dict[str, str]:
    from .evaluate import task_cohort

    files: dict[str, str] = {}
    thr = np.array(eval_params.dca_thresholds, dtype=np.float64)
    ci = CLASS_NAMES.index("covid19")
    dca = {"covid19": (onehot[:, ci], probs[:, ci])}
    for t_i, task in enumerate(TASK_NAMES):
        idx, y = task_cohort(task, labels)
        if idx.size:
            dca[task] = (y, tasks[idx, t_i])
    for name, (y, s) in dca.items():
        fname = f"decision_curve_{name}.png"
        plot_decision_curve(
            thr,
            M.net_benefit(y, s, thr),
            M.net_benefit_treat_all(y, thr),
            out_dir / fname,
            f"Decision curve: {name} (n={len(y)})",
        )
        files[f"decision_curve_{name}"] = fname
    return files


def _tsne(records: Sequence[CaseRecord], eval_params: EvalParams, out_dir: Path) -> dict[str, str]:
    from .evaluate import given_arrays, tsne_embedding

    have = [r for r in records if r.features is not None]
    if len(have) != len(records):
        return {}
    features = np.stack(given_arrays((r.features for r in records), "t-SNE"))
    emb = tsne_embedding(features, eval_params.seed, eval_params.tsne_max_perplexity, eval_params.tsne_exact_max_cases)
    if emb is None:
        return {}
    plot_tsne(emb, [r.truth for r in records], CLASS_NAMES, out_dir / "tsne.png")
    return {"tsne": "tsne.png"}


def _locating_roc(records: Sequence[CaseRecord], out_dir: Path) -> dict[str, str]:
    from .evaluate import given_arrays

    loc = [r for r in records if r.slice_scores is not None and r.truth == "covid19" and r.slice_scores.size]
    if not loc:
        return {}
    y = np.concatenate(given_arrays((r.slice_truth for r in loc), "slice truth"))
    s = np.concatenate(given_arrays((r.slice_scores for r in loc), "slice scores"))
    if not 0 < y.sum() < y.size:
        return {}
    plot_roc(
        {"infected slices": (*M.roc_curve_points(y, s), M.roc_auc(y, s))},
        out_dir / "roc_locating.png",
        "COVID-infectious slice locating (COVID-19 cases)",
    )
    return {"roc_locating": "roc_locating.png"}
