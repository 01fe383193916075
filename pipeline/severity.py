"""Severity: how much of the lung, and of each lobe, the lesions involve. Pure numpy.

Radiologists grade COVID-19 CT by the involved share of each lobe, scored 0-5 and summed
into the CT severity score (0-25), and MosMedData grades a scan CT-0..CT-4 by the
involved share of both lungs. This module turns a lung mask, a lesion mask and (when
there is one) a lobe label map into those quantities:

* involved share = lesion volume / volume (of the lobe, or of both lungs), in percent;
* lobe score: 0 none, 1 under 5%, 2 5-25%, 3 over 25-50%, 4 over 50-75%, 5 over 75%;
* CT severity score: the sum over the five lobes (only when all five were segmented:
  a partial sum would read as a milder case);
* MosMedData grade: CT-0 none, CT-1 under 25%, CT-2 25 to under 50%, CT-3 50 to under
  75%, CT-4 75% and over;
* ground glass against consolidation: lesion voxels below ``consolidation_hu`` are
  ground glass (vessels stay visible through it), the rest consolidation.

A lesion smaller than ``min_involved_ml`` in a lobe (or the lung) counts as none: one
stray voxel of a lesion map is not an involved lobe.
"""

from __future__ import annotations

import numpy as np

from .types import InvalidInputError, Involvement, Severity

#: Lobe labels of a lobe map (0 = not lung), in the order reports list them.
LOBES: tuple[str, ...] = ("right_upper", "right_middle", "right_lower", "left_upper", "left_lower")
LOBE_TITLES: dict[str, str] = {
    "right_upper": "Right upper lobe",
    "right_middle": "Right middle lobe",
    "right_lower": "Right lower lobe",
    "left_upper": "Left upper lobe",
    "left_lower": "Left lower lobe",
}
#: Lobe score bands (percent): under 5 scores 1; up to 25, 50, 75 (inclusive) 2, 3, 4; above: 5.
LOBE_SCORE_BOUNDS: tuple[float, ...] = (5.0, 25.0, 50.0, 75.0)
#: Lower bounds (percent, inclusive) of MosMedData grades CT-2..CT-4; above 0: at least CT-1.
MOSMED_GRADE_BOUNDS: tuple[float, ...] = (25.0, 50.0, 75.0)


class SeverityError(InvalidInputError):
    """Masks that cannot be quantified together (shapes, labels)."""


def lobe_score(percent: float) -> int:
    """The 0-5 score of a lobe involved ``percent``."""
    if percent <= 0.0:
        return 0
    if percent < LOBE_SCORE_BOUNDS[0]:
        return 1
    # 5-25% scores 2, over 25-50% 3, over 50-75% 4: each band includes its upper bound.
    return 2 + sum(percent > b for b in LOBE_SCORE_BOUNDS[1:])


def mosmed_grade(percent: float) -> int:
    """MosMedData grade 0-4 of lungs involved ``percent``."""
    if percent <= 0.0:
        return 0
    return 1 + sum(percent >= b for b in MOSMED_GRADE_BOUNDS)


def _region(
    name: str,
    counts: tuple[int, int, int],
    has_hu: bool,
    voxel_ml: float,
    min_involved_ml: float,
    lobe: bool,
) -> Involvement:
    """One region's involvement from its voxel counts (region, lesion in it, dense lesion)."""
    n, n_lesion, n_dense = counts
    if n_lesion * voxel_ml < min_involved_ml:
        n_lesion, n_dense = 0, 0
    percent = 100.0 * n_lesion / n if n else 0.0
    ggo = (n_lesion - n_dense) * voxel_ml if has_hu else 0.0
    return Involvement(
        name=name,
        volume_ml=n * voxel_ml,
        lesion_ml=n_lesion * voxel_ml,
        ggo_ml=ggo,
        consolidation_ml=n_dense * voxel_ml,
        involvement_percent=min(100.0, percent),
        score=lobe_score(percent) if lobe else mosmed_grade(percent),
    )


def _lobe_labels(lobes: np.ndarray) -> np.ndarray:
    """The lobe map as integer labels (its own dtype when it has one: a uint8 map of a
    512-pixel CT is 80 MB, as int64 640), checked to be whole numbers 0-5."""
    if lobes.size == 0:
        return lobes.astype(np.int64)
    lo, hi = lobes.min(), lobes.max()
    whole = np.issubdtype(lobes.dtype, np.integer) or bool(np.array_equal(lobes, np.round(lobes)))
    if lo < 0 or hi > len(LOBES) or not whole:
        bad = sorted(set(np.unique(lobes).tolist()) - set(range(0, len(LOBES) + 1)))
        raise SeverityError(f"lobe labels must be 1-{len(LOBES)}, got {bad}")
    return lobes if np.issubdtype(lobes.dtype, np.integer) else lobes.astype(np.int64)


def quantify_severity(
    lung: np.ndarray,
    lesion: np.ndarray,
    voxel_ml: float,
    hu: np.ndarray | None = None,
    lobes: np.ndarray | None = None,
    consolidation_hu: float = -300.0,
    min_involved_ml: float = 0.1,
) -> Severity:
    """Severity of ``lesion`` (bool z/y/x) in ``lung`` (bool), with ``lobes`` (int labels
    1-5 in LOBES order, 0 elsewhere) when a lobe map exists; ``hu`` splits ground glass
    from consolidation (without it both are reported as 0 ml).

    Lesion voxels outside the lung are not counted; a lobe the map does not contain is
    left out of ``lobes`` and the CT severity score is None.
    """
    lung = np.asarray(lung, dtype=bool)
    lesion = np.asarray(lesion, dtype=bool)
    if lung.shape != lesion.shape or (hu is not None and hu.shape != lung.shape):
        raise SeverityError(f"lung {lung.shape}, lesion {lesion.shape} and HU masks differ in shape")
    if not voxel_ml > 0:
        raise SeverityError(f"voxel volume must be positive, got {voxel_ml}")
    lesion = lesion & lung
    dense = lesion & (hu >= consolidation_hu) if hu is not None else np.zeros_like(lesion)
    counts = (int(np.count_nonzero(lung)), int(np.count_nonzero(lesion)), int(np.count_nonzero(dense)))
    whole = _region("lungs", counts, hu is not None, voxel_ml, min_involved_ml, lobe=False)
    if lobes is None:
        return Severity(lungs=whole, lobes=(), ct_severity_score=None, consolidation_hu=consolidation_hu)
    lobes = np.asarray(lobes)
    if lobes.shape != lung.shape:
        raise SeverityError(f"lobe map {lobes.shape} and lung {lung.shape} differ in shape")
    labels = _lobe_labels(lobes)
    # One pass per count over the voxels (not one per lobe): the lung's, its lesions' and
    # their dense part's voxels per lobe label.
    per_lobe = [np.bincount(labels[m], minlength=len(LOBES) + 1) for m in (lung, lesion, dense)]
    parts = tuple(
        _region(
            name,
            (int(per_lobe[0][i]), int(per_lobe[1][i]), int(per_lobe[2][i])),
            hu is not None,
            voxel_ml,
            min_involved_ml,
            lobe=True,
        )
        for i, name in enumerate(LOBES, start=1)
        if per_lobe[0][i] > 0
    )
    total = sum(p.score for p in parts) if len(parts) == len(LOBES) else None
    return Severity(lungs=whole, lobes=parts, ct_severity_score=total, consolidation_hu=consolidation_hu)
