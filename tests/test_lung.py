"""Lung segmentation: classical method on phantoms, U-Net path shapes, Dice and lesion
inclusion helpers, and the refinement that keeps dense disease inside the lung mask."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.lung import (
    fill_holes_per_slice,
    interpolate_slices,
    largest_components,
    lesion_inclusion,
    refine_lung_mask,
    segment_lungs,
    unet_slices,
)
from pipeline.metrics import dice
from pipeline.nets import build_network, unet_arch
from pipeline.params import ChainParams
from pipeline.phantom import make_phantom
from pipeline.types import CTVolume, InvalidInputError, LungMask


def test_dice_helper() -> None:
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    assert dice(a, b) == 1.0
    a[0, :2] = True  # 8 pixels
    b[0, :1] = True  # 4 pixels, all inside a
    assert dice(a, b) == pytest.approx(2 * 4 / 12)
    with pytest.raises(ValueError):
        dice(a, b[:1])


def test_fill_holes_and_largest_components() -> None:
    m = np.zeros((2, 9, 9), bool)
    m[0, 1:8, 1:8] = True
    m[0, 4, 4] = False  # a hole: filled
    m[1, 0:3, 0:3] = True  # touches the border: background around it stays
    filled = fill_holes_per_slice(m)
    assert filled[0, 4, 4] and not filled[1, 5, 5]
    blobs = np.zeros((1, 10, 10), bool)
    blobs[0, 0:4, 0:4] = True  # 16
    blobs[0, 6:9, 6:9] = True  # 9
    blobs[0, 0, 9] = True  # 1
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


def _constant_unet(bias: list[float]) -> torch.nn.Module:
    """A tiny U-Net whose output is ``bias`` at every pixel (2 or 3 classes)."""
    torch.manual_seed(0)
    net = build_network(unet_arch(features=(4, 8, 8, 16, 16, 4), lesion_head=len(bias) == 3)).eval()
    with torch.no_grad():
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor(bias))
    return net


def test_unet_path_returns_full_size_mask() -> None:
    # Every pixel is lung: the cleanup keeps one component; a 2-class U-Net has no lesion map.
    hu = np.full((5, 40, 48), -800.0, np.float32)
    lung = segment_lungs(
        CTVolume(hu=hu, spacing_mm=(2.0, 1.0, 1.0)),
        ChainParams(unet_input_size=32, batch_size=2),
        unet=_constant_unet([-5.0, 5.0]),
    )
    assert lung.method == "unet"
    assert lung.mask.shape == (5, 40, 48) and lung.mask.all()
    assert lung.lesion is None


def test_three_class_unet_gives_lung_and_lesion_maps() -> None:
    """Lung = classes 1 + 2: a pixel the U-Net calls lesion is lung too, and is in the lesion map."""
    hu = np.full((5, 40, 48), -800.0, np.float32)
    volume = CTVolume(hu=hu, spacing_mm=(2.0, 1.0, 1.0))
    params = ChainParams(unet_input_size=32, batch_size=2)
    lesion_everywhere = segment_lungs(volume, params, unet=_constant_unet([-5.0, 0.0, 5.0]))
    assert lesion_everywhere.mask.all() and lesion_everywhere.lesion is not None
    assert lesion_everywhere.lesion.all()
    no_lesion = segment_lungs(volume, params, unet=_constant_unet([-5.0, 5.0, -5.0]))
    assert no_lesion.mask.all() and no_lesion.lesion is not None and not no_lesion.lesion.any()


def test_unet_runs_on_every_kth_thin_slice_and_always_the_last() -> None:
    assert unet_slices(7, 5.0, 2.0).tolist() == list(range(7))  # thick slices: every one
    assert unet_slices(7, 1.0, 2.0).tolist() == [0, 2, 4, 6]
    assert unet_slices(8, 1.0, 2.0).tolist() == [0, 2, 4, 6, 7]  # the last is never extrapolated
    assert unet_slices(10, 0.625, 2.0).tolist() == [0, 3, 6, 9]
    assert unet_slices(5, 0.5, 0.0).tolist() == list(range(5))  # 0: every slice


def test_slices_between_are_interpolated_linearly() -> None:
    run_z = np.array([0, 3, 4])
    values = np.stack([np.full((2, 2), v, np.float32) for v in (0.0, 0.9, 0.3)])
    out = interpolate_slices(values, run_z, 5)
    assert out.shape == (5, 2, 2) and out.dtype == np.float32
    assert np.allclose(out[:, 0, 0], [0.0, 0.3, 0.6, 0.9, 0.3])


def test_strided_unet_segments_thin_slices_like_every_slice() -> None:
    """1 mm slices: the U-Net runs on every other slice; a lung that changes slowly along z
    comes out the same as when it runs on every slice."""
    hu = np.full((9, 40, 48), 0.0, np.float32)
    hu[:, 8:32, 6:42] = -850.0  # lung-density box; the 'U-Net' below calls it lung
    volume = CTVolume(hu=hu, spacing_mm=(1.0, 1.0, 1.0))
    calls: list[int] = []

    class DensityUnet(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(int(x.shape[0]))
            lung = (x < 0.3).float() * 10.0 - 5.0  # unet_batch scales HU to [0, 1]
            return torch.cat([-lung, lung], dim=1)

    params = ChainParams(unet_input_size=32, batch_size=2, unet_batch_size=64)
    strided = segment_lungs(volume, params, unet=DensityUnet())
    assert sum(calls) == 5  # slices 0, 2, 4, 6, 8
    calls.clear()
    every = segment_lungs(volume, replace(params, unet_max_z_step_mm=0.0), unet=DensityUnet())
    assert sum(calls) == 9
    assert np.array_equal(strided.mask, every.mask) and every.mask.any()


@pytest.mark.parametrize("seed", [839601160, 1128187839])
def test_classical_does_not_take_the_gap_above_the_table_for_a_lung(seed: int) -> None:
    """Two family-B cases (dev cohort seed 777002) whose air between the back and a curved
    table, made body by hole filling, was larger than the left lung: the classical mask
    kept it and dropped the left lung (Dice 0.70-0.73). Air outside the rib cage is not lung."""
    from pipeline.phantoms import make_phantom_b

    p = make_phantom_b("non_pneumonia", seed, 24, 96)
    mask = segment_lungs(p.volume, ChainParams()).mask
    assert dice(mask, p.lung_mask) >= 0.9
    right = np.arange(p.volume.shape[2]) < p.volume.shape[2] // 2
    assert (mask & p.lung_mask & right).any() and (mask & p.lung_mask & ~right).any()  # both lungs


def test_lesion_inclusion_helper() -> None:
    lung = np.zeros((2, 4, 4), bool)
    lesion = np.zeros((2, 4, 4), bool)
    assert lesion_inclusion(lung, lesion) == 1.0  # no lesion voxel: nothing left out
    lesion[0, 0, :] = True  # 4 voxels
    assert lesion_inclusion(lung, lesion) == 0.0
    lung[0, :, :2] = True  # 2 of them inside
    assert lesion_inclusion(lung, lesion) == pytest.approx(0.5)
    lung[:] = True
    assert lesion_inclusion(lung, lesion) == 1.0
    assert lesion_inclusion(lung.astype(np.uint8), lesion.astype(np.float32)) == 1.0
    with pytest.raises(InvalidInputError):
        lesion_inclusion(lung, lesion[:1])


# --------------------------------------------------------- dense disease stays in the lung


def _phantom_with_mass(
    seed: int, where: str, diameter_mm: float, side: str, inset: float = 0.8, hu: float = 30.0
) -> tuple[CTVolume, np.ndarray, np.ndarray]:
    """A clean phantom with a soft-tissue mass cut into one lung at mid height, against
    the chest wall (``where="wall"``, the lung's lateral edge) or the mediastinum (its
    medial edge); the mass's centre lies ``inset`` radii inside the lung. Returns the
    volume, the lung truth (unchanged: the mass is lung) and the mass's voxels."""
    ph = make_phantom("non_pneumonia", seed, n_slices=32, size_px=128)
    lung = ph.lung_mask
    zs = np.flatnonzero(lung.any(axis=(1, 2)))
    k = int(zs[0] + 0.5 * (zs[-1] - zs[0]))
    nx = lung.shape[2]
    x0 = 0 if side == "right" else nx // 2  # column 0 is the patient's right
    rows, _ = np.nonzero(lung[k, :, x0 : x0 + nx // 2])
    cy = int(np.median(rows))
    row = np.flatnonzero(lung[k, cy, x0 : x0 + nx // 2]) + x0
    lateral, medial = (row.min(), row.max()) if side == "right" else (row.max(), row.min())
    edge = lateral if where == "wall" else medial
    inward = np.sign(medial - lateral) if where == "wall" else np.sign(lateral - medial)
    dz, dy, dx = ph.volume.spacing_mm
    radius = diameter_mm / 2.0
    cx = edge + inward * inset * radius / dx
    zz, yy, xx = np.ogrid[: lung.shape[0], : lung.shape[1], : lung.shape[2]]
    ball = ((zz - k) * dz) ** 2 + ((yy - cy) * dy) ** 2 + ((xx - cx) * dx) ** 2 <= radius**2
    mass = ball & lung
    values = ph.volume.hu.copy()
    values[mass] = hu + np.random.default_rng(seed).normal(0.0, 15.0, int(mass.sum()))
    return CTVolume(hu=values, spacing_mm=ph.volume.spacing_mm), lung, mass


@pytest.mark.parametrize(
    "where,seed,diameter_mm,side",
    [
        *(
            ("wall", *c)
            for c in [(1, 25, "right"), (1, 40, "left"), (2, 30, "left"), (3, 40, "right"), (3, 25, "left")]
        ),
        *(
            ("mediastinum", *c)
            for c in [(1, 30, "right"), (1, 40, "left"), (2, 40, "right"), (2, 25, "left"), (3, 30, "left")]
        ),
    ],
)
def test_classical_keeps_a_mass_against_the_chest_wall_or_mediastinum(
    where: str, seed: int, diameter_mm: float, side: str
) -> None:
    volume, lung, mass = _phantom_with_mass(seed, where, diameter_mm, side)
    mask = segment_lungs(volume, ChainParams()).mask
    assert lesion_inclusion(mask, mass) >= 0.95
    assert dice(mask, lung) >= 0.97


#: Family-A CAP phantoms whose consolidation lies between aerated lung and the chest wall.
_CAP_WALL_BOUNDED = (5, 8)
#: Family-A CAP phantoms for the inclusion floor (32 slices x 128 px).
_CAP_SEEDS = tuple(range(8))


@pytest.mark.parametrize("seed", _CAP_WALL_BOUNDED)
def test_classical_keeps_cap_consolidation_against_the_chest_wall(seed: int) -> None:
    ph = make_phantom("cap", seed, n_slices=32, size_px=128)
    mask = segment_lungs(ph.volume, ChainParams()).mask
    assert lesion_inclusion(mask, ph.lesion_mask) >= 0.95
    assert dice(mask, ph.lung_mask) >= 0.95


def test_classical_cap_consolidation_inclusion_floor() -> None:
    # Before the refinement the mask held 17% of these consolidations on average; a
    # consolidation filling a lobe against the heart or resting on the diaphragm is
    # still only partly recovered (see the next test), so this is a floor, not the target.
    shares = []
    for seed in _CAP_SEEDS:
        ph = make_phantom("cap", seed, n_slices=32, size_px=128)
        mask = segment_lungs(ph.volume, ChainParams()).mask
        shares.append(lesion_inclusion(mask, ph.lesion_mask))
    assert float(np.mean(shares)) >= 0.45


@pytest.mark.xfail(
    strict=True,
    reason="target not met: lobar consolidation against the heart or on the "
    "diaphragm looks like those organs to the classical method",
)
def test_classical_cap_consolidation_target() -> None:
    for seed in _CAP_SEEDS:
        ph = make_phantom("cap", seed, n_slices=32, size_px=128)
        assert lesion_inclusion(segment_lungs(ph.volume, ChainParams()).mask, ph.lesion_mask) >= 0.95


@pytest.mark.parametrize(
    "label,seed", [("non_pneumonia", 0), ("non_pneumonia", 1), ("covid19", 2), ("influenza", 3), ("cap", 4)]
)
def test_classical_does_not_swallow_heart_mediastinum_or_chest_wall(label: str, seed: int) -> None:
    ph = make_phantom(label, seed, n_slices=32, size_px=128)
    mask = segment_lungs(ph.volume, ChainParams()).mask
    assert dice(mask, ph.lung_mask) >= 0.95
    # Dense tissue outside the lung taken in (heart, mediastinum, chest wall, dome):
    # at most 2% of the lung's volume.
    taken = np.count_nonzero(mask & ~ph.lung_mask & (ph.volume.hu > ChainParams().classical_air_hu))
    assert taken <= 0.02 * np.count_nonzero(ph.lung_mask)


def _synthetic_chest(tumour_at: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """HU, body, lungs and a tumour on a small grid (z/y/x, 5 x 3 x 3 mm): a soft-tissue
    body with a rib ring, two air lungs and a 24-mm tumour inside the right lung against
    its lateral wall (``tumour_at="wall"``) or its medial side (``"mediastinum"``)."""
    nz, ny, nx = 24, 96, 96
    zz, yy, xx = np.mgrid[:nz, :ny, :nx].astype(np.float32)
    rho = ((yy - 48) / 40.0) ** 2 + ((xx - 48) / 44.0) ** 2
    body = np.broadcast_to(rho <= 1.0, (nz, ny, nx)).copy()
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)
    hu[(rho > 0.86) & (rho <= 0.94)] = 400.0  # ribs
    lungs = np.zeros((nz, ny, nx), bool)
    for cx in (26.0, 70.0):  # lateral edges just inside the ribs, 8 px of mediastinum between
        lungs |= (((yy - 48) / 27.0) ** 2 + ((xx - cx) / 18.0) ** 2 + ((zz - 12) / 11.0) ** 2) <= 1.0
    hu[lungs] = -850.0
    tx = 26.0 - 18.0 + 4.0 if tumour_at == "wall" else 26.0 + 18.0 - 4.0
    tumour = (((zz - 12) * 5.0) ** 2 + ((yy - 48) * 3.0) ** 2 + ((xx - tx) * 3.0) ** 2 <= 12.0**2) & lungs
    hu[tumour] = 30.0
    return hu, body, lungs, tumour


@pytest.mark.parametrize("tumour_at", ["wall", "mediastinum"])
def test_refinement_recovers_a_tumour_cut_out_of_a_unet_like_mask(tumour_at: str) -> None:
    hu, body, lungs, tumour = _synthetic_chest(tumour_at)
    unet_like = lungs & ~tumour  # what a U-Net that sees the tumour as non-lung returns
    out, dense = refine_lung_mask(unet_like, hu, body, (5.0, 3.0, 3.0), ChainParams(), closing_mm=0.0)
    assert lesion_inclusion(out, tumour) >= 0.95
    assert dense[tumour].mean() >= 0.95 and not dense[unet_like].any()
    # Nothing else joins: no rib, no mediastinum between the lungs; the tumour's edge
    # against the wall or mediastinum may move out by the one pixel it grows.
    mediastinum = np.zeros_like(lungs)
    mediastinum[:, 30:66, 45:51] = True
    assert not (out & (hu > 150)).any() and not (out & mediastinum & ~lungs).any()
    assert np.count_nonzero(out & ~lungs) <= 0.3 * np.count_nonzero(tumour)
    assert dice(out, lungs) >= 0.99


def test_refinement_drops_dense_tissue_outside_the_rib_cage_but_keeps_disease_inside() -> None:
    """A U-Net taught to keep consolidation in the lung may spill into an arm lying
    beside the chest: dense voxels outside the trunk's rib cage are not lung; dense
    disease inside it and the aerated lung stay."""
    hu, body, lungs, tumour = _synthetic_chest("wall")
    nz, ny, nx = hu.shape
    wide = np.zeros((nz, ny, nx + 24), np.float32) - 1000.0
    wide[:, :, 12 : 12 + nx] = hu
    big_body = np.zeros(wide.shape, bool)
    big_body[:, :, 12 : 12 + nx] = body
    arm = np.zeros(wide.shape, bool)
    arm[:, 36:60, 0:9] = True  # an arm 3 px (9 mm) of air apart from the chest
    wide[arm] = 40.0
    wide[:, 44:50, 3:6] = 500.0  # its humerus
    big_body |= arm
    big_lungs = np.zeros(wide.shape, bool)
    big_lungs[:, :, 12 : 12 + nx] = lungs
    spill = np.zeros(wide.shape, bool)
    spill[:, 40:56, 4:20] = True  # lung called by the network out through the wall into the arm
    spill &= wide > -500
    unet_like = big_lungs | spill
    out, _ = refine_lung_mask(unet_like, wide, big_body, (5.0, 3.0, 3.0), ChainParams(), closing_mm=0.0)
    assert not (out & arm).any()
    assert np.array_equal(out[:, :, 12 : 12 + nx] & lungs, lungs)  # aerated lung and tumour kept
    assert out[:, :, 12 : 12 + nx][tumour].all()


def test_refinement_keeps_a_clean_mask_and_validates_its_grid() -> None:
    hu, body, lungs, _ = _synthetic_chest("wall")
    hu[lungs] = -850.0
    out, dense = refine_lung_mask(lungs, hu, body, (5.0, 3.0, 3.0), ChainParams())
    assert np.array_equal(out, lungs) and not dense.any()
    empty, nothing = refine_lung_mask(np.zeros_like(lungs), hu, body, (5.0, 3.0, 3.0), ChainParams())
    assert not empty.any() and not nothing.any()
    with pytest.raises(InvalidInputError):
        refine_lung_mask(lungs[:2], hu, body, (5.0, 3.0, 3.0), ChainParams())


class _AirNet(torch.nn.Module):
    """A stand-in lung U-Net: lung = air inside the body, so like the classical threshold
    it cuts dense disease out of the lung."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = ChainParams()
        air_level = (p.classical_air_hu - p.hu_clip_min) / (p.hu_window[1] - p.hu_clip_min)
        air = x[:, 0].numpy() < air_level
        inside = fill_holes_per_slice(~air) & air  # air not connected to the slice border
        lung = torch.from_numpy(inside.astype(np.float32))
        return torch.stack([5.0 - 10.0 * lung, 10.0 * lung - 5.0], dim=1)


def test_unet_path_recovers_a_mass_the_network_cut_out() -> None:
    volume, lung, mass = _phantom_with_mass(2, "wall", 30, "right")
    params = ChainParams(unet_input_size=128, batch_size=4)
    plain = segment_lungs(volume, params).mask  # same HU rule, for comparison of Dice
    got = segment_lungs(volume, params, unet=_AirNet())
    assert got.method == "unet"
    assert lesion_inclusion(got.mask, mass) >= 0.95
    assert dice(got.mask, lung) >= 0.95 and dice(got.mask, plain) >= 0.95


def test_refinement_reads_head_to_feet_volumes_alike() -> None:
    # A series whose z index grows towards the feet (direction cosine -1 on z) gets the
    # same mask, flipped: the lung-above / lung-below rules follow the patient, not z.
    volume, _, mass = _phantom_with_mass(2, "wall", 30, "right")
    flipped = CTVolume(
        hu=np.ascontiguousarray(volume.hu[::-1]),
        spacing_mm=volume.spacing_mm,
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
    )
    a = segment_lungs(volume, ChainParams()).mask
    b = segment_lungs(flipped, ChainParams()).mask
    assert np.array_equal(a, b[::-1])
    assert lesion_inclusion(b[::-1], mass) >= 0.95


def test_lesion_burden_of_a_lesion_map() -> None:
    from pipeline.lesion_burden import measure_lesion_burden

    mask = np.zeros((4, 10, 10), bool)
    mask[:, 2:8, 2:8] = True  # 4 x 36 lung voxels
    lesion = np.zeros_like(mask)
    lesion[1, 2:5, 2:5] = True  # 9 voxels on slice 1
    volume = CTVolume(hu=np.zeros((4, 10, 10), np.float32), spacing_mm=(2.0, 0.5, 0.5))
    burden = measure_lesion_burden(volume, LungMask(mask=mask, method="unet", lesion=lesion))
    assert burden.lung_share == pytest.approx(9 / 144)
    assert burden.volume_ml == pytest.approx(9 * 0.5 / 1000)
    assert burden.slice_area_mm2.tolist() == [0.0, 2.25, 0.0, 0.0]
    assert burden.slices_with_lesion(2.0).tolist() == [False, True, False, False]
    assert measure_lesion_burden(volume, LungMask(mask=mask, method="classical")) is None
    with pytest.raises(InvalidInputError):
        LungMask(mask=mask, method="unet", lesion=lesion[:2])
