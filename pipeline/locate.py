"""COVID-infectious slice locating (METHOD.md, module 4).

The locator is a 2-class network shaped like the slice classifier (class 1 = slice with
lesions). Every lung slice is scored (no sampling: the point is to find the slices), the
scores are median-filtered along z over the scored slices (``locator_median_width``;
isolated spikes and gaps of one slice are smoothed out, as in the paper code), and the
slices at or above ``locator_threshold`` are reported. Slices that were not scored (too
little lung) have NaN scores and are never reported. When the U-Net made a lesion map,
a reported slice must also hold a lesion (``lesion_slice_min_mm2`` of it): two networks
agree, so a healthy CT does not come back with a list of "infectious" slices.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from .classify import predict
from .params import ChainParams
from .preprocess import classifier_batch
from .types import CTVolume, InfectedSlices, InvalidInputError, LungMask


def smooth_scores(scores: np.ndarray, width: int) -> np.ndarray:
    """Median filter of ``width`` along a 1-D score sequence (the end values are repeated past the edges)."""
    s = np.asarray(scores, dtype=np.float64)
    if width <= 1 or len(s) < 2:
        return s.copy()
    return ndimage.median_filter(s, size=int(width), mode="nearest")


def infected_from_scores(
    raw: np.ndarray,
    z_indices: Sequence[int] | np.ndarray,
    n_slices: int,
    params: ChainParams,
    lesion_slices: np.ndarray | None = None,
) -> InfectedSlices:
    """InfectedSlices from raw locator probabilities of the scored slices ``z_indices``;
    ``lesion_slices`` (bool per z slice), when given, is required of a reported slice."""
    z = np.asarray(z_indices, dtype=np.int64)
    raw = np.asarray(raw, dtype=np.float64)
    if raw.shape != z.shape:
        raise InvalidInputError(f"{len(raw)} locator scores for {len(z)} slices")
    scores = np.full(int(n_slices), np.nan, dtype=np.float64)
    if len(z):
        scores[z] = smooth_scores(raw, params.locator_median_width)
    if lesion_slices is not None and len(lesion_slices) != int(n_slices):
        raise InvalidInputError(f"{len(lesion_slices)} lesion flags for {n_slices} slices")
    flagged = z[scores[z] >= params.locator_threshold] if len(z) else z
    if lesion_slices is not None:
        flagged = flagged[np.asarray(lesion_slices, dtype=bool)[flagged]]
    hits = tuple(int(i) for i in flagged)
    return InfectedSlices(scores=scores, z_indices=hits, threshold=float(params.locator_threshold))


def locate_infected(
    volume: CTVolume,
    lung_mask: LungMask,
    z_indices: Sequence[int] | np.ndarray,
    locator: torch.nn.Module,
    params: ChainParams,
    device: torch.device | str = "cpu",
    lesion_slices: np.ndarray | None = None,
) -> InfectedSlices:
    """Score the lung slices ``z_indices`` with the locator and pick the infected ones.

    Inputs are prepared chunk by chunk so that a 300-slice case never holds all of its
    224 x 224 x 3 crops at once.
    """
    z = np.asarray(sorted({int(i) for i in z_indices}), dtype=np.int64)
    raw = np.empty(len(z), dtype=np.float64)
    chunk = max(1, int(params.batch_size)) * 4
    for start in range(0, len(z), chunk):
        part = z[start : start + chunk]
        probs, _ = predict(locator, classifier_batch(volume, lung_mask, part, params), device, params.batch_size)
        if probs.shape[1] != 2:
            raise InvalidInputError(
                f"the locator has {probs.shape[1]} outputs; it needs 2 (normal, infected): check the bundle"
            )
        raw[start : start + len(part)] = probs[:, 1]
    return infected_from_scores(raw, z, volume.shape[0], params, lesion_slices)
