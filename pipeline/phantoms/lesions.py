"""Findings of family B by class, placed as the radiology literature describes them.

- ``covid19``: bilateral, multifocal, rounded ground-glass opacities (GGO, about -750 to
  -450 HU) flattened against the pleura (subpleural), posterior and lower predominant;
  crazy paving (reticulation inside GGO) in some cases, sometimes a reversed halo
  (atoll) or a consolidative core, sometimes large confluent posterior areas.
- ``cap``: lobar consolidation (stopped by the fissure: a straight margin) or a
  segmental wedge from the hilum to the pleura, dense (about -100 to +60 HU) with air
  bronchograms (bronchi are drawn after the lesions), mostly one-sided; sometimes a
  parapneumonic effusion (fluid outside the lung mask); sometimes bronchopneumonia:
  clustered centrilobular nodules and tree-in-bud along the last airway generations.
- ``influenza``: peribronchovascular GGO and patchy consolidation along mid-generation
  vessels, centrilobular GGO nodules at the ends of the tree, bilateral and diffuse,
  with bronchial wall thickening.
- ``non_pneumonia``: healthy lungs; sometimes solid nodules (some juxtapleural) or a
  lobulated, spiculated tumour mass (2-6 cm, 20-60 HU) touching the pleura or the
  mediastinum: drawn inside the lung mask, never in the lesion mask.

Every class may show mild emphysema (low-attenuation spots), and the classes overlap a
little (COVID-like peripheral patches in influenza, peribronchovascular ones in
COVID-19, small GGO beside a CAP consolidation) as real scans do.

A lesion is a deformed ellipsoid ("blob") rendered in its bounding box: a normalised
radius perturbed by random plane waves, a soft edge, HU targets (with core/ring
profiles), plane-wave heterogeneity and, for crazy paving, the zero lines of another
plane-wave field as septal reticulation. GGO only raises the attenuation (``max``: the
vessels stay visible), solid nodules replace it. The rendering and the placement rules
are family B's own; family A (``pipeline.phantom``) is not used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .anatomy import LEFT, RIGHT, Anatomy
from .body import Effusion
from .common import Grid, Stream, Waves, frame_from, rng_for, segment_balls, smoothstep, splat_balls, unit_rows
from .vessels import Tree

__all__ = ["Blob", "LesionPlan", "plan_lesions", "render_lesions", "render_masses"]

CLASSES = ("non_pneumonia", "cap", "influenza", "covid19")
HU_GGO = (-750.0, -450.0)
HU_CONSOLIDATION = (-100.0, 60.0)
HU_EMPHYSEMA = (-990.0, -960.0)
HU_MASS = (20.0, 60.0)
HU_NODULE = (0.0, 60.0)
HU_FLUID = (3.0, 22.0)
#: Voxels per chunk when a blob's box is evaluated (bounds temporaries to ~100 MB).
BLOB_CHUNK_VOXELS = 1 << 20
#: Shortest hilum-to-pleura extent of a segmental consolidation, mm.
SEGMENT_MIN_MM = 60.0
#: Largest relative change of a blob's radius by its shape waves (bounds its box).
SHAPE_PERTURBATION_MAX = 0.3
#: Width (in units of the field's rms) of the reticulation lines of crazy paving.
PAVING_LINE = 0.22


@dataclass(frozen=True)
class Blob:
    centre: np.ndarray  # (h, y, x) mm
    frame: np.ndarray  # rows: unit axes
    axes: np.ndarray  # semi-axes along the frame rows, mm
    hu: float
    shape: Waves  # relative radius perturbation
    texture: Waves  # HU heterogeneity
    edge: float = 0.15  # soft edge, fraction of the radius
    hu_inner: float | None = None  # core (or ring centre) value
    inner: float = 0.0  # radius fraction of the core
    ring: bool = False  # reversed halo: ``hu`` is the ring, ``hu_inner`` the centre
    paving: float = 0.0  # HU of crazy-paving reticulation
    paving_waves: Waves | None = None
    lobe: int = 0  # restrict to this lobe (0: anywhere in the lungs)
    taper: float = 0.0  # narrowing towards the -axis end (segmental wedge)
    infection: bool = True  # False: nodule or tumour (not in lesion_mask)


@dataclass
class LesionPlan:
    blobs: list[Blob] = field(default_factory=list)
    #: small balls: (centres, radii, hu, infection) - centrilobular nodules, tree-in-bud
    balls: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = field(default_factory=list)
    emphysema: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    effusions: list[Effusion] = field(default_factory=list)
    wall_factor: float = 1.0
    findings: dict = field(default_factory=dict)


def _effusion_depth(an: Anatomy, effusions: list[Effusion]):
    """Lung depth with the effusions taken out (same rule as the slice painter)."""

    def depth(pts: np.ndarray) -> np.ndarray:
        d = an.lung_depth(pts)
        for e in effusions:
            h, y, x = pts[..., 0], pts[..., 1], pts[..., 2]
            wall = an.cavity_radius(np.arctan2(y, x), h) - np.hypot(x, y)
            t = e.thickness * smoothstep(e.h_top, e.h_top - 60.0, h) * np.clip((y / an.cav_b - 0.1) / 0.8, 0, 1) ** 0.7
            on = an.side_of(pts) == e.side
            d = np.where(on, np.minimum(d, wall - t), d)
        return d

    return depth


class _Placer:
    """Random lung points per side with their depth, height and posterior fractions."""

    def __init__(self, rng: np.random.Generator, an: Anatomy, depth_fn) -> None:
        self.rng, self.an, self.depth_fn = rng, an, depth_fn
        self.pts, self.depth, self.lobe = {}, {}, {}
        for s in (RIGHT, LEFT):
            p = an.lung_points(rng, s, 2500, min_depth=0.5, depth_fn=depth_fn)
            self.pts[s], self.depth[s], self.lobe[s] = p, depth_fn(p), an.lobe_of(p)

    def pick(self, side: int, weight: np.ndarray) -> np.ndarray:
        w = np.maximum(weight, 0) + 1e-12
        return self.pts[side][self.rng.choice(len(w), p=w / w.sum())]

    def posterior(self, side: int) -> np.ndarray:
        return np.clip(0.5 + 0.5 * self.pts[side][:, 1] / self.an.cav_b, 0, 1)

    def lower(self, side: int) -> np.ndarray:
        return np.clip(1.0 - self.an.t_of(self.pts[side][:, 0]), 0, 1)


def _waves(rng: np.random.Generator, size: float, rms: float, n: int = 4) -> Waves:
    return Waves.draw(rng, n, (0.7 * size, 2.2 * size), rms)


def _peripheral(rng, pl: _Placer, side: int, a_t: float, hu: float, post_w: float, low_w: float, **kw) -> Blob:
    """A rounded patch flattened against the pleura, centred just beneath it."""
    a_n = a_t * rng.uniform(0.45, 0.8)
    want = a_n * rng.uniform(0.3, 1.0)
    w = (
        np.exp(-(((pl.depth[side] - want) / 4.0) ** 2))
        * (1 + post_w * pl.posterior(side)) ** 2
        * (1 + low_w * pl.lower(side)) ** 2
    )
    c = pl.pick(side, w)
    normal = pl.an.depth_gradient(c[None], pl.depth_fn)[0]
    return Blob(
        c,
        frame_from(normal, rng),
        np.array([a_n, a_t, a_t * rng.uniform(0.7, 1.3)]),
        hu,
        _waves(rng, a_t, rng.uniform(0.1, 0.22)),
        _waves(rng, a_t, rng.uniform(10, 35)),
        **kw,
    )


def _peribronchovascular(rng, tree: Tree, n: int, hu_fn) -> list[Blob]:
    """Patches around mid-generation bronchovascular bundles, elongated along them."""
    pool = np.flatnonzero((tree.gen >= 2) & (tree.gen <= 6) & (tree.r0 >= 1.0))
    if pool.size == 0:
        return []
    out = []
    for i in rng.choice(pool, size=n):
        d = tree.p1[i] - tree.p0[i]
        along = rng.uniform(10, 28)
        across = rng.uniform(5, 12)
        hu = hu_fn()
        out.append(
            Blob(
                tree.p0[i] + rng.uniform(0, 1) * d,
                frame_from(d, rng),
                np.array([along, across, across]),
                hu,
                _waves(rng, across, 0.2),
                _waves(rng, across, 25.0),
                edge=0.25,
            )
        )
    return out


def _centrilobular(
    rng,
    tree: Tree,
    n: int,
    hu: tuple[float, float],
    r: tuple[float, float],
    near: np.ndarray | None = None,
    within_mm: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    tips = tree.tips
    if near is not None:
        tips = tips[np.linalg.norm(tips - near, axis=1) < within_mm]
    if len(tips) == 0:
        return None
    c = tips[rng.integers(0, len(tips), n)] + rng.normal(scale=1.5, size=(n, 3))
    return c, rng.uniform(*r, n), rng.uniform(*hu, n)


def _tree_in_bud(
    rng, tree: Tree, near: np.ndarray, within_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Thickened, filled last-generation branches (V and Y shapes) near ``near``."""
    mid = (tree.p0 + tree.p1) / 2
    sel = np.flatnonzero((tree.r0 < 1.3) & (np.linalg.norm(mid - near, axis=1) < within_mm))
    if sel.size == 0:
        return None
    sel = rng.choice(sel, size=min(sel.size, 400), replace=False)
    c, rad, _ = segment_balls(tree.p0[sel], tree.p1[sel], np.full(sel.size, 1.0), np.full(sel.size, 1.0), _FreeGrid())
    rad = rad * rng.uniform(1.2, 1.8)
    return c, rad, np.full(len(c), rng.uniform(-150, 20))


class _FreeGrid:
    """A stand-in grid for ball spacing when no voxel grid is known yet (fine spacing)."""

    dzf = 0.8
    dxy = 0.8


def _plan_covid19(rng: np.random.Generator, pl: _Placer, arteries: Tree, plan: LesionPlan) -> None:
    """COVID-19: peripheral ground glass, mostly on both sides, some with crazy paving, a
    reversed halo or a denser core; sometimes confluent or peribronchovascular patches."""
    u = rng.uniform
    f = plan.findings
    sides = (RIGHT, LEFT)

    def ggo() -> float:
        return float(u(*HU_GGO))

    n = int(u(3, 15))
    both = u() < 0.88
    lesion_sides = list(rng.choice(sides, n)) if not both else [RIGHT, LEFT] + list(rng.choice(sides, n - 2))
    paving_case = u() < 0.45
    for s in lesion_sides:
        kw: dict = {}
        if paving_case and u() < 0.6:
            kw.update(paving=float(u(80, 220)), paving_waves=Waves.draw(rng, 5, (12.0, 25.0)))
        roll = u()
        if roll < 0.08:
            kw.update(ring=True, hu_inner=float(u(-760, -600)), inner=float(u(0.55, 0.75)))
            hu = float(u(-150, 20))
        elif roll < 0.28:
            kw.update(hu_inner=float(u(-250, 20)), inner=float(u(0.3, 0.5)))
            hu = ggo()
        else:
            hu = ggo()
        plan.blobs.append(
            _peripheral(rng, pl, int(s), float(np.clip(rng.lognormal(math.log(20), 0.45), 10, 45)), hu, 1.5, 1.5, **kw)
        )
    f["ggo"] = n
    if u() < 0.3:
        k = int(u(1, 4))
        for s in rng.choice(sides, k):
            plan.blobs.append(_peripheral(rng, pl, int(s), float(u(35, 60)), ggo(), 3.0, 2.5))
        f["confluent"] = k
    if u() < 0.25:
        extra = _peribronchovascular(rng, arteries, int(u(1, 4)), ggo)
        plan.blobs += extra
        f["peribronchovascular"] = len(extra)
    f["crazy_paving"] = bool(paving_case)


def plan_lesions(label: str, seed: int, an: Anatomy, arteries: Tree) -> LesionPlan:
    rng = rng_for(seed, Stream.LESIONS, CLASSES.index(label))
    u = rng.uniform
    plan = LesionPlan()
    f = plan.findings
    sides = (RIGHT, LEFT)
    if label == "cap":
        main = RIGHT if u() < 0.55 else LEFT
        if u() < 0.3:
            eff_sides = [main] + ([LEFT if main == RIGHT else RIGHT] if u() < 0.3 else [])
            plan.effusions = [
                Effusion(s, u(8, 40), an.h_low + u(0.3, 0.6) * an.lung_height, u(*HU_FLUID)) for s in eff_sides
            ]
    elif label == "non_pneumonia" and u() < 0.04:
        plan.effusions = [
            Effusion(int(rng.choice(sides)), u(5, 20), an.h_low + u(0.2, 0.4) * an.lung_height, u(*HU_FLUID))
        ]
    depth_fn = _effusion_depth(an, plan.effusions)
    pl = _Placer(rng, an, depth_fn)
    f["effusion"] = [int(e.side) for e in plan.effusions]

    if u() < (0.25 if label == "non_pneumonia" else 0.12):
        n = int(u(30, 250))
        pts = np.concatenate([pl.pick(s, 0.3 + (1 - pl.lower(s)) ** 2)[None] for s in rng.choice(sides, n)])
        plan.emphysema = (pts, u(1.5, 6.0, n), u(*HU_EMPHYSEMA, n))
        f["emphysema_spots"] = n

    def ggo() -> float:
        return float(u(*HU_GGO))

    if label == "covid19":
        _plan_covid19(rng, pl, arteries, plan)

    elif label == "cap":
        pattern = rng.choice(["lobar", "segmental", "broncho"], p=(0.45, 0.35, 0.2))
        f["pattern"] = str(pattern)
        for k, s in enumerate([main] + ([LEFT if main == RIGHT else RIGHT] if u() < 0.2 else [])):
            plan.blobs += _cap_focus(rng, pl, an, arteries, s, pattern if k == 0 else "segmental", plan)
        f["sides"] = sorted({int(an.side_of(b.centre[None])[0]) for b in plan.blobs})
        if u() < 0.15:
            for s in rng.choice(sides, int(u(1, 3))):
                plan.blobs.append(_peripheral(rng, pl, int(s), float(u(8, 16)), ggo(), 0.5, 0.5))

    elif label == "influenza":
        n = int(u(6, 23))
        plan.blobs += _peribronchovascular(rng, arteries, n, lambda: ggo() if u() < 0.7 else float(u(-300, 0)))
        f["peribronchovascular"] = n
        if u() < 0.7:
            got = _centrilobular(rng, arteries, int(u(20, 120)), (-650.0, -300.0), (2.0, 4.5))
            if got is not None:
                plan.balls.append((*got, True))
                f["centrilobular"] = len(got[0])
        plan.wall_factor = float(u(1.8, 2.8))
        if u() < 0.25:
            k = int(u(1, 4))
            for s in rng.choice(sides, k):
                plan.blobs.append(_peripheral(rng, pl, int(s), float(u(10, 22)), ggo(), 1.0, 1.0))
            f["peripheral"] = k

    if label == "non_pneumonia" or u() < 0.1:
        _masses(rng, pl, an, plan, allow_tumour=label == "non_pneumonia")
    return plan


def _cap_focus(rng, pl: _Placer, an: Anatomy, arteries: Tree, side: int, pattern: str, plan: LesionPlan) -> list[Blob]:
    u = rng.uniform
    lobes = (1, 2, 3) if side == RIGHT else (4, 5)
    weights = (0.25, 0.2, 0.55) if side == RIGHT else (0.4, 0.6)
    lobe = int(rng.choice(lobes, p=weights))
    in_lobe = pl.lobe[side] == lobe
    if not in_lobe.any():
        in_lobe = np.ones_like(in_lobe)
    hu = float(u(-40, 40))
    het = _waves(rng, 30.0, u(10, 25))
    if pattern == "lobar":
        c = pl.pick(side, in_lobe * np.exp(-pl.depth[side] / 15.0))
        axes = u(45, 90) * np.array([u(0.7, 1.0), u(0.7, 1.0), 1.0])
        fr = frame_from(unit_rows(rng.normal(size=(1, 3)))[0], rng)
        out = [Blob(c, fr, axes, hu, _waves(rng, float(axes.mean()), 0.15), het, edge=0.12, lobe=lobe)]
        if u() < 0.3:  # a ground-glass halo around it
            out.insert(
                0,
                Blob(
                    c,
                    fr,
                    axes * 1.18,
                    float(u(-600, -400)),
                    _waves(rng, float(axes.mean()), 0.15),
                    _waves(rng, 20.0, 20.0),
                    edge=0.2,
                    lobe=lobe,
                ),
            )
        return out
    if pattern == "segmental":
        hilum = arteries.p0[arteries.side == side][0] if (arteries.side == side).any() else pl.pts[side][0]
        # A wedge from the hilum to the costal pleura: the far end lies near the pleura
        # and well away from the hilum (not on the mediastinal surface beside it).
        far = np.linalg.norm(pl.pts[side] - hilum, axis=1) > SEGMENT_MIN_MM
        periph = pl.pick(side, in_lobe * np.exp(-pl.depth[side] / 4.0) * (far if far.any() else 1.0))
        axis = periph - hilum
        length = float(np.linalg.norm(axis))
        half = math.radians(u(22, 38))
        across = math.tan(half) * length * 0.8
        axes = np.array([0.5 * length, across, across * u(0.7, 1.0)])
        return [
            Blob(
                hilum + axis * 0.6,
                frame_from(axis, rng),
                axes,
                hu,
                _waves(rng, across, 0.12),
                het,
                edge=0.12,
                lobe=lobe,
                taper=float(u(0.4, 0.7)),
            )
        ]
    # bronchopneumonia: a cluster of centrilobular nodules, tree-in-bud and small patches
    c = pl.pick(side, in_lobe.astype(float))
    reach = float(u(35, 55))
    got = _centrilobular(rng, arteries, int(u(25, 80)), (-100.0, 30.0), (1.5, 3.0), near=c, within_mm=reach)
    if got is not None:
        plan.balls.append((*got, True))
    tib = _tree_in_bud(rng, arteries, c, reach)
    if tib is not None:
        plan.balls.append((*tib, True))
    plan.wall_factor = float(u(1.5, 2.2))
    out = []
    for _ in range(int(u(2, 6))):
        p = c + rng.normal(scale=reach / 2.5, size=3)
        a = float(u(8, 20))
        out.append(
            Blob(
                p,
                frame_from(rng.normal(size=3), rng),
                np.array([a, a * u(0.6, 1), a * u(0.6, 1)]),
                float(u(-300, 20)),
                _waves(rng, a, 0.2),
                _waves(rng, a, 20.0),
                edge=0.25,
            )
        )
    return out


def _masses(rng, pl: _Placer, an: Anatomy, plan: LesionPlan, allow_tumour: bool) -> None:
    """Solid nodules and (non-pneumonia only) a tumour: in the lung mask, not lesions."""
    u = rng.uniform
    f = plan.findings
    nodules = int(u(1, 5)) if (u() < 0.45 or not allow_tumour) else 0
    for _ in range(nodules):
        s = int(rng.choice((RIGHT, LEFT)))
        r = float(u(2.0, 7.5))
        want = r * u(0.5, 0.9) if u() < 0.4 else r + u(3, 25)
        c = pl.pick(s, np.exp(-(((pl.depth[s] - want) / 2.0) ** 2)))
        plan.blobs.append(
            Blob(
                c,
                frame_from(rng.normal(size=3), rng),
                r * np.array([1.0, u(0.8, 1), u(0.8, 1)]),
                float(u(*HU_NODULE)),
                _waves(rng, r, 0.08),
                _waves(rng, r, 8.0),
                edge=0.1,
                infection=False,
            )
        )
    f["nodules"] = nodules
    if allow_tumour and u() < 0.3:
        s = int(rng.choice((RIGHT, LEFT)))
        r = float(u(10, 30))
        touch = r * u(0.6, 0.9)
        if u() < 0.6:
            w = np.exp(-(((pl.depth[s] - touch) / 3.0) ** 2))
            f["tumour"] = "pleura"
        else:
            dm = an.mediastinal_distance(pl.pts[s])
            w = np.exp(-(((dm - touch) / 3.0) ** 2)) * (pl.depth[s] > 0.5 * touch)
            f["tumour"] = "mediastinum"
        c = pl.pick(s, w)
        hu = float(u(*HU_MASS))
        plan.blobs.append(
            Blob(
                c,
                frame_from(rng.normal(size=3), rng),
                r * np.array([1.0, u(0.75, 1), u(0.75, 1)]),
                hu,
                _waves(rng, r, u(0.12, 0.28), n=6),
                _waves(rng, r, 10.0),
                edge=0.08,
                infection=False,
            )
        )
        k = int(u(0, 12))  # spicules: thin strands radiating from the surface
        if k:
            d = unit_rows(rng.normal(size=(k, 3)))
            p0 = c + d * r * 0.8
            p1 = c + d * (r + u(5, 20, (k, 1)))
            cb, rb, _ = segment_balls(p0, p1, u(0.6, 1.2, k), np.full(k, 0.4), _FreeGrid())
            plan.balls.append((cb, rb, np.full(len(cb), hu), False))
        f["tumour_diameter_mm"] = round(2 * r, 1)


def _intersect(a: tuple[slice, slice, slice], b: tuple[slice, slice, slice]) -> tuple[slice, slice, slice] | None:
    z, y, x = (slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(a, b, strict=True))
    return None if any(s.start >= s.stop for s in (z, y, x)) else (z, y, x)


def _render_blob(
    vol: np.ndarray, side: np.ndarray, mark: np.ndarray, grid: Grid, an: Anatomy, b: Blob, lung_boxes: dict
) -> None:
    """A blob in its own lung (lesions do not cross the mediastinum), evaluated only in
    the part of its box that the ellipsoid can reach."""
    own = int(an.side_of(b.centre[None])[0])
    if own not in lung_boxes:
        return
    bound = min(float(b.shape.amp.sum()), SHAPE_PERTURBATION_MAX)
    reach_rho = (1.0 + b.edge) / (1.0 - bound)  # normalised radius beyond which nothing shows
    reach = float(b.axes.max()) * reach_rho + 2.0
    box = grid.box(b.centre - reach, b.centre + reach)
    box = None if box is None else _intersect(box, lung_boxes[own])
    if box is None:
        return
    f32 = np.float32
    plane = (box[1].stop - box[1].start) * (box[2].stop - box[2].start)
    step = max(1, BLOB_CHUNK_VOXELS // max(plane, 1))
    for z0 in range(box[0].start, box[0].stop, step):
        sl = (slice(z0, min(z0 + step, box[0].stop)), box[1], box[2])
        hz, yy, xx = grid.h[sl[0]], grid.y[sl[1]], grid.x[sl[2]]
        loc = [
            b.frame[i, 0] * (hz - b.centre[0]).astype(f32)[:, None, None]
            + b.frame[i, 1] * (yy - b.centre[1]).astype(f32)[None, :, None]
            + b.frame[i, 2] * (xx - b.centre[2]).astype(f32)[None, None, :]
            for i in range(3)
        ]
        u0 = loc[0] / f32(b.axes[0])
        trans = (loc[1] / f32(b.axes[1])) ** 2 + (loc[2] / f32(b.axes[2])) ** 2
        if b.taper > 0:
            scale = np.clip(1.0 - b.taper * (1.0 - u0) / 2.0, 0.15, 1.0)
            trans = trans / (scale * scale)
        rho0 = np.sqrt(u0 * u0 + trans)
        can = (rho0 < reach_rho) & (side[sl] == own)
        if not can.any():
            continue
        # The sub-box where the blob can show: the costly fields are evaluated there only.
        kk, jj, ii = (np.flatnonzero(can.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
        sub = (slice(kk[0], kk[-1] + 1), slice(jj[0], jj[-1] + 1), slice(ii[0], ii[-1] + 1))
        can, rho0 = can[sub], rho0[sub]
        hs, ys, xs = hz[sub[0]], yy[sub[1]], xx[sub[2]]
        pert = b.shape.on_box(hs - b.centre[0], ys - b.centre[1], xs - b.centre[2])
        rho = rho0 * (1.0 + np.clip(pert, -SHAPE_PERTURBATION_MAX, SHAPE_PERTURBATION_MAX))
        occ = smoothstep(1.0 + b.edge, 1.0 - b.edge, rho).astype(f32)
        occ *= can
        if b.lobe:
            occ *= an.lobe_at(hs[:, None, None], ys[None, :, None], xs[None, None, :]) == b.lobe
        if not occ.any():
            continue
        target = b.hu + b.texture.on_box(hs, ys, xs)
        if b.hu_inner is not None:
            core = smoothstep(b.inner + 0.1, b.inner - 0.1, rho)
            target = target + (b.hu_inner - b.hu) * core
        if b.paving > 0 and b.paving_waves is not None:
            pw = b.paving_waves.on_box(hs, ys, xs)
            target += b.paving * np.exp(-((pw / PAVING_LINE) ** 2))
        if b.infection:
            target = np.clip(target, HU_GGO[0] - 50.0, HU_CONSOLIDATION[1])
        full = (
            slice(sl[0].start + sub[0].start, sl[0].start + sub[0].stop),
            slice(sl[1].start + sub[1].start, sl[1].start + sub[1].stop),
            slice(sl[2].start + sub[2].start, sl[2].start + sub[2].stop),
        )
        cur = vol[full]
        new = cur + occ * (target - cur)
        # Infection raises the attenuation (vessels stay visible in GGO); a mass replaces it.
        vol[full] = np.maximum(cur, new) if b.infection else new
        mark[full] |= occ >= 0.5


def render_lesions(
    vol: np.ndarray, side: np.ndarray, lesion: np.ndarray, grid: Grid, an: Anatomy, plan: LesionPlan, lung_boxes: dict
) -> None:
    """Emphysema, then the lesions of infection (before the airways are drawn)."""
    if plan.emphysema is not None:
        c, r, v = plan.emphysema
        splat_balls(vol, grid, c, r, v, "min", within=side)
    for b in plan.blobs:
        if b.infection:
            _render_blob(vol, side, lesion, grid, an, b, lung_boxes)
    for c, r, v, infection in plan.balls:
        if infection:
            splat_balls(vol, grid, c, r, v, "max", within=side, mark=lesion)


def render_masses(
    vol: np.ndarray, side: np.ndarray, nodule: np.ndarray, grid: Grid, an: Anatomy, plan: LesionPlan, lung_boxes: dict
) -> None:
    """Nodules and tumours (after the airways: a mass obscures what runs through it)."""
    for b in plan.blobs:
        if not b.infection:
            _render_blob(vol, side, nodule, grid, an, b, lung_boxes)
    for c, r, v, infection in plan.balls:
        if not infection:
            splat_balls(vol, grid, c, r, v, "max", within=side, mark=nodule)
