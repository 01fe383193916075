"""Preprocessing shared by training and inference: shapes and values on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.params import ChainParams
from pipeline.preprocess import (
    Box,
    classifier_batch,
    classifier_input,
    crop_resize,
    lung_box,
    lung_channels,
    lung_slice_indices,
    normalize_hu,
    sample_slices,
    uncrop,
    unet_batch,
    upsample_mask,
)
from pipeline.types import InvalidInputError


def test_normalize_hu_maps_window_to_unit_range() -> None:
    out = normalize_hu(np.array([-2000.0, -1200.0, -250.0, 700.0, 3000.0]), (-1200.0, 700.0))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    assert out.dtype == np.float32
    with pytest.raises(InvalidInputError, match="low < high"):
        normalize_hu(np.zeros(3), (10.0, 10.0))


def test_lung_box_is_tight_and_whole_slice_when_empty() -> None:
    m = np.zeros((20, 30), bool)
    m[3:7, 10:25] = True
    assert lung_box(m) == Box(3, 7, 10, 25)
    assert lung_box(np.zeros((20, 30), bool)) == Box(0, 20, 0, 30)


def test_lung_slice_indices_uses_threshold_scaled_to_512() -> None:
    params = ChainParams(min_lung_pixels=500)
    # 128 x 128 is 1/16 of 512 x 512: the threshold becomes 31.25 pixels.
    m = np.zeros((4, 128, 128), bool)
    m[1, :4, :8] = True  # 32 pixels: kept
    m[2, :5, :6] = True  # 30 pixels: dropped
    m[3, :, :] = True
    np.testing.assert_array_equal(lung_slice_indices(m, params), [1, 3])


def test_sample_slices_uniform_stride_keeps_ends() -> None:
    z = np.arange(10, 110)
    s = sample_slices(z, 35)
    assert len(s) == 35 and s[0] == 10 and s[-1] == 109
    assert np.all(np.diff(s) >= 2) and np.all(np.diff(s) <= 3)
    np.testing.assert_array_equal(sample_slices([5, 3, 3, 9], 35), [3, 5, 9])
    with pytest.raises(InvalidInputError):
        sample_slices(z, 0)


def test_classifier_input_channels_and_values() -> None:
    params = ChainParams(input_size=32)
    hu = np.full((40, 50), 700.0, np.float32)  # dense tissue outside the lung
    mask = np.zeros((40, 50), bool)
    mask[10:30, 5:45] = True
    hu[mask] = -1200.0  # bottom of both windows inside
    hu[15:25, 20:30] = -250.0  # a lesion at the wide window's middle
    x = classifier_input(hu, mask, params)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    # The crop is exactly the lung box, so the mask channel is all ones.
    np.testing.assert_allclose(x[0], 1.0, atol=1e-6)
    assert x[1].min() == pytest.approx(0.0, abs=1e-6)
    assert x[1].max() == pytest.approx(0.5, abs=1e-3)
    lo, hi = params.lung_detail_window
    assert x[2].max() == pytest.approx(min(1.0, (-250.0 - lo) / (hi - lo)), abs=1e-3)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_classifier_input_sees_nothing_outside_the_lung() -> None:
    params = ChainParams(input_size=16)
    hu = np.full((32, 32), 300.0, np.float32)  # mediastinum-like tissue everywhere
    mask = np.zeros((32, 32), bool)
    mask[0:32, 0:8] = True
    mask[0:32, 24:32] = True  # two lungs: the box spans the gap between them
    x = classifier_input(hu, mask, params)
    assert x[0, :, 7:9].max() < 0.01  # the gap is outside the lung
    outside = x[0] == 0
    np.testing.assert_allclose(x[1][outside], 0.0)
    np.testing.assert_allclose(x[2][outside], 0.0)
    # Changing what lies outside the lung changes nothing the network sees.
    hu2 = hu.copy()
    hu2[~mask] = -1000.0
    np.testing.assert_allclose(classifier_input(hu2, mask, params), x, atol=1e-6)


def test_lung_channels_numpy_and_torch_agree() -> None:
    import torch

    params = ChainParams(input_size=24)
    rng = np.random.default_rng(1)
    pairs = np.stack([rng.uniform(-1100, 800, (3, 24, 24)), rng.uniform(0, 1, (3, 24, 24))], axis=1)
    pairs = pairs.astype(np.float32)
    expected = lung_channels(pairs, params)
    got = lung_channels(torch.from_numpy(pairs), params).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_classifier_batch_order_and_range_checks() -> None:
    params = ChainParams(input_size=24)
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 400, size=(6, 40, 40)).astype(np.float32)
    mask = np.zeros(hu.shape, bool)
    mask[:, 5:35, 8:30] = True
    b = classifier_batch(hu, mask, [4, 1], params)
    assert b.shape == (2, 3, 24, 24)
    np.testing.assert_allclose(b[1], classifier_input(hu[1], mask[1], params))
    with pytest.raises(InvalidInputError, match="outside"):
        classifier_batch(hu, mask, [6], params)
    with pytest.raises(InvalidInputError, match="differ in shape"):
        classifier_batch(hu, mask[:, :20], [0], params)


def test_crop_resize_and_uncrop_round_trip() -> None:
    img = np.zeros((40, 60), np.float32)
    img[10:20, 30:50] = 1.0
    box = Box(10, 20, 30, 50)
    small = crop_resize(img, box, 8)
    np.testing.assert_allclose(small, 1.0, atol=1e-6)
    back = uncrop(small, box, img.shape)
    np.testing.assert_allclose(back, img, atol=1e-6)


def test_unet_batch_and_upsample_mask() -> None:
    params = ChainParams(unet_input_size=16, hu_clip_min=-1024.0, hu_window=(-1200.0, 700.0))
    hu = np.full((3, 64, 48), -3024.0, np.float32)
    hu[:, :, 24:] = 700.0
    x = unet_batch(hu, params)
    assert x.shape == (3, 1, 16, 16) and x.dtype == np.float32
    assert x.min() == pytest.approx(0.0, abs=1e-6) and x.max() == pytest.approx(1.0, abs=1e-6)
    m = upsample_mask(x[:, 0], (64, 48))
    assert m.shape == (3, 64, 48) and m.dtype == bool
    assert not m[:, :, :22].any() and m[:, :, 26:].all()
