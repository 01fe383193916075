"""Phenotype (radiomics) features of the attentional regions (METHOD.md, module 6).

Per explained slice with attentional regions, pyradiomics 3.0.1 computes 2-D features of
the slice's HU inside the regions: first order, GLCM, GLSZM, GLRLM, NGTDM and GLDM on the
original image (bin width ``radiomics_bin_width`` HU); Laplacian-of-Gaussian
(``radiomics_log_sigma_mm``) and wavelet (``radiomics_wavelet``) image types only when
asked for, as they multiply the cost. Deprecated and redundant pyradiomics features are
left out.
Slices are combined by a mean weighted by region area, so the case gets one vector.

Two shape features of the paper are added:

* ``pleura_distance_mm``: distance from each region's centroid to the nearest non-lung
  pixel (the pleura), mean over regions;
* ``fractal_dimension_2d``: box-counting dimension of the regions' contour per slice,
  mean over slices.

If pyradiomics cannot be imported, a numpy first-order set is computed instead (same
names, ``original_firstorder_*``), so the chain still runs.

The paper computes this for pneumonia cases; ``analyze`` calls it when the case label is
a pneumonia class and ``compute_phenotype`` is on.
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from .params import ChainParams
from .types import AttentionMap, CTVolume, LungMask, Phenotype

FEATURE_CLASSES = ("firstorder", "glcm", "glszm", "glrlm", "ngtdm", "gldm")
#: Left out although not deprecated: with pyradiomics' symmetrical GLCM, Sum Average is
#: 2 x Joint Average (pyradiomics warns on every call when it is enabled).
_REDUNDANT = {"glcm": {"SumAverage"}}
#: A box-counting slope needs at least this many box sizes.
_MIN_BOXES_FOR_FIT = 2


def compute_phenotype(
    volume: CTVolume, lung_mask: LungMask, attention: Sequence[AttentionMap], params: ChainParams
) -> Phenotype | None:
    """Phenotype of the case's attentional regions; None when there are none."""
    slices = [a for a in attention if a.regions.any()]
    if not slices:
        return None
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    pleura: list[float] = []
    fractal: list[float] = []
    region_count = 0
    spacing_yx = (float(volume.spacing_mm[1]), float(volume.spacing_mm[2]))
    for a in slices:
        area = float(np.count_nonzero(a.regions))
        for name, value in radiomics_features(volume.hu[a.z_index], a.regions, spacing_yx, params).items():
            if np.isfinite(value):
                sums[name] = sums.get(name, 0.0) + area * value
                weights[name] = weights.get(name, 0.0) + area
        distances = pleura_distances_mm(a.regions, lung_mask.mask[a.z_index], spacing_yx)
        pleura.extend(distances)
        region_count += len(distances)
        fd = fractal_dimension(contour(a.regions))
        if np.isfinite(fd):
            fractal.append(fd)
    features = {name: sums[name] / weights[name] for name in sorted(sums)}
    features["pleura_distance_mm"] = float(np.mean(pleura)) if pleura else float("nan")
    features["fractal_dimension_2d"] = float(np.mean(fractal)) if fractal else float("nan")
    return Phenotype(features=features, region_count=region_count)


# ------------------------------------------------------------------------- radiomics


def radiomics_features(
    hu_slice: np.ndarray, region: np.ndarray, spacing_yx: tuple[float, float], params: ChainParams
) -> dict[str, float]:
    """2-D radiomics features of ``hu_slice`` inside ``region`` (name -> value)."""
    extractor = _extractor(
        float(params.radiomics_bin_width),
        tuple(float(s) for s in params.radiomics_log_sigma_mm),
        bool(params.radiomics_wavelet),
    )
    if extractor is None:
        return first_order_numpy(np.asarray(hu_slice)[np.asarray(region, dtype=bool)])
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(hu_slice, dtype=np.float32)[None])
    image.SetSpacing((spacing_yx[1], spacing_yx[0], 1.0))
    mask = sitk.GetImageFromArray(np.asarray(region, dtype=np.uint8)[None])
    mask.CopyInformation(image)
    result = extractor.execute(image, mask, label=1)
    out: dict[str, float] = {}
    for name, value in result.items():
        if name.startswith("diagnostics_"):
            continue
        try:
            out[str(name)] = float(np.asarray(value))
        except (TypeError, ValueError):
            continue  # a non-numeric entry carries no feature
    return out


@functools.lru_cache(maxsize=8)
def _extractor(bin_width: float, log_sigma_mm: tuple[float, ...], wavelet: bool):
    """One configured pyradiomics extractor per setting (None without pyradiomics)."""
    try:
        import radiomics
        from radiomics import featureextractor
    except ImportError:
        return None
    ext = featureextractor.RadiomicsFeatureExtractor(
        binWidth=bin_width, force2D=True, force2Ddimension=0, additionalInfo=False
    )
    ext.disableAllImageTypes()
    ext.enableImageTypeByName("Original")
    if log_sigma_mm:
        ext.enableImageTypeByName("LoG", customArgs={"sigma": list(log_sigma_mm)})
    if wavelet:
        ext.enableImageTypeByName("Wavelet")
    ext.disableAllFeatures()
    classes = radiomics.getFeatureClasses()
    ext.enableFeaturesByName(
        **{
            c: [
                name
                for name, deprecated in classes[c].getFeatureNames().items()
                if not deprecated and name not in _REDUNDANT.get(c, ())
            ]
            for c in FEATURE_CLASSES
        }
    )
    return ext


def first_order_numpy(values: np.ndarray) -> dict[str, float]:
    """A first-order feature set in numpy (used only when pyradiomics is missing)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return {}
    mean = float(v.mean())
    std = float(v.std())
    centred = v - mean
    hist, _ = np.histogram(v, bins=max(1, int(np.ptp(v) // 25) + 1))
    p = hist[hist > 0] / v.size
    return {
        "original_firstorder_Mean": mean,
        "original_firstorder_Median": float(np.median(v)),
        "original_firstorder_Minimum": float(v.min()),
        "original_firstorder_Maximum": float(v.max()),
        "original_firstorder_10Percentile": float(np.percentile(v, 10)),
        "original_firstorder_90Percentile": float(np.percentile(v, 90)),
        "original_firstorder_Variance": std**2,
        "original_firstorder_Skewness": float((centred**3).mean() / std**3) if std > 0 else 0.0,
        "original_firstorder_Kurtosis": float((centred**4).mean() / std**4) if std > 0 else 0.0,
        "original_firstorder_Entropy": float(-(p * np.log2(p)).sum()),
        "original_firstorder_Energy": float((v**2).sum()),
    }


# ------------------------------------------------------------------------ shape


def pleura_distances_mm(regions: np.ndarray, lung_slice: np.ndarray, spacing_yx: tuple[float, float]) -> list[float]:
    """Distance (mm) from each region component's centroid to the nearest non-lung pixel."""
    labels, n = ndimage.label(np.asarray(regions, dtype=bool))
    if n == 0:
        return []
    lung = np.asarray(lung_slice, dtype=bool)
    to_pleura = ndimage.distance_transform_edt(lung, sampling=spacing_yx)
    centroids = ndimage.center_of_mass(np.ones(labels.shape), labels, np.arange(1, n + 1))
    out = []
    for cy, cx in centroids:
        iy = int(np.clip(round(cy), 0, lung.shape[0] - 1))
        ix = int(np.clip(round(cx), 0, lung.shape[1] - 1))
        out.append(float(to_pleura[iy, ix]))  # 0 when the centroid lies outside the lung
    return out


def contour(mask: np.ndarray) -> np.ndarray:
    """One-pixel inner contour of a 2-D binary mask."""
    m = np.asarray(mask, dtype=bool)
    return m & ~ndimage.binary_erosion(m)


def fractal_dimension(points: np.ndarray) -> float:
    """Box-counting dimension of the True pixels of a 2-D mask (NaN when too small).

    Boxes of 1, 2, 4, ... pixels up to a quarter of the shape's extent; the slope of
    log(count) against log(1 / size).
    """
    p = np.asarray(points, dtype=bool)
    if p.sum() < 2:
        return float("nan")
    rows = np.flatnonzero(p.any(axis=1))
    cols = np.flatnonzero(p.any(axis=0))
    p = p[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # Boxes larger than a quarter of the shape all touch it and flatten the slope.
    extent = max(p.shape) // 4
    sizes = [2**k for k in range(0, int(np.log2(extent)) + 1)] if extent >= 2 else []
    if len(sizes) < _MIN_BOXES_FOR_FIT:
        return float("nan")
    counts = []
    for s in sizes:
        ny, nx = -(-p.shape[0] // s), -(-p.shape[1] // s)
        padded = np.zeros((ny * s, nx * s), dtype=bool)
        padded[: p.shape[0], : p.shape[1]] = p
        counts.append(int(padded.reshape(ny, s, nx, s).any(axis=(1, 3)).sum()))
    log_inv_size = np.log(1.0 / np.asarray(sizes, dtype=np.float64))
    slope = np.polyfit(log_inv_size, np.log(np.asarray(counts, dtype=np.float64)), 1)[0]
    return float(slope)


def feature_vector(phenotype: Phenotype, names: Sequence[str]) -> np.ndarray:
    """The phenotype's values in ``names`` order (NaN for missing ones): for tables."""
    f: Mapping[str, float] = phenotype.features
    return np.array([float(f.get(n, np.nan)) for n in names], dtype=np.float64)
