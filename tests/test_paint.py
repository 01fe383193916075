"""Consolidation painting of U-Net training slices (pipeline.training.paint)."""

from __future__ import annotations

from dataclasses import replace

import torch

from pipeline.training.paint import paint_consolidation
from pipeline.training.params import AugmentParams
from pipeline.training.sampling import generator_for

HU_RANGE = (-1024.0, 700.0)
LESION = 2


def _slices(n: int = 16, s: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two aerated lungs (-850 HU) beside a dense mediastinum (40 HU), scaled like U-Net input."""
    hu = torch.full((n, 1, s, s), 40.0)
    y = torch.zeros((n, s, s), dtype=torch.long)
    hu[:, 0, 12:52, 6:28] = -850.0
    hu[:, 0, 12:52, 36:58] = -850.0
    y[:, 12:52, 6:28] = 1
    y[:, 12:52, 36:58] = 1
    return (hu - HU_RANGE[0]) / (HU_RANGE[1] - HU_RANGE[0]), y


def _hu(x: torch.Tensor) -> torch.Tensor:
    return HU_RANGE[0] + x[:, 0] * (HU_RANGE[1] - HU_RANGE[0])


def test_painted_regions_are_dense_lesion_inside_one_lung_and_nothing_else_changes() -> None:
    x, y = _slices()
    params = replace(AugmentParams(), paint_probability=1.0, paint_as_lesion=True)
    xp, yp = paint_consolidation(x, y, params, generator_for(1, "paint"), HU_RANGE, LESION)
    painted = (yp == LESION) & (y != LESION)
    assert painted.sum(dim=(1, 2)).gt(0).all()  # every sample has enough lung: all painted
    assert torch.all(y[painted] > 0)  # only lung is painted
    assert torch.equal(yp[y == 0], y[y == 0])  # the background label is untouched
    assert torch.equal(xp[:, 0][y == 0], x[:, 0][y == 0])  # so are its pixels (edge stays inside)
    hu = _hu(xp)
    lo, hi = params.paint_hu
    assert hu[painted].mean() > lo - 100 and hu[painted].mean() < hi + 100  # dense, not aerated
    for i in range(len(x)):  # one side per sample: never both lungs
        sides = [painted[i, :, :32].any(), painted[i, :, 32:].any()]
        assert sum(bool(v) for v in sides) == 1


def test_probability_zero_paints_nothing_and_the_draws_are_reproducible() -> None:
    x, y = _slices()
    off = replace(AugmentParams(), paint_probability=0.0)
    xo, yo = paint_consolidation(x, y, off, generator_for(2, "paint"), HU_RANGE, LESION)
    assert torch.equal(xo, x) and torch.equal(yo, y)
    on = replace(AugmentParams(), paint_probability=0.5, paint_as_lesion=True)
    a = paint_consolidation(x, y, on, generator_for(2, "paint"), HU_RANGE, LESION)
    b = paint_consolidation(x, y, on, generator_for(2, "paint"), HU_RANGE, LESION)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    share = float(((a[1] == LESION).sum(dim=(1, 2)) > 0).float().mean())
    assert 0.1 < share < 0.9  # about half the samples


def test_a_slice_with_too_little_lung_is_left_alone() -> None:
    x, y = _slices(n=4)
    y[:] = 0
    y[:, 30:34, 10:14] = 1  # 16 lung pixels: an apex
    params = replace(AugmentParams(), paint_probability=1.0)
    xp, yp = paint_consolidation(x, y, params, generator_for(3, "paint"), HU_RANGE, LESION)
    assert torch.equal(xp, x) and torch.equal(yp, y)


def test_painted_pixels_stay_lung_unless_asked_to_be_lesion() -> None:
    x, y = _slices()
    params = replace(AugmentParams(), paint_probability=1.0, paint_as_lesion=False)
    xp, yp = paint_consolidation(x, y, params, generator_for(1, "paint"), HU_RANGE, LESION)
    assert torch.equal(yp, y)  # labels untouched
    assert (_hu(xp) > -500).sum() > (_hu(x) > -500).sum()  # but dense tissue was drawn in the lung


def test_the_train_command_line_sets_and_records_painting() -> None:
    from dicomnode.cli import build_parser
    from dicomnode.commands.train import _train_params, command_line

    words = ["train", "segmentation", "--data", "phantom:count=2", "--out", "/tmp/x"]
    plain = build_parser(words).parse_args(words)
    assert _train_params(plain).augment.paint_probability == 0.0  # not in the shipped recipe
    assert "--paint" not in command_line(plain)
    words += ["--paint-consolidation", "0.4", "--paint-as-lesion"]
    args = build_parser(words).parse_args(words)
    augment = _train_params(args).augment
    assert augment.paint_probability == 0.4 and augment.paint_as_lesion
    assert "--paint-consolidation 0.4 --paint-as-lesion" in command_line(args)
