"""Out-of-domain guard: how far a study lies from the data a bundle was trained on.

A phantom-trained bundle must not call a patient's CT "CAP 99%": where a study does not
look like its training data, the chain's decision is ``out_of_domain`` (pipeline.decision)
and the report says the model cannot assess it. Two kinds of evidence, each a distance
scaled by a threshold chosen on validation data (``score > 1``: out of domain):

* ``deep_features``: the slice classifier's penultimate features of the classified
  slices, Mahalanobis distance to the reference cohort's slice features (mean and a
  Ledoit-Wolf shrunk covariance), averaged over the case's slices: what the network
  itself has seen;
* image statistics of the lung (``image_statistics``): HU median and spread inside the
  lung mask, the noise (robust sd of the HU minus its 3x3 median inside the eroded lung),
  and the lung volume, each as a robust z-score against the reference cohort (median
  and MAD). Slice spacing is not a criterion: the networks work slice by slice, and a
  thin-slice scan is no reason to refuse a study.

The reference is fitted on one half of a calibration cohort drawn like the training data
(other seeds of the same generators and settings) and its thresholds are chosen on the
other half (``fit_domain_reference``): threshold = ``THRESHOLD_SLACK`` x the
``THRESHOLD_QUANTILE`` quantile of the held-out half's distances, at least
``MIN_Z_THRESHOLD`` for a z-score. It travels in the bundle as ``domain_reference.npz``
(pinned by sha256 in the model card). Pure numpy/scikit-learn, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from .types import CTVolume, DomainCheck, InvalidInputError, LungMask

#: Image statistics, in the order they are stored; each with what a reader is told.
IMAGE_STATS: dict[str, str] = {
    "lung_hu_median": "the lung's median density",
    "lung_hu_p10": "the lung's low-density tail (10th HU percentile)",
    "lung_hu_p90": "the lung's dense tail (90th HU percentile)",
    "noise_hu": "the image noise",
    "lung_volume_ml": "the lung volume",
}
FEATURES = "deep_features"
#: Thresholds: this quantile of the held-out calibration half's distances, times the slack.
THRESHOLD_QUANTILE = 0.99
THRESHOLD_SLACK = 1.25
#: A z-score threshold is never below this (a handful of calibration cases could make a
#: statistic's spread look tiny).
MIN_Z_THRESHOLD = 4.0
#: Scale floors of the robust z-scores (in the statistic's unit), for the same reason.
SCALE_FLOOR = {
    "lung_hu_median": 10.0,
    "lung_hu_p10": 10.0,
    "lung_hu_p90": 15.0,
    "noise_hu": 3.0,
    "lung_volume_ml": 250.0,
}
#: Lung voxels sampled for the HU statistics and slices for the noise (cheap on 512^3).
_MAX_LUNG_SAMPLES = 200_000
_NOISE_SLICES = 8


@dataclass(frozen=True)
class DomainReference:
    """What a bundle's training data looked like, and where "different" begins."""

    feature_mean: np.ndarray  # (f,)
    feature_precision: np.ndarray  # (f, f) inverse of the shrunk covariance
    stat_center: np.ndarray  # (len(IMAGE_STATS),) medians
    stat_scale: np.ndarray  # (len(IMAGE_STATS),) MAD-based scales
    thresholds: Mapping[str, float]  # component -> distance threshold
    n_cases: int

    def to_arrays(self) -> dict[str, np.ndarray]:
        names = sorted(self.thresholds)
        return {
            "feature_mean": self.feature_mean,
            "feature_precision": self.feature_precision,
            "stat_center": self.stat_center,
            "stat_scale": self.stat_scale,
            "threshold_names": np.asarray(names),
            "threshold_values": np.asarray([self.thresholds[n] for n in names], dtype=np.float64),
            "n_cases": np.asarray(self.n_cases),
            "stat_names": np.asarray(list(IMAGE_STATS)),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "DomainReference":
        stat_names = [str(s) for s in arrays["stat_names"]]
        if stat_names != list(IMAGE_STATS):
            raise InvalidInputError(
                f"domain reference has statistics {stat_names}, this code expects "
                f"{list(IMAGE_STATS)}: recalibrate the bundle"
            )
        return cls(
            feature_mean=np.asarray(arrays["feature_mean"], dtype=np.float64),
            feature_precision=np.asarray(arrays["feature_precision"], dtype=np.float64),
            stat_center=np.asarray(arrays["stat_center"], dtype=np.float64),
            stat_scale=np.asarray(arrays["stat_scale"], dtype=np.float64),
            thresholds={
                str(n): float(v) for n, v in zip(arrays["threshold_names"], arrays["threshold_values"], strict=True)
            },
            n_cases=int(arrays["n_cases"]),
        )


def image_statistics(volume: CTVolume, lung: LungMask) -> dict[str, float]:
    """The lung's image statistics (IMAGE_STATS) of one volume."""
    hu, mask = volume.hu, lung.mask
    n_lung = int(np.count_nonzero(mask))
    stats = {name: float("nan") for name in IMAGE_STATS}
    stats["lung_volume_ml"] = n_lung * volume.voxel_volume_ml
    if n_lung == 0:
        return stats
    values = hu[mask]
    if len(values) > _MAX_LUNG_SAMPLES:
        values = values[:: len(values) // _MAX_LUNG_SAMPLES + 1]
    p10, p50, p90 = np.percentile(values, (10, 50, 90))
    stats.update(lung_hu_median=float(p50), lung_hu_p10=float(p10), lung_hu_p90=float(p90))
    counts = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)
    order = np.argsort(-counts)[:_NOISE_SLICES]
    residuals = []
    for z in order:
        inner = ndimage.binary_erosion(mask[z], iterations=3)
        if inner.sum() < 50:
            continue
        residuals.append((hu[z] - ndimage.median_filter(hu[z], size=3))[inner])
    if residuals:
        r = np.concatenate(residuals)
        stats["noise_hu"] = float(1.4826 * np.median(np.abs(r - np.median(r))))
    return stats


def _stat_vector(stats: Mapping[str, float]) -> np.ndarray:
    return np.asarray([float(stats.get(name, np.nan)) for name in IMAGE_STATS], dtype=np.float64)


def feature_distance(features: np.ndarray, reference: DomainReference) -> float:
    """Mean Mahalanobis distance of a case's slice features to the reference."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != reference.feature_mean.shape[0]:
        raise InvalidInputError(
            f"slice features of shape {f.shape} do not match the domain reference's "
            f"{reference.feature_mean.shape[0]} features"
        )
    d = f - reference.feature_mean
    m = np.einsum("ij,jk,ik->i", d, reference.feature_precision, d)
    return float(np.mean(np.sqrt(np.maximum(m, 0.0))))


def stat_distances(stats: Mapping[str, float], reference: DomainReference) -> dict[str, float]:
    """|robust z-score| of each image statistic (NaN statistics count as 0: not measured)."""
    z = np.abs(_stat_vector(stats) - reference.stat_center) / reference.stat_scale
    return {name: (0.0 if not np.isfinite(v) else float(v)) for name, v in zip(IMAGE_STATS, z, strict=True)}


def raw_distances(
    features: np.ndarray | None, stats: Mapping[str, float], reference: DomainReference
) -> dict[str, float]:
    out = stat_distances(stats, reference)
    if features is not None:
        out[FEATURES] = feature_distance(features, reference)
    return out


def check_domain(
    features: np.ndarray | None, stats: Mapping[str, float], reference: DomainReference | None
) -> DomainCheck:
    """DomainCheck of one case: each distance over its threshold; the largest is the score."""
    if reference is None:
        return DomainCheck(
            score=0.0,
            in_domain=True,
            components={},
            reasons=("the model bundle carries no domain reference: not checked",),
            image_stats=dict(stats),
        )
    scaled = {
        name: d / reference.thresholds[name]
        for name, d in raw_distances(features, stats, reference).items()
        if name in reference.thresholds
    }
    score = max(scaled.values()) if scaled else 0.0
    reasons = tuple(_reason(name, stats) for name, v in sorted(scaled.items(), key=lambda kv: -kv[1]) if v > 1.0)
    return DomainCheck(
        score=float(score), in_domain=score <= 1.0, components=scaled, reasons=reasons, image_stats=dict(stats)
    )


def _reason(name: str, stats: Mapping[str, float]) -> str:
    if name == FEATURES:
        return "the lung's appearance to the classifier (deep features) is unlike its training data"
    value = stats.get(name)
    shown = f" ({value:.1f})" if value is not None and np.isfinite(value) else ""
    return f"{IMAGE_STATS[name]}{shown} lies outside the range of its training data"


def fit_domain_reference(
    fit_features: Sequence[np.ndarray],
    fit_stats: Sequence[Mapping[str, float]],
    held_features: Sequence[np.ndarray],
    held_stats: Sequence[Mapping[str, float]],
) -> DomainReference:
    """Fit the reference on one half of a calibration cohort, thresholds on the other.

    ``*_features``: per case, its classified slices' penultimate features (n_slices, f);
    ``*_stats``: per case, ``image_statistics``.
    """
    from sklearn.covariance import LedoitWolf

    if len(fit_features) < 2 or len(held_features) < 2:
        raise InvalidInputError("the domain reference needs at least 2 cases to fit and 2 to set thresholds")
    slices = np.concatenate([np.asarray(f, dtype=np.float64) for f in fit_features])
    lw = LedoitWolf().fit(slices)
    stat_rows = np.stack([_stat_vector(s) for s in fit_stats])
    center = np.nanmedian(stat_rows, axis=0)
    mad = 1.4826 * np.nanmedian(np.abs(stat_rows - center), axis=0)
    floors = np.asarray([SCALE_FLOOR[n] for n in IMAGE_STATS])
    scale = np.maximum(np.nan_to_num(mad, nan=0.0), floors)
    provisional = DomainReference(
        feature_mean=lw.location_,
        feature_precision=lw.precision_,
        stat_center=center,
        stat_scale=scale,
        thresholds={},
        n_cases=len(fit_features),
    )
    held = [raw_distances(f, s, provisional) for f, s in zip(held_features, held_stats, strict=True)]
    thresholds = {}
    for name in (*IMAGE_STATS, FEATURES):
        values = np.asarray([h[name] for h in held], dtype=np.float64)
        t = THRESHOLD_SLACK * float(np.quantile(values, THRESHOLD_QUANTILE))
        thresholds[name] = t if name == FEATURES else max(t, MIN_Z_THRESHOLD)
    return DomainReference(
        feature_mean=lw.location_,
        feature_precision=lw.precision_,
        stat_center=center,
        stat_scale=scale,
        thresholds=thresholds,
        n_cases=len(fit_features),
    )
