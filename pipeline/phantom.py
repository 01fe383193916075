"""Synthetic chest CT phantoms with ground truth (lungs, lesions by class).

A phantom is built analytically in millimetres, then sampled on a voxel grid, so that a
128-pixel and a 512-pixel phantom of one seed show the same anatomy. Every shape is a
closed-form expression evaluated with numpy broadcasting: slice by slice for the body
(2-D temporaries stay in cache), in a bounding box for each tube and lesion. No
per-voxel Python loops: 40x128x128 takes about 0.2 s, 300x512x512 about 2-3 s (CPU).

Axes are z/y/x as everywhere in ``pipeline``. The patient frame is LPS with the identity
direction: +x is the patient's left (column 0 is the patient's right), +y is posterior
(row 0 is anterior), +z is superior, so z index 0 is the most inferior slice and the
apex of the lungs is near the last slice. Internally the builder measures height as
``zz`` in millimetres *down* from the top of the scanned range, which is how a
radiologist reads the chest (apex first).

Randomness comes from independent streams keyed by (seed, stream): the anatomy depends
on the seed only, the lesions on (seed, label). ``n_slices`` and ``size_px`` change the
sampling grid, not what is drawn: random placements (vessel end points, lesion centres)
are checked against a fixed coarse reference grid, so one seed shows the same vessels
and lesions at every matrix size. The same arguments always give the same phantom.

Classes (CLASS_NAMES):

- ``covid19``: bilateral, peripheral and subpleural ground-glass opacities with crazy
  paving, lower-lobe and posterior predominance; sometimes a consolidative core.
- ``cap``: lobar or segmental consolidation with air bronchograms, mostly one-sided,
  sometimes a pleural effusion (fluid, outside the lung mask).
- ``influenza``: many small peribronchovascular patches and small nodules, diffuse.
- ``non_pneumonia``: clean lungs, sometimes one small solid nodule (not a lesion of
  infection: it is not in ``lesion_mask``).

Some influenza cases carry a few peripheral patches and some COVID-19 cases a few
peribronchovascular ones, so that the classes overlap as they do in real scans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from .params import INFECTED_SLICE_MIN_PIXELS
from .projection import LocalizerGeometry, project_localizer
from .types import CLASS_NAMES, CTVolume, InvalidInputError, Radiograph

__all__ = [
    "Phantom",
    "CohortCase",
    "make_phantom",
    "phantom_cohort",
    "phantom_grid",
    "INFECTED_MIN_PIXELS",
]

#: A slice is "infected" when it holds more than this many lesion pixels (the one rule).
INFECTED_MIN_PIXELS = INFECTED_SLICE_MIN_PIXELS
#: The localizer of every phantom (``Phantom.localizer``): a clinical CT's scout geometry
#: with the quantum noise of a low-dose scout.
PHANTOM_LOCALIZER = LocalizerGeometry(photons_per_pixel=2.0e5)

# --- Named constants (HU values and anatomical proportions) --------------------------
HU_AIR = -1000.0
HU_FAT = -100.0
HU_MUSCLE = 50.0
HU_SOFT = 40.0  # mediastinum, heart (non-contrast blood and myocardium), vessels
HU_LIVER = 60.0
HU_FLUID = 12.0  # pleural effusion, spinal canal
HU_MARROW = 250.0  # cancellous bone
HU_CORTEX = 850.0  # cortical bone
HU_AIRWAY_LUMEN = -985.0
HU_BRONCHOGRAM = -900.0  # air in a bronchus surrounded by consolidation
HU_MIN, HU_MAX = -1024.0, 3071.0

#: Drawn values when the caller leaves them to the seed.
SIZE_PX_CHOICES = (192, 256, 320, 384, 512)
THICKNESS_MM_RANGE = (1.0, 5.0)
#: Pixel spacing of a 512 matrix; other matrices scale it by 512 / size_px.
PIXEL_MM_AT_512 = (0.6, 0.9)
REFERENCE_MATRIX = 512
#: Smallest vessel radius of the anatomy, mm, and the smallest drawn radius as a fraction
#: of the pixel size (thinner would vanish in partial volume).
VESSEL_MIN_RADIUS_MM = 0.6
MIN_VESSEL_RADIUS_PX = 0.35
#: Random points inside each lung that each vessel tree (arteries, veins) reaches.
VESSEL_TARGETS = 150
#: The reference grid on which random placements are checked (see make_phantom).
REF_SIZE_PX, REF_SLICE_MM = 96, 4.0


@dataclass(frozen=True)
class Phantom:
    """A synthetic chest CT and its ground truth.

    ``lung_mask`` (bool z/y/x) covers both lungs including the vessels and small airways
    inside them, and excludes the trachea, the main bronchi and any pleural effusion.
    ``lesion_mask`` (bool z/y/x) marks the lesions of infection; it lies inside
    ``lung_mask``. ``infected_z`` holds the z indices with more than
    ``INFECTED_MIN_PIXELS`` lesion pixels. ``lobe_mask`` (uint8 z/y/x, or None when a
    generator draws no lobes) labels every lung voxel with its lobe, 1-5 in the order
    of ``pipeline.severity.LOBES`` (right upper, middle, lower; left upper, lower), and
    is 0 outside ``lung_mask``: truth only, the image does not depend on it.
    """

    volume: CTVolume
    lung_mask: np.ndarray
    lesion_mask: np.ndarray
    label: str
    infected_z: tuple[int, ...]
    seed: int
    lobe_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = self.volume.shape
        if self.lung_mask.shape != shape or self.lesion_mask.shape != shape:
            raise InvalidInputError(
                f"Phantom masks {self.lung_mask.shape}/{self.lesion_mask.shape} do not match volume {shape}"
            )
        if self.lobe_mask is not None and (self.lobe_mask.shape != shape or self.lobe_mask.dtype != np.uint8):
            raise InvalidInputError(f"Phantom lobe_mask must be uint8 of the volume's shape {shape}")
        if self.label not in CLASS_NAMES:
            raise InvalidInputError(f"Phantom label {self.label!r} is not one of {CLASS_NAMES}")

    def localizer(self, geometry: LocalizerGeometry | None = None) -> Radiograph:
        """The CT localizer the scanner would have taken of this phantom: the AP projection
        of its volume with a clinical CT's fan-beam geometry and quantum noise seeded by the
        phantom's seed (pipeline.projection; the same for both phantom families)."""
        return project_localizer(self.volume, geometry or PHANTOM_LOCALIZER, seed=self.seed)


class CohortCase(NamedTuple):
    """One case of a phantom cohort: ``make_phantom(label, seed)`` builds it."""

    case_id: str
    label: str
    seed: int

    @property
    def patient_id(self) -> str:
        """The patient the case belongs to (the case id up to its scan suffix)."""
        return self.case_id.rsplit("-s", 1)[0]


# --- Random streams ----------------------------------------------------------------
_STREAM_GRID, _STREAM_ANATOMY, _STREAM_TREES, _STREAM_LESIONS, _STREAM_NOISE = range(5)
#: Drawn after the others existed: the fissures of the lobe truth. A stream of its own, so
#: that no earlier draw (and no image) changed when lobes were added.
_STREAM_LOBES = 5


def _rng(seed: int, stream: int, extra: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(seed) >> 32, stream, extra])


# --- Geometry helpers ----------------------------------------------------------------


@dataclass
class _Grid:
    """Voxel grid and the millimetre coordinates of voxel centres (broadcastable)."""

    nz: int
    ny: int
    nx: int
    dz: float  # slice spacing, mm
    dxy: float  # pixel spacing, mm
    off_u: float  # body centre offset from the image centre, mm (x)
    off_v: float  # (y)
    zz: np.ndarray  # (nz,1,1) mm down from the top of the scanned range
    v: np.ndarray  # (1,ny,1) mm, + posterior, relative to the body centre
    u: np.ndarray  # (1,1,nx) mm, + patient's left, relative to the body centre

    def index_of(self, zz: float, v: float, u: float) -> tuple[float, float, float]:
        """Fractional voxel index (k, j, i) of a point in builder millimetres."""
        k = (self.nz - 1) - zz / self.dz
        j = (v + self.off_v) / self.dxy + (self.ny - 1) / 2.0
        i = (u + self.off_u) / self.dxy + (self.nx - 1) / 2.0
        return k, j, i

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Voxel slices covering the mm box [lo, hi] (zz, v, u), or None if outside."""
        k0, j0, i0 = self.index_of(*lo)
        k1, j1, i1 = self.index_of(*hi)
        ks = sorted((k0, k1))
        out = []
        for (a, b), n in ((ks, self.nz), ((j0, j1), self.ny), ((i0, i1), self.nx)):
            s, e = max(int(math.floor(a)), 0), min(int(math.ceil(b)) + 1, n)
            if s >= e:
                return None
            out.append(slice(s, e))
        return out[0], out[1], out[2]

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.zz[sl[0]], self.v[:, sl[1]], self.u[:, :, sl[2]]


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _rotate(vec: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of ``vec`` about unit ``axis``."""
    c, s = math.cos(angle), math.sin(angle)
    return vec * c + np.cross(axis, vec) * s + axis * float(np.dot(axis, vec)) * (1 - c)


def _perpendicular(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r = rng.normal(size=3)
    return _unit(r - d * float(np.dot(r, d)))


class _Segment(NamedTuple):
    p0: np.ndarray  # (zz, v, u) mm
    p1: np.ndarray
    r0: float
    r1: float
    generation: int


def _segment_fraction(
    grid: _Grid, seg: _Segment, extra_mm: float = 0.0
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Partial-volume occupancy (0..1) of a tapered tube in its bounding box."""
    p0, p1 = seg.p0, seg.p1
    rmax = max(seg.r0, seg.r1) + extra_mm + grid.dxy
    # Bounding box in voxel indices (inlined: this runs for every one of ~1,000 tubes).
    zlo, zhi = min(p0[0], p1[0]) - rmax - grid.dz, max(p0[0], p1[0]) + rmax + grid.dz
    k0 = max(int(math.floor((grid.nz - 1) - zhi / grid.dz)), 0)
    k1 = min(int(math.ceil((grid.nz - 1) - zlo / grid.dz)) + 1, grid.nz)
    cj, ci = (grid.ny - 1) / 2.0 + grid.off_v / grid.dxy, (grid.nx - 1) / 2.0 + grid.off_u / grid.dxy
    j0 = max(int(math.floor((min(p0[1], p1[1]) - rmax) / grid.dxy + cj)), 0)
    j1 = min(int(math.ceil((max(p0[1], p1[1]) + rmax) / grid.dxy + cj)) + 1, grid.ny)
    i0 = max(int(math.floor((min(p0[2], p1[2]) - rmax) / grid.dxy + ci)), 0)
    i1 = min(int(math.ceil((max(p0[2], p1[2]) + rmax) / grid.dxy + ci)) + 1, grid.nx)
    if k0 >= k1 or j0 >= j1 or i0 >= i1:
        return None
    d0, d1, d2 = (float(x) for x in (p1 - p0))
    dd = d0 * d0 + d1 * d1 + d2 * d2 or 1e-6
    pz = grid.zz[k0:k1] - float(p0[0])
    pv = grid.v[:, j0:j1] - float(p0[1])
    pu = grid.u[:, :, i0:i1] - float(p0[2])
    t = np.clip((pz * (d0 / dd) + pv * (d1 / dd)) + pu * (d2 / dd), 0.0, 1.0)
    dist = np.sqrt((pz - t * d0) ** 2 + (pv - t * d1) ** 2 + (pu - t * d2) ** 2)
    # Partial volume across about one pixel in plane: thin vessels fade, as on real CT.
    inv = 1.0 / grid.dxy
    frac = (seg.r0 + extra_mm) * inv + 0.5 + t * ((seg.r1 - seg.r0) * inv) - dist * inv
    np.clip(frac, 0.0, 1.0, out=frac)
    return (slice(k0, k1), slice(j0, j1), slice(i0, i1)), frac


def _grow_tree(
    rng: np.random.Generator,
    root: np.ndarray,
    direction: np.ndarray,
    radius: float,
    min_radius: float,
    length_scale: float,
    origin: np.ndarray,
    generation: int = 0,
    out: list[_Segment] | None = None,
) -> list[_Segment]:
    """An asymmetric branching tree of tapered tubes, as pulmonary vessels branch.

    Each node continues with a major child (slightly thinner, small turn) and gives off
    a minor child (much thinner, wide angle): the tree reaches the pleura with few
    segments. Iterative; stops where the radius falls below ``min_radius``.
    """
    out = [] if out is None else out
    stack = [(root, _unit(direction), radius, generation)]
    while stack:
        p0, d, r, g = stack.pop()
        length = r * rng.uniform(5.0, 9.0) * length_scale
        r_end = r * 0.92
        p1 = p0 + d * length
        out.append(_Segment(p0, p1, r, r_end, g))
        if g >= 14:
            continue
        axis = _perpendicular(d, rng)
        for ratio, angle in (
            (rng.uniform(0.8, 0.9), rng.uniform(0.1, 0.35)),
            (rng.uniform(0.45, 0.7), -rng.uniform(0.6, 1.1)),
        ):
            r_child = r_end * ratio
            if r_child < min_radius:
                continue
            nd = _rotate(d, axis, angle)
            # Branches keep heading away from the hilum, so the tree fills the lung.
            nd = _unit(nd + 0.25 * _unit(p1 - origin))
            stack.append((p1, nd, r_child, g + 1))
    return out


def _target_tree(
    rng: np.random.Generator, root: np.ndarray, targets: np.ndarray, root_radius: float, min_radius: float
) -> list[_Segment]:
    """A vessel tree from ``root`` that reaches every target point (zz, v, u mm).

    Recursive bisection of the target set: each node heads part way towards the
    centroid of its targets, then splits them along their longest axis. Radii follow the
    number of targets served (Murray-like exponent), so the tree fills the lung with
    trunks near the hilum and thin branches at the periphery.
    """
    out: list[_Segment] = []
    total = len(targets)
    radius_of = lambda n: max(root_radius * (n / total) ** 0.42, min_radius)  # noqa: E731
    stack = [(root, targets, 0)]
    while stack:
        p0, pts, g = stack.pop()
        n = len(pts)
        r0 = radius_of(n)
        if n == 1:
            out.append(_Segment(p0, pts[0], r0, r0 * 0.8, g))
            continue
        centroid = pts.mean(axis=0)
        step = rng.uniform(0.3, 0.55) if g else rng.uniform(0.15, 0.3)
        p1 = p0 + (centroid - p0) * step + rng.normal(size=3) * 1.5
        out.append(_Segment(p0, p1, r0, r0 * 0.95, g))
        centred = pts - centroid
        axis = np.linalg.eigh(centred.T @ centred)[1][:, -1]
        order = np.argsort(centred @ axis)
        cut = int(np.clip(n * rng.uniform(0.35, 0.65), 1, n - 1))
        stack.append((p1, pts[order[:cut]], g + 1))
        stack.append((p1, pts[order[cut:]], g + 1))
    return out


def _lung_targets(rng: np.random.Generator, grid: _Grid, lung_side: np.ndarray, side: int, count: int) -> np.ndarray:
    """``count`` random points (zz, v, u mm) inside one lung, from a coarse sample."""
    step = max(1, int(round(4.0 / grid.dxy)))
    zstep = max(1, int(round(4.0 / grid.dz)))
    coarse = lung_side[::zstep, ::step, ::step] == side
    idx = np.flatnonzero(coarse)
    if idx.size == 0:
        return np.zeros((0, 3))
    pick = rng.choice(idx, size=min(count, idx.size), replace=False)
    k, j, i = np.unravel_index(pick, coarse.shape)
    k, j, i = k * zstep, j * step, i * step
    zz = grid.zz[k, 0, 0] + rng.uniform(-0.5, 0.5, size=k.size) * grid.dz
    v = grid.v[0, j, 0] + rng.uniform(-0.5, 0.5, size=j.size) * grid.dxy * step
    u = grid.u[0, 0, i] + rng.uniform(-0.5, 0.5, size=i.size) * grid.dxy * step
    return np.stack([zz, v, u], axis=1).astype(float)


# --- Anatomy -------------------------------------------------------------------------


@dataclass
class _Anatomy:
    thorax_a: float  # inner rib cage half-width at mid-chest, mm
    thorax_b: float  # inner rib cage half-depth (AP), mm
    rib_w: float
    muscle: float
    fat: float
    med_half: float  # half-width of the mediastinum, mm
    lung_height: float
    margin_top: float
    margin_bottom: float
    t_dome_right: float
    t_dome_left: float
    heart_u: float
    heart_v: float
    heart_a: float
    heart_b: float
    heart_t0: float
    spine_r: float
    aorta_r: float
    trachea_r: float
    carina_t: float
    hilum_t: float
    rib_pitch: float
    rib_height: float
    rib_drop: float
    rib_phase: float
    lung_shape: np.ndarray  # Fourier coefficients of the lung outline, per side
    parenchyma_hu: float
    gravity_hu: float
    noise_sd: float
    pixel_mm_512: float


def _draw_anatomy(seed: int) -> _Anatomy:
    r = _rng(seed, _STREAM_ANATOMY)
    return _Anatomy(
        thorax_a=r.uniform(112, 148),
        thorax_b=r.uniform(78, 108),
        rib_w=r.uniform(8, 12),
        muscle=r.uniform(8, 22),
        fat=r.uniform(4, 28),
        med_half=r.uniform(14, 24),
        lung_height=r.uniform(195, 280),
        margin_top=r.uniform(8, 30),
        margin_bottom=r.uniform(18, 50),
        t_dome_right=r.uniform(0.58, 0.70),
        t_dome_left=r.uniform(0.68, 0.78),
        heart_u=r.uniform(8, 30),
        heart_v=r.uniform(-0.45, -0.2),
        heart_a=r.uniform(48, 66),
        heart_b=r.uniform(40, 54),
        heart_t0=r.uniform(0.38, 0.48),
        spine_r=r.uniform(14, 20),
        aorta_r=r.uniform(10, 14),
        trachea_r=r.uniform(7.5, 10.5),
        carina_t=r.uniform(0.28, 0.36),
        hilum_t=r.uniform(0.40, 0.48),
        rib_pitch=r.uniform(21, 28),
        rib_height=r.uniform(8, 12),
        rib_drop=r.uniform(35, 60),
        rib_phase=r.uniform(0, 1),
        lung_shape=r.normal(0, 0.035, size=(2, 4, 2)),
        parenchyma_hu=r.uniform(-885, -820),
        gravity_hu=r.uniform(10, 55),
        noise_sd=r.uniform(8, 28),
        pixel_mm_512=r.uniform(*PIXEL_MM_AT_512),
    )


def _make_grid(seed: int, anat: _Anatomy, n_slices: int | None, size_px: int | None) -> _Grid:
    r = _rng(seed, _STREAM_GRID)
    drawn_size = int(r.choice(SIZE_PX_CHOICES))
    drawn_thickness = float(r.uniform(*THICKNESS_MM_RANGE))
    off_u, off_v = r.uniform(-12, 12), r.uniform(-10, 10)
    size = drawn_size if size_px is None else int(size_px)
    body_a = anat.thorax_a + anat.rib_w + anat.muscle + anat.fat
    body_b = anat.thorax_b + anat.rib_w + anat.muscle * 1.6 + anat.fat
    # The field of view always holds the whole body, as a technologist would set it.
    need_fov = 2 * max(body_a + abs(off_u), body_b + abs(off_v)) + 16
    pixel_mm = max(anat.pixel_mm_512, need_fov / REFERENCE_MATRIX) * REFERENCE_MATRIX / size
    coverage = anat.lung_height + anat.margin_top + anat.margin_bottom
    if n_slices is None:
        nz = max(int(round(coverage / drawn_thickness)), 8)
    else:
        nz = int(n_slices)
    # A given slice count still covers the whole chest: the spacing follows.
    dz = coverage / nz
    zz = ((nz - 1 - np.arange(nz, dtype=np.float32)) * dz + dz / 2).reshape(nz, 1, 1)
    j = np.arange(size, dtype=np.float32)
    v = ((j - (size - 1) / 2.0) * pixel_mm - off_v).reshape(1, size, 1)
    u = ((j - (size - 1) / 2.0) * pixel_mm - off_u).reshape(1, 1, size)
    return _Grid(
        nz,
        size,
        size,
        float(dz),
        float(pixel_mm),
        float(off_u),
        float(off_v),
        zz.astype(np.float32),
        v.astype(np.float32),
        u.astype(np.float32),
    )


class _Body(NamedTuple):
    hu: np.ndarray  # float32 z/y/x
    lung_side: np.ndarray  # int8: 0 outside the lungs, 1 right lung, 2 left lung
    t: np.ndarray  # (nz,) lung height fraction: 0 apex, 1 base
    lung_centres: tuple[tuple[float, float, float, float], ...]  # per side: u_c, v_c, a0, b0


def _index_range(coord: np.ndarray, lo: float, hi: float) -> slice:
    """Indices of a sorted 1-D coordinate array that fall in [lo, hi] (maybe empty)."""
    return slice(int(np.searchsorted(coord, lo, "left")), int(np.searchsorted(coord, hi, "right")))


class _Plane(NamedTuple):
    """Height-independent 2-D coordinates of the body's box (rows, cols of a slice)."""

    box: tuple[slice, slice]
    u: np.ndarray  # (1, nx')
    v: np.ndarray  # (ny', 1)
    u2: np.ndarray
    v2: np.ndarray
    abs_u: np.ndarray
    vb2: np.ndarray  # squared v with the back flatter than the front
    ant: np.ndarray  # +1 at the front, -1 at the back
    spine_cols: slice
    us: np.ndarray
    us2: np.ndarray


def _build_body(grid: _Grid, an: _Anatomy) -> _Body:
    """Body, fat, muscle, ribs, spine, sternum, mediastinum, heart, aorta, lungs.

    Slice by slice: each cross-section is a few closed-form 2-D shapes whose sizes
    depend on the height, each evaluated in its own bounding box. 2-D temporaries stay
    in cache, which is many times faster than whole-volume temporaries at 512 x 512 x 300.
    """
    f32 = np.float32
    t_all = ((grid.zz[:, 0, 0] - an.margin_top) / an.lung_height).astype(f32)
    hu = np.empty((grid.nz, grid.ny, grid.nx), dtype=f32)
    lung_side = np.zeros(hu.shape, dtype=np.int8)
    pl = _body_plane(grid, an)
    sides, centres = _lung_outlines(an, pl.u, pl.v)
    for k in range(grid.nz):
        t = float(t_all[k])
        zz = float(grid.zz[k, 0, 0])
        hu[k].fill(HU_AIR)
        _paint_slice(hu[k][pl.box], lung_side[k][pl.box], t, zz, pl, sides, an)
    return _Body(hu, lung_side, t_all, tuple(centres))


def _body_plane(grid: _Grid, an: _Anatomy) -> _Plane:
    # The body's largest outline bounds everything drawn below.
    ba_max = an.thorax_a + an.rib_w + an.muscle + an.fat
    bb_max = an.thorax_b + an.rib_w + an.muscle * 1.6 + an.fat
    rows = _index_range(grid.v[0, :, 0], -bb_max - 1, bb_max / 1.12 + 1)
    cols = _index_range(grid.u[0, 0, :], -ba_max - 1, ba_max + 1)
    u = grid.u[0][:, cols]  # (1, nx')
    v = grid.v[0][rows]  # (ny', 1)
    u2 = u * u
    vb = np.where(v > 0, v * 1.12, v).astype(np.float32)  # the back is flatter than the front
    # The spine's neighbourhood (vertebra, canal, arch, spinous process).
    spine_cols = _index_range(u[0], -an.spine_r - 6.0, an.spine_r + 6.0)
    return _Plane(
        (rows, cols),
        u,
        v,
        u2,
        v * v,
        np.abs(u),
        vb * vb,
        np.clip(-v / an.thorax_b, -1.0, 1.0),
        spine_cols,
        u[:, spine_cols],
        u2[:, spine_cols],
    )


def _lung_outlines(an: _Anatomy, u: np.ndarray, v: np.ndarray) -> tuple[list, list]:
    """Per-side lung outline (2-D, height independent): a few Fourier terms of the angle,
    and the height of the diaphragm dome under each pixel; with each lung's centre and
    semi-axes."""
    f32 = np.float32
    sides = []
    centres = []
    for side, sign in ((1, -1.0), (2, 1.0)):
        a0 = (an.thorax_a - an.med_half) / 2.0 + 4.0
        b0 = an.thorax_b * 0.93
        uc, vc = sign * (an.med_half + a0 - 4.0), an.thorax_b * 0.04
        centres.append((float(uc), float(vc), float(a0), float(b0)))
        du, dv = (u - uc) / a0, (v - vc) / b0
        theta = np.arctan2(dv, du)
        coef = an.lung_shape[side - 1]
        wobble = 1.0 + sum(
            coef[k, 0] * np.cos((k + 1) * theta) + coef[k, 1] * np.sin((k + 1) * theta) for k in range(4)
        )
        q2 = ((du * du + dv * dv) / (wobble * wobble)).astype(f32)
        dome = an.t_dome_right if side == 1 else an.t_dome_left
        rd2 = np.clip(du * du + ((v - vc + 0.25 * b0) / (1.1 * b0)) ** 2, 0.0, 1.0)
        t_dia = (dome + (1.02 - dome) * rd2).astype(f32)
        # Pixels this lung can ever occupy: the rest of the slice is skipped.
        lr_ = np.flatnonzero((q2 <= 1.0).any(axis=1))
        lc_ = np.flatnonzero((q2 <= 1.0).any(axis=0))
        lbox = (slice(lr_[0], lr_[-1] + 1), slice(lc_[0], lc_[-1] + 1)) if lr_.size else None
        if lbox is not None:
            sides.append((side, q2[lbox], t_dia[lbox], lbox))
    return sides, centres


def _paint_slice(h: np.ndarray, ls: np.ndarray, t: float, zz: float, pl: _Plane, sides: list, an: _Anatomy) -> None:
    """One cross-section (``h``: its HU in the body's box, ``ls``: its lung sides)."""
    u, v, u2, v2 = pl.u, pl.v, pl.u2, pl.v2
    # The chest widens from the apex down to the lower third.
    upper = math.sqrt(min(max((t + 0.15) / 0.9, 0.0), 1.0))
    ta = an.thorax_a * (0.70 + 0.30 * upper)
    tb = an.thorax_b * (0.85 + 0.15 * upper)
    rho_thorax = u2 / (ta * ta) + v2 / (tb * tb)
    oa, ob = ta + an.rib_w, tb + an.rib_w
    rho_ribs = u2 / (oa * oa) + v2 / (ob * ob)
    ma, mb = oa + an.muscle, ob + an.muscle * 1.6
    rho_muscle = u2 / (ma * ma) + v2 / (mb * mb)
    ba, bb = ma + an.fat, mb + an.fat
    rho_body = u2 / (ba * ba) + pl.vb2 / (bb * bb)

    in_body = rho_body <= 1.0
    h[in_body] = HU_FAT
    h[rho_muscle <= 1.0] = HU_MUSCLE
    inside = rho_thorax <= 1.0
    h[inside] = HU_SOFT
    if t > 0.85:  # below the diaphragm the liver fills the right side
        h[inside & (u < 25.0)] = HU_LIVER

    # Ribs: bands just outside the pleura, sloping down towards the front.
    if t > -0.1:
        rib_frac_max = an.rib_height / an.rib_pitch
        phase = (zz + an.rib_drop * (pl.ant + 1.0) / 2.0) / an.rib_pitch + an.rib_phase
        frac = phase - np.floor(phase)  # (ny', 1)
        in_rib = (rho_ribs <= 1.0) & ~inside & (frac < rib_frac_max) & (pl.abs_u > 22.0)
        h[in_rib] = HU_MARROW
        # Cortex bright at the band's upper and lower edges, marrow inside.
        edge = (frac < 0.25 * rib_frac_max) | (frac > 0.75 * rib_frac_max)
        h[in_rib & edge] = HU_CORTEX

    spine = _paint_spine(h, in_body, tb, zz, pl, an)
    if 0.05 < t < 0.85:  # sternum
        h[(u / 16.0) ** 2 + ((v + tb + 4.0) / 7.0) ** 2 <= 1.0] = 450.0
    heart_zone, aorta = _paint_heart_aorta(h, inside, t, tb, spine[0], pl, an)
    if t > 0.0:
        _cut_lungs(ls, t, tb, rho_thorax, heart_zone, aorta, spine, pl, sides, an)


def _paint_spine(
    h: np.ndarray, in_body: np.ndarray, tb: float, zz: float, pl: _Plane, an: _Anatomy
) -> tuple[float, slice, np.ndarray, np.ndarray]:
    """Vertebral body in the posterior midline, canal and spinous process behind; returns
    (the vertebra's centre v, its rows, squared distances to the vertebra and the canal)."""
    us, us2, spine_cols = pl.us, pl.us2, pl.spine_cols
    v_sp = tb - 0.55 * an.spine_r
    v_canal = v_sp + an.spine_r + 8.0
    srows = _index_range(pl.v[:, 0], v_sp - an.spine_r - 4.0, v_canal + 40.0)
    hs = h[srows, spine_cols]
    vs = pl.v[srows]
    d_sp2 = us2 + (vs - v_sp) ** 2
    vert = d_sp2 <= an.spine_r**2
    disc = ((zz / 27.0 + an.rib_phase) % 1.0) < 0.18
    hs[vert] = HU_CORTEX
    hs[vert & (d_sp2 <= (an.spine_r - 2.2) ** 2)] = 80.0 if disc else HU_MARROW
    d_canal2 = us2 + (vs - v_canal) ** 2
    hs[(d_canal2 <= 12.5**2) & ~vert] = 600.0
    hs[d_canal2 <= 7.5**2] = HU_FLUID
    spinous = (np.abs(us) < 4.0) & (vs > v_canal + 10.0) & (vs < v_canal + 38.0)
    hs[spinous & in_body[srows, spine_cols]] = 550.0
    return v_sp, srows, d_sp2, d_canal2


def _paint_heart_aorta(
    h: np.ndarray, inside: np.ndarray, t: float, tb: float, v_sp: float, pl: _Plane, an: _Anatomy
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Heart (with a fat layer around it) and descending aorta left of the spine. The
    heart rests on the diaphragm: it narrows over the last few centimetres above the
    left dome and ends just below it. Returns the heart zone and aorta masks (or None)."""
    u, v = pl.u, pl.v
    heart_end = an.t_dome_left + 0.12
    hprof = math.sqrt(min(max((t - an.heart_t0) / 0.22, 0.0), 1.0)) * math.sqrt(
        min(max((heart_end - t) / 0.12, 0.0), 1.0)
    )
    heart_zone = None
    if hprof > 0:
        ha, hb = an.heart_a * hprof, an.heart_b * hprof
        rho_heart = ((u - an.heart_u) / ha) ** 2 + ((v - an.heart_v * tb) / hb) ** 2
        heart_zone = rho_heart <= 1.12
        h[heart_zone & inside] = HU_FAT + 20.0
        h[(rho_heart <= 1.0) & inside] = HU_SOFT
    aorta = None
    if t > 0.22:
        ao_u, ao_v = 0.55 * an.spine_r + an.aorta_r, v_sp - 0.9 * an.spine_r
        aorta = (u - ao_u) ** 2 + (v - ao_v) ** 2 <= an.aorta_r**2
        h[aorta & inside] = HU_SOFT
    return heart_zone, aorta


def _cut_lungs(
    ls: np.ndarray,
    t: float,
    tb: float,
    rho_thorax: np.ndarray,
    heart_zone: np.ndarray | None,
    aorta: np.ndarray | None,
    spine: tuple[float, slice, np.ndarray, np.ndarray],
    pl: _Plane,
    sides: list,
    an: _Anatomy,
) -> None:
    """Lungs: the outline scaled up from the apex, cut by the diaphragm dome, the
    mediastinum, heart, spine and aorta."""
    v_sp, srows, d_sp2, d_canal2 = spine
    # Lung outline: a dome at the apex, then widening slowly towards the base.
    prof2 = min(t / 0.3, 1.0) * (0.84 + 0.16 * min(t / 0.8, 1.0)) ** 2
    for side, q2, t_dia, lbox in sides:
        sub = (q2 <= prof2) & (t < t_dia) & (rho_thorax[lbox] <= 0.97)
        ls[lbox][sub] = side
    # The mediastinum is wider at the front (great vessels, thymus) than at the back,
    # so the lungs' medial borders curve instead of running straight.
    med_width = an.med_half * 0.85
    block = (pl.abs_u <= med_width * (1.0 + 0.45 * np.clip(-pl.v / tb, 0.0, 1.0))) & (pl.v < v_sp)
    if heart_zone is not None:
        block |= heart_zone
    if aorta is not None:
        block |= aorta
    ls[block] = 0
    ls_s = ls[srows, pl.spine_cols]
    ls_s[(d_sp2 <= (an.spine_r + 3.0) ** 2) | (d_canal2 <= 14.0**2)] = 0


# --- Lesions ---------------------------------------------------------------------------


class _Lesion(NamedTuple):
    centre: np.ndarray  # (zz, v, u) mm
    axes: np.ndarray  # semi-axes, mm, along frame rows
    frame: np.ndarray  # 3x3, rows are unit axis directions
    value_hu: float
    edge_mm: float
    irregularity: float
    paving: float  # HU added on crazy-paving lines (0: none)
    core_hu: float | None  # consolidative core value, or None
    halo_hu: float | None  # ground-glass halo value around a consolidation, or None
    bronchograms: bool
    # A fissure bounding a lobar consolidation: (point, unit normal); the lesion lies on
    # the side the normal points to. None: no such boundary.
    fissure: tuple[np.ndarray, np.ndarray] | None = None


def _intersect(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Index slices of the overlap of boxes ``a`` and ``b``, relative to each box."""
    ra, rb = [], []
    for sa, sb in zip(a, b, strict=True):
        lo, hi = max(sa.start, sb.start), min(sa.stop, sb.stop)
        if lo >= hi:
            return None
        ra.append(slice(lo - sa.start, hi - sa.start))
        rb.append(slice(lo - sb.start, hi - sb.start))
    return tuple(ra), tuple(rb)


#: Voxels per chunk when a lesion box is processed in slabs (keeps temporaries in cache).
_CHUNK_VOXELS = 1 << 20


def _lesion_draws(rng: np.random.Generator, les: _Lesion) -> tuple[list, list, list, list[_Segment]]:
    """Every random number of one lesion, in a fixed order: lobulation, texture waves,
    septa of crazy paving and the air bronchogram tubes."""
    lobes = [(rng.normal(size=3) * 2.2, rng.uniform(0, 2 * np.pi)) for _ in range(3)]
    # Heterogeneity: several weak waves of random direction and 10-30 mm wavelength sum
    # to a mottled texture (one strong wave would look like stripes).
    waves = [
        (_unit(rng.normal(size=3)) * (2 * np.pi / rng.uniform(10.0, 30.0)), rng.uniform(4, 14), rng.uniform(0, 6.3))
        for _ in range(5)
    ]
    base = rng.uniform(0, np.pi)
    septa = [
        (
            base + j * np.pi / 3 + rng.uniform(-0.25, 0.25),
            rng.uniform(6.0, 12.0),
            rng.uniform(0.8, 2.0),
            rng.uniform(0, 6.3),
            rng.uniform(),
        )
        for j in range(3)
    ]
    tubes: list[_Segment] = []
    if les.bronchograms:
        # Air bronchograms: a few branching air tubes through the consolidation.
        out_dir = _unit(les.frame[1] * 0.3 + les.frame[0] * 0.6 + rng.normal(size=3) * 0.3)
        for _ in range(int(rng.integers(2, 5))):
            start = les.centre - out_dir * float(les.axes.max()) * 0.9 + rng.normal(size=3) * 5.0
            d = _unit(out_dir + rng.normal(size=3) * 0.35)
            tubes.extend(_grow_tree(rng, start, d, rng.uniform(1.4, 2.6), 0.9, 1.6, start - d * 10.0))
    return lobes, waves, septa, tubes


def _bronchograms(grid: _Grid, tubes: Sequence[_Segment], sl: tuple[slice, slice, slice]) -> np.ndarray:
    """Occupancy (0..255) of the air tubes in the lesion's box."""
    bronch = np.zeros(tuple(x.stop - x.start for x in sl), dtype=np.uint8)
    for seg in tubes:
        got = _segment_fraction(grid, seg)
        if got is None:
            continue
        ov = _intersect(got[0], sl)
        if ov is not None:
            occupancy = (got[1][ov[0]] * 255.0 + 0.5).astype(np.uint8)
            np.maximum(bronch[ov[1]], occupancy, out=bronch[ov[1]])
    return bronch


def _septal_lines(pv: np.ndarray, pu: np.ndarray, septa: Sequence[tuple], width: float) -> np.ndarray:
    """Crazy paving: thickened interlobular septa, wavy sheets containing the z axis
    (lines on every axial slice), forming polygons of 6-12 mm; 0..1 per voxel."""
    lines = np.zeros(pv.shape)
    for ang, period, amp, ph, off in septa:
        s = pv * math.sin(ang) + pu * math.cos(ang)
        s = s + amp * np.sin((pv * math.cos(ang) - pu * math.sin(ang)) / 5.0 + ph)
        dist = np.abs(((s / period + off) % 1.0) - 0.5) * period
        np.maximum(lines, np.exp(-((dist / width) ** 2)), out=lines)
    return lines


def _render_lesion(
    grid: _Grid, les: _Lesion, rng: np.random.Generator, hu: np.ndarray, lung: np.ndarray, lesion_mask: np.ndarray
) -> None:
    """Raise the HU inside the lesion (ground glass keeps vessels visible) and mark it."""
    halo_mm = 6.0 if les.halo_hu is not None else 0.0
    # Half-extent of the oriented, lobulated ellipsoid along each world axis.
    reach = np.sqrt(((les.axes[:, None] * les.frame) ** 2).sum(axis=0)) * (1.0 + 3.0 * les.irregularity)
    reach = reach + les.edge_mm + halo_mm
    reach[0] += grid.dz
    sl = grid.box(les.centre - reach, les.centre + reach)
    # Draw every random number first: the result must not depend on the grid or the
    # chunking (the same seed gives the same lesion at every matrix size).
    lobes, waves, septa, tubes = _lesion_draws(rng, les)
    if sl is None or not lung[sl].any():
        return
    width = max(0.7, 0.45 * grid.dxy)
    bronch = _bronchograms(grid, tubes, sl) if tubes else None
    mean_axis = float(les.axes.mean())
    plane = (sl[1].stop - sl[1].start) * (sl[2].stop - sl[2].start)
    step = max(1, _CHUNK_VOXELS // max(plane, 1))
    for z0 in range(sl[0].start, sl[0].stop, step):
        csl = (slice(z0, min(z0 + step, sl[0].stop)), sl[1], sl[2])
        # Work on the lung voxels of the box only (1-D), then on those the lesion covers.
        kk, jj, ii = np.nonzero(lung[csl])
        if kk.size == 0:
            continue
        zz, v, u = grid.coords(csl)
        pz = zz[kk, 0, 0] - les.centre[0]
        pv = v[0, jj, 0] - les.centre[1]
        pu = u[0, 0, ii] - les.centre[2]
        q = [(pz * f[0] + pv * f[1] + pu * f[2]) / a for f, a in zip(les.frame, les.axes, strict=True)]
        rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) + 1e-6
        # Irregular outline: smooth lobulation as a function of direction.
        wob = np.ones_like(rho)
        for kv, ph in lobes:
            wob += les.irregularity * np.sin((q[0] * kv[0] + q[1] * kv[1] + q[2] * kv[2]) / rho + ph)
        depth_mm = (wob - rho) * mean_axis  # approx. signed distance inside the outline
        if les.fissure is not None:
            # A lobar consolidation stops at the fissure: a straight, sharp border.
            (fz, fv, fu), (nz_, nv_, nu_) = les.fissure[0] - les.centre, les.fissure[1]
            depth_mm = np.minimum(depth_mm, (pz - fz) * nz_ + (pv - fv) * nv_ + (pu - fu) * nu_)
        w = np.clip(depth_mm / les.edge_mm + 0.5, 0.0, 1.0)
        weight = w
        if les.halo_hu is not None:
            halo = np.clip((depth_mm + halo_mm) / 2.0 + 0.5, 0.0, 1.0)
            weight = np.maximum(w, halo)
        hit = weight > 0
        if not hit.any():
            continue
        kk, jj, ii, pz, pv, pu = kk[hit], jj[hit], ii[hit], pz[hit], pv[hit], pu[hit]
        w, weight, wob, rho = w[hit], weight[hit], wob[hit], rho[hit]
        value = np.full(w.shape, les.value_hu)
        for kv, amp, ph in waves:
            value += amp * np.sin(pz * kv[0] + pv * kv[1] + pu * kv[2] + ph)
        if les.core_hu is not None:
            core = np.clip((0.55 * wob - rho) * mean_axis / 3.0 + 0.5, 0.0, 1.0)
            value += core * (les.core_hu - value)
        if les.paving:
            value += les.paving * _septal_lines(pv, pu, septa, width)
        if les.halo_hu is not None:
            value = np.where(w > 0.5, value, les.halo_hu)
        hb = hu[csl]
        cur = hb[kk, jj, ii]
        new = cur + weight * np.maximum(value - cur, 0.0)
        if bronch is not None:
            air = bronch[kk + (z0 - sl[0].start), jj, ii] * (1 / 255.0) * (w > 0.5)
            new += air * (HU_BRONCHOGRAM - new)
        hb[kk, jj, ii] = new
        inside = weight > 0.5
        lesion_mask[csl][kk[inside], jj[inside], ii[inside]] = True


def _lung_point(
    rng: np.random.Generator,
    body: _Body,
    grid: _Grid,
    lung: np.ndarray,
    side: int,
    t_range: tuple[float, float],
    rho_range: tuple[float, float],
    lower_bias: bool,
    posterior_bias: bool,
    an: _Anatomy,
    tries: int = 40,
) -> tuple[np.ndarray, np.ndarray] | None:
    """A point inside the given lung (zz, v, u) and the outward in-plane normal there."""
    uc, vc, a0, b0 = body.lung_centres[side - 1]
    sign = -1.0 if side == 1 else 1.0
    for _ in range(tries):
        tt = t_range[0] + (t_range[1] - t_range[0]) * (rng.beta(2.6, 1.3) if lower_bias else rng.uniform())
        theta = rng.uniform(-np.pi, np.pi)
        if posterior_bias and math.sin(theta) < 0 and rng.uniform() < 0.55:
            theta = -theta  # mirror to the posterior half (v > 0)
        if math.cos(theta) * sign < -0.3 and rng.uniform() < 0.8:
            theta = math.pi - theta  # medial surface is rarely involved: go lateral
        prof = math.sqrt(min(max(tt / 0.3, 0.0), 1.0)) * (0.84 + 0.16 * min(tt / 0.8, 1.0))
        rr = rng.uniform(*rho_range) * prof
        p = np.array(
            [an.margin_top + tt * an.lung_height, vc + rr * b0 * math.sin(theta), uc + rr * a0 * math.cos(theta)]
        )
        k, j, i = (int(round(x)) for x in grid.index_of(*p))
        if 0 <= k < grid.nz and 0 <= j < grid.ny and 0 <= i < grid.nx and lung[k, j, i]:
            normal = _unit(np.array([0.0, math.sin(theta) / b0, math.cos(theta) / a0]))
            return p, normal
    return None


def _frame_from_normal(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows: outward normal, in-plane tangent, cranio-caudal axis (slightly tilted)."""
    n = _unit(normal)
    z = _unit(np.array([1.0, 0.0, 0.0]) + rng.normal(size=3) * 0.1)
    z = _unit(z - n * float(np.dot(z, n)))
    tangent = np.cross(n, z)
    return np.stack([n, _unit(tangent), z])


def _random_frame(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q


def _generations(vessels: Sequence[_Segment], low: int, high: int) -> list[_Segment]:
    return [s for s in vessels if low <= s.generation <= high]


def _peribronchovascular_point(
    rng: np.random.Generator, pool: Sequence[_Segment], grid: _Grid, lung: np.ndarray
) -> np.ndarray | None:
    """A point beside one of the ``pool`` vessels (peribronchovascular), in the lung."""
    for _ in range(30):
        if not pool:
            return None
        s = pool[int(rng.integers(len(pool)))]
        p = s.p0 + (s.p1 - s.p0) * rng.uniform(0.2, 1.0)
        p = p + _perpendicular(_unit(s.p1 - s.p0), rng) * (s.r0 + rng.uniform(0.5, 3.0))
        k, j, i = (int(round(x)) for x in grid.index_of(*p))
        if 0 <= k < grid.nz and 0 <= j < grid.ny and 0 <= i < grid.nx and lung[k, j, i]:
            return p
    return None


def _covid_lesions(rng, body, grid, lung, an) -> list[_Lesion]:
    """Peripheral, subpleural ground-glass opacities flattened along the pleura, bilateral
    in most cases, lower and posterior by preference; crazy paving in most, a
    consolidative core in some."""
    out = []
    count = int(rng.integers(2, 10))
    bilateral = rng.uniform() < 0.85
    paving_case = rng.uniform() < 0.72
    for idx in range(count):
        side = (idx % 2) + 1 if (bilateral and idx < 2) else int(rng.integers(1, 3))
        got = _lung_point(rng, body, grid, lung, side, (0.12, 0.97), (0.72, 1.0), True, True, an)
        if got is None:
            continue
        p, normal = got
        big = idx == 0 or rng.uniform() < 0.6
        tangential = rng.uniform(14, 42) if big else rng.uniform(7, 16)
        axes = np.array([rng.uniform(0.35, 0.6) * tangential, tangential, tangential * rng.uniform(0.8, 1.5)])
        p = p - normal * axes[0] * rng.uniform(0.2, 0.7)  # hug the pleura
        has_core = rng.uniform() < 0.3
        out.append(
            _Lesion(
                centre=p,
                axes=axes,
                frame=_frame_from_normal(normal, rng),
                value_hu=float(rng.uniform(-660, -380)),
                edge_mm=float(rng.uniform(2.5, 6.0)),
                irregularity=float(rng.uniform(0.05, 0.16)),
                paving=float(rng.uniform(120, 260)) if (paving_case and rng.uniform() < 0.8) else 0.0,
                core_hu=float(rng.uniform(-180, 20)) if has_core else None,
                halo_hu=None,
                bronchograms=False,
            )
        )
    return out


def _influenza_lesions(rng, body, grid, lung, an, vessels) -> list[_Lesion]:
    """Many small patches beside central and mid-level vessels (peribronchovascular),
    ground glass or consolidative, plus small centrilobular nodules; in some cases a
    few peripheral patches too (the overlap with COVID-19 seen in practice)."""
    out = []
    central, small = _generations(vessels, 1, 5), _generations(vessels, 3, 9)
    for _ in range(int(rng.integers(8, 26))):
        p = _peribronchovascular_point(rng, central, grid, lung)
        if p is None:
            continue
        r = rng.uniform(4.0, 13.0) if rng.uniform() < 0.8 else rng.uniform(12.0, 18.0)
        consolidative = rng.uniform() < 0.35
        out.append(
            _Lesion(
                centre=p,
                axes=r * rng.uniform(0.7, 1.3, size=3),
                frame=_random_frame(rng),
                value_hu=float(rng.uniform(-220, 10) if consolidative else rng.uniform(-560, -300)),
                edge_mm=float(rng.uniform(1.2, 3.0)),
                irregularity=float(rng.uniform(0.05, 0.2)),
                paving=0.0,
                core_hu=None,
                halo_hu=None,
                bronchograms=False,
            )
        )
    for _ in range(int(rng.integers(3, 11))):  # small (centrilobular) nodules
        p = _peribronchovascular_point(rng, small, grid, lung)
        if p is None:
            continue
        out.append(
            _Lesion(
                centre=p,
                axes=np.full(3, rng.uniform(2.0, 5.0)),
                frame=np.eye(3),
                value_hu=float(rng.uniform(-120, 40)),
                edge_mm=1.0,
                irregularity=0.05,
                paving=0.0,
                core_hu=None,
                halo_hu=None,
                bronchograms=False,
            )
        )
    if rng.uniform() < 0.3:  # overlap with COVID-19: a few peripheral patches
        for _ in range(int(rng.integers(1, 4))):
            got = _lung_point(
                rng, body, grid, lung, int(rng.integers(1, 3)), (0.1, 0.95), (0.72, 1.0), False, False, an
            )
            if got is None:
                continue
            p, normal = got
            tang = rng.uniform(8, 20)
            out.append(
                _Lesion(
                    centre=p - normal * 3.0,
                    axes=np.array([0.5 * tang, tang, tang]),
                    frame=_frame_from_normal(normal, rng),
                    value_hu=float(rng.uniform(-600, -400)),
                    edge_mm=3.0,
                    irregularity=0.1,
                    paving=float(rng.uniform(80, 180)) if rng.uniform() < 0.15 else 0.0,
                    core_hu=None,
                    halo_hu=None,
                    bronchograms=False,
                )
            )
    return out


def _cap_lesions(rng, body, grid, lung, an, sides: Sequence[int], hila: Sequence[np.ndarray]) -> list[_Lesion]:
    """Lobar (bounded by the oblique fissure) or segmental consolidations, mostly
    one-sided, with air bronchograms and sometimes a ground-glass halo."""
    out = []
    for side in sides:
        for _ in range(1 if rng.uniform() < 0.7 else 2):
            lobar = rng.uniform() < 0.5
            lower = rng.uniform() < 0.65
            t_range = (0.55, 0.95) if lower else (0.12, 0.5)
            got = _lung_point(
                rng, body, grid, lung, side, t_range, (0.35, 0.7) if lobar else (0.6, 0.95), False, lower, an
            )
            if got is None:
                continue
            p, normal = got
            r = rng.uniform(30, 55) if lobar else rng.uniform(16, 32)
            axes = r * rng.uniform(0.75, 1.25, size=3)
            fissure = None
            if lobar:
                # Oblique fissure through the hilum, running down and forwards: the lower
                # lobe lies behind and below it, the upper lobe in front and above.
                normal = _unit(np.array([1.0, rng.uniform(0.6, 1.3), 0.0]))
                fissure = (hila[side - 1], normal if lower else -normal)
            out.append(
                _Lesion(
                    centre=p,
                    axes=axes,
                    frame=_frame_from_normal(normal, rng),
                    value_hu=float(rng.uniform(-40, 40)),
                    edge_mm=float(rng.uniform(1.0, 2.5)),
                    irregularity=float(rng.uniform(0.08, 0.2)),
                    paving=0.0,
                    core_hu=None,
                    halo_hu=float(rng.uniform(-520, -300)) if rng.uniform() < 0.5 else None,
                    bronchograms=rng.uniform() < 0.85,
                    fissure=fissure,
                )
            )
    return out


def _effusion_level(rng: np.random.Generator, body: _Body, side: int) -> np.ndarray:
    """Per slice, the v (mm) above which the lung of ``side`` is under fluid.

    Dependent (posterior) fluid with a flat top in the supine patient, deeper towards
    the base; +inf where there is none.
    """
    uc, vc, a0, b0 = body.lung_centres[side - 1]
    depth = rng.uniform(0.18, 0.45)
    grow = np.clip((body.t - 0.4) / 0.6, 0.0, 1.0)
    return np.where(grow > 0, vc + b0 * (1.0 - depth * grow * 2.0), np.inf)


# --- Lobes (truth only) ------------------------------------------------------------------


class _Fissures(NamedTuple):
    """Fissure surfaces as lung height fractions ``t`` (0 apex, 1 base, as ``_Body.t``)
    over the AP fraction ``s`` (0 anterior, 1 posterior) and the lateral fraction ``w``
    (0 medial, 1 lateral) of each lung."""

    oblique_post: np.ndarray  # per side: t where the oblique fissure meets the back
    oblique_ant: np.ndarray  # per side: t at the front (the diaphragm's anterior part)
    oblique_bow: np.ndarray  # per side: sag of the fissure between the two
    oblique_lat: np.ndarray  # per side: how much lower it runs laterally
    horizontal: float  # right horizontal fissure: t at its anterior end
    horizontal_tilt: float  # its change towards the back (where it meets the oblique)


def _draw_fissures(seed: int, an: _Anatomy) -> _Fissures:
    """The fissures of ``seed``: the oblique fissure runs from the back at about T4-T5
    (upper third) down and forwards to the diaphragm near the front; the right horizontal
    fissure lies at about the hilum's level, from the oblique fissure to the front."""
    r = _rng(seed, _STREAM_LOBES)
    return _Fissures(
        oblique_post=r.uniform(0.26, 0.36, size=2),
        oblique_ant=r.uniform(0.68, 0.82, size=2),
        oblique_bow=r.uniform(-0.06, 0.06, size=2),
        oblique_lat=r.uniform(0.0, 0.06, size=2),
        horizontal=an.hilum_t + float(r.uniform(-0.03, 0.03)),
        horizontal_tilt=float(r.uniform(-0.04, 0.04)),
    )


def _fissure_maps(grid: _Grid, body: _Body, fis: _Fissures, side: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Height fractions (ny, nx) of the oblique and (right lung) horizontal fissures."""
    uc, vc, a0, b0 = body.lung_centres[side - 1]
    i = side - 1
    s = np.clip((grid.v[0] - (vc - b0)) / (2.0 * b0), 0.0, 1.0)  # (ny, 1)
    w = np.clip(0.5 + 0.5 * (1.0 if side == 2 else -1.0) * (grid.u[0] - uc) / a0, 0.0, 1.0)  # (1, nx)
    oblique = (
        fis.oblique_ant[i]
        + (fis.oblique_post[i] - fis.oblique_ant[i]) * s
        + fis.oblique_bow[i] * s * (1.0 - s)
        + fis.oblique_lat[i] * w
    )
    horizontal = np.broadcast_to(fis.horizontal + fis.horizontal_tilt * s, oblique.shape) if side == 1 else None
    return oblique, horizontal


#: uint8 scalars: np.where of them stays uint8 (int literals would make int64 slices).
_U8 = tuple(np.uint8(i) for i in range(6))


def _lobe_truth(seed: int, an: _Anatomy, grid: _Grid, body: _Body, lung: np.ndarray) -> np.ndarray:
    """Lobe labels (uint8, 1-5 in ``severity.LOBES`` order) of the lung voxels, from
    analytic fissures fitted to this phantom's lungs: truth only, not drawn in the image
    (which stays what it was before lobes existed, so the trained models still fit it)."""
    fis = _draw_fissures(seed, an)
    lobes = np.zeros(lung.shape, dtype=np.uint8)
    zs = np.flatnonzero(lung.any(axis=(1, 2)))
    if zs.size == 0:
        return lobes
    plane = np.asarray(lung[zs[0] : zs[-1] + 1].any(axis=0))
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    maps = [_fissure_maps(grid, body, fis, side) for side in (1, 2)]
    oblique_r, oblique_l = (m[0][box] for m in maps)
    horizontal = maps[0][1][box]  # type: ignore[index]
    for k in zs:
        t = float(body.t[k])
        # Below (and behind) the oblique fissure: the lower lobe; on the right, below
        # the horizontal fissure and in front of the oblique one: the middle lobe.
        right = np.where(t > oblique_r, _U8[3], np.where(t >= horizontal, _U8[2], _U8[1]))
        left = np.where(t > oblique_l, _U8[5], _U8[4])
        lab = np.where(body.lung_side[k][box] == 1, right, left)
        np.copyto(lobes[k][box], lab, where=lung[k][box])
    return lobes


# --- Public API ------------------------------------------------------------------------


class _Trees(NamedTuple):
    """The tubes of one phantom: vessels, small airways, trachea and main bronchi, and
    the two hila."""

    vessels: list[_Segment]
    airways: list[_Segment]
    central: list[_Segment]
    hila: list[np.ndarray]


def _check_phantom_args(label: str, seed: int, n_slices: int | None, size_px: int | None) -> None:
    if label not in CLASS_NAMES:
        raise InvalidInputError(f"Phantom label {label!r} is not one of {CLASS_NAMES}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"Phantom seed must be a non-negative integer, got {seed!r}")
    if n_slices is not None and not (8 <= int(n_slices) <= 2000):
        raise InvalidInputError(f"n_slices must be between 8 and 2000, got {n_slices}")
    if size_px is not None and not (32 <= int(size_px) <= 1024):
        raise InvalidInputError(f"size_px must be between 32 and 1024, got {size_px}")


def make_phantom(label: str, seed: int, n_slices: int | None = None, size_px: int | None = None) -> Phantom:
    """Build a synthetic chest CT of class ``label`` (one of CLASS_NAMES).

    ``n_slices`` and ``size_px`` (matrix ``size_px`` x ``size_px``) are drawn from the
    seed when None. The slices always cover the whole chest, so a given ``n_slices``
    sets the slice spacing; a drawn one follows from a drawn thickness of 1-5 mm. Pixel
    spacing is 0.6-0.9 mm on a 512 matrix, scaled by 512 / ``size_px``.
    """
    _check_phantom_args(label, seed, n_slices, size_px)
    seed = int(seed)
    an = _draw_anatomy(seed)
    grid = _make_grid(seed, an, n_slices, size_px)
    body = _build_body(grid, an)
    hu = body.hu
    # A coarse reference grid of the same anatomy: random placements (vessel targets,
    # lesion centres) are checked against it, so that they do not depend on the output
    # grid and one seed shows the same vessels and lesions at every matrix size.
    coverage = an.lung_height + an.margin_top + an.margin_bottom
    ref_grid = _make_grid(seed, an, max(int(round(coverage / REF_SLICE_MM)), 8), REF_SIZE_PX)
    ref_body = _build_body(ref_grid, an)
    ref_lung = ref_body.lung_side > 0
    trees = _grow_trees(seed, an, body, ref_grid, ref_body)
    # Class plan that shapes the lung mask (CAP effusion), then the lung mask itself.
    lr = _rng(seed, _STREAM_LESIONS, CLASS_NAMES.index(label))
    levels = np.full((grid.nz, 2), np.inf)
    cap_sides: list[int] = []
    if label == "cap":
        cap_sides = [int(lr.integers(1, 3))] if lr.uniform() >= 0.3 else [1, 2]
        if lr.uniform() < 0.35:
            for side in cap_sides:
                levels[:, side - 1] = _effusion_level(lr, body, side)
    lung, effusion = _lung_parenchyma_vessels(grid, an, body, hu, trees, levels)
    lesion_mask = _infection(label, lr, grid, an, hu, lung, trees, cap_sides, ref_body, ref_grid, ref_lung)
    _draw_airways(grid, body, hu, trees)
    _effusion_and_noise(seed, an, grid, hu, effusion if np.isfinite(levels).any() else None)
    lesion_mask &= lung
    infected = np.flatnonzero(lesion_mask.sum(axis=(1, 2)) > INFECTED_MIN_PIXELS)
    fov = grid.nx * grid.dxy
    volume = CTVolume(
        hu=hu,
        spacing_mm=(float(grid.dz), float(grid.dxy), float(grid.dxy)),
        origin_mm=(-fov / 2 + grid.dxy / 2, -fov / 2 + grid.dxy / 2, -float(grid.nz - 1) * grid.dz),
        slice_numbers=tuple(range(1, grid.nz + 1)),
    )
    return Phantom(
        volume=volume,
        lung_mask=lung,
        lesion_mask=lesion_mask,
        label=label,
        infected_z=tuple(int(z) for z in infected),
        seed=seed,
        lobe_mask=_lobe_truth(seed, an, grid, body, lung),
    )


def _grow_trees(seed: int, an: _Anatomy, body: _Body, ref_grid: _Grid, ref_body: _Body) -> _Trees:
    """Pulmonary arteries and veins, bronchi beside the arteries, trachea and main
    bronchi, as tapered tubes (segments) drawn later in their bounding boxes."""
    tr = _rng(seed, _STREAM_TREES)
    vessels: list[_Segment] = []
    airways: list[_Segment] = []
    central: list[_Segment] = []
    zz_carina = an.margin_top + an.carina_t * an.lung_height
    zz_hilum = an.margin_top + an.hilum_t * an.lung_height
    v_trachea = -0.05 * an.thorax_b
    carina = np.array([zz_carina, v_trachea, 0.0])
    central.append(_Segment(np.array([-20.0, v_trachea, 0.0]), carina, an.trachea_r, an.trachea_r * 0.95, 0))
    hila: list[np.ndarray] = []
    for side, sign in ((1, -1.0), (2, 1.0)):
        uc, vc, a0, b0 = body.lung_centres[side - 1]
        hilum = np.array([zz_hilum, vc - 0.15 * b0, sign * (an.med_half + 10.0)])
        hila.append(hilum)
        r_main = an.trachea_r * (0.72 if side == 1 else 0.64)
        central.append(_Segment(carina, hilum, r_main, r_main * 0.9, 0))
        # Arteries from the hilum, veins from lower down (towards the left atrium).
        vein_root = np.array([zz_hilum + 0.18 * an.lung_height, vc - 0.3 * b0, sign * (an.med_half + 6.0)])
        arteries = _target_tree(
            tr,
            hilum,
            _lung_targets(tr, ref_grid, ref_body.lung_side, side, VESSEL_TARGETS),
            tr.uniform(5.5, 7.5),
            VESSEL_MIN_RADIUS_MM,
        )
        veins = _target_tree(
            tr,
            vein_root,
            _lung_targets(tr, ref_grid, ref_body.lung_side, side, VESSEL_TARGETS),
            tr.uniform(5.0, 7.0),
            VESSEL_MIN_RADIUS_MM,
        )
        vessels.extend(arteries)
        vessels.extend(veins)
        for s in arteries:  # bronchi run beside the arteries: shift thick branches sideways
            if s.r0 < 1.8 or s.generation > 6:
                continue
            dirn = _unit(s.p1 - s.p0)
            ref = np.array([0.0, 0.0, 1.0]) if abs(dirn[0]) > 0.9 else np.array([1.0, 0.0, 0.0])
            shift = _unit(np.cross(dirn, ref)) * (s.r0 * 1.8 + 0.5)
            airways.append(_Segment(s.p0 + shift, s.p1 + shift, s.r0 * 0.8, s.r1 * 0.8, s.generation))
    return _Trees(vessels, airways, central, hila)


def _lung_parenchyma_vessels(
    grid: _Grid, an: _Anatomy, body: _Body, hu: np.ndarray, trees: _Trees, levels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The lung mask (the lung shapes less the trachea and main bronchi with their wall
    and any effusion below its ``levels``), the parenchyma and the vessels painted in;
    returns (lung mask, effusion mask)."""
    f32 = np.float32
    lung = body.lung_side > 0
    for seg in trees.central:
        got = _segment_fraction(grid, seg, extra_mm=_airway_wall_mm(seg.r0))
        if got:
            lung[got[0]] &= got[1] < 0.5
    effusion = np.zeros(hu.shape, dtype=bool)
    has_effusion = bool(np.isfinite(levels).any())
    parenchyma = (an.parenchyma_hu + an.gravity_hu * np.clip(grid.v[0] / an.thorax_b, -1, 1)).astype(f32)
    for k in range(grid.nz):
        ls = body.lung_side[k]
        if has_effusion:
            ek = effusion[k]
            for side in (1, 2):
                if np.isfinite(levels[k, side - 1]):
                    ek |= (ls == side) & (grid.v[0] > levels[k, side - 1])
            lung[k] &= ~ek
        # Parenchyma, denser towards the back (gravity).
        np.copyto(hu[k], parenchyma, where=ls > 0)
    # Thinnest vessel drawn: the anatomy stops at VESSEL_MIN_RADIUS_MM on every grid;
    # coarse grids draw the thinnest ones a little thicker so they stay faintly visible.
    min_r = max(VESSEL_MIN_RADIUS_MM, MIN_VESSEL_RADIUS_PX * grid.dxy)
    # Vessels in partial volume: blending towards soft tissue is monotone in the
    # occupancy, so the max over overlapping tubes is the blend of the max occupancy.
    for seg in trees.vessels:
        got = _segment_fraction(grid, seg._replace(r0=max(seg.r0, min_r), r1=max(seg.r1, min_r)))
        if not got:
            continue
        sl, f = got
        par = parenchyma[sl[1]]
        blend = par + f * (f32(HU_SOFT) - par)
        hb = hu[sl]
        np.copyto(hb, np.maximum(hb, blend), where=body.lung_side[sl] > 0)
    return lung, effusion


def _infection(
    label: str,
    lr: np.random.Generator,
    grid: _Grid,
    an: _Anatomy,
    hu: np.ndarray,
    lung: np.ndarray,
    trees: _Trees,
    cap_sides: list[int],
    ref_body: _Body,
    ref_grid: _Grid,
    ref_lung: np.ndarray,
) -> np.ndarray:
    """The class's lesions painted into ``hu``; returns their mask (a non-pneumonia
    nodule is painted but is not infection, so not in the mask)."""
    lesion_mask = np.zeros(hu.shape, dtype=bool)
    lesions: list[_Lesion] = []
    if label == "covid19":
        lesions = _covid_lesions(lr, ref_body, ref_grid, ref_lung, an)
        if lr.uniform() < 0.25:  # overlap with influenza: a few peribronchovascular patches
            pool = _generations(trees.vessels, 1, 4)
            for _ in range(int(lr.integers(1, 5))):
                p = _peribronchovascular_point(lr, pool, ref_grid, ref_lung)
                if p is not None:
                    lesions.append(
                        _Lesion(
                            p,
                            np.full(3, lr.uniform(4.0, 10.0)),
                            _random_frame(lr),
                            float(lr.uniform(-560, -320)),
                            2.0,
                            0.1,
                            0.0,
                            None,
                            None,
                            False,
                        )
                    )
    elif label == "influenza":
        lesions = _influenza_lesions(lr, ref_body, ref_grid, ref_lung, an, trees.vessels)
    elif label == "cap":
        lesions = _cap_lesions(lr, ref_body, ref_grid, ref_lung, an, cap_sides, trees.hila)
    for les in lesions:
        _render_lesion(grid, les, lr, hu, lung, lesion_mask)
    if label == "non_pneumonia" and lr.uniform() < 0.35:
        # One small solid nodule: not infection, so not in the lesion mask.
        point = _lung_point(
            lr, ref_body, ref_grid, ref_lung, int(lr.integers(1, 3)), (0.1, 0.9), (0.2, 0.9), False, False, an
        )
        if point is not None:
            nod = _Lesion(
                point[0],
                np.full(3, lr.uniform(2.5, 5.0)),
                np.eye(3),
                float(lr.uniform(20, 60)),
                1.0,
                0.05,
                0.0,
                None,
                None,
                False,
            )
            _render_lesion(grid, nod, lr, hu, lung, np.zeros(hu.shape, dtype=bool))
    return lesion_mask


def _draw_airways(grid: _Grid, body: _Body, hu: np.ndarray, trees: _Trees) -> None:
    """All walls, then all lumens (a lumen wins over a neighbour's wall at the
    junctions). Small airways inside the lungs only; trachea and main bronchi anywhere."""
    f32 = np.float32
    wall_hu = f32(HU_SOFT - 10.0)
    for segs, lung_only in ((trees.airways, True), (trees.central, False)):
        for seg in segs:
            got = _segment_fraction(grid, seg, extra_mm=_airway_wall_mm(seg.r0))
            if got:
                sl, f = got
                if lung_only:
                    f = f * (body.lung_side[sl] > 0)
                hb = hu[sl]
                hb += f * (wall_hu - hb) * (hb < wall_hu)  # walls, where darker than them
    for segs, lung_only in ((trees.airways, True), (trees.central, False)):
        for seg in segs:
            got = _segment_fraction(grid, seg)
            if got:
                sl, f = got
                if lung_only:
                    f = f * (body.lung_side[sl] > 0)
                hb = hu[sl]
                hb += f * (f32(HU_AIRWAY_LUMEN) - hb)


def _effusion_and_noise(seed: int, an: _Anatomy, grid: _Grid, hu: np.ndarray, effusion: np.ndarray | None) -> None:
    """Effusion (``effusion``: its mask, None without one) and noise. Noise comes from a
    small bank of correlated noise slices, shifted and flipped per slice: CT-like texture
    at little cost."""
    f32 = np.float32
    nr = _rng(seed, _STREAM_NOISE)
    sd = f32(min(an.noise_sd * math.sqrt(2.5 / max(grid.dz, 0.5)), 45.0))  # thin slices: noisier
    bank = _noise_bank(nr, grid.ny, grid.nx)
    for k in range(grid.nz):
        h = hu[k]
        if effusion is not None:
            h[effusion[k]] = HU_FLUID
        noise = bank[int(nr.integers(len(bank)))]
        noise = np.roll(noise, (int(nr.integers(grid.ny)), int(nr.integers(grid.nx))), axis=(0, 1))
        if nr.uniform() < 0.5:
            noise = noise[:, ::-1]
        h += sd * noise
        np.clip(h, HU_MIN, HU_MAX, out=h)


def _airway_wall_mm(radius_mm: float) -> float:
    """Airway wall thickness: about a fifth of the lumen radius, at least 0.6 mm."""
    return max(0.6, 0.18 * radius_mm)


def _noise_bank(rng: np.random.Generator, ny: int, nx: int, count: int = 6) -> np.ndarray:
    """A few unit-variance noise slices, slightly correlated like reconstructed CT noise."""
    from scipy.ndimage import gaussian_filter

    bank = rng.standard_normal(size=(count, ny, nx), dtype=np.float32)
    sigma = 0.5 + 0.5 * rng.uniform()
    bank = gaussian_filter(bank, sigma=(0, sigma, sigma), mode="wrap")
    bank /= bank.std(axis=(1, 2), keepdims=True)
    return bank.astype(np.float32)


def phantom_grid(
    seed: int, n_slices: int | None = None, size_px: int | None = None
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape (z, y, x) and spacing_mm (z, y, x) that ``make_phantom`` would use, cheaply.

    The grid depends on the seed only (not the label); None means drawn from the seed.
    """
    an = _draw_anatomy(int(seed))
    grid = _make_grid(int(seed), an, n_slices, size_px)
    return (grid.nz, grid.ny, grid.nx), (float(grid.dz), float(grid.dxy), float(grid.dxy))


def phantom_cohort(
    count: int, seed: int, mix: Sequence[float] = (1, 1, 1, 1), cases_per_patient: int = 1
) -> Iterator[CohortCase]:
    """Yield ``count`` cases (case_id, label, seed) of a synthetic cohort, deterministically.

    ``mix`` weighs CLASS_NAMES (in order); class counts follow it by largest remainder.
    Case seeds are drawn from ``seed`` (not ``seed + i``), so cohorts of different seeds
    do not share phantoms by accident. Case ids read ``ph<seed>-p<patient>-s<scan>``;
    ``cases_per_patient`` scans of one patient share a label (``CohortCase.patient_id``).
    """
    if count < 0:
        raise InvalidInputError(f"phantom cohort count must be >= 0, got {count}")
    if len(mix) != len(CLASS_NAMES) or any(m < 0 for m in mix) or sum(mix) <= 0:
        raise InvalidInputError(
            f"phantom mix must be {len(CLASS_NAMES)} non-negative weights for {CLASS_NAMES}, got {tuple(mix)}"
        )
    if cases_per_patient < 1:
        raise InvalidInputError(f"cases_per_patient must be >= 1, got {cases_per_patient}")
    n_patients = -(-count // cases_per_patient)
    weights = np.asarray(mix, dtype=float) / float(sum(mix))
    exact = weights * n_patients
    counts = np.floor(exact).astype(int)
    for idx in np.argsort(-(exact - counts), kind="stable")[: n_patients - counts.sum()]:
        counts[idx] += 1
    labels = [name for name, n in zip(CLASS_NAMES, counts, strict=True) for _ in range(n)]
    rng = np.random.default_rng([int(seed), 0xC0407])
    rng.shuffle(labels)
    seeds = np.random.SeedSequence([int(seed), 0xC0407]).generate_state(count, dtype=np.uint32)
    made = 0
    for p, lab in enumerate(labels):
        for s in range(cases_per_patient):
            if made >= count:
                return
            yield CohortCase(f"ph{seed}-p{p:05d}-s{s}", lab, int(seeds[made]) & 0x7FFFFFFF)
            made += 1
