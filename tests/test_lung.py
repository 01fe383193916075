"""Lung segmentation: classical method on phantoms, U-Net path shapes, Dice helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.lung import dice, fill_holes_per_slice, largest_components, segment_lungs
from pipeline.nets import build_network, unet_arch
from pipeline.params import ChainParams
from pipeline.phantom import make_phantom
from pipeline.types import CTVolume, InvalidInputError


def test_dice_helper() -> None:
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    assert dice(a, b) == 1.0
    a[0, :2] = True  # 8 pixels
    b[0, :1] = True  # 4 pixels, all inside a
    assert dice(a, b) == pytest.approx(2 * 4 / 12)
    with pytest.raises(InvalidInputError):
        dice(a, b[:1])


def test_fill_holes_and_largest_components() -> None:
    m = np.zeros((2, 9, 9), bool)
    m[0, 1:8, 1:8] = True
    m[0, 4, 4] = False           # a hole: filled
    m[1, 0:3, 0:3] = True        # touches the border: background around it stays
    filled = fill_holes_per_slice(m)
    assert filled[0, 4, 4] and not filled[1, 5, 5]
    blobs = np.zeros((1, 10, 10), bool)
    blobs[0, 0:4, 0:4] = True    # 16
    blobs[0, 6:9, 6:9] = True    # 9
    blobs[0, 0, 9] = True        # 1
    kept = largest_components(blobs, max_count=2, min_fraction=0.1)
    assert kept.sum() == 25 and not kept[0, 0, 9]
    assert largest_components(blobs, max_count=2, min_fraction=0.6).sum() == 16


@pytest.mark.parametrize("label,seed", [("covid19", 11), ("cap", 12), ("non_pneumonia", 13)])
def test_classical_segmentation_dice_on_phantoms(label: str, seed: int) -> None:
    ph = make_phantom(label, seed, n_slices=32, size_px=128)
    lung = segment_lungs(ph.volume, ChainParams())
    assert lung.method == "classical"
    assert lung.mask.shape == ph.lung_mask.shape
    assert dice(lung.mask, ph.lung_mask) >= 0.95


def test_classical_segmentation_refines_edges_at_full_resolution() -> None:
    # 256 px works on a 2x coarser grid: edges come back from the full-size HU.
    ph = make_phantom("influenza", 14, n_slices=24, size_px=256)
    lung = segment_lungs(ph.volume, ChainParams())
    assert dice(lung.mask, ph.lung_mask) >= 0.95


def test_no_lung_in_a_water_phantom() -> None:
    hu = np.zeros((6, 64, 64), np.float32)
    hu[:, :4, :] = -1000.0
    lung = segment_lungs(CTVolume(hu=hu, spacing_mm=(2.0, 1.0, 1.0)), ChainParams())
    assert not lung.mask.any()


def test_unet_path_returns_full_size_mask() -> None:
    torch.manual_seed(0)
    net = build_network(unet_arch(features=(4, 8, 8, 16, 16, 4))).eval()
    # Bias the output layer so every pixel is lung: the cleanup keeps one component.
    with torch.no_grad():
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-5.0, 5.0]))
    hu = np.full((5, 40, 48), -800.0, np.float32)
    lung = segment_lungs(CTVolume(hu=hu, spacing_mm=(2.0, 1.0, 1.0)),
                         ChainParams(unet_input_size=32, batch_size=2), unet=net)
    assert lung.method == "unet"
    assert lung.mask.shape == (5, 40, 48) and lung.mask.all()
