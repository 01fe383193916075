"""Validation figures computed after every epoch (plain numpy in, floats out).

A figure that is undefined on the validation set (an AUC without both classes) is NaN,
written as ``null`` in the logs, rather than an error: tiny sets in tests hit that.
"""

from __future__ import annotations

import numpy as np

from ..fusion import multiway
from ..metrics import dice, roc_auc
from ..types import CLASS_NAMES

#: The figure shown in the progress bar and used as "the" validation metric per role.
MONITOR = {"classifier": "val_case_macro_auc", "locator": "val_auc", "segmentation": "val_dice"}


def macroroc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes; NaN unless every class is present."""
    labels = np.asarray(labels)
    aucs = [roc_auc(labels == c, probs[:, c]) for c in range(probs.shape[1])]
    return float(np.mean(aucs)) if all(np.isfinite(aucs)) else float("nan")


def case_probabilities(probs: np.ndarray, case_index: np.ndarray, n_cases: int, top_k: int) -> np.ndarray:
    """Case-level multi-way probabilities by the chain's own fusion (``pipeline.fusion``),
    so the validation figure measures what inference will report. Cases without
    slices get NaN."""
    out = np.full((n_cases, probs.shape[1]), np.nan)
    for i in range(n_cases):
        p = probs[case_index == i]
        if len(p):
            out[i] = multiway(p, min(top_k, len(p)))
    return out


def classifier_metrics(
    labels: np.ndarray, probs: np.ndarray, case_index: np.ndarray, case_labels: np.ndarray, top_k: int
) -> dict[str, float]:
    """Slice-level and case-level (fused) figures of the 4-class slice classifier."""
    out = {
        "val_slice_accuracy": float(np.mean(probs.argmax(1) == labels)) if len(labels) else float("nan"),
        "val_slice_macro_auc": macroroc_auc(labels, probs),
    }
    cases = case_probabilities(probs, case_index, len(case_labels), top_k)
    ok = np.all(np.isfinite(cases), axis=1)
    out["val_case_macro_auc"] = macroroc_auc(case_labels[ok], cases[ok])
    out["val_case_accuracy"] = float(np.mean(cases[ok].argmax(1) == case_labels[ok])) if ok.any() else float("nan")
    for c, name in enumerate(CLASS_NAMES):
        out[f"val_case_auc_{name}"] = roc_auc(case_labels[ok] == c, cases[ok][:, c])
    return out


def locator_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Slice AUC, sensitivity and specificity at 0.5 of the infected-slice locator."""
    pred = probs[:, 1] >= 0.5
    pos, neg = labels == 1, labels == 0
    return {
        "val_auc": roc_auc(labels, probs[:, 1]),
        "val_sensitivity": float(np.mean(pred[pos])) if pos.any() else float("nan"),
        "val_specificity": float(np.mean(~pred[neg])) if neg.any() else float("nan"),
    }


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice over all validation pixels at the U-Net's input size."""
    return {"val_dice": dice(pred, truth)}
