"""Synthetic chest CT phantoms with ground truth (lungs, lesions by class).

A phantom is built analytically in millimetres, then sampled on a voxel grid, so that a
128-pixel and a 512-pixel phantom of one seed show the same anatomy. Every 3-D shape is
a closed-form expression evaluated with numpy broadcasting (whole volume for the large
structures, a bounding box for tubes and lesions): no per-voxel Python loops.

Axes are z/y/x as everywhere in ``pipeline``. The patient frame is LPS with the identity
direction: +x is the patient's left (column 0 is the patient's right), +y is posterior
(row 0 is anterior), +z is superior, so z index 0 is the most inferior slice and the
apex of the lungs is near the last slice. Internally the builder measures height as
``zz`` in millimetres *down* from the top of the scanned range, which is how a
radiologist reads the chest (apex first).

Randomness comes from independent streams keyed by (seed, stream): the anatomy depends
on the seed only, the lesions on (seed, label); ``n_slices`` and ``size_px`` change the
sampling grid, not the drawn anatomy. The same arguments always give the same phantom.

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

from .types import CLASS_NAMES, CTVolume, InvalidInputError

__all__ = [
    "Phantom",
    "CohortCase",
    "make_phantom",
    "phantom_cohort",
    "INFECTED_MIN_PIXELS",
]

#: A slice is "infected" when it holds more than this many lesion pixels (paper code).
INFECTED_MIN_PIXELS = 50

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
#: Smallest drawn vessel radius, as a fraction of the pixel size (smaller is invisible).
MIN_VESSEL_RADIUS_PX = 0.35


@dataclass(frozen=True)
class Phantom:
    """A synthetic chest CT and its ground truth.

    ``lung_mask`` (bool z/y/x) covers both lungs including the vessels and small airways
    inside them, and excludes the trachea, the main bronchi and any pleural effusion.
    ``lesion_mask`` (bool z/y/x) marks the lesions of infection; it lies inside
    ``lung_mask``. ``infected_z`` holds the z indices with more than
    ``INFECTED_MIN_PIXELS`` lesion pixels.
    """

    volume: CTVolume
    lung_mask: np.ndarray
    lesion_mask: np.ndarray
    label: str
    infected_z: tuple[int, ...]
    seed: int

    def __post_init__(self) -> None:
        shape = self.volume.shape
        if self.lung_mask.shape != shape or self.lesion_mask.shape != shape:
            raise InvalidInputError(
                f"Phantom masks {self.lung_mask.shape}/{self.lesion_mask.shape} do not match volume {shape}")
        if self.label not in CLASS_NAMES:
            raise InvalidInputError(f"Phantom label {self.label!r} is not one of {CLASS_NAMES}")


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


def _segment_fraction(grid: _Grid, seg: _Segment, extra_mm: float = 0.0
                      ) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Partial-volume occupancy (0..1) of a tapered tube in its bounding box."""
    rmax = max(seg.r0, seg.r1) + extra_mm + grid.dxy
    lo = np.minimum(seg.p0, seg.p1) - rmax
    hi = np.maximum(seg.p0, seg.p1) + rmax
    lo[0] -= grid.dz
    hi[0] += grid.dz
    sl = grid.box(lo, hi)
    if sl is None:
        return None
    zz, v, u = grid.coords(sl)
    d = seg.p1 - seg.p0
    dd = float(np.dot(d, d)) or 1e-6
    pz, pv, pu = zz - seg.p0[0], v - seg.p0[1], u - seg.p0[2]
    t = np.clip((pz * d[0] + pv * d[1] + pu * d[2]) / dd, 0.0, 1.0)
    dist = np.sqrt((pz - t * d[0]) ** 2 + (pv - t * d[1]) ** 2 + (pu - t * d[2]) ** 2)
    radius = seg.r0 + (seg.r1 - seg.r0) * t + extra_mm
    # Partial volume across about one pixel in plane: thin vessels fade, as on real CT.
    frac = np.clip((radius - dist) / grid.dxy + 0.5, 0.0, 1.0)
    return sl, frac.astype(np.float32, copy=False)


def _max_into(target: np.ndarray, sl: tuple[slice, slice, slice], frac: np.ndarray) -> None:
    """target[sl] = max(target[sl], frac) with target uint8 in 1/255 steps."""
    q = (frac * 255.0 + 0.5).astype(np.uint8)
    np.maximum(target[sl], q, out=target[sl])


def _grow_tree(rng: np.random.Generator, root: np.ndarray, direction: np.ndarray,
               radius: float, min_radius: float, length_scale: float, origin: np.ndarray,
               generation: int = 0, out: list[_Segment] | None = None) -> list[_Segment]:
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
        for ratio, angle in ((rng.uniform(0.8, 0.9), rng.uniform(0.1, 0.35)),
                             (rng.uniform(0.45, 0.7), -rng.uniform(0.6, 1.1))):
            r_child = r_end * ratio
            if r_child < min_radius:
                continue
            nd = _rotate(d, axis, angle)
            # Branches keep heading away from the hilum, so the tree fills the lung.
            nd = _unit(nd + 0.25 * _unit(p1 - origin))
            stack.append((p1, nd, r_child, g + 1))
    return out


def _target_tree(rng: np.random.Generator, root: np.ndarray, targets: np.ndarray,
                 root_radius: float, min_radius: float) -> list[_Segment]:
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


def _lung_targets(rng: np.random.Generator, grid: _Grid, lung_side: np.ndarray, side: int,
                  count: int) -> np.ndarray:
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
        thorax_a=r.uniform(112, 148), thorax_b=r.uniform(78, 108), rib_w=r.uniform(8, 12),
        muscle=r.uniform(8, 22), fat=r.uniform(4, 28), med_half=r.uniform(14, 24),
        lung_height=r.uniform(195, 280), margin_top=r.uniform(8, 30),
        margin_bottom=r.uniform(18, 50),
        t_dome_right=r.uniform(0.58, 0.70), t_dome_left=r.uniform(0.68, 0.78),
        heart_u=r.uniform(8, 30), heart_v=r.uniform(-0.45, -0.2), heart_a=r.uniform(48, 66),
        heart_b=r.uniform(40, 54), heart_t0=r.uniform(0.38, 0.48), spine_r=r.uniform(14, 20),
        aorta_r=r.uniform(10, 14), trachea_r=r.uniform(7.5, 10.5), carina_t=r.uniform(0.28, 0.36),
        hilum_t=r.uniform(0.40, 0.48), rib_pitch=r.uniform(21, 28), rib_height=r.uniform(8, 12),
        rib_drop=r.uniform(35, 60), rib_phase=r.uniform(0, 1),
        lung_shape=r.normal(0, 0.035, size=(2, 4, 2)),
        parenchyma_hu=r.uniform(-885, -820), gravity_hu=r.uniform(10, 55),
        noise_sd=r.uniform(8, 28), pixel_mm_512=r.uniform(*PIXEL_MM_AT_512),
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
    return _Grid(nz, size, size, float(dz), float(pixel_mm), float(off_u), float(off_v),
                 zz.astype(np.float32), v.astype(np.float32), u.astype(np.float32))


class _Body(NamedTuple):
    hu: np.ndarray  # float32 z/y/x
    lung_side: np.ndarray  # int8: 0 outside the lungs, 1 right lung, 2 left lung
    t: np.ndarray  # (nz,1,1) lung height fraction: 0 apex, 1 base
    lung_centres: tuple[tuple[float, float, float, float], ...]  # per side: u_c, v_c, a0, b0
    thorax_ab: tuple[np.ndarray, np.ndarray]  # (nz,1,1) inner rib cage half axes


def _build_body(grid: _Grid, an: _Anatomy) -> _Body:
    """Body, fat, muscle, ribs, spine, sternum, mediastinum, heart, aorta, lungs."""
    f32 = np.float32
    u, v = grid.u, grid.v
    t = ((grid.zz - an.margin_top) / an.lung_height).astype(f32)
    upper = np.sqrt(np.clip((t + 0.15) / 0.55, 0.0, 1.0))
    ta = (an.thorax_a * (0.70 + 0.30 * upper)).astype(f32)
    tb = (an.thorax_b * (0.85 + 0.15 * upper)).astype(f32)
    u2, v2 = u * u, v * v
    # Normalised squared radii of nested ellipses (cheap: per-axis squares, per-z scales).
    rho_thorax = u2 / (ta * ta) + v2 / (tb * tb)
    outer_a, outer_b = ta + an.rib_w, tb + an.rib_w
    rho_ribs = u2 / (outer_a * outer_a) + v2 / (outer_b * outer_b)
    mus_a, mus_b = outer_a + an.muscle, outer_b + an.muscle * 1.6
    rho_muscle = u2 / (mus_a * mus_a) + v2 / (mus_b * mus_b)
    body_a, body_b = mus_a + an.fat, mus_b + an.fat
    # The back is flatter than the front: squash the posterior half of the outline.
    vb = np.where(v > 0, v * 1.12, v).astype(f32)
    rho_body = u2 / (body_a * body_a) + (vb * vb) / (body_b * body_b)

    hu = np.full((grid.nz, grid.ny, grid.nx), HU_AIR, dtype=f32)
    hu[rho_body <= 1.0] = HU_FAT
    hu[rho_muscle <= 1.0] = HU_MUSCLE
    inside = rho_thorax <= 1.0
    hu[inside] = HU_SOFT
    # Below the diaphragm the liver fills the right side.
    below = (t > 0.85) & inside & (u < 25.0)
    hu[below] = HU_LIVER

    # Ribs: bands just outside the pleura, sloping down towards the front.
    ring = (rho_ribs <= 1.0) & ~inside
    ant = np.clip(-v / tb, -1.0, 1.0)  # +1 at the front, -1 at the back
    phase = (grid.zz + an.rib_drop * (ant + 1.0) / 2.0) / an.rib_pitch + an.rib_phase
    frac = phase - np.floor(phase)
    in_rib = ring & (frac < an.rib_height / an.rib_pitch) & (np.abs(u) > 22.0) & (t > -0.1)
    # Cortex bright at the band's upper and lower edges, marrow inside.
    hu[in_rib] = HU_MARROW
    cortex = in_rib & ((frac < 0.25 * an.rib_height / an.rib_pitch)
                       | (frac > 0.75 * an.rib_height / an.rib_pitch))
    hu[cortex] = HU_CORTEX

    # Spine: vertebral body in the posterior midline, canal and spinous process behind.
    v_sp = tb - 0.55 * an.spine_r
    d_sp = np.sqrt(u2 + (v - v_sp) ** 2)
    disc = ((grid.zz / 27.0 + an.rib_phase) % 1.0) < 0.18
    vert = d_sp <= an.spine_r
    hu[vert] = HU_MARROW
    hu[vert & (d_sp > an.spine_r - 2.2)] = HU_CORTEX
    hu[vert & disc & (d_sp <= an.spine_r - 2.2)] = 80.0
    v_canal = v_sp + an.spine_r + 8.0
    d_canal = np.sqrt(u2 + (v - v_canal) ** 2)
    arch = (d_canal <= 12.5) & ~vert
    hu[arch] = 600.0
    hu[d_canal <= 7.5] = HU_FLUID
    spinous = (np.abs(u) < 4.0) & (v > v_canal + 10.0) & (v < v_canal + 38.0)
    hu[spinous & (rho_body <= 1.0)] = 550.0
    # Sternum at the front in the upper and mid chest.
    d_st = (u / 16.0) ** 2 + ((v + tb + 4.0) / 7.0) ** 2
    hu[(d_st <= 1.0) & (t > 0.05) & (t < 0.85)] = 450.0

    # Heart and a fat layer around it; descending aorta left of the spine.
    hprof = np.sqrt(np.clip((t - an.heart_t0) / 0.22, 0.0, 1.0)) * (
        1.0 - 0.25 * np.clip((t - 0.85) / 0.2, 0.0, 1.0))
    ha, hb = (an.heart_a * hprof + 1e-3).astype(f32), (an.heart_b * hprof + 1e-3).astype(f32)
    hv = an.heart_v * tb
    rho_heart = ((u - an.heart_u) / ha) ** 2 + ((v - hv) / hb) ** 2
    heart = rho_heart <= 1.0
    hu[(rho_heart <= 1.12) & inside] = HU_FAT + 20.0
    hu[heart & inside] = HU_SOFT
    ao_u, ao_v = 0.55 * an.spine_r + an.aorta_r, v_sp - 0.9 * an.spine_r
    aorta = ((u - ao_u) ** 2 + (v - ao_v) ** 2 <= an.aorta_r ** 2) & (t > 0.22)

    # Lungs: a near-elliptical outline per side (a few Fourier terms of the angle),
    # scaled up from the apex, cut by the diaphragm domes, the mediastinum, heart,
    # spine and aorta.
    lung_side = np.zeros(hu.shape, dtype=np.int8)
    prof = np.sqrt(np.clip(t / 0.32, 0.0, 1.0)).astype(f32)
    centres = []
    for side, sign in ((1, -1.0), (2, 1.0)):
        a0 = (an.thorax_a - an.med_half) / 2.0 + 4.0
        b0 = an.thorax_b * 0.93
        uc, vc = sign * (an.med_half + a0 - 4.0), an.thorax_b * 0.04
        centres.append((float(uc), float(vc), float(a0), float(b0)))
        du, dv = u - uc, v - vc  # (1,1,nx), (1,ny,1)
        theta = np.arctan2(dv / b0, du / a0)  # 2-D (1,ny,nx): computed once per side
        coef = an.lung_shape[side - 1]
        wobble = 1.0 + sum(coef[k, 0] * np.cos((k + 1) * theta) + coef[k, 1] * np.sin((k + 1) * theta)
                           for k in range(4))
        q2 = ((du / a0) ** 2 + (dv / b0) ** 2) / (wobble * wobble)  # (1,ny,nx)
        scale = (prof * prof + 1e-6).astype(f32)  # (nz,1,1) squared profile
        dome = an.t_dome_right if side == 1 else an.t_dome_left
        rd2 = np.clip((du / a0) ** 2 + ((dv + 0.25 * b0) / (1.1 * b0)) ** 2, 0.0, 1.0)
        t_dia = dome + (1.02 - dome) * rd2  # (1,ny,nx) lowest lung height at each pixel
        lung = (q2 <= scale) & (t > 0.0) & (t < t_dia) & (rho_thorax <= 0.97)
        lung_side[lung] = side
    med = (np.abs(u) <= an.med_half) & (v < v_sp)
    lung_side[med | (rho_heart <= 1.12) | (d_sp <= an.spine_r + 3.0) | aorta
              | (d_canal <= 14.0)] = 0
    hu[aorta & inside] = HU_SOFT
    return _Body(hu, lung_side, t, tuple(centres), (ta, tb))


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


def _render_lesion(grid: _Grid, les: _Lesion, rng: np.random.Generator, hu: np.ndarray,
                   lung: np.ndarray, lesion_mask: np.ndarray) -> None:
    """Raise the HU inside the lesion (ground glass keeps vessels visible) and mark it."""
    halo_mm = 6.0 if les.halo_hu is not None else 0.0
    reach = float(les.axes.max()) * (1.0 + 2.5 * les.irregularity) + les.edge_mm + halo_mm
    sl = grid.box(les.centre - reach - grid.dz, les.centre + reach + grid.dz)
    if sl is None:
        return
    zz, v, u = grid.coords(sl)
    pz, pv, pu = zz - les.centre[0], v - les.centre[1], u - les.centre[2]
    q = [(pz * f[0] + pv * f[1] + pu * f[2]) / a for f, a in zip(les.frame, les.axes)]
    rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) + 1e-6
    # Irregular outline: smooth lobulation as a function of direction.
    wob = np.ones_like(rho)
    for _ in range(3):
        k = rng.normal(size=3) * 2.2
        wob += les.irregularity * np.sin((q[0] * k[0] + q[1] * k[1] + q[2] * k[2]) / rho
                                         + rng.uniform(0, 2 * np.pi))
    mean_axis = float(les.axes.mean())
    depth_mm = (wob - rho) * mean_axis  # approx. signed distance inside the outline
    w = np.clip(depth_mm / les.edge_mm + 0.5, 0.0, 1.0)
    value = np.full(rho.shape, les.value_hu, dtype=np.float32)
    # Heterogeneity: two smooth waves so the opacity is not flat.
    for _ in range(2):
        k = rng.normal(size=3) / rng.uniform(4.0, 9.0)
        value += rng.uniform(10, 45) * np.sin(pz * k[0] + pv * k[1] + pu * k[2] + rng.uniform(0, 6.3))
    if les.core_hu is not None:
        core = np.clip((0.55 * wob - rho) * mean_axis / 3.0 + 0.5, 0.0, 1.0)
        value = value + core * (les.core_hu - value)
    if les.paving:
        # Crazy paving: thickened interlobular septa, wavy sheets containing the z axis
        # (lines on every axial slice), forming polygons of 6-12 mm.
        lines = np.zeros_like(rho)
        width = max(0.7, 0.45 * grid.dxy)
        base = rng.uniform(0, np.pi)
        for j in range(3):
            ang = base + j * np.pi / 3 + rng.uniform(-0.25, 0.25)
            period = rng.uniform(6.0, 12.0)
            s = pv * math.sin(ang) + pu * math.cos(ang)
            s = s + rng.uniform(0.8, 2.0) * np.sin((pv * math.cos(ang) - pu * math.sin(ang)) / 5.0
                                                   + rng.uniform(0, 6.3))
            dist = np.abs(((s / period + rng.uniform()) % 1.0) - 0.5) * period
            np.maximum(lines, np.exp(-(dist / width) ** 2), out=lines)
        value = value + les.paving * lines
    weight = w
    if les.halo_hu is not None:
        halo = np.clip((depth_mm + halo_mm) / 2.0 + 0.5, 0.0, 1.0)
        value = np.where(w > 0.5, value, les.halo_hu)
        weight = np.maximum(w, halo)
    lung_b = lung[sl]
    weight = weight * lung_b
    hb = hu[sl]
    hb += weight * np.maximum(value - hb, 0.0)
    inside = (weight > 0.5) & lung_b
    if les.bronchograms:
        # Air bronchograms: a few branching air tubes through the consolidation.
        frac = np.zeros(hb.shape, dtype=np.float32)
        out_dir = _unit(les.frame[1] * 0.3 + les.frame[0] * 0.6 + rng.normal(size=3) * 0.3)
        for _ in range(int(rng.integers(2, 5))):
            start = les.centre - out_dir * float(les.axes.max()) * 0.9 + rng.normal(size=3) * 5.0
            d = _unit(out_dir + rng.normal(size=3) * 0.35)
            segs = _grow_tree(rng, start, d, rng.uniform(1.4, 2.6), 0.9, 1.6, start - d * 10.0,
                              generation=7)
            for seg in segs:
                got = _segment_fraction(grid, seg)
                if got is None:
                    continue
                ssl, f = got
                # Restrict to the lesion box.
                inter = []
                for a, b in zip(ssl, sl):
                    s0, s1 = max(a.start, b.start), min(a.stop, b.stop)
                    inter.append((s0, s1, a.start, b.start))
                if any(s0 >= s1 for s0, s1, _, _ in inter):
                    continue
                fs = tuple(slice(s0 - a0, s1 - a0) for s0, s1, a0, _ in inter)
                ts = tuple(slice(s0 - b0, s1 - b0) for s0, s1, _, b0 in inter)
                np.maximum(frac[ts], f[fs], out=frac[ts])
        frac *= (w > 0.5)
        hb += frac * (HU_BRONCHOGRAM - hb)
    lesion_mask[sl] |= inside


def _lung_point(rng: np.random.Generator, body: _Body, grid: _Grid, lung: np.ndarray, side: int,
                t_range: tuple[float, float], rho_range: tuple[float, float], lower_bias: bool,
                posterior_bias: bool, an: _Anatomy, tries: int = 40) -> tuple[np.ndarray, np.ndarray] | None:
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
        prof = math.sqrt(min(max(tt / 0.32, 0.0), 1.0))
        rr = rng.uniform(*rho_range) * prof
        p = np.array([an.margin_top + tt * an.lung_height, vc + rr * b0 * math.sin(theta),
                      uc + rr * a0 * math.cos(theta)])
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


def _peribronchovascular_point(rng: np.random.Generator, vessels: Sequence[_Segment],
                               gen_range: tuple[int, int], grid: _Grid,
                               lung: np.ndarray) -> np.ndarray | None:
    pool = [s for s in vessels if gen_range[0] <= s.generation <= gen_range[1]]
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


def _covid_lesions(rng, body, grid, lung, an, peripheral_only: bool = False) -> list[_Lesion]:
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
        out.append(_Lesion(
            centre=p, axes=axes, frame=_frame_from_normal(normal, rng),
            value_hu=float(rng.uniform(-660, -380)), edge_mm=float(rng.uniform(2.5, 6.0)),
            irregularity=float(rng.uniform(0.05, 0.16)),
            paving=float(rng.uniform(120, 260)) if (paving_case and rng.uniform() < 0.8) else 0.0,
            core_hu=float(rng.uniform(-180, 20)) if has_core else None, halo_hu=None,
            bronchograms=False))
    return out


def _influenza_lesions(rng, body, grid, lung, an, vessels) -> list[_Lesion]:
    out = []
    for _ in range(int(rng.integers(8, 26))):
        p = _peribronchovascular_point(rng, vessels, (1, 5), grid, lung)
        if p is None:
            continue
        r = rng.uniform(4.0, 13.0) if rng.uniform() < 0.8 else rng.uniform(12.0, 18.0)
        consolidative = rng.uniform() < 0.35
        out.append(_Lesion(
            centre=p, axes=r * rng.uniform(0.7, 1.3, size=3), frame=_random_frame(rng),
            value_hu=float(rng.uniform(-220, 10) if consolidative else rng.uniform(-560, -300)),
            edge_mm=float(rng.uniform(1.2, 3.0)), irregularity=float(rng.uniform(0.05, 0.2)),
            paving=0.0, core_hu=None, halo_hu=None, bronchograms=False))
    for _ in range(int(rng.integers(3, 11))):  # small (centrilobular) nodules
        p = _peribronchovascular_point(rng, vessels, (3, 9), grid, lung)
        if p is None:
            continue
        out.append(_Lesion(
            centre=p, axes=np.full(3, rng.uniform(2.0, 5.0)), frame=np.eye(3),
            value_hu=float(rng.uniform(-120, 40)), edge_mm=1.0, irregularity=0.05,
            paving=0.0, core_hu=None, halo_hu=None, bronchograms=False))
    if rng.uniform() < 0.3:  # overlap with COVID-19: a few peripheral patches
        for _ in range(int(rng.integers(1, 4))):
            got = _lung_point(rng, body, grid, lung, int(rng.integers(1, 3)), (0.1, 0.95),
                              (0.72, 1.0), False, False, an)
            if got is None:
                continue
            p, normal = got
            tang = rng.uniform(8, 20)
            out.append(_Lesion(
                centre=p - normal * 3.0, axes=np.array([0.5 * tang, tang, tang]),
                frame=_frame_from_normal(normal, rng), value_hu=float(rng.uniform(-600, -400)),
                edge_mm=3.0, irregularity=0.1,
                paving=float(rng.uniform(80, 180)) if rng.uniform() < 0.15 else 0.0,
                core_hu=None, halo_hu=None, bronchograms=False))
    return out


def _cap_lesions(rng, body, grid, lung, an) -> tuple[list[_Lesion], list[int]]:
    sides = [int(rng.integers(1, 3))]
    if rng.uniform() < 0.3:
        sides = [1, 2]
    out = []
    for side in sides:
        for n in range(1 if rng.uniform() < 0.7 else 2):
            lobar = rng.uniform() < 0.5
            lower = rng.uniform() < 0.65
            t_range = (0.55, 0.95) if lower else (0.12, 0.5)
            got = _lung_point(rng, body, grid, lung, side, t_range,
                              (0.35, 0.7) if lobar else (0.6, 0.95), False, lower, an)
            if got is None:
                continue
            p, normal = got
            r = rng.uniform(30, 55) if lobar else rng.uniform(16, 32)
            axes = r * rng.uniform(0.75, 1.25, size=3)
            out.append(_Lesion(
                centre=p, axes=axes, frame=_frame_from_normal(normal, rng),
                value_hu=float(rng.uniform(-40, 40)), edge_mm=float(rng.uniform(1.0, 2.5)),
                irregularity=float(rng.uniform(0.08, 0.2)), paving=0.0, core_hu=None,
                halo_hu=float(rng.uniform(-520, -300)) if rng.uniform() < 0.5 else None,
                bronchograms=rng.uniform() < 0.85))
    return out, sides


def _effusion(rng: np.random.Generator, body: _Body, grid: _Grid, side: int) -> np.ndarray:
    """Dependent (posterior) fluid with a flat top in the supine patient."""
    uc, vc, a0, b0 = body.lung_centres[side - 1]
    depth = rng.uniform(0.18, 0.45)
    grow = np.clip((body.t - 0.4) / 0.6, 0.0, 1.0)  # more fluid towards the base
    v_level = vc + b0 * (1.0 - depth * grow * 2.0)
    return (body.lung_side == side) & (grid.v > v_level) & (grow > 0)


# --- Public API ------------------------------------------------------------------------


def make_phantom(label: str, seed: int, n_slices: int | None = None,
                 size_px: int | None = None) -> Phantom:
    """Build a synthetic chest CT of class ``label`` (one of CLASS_NAMES).

    ``n_slices`` and ``size_px`` (matrix ``size_px`` x ``size_px``) are drawn from the
    seed when None. The slices always cover the whole chest, so a given ``n_slices``
    sets the slice spacing; a drawn one follows from a drawn thickness of 1-5 mm. Pixel
    spacing is 0.6-0.9 mm on a 512 matrix, scaled by 512 / ``size_px``.
    """
    if label not in CLASS_NAMES:
        raise InvalidInputError(f"Phantom label {label!r} is not one of {CLASS_NAMES}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"Phantom seed must be a non-negative integer, got {seed!r}")
    if n_slices is not None and not (8 <= int(n_slices) <= 2000):
        raise InvalidInputError(f"n_slices must be between 8 and 2000, got {n_slices}")
    if size_px is not None and not (32 <= int(size_px) <= 1024):
        raise InvalidInputError(f"size_px must be between 32 and 1024, got {size_px}")
    seed = int(seed)
    an = _draw_anatomy(seed)
    grid = _make_grid(seed, an, n_slices, size_px)
    body = _build_body(grid, an)
    hu = body.hu
    f32 = np.float32

    # Trees: pulmonary vessels from each hilum (three lobar trunks), airways beside the
    # first generations, trachea and main bronchi.
    tr = _rng(seed, _STREAM_TREES)
    min_r = max(0.6, MIN_VESSEL_RADIUS_PX * grid.dxy)
    vessels: list[_Segment] = []
    airways: list[_Segment] = []
    central: list[_Segment] = []
    zz_carina = an.margin_top + an.carina_t * an.lung_height
    zz_hilum = an.margin_top + an.hilum_t * an.lung_height
    v_trachea = -0.05 * an.thorax_b
    carina = np.array([zz_carina, v_trachea, 0.0])
    central.append(_Segment(np.array([-20.0, v_trachea, 0.0]), carina, an.trachea_r, an.trachea_r * 0.95, 0))
    for side, sign in ((1, -1.0), (2, 1.0)):
        uc, vc, a0, b0 = body.lung_centres[side - 1]
        hilum = np.array([zz_hilum, vc - 0.15 * b0, sign * (an.med_half + 10.0)])
        r_main = an.trachea_r * (0.72 if side == 1 else 0.64)
        central.append(_Segment(carina, hilum, r_main, r_main * 0.9, 0))
        # Arteries from the hilum, veins from lower down towards the left atrium; both
        # reach random points of the lung. Fewer targets on coarse grids (thin vessels
        # would vanish in partial volume anyway).
        n_targets = int(np.clip(140 * grid.nx / REFERENCE_MATRIX, 30, 140))
        vein_root = np.array([zz_hilum + 0.18 * an.lung_height, vc - 0.3 * b0, sign * (an.med_half + 6.0)])
        arteries = _target_tree(tr, hilum, _lung_targets(tr, grid, body.lung_side, side, n_targets),
                                tr.uniform(5.5, 7.5), min_r)
        veins = _target_tree(tr, vein_root, _lung_targets(tr, grid, body.lung_side, side, n_targets),
                             tr.uniform(5.0, 7.0), min_r)
        vessels.extend(arteries)
        vessels.extend(veins)
        # Bronchi run beside the arteries: shift the thicker branches sideways.
        for s in arteries:
            if s.r0 < 1.8 or s.generation > 6:
                continue
            dirn = _unit(s.p1 - s.p0)
            ref = np.array([0.0, 0.0, 1.0]) if abs(dirn[0]) > 0.9 else np.array([1.0, 0.0, 0.0])
            shift = _unit(np.cross(dirn, ref)) * (s.r0 * 1.8 + 0.5)
            airways.append(_Segment(s.p0 + shift, s.p1 + shift, s.r0 * 0.8, s.r1 * 0.8, s.generation))

    # Lung mask: the lung shapes less the trachea and main bronchi (with wall).
    lung = body.lung_side > 0
    wall_of = lambda r: max(0.6, 0.18 * r)  # noqa: E731 - tiny helper, read in two places
    central_frac = np.zeros(hu.shape, dtype=np.uint8)
    central_lumen = np.zeros(hu.shape, dtype=np.uint8)
    for s in central:
        got = _segment_fraction(grid, s, extra_mm=wall_of(s.r0))
        if got:
            _max_into(central_frac, *got)
        got = _segment_fraction(grid, s)
        if got:
            _max_into(central_lumen, *got)
    lung &= central_frac < 128

    lr = _rng(seed, _STREAM_LESIONS, CLASS_NAMES.index(label))
    effusion = np.zeros(hu.shape, dtype=bool)
    cap_plan = None
    if label == "cap":
        cap_plan = _cap_lesions(lr, body, grid, lung, an)
        if lr.uniform() < 0.35:
            for side in cap_plan[1]:
                effusion |= _effusion(lr, body, grid, side)
        lung &= ~effusion

    # Parenchyma: denser towards the back (gravity), vessels blended in with partial volume.
    parenchyma = (an.parenchyma_hu + an.gravity_hu * np.clip(grid.v / an.thorax_b, -1, 1)).astype(f32)
    vessel_frac = np.zeros(hu.shape, dtype=np.uint8)
    for s in vessels:
        got = _segment_fraction(grid, s)
        if got:
            _max_into(vessel_frac, *got)
    lung_hu = parenchyma + vessel_frac.astype(f32) * f32((HU_SOFT - an.parenchyma_hu) / 255.0)
    np.copyto(hu, np.broadcast_to(lung_hu, hu.shape), where=body.lung_side > 0)
    del lung_hu, vessel_frac

    # Lesions of infection.
    lesion_mask = np.zeros(hu.shape, dtype=bool)
    lesions: list[_Lesion] = []
    if label == "covid19":
        lesions = _covid_lesions(lr, body, grid, lung, an)
        if lr.uniform() < 0.25:  # overlap with influenza: a few peribronchovascular patches
            for _ in range(int(lr.integers(1, 5))):
                p = _peribronchovascular_point(lr, vessels, (1, 4), grid, lung)
                if p is not None:
                    r = lr.uniform(4.0, 10.0)
                    lesions.append(_Lesion(p, np.full(3, r), _random_frame(lr), float(lr.uniform(-560, -320)),
                                           2.0, 0.1, 0.0, None, None, False))
    elif label == "influenza":
        lesions = _influenza_lesions(lr, body, grid, lung, an, vessels)
    elif label == "cap" and cap_plan is not None:
        lesions = cap_plan[0]
    for les in lesions:
        _render_lesion(grid, les, lr, hu, lung, lesion_mask)
    if label == "non_pneumonia" and lr.uniform() < 0.35:
        # One small solid nodule: not infection, so not in the lesion mask.
        got = _lung_point(lr, body, grid, lung, int(lr.integers(1, 3)), (0.1, 0.9), (0.2, 0.9), False, False, an)
        if got is not None:
            nod = _Lesion(got[0], np.full(3, lr.uniform(2.5, 5.0)), np.eye(3), float(lr.uniform(20, 60)),
                          1.0, 0.05, 0.0, None, None, False)
            _render_lesion(grid, nod, lr, hu, lung, np.zeros(hu.shape, dtype=bool))

    # Airways: wall then lumen, inside the lungs for the small ones, everywhere for the
    # trachea and main bronchi.
    air_wall = np.zeros(hu.shape, dtype=np.uint8)
    air_lumen = np.zeros(hu.shape, dtype=np.uint8)
    for s in airways:
        got = _segment_fraction(grid, s, extra_mm=wall_of(s.r0))
        if got:
            _max_into(air_wall, *got)
        got = _segment_fraction(grid, s)
        if got:
            _max_into(air_lumen, *got)
    in_lung = body.lung_side > 0
    air_wall[~in_lung] = 0
    air_lumen[~in_lung] = 0
    np.maximum(air_wall, central_frac, out=air_wall)
    np.maximum(air_lumen, central_lumen, out=air_lumen)
    del central_frac, central_lumen
    w = air_wall.astype(f32) / 255.0
    hu += w * (f32(HU_SOFT - 10.0) - hu) * (hu < HU_SOFT - 10.0)  # walls, where darker than them
    del w, air_wall
    w = air_lumen.astype(f32) / 255.0
    hu += w * (f32(HU_AIRWAY_LUMEN) - hu)
    del w, air_lumen

    if effusion.any():
        hu[effusion] = HU_FLUID
        lesion_mask &= ~effusion

    # Noise: thinner slices are noisier (fewer photons per voxel).
    nr = _rng(seed, _STREAM_NOISE)
    sd = an.noise_sd * math.sqrt(2.5 / max(grid.dz, 0.5))
    noise = nr.standard_normal(size=hu.shape, dtype=f32)
    noise *= f32(min(sd, 45.0))
    hu += noise
    del noise
    np.clip(hu, HU_MIN, HU_MAX, out=hu)

    lesion_mask &= lung
    infected = np.flatnonzero(lesion_mask.sum(axis=(1, 2)) > INFECTED_MIN_PIXELS)
    fov = grid.nx * grid.dxy
    volume = CTVolume(
        hu=hu,
        spacing_mm=(float(grid.dz), float(grid.dxy), float(grid.dxy)),
        origin_mm=(-fov / 2 + grid.dxy / 2, -fov / 2 + grid.dxy / 2, -float(grid.nz - 1) * grid.dz),
        slice_numbers=tuple(range(1, grid.nz + 1)),
    )
    return Phantom(volume=volume, lung_mask=lung, lesion_mask=lesion_mask, label=label,
                   infected_z=tuple(int(z) for z in infected), seed=seed)


def phantom_cohort(count: int, seed: int, mix: Sequence[float] = (1, 1, 1, 1),
                   cases_per_patient: int = 1) -> Iterator[CohortCase]:
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
            f"phantom mix must be {len(CLASS_NAMES)} non-negative weights for {CLASS_NAMES}, got {tuple(mix)}")
    if cases_per_patient < 1:
        raise InvalidInputError(f"cases_per_patient must be >= 1, got {cases_per_patient}")
    n_patients = -(-count // cases_per_patient)
    weights = np.asarray(mix, dtype=float) / float(sum(mix))
    exact = weights * n_patients
    counts = np.floor(exact).astype(int)
    for idx in np.argsort(-(exact - counts), kind="stable")[: n_patients - counts.sum()]:
        counts[idx] += 1
    labels = [name for name, n in zip(CLASS_NAMES, counts) for _ in range(n)]
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
