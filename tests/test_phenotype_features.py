"""pipeline.phenotype additions of the phenotype study: the 3-D grey-level fractal
dimension and the LoG image types made in 2-D (pyradiomics refuses its own on a slice)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.params import ChainParams
from pipeline.phenotype import compute_phenotype, grey_fractal_dimension, radiomics_features
from pipeline.types import AttentionMap, CTVolume, LungMask


def test_grey_fractal_dimension_grows_with_roughness() -> None:
    rng = np.random.default_rng(0)
    square = np.ones((64, 64), bool)
    yy, xx = np.mgrid[:64, :64]
    noise = rng.normal(size=(64, 64))
    flat = grey_fractal_dimension(np.zeros((64, 64)), square)
    tilted = grey_fractal_dimension(3.0 * xx + yy, square)
    smooth_noise = grey_fractal_dimension(ndimage.gaussian_filter(noise, 2.0), square)
    rough = grey_fractal_dimension(noise, square)
    assert flat == pytest.approx(2.0)
    assert tilted == pytest.approx(2.0, abs=0.15)
    assert tilted < smooth_noise < rough <= 3.0
    assert rough > 2.5


def test_grey_fractal_dimension_of_a_small_region_ignores_its_outline() -> None:
    """A round region touches fewer blocks than a square: per block, a flat surface over
    it is still 2 and noise over it still rough."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 30) ** 2 + (xx - 30) ** 2 < 40
    assert grey_fractal_dimension(np.full((64, 64), -700.0), disc) == pytest.approx(2.0)
    assert grey_fractal_dimension(rng.normal(size=(64, 64)), disc) > 2.4
    tiny = np.zeros((64, 64), bool)
    tiny[10:13, 10:13] = True  # extent 3 px: no two box sizes fit
    assert np.isnan(grey_fractal_dimension(rng.normal(size=(64, 64)), tiny))
    assert np.isnan(grey_fractal_dimension(np.zeros((64, 64)), np.zeros((64, 64), bool)))


def _slice_and_region() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    hu = ndimage.gaussian_filter(rng.normal(-600, 150, size=(96, 96)), 1.0).astype(np.float32)
    region = np.zeros((96, 96), bool)
    region[30:61, 25:56] = True  # centroid (45, 40)
    return hu, region


def test_log_and_wavelet_image_types_are_computed_on_a_slice() -> None:
    import SimpleITK as sitk

    from pipeline.phenotype import log_filtered

    hu, region = _slice_and_region()
    params = ChainParams(radiomics_log_sigma_mm=(1.5, 3.0), radiomics_wavelet=True)
    features = radiomics_features(hu, region, (1.0, 1.0), params)
    image_types = {name.split("_", 1)[0] for name in features}
    assert image_types == {
        "original",
        "log-sigma-1-5-mm-2D",
        "log-sigma-3-0-mm-2D",
        "wavelet-LL",
        "wavelet-LH",
        "wavelet-HL",
        "wavelet-HH",
    }
    per_type = {t: sum(1 for n in features if n.startswith(t + "_")) for t in image_types}
    assert len(set(per_type.values())) == 1  # every image type has the full feature set
    image = sitk.GetImageFromArray(hu)
    log_image = sitk.GetArrayFromImage(log_filtered(image, 3.0))
    assert features["log-sigma-3-0-mm-2D_firstorder_Mean"] == pytest.approx(float(log_image[region].mean()), rel=1e-4)
    assert features["log-sigma-3-0-mm-2D_firstorder_Mean"] != pytest.approx(features["original_firstorder_Mean"])


def test_phenotype_holds_the_three_shape_features() -> None:
    hu, region = _slice_and_region()
    volume = CTVolume(hu=np.stack([hu, hu]), spacing_mm=(5.0, 1.0, 1.0))
    lung = np.zeros(volume.shape, bool)
    lung[:, 10:90, 10:90] = True
    attention = (AttentionMap(z_index=1, heat=region.astype(np.float32), regions=region, target_class="cap"),)
    phenotype = compute_phenotype(volume, LungMask(lung, "classical"), attention, ChainParams())
    assert phenotype is not None
    assert phenotype.features["pleura_distance_mm"] == pytest.approx(31.0)  # column 40 is 31 px from column 9
    assert 2.0 <= phenotype.features["fractal_dimension_3d_grey"] <= 3.0
    assert phenotype.features["fractal_dimension_3d_grey"] == pytest.approx(grey_fractal_dimension(hu, region))
    assert np.isfinite(phenotype.features["fractal_dimension_2d"])
