"""HU domain randomisation of training batches (pipeline.training.augment)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.params import ChainParams
from pipeline.preprocess import lung_channels
from pipeline.training.augment import augment_hu, augment_lung_pairs, augment_unet_inputs
from pipeline.training.params import AugmentParams
from pipeline.training.sampling import generator_for


def _pairs(n: int = 6, s: int = 48) -> torch.Tensor:
    hu = torch.full((n, s, s), 40.0)
    hu[:, 8:40, 8:40] = -850.0
    hu[:, 20:28, 20:28] = -600.0  # a ground-glass patch
    mask = torch.zeros((n, s, s))
    mask[:, 8:40, 8:40] = 1.0
    return torch.stack([hu, mask], dim=1)


def test_same_generator_same_batch_and_batches_differ_between_samples() -> None:
    p = AugmentParams()
    a = augment_lung_pairs(_pairs(), p, generator_for(3, "t"), (-1200.0, 700.0))
    b = augment_lung_pairs(_pairs(), p, generator_for(3, "t"), (-1200.0, 700.0))
    assert torch.equal(a, b)
    lung_sd = a[:, 0, 12:36, 12:36].std(dim=(1, 2))
    assert lung_sd.max() - lung_sd.min() > 3.0  # per-sample noise levels differ
    assert a.shape == (6, 2, 48, 48)


def test_nothing_outside_the_lung_reaches_the_network_after_augmentation() -> None:
    out = augment_lung_pairs(_pairs(), AugmentParams(), generator_for(5, "t"), (-1200.0, 700.0))
    x = lung_channels(out, ChainParams())
    outside = out[:, 1] == 0
    assert torch.all(x[:, 1][outside] == 0) and torch.all(x[:, 2][outside] == 0)


def test_intensity_changes_stay_plausible() -> None:
    hu = torch.full((32, 40, 40), -850.0)
    out = augment_hu(hu, AugmentParams(), generator_for(1, "t"), (-1200.0, 700.0))
    med = out.median(dim=2).values.median(dim=1).values
    assert float(med.min()) > -1000 and float(med.max()) < -700  # still lung, another scanner
    assert float(med.max() - med.min()) > 20  # and not the same look every time


def test_unet_inputs_stay_in_unit_range() -> None:
    x = torch.rand((4, 1, 32, 32))
    out = augment_unet_inputs(x, AugmentParams(), generator_for(2, "t"), (-1024.0, 700.0))
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not np.allclose(out.numpy(), x.numpy())
