"""PNG plots of an evaluation (matplotlib, Agg backend: no display needed).

Each function takes plain arrays and a path, draws one figure and closes it, so a long
evaluation does not accumulate open figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)
import numpy as np  # noqa: E402

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
    ax.text(0.5, 0.5, f"no {what}: a class is missing from these cases",
            ha="center", va="center", transform=ax.transAxes, fontsize=9)


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: Path, title: str,
             points: Sequence[tuple[str, float, float]] = ()) -> None:
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
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="1 - specificity (false positive rate)",
           ylabel="sensitivity (true positive rate)", title=title)
    if curves or points:
        ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_pr(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float, float]], path: Path, title: str) -> None:
    """Precision-recall curves {name: (recall, precision, prevalence, average precision)},
    recall increasing; the prevalence is the precision of a random ranking (dotted)."""
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    for name, (recall, precision, prevalence, ap) in curves.items():
        # precision[k] holds for recalls in (recall[k-1], recall[k]]: a "pre" step
        line, = ax.step(recall, precision, where="pre", lw=1.6, label=f"{name} (AP {ap:.3f})")
        ax.axhline(prevalence, color=line.get_color(), lw=0.7, ls=":")
    if not curves:
        _no_data(ax, "precision-recall curve")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="recall (sensitivity)", ylabel="precision", title=title)
    if curves:
        ax.legend(loc="lower left", fontsize=8)
    _save(fig, path)


def plot_confusion(counts: np.ndarray, labels: Sequence[str], path: Path) -> None:
    """Confusion matrix (rows truth, columns prediction) with the counts written in."""
    counts = np.asarray(counts)
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    im = ax.imshow(counts, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    top = counts.max() if counts.size else 0
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center",
                    color="white" if top and counts[i, j] > top / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="truth", title="Confusion matrix (multi-way label)")
    _save(fig, path)


def plot_decision_curve(thresholds: np.ndarray, model: np.ndarray, treat_all: np.ndarray, path: Path,
                        title: str) -> None:
    """Net benefit against threshold probability: the model, treat-all and treat-none."""
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    ax.plot(thresholds, model, lw=1.8, label="AI model")
    ax.plot(thresholds, treat_all, lw=1.0, color="grey", label="treat all")
    ax.plot(thresholds, np.zeros_like(thresholds), lw=1.0, color="black", ls="--", label="treat none")
    finite = np.concatenate([model[np.isfinite(model)], [0.0]])
    top = max(float(finite.max()), float(np.nanmax(treat_all[:1])) if treat_all.size else 0.0, 0.05)
    ax.set(xlim=(0, 1), ylim=(-0.05 - 0.1 * top, top * 1.15), xlabel="threshold probability",
           ylabel="net benefit", title=title)
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
