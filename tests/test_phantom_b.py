"""Phantom family B: output contract, determinism, masks, class patterns, varied looks,
independence from family A and the ``family=b`` data-set spec."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from pipeline.datasets import DatasetError, open_dataset
from pipeline.phantom import INFECTED_MIN_PIXELS, Phantom
from pipeline.phantoms import TruthB, build_phantom_b, make_phantom_b, phantom_b_grid
from pipeline.types import CLASS_NAMES, InvalidInputError

NZ, PX = 24, 96  # small: the module stays within some seconds
SEEDS = (3, 4, 5)
PHANTOMS_DIR = Path(__file__).resolve().parent.parent / "pipeline" / "phantoms"


@lru_cache(maxsize=None)
def built(label: str, seed: int, nz: int | None = NZ, px: int | None = PX) -> tuple[Phantom, TruthB]:
    return build_phantom_b(label, seed, nz, px)


def ph(label: str, seed: int) -> Phantom:
    return built(label, seed)[0]


def _first_seed(label: str, finding: str, nz: int = 16, px: int = 64) -> tuple[Phantom, TruthB]:
    """The first seed whose case shows ``finding`` (small grid: cheap to search)."""
    for seed in range(40):
        p, truth = built(label, seed, nz, px)
        if truth.findings.get(finding):
            return p, truth
    raise AssertionError(f"no {label} seed in 0..39 drew {finding!r}")


def test_same_arguments_same_phantom() -> None:
    a, b = make_phantom_b("covid19", 5, NZ, PX), make_phantom_b("covid19", 5, NZ, PX)
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert np.array_equal(a.lung_mask, b.lung_mask) and np.array_equal(a.lesion_mask, b.lesion_mask)
    assert a.infected_z == b.infected_z and a.volume.spacing_mm == b.volume.spacing_mm
    c = make_phantom_b("covid19", 6, NZ, PX)
    assert not np.array_equal(a.volume.hu, c.volume.hu)


def test_volume_contract() -> None:
    p = ph("cap", 3)
    v = p.volume
    assert isinstance(p, Phantom) and p.label == "cap" and p.seed == 3
    assert v.hu.dtype == np.float32 and v.shape == (NZ, PX, PX)
    assert p.lung_mask.dtype == bool and p.lesion_mask.dtype == bool
    assert p.lung_mask.shape == p.lesion_mask.shape == v.shape
    assert v.slice_numbers == tuple(range(1, NZ + 1))
    assert v.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    dz, dy, dx = v.spacing_mm
    assert dy == dx and 0.55 * 512 / PX <= dy <= 0.98 * 512 / PX
    # A given slice count covers the whole chest (about 22-37 cm): it sets the spacing.
    assert 200 < dz * NZ < 380
    # The image is centred on the isocentre; z index 0 is the most inferior slice.
    assert v.origin_mm[0] == pytest.approx(-(PX - 1) / 2 * dx)
    assert v.origin_mm[2] == pytest.approx(-(NZ - 1) * dz)
    # The lungs end well below the top slice and the abdomen shows at the bottom.
    lung_z = np.flatnonzero(p.lung_mask.any(axis=(1, 2)))
    assert lung_z.size > NZ // 2 and lung_z[-1] < NZ - 1


def test_hu_values_and_outside_fov() -> None:
    for seed in SEEDS:
        p, truth = built("non_pneumonia", seed)
        hu = p.volume.hu
        outside = truth.look["outside_hu"]
        assert outside in (-2048.0, -1024.0, -3024.0)
        corners = hu[:, 0, 0]
        assert np.all(corners == outside)  # the corners lie outside the reconstruction circle
        inside = hu[hu != outside]
        assert inside.min() >= -1024 and inside.max() <= 3071
        lung = hu[p.lung_mask]
        assert -920 < float(np.median(lung)) < -700  # aerated parenchyma with vessels
        assert float(np.percentile(hu, 99.5)) > 300  # bone is there


def test_drawn_grid_and_phantom_b_grid() -> None:
    seen_dz, seen_px = set(), set()
    for seed in range(12):
        shape, spacing = phantom_b_grid(seed)
        assert shape[1] == shape[2] and shape[1] in (256, 384, 512)
        assert 0.55 <= spacing[1] * shape[1] / 512 <= 0.98
        assert 0.5 < spacing[0] < 11.0
        seen_dz.add(round(spacing[0], 1))
        seen_px.add(round(spacing[1], 2))
    assert len(seen_dz) >= 4 and len(seen_px) >= 4
    # The cheap grid is the grid of the phantom (drawn slice count, given matrix).
    p = make_phantom_b("influenza", 2, None, 40)
    shape, spacing = phantom_b_grid(2, None, 40)
    assert p.volume.shape == shape and p.volume.spacing_mm == pytest.approx(spacing)


@pytest.mark.parametrize("label", CLASS_NAMES)
def test_masks_and_infected_slices(label: str) -> None:
    for seed in SEEDS:
        p = ph(label, seed)
        assert not (p.lesion_mask & ~p.lung_mask).any(), "lesions lie inside the lungs"
        assert p.lung_mask.sum() > 0.02 * p.lung_mask.size
        per_slice = p.lesion_mask.sum(axis=(1, 2))
        assert p.infected_z == tuple(int(z) for z in np.flatnonzero(per_slice > INFECTED_MIN_PIXELS))
        if label == "non_pneumonia":
            assert not p.lesion_mask.any() and p.infected_z == ()
        else:
            assert p.lesion_mask.sum() > 20


def test_lung_mask_has_two_lungs_and_excludes_the_trachea() -> None:
    p = ph("non_pneumonia", 4)
    mid = int(np.argmax(p.lung_mask.sum(axis=(1, 2))))
    labels, n = ndimage.label(p.lung_mask[mid])
    sizes = np.sort(np.bincount(labels.ravel())[1:])[::-1]
    assert n >= 2 and sizes[1] > 0.3 * sizes[0]
    # Upper slices: the trachea (air in the midline) is not lung.
    top = np.flatnonzero(p.lung_mask.any(axis=(1, 2)))[-1]
    hu = p.volume.hu[top]
    air = (hu < -900) & ~p.lung_mask[top]
    body = ndimage.binary_fill_holes(hu > -500)
    assert (air & body).any()


def test_cap_consolidation_denser_than_covid_ggo() -> None:
    cap = np.concatenate([ph("cap", s).volume.hu[ph("cap", s).lesion_mask] for s in SEEDS])
    covid = np.concatenate([ph("covid19", s).volume.hu[ph("covid19", s).lesion_mask] for s in SEEDS])
    assert float(cap.mean()) > float(covid.mean()) + 150
    assert -800 < float(np.median(covid)) < -300  # ground glass
    assert float(np.median(cap)) > -350  # consolidation (partial volume at 5 mm pixels)


def _pleural_distance(p: Phantom) -> np.ndarray:
    """Distance (mm) of every lung voxel to the outside of the lungs, slice by slice."""
    dy = p.volume.spacing_mm[1]
    return np.stack([ndimage.distance_transform_edt(m) * dy for m in p.lung_mask])


def test_class_patterns() -> None:
    """COVID-19 lesions are peripheral and bilateral; CAP is mostly one-sided; influenza
    is bilateral."""
    covid_depth, lung_depth, both = [], [], {"covid19": 0, "influenza": 0, "cap": 0}
    for seed in SEEDS:
        for label in ("covid19", "influenza", "cap"):
            p = ph(label, seed)
            half = p.volume.shape[2] // 2
            left, right = p.lesion_mask[..., half:].sum(), p.lesion_mask[..., :half].sum()
            both[label] += int(min(left, right) > 0.1 * max(left, right))
            if label == "covid19":
                d = _pleural_distance(p)
                covid_depth.append(d[p.lesion_mask].mean())
                lung_depth.append(d[p.lung_mask].mean())
    assert np.mean(covid_depth) < np.mean(lung_depth)
    assert both["covid19"] >= 2 and both["influenza"] >= 2 and both["cap"] <= 2


def test_effusion_lies_outside_the_lung_mask() -> None:
    p, truth = _first_seed("cap", "effusion")
    eff = truth.effusion_mask
    assert eff.any()
    assert not (eff & p.lung_mask).any() and not (eff & p.lesion_mask).any()
    fluid = p.volume.hu[ndimage.binary_erosion(eff, iterations=1) if ndimage.binary_erosion(eff).any() else eff]
    assert -60 < float(np.median(fluid)) < 80  # water-like


def test_non_pneumonia_tumour_is_in_the_lung_mask_not_a_lesion() -> None:
    p, truth = _first_seed("non_pneumonia", "tumour")
    mass = truth.mass_mask
    assert mass.any() and not (mass & ~p.lung_mask).any()
    assert not p.lesion_mask.any()
    assert float(np.median(p.volume.hu[mass])) > -200  # solid tissue
    assert 20 <= truth.findings["tumour_diameter_mm"] <= 60


def test_looks_vary_across_seeds() -> None:
    looks = [built("non_pneumonia", s)[1].look for s in range(8)]
    medians = [
        float(np.median(built("non_pneumonia", s)[0].volume.hu[built("non_pneumonia", s)[0].lung_mask]))
        for s in range(8)
    ]
    assert len({round(lk["noise_sd"], 1) for lk in looks}) >= 6
    assert all(8.0 <= lk["noise_sd"] <= 60.0 for lk in looks)
    assert max(medians) - min(medians) > 40
    assert all(-880 <= lk["lung_median_hu"] <= -780 for lk in looks)
    assert len({lk["kernel"] for lk in looks}) >= 2
    assert len({lk["phase"] for lk in looks}) >= 2
    spacings = {round(phantom_b_grid(s)[1][0], 2) for s in range(8)}
    assert len(spacings) >= 4


def test_measured_noise_follows_the_drawn_sd() -> None:
    """Noise in the air in front of the patient matches the drawn sd (the upper half of
    the distribution: values below -1024 are clipped, as scanners do)."""
    for seed in (6, 9):
        p, truth = built("non_pneumonia", seed, 16, 128)
        hu = p.volume.hu
        n = hu.shape[1]
        cols = slice(n // 3, 2 * n // 3)
        body_top = int(np.argmax((hu[:, :, cols] > -500).any(axis=(0, 2))))
        j = np.arange(n) - (n - 1) / 2
        inside = j[:, None] ** 2 + j[None, :] ** 2 < (n / 2 - 2) ** 2  # the reconstruction circle
        rows_in = np.flatnonzero(inside[:, cols].all(axis=1))
        air = hu[:, rows_in[0] : body_top - 3, cols]
        assert air.size > 500
        sd = float(np.percentile(air, 84) - np.percentile(air, 50))
        assert 0.8 * truth.look["noise_sd"] < sd < 1.25 * truth.look["noise_sd"]


@pytest.mark.parametrize(
    "args",
    [
        ("flu", 1, NZ, PX),
        ("cap", -1, NZ, PX),
        ("cap", True, NZ, PX),
        ("cap", 1, 4, PX),
        ("cap", 1, NZ, 16),
        ("cap", 1, NZ, 96.5),
    ],
)
def test_bad_arguments(args: tuple) -> None:
    with pytest.raises(InvalidInputError):
        make_phantom_b(*args)


def test_family_b_imports_only_the_shared_type_from_family_a() -> None:
    for path in sorted(PHANTOMS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.endswith("phantom")
                and node.level >= 1
                and node.module != "phantoms"
            ):
                names = {a.name for a in node.names}
                assert names <= {"Phantom", "INFECTED_MIN_PIXELS"}, f"{path.name} imports {names} from family A"
            if isinstance(node, ast.Import):
                assert not any(a.name == "pipeline.phantom" for a in node.names), path.name
        assert "pipeline.phantom import" not in path.read_text(encoding="utf-8"), path.name


def test_family_b_dataset_spec() -> None:
    ds = open_dataset("phantom:count=4,seed=5,slices=16,size=64,family=b")
    d = ds.describe()
    assert d["generator"] == "pipeline.phantoms.make_phantom_b" and d["family"] == "b"
    case = ds[0]
    assert case.source.startswith("make_phantom_b(") and case.extras["family"] == "b"
    vol, lung, lesion, lobes = case.load()
    ref = make_phantom_b(case.label, int(case.extras["seed"]), 16, 64)
    assert np.array_equal(vol.hu, ref.volume.hu) and np.array_equal(lung, ref.lung_mask)
    assert np.array_equal(lesion, ref.lesion_mask) and np.array_equal(lobes, ref.lobe_mask)
    # The cohort (ids, labels, seeds) is shared with family A.
    a = open_dataset("phantom:count=4,seed=5,slices=16,size=64")
    assert a.describe()["generator"] == "pipeline.phantom.make_phantom" and a.describe()["family"] == "a"
    assert [(c.case_id, c.label, c.extras["seed"]) for c in a] == [(c.case_id, c.label, c.extras["seed"]) for c in ds]


@pytest.mark.parametrize("spec", ["phantom:count=2,family=c", "phantom:count=2,family=", "phantom:count=2,family=A2"])
def test_bad_family_is_a_dataset_error(spec: str) -> None:
    with pytest.raises(DatasetError, match="family"):
        open_dataset(spec)
