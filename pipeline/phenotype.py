"""Phenotype (radiomics) features of the attentional regions (METHOD.md, module 6).

Per explained slice with attentional regions, pyradiomics 3.0.1 computes 2-D features of
the slice's HU inside the regions: first order, GLCM, GLSZM, GLRLM, NGTDM and GLDM on the
original image (bin width ``radiomics_bin_width`` HU); Laplacian-of-Gaussian
(``radiomics_log_sigma_mm``) and wavelet (``radiomics_wavelet``) image types only when
asked for, as they multiply the cost. Deprecated and redundant pyradiomics features are
left out.
pyradiomics 3.0.1 refuses its LoG image type on a one-slice image ("Image too small to
apply LoG filter") even with ``force2D``, so the LoG images are made here, in 2-D, with
the filter pyradiomics uses (SimpleITK's LaplacianRecursiveGaussian, normalised across
scale, sigma in mm), and their features are named like pyradiomics' but ``-2D``:
``log-sigma-2-0-mm-2D_firstorder_Mean``.
Slices are combined by a mean weighted by region area, so the case gets one vector.

Three shape features of the paper are added:

* ``pleura_distance_mm``: distance from each region's centroid to the nearest non-lung
  pixel (the pleura), mean over regions;
* ``fractal_dimension_2d``: box-counting dimension of the regions' contour per slice,
  mean over slices;
* ``fractal_dimension_3d_grey``: the paper's "3D grayscale mesh fractal dimension", the
  differential box-counting dimension (Sarkar and Chaudhuri 1994) of the grey-level
  surface (y, x, HU) over the regions per slice, about 2 (smooth) to 3 (rough), mean
  over slices.

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
    fractal_grey: list[float] = []
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
        fd_grey = grey_fractal_dimension(volume.hu[a.z_index], a.regions)
        if np.isfinite(fd_grey):
            fractal_grey.append(fd_grey)
    features = {name: sums[name] / weights[name] for name in sorted(sums)}
    features["pleura_distance_mm"] = float(np.mean(pleura)) if pleura else float("nan")
    features["fractal_dimension_2d"] = float(np.mean(fractal)) if fractal else float("nan")
    features["fractal_dimension_3d_grey"] = float(np.mean(fractal_grey)) if fractal_grey else float("nan")
    return Phenotype(features=features, region_count=region_count)


# ------------------------------------------------------------------------- radiomics


def radiomics_features(
    hu_slice: np.ndarray, region: np.ndarray, spacing_yx: tuple[float, float], params: ChainParams
) -> dict[str, float]:
    """2-D radiomics features of ``hu_slice`` inside ``region`` (name -> value)."""
    bin_width = float(params.radiomics_bin_width)
    extractor = _extractor(bin_width, bool(params.radiomics_wavelet))
    if extractor is None:
        return first_order_numpy(np.asarray(hu_slice)[np.asarray(region, dtype=bool)])
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(hu_slice, dtype=np.float32))
    image.SetSpacing((spacing_yx[1], spacing_yx[0]))
    mask = sitk.GetImageFromArray(np.asarray(region, dtype=np.uint8)[None])
    out = _numeric_features(extractor, _one_slice(image), mask)
    original_only = _extractor(bin_width, False)
    for sigma in params.radiomics_log_sigma_mm:
        log_image = _one_slice(log_filtered(image, float(sigma)))
        prefix = f"log-sigma-{str(float(sigma)).replace('.', '-')}-mm-2D_"
        for name, value in _numeric_features(original_only, log_image, mask).items():
            out[prefix + name.removeprefix("original_")] = value
    return out


def log_filtered(image, sigma_mm: float):
    """The 2-D Laplacian of Gaussian pyradiomics' LoG image type computes (its filter and
    its normalisation across scale, sigma in mm), for a 2-D SimpleITK image."""
    import SimpleITK as sitk

    log_filter = sitk.LaplacianRecursiveGaussianImageFilter()
    log_filter.SetNormalizeAcrossScale(True)
    log_filter.SetSigma(sigma_mm)
    return log_filter.Execute(image)


def _one_slice(image_2d):
    """A 2-D SimpleITK image as a one-slice 3-D image (what the extractor reads)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(sitk.GetArrayFromImage(image_2d)[None])
    image.SetSpacing((*image_2d.GetSpacing(), 1.0))
    return image


def _numeric_features(extractor, image, mask) -> dict[str, float]:
    """The extractor's numeric features of ``image`` inside ``mask`` (label 1)."""
    mask.CopyInformation(image)
    out: dict[str, float] = {}
    for name, value in extractor.execute(image, mask, label=1).items():
        if name.startswith("diagnostics_"):
            continue
        try:
            out[str(name)] = float(np.asarray(value))
        except (TypeError, ValueError):
            continue  # a non-numeric entry carries no feature
    return out


@functools.lru_cache(maxsize=8)
def _extractor(bin_width: float, wavelet: bool):
    """One configured pyradiomics extractor (original image, wavelets when asked) per
    setting; None without pyradiomics. LoG images are made by ``log_filtered``."""
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


def grey_fractal_dimension(hu_slice: np.ndarray, region: np.ndarray) -> float:
    """Differential box-counting dimension of the grey-level surface over ``region``.

    Sarkar and Chaudhuri (1994), for a region rather than a whole image: the surface
    z = HU(y, x) is scaled so that its grey range inside the region spans the region's
    extent M (pixels); for box sizes s = 2, 4, ... up to M / 2, each s x s block touching
    the region needs boxes of height s from its lowest to its highest grey value (at
    least one). The
    dimension is 2 plus the slope of log(boxes per touched block) against log(1 / s): per
    block, so that the outline of a small region (it touches fewer blocks than a square
    of its extent) does not enter. 2 for a flat or smoothly sloping surface, towards 3
    for a rough one; NaN when the region is too small for two box sizes (M < 8).
    """
    inside = np.asarray(region, dtype=bool)
    if not inside.any():
        return float("nan")
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    inside = inside[box]
    grey = np.asarray(hu_slice, dtype=np.float64)[box]
    extent = max(inside.shape)
    sizes = [2**k for k in range(1, int(np.log2(extent / 2)) + 1)] if extent >= 4 else []
    if len(sizes) < _MIN_BOXES_FOR_FIT:
        return float("nan")
    low, high = float(grey[inside].min()), float(grey[inside].max())
    height = (grey - low) * (extent / (high - low)) if high > low else np.zeros_like(grey)
    boxes_per_block = [_grey_boxes_per_block(height, inside, s) for s in sizes]
    log_inv_size = np.log(1.0 / np.asarray(sizes, dtype=np.float64))
    return 2.0 + float(np.polyfit(log_inv_size, np.log(np.asarray(boxes_per_block)), 1)[0])


def _grey_boxes_per_block(height: np.ndarray, inside: np.ndarray, size: int) -> float:
    """Mean number of boxes of side ``size`` covering the surface ``height`` over the
    ``size`` x ``size`` blocks that touch ``inside``. A block reaches to the first pixel
    row and column of its neighbours (the surface between pixel samples is covered too,
    so a tilted plane needs as many boxes per block at every size)."""
    top = _block_extreme(np.where(inside, height, -np.inf), size, np.max, -np.inf)
    bottom = _block_extreme(np.where(inside, height, np.inf), size, np.min, np.inf)
    ny, nx = -(-inside.shape[0] // size), -(-inside.shape[1] // size)
    own = np.zeros((ny * size, nx * size), dtype=bool)
    own[: inside.shape[0], : inside.shape[1]] = inside
    touched = own.reshape(ny, size, nx, size).any(axis=(1, 3))
    levels = np.ceil(top[touched] / size) - np.floor(bottom[touched] / size)
    return float(np.maximum(levels, 1.0).mean())


def _block_extreme(values: np.ndarray, size: int, extreme, fill: float) -> np.ndarray:
    """``extreme`` (np.max or np.min) over each block of ``size`` pixels plus the first
    row and column of the next blocks; ``fill`` beyond the array."""
    ny, nx = -(-values.shape[0] // size), -(-values.shape[1] // size)
    padded = np.full((ny * size + 1, nx * size + 1), fill)
    padded[: values.shape[0], : values.shape[1]] = values
    own = extreme(padded[: ny * size, : nx * size].reshape(ny, size, nx, size), axis=(1, 3))
    next_column = extreme(padded[: ny * size, size::size].reshape(ny, size, nx), axis=1)
    next_row = extreme(padded[size::size, : nx * size].reshape(ny, nx, size), axis=2)
    corner = padded[size::size, size::size]
    return extreme(np.stack([own, next_column, next_row, corner]), axis=0)


def feature_vector(phenotype: Phenotype, names: Sequence[str]) -> np.ndarray:
    """The phenotype's values in ``names`` order (NaN for missing ones): for tables."""
    f: Mapping[str, float] = phenotype.features
    return np.array([float(f.get(n, np.nan)) for n in names], dtype=np.float64)
