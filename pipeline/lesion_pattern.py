"""The lesion pattern: where the U-Net's lesions lie and how dense they are, and the
pneumonia type they point to. Pure numpy / scipy (the fit uses scikit-learn).

The slice classifier reads texture and learns whatever separates its training phantoms,
including the look of one generator; a phantom of another generator, or a patient, then
gets a confident wrong type (issue 8: 0 of 32 right across phantom families). The
radiological description of the three pneumonias is about pattern, not texture (METHOD.md
and the literature the phantoms follow): COVID-19 is bilateral, peripheral, subpleural,
lower and dorsal, mostly ground glass; CAP is lobar or segmental consolidation, often one
lung, one large focus; influenza is peribronchovascular (deep in the lung), many small
patches and nodules. Those are measured here from the lesion map as a few named numbers,
and a small multinomial logistic model (stored in the model card, fitted by
``dicomnode train lesion-pattern`` on the U-Net's own lesion maps of training phantoms of
both families) turns them into class probabilities. A dozen numbers with a meaning carry
less of a generator's look than a CNN's thousands of texture features: on held-out
phantoms of a family whose lesion maps it never saw, the type is right far more often
(model card, "lesion pattern").

Features (``FEATURE_NAMES``), each with the reason it is there:

- ``log_lesion_share``: log10 of the lesion share of the lung (+1e-4): burden;
- ``bilateral_share``: lesion in the less involved lung over all lesion (0: one lung);
- ``mean_depth``, ``subpleural_share``: in-plane depth of lesion voxels from the lung's
  edge, relative to the deepest point of that lung slice (0: at the pleura, 1: the core),
  and the share below 0.25 (peripheral against peribronchovascular);
- ``median_hu``, ``consolidation_share`` (HU > -300), ``hu_spread`` (standard deviation):
  ground glass against consolidation;
- ``log_focus_count`` (foci above ``MIN_FOCUS_MM3``) and ``largest_focus_share``: one
  lobar focus against many patches;
- ``craniocaudal_position`` (0 apex, 1 base) and ``dorsal_position`` (0 front, 1 back):
  lower and dorsal predominance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from .types import CLASS_NAMES, CTVolume, InvalidInputError, LungMask

FEATURE_NAMES: tuple[str, ...] = (
    "log_lesion_share",
    "bilateral_share",
    "mean_depth",
    "subpleural_share",
    "median_hu",
    "consolidation_share",
    "hu_spread",
    "log_focus_count",
    "largest_focus_share",
    "craniocaudal_position",
    "dorsal_position",
)
#: Fewer lesion voxels than this: no pattern to measure, the "no lesion" values below.
MIN_LESION_VOXELS = 10
MIN_FOCUS_MM3 = 20.0
SUBPLEURAL_DEPTH = 0.25
CONSOLIDATION_HU = -300.0
#: A lung without lesions: what an empty map measures (neutral positions, lung HU).
NO_LESION = {
    "bilateral_share": 0.0,
    "mean_depth": 0.5,
    "subpleural_share": 0.0,
    "median_hu": -850.0,
    "consolidation_share": 0.0,
    "hu_spread": 0.0,
    "log_focus_count": 0.0,
    "largest_focus_share": 1.0,
    "craniocaudal_position": 0.5,
    "dorsal_position": 0.5,
}


#: The depth and focus features are measured on a grid of at most this many pixels a
#: side (every k-th pixel): distance transforms and labelling of a 512 x 512 x 300 CT at
#: full size cost seconds and a gigabyte for numbers that do not need it.
PATTERN_GRID_PX = 128


def _span(profile: np.ndarray) -> tuple[float, float]:
    idx = np.flatnonzero(profile)
    return float(idx[0]), float(idx[-1])


def lesion_pattern_features(volume: CTVolume, lung: LungMask) -> dict[str, float] | None:
    """The named features of ``lung.lesion`` (FEATURE_NAMES order); None without a lesion map."""
    if lung.lesion is None:
        return None
    mask, lesion = lung.mask, lung.lesion
    n = int(np.count_nonzero(lesion))
    lung_voxels = int(np.count_nonzero(mask))
    out = {"log_lesion_share": math.log10(n / max(lung_voxels, 1) + 1e-4)}
    if n < MIN_LESION_VOXELS:
        out.update(NO_LESION)
        return {k: float(out[k]) for k in FEATURE_NAMES}
    hu = volume.hu[lesion].astype(np.float64)
    out["median_hu"] = float(np.median(hu))
    out["consolidation_share"] = float(np.mean(hu > CONSOLIDATION_HU))
    out["hu_spread"] = float(hu.std())
    # Positions from projections, not voxel lists: the lung of a 512-pixel CT has tens of
    # millions of voxels.
    lesion_z = np.count_nonzero(lesion, axis=(1, 2)).astype(np.float64)
    lesion_y = np.count_nonzero(lesion, axis=(0, 2)).astype(np.float64)
    lesion_x = np.count_nonzero(lesion, axis=(0, 1)).astype(np.float64)
    lung_x = np.count_nonzero(mask, axis=(0, 1)).astype(np.float64)
    centre_x = float((lung_x * np.arange(lung_x.size)).sum() / max(lung_x.sum(), 1.0))
    # The lungs are told apart by the lung mask's centre: robust to lungs that touch.
    on_left = float(lesion_x[: int(math.ceil(centre_x))].sum())
    out["bilateral_share"] = min(on_left, n - on_left) / n
    z_lo, z_hi = _span(np.asarray(mask.any(axis=(1, 2))))
    y_lo, y_hi = _span(np.asarray(mask.any(axis=(0, 2))))
    cc = (lesion_z * (np.arange(lesion_z.size) - z_lo) / max(z_hi - z_lo, 1.0)).sum() / n
    superior_up = float(volume.direction[8]) >= 0.0  # z index grows to the head: the base is at 0
    out["craniocaudal_position"] = float(1.0 - cc if superior_up else cc)
    out["dorsal_position"] = float((lesion_y * (np.arange(lesion_y.size) - y_lo) / max(y_hi - y_lo, 1.0)).sum() / n)
    # Depth and foci on the reduced grid (PATTERN_GRID_PX), in millimetres.
    k = max(1, int(math.ceil(max(mask.shape[1:]) / PATTERN_GRID_PX)))
    small_mask, small_lesion = mask[:, ::k, ::k], lesion[:, ::k, ::k]
    spacing = (float(volume.spacing_mm[0]), float(volume.spacing_mm[1]) * k, float(volume.spacing_mm[2]) * k)
    depths = []
    for z in np.flatnonzero(small_lesion.any(axis=(1, 2))):
        d = ndimage.distance_transform_edt(small_mask[z], sampling=spacing[1:])
        depths.append(d[small_lesion[z]] / max(float(d.max()), 1e-6))
    if depths:
        depth = np.concatenate(depths)
        out["mean_depth"] = float(depth.mean())
        out["subpleural_share"] = float(np.mean(depth < SUBPLEURAL_DEPTH))
    else:  # lesions too thin for the grid: as a lung without lesions
        out["mean_depth"], out["subpleural_share"] = NO_LESION["mean_depth"], NO_LESION["subpleural_share"]
    labels, count = ndimage.label(small_lesion)
    sizes = np.bincount(labels.ravel())[1:] * float(np.prod(spacing))
    out["log_focus_count"] = math.log1p(int(np.count_nonzero(sizes >= MIN_FOCUS_MM3)))
    out["largest_focus_share"] = float(sizes.max() / sizes.sum()) if count else 1.0
    return {k_: float(out[k_]) for k_ in FEATURE_NAMES}


@dataclass(frozen=True)
class LesionPatternModel:
    """Multinomial logistic regression on standardised features: p = softmax(W z + b),
    z = (x - mean) / scale. Kept in the model card (``lesion_pattern``)."""

    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (classes, features)
    intercept: np.ndarray  # (classes,)
    training: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        f, c = len(self.feature_names), len(self.classes)
        if not set(self.classes) <= set(CLASS_NAMES) or len(set(self.classes)) != c or c < 2:
            raise InvalidInputError(
                f"lesion pattern classes must be distinct names of {CLASS_NAMES}, got {self.classes}"
            )
        unknown = set(self.feature_names) - set(FEATURE_NAMES)
        if unknown:
            raise InvalidInputError(f"lesion pattern features unknown: {sorted(unknown)}")
        shapes = {"mean": (f,), "scale": (f,), "coef": (c, f), "intercept": (c,)}
        for name, shape in shapes.items():
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.shape != shape or not np.all(np.isfinite(a)):
                raise InvalidInputError(f"lesion pattern {name} must be a finite array of shape {shape}")
        if np.any(self.scale <= 0):
            raise InvalidInputError("lesion pattern scale must be positive")

    def probabilities(self, features: Mapping[str, float]) -> dict[str, float]:
        """Class name -> probability (sums to 1) for one case's features."""
        x = np.array([float(features[k]) for k in self.feature_names])
        logits = self.coef @ ((x - self.mean) / self.scale) + self.intercept
        e = np.exp(logits - logits.max())
        p = e / e.sum()
        return {c: float(v) for c, v in zip(self.classes, p, strict=True)}

    def as_card(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names),
            "classes": list(self.classes),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
            "training": dict(self.training or {}),
        }

    @classmethod
    def from_card(cls, entry: Mapping[str, Any]) -> "LesionPatternModel":
        try:
            return cls(
                feature_names=tuple(entry["feature_names"]),
                classes=tuple(entry["classes"]),
                mean=np.asarray(entry["mean"], dtype=np.float64),
                scale=np.asarray(entry["scale"], dtype=np.float64),
                coef=np.asarray(entry["coef"], dtype=np.float64),
                intercept=np.asarray(entry["intercept"], dtype=np.float64),
                training=entry.get("training"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidInputError(f"lesion pattern model in the card is incomplete: {e}") from e


def fit_lesion_pattern(
    features: Sequence[Mapping[str, float]],
    labels: Sequence[str],
    c: float = 0.3,
    training: Mapping[str, Any] | None = None,
) -> LesionPatternModel:
    """Fit the model (L2-regularised, inverse strength ``c``, balanced class weights)."""
    from sklearn.linear_model import LogisticRegression

    if len(features) != len(labels) or not features:
        raise InvalidInputError(
            f"lesion pattern fit needs one label per case, got {len(features)} cases and {len(labels)} labels"
        )
    classes = tuple(c_ for c_ in CLASS_NAMES if c_ in set(labels))
    if len(classes) < 2:
        raise InvalidInputError(f"lesion pattern fit needs cases of at least two classes, got {classes}")
    x = np.array([[float(f[k]) for k in FEATURE_NAMES] for f in features])
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    y = np.array([classes.index(label) for label in labels])
    lr = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit((x - mean) / scale, y)
    coef, intercept = lr.coef_, lr.intercept_
    if len(classes) == 2:  # scikit-learn keeps one row for two classes: make it softmax-shaped
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    return LesionPatternModel(
        feature_names=FEATURE_NAMES,
        classes=classes,
        mean=mean,
        scale=scale,
        coef=np.asarray(coef, dtype=np.float64),
        intercept=np.asarray(intercept, dtype=np.float64),
        training=training,
    )
