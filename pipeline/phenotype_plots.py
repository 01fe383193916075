"""PNG plots of the phenotype study (matplotlib, Agg backend), each from plain arrays.

* ``plot_cluster_heatmap``: the selected features of a comparison's cases, each feature
  standardised (z-score, clipped at +-3), rows (cases) and columns (features) ordered by
  average-linkage hierarchical clustering (scipy) on Euclidean distance, the case
  dendrogram on the left and a strip with each case's class beside it (the paper's
  Supplementary Figs. 7-8: do the selected features put the classes in separate
  clusters?).
* ``plot_shape_features``: the distribution per class of the three shape features
  (distance to the pleura, 2-D contour and 3-D grey-level fractal dimensions; the
  paper's Supplementary Fig. 9).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from scipy.cluster import hierarchy  # noqa: E402

from .phenotype_stats import standardised_imputed  # noqa: E402

DPI = 100
#: z-scores beyond this are drawn at this colour: one outlier would wash out the map.
Z_CLIP = 3.0
#: One colour per pneumonia class, the same in every plot.
CLASS_COLOURS = {"cap": "#1b9e77", "influenza": "#7570b3", "covid19": "#d95f02"}
SHAPE_FEATURES = (
    ("pleura_distance_mm", "distance to the pleura (mm)"),
    ("fractal_dimension_2d", "2-D contour fractal dimension"),
    ("fractal_dimension_3d_grey", "3-D grey-level fractal dimension"),
)


def _save(fig: plt.Figure, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)


def cluster_order(values: np.ndarray) -> np.ndarray:
    """Leaf order of average-linkage clustering of the rows (identity for < 3 rows)."""
    if len(values) < 3:
        return np.arange(len(values))
    return np.asarray(hierarchy.leaves_list(hierarchy.linkage(values, method="average")), dtype=np.int64)


def plot_cluster_heatmap(
    values: np.ndarray,
    labels: Sequence[str],
    feature_names: Sequence[str],
    path: Path,
    title: str,
) -> None:
    """Clustered heat map of ``values`` (cases x features, NaN imputed by the median)."""
    z = np.clip(standardised_imputed(values), -Z_CLIP, Z_CLIP)
    fig = plt.figure(figsize=(8.0, 7.0))
    if z.size == 0:
        fig.text(0.5, 0.5, "LASSO selected no feature for this comparison", ha="center", va="center")
        fig.suptitle(title, fontsize=10)
        _save(fig, path)
        return
    grid = fig.add_gridspec(1, 4, width_ratios=(1.2, 0.25, 8.0, 0.3), wspace=0.03, left=0.03, right=0.93, top=0.9)
    grid.update(bottom=0.45)  # room for the feature names below
    tree_ax, strip_ax, map_ax, bar_ax = (fig.add_subplot(grid[0, i]) for i in range(4))
    rows = np.arange(len(z))
    if len(z) >= 3:
        tree = hierarchy.dendrogram(
            hierarchy.linkage(z, method="average"), orientation="left", ax=tree_ax, no_labels=True, color_threshold=0
        )
        rows = np.asarray(tree["leaves"], dtype=np.int64)[::-1]  # the dendrogram draws bottom-up
    tree_ax.axis("off")
    columns = cluster_order(z.T)
    classes = sorted(set(labels), key=list(CLASS_COLOURS).index)
    strip = np.array([[classes.index(labels[int(i)])] for i in rows])
    strip_ax.imshow(strip, aspect="auto", cmap=ListedColormap([CLASS_COLOURS[c] for c in classes]))
    strip_ax.set_xticks([])
    strip_ax.set_yticks([])
    image = map_ax.imshow(z[np.ix_(rows, columns)], aspect="auto", cmap="coolwarm", vmin=-Z_CLIP, vmax=Z_CLIP)
    map_ax.set_yticks([])
    map_ax.set_xticks(range(len(columns)))
    map_ax.set_xticklabels([feature_names[int(j)] for j in columns], rotation=90, fontsize=7)
    fig.colorbar(image, cax=bar_ax, label="z-score")
    handles = [plt.Rectangle((0, 0), 1, 1, color=CLASS_COLOURS[c]) for c in classes]
    fig.legend(handles, classes, loc="upper left", ncol=len(classes), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10, x=0.55)
    _save(fig, path)


def plot_shape_features(values: Sequence[np.ndarray], labels: Sequence[str], path: Path, title: str) -> None:
    """Box plots with the cases as points, per class, of each shape feature;
    ``values[k]`` holds SHAPE_FEATURES[k] per case (NaN: not measured)."""
    classes = [c for c in CLASS_COLOURS if c in set(labels)]
    fig, axes = plt.subplots(1, len(SHAPE_FEATURES), figsize=(10.0, 3.8))
    rng = np.random.default_rng(0)  # jitter of the points only
    label_array = np.asarray(labels)
    for ax, column, (_, caption) in zip(axes, values, SHAPE_FEATURES, strict=True):
        per_class = [column[(label_array == c) & np.isfinite(column)] for c in classes]
        ax.boxplot(per_class, showfliers=False)
        ax.set_xticks(range(1, len(classes) + 1), classes, fontsize=8)
        for k, (cls, v) in enumerate(zip(classes, per_class, strict=True), start=1):
            ax.scatter(k + rng.uniform(-0.15, 0.15, v.size), v, s=10, color=CLASS_COLOURS[cls], alpha=0.8)
        ax.set_title(caption, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
