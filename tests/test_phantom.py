"""Synthetic chest CT phantoms: determinism, HU ranges, masks, class-specific lesions."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from scipy import ndimage

from pipeline.phantom import (
    INFECTED_MIN_PIXELS,
    Phantom,
    make_phantom,
    phantom_cohort,
    phantom_grid,
)
from pipeline.types import CLASS_NAMES, InvalidInputError

NZ, PX = 32, 112  # small: the whole module stays within a few seconds
SEEDS = (11, 12, 13)


@lru_cache(maxsize=None)
def ph(label: str, seed: int, nz: int = NZ, px: int = PX) -> Phantom:
    return make_phantom(label, seed, nz, px)


def test_same_arguments_same_phantom():
    a, b = make_phantom("covid19", 5, NZ, PX), make_phantom("covid19", 5, NZ, PX)
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert np.array_equal(a.lung_mask, b.lung_mask)
    assert np.array_equal(a.lesion_mask, b.lesion_mask)
    assert a.infected_z == b.infected_z and a.volume.spacing_mm == b.volume.spacing_mm
    c = make_phantom("covid19", 6, NZ, PX)
    assert not np.array_equal(a.volume.hu, c.volume.hu)


def test_volume_fields():
    p = ph("cap", 11)
    v = p.volume
    assert v.hu.dtype == np.float32 and v.shape == (NZ, PX, PX)
    assert v.slice_numbers == tuple(range(1, NZ + 1))
    dz, dy, dx = v.spacing_mm
    assert dy == dx
    # 0.6-0.9 mm on a 512 matrix, scaled to this matrix.
    assert 0.6 * 512 / PX <= dy <= 0.9 * 512 / PX
    assert dz > 0
    assert p.lung_mask.dtype == bool and p.lesion_mask.dtype == bool
    assert p.label == "cap" and p.seed == 11


def test_hu_ranges_of_the_tissues():
    p = ph("non_pneumonia", 12)
    hu = p.volume.hu
    assert hu.min() >= -1024 and hu.max() <= 3071
    corners = hu[:, :4, :4]
    assert abs(float(np.median(corners)) + 1000) < 30  # air outside the body
    lung = hu[p.lung_mask]
    assert -930 < float(np.median(lung)) < -780  # aerated parenchyma
    # Vessels: some lung voxels are much denser than the parenchyma.
    assert 0.002 < float(np.mean(lung > -500)) < 0.2
    body = hu[(hu > -200) & (hu < 200)]
    assert body.size > 0.15 * hu.size  # soft tissue, muscle, fat, heart
    assert np.mean(hu > 300) > 0.002  # ribs and spine
    assert np.any((hu > -150) & (hu < -60))  # fat


def test_lesions_inside_lungs_and_infected_slices_match():
    for label in CLASS_NAMES:
        for seed in SEEDS:
            p = ph(label, seed)
            assert not np.any(p.lesion_mask & ~p.lung_mask), (label, seed)
            per_slice = p.lesion_mask.sum(axis=(1, 2))
            assert p.infected_z == tuple(int(z) for z in np.flatnonzero(per_slice > INFECTED_MIN_PIXELS))


def test_non_pneumonia_has_no_lesions_and_pneumonias_do():
    for seed in SEEDS:
        assert not ph("non_pneumonia", seed).lesion_mask.any()
        for label in ("cap", "influenza", "covid19"):
            p = ph(label, seed)
            assert p.lesion_mask.sum() > 200, (label, seed)
            assert len(p.infected_z) >= 1, (label, seed)


def test_anatomy_depends_on_seed_not_label():
    a, b = ph("non_pneumonia", 13), ph("covid19", 13)
    assert np.array_equal(a.lung_mask, b.lung_mask)
    # Only the lesions (and their soft edges) differ; a non-pneumonia nodule may too.
    differ = ~np.isclose(a.volume.hu, b.volume.hu)
    near = ndimage.binary_dilation(b.lesion_mask, iterations=3)
    assert differ.any() and (differ & ~near).sum() <= 200


def _lesion_hu(label: str) -> np.ndarray:
    return np.concatenate([ph(label, s).volume.hu[ph(label, s).lesion_mask] for s in SEEDS])


def test_lesion_density_by_class():
    covid = float(np.median(_lesion_hu("covid19")))
    cap = float(np.median(_lesion_hu("cap")))
    assert -720 < covid < -250  # ground glass
    assert cap > -150  # consolidation
    assert cap > covid + 200


def _mean_depth_mm(label: str) -> float:
    """Mean distance of lesion voxels from the lung surface (mm)."""
    depths = []
    for s in SEEDS:
        p = ph(label, s)
        sp = p.volume.spacing_mm
        inner = ndimage.distance_transform_edt(p.lung_mask | p.lesion_mask, sampling=(sp[0] * 4, sp[1], sp[2]))
        depths.append(inner[p.lesion_mask])
    return float(np.mean(np.concatenate(depths)))


def test_covid_is_peripheral_and_influenza_central():
    assert _mean_depth_mm("covid19") < _mean_depth_mm("influenza")


def test_covid_bilateral_and_lower_lobes():
    bilateral = 0
    lower = 0
    for s in SEEDS + (14, 15):
        p = ph("covid19", s)
        lab, n = ndimage.label(p.lung_mask)
        sizes = ndimage.sum(p.lung_mask, lab, range(1, n + 1))
        lungs = np.argsort(sizes)[-2:] + 1  # the two lungs
        hit = [np.any(p.lesion_mask & (lab == k)) for k in lungs]
        bilateral += all(hit)
        # z index 0 is inferior: lesions sit lower than the lung's centre of mass.
        zl = np.nonzero(p.lesion_mask)[0].mean()
        zc = np.nonzero(p.lung_mask)[0].mean()
        lower += zl < zc
    assert bilateral >= 3 and lower >= 3


def test_influenza_patches_are_many_and_small():
    counts, sizes = [], []
    for s in SEEDS:
        lab, n = ndimage.label(ph("influenza", s).lesion_mask)
        counts.append(n)
        sizes.extend(ndimage.sum(np.ones_like(lab), lab, range(1, n + 1)))
    assert np.mean(counts) >= 4
    assert np.median(sizes) < np.mean([ph("cap", s).lesion_mask.sum() for s in SEEDS])


def test_cap_consolidation_has_air_bronchograms_or_is_dense():
    dark = 0
    for s in SEEDS + (14, 15):
        p = ph("cap", s, NZ, 160)
        hu = p.volume.hu[p.lesion_mask]
        dark += np.mean(hu < -600) > 0.002  # air in bronchi inside consolidation
    assert dark >= 2


def test_airways_are_outside_the_lung_mask():
    p = ph("non_pneumonia", 11)
    air = p.volume.hu < -900
    lab, n = ndimage.label(air)
    border = set(
        np.unique(
            np.concatenate([lab[:, 0, :].ravel(), lab[:, -1, :].ravel(), lab[:, :, 0].ravel(), lab[:, :, -1].ravel()])
        )
    )
    inner = np.isin(lab, [k for k in range(1, n + 1) if k not in border])
    # Trachea and main bronchi: enclosed air that is not lung.
    airway = inner & ~p.lung_mask
    assert airway.sum() > 20
    top = p.volume.shape[0] - 1  # the top slice is above the lungs: only the trachea is air
    assert not p.lung_mask[top].any() and airway[top].any()


def test_drawn_grid_varies_with_the_seed():
    grids = [phantom_grid(s) for s in range(40)]
    thickness = [g[1][0] for g in grids]
    sizes = {g[0][1] for g in grids}
    assert min(thickness) >= 1.0 and max(thickness) <= 5.0 and max(thickness) - min(thickness) > 2
    assert len(sizes) >= 3
    for (_, ny, nx), (_, dy, _) in grids:
        assert ny == nx and 0.6 * 512 / nx <= dy <= 0.9 * 512 / nx + 1e-9
    # Fixed counts are honoured and keep the anatomy's coverage.
    (nz, ny, nx), (dz, _, _) = phantom_grid(3, 40, 96)
    (nz2, _, _), (dz2, _, _) = phantom_grid(3, 80, 96)
    assert (nz, ny, nx, nz2) == (40, 96, 96, 80) and abs(dz - 2 * dz2) < 1e-9
    assert phantom_grid(3, 40, 96)[0] == ph("cap", 3, 40, 96).volume.shape


def test_bad_arguments_are_refused():
    with pytest.raises(InvalidInputError, match="label"):
        make_phantom("pneumonia", 1, NZ, PX)
    with pytest.raises(InvalidInputError, match="seed"):
        make_phantom("cap", -1, NZ, PX)
    with pytest.raises(InvalidInputError, match="n_slices"):
        make_phantom("cap", 1, 2, PX)
    with pytest.raises(InvalidInputError, match="size_px"):
        make_phantom("cap", 1, NZ, 8)


def test_cohort_is_deterministic_and_follows_the_mix():
    a = list(phantom_cohort(40, 7))
    assert a == list(phantom_cohort(40, 7))
    assert [c.label for c in a].count("covid19") == 10
    assert len({c.seed for c in a}) == 40 and len({c.case_id for c in a}) == 40
    assert len({c.patient_id for c in a}) == 40  # one case per patient by default
    b = list(phantom_cohort(40, 8))
    assert not {c.seed for c in a} & {c.seed for c in b}  # neighbouring cohort seeds don't collide
    only = list(phantom_cohort(9, 1, mix=(0, 1, 0, 2)))
    assert sorted(c.label for c in only) == ["cap"] * 3 + ["covid19"] * 6
    multi = list(phantom_cohort(10, 1, cases_per_patient=3))
    assert len(multi) == 10 and len({c.patient_id for c in multi}) == 4
    for pid in {c.patient_id for c in multi}:
        assert len({c.label for c in multi if c.patient_id == pid}) == 1
    with pytest.raises(InvalidInputError, match="mix"):
        list(phantom_cohort(4, 1, mix=(1, 1)))


def test_cap_effusion_is_fluid_outside_the_lung_mask():
    # Seed 15 draws an effusion (CAP draws one in about a third of cases); the anatomy of
    # a seed does not depend on the label, so the non-pneumonia lung is the reference.
    cap, clean = ph("cap", 15), ph("non_pneumonia", 15)
    removed = clean.lung_mask & ~cap.lung_mask
    assert not np.any(cap.lung_mask & ~clean.lung_mask)
    assert removed.sum() > 200
    assert -40 < float(np.median(cap.volume.hu[removed])) < 60  # fluid, not air
    # Fluid lies in the dependent (posterior, high row index) part of the lung.
    rows = np.nonzero(removed)[1]
    assert rows.mean() > np.nonzero(clean.lung_mask)[1].mean()
    # No effusion in most seeds: the lung mask is the same as without pneumonia.
    assert np.array_equal(ph("cap", 11).lung_mask, ph("non_pneumonia", 11).lung_mask)


def test_one_seed_same_anatomy_and_lesions_at_every_matrix_size():
    # (Small influenza patches are a few voxels at 80 px: their rasterised volume varies
    # too much to compare; their placement is the same, as for every class.)
    for label in ("covid19", "cap"):
        small, large = ph(label, 12, 24, 80), ph(label, 12, 48, 160)
        ml = [p.volume.voxel_volume_ml for p in (small, large)]
        lung = [p.lung_mask.sum() * m for p, m in zip((small, large), ml, strict=True)]
        lesion = [p.lesion_mask.sum() * m for p, m in zip((small, large), ml, strict=True)]
        assert lung[0] == pytest.approx(lung[1], rel=0.03)
        assert lesion[0] == pytest.approx(lesion[1], rel=0.1)
        centres = []
        for p in (small, large):
            z, y, x = np.nonzero(p.lesion_mask)
            # Voxel centres sit half a voxel in from the edge of the covered range.
            centres.append((np.array([z.mean(), y.mean(), x.mean()]) + 0.5) * np.array(p.volume.spacing_mm))
        assert np.linalg.norm(centres[0] - centres[1]) < 6.0  # mm (a slice of the coarse one is ~12 mm)
