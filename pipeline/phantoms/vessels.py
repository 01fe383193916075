"""Tubes of family B: mediastinal vessels and airways, ribs, clavicles, and the
pulmonary vessel and airway trees.

Central structures (aorta with its arch and branches, pulmonary trunk and arteries,
venae cavae, pulmonary vein trunks, oesophagus, trachea and main bronchi) are short
polylines placed relative to the anatomy; their voxels are removed from the lung mask.
Ribs are bony rings (cortex over marrow, costal cartilage in front) that follow the
cavity outline and descend anteriorly.

The intrapulmonary trees are grown by a *vectorised random walk*: all tips of all
trees step together, each steered by persistence, a little noise and attraction towards
a random subpleural target ahead of it, with a bounded turn per step (vessels run
straight between branchings); thick vessels are turned away from the pleura (gradient
of ``Anatomy.lung_depth``), thin ones end there. They taper as they go and bifurcate
into a major and a minor child (Murray-like radii, asymmetric angles) after a length
that grows with the radius, down to the thinnest radius the pixel size can show.
Arteries start at the hila as segmental branches, veins at the pulmonary vein trunks;
bronchi run beside the arteries of the first generations. This is unlike family A (``pipeline.phantom``),
whose trees connect the hilum to sampled target points by recursive splitting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from .anatomy import LEFT, RIGHT, Anatomy
from .common import Grid, segment_balls, splat_balls, unit_rows
from .scanner import Contrast

__all__ = ["Tube", "Tree", "Hila", "central_tubes", "rib_tubes", "grow_trees", "render_tubes", "render_tree"]

HU_AIRWAY = -990.0
HU_AIRWAY_WALL = 20.0
#: Random walk: step length limits (mm), persistence noise (per step), attraction to the
#: target, pleural repulsion and the pleural margin where it acts (mm).
STEP_MM = (1.0, 3.0)
WOBBLE = 0.03
ATTRACT = 0.3
REPULSE = 0.9
PLEURA_MARGIN_MM = 5.0
#: Radius lost per mm of growth (taper) and the thinnest vessel grown, mm.
TAPER_PER_MM = 0.998
#: Vessels end at the pleura (this deep); only thicker ones are turned away from it.
PLEURA_STOP_MM = 1.5
REPEL_MIN_R = 1.0
#: On coarse grids the thinnest vessel grown is this fraction of the pixel size, but
#: never more than MAX_MIN_R: the mid-generation branches that carry peribronchovascular
#: findings must exist on every grid.
MIN_R_PER_PIXEL = 0.4
MAX_MIN_R = 1.0
#: Largest change of direction per step (|delta| of the unit direction, ~5 degrees).
MAX_TURN = 0.09
VESSEL_MIN_R = 0.5
MAX_STEPS = 220
MAX_TIPS = 9000
#: Branch length before a bifurcation: (base, per mm of radius), times U(0.5, 1.2).
BRANCH_MM = (8.0, 6.0)
#: Segmental branches that leave each hilum, by lobe.
SEGMENTS = {RIGHT: (1, 1, 1, 2, 2, 3, 3, 3, 3, 3), LEFT: (4, 4, 4, 4, 5, 5, 5, 5)}
#: Target points of the branches: subpleural (shallower than this, mm), per lung.
PERIPHERY_MM = 12.0
TARGET_POOL = 1500
#: Candidate targets looked at per new branch (the most forward one wins).
TARGET_CANDIDATES = 6
#: Bronchi accompany arteries up to this generation and down to this radius (mm).
BRONCHUS_MAX_GEN = 6
BRONCHUS_MIN_R = 0.9
#: Central structures clear the lung this far beyond their radius, mm.
CLEAR_MARGIN_MM = 1.0


@dataclass(frozen=True)
class Tube:
    """A polyline tube: points (P, 3) (h, y, x) mm and radii (P,)."""

    points: np.ndarray
    radii: np.ndarray
    value: float
    wall: float = 0.0  # > 0: an airway, ``value`` is the wall, the lumen is air
    lumen: float = HU_AIRWAY
    clears_lung: bool = True
    marrow: float | None = None  # a bone: ``value`` is the cortex
    cortex: float = 1.5


@dataclass(frozen=True)
class Tree:
    """Segments of a grown tree (one row per step of one tip)."""

    p0: np.ndarray
    p1: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    gen: np.ndarray
    side: np.ndarray
    perp: np.ndarray  # unit vector across the segment (where the bronchus runs)
    tips: np.ndarray  # (T, 3) end points of branches that stopped growing

    @staticmethod
    def empty() -> "Tree":
        z3, z = np.zeros((0, 3)), np.zeros(0)
        return Tree(z3, z3, z, z, z.astype(int), z.astype(int), z3, z3)

    @staticmethod
    def concat(trees: list["Tree"]) -> "Tree":
        if not trees:
            return Tree.empty()
        return Tree(
            *(
                np.concatenate([getattr(t, f) for t in trees])
                for f in ("p0", "p1", "r0", "r1", "gen", "side", "perp", "tips")
            )
        )


@dataclass(frozen=True)
class Hila:
    """Where the central tubes meet each lung (index 0 right, 1 left)."""

    artery: tuple[np.ndarray, np.ndarray]
    bronchus: tuple[np.ndarray, np.ndarray]
    vein_sup: tuple[np.ndarray, np.ndarray]
    vein_inf: tuple[np.ndarray, np.ndarray]


def _enter_lung(an: Anatomy, start: np.ndarray, direction: np.ndarray, max_mm: float = 120.0) -> np.ndarray:
    """The first point 2 mm deep in a lung along a ray from ``start``."""
    d = direction / np.linalg.norm(direction)
    pts = start + np.arange(0.0, max_mm, 1.0)[:, None] * d
    ok = np.flatnonzero(an.lung_depth(pts) > 2.0)
    return pts[ok[0]] if ok.size else pts[-1]


def _hila(an: Anatomy, rng: np.random.Generator) -> Hila:
    u = rng.uniform
    art, br, vs, vi = [], [], [], []
    for sign, dh in ((-1.0, u(0, 10)), (1.0, -u(0, 10))):
        h = an.hilum_h + dh
        y = u(-0.05, 0.1) * an.cav_b
        xm = float(an.band(h)[0])
        lateral = np.array([0.0, 0.0, sign])
        br.append(_enter_lung(an, np.array([h, y, xm]), lateral))
        # Right: the artery lies in front of the bronchus; left: it arches over it.
        a_off = np.array([0.0, -12.0, 0.0]) if sign < 0 else np.array([10.0, 4.0, 0.0])
        art.append(_enter_lung(an, np.array([h, y, xm]) + a_off, lateral))
        vs.append(_enter_lung(an, np.array([h - 8.0, y - 20.0, xm]), lateral))
        vi.append(_enter_lung(an, np.array([h - 30.0, y + 5.0, xm]), lateral))
    return Hila(tuple(art), tuple(br), tuple(vs), tuple(vi))  # type: ignore[arg-type]


def _line(*pts: np.ndarray, n: int = 12) -> np.ndarray:
    """A polyline through the given points, each leg sampled n times."""
    out = [np.asarray(pts[0], dtype=float)[None]]
    for a, b in pairwise(pts):
        t = np.linspace(0, 1, n + 1)[1:, None]
        out.append(np.asarray(a) + (np.asarray(b) - np.asarray(a)) * t)
    return np.concatenate(out)


def _aorta_tubes(
    an: Anatomy, con: Contrast, rng: np.random.Generator, h_car: float, top: float
) -> tuple[list[Tube], np.ndarray, float]:
    """The aorta (root, ascending, arch, descending along the left of the spine) and the arch's
    three branches; with the ascending aorta's top and radius (the superior vena cava lies beside it)."""
    u = rng.uniform
    hc, C = an.heart_c, an.heart_axes[2]
    r_asc, r_arch, r_desc = u(13, 18), u(12, 15), u(10, 14)
    h_arch = h_car + u(15, 35)
    root = np.array([hc[0] + 0.45 * C, hc[1], hc[2] * 0.2])
    asc_top = np.array([h_arch, hc[1] - u(0, 15), u(-8, 4)])
    ax_, ay_, ar_ = (float(v) for v in an.spine_at(h_arch))
    desc_top = np.array([h_arch, ay_ - ar_ * u(0.2, 0.6), ax_ + ar_ + r_desc * u(0.6, 1.0)])
    mid = (asc_top + desc_top) / 2
    half = (asc_top - desc_top) / 2
    rise = float(np.linalg.norm(half)) * u(0.5, 0.8)
    phi = np.linspace(0, math.pi, 25)[:, None]
    arch = mid + half * np.cos(phi) + np.array([rise, 0.0, 0.0]) * np.sin(phi)
    hs = np.linspace(h_arch, -10.0, 24)
    dx_, dy_, dr_ = an.spine_at(hs)
    drift = np.clip((hs - an.h_low) / max(h_arch - an.h_low, 1.0), 0, 1)[:, None]
    desc = np.stack([hs, dy_ - 0.6 * dr_, dx_ + dr_ * 0.5 + r_desc * 0.6], axis=1)
    desc[:, 2:] = desc_top[2] * drift + desc[:, 2:] * (1 - drift)
    aorta = np.concatenate([_line(root, asc_top), arch[1:], desc[1:]])
    rad = np.concatenate([np.linspace(r_asc, r_asc, 13), np.linspace(r_asc, r_arch, 24), np.full(23, r_desc)])
    tubes = [Tube(aorta, rad, con.aorta)]
    for frac, r_b, lat in ((0.3, 6.5, -8.0), (0.5, 4.5, -2.0), (0.7, 5.0, 6.0)):
        p = arch[int(frac * 24)]
        tubes.append(Tube(_line(p, np.array([top, p[1] - 5.0, p[2] + lat * 2])), np.full(13, r_b), con.aorta))
    return tubes, asc_top, r_asc


def central_tubes(an: Anatomy, con: Contrast, rng: np.random.Generator) -> tuple[list[Tube], Hila]:
    u = rng.uniform
    hila = _hila(an, rng)
    top = an.coverage + 5.0
    hc, A, B, C = an.heart_c, *an.heart_axes
    h_car = an.hilum_h + u(15, 35)
    sx, sy, sr = (float(v) for v in an.spine_at(h_car))
    r_tr = u(7.5, 11.0)
    wall_tr = u(1.3, 2.5)
    x_tr, y_tr = sx + u(-3, 3), sy - sr - u(14, 22)
    carina = np.array([h_car, y_tr, x_tr])
    tubes: list[Tube] = []
    tubes.append(
        Tube(_line(np.array([top, y_tr - u(5, 15), x_tr]), carina), np.full(13, r_tr), HU_AIRWAY_WALL, wall=wall_tr)
    )
    for i, ratio in ((0, 0.72), (1, 0.62)):
        pts = _line(carina, hila.bronchus[i])
        tubes.append(
            Tube(pts, np.linspace(r_tr * ratio, r_tr * ratio * 0.85, len(pts)), HU_AIRWAY_WALL, wall=wall_tr * 0.8)
        )
    aorta_tubes, asc_top, r_asc = _aorta_tubes(an, con, rng, h_car, top)
    tubes += aorta_tubes
    # Pulmonary trunk and arteries.
    pa0 = np.array([hc[0] + 0.6 * C, hc[1] - 0.45 * B, hc[2] - 0.1 * A])
    bif = np.array([h_car - u(5, 15), y_tr - u(0, 12), u(8, 18)])
    r_pa, r_br = u(12, 16), u(9, 12)
    tubes.append(Tube(_line(pa0, bif), np.full(13, r_pa), con.pa))
    rpa = _line(bif, np.array([bif[0] - 3, y_tr - 14.0, x_tr - 8.0]), hila.artery[0])
    lpa = _line(bif, np.array([bif[0] + 8, y_tr + 2.0, x_tr + 20.0]), hila.artery[1])
    tubes.append(Tube(rpa, np.full(len(rpa), r_br), con.pa))
    tubes.append(Tube(lpa, np.full(len(lpa), r_br * 0.95), con.pa))
    # Venae cavae.
    r_svc = u(8, 11)
    x_svc, y_svc = asc_top[2] - r_asc - r_svc - 1.0, asc_top[1] + 3.0
    tubes.append(
        Tube(
            _line(np.array([top, y_svc, x_svc]), np.array([hc[0] + 0.45 * C, y_svc + 5, x_svc + 5])),
            np.full(13, r_svc),
            con.svc,
        )
    )
    iy = float(an.spine_at(an.h_low)[1]) - sr - 14.0
    dia_h = float(an.diaphragm(np.array(-20.0), np.array(iy)))
    tubes.append(
        Tube(
            _line(np.array([-10.0, iy, -20.0]), np.array([dia_h + 10.0, iy - 5, -18.0])),
            np.full(13, u(10, 13)),
            con.ivc,
        )
    )
    # Pulmonary vein trunks into the left atrium (posterior, towards the base).
    f = an.heart_frame
    la = hc - f[0] * 0.5 * A + f[1] * 0.45 * B
    for i in (0, 1):
        side_la = la + np.array([0.0, 0.0, (-12.0 if i == 0 else 12.0)])
        for v in (hila.vein_sup[i], hila.vein_inf[i]):
            tubes.append(Tube(_line(side_la, v), np.full(13, u(5.5, 7.5)), con.aorta))
    # Oesophagus: behind the trachea, then left of the aorta's front, into the stomach.
    r_es = u(6, 9)
    yb = float(an.spine_at(an.h_low)[1]) - sr
    es = _line(
        np.array([top, y_tr + r_tr + r_es + 2, x_tr + 4]),
        np.array([h_car, y_tr + r_tr + r_es + 2, x_tr + 8]),
        np.array([an.h_low + 20, yb - r_es - 2, 12.0]),
        np.array([-10.0, yb - 18.0, 28.0]),
    )
    tubes.append(Tube(es, np.full(len(es), r_es), an.hu_muscle))
    return tubes, hila


def rib_tubes(an: Anatomy, rng: np.random.Generator) -> list[Tube]:
    """Twelve pairs of ribs (cortex ring over marrow, cartilage in front) and clavicles."""
    u = rng.uniform
    pitch = u(21, 27)
    gap = u(1.5, 3.0)
    top = float(an.apex_top.max()) + 5.0
    tubes: list[Tube] = []
    f_all = np.linspace(0.0, 1.0, 61)
    for i in range(12):
        h0 = top - i * pitch
        drop = u(70, 100) + 2.0 * i
        f_max = 1.0 if i < 7 else (0.88 if i < 10 else 0.5)
        r0 = u(3.2, 4.0) if i == 0 else u(3.5, 4.8)
        for sign in (1.0, -1.0):
            f = f_all[f_all <= f_max]
            theta = math.pi / 2 - sign * (0.25 + f * (math.pi - 0.45))
            h = h0 - drop * (0.35 * f + 0.65 * f**1.4)
            if h.max() < -20 or h.min() > an.coverage + 20:
                continue
            rr = r0 * (1.0 - 0.25 * f)
            dist = an.cavity_radius(theta, h) + gap + rr
            pts = np.stack([h, dist * np.sin(theta), dist * np.cos(theta)], axis=1)
            bone = f <= 0.8
            tubes.append(Tube(pts[bone], rr[bone], an.hu_cortex, clears_lung=False, marrow=an.hu_marrow))
            if (~bone).sum() > 1 and f_max >= 1.0:
                j = int(np.flatnonzero(~bone)[0]) - 1
                tubes.append(Tube(pts[j:], rr[j:], an.hu_cartilage, clears_lung=False))
    # Clavicles: from the sternal notch laterally, backwards and up.
    front = float(an.cavity_radius(np.array(-math.pi / 2), an.sternum_top))
    for sign in (1.0, -1.0):
        a = np.array([an.sternum_top + 5, -(front + 8.0), sign * 18.0])
        b = np.array([an.sternum_top + 15, -(front + 12.0), sign * an.cav_a * an.inlet_lr])
        c = np.array([an.sternum_top + 25, 0.1 * an.cav_b, sign * (an.cav_a * an.inlet_lr + 35.0)])
        pts = _line(a, b, c)
        tubes.append(Tube(pts, np.full(len(pts), u(6, 8)), an.hu_cortex, clears_lung=False, marrow=an.hu_marrow))
    return tubes


def render_tubes(vol: np.ndarray, side: np.ndarray, grid: Grid, tubes: list[Tube]) -> None:
    """Draw tubes into the fine volume; central ones take their voxels out of the lungs."""
    for tb in tubes:
        p0, p1 = tb.points[:-1], tb.points[1:]
        r0, r1 = tb.radii[:-1], tb.radii[1:]
        outer = tb.wall if tb.wall > 0 else 0.0
        c, r, _ = segment_balls(p0, p1, r0 + outer, r1 + outer, grid)
        clear = side if tb.clears_lung else None
        splat_balls(vol, grid, c, r, tb.value, "max", clear=clear, clear_grow=CLEAR_MARGIN_MM)
        if tb.wall > 0:
            c, r, _ = segment_balls(p0, p1, r0, r1, grid)
            splat_balls(vol, grid, c, r, tb.lumen, "min")
        if tb.marrow is not None:
            ci, ri, _ = segment_balls(p0, p1, np.maximum(r0 - tb.cortex, 0.3), np.maximum(r1 - tb.cortex, 0.3), grid)
            splat_balls(vol, grid, ci, ri, tb.marrow, "min")


def _rotate(v: np.ndarray, axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rodrigues rotation of rows of v about unit rows of axis."""
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return v * c + np.cross(axis, v) * s + axis * (axis * v).sum(axis=1, keepdims=True) * (1 - c)


def _perp(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r = rng.normal(size=d.shape)
    return unit_rows(r - d * (r * d).sum(axis=1, keepdims=True))


def _pick_targets(
    rng: np.random.Generator, pos: np.ndarray, dirs: np.ndarray, pools: np.ndarray, pool_id: np.ndarray
) -> np.ndarray:
    """For each tip, the most forward of a few random points of its lung's pool that lie
    at least 10 mm away."""
    cand = pools[pool_id[:, None], rng.integers(0, pools.shape[1], size=(len(pos), TARGET_CANDIDATES))]
    vec = cand - pos[:, None, :]
    dist = np.linalg.norm(vec, axis=2)
    score = (vec * dirs[:, None, :]).sum(axis=2) / np.maximum(dist, 1e-6) - (dist < 10.0)
    return cand[np.arange(len(pos)), np.argmax(score, axis=1)]


def _gradient(an: Anatomy, pts: np.ndarray, d0: np.ndarray, eps: float = 1.5) -> np.ndarray:
    """Unit gradient of the lung depth by forward differences (d0: depth at pts)."""
    g = np.stack([an.lung_depth(pts + e) - d0 for e in np.eye(3) * eps], axis=1)
    return unit_rows(g)


def _branch_len(rng: np.random.Generator, rad: np.ndarray) -> np.ndarray:
    return rng.uniform(0.5, 1.2, len(rad)) * (BRANCH_MM[0] + BRANCH_MM[1] * rad)


def _step_direction(
    rng: np.random.Generator,
    an: Anatomy,
    pos: np.ndarray,
    target: np.ndarray,
    dirs: np.ndarray,
    dep: np.ndarray,
    rad: np.ndarray,
) -> np.ndarray:
    """Each tip's next direction: drawn to its target, wobbling, pushed off the pleura, turning
    at most MAX_TURN per step."""
    n = len(pos)
    to = target - pos
    dist = np.linalg.norm(to, axis=1, keepdims=True)
    att = np.where(dist > 6.0, to / np.maximum(dist, 1e-6), 0.0)
    delta = ATTRACT * att + rng.normal(scale=WOBBLE, size=(n, 3))
    near = np.flatnonzero((dep < PLEURA_MARGIN_MM) & (rad >= REPEL_MIN_R))
    if near.size:
        g = _gradient(an, pos[near], dep[near])
        delta[near] += g * (REPULSE * np.clip((PLEURA_MARGIN_MM - dep[near]) / PLEURA_MARGIN_MM, 0, 2))[:, None]
    # Vessels run fairly straight between branchings: bound the turn per step.
    delta -= dirs * (delta * dirs).sum(axis=1, keepdims=True)
    size = np.linalg.norm(delta, axis=1, keepdims=True)
    delta *= np.minimum(1.0, MAX_TURN / np.maximum(size, 1e-9))
    return unit_rows(dirs + delta)


def _grow(
    rng: np.random.Generator,
    an: Anatomy,
    pos: np.ndarray,
    target: np.ndarray,
    rad: np.ndarray,
    tree_id: np.ndarray,
    pool_id: np.ndarray,
    pools: np.ndarray,
    r_min: float,
) -> tuple[Tree, np.ndarray, np.ndarray]:
    """Grow several trees at once (one random walk for all their tips).

    Returns the segments (``side`` holds the pool id + 1, i.e. the lung side), the tree
    id of each segment and the tree id of each tip."""
    dirs = unit_rows(target - pos)
    perp = _perp(dirs, rng)
    gen = np.ones(len(pos), dtype=int)
    seg_len = np.zeros(len(pos))
    branch_len = _branch_len(rng, rad)
    dep = an.lung_depth(pos)
    rec: list[tuple[np.ndarray, ...]] = []
    tips: list[np.ndarray] = []
    tip_ids: list[np.ndarray] = []

    def cat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a, b])

    for _ in range(MAX_STEPS):
        if len(pos) == 0:
            break
        d = _step_direction(rng, an, pos, target, dirs, dep, rad)
        step = np.clip(1.5 * rad, *STEP_MM)
        new = pos + d * step[:, None]
        new_r = rad * TAPER_PER_MM**step
        dep_new = an.lung_depth(new)
        alive = (dep_new > PLEURA_STOP_MM) & (new_r >= r_min)
        rec.append(
            (pos[alive], new[alive], rad[alive], new_r[alive], gen[alive], perp[alive], tree_id[alive], pool_id[alive])
        )
        tips.append(pos[~alive])
        tip_ids.append(tree_id[~alive])
        pos, dirs, rad, target, gen = new[alive], d[alive], new_r[alive], target[alive], gen[alive]
        dep = dep_new[alive]
        tree_id, pool_id = tree_id[alive], pool_id[alive]
        perp = unit_rows(perp[alive] - dirs * (perp[alive] * dirs).sum(axis=1, keepdims=True))
        seg_len, branch_len = seg_len[alive] + step[alive], branch_len[alive]
        split = np.flatnonzero(seg_len > branch_len)
        if split.size and len(pos) + split.size <= MAX_TIPS:
            axis = _perp(dirs[split], rng)
            d1 = _rotate(dirs[split], axis, np.radians(rng.uniform(15, 35, split.size)))
            d2 = _rotate(dirs[split], axis, -np.radians(rng.uniform(35, 70, split.size)))
            r_par = rad[split]
            r1, r2 = r_par * rng.uniform(0.84, 0.94, split.size), r_par * rng.uniform(0.65, 0.85, split.size)
            p_par, pid = pos[split], pool_id[split]
            dirs[split], rad[split] = d1, r1
            target[split] = _pick_targets(rng, p_par, d1, pools, pid)
            gen[split] += 1
            seg_len[split] = 0.0
            branch_len[split] = _branch_len(rng, r1)
            pos, dirs, rad, dep = cat(pos, p_par), cat(dirs, d2), cat(rad, r2), cat(dep, dep[split])
            target = cat(target, _pick_targets(rng, p_par, d2, pools, pid))
            gen, tree_id, pool_id = cat(gen, gen[split]), cat(tree_id, tree_id[split]), cat(pool_id, pid)
            perp = cat(perp, unit_rows(perp[split] - d2 * (perp[split] * d2).sum(axis=1, keepdims=True)))
            seg_len = cat(seg_len, np.zeros(split.size))
            branch_len = cat(branch_len, _branch_len(rng, r2))
    tips.append(pos)
    tip_ids.append(tree_id)
    if not rec:
        return Tree.empty(), np.zeros(0, int), np.zeros(0, int)
    p0, p1, r0, r1, g, pp, tid, pid = (np.concatenate([x[i] for x in rec]) for i in range(8))
    return Tree(p0, p1, r0, r1, g, pid + 1, pp, np.concatenate(tips)), tid, np.concatenate(tip_ids)


def _subtree(t: Tree, keep: np.ndarray, tips: np.ndarray) -> Tree:
    return Tree(t.p0[keep], t.p1[keep], t.r0[keep], t.r1[keep], t.gen[keep], t.side[keep], t.perp[keep], tips)


def grow_trees(an: Anatomy, hila: Hila, rng: np.random.Generator, pixel_mm: float) -> tuple[Tree, Tree, Tree]:
    """Arteries, veins and bronchi of both lungs, down to the thinnest vessel the pixel
    size can show (a coarse grid does not pay for branches it cannot draw)."""
    r_min = min(max(VESSEL_MIN_R, MIN_R_PER_PIXEL * pixel_mm), MAX_MIN_R)
    ratio = rng.uniform(0.75, 0.95)  # bronchus / artery calibre
    pools, starts, targets, tree_ids, pool_ids = [], [], [], [], []
    n_seg = {}
    for i, side in ((0, RIGHT), (1, LEFT)):
        pool = an.lung_points(rng, side, 6000, min_depth=3.0)
        # Branches aim at subpleural points: every path runs out to the periphery.
        periph = pool[an.lung_depth(pool) < PERIPHERY_MM]
        pools.append(
            periph[:TARGET_POOL] if len(periph) >= TARGET_POOL else pool[np.argsort(an.lung_depth(pool))[:TARGET_POOL]]
        )
        lobes = an.lobe_of(pool)
        names = SEGMENTS[side]
        n_seg[side] = len(names)
        for lb in names:  # arteries: one lobar branch per entry, from the hilum
            cand = np.flatnonzero(lobes == lb)
            targets.append(pool[rng.choice(cand)] if cand.size else pool[rng.integers(len(pool))])
            starts.append(hila.artery[i])
        upper = np.flatnonzero(np.isin(lobes, (1, 2, 4)))
        lower = np.flatnonzero(np.isin(lobes, (3, 5)))
        for root, group in (
            (hila.vein_sup[i], upper),
            (hila.vein_sup[i], upper),
            (hila.vein_inf[i], lower),
            (hila.vein_inf[i], lower),
        ):
            targets.append(pool[rng.choice(group)] if group.size else pool[rng.integers(len(pool))])
            starts.append(root)
        tree_ids += [0] * len(names) + [1] * 4
        pool_ids += [i] * (len(names) + 4)
    radii = np.where(np.array(tree_ids) == 0, rng.uniform(2.8, 4.2, len(starts)), rng.uniform(3.5, 5.0, len(starts)))
    tree, tid, tip_id = _grow(
        rng,
        an,
        np.array(starts),
        np.array(targets),
        radii,
        np.array(tree_ids),
        np.array(pool_ids),
        np.stack(pools),
        r_min,
    )
    arteries = _subtree(tree, tid == 0, tree.tips[tip_id == 0])
    veins = _subtree(tree, tid == 1, tree.tips[tip_id == 1])
    bronchi = []
    for i, side in ((0, RIGHT), (1, LEFT)):
        keep = (arteries.side == side) & (arteries.gen <= BRONCHUS_MAX_GEN) & (arteries.r0 >= BRONCHUS_MIN_R)
        rb0, rb1 = arteries.r0[keep] * ratio, arteries.r1[keep] * ratio
        off = (arteries.r0[keep] + rb0 + 0.6)[:, None] * arteries.perp[keep]
        b = Tree(
            arteries.p0[keep] + off,
            arteries.p1[keep] + off,
            rb0,
            rb1,
            arteries.gen[keep],
            arteries.side[keep],
            arteries.perp[keep],
            np.zeros((0, 3)),
        )
        # Lobar bronchi join the main bronchus at the hilum.
        first = np.flatnonzero(b.gen == 1)[: n_seg[side]]
        link = Tree(
            np.repeat(hila.bronchus[i][None], len(first), 0),
            b.p0[first],
            b.r0[first] * 1.2,
            b.r0[first],
            np.ones(len(first), int),
            np.full(len(first), side),
            b.perp[first],
            np.zeros((0, 3)),
        )
        bronchi += [link, b]
    return arteries, veins, Tree.concat(bronchi)


def render_tree(vol: np.ndarray, side: np.ndarray, grid: Grid, tree: Tree, value: float) -> None:
    """Vessels: blood inside the lungs only (outside, the central tubes carry on)."""
    if len(tree.p0) == 0:
        return
    c, r, _ = segment_balls(tree.p0, tree.p1, tree.r0, tree.r1, grid)
    splat_balls(vol, grid, c, r, value, "max", within=side)


def render_airways(vol: np.ndarray, side: np.ndarray, grid: Grid, tree: Tree, wall_factor: float) -> None:
    """Bronchial walls (soft tissue) then lumens (air) inside the lungs: drawn after the
    lesions, so air bronchograms show where a bronchus crosses consolidation."""
    if len(tree.p0) == 0:
        return
    wall0 = np.maximum(0.5, 0.18 * tree.r0) * wall_factor
    wall1 = np.maximum(0.5, 0.18 * tree.r1) * wall_factor
    c, r, _ = segment_balls(tree.p0, tree.p1, tree.r0 + wall0, tree.r1 + wall1, grid)
    splat_balls(vol, grid, c, r, HU_AIRWAY_WALL, "max", within=side)
    c, r, _ = segment_balls(tree.p0, tree.p1, tree.r0, tree.r1, grid)
    splat_balls(vol, grid, c, r, HU_AIRWAY, "min", within=side)
