"""The patient of a family-B phantom: drawn shape parameters and analytic fields.

The chest is described by implicit fields rather than by drawn outlines:

- the *thoracic cavity* (inner surface of the chest wall) is a superellipse in polar
  form around the body centre, ``R(theta, h)``, perturbed by a few Fourier harmonics
  whose coefficients drift with height, and narrowed towards the thoracic inlet;
- chest wall muscle and subcutaneous fat are angular thickness profiles added to it
  (paraspinal and pectoral bulges, habitus, sometimes breasts), so the body outline is
  ``R + wall + fat``;
- each lung is the cavity minus the mediastinum, a constructive-solid-geometry union of
  a midline band, the heart ellipsoid with its pericardial fat and the paravertebral
  disc, cut below by the diaphragm domes and above by the apical caps. ``lung_depth``
  returns the (approximate) signed distance to that boundary for any points, and the
  slice painter (``body.py``) evaluates the very same inequalities on the pixel grid;
- lobes follow from two analytic fissure surfaces per side.

Because every field is closed-form, random placements (vessel growth, lesion centres)
query the anatomy directly and do not depend on the sampling grid.

Independent of family A (``pipeline.phantom``): no helper, constant or shape model is
taken from it; family A builds each lung from its own elliptic Fourier outline, family B
carves both lungs out of one cavity.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .common import Stream, rng_for, smoothstep

__all__ = ["Anatomy", "draw_anatomy", "LOBES", "RIGHT", "LEFT"]

RIGHT, LEFT = 1, 2  # lung sides, as stored in the side map (0 = not lung)
#: Lobe ids: right upper, middle, lower; left upper (with lingula), lower.
LOBES = {1: "RUL", 2: "RML", 3: "RLL", 4: "LUL", 5: "LLL"}

#: Angular samples of the polar look-up tables used by the slice painter (0.09 degree).
N_ANGLES = 4096
#: Fourier harmonics perturbing the cavity outline (2 = ovality ... 5 = local bulges).
CAVITY_HARMONICS = (2, 3, 4, 5)
#: Soft tissue between the vertebral body and the lungs, mm.
PARAVERTEBRAL_MM = (2.0, 5.0)
#: Distance kept between the heart's fat and the lung, mm.
HEART_LUNG_GAP_MM = 1.5


@dataclass(frozen=True)
class Anatomy:
    """Shape parameters (mm, HU) of one patient; see the module docstring."""

    # vertical layout: heights above the bottom of the scanned range
    h_low: float  # lowest lung point (posterior costophrenic recess)
    lung_height: float  # from h_low to the highest apex
    coverage: float  # scanned range
    # thoracic cavity
    cav_a: float  # half width (left-right) at its widest
    cav_b: float  # half depth (antero-posterior)
    cav_n: float  # superellipse exponent (2 = ellipse, larger = squarer)
    cav_coef: np.ndarray  # (len(CAVITY_HARMONICS), 4): cos, cos slope, sin, sin slope
    inlet_lr: float  # width factor at the thoracic inlet
    inlet_ap: float
    t_narrow: float  # height fraction above which the cavity narrows
    # chest wall and fat
    wall_base: float
    paraspinal: float
    paraspinal_at: float  # angle from the posterior midline, rad
    pectoral: float
    fat: float  # subcutaneous fat thickness (habitus)
    fat_lateral: float  # relative extra fat at the flanks (may be negative)
    fat_coef: np.ndarray  # (2, 2) random harmonics 3..4 of the fat layer
    fat_low: float  # relative extra fat towards the abdomen
    breast: float  # bulge height, mm (0 = none)
    breast_t: float
    breast_half_h: float
    breast_angle: float
    skin: float
    fat_plane: float  # depth of the intermuscular fat plane, fraction of the wall
    # spine
    r_vb: float
    vb_inset: float  # vertebral body centre inside the cavity outline, in r_vb
    r_canal: float
    disc_pitch: float
    disc_t: float
    disc_phase: float
    scoliosis: float
    scoliosis_phase: float
    paravertebral: float
    # mediastinum band
    med_x0: float
    med_dx: float
    band_top: float
    band_low: float
    band_ant: float  # width factor at the anterior junction
    band_wave: np.ndarray  # amplitude (mm), wavenumber (rad/mm), phase of its wobble along y
    # heart (centre, semi-axes along its frame rows, frame rows: long axis to the apex,
    # posterior-pointing, third)
    heart_c: np.ndarray
    heart_axes: np.ndarray
    heart_frame: np.ndarray
    pericardial_fat: float
    myocardium: float
    chambers: np.ndarray  # (4, 6): LV, RV, LA, RA centre and semi-axes in the heart frame
    # diaphragm domes and apical caps, per side (index 0 right, 1 left)
    dome_depth: np.ndarray
    dome_x: np.ndarray
    dome_y: float
    dome_ax: float
    dome_ay: float
    dome_gamma: float
    dia_t: float
    apex_top: np.ndarray
    apex_x: np.ndarray
    apex_y: float
    apex_ax: float
    apex_ay: float
    apex_k: float
    # fissures
    hilum_h: float
    obl_slope: np.ndarray
    obl_y: np.ndarray
    obl_wave: np.ndarray  # (2, 3): amplitude, wavenumber, phase
    obl_tilt: np.ndarray  # (2,) mm of height lost per mm away from the midline
    hor_dh: float
    # abdomen
    liver_x: float
    liver_slope: float
    stomach_c: np.ndarray
    stomach_axes: np.ndarray
    gas_level: float  # fraction of the stomach's AP extent holding gas (<= 0: none)
    spleen_c: np.ndarray
    spleen_axes: np.ndarray
    # arms (beside the body or raised out of the field)
    arms_down: bool
    arm_axes: np.ndarray  # (2,) x, y semi-axes
    arm_gap: float
    arm_y: float
    humerus_r: float
    elbow_h: float
    # sternum
    sternum_top: float
    sternum_w: float
    sternum_t: float
    # tissue values (non-contrast), HU
    hu_fat: float
    hu_muscle: float
    hu_skin: float
    hu_med_fat: float
    hu_soft: float
    hu_cortex: float
    hu_marrow: float
    hu_disc: float
    hu_canal: float
    hu_liver: float
    hu_spleen: float
    hu_stomach: float
    hu_cartilage: float
    hu_arm_marrow: float
    # lung parenchyma
    lung_median: float  # median HU of the parenchyma (before vessels)
    gravity: float  # posterior minus anterior HU
    texture_sd: float
    texture_beta: float
    texture_dz: float
    fissure_hu: float

    # ------------------------------------------------------------------ profiles
    def t_of(self, h: np.ndarray | float) -> np.ndarray | float:
        """Height fraction: 0 at the lowest lung point, 1 at the highest apex."""
        return (h - self.h_low) / self.lung_height

    def cavity_scale(self, t: np.ndarray | float) -> tuple[np.ndarray | float, np.ndarray | float]:
        up = smoothstep(self.t_narrow, 1.15, t)
        low = 1.0 - 0.08 * smoothstep(0.0, -0.25, t)  # the abdomen is a little narrower
        return (1.0 - (1.0 - self.inlet_lr) * up) * low, (1.0 - (1.0 - self.inlet_ap) * up) * low

    def cavity_radius(self, theta: np.ndarray, h: np.ndarray | float) -> np.ndarray:
        """Radius (mm) of the cavity outline at angle theta (atan2(y, x)) and height h."""
        return self.cavity_radius_cs(np.cos(theta), np.sin(theta), h)

    def cavity_radius_cs(self, c: np.ndarray, s: np.ndarray, h: np.ndarray | float) -> np.ndarray:
        """``cavity_radius`` from cos and sin of the angle (no trigonometry per point:
        the harmonics are powers of the unit complex number c + i s)."""
        t = np.clip(self.t_of(h), -0.5, 1.3)
        s_lr, s_ap = self.cavity_scale(t)
        a, b = self.cav_a * s_lr, self.cav_b * s_ap
        n = self.cav_n
        r = ((np.abs(c) / a) ** n + (np.abs(s) / b) ** n) ** (-1.0 / n)
        z = c + 1j * s
        zk = z * z
        pert = 1.0
        for k, (cc, cs, sc, ss) in zip(CAVITY_HARMONICS, self.cav_coef, strict=True):
            if k > 2:
                zk = zk * z
            pert = pert + (cc + cs * t) * zk.real + (sc + ss * t) * zk.imag
        return r * pert

    def cavity_posterior(self, h: np.ndarray | float) -> np.ndarray | float:
        """``cavity_radius`` on the posterior midline (theta = pi / 2), closed form."""
        t = np.clip(self.t_of(h), -0.5, 1.3)
        _, s_ap = self.cavity_scale(t)
        pert = 1.0
        for k, (cc, cs, sc, ss) in zip(CAVITY_HARMONICS, self.cav_coef, strict=True):
            pert = (
                pert
                + (cc + cs * t) * round(math.cos(k * math.pi / 2))
                + (sc + ss * t) * round(math.sin(k * math.pi / 2))
            )
        return self.cav_b * s_ap * pert

    def wall_thickness(self, theta: np.ndarray, h: np.ndarray | float) -> np.ndarray:
        """Chest wall (ribs, intercostal and outer muscles) thickness, mm."""
        base, pect = self.wall_profiles(theta)
        return base + self.pectoral_weight(h) * pect

    def wall_profiles(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Angular parts of the wall: base with paraspinal bulges, pectoral bulge."""
        post = np.abs(_wrap(theta - math.pi / 2))
        ant = np.abs(_wrap(theta + math.pi / 2))
        base = self.wall_base + self.paraspinal * np.exp(-(((post - self.paraspinal_at) / 0.3) ** 2))
        return base, self.pectoral * np.exp(-(((ant - 0.8) / 0.45) ** 2))

    def pectoral_weight(self, h: np.ndarray | float) -> np.ndarray | float:
        return smoothstep(0.3, 0.65, self.t_of(h))

    def fat_thickness(self, theta: np.ndarray, h: np.ndarray | float) -> np.ndarray:
        """Subcutaneous fat thickness, mm (with breasts when drawn)."""
        ring, breast = self.fat_profiles(theta)
        low, b = self.fat_weights(h)
        return np.maximum(ring * low + breast * b, 1.0)

    def fat_profiles(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Angular parts of the fat layer: the ring (habitus) and the breasts."""
        ring = self.fat * (
            1.0
            + self.fat_lateral * np.cos(2 * theta)
            + self.fat_coef[0, 0] * np.cos(3 * theta + self.fat_coef[0, 1])
            + self.fat_coef[1, 0] * np.cos(4 * theta + self.fat_coef[1, 1])
        )
        ant = np.abs(_wrap(theta + math.pi / 2))
        return ring, self.breast * np.exp(-(((ant - self.breast_angle) / 0.4) ** 2))

    def fat_weights(self, h: np.ndarray | float) -> tuple[np.ndarray | float, np.ndarray | float]:
        """Height factors of the fat ring (more towards the abdomen) and the breasts."""
        low = 1.0 + self.fat_low * smoothstep(0.35, -0.1, self.t_of(h))
        dt = (h - (self.h_low + self.breast_t * self.lung_height)) / self.breast_half_h
        return low, (np.exp(-dt * dt) if self.breast > 0 else 0.0)

    def band(self, h: np.ndarray | float, y: np.ndarray | None = None) -> tuple[np.ndarray | float, np.ndarray | float]:
        """Mediastinal midline x and half width at height h (and, given y, across the
        chest: narrow at the anterior junction, wider behind, gently wavy)."""
        t = self.t_of(h)
        x0 = self.med_x0 + self.med_dx * smoothstep(0.85, 0.35, t)
        w = self.band_low + (self.band_top - self.band_low) * smoothstep(0.35, 0.8, t)
        if y is not None:
            factor, wave = self.band_across(y)
            w = w * factor + wave
        return x0, w

    def band_across(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """How the band's half width varies across the chest: factor and added wobble."""
        amp, k, ph = self.band_wave
        factor = self.band_ant + (1.0 - self.band_ant) * smoothstep(-0.9 * self.cav_b, 0.1 * self.cav_b, y)
        return factor, amp * np.sin(k * y + ph)

    def spine_at(self, h: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centre x, y and radius of the vertebral body at height h."""
        t = self.t_of(h)
        r = self.r_vb * (1.0 + 0.15 * np.clip(1.0 - t, 0.0, 1.3))
        y = self.cavity_posterior(h) - self.vb_inset * r
        x = self.scoliosis * np.sin(math.pi * t + self.scoliosis_phase)
        return x, y, r

    # ------------------------------------------------------------------ domes, apices
    def dome_threshold(self, side_i: int, h: float) -> float:
        """Pixels with dome quadric q > this lie above dome ``side_i`` at height h."""
        f = (h - self.h_low) / self.dome_depth[side_i]
        if f <= 0:
            return math.inf
        if f >= 1:
            return -math.inf
        return 1.0 - f ** (1.0 / self.dome_gamma)

    def dome_q(self, side_i: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return ((x - self.dome_x[side_i]) / self.dome_ax) ** 2 + ((y - self.dome_y) / self.dome_ay) ** 2

    def diaphragm(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height of the lung base (upper surface of the diaphragm) under (x, y)."""
        d = [
            self.h_low + self.dome_depth[i] * (1.0 - np.minimum(self.dome_q(i, x, y), 1.0)) ** self.dome_gamma
            for i in (0, 1)
        ]
        return np.maximum(d[0], d[1])

    def apex_q(self, side_i: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return ((x - self.apex_x[side_i]) / self.apex_ax) ** 2 + ((y - self.apex_y) / self.apex_ay) ** 2

    def apex_surface(self, x: np.ndarray, y: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Height of the lung top under (x, y) (right: bool, which apical cap)."""
        return np.where(
            right,
            self.apex_top[0] - self.apex_k * self.apex_q(0, x, y),
            self.apex_top[1] - self.apex_k * self.apex_q(1, x, y),
        )

    # ------------------------------------------------------------------ heart
    def heart_local(
        self, h: np.ndarray | float | np.floating, y: np.ndarray, x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates along the heart's frame (long axis, posterior, third)."""
        dh, dy, dx = h - self.heart_c[0], y - self.heart_c[1], x - self.heart_c[2]
        f = self.heart_frame
        p, q, s = (f[i, 0] * dh + f[i, 1] * dy + f[i, 2] * dx for i in range(3))
        return p, q, s

    def heart_rho(self, p: np.ndarray, q: np.ndarray, s: np.ndarray, grow: float = 0.0) -> np.ndarray:
        """Normalised ellipsoid radius (1 on the surface grown by ``grow`` mm)."""
        A, B, C = self.heart_axes + grow
        return np.sqrt((p / A) ** 2 + (q / B) ** 2 + (s / C) ** 2)

    @property
    def heart_zone_grow(self) -> float:
        """Growth of the heart ellipsoid that the lungs keep out of, mm."""
        return self.pericardial_fat + HEART_LUNG_GAP_MM

    # ------------------------------------------------------------------ lungs
    def lung_depth(self, pts: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm, > 0 inside) of points (N, 3) to the lungs."""
        h, y, x = pts[..., 0], pts[..., 1], pts[..., 2]
        r = np.hypot(x, y)
        rs = np.maximum(r, 1e-9)
        d = self.cavity_radius_cs(x / rs, y / rs, h) - r
        xm, w = self.band(h, y)
        d = np.minimum(d, np.abs(x - xm) - w)
        sx, sy, sr = self.spine_at(h)
        d = np.minimum(d, np.hypot(x - sx, y - sy) - (sr + self.paravertebral))
        grow = self.heart_zone_grow
        rho = self.heart_rho(*self.heart_local(h, y, x), grow=grow)
        d = np.minimum(d, (rho - 1.0) * (float(self.heart_axes.min()) + grow))
        d = np.minimum(d, h - self.diaphragm(x, y))
        d = np.minimum(d, self.apex_surface(x, y, x < xm) - h)
        return d

    def side_of(self, pts: np.ndarray) -> np.ndarray:
        xm, _ = self.band(pts[..., 0])
        return np.where(pts[..., 2] < xm, RIGHT, LEFT)

    def oblique(self, side_i: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Height of the oblique (major) fissure: higher posteriorly."""
        amp, k, ph = self.obl_wave[side_i]
        # Lower laterally: on an axial slice the fissure runs from posteromedial to
        # anterolateral, gently curved.
        lat = np.abs(x) / self.cav_a
        return (
            self.hilum_h
            + self.obl_slope[side_i] * (y - self.obl_y[side_i])
            - self.obl_tilt[side_i] * self.cav_a * lat * lat
            + amp * np.sin(k * x + ph)
        )

    def horizontal(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Height of the right horizontal (minor) fissure."""
        amp, k, ph = self.obl_wave[0]
        return self.hilum_h + self.hor_dh + 0.5 * amp * np.sin(k * y + ph)

    def lobe_of(self, pts: np.ndarray) -> np.ndarray:
        """Lobe id (see LOBES) of points (N, 3) assumed inside a lung."""
        return self.lobe_at(pts[..., 0], pts[..., 1], pts[..., 2])

    def lobe_at(self, h: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Lobe id of broadcastable coordinate arrays (inside a lung)."""
        right = x < self.band(h)[0]
        lower_r = h < self.oblique(0, y, x)
        lower_l = h < self.oblique(1, y, x)
        upper_r = h >= self.horizontal(y, x)
        return np.where(right, np.where(lower_r, 3, np.where(upper_r, 1, 2)), np.where(lower_l, 5, 4))

    def mediastinal_distance(self, pts: np.ndarray) -> np.ndarray:
        """Distance (mm) of lung points to the mediastinum (band, heart, spine)."""
        h, y, x = pts[..., 0], pts[..., 1], pts[..., 2]
        xm, w = self.band(h, y)
        d = np.abs(x - xm) - w
        sx, sy, sr = self.spine_at(h)
        d = np.minimum(d, np.hypot(x - sx, y - sy) - (sr + self.paravertebral))
        grow = self.heart_zone_grow
        rho = self.heart_rho(*self.heart_local(h, y, x), grow=grow)
        return np.minimum(d, (rho - 1.0) * (float(self.heart_axes.min()) + grow))

    def lung_box(self, side: int) -> tuple[np.ndarray, np.ndarray]:
        """A (h, y, x) box holding lung ``side``."""
        s = self.cav_b * 1.15
        lo_x, hi_x = (-self.cav_a * 1.15, 30.0) if side == RIGHT else (-30.0, self.cav_a * 1.15)
        return (np.array([self.h_low, -s, lo_x]), np.array([float(self.apex_top.max()), s, hi_x]))

    def lung_points(
        self, rng: np.random.Generator, side: int, n: int, min_depth: float = 2.0, depth_fn=None
    ) -> np.ndarray:
        """``n`` random points (N, 3) inside lung ``side`` at least ``min_depth`` deep."""
        depth_fn = depth_fn or self.lung_depth
        lo, hi = self.lung_box(side)
        got: list[np.ndarray] = []
        count = 0
        for _ in range(60):
            cand = lo + (hi - lo) * rng.uniform(size=(max(4 * n, 256), 3))
            ok = (depth_fn(cand) > min_depth) & (self.side_of(cand) == side)
            got.append(cand[ok])
            count += int(ok.sum())
            if count >= n:
                break
        pts = np.concatenate(got)[:n]
        if len(pts) < n:  # degenerate anatomy: repeat what there is
            pts = pts[rng.integers(0, max(len(pts), 1), n)] if len(pts) else np.tile(lo, (n, 1))
        return pts

    def depth_gradient(self, pts: np.ndarray, depth_fn=None, eps: float = 1.5) -> np.ndarray:
        """Unit gradient of the depth (points inwards), by central differences."""
        depth_fn = depth_fn or self.lung_depth
        g = np.zeros_like(pts)
        for ax in range(3):
            e = np.zeros(3)
            e[ax] = eps
            g[:, ax] = depth_fn(pts + e) - depth_fn(pts - e)
        n = np.linalg.norm(g, axis=1, keepdims=True)
        return g / np.where(n > 0, n, 1.0)


def _chambers(r: np.random.Generator, axes: np.ndarray) -> np.ndarray:
    """Rounded heart chambers in the heart frame (long axis to the apex, posterior, third):
    the left ventricle towards the apex and back, the right ventricle in front, the atria
    at the base. Each row: centre (3) and semi-axes (3), mm."""
    A, B, C = axes
    j = lambda: r.uniform(0.9, 1.1)  # noqa: E731 - small per-case variation
    rows = [
        ((0.15 * A, 0.22 * B, 0.0), (0.5 * A * j(), 0.42 * B * j(), 0.5 * C * j())),  # LV
        ((0.05 * A, -0.45 * B, 0.05 * C), (0.5 * A * j(), 0.32 * B * j(), 0.55 * C * j())),  # RV
        ((-0.55 * A, 0.35 * B, -0.05 * C), (0.3 * A * j(), 0.35 * B * j(), 0.45 * C * j())),  # LA
        ((-0.45 * A, -0.4 * B, 0.1 * C), (0.3 * A * j(), 0.33 * B * j(), 0.45 * C * j())),  # RA
    ]
    return np.array([[*c, *a] for c, a in rows])


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _heart_frame(yaw_deg: float, tilt_deg: float) -> np.ndarray:
    """Rows: the heart's long axis (towards the apex: left, anterior, inferior), the
    posterior direction made orthogonal to it, and their cross product."""
    yaw, tilt = math.radians(yaw_deg), math.radians(tilt_deg)
    e1 = np.array([-math.sin(tilt), -math.cos(tilt) * math.sin(yaw), math.cos(tilt) * math.cos(yaw)])
    post = np.array([0.0, 1.0, 0.0])
    e2 = post - e1 * float(e1 @ post)
    e2 /= np.linalg.norm(e2)
    return np.stack([e1, e2, np.cross(e1, e2)])


class _Draws(NamedTuple):
    """The sizes drawn first: later fields derive from them."""

    h_low: float
    lung_height: float
    coverage: float
    cav_a: float
    cav_b: float
    coef: np.ndarray
    fat: float
    inlet_lr: float
    r_vb: float
    band_top: float
    band_low: float
    frame: np.ndarray
    axes: np.ndarray
    d_right: float
    dome_depth: np.ndarray
    dome_dx: float
    dome_y: float
    dome_ax: float
    dome_ay: float
    dome_gamma: float
    apex_hi: float
    heart_x: float
    heart_y: float
    heart_rise: float
    arms_down: bool


def _draw_sizes(r: np.random.Generator) -> _Draws:
    u = r.uniform
    lung_height = u(200, 280)
    margin_bottom, margin_top = u(12, 45), u(12, 40)
    h_low = margin_bottom
    coverage = lung_height + margin_bottom + margin_top
    cav_a = u(105, 148)
    cav_b = cav_a * u(0.58, 0.80)
    coef = np.stack(
        [
            np.array(
                [r.normal(0, 0.03 / k**0.7), r.normal(0, 0.02 / k), r.normal(0, 0.02 / k**0.7), r.normal(0, 0.015 / k)]
            )
            for k in CAVITY_HARMONICS
        ]
    )
    fat = 3.0 + 52.0 * u() ** 1.7  # slim to obese, slim more common
    inlet_lr = u(0.5, 0.65)
    # spine and mediastinum
    r_vb = u(13, 19)
    band_top, band_low = u(16, 26), u(18, 30)
    frame = _heart_frame(u(25, 50), u(15, 35))
    axes = np.array([u(52, 68), u(40, 52), u(38, 50)])
    # domes: the right is higher than the left
    d_right = u(55, 90)
    dome_depth = np.array([d_right, d_right - u(5, 22)])
    dome_dx = u(0.38, 0.5) * cav_a
    dome_y = -u(0.0, 0.25) * cav_b
    dome_ax, dome_ay, dome_gamma = u(0.5, 0.62) * cav_a, u(0.85, 1.05) * cav_b, u(0.45, 0.7)
    apex_hi = h_low + lung_height
    heart_x, heart_y = u(18, 38), -u(0.1, 0.3) * cav_b
    heart_rise = axes[2] * u(0.6, 0.85)
    arms_down = bool(u() < 0.35)
    return _Draws(
        h_low=h_low,
        lung_height=lung_height,
        coverage=coverage,
        cav_a=cav_a,
        cav_b=cav_b,
        coef=coef,
        fat=fat,
        inlet_lr=inlet_lr,
        r_vb=r_vb,
        band_top=band_top,
        band_low=band_low,
        frame=frame,
        axes=axes,
        d_right=d_right,
        dome_depth=dome_depth,
        dome_dx=dome_dx,
        dome_y=dome_y,
        dome_ax=dome_ax,
        dome_ay=dome_ay,
        dome_gamma=dome_gamma,
        apex_hi=apex_hi,
        heart_x=heart_x,
        heart_y=heart_y,
        heart_rise=heart_rise,
        arms_down=arms_down,
    )


def _wall_fields(r: np.random.Generator, d: _Draws) -> dict[str, object]:
    """Chest wall, fat, breast and skin."""
    u = r.uniform
    return {
        "h_low": d.h_low,
        "lung_height": d.lung_height,
        "coverage": d.coverage,
        "cav_a": d.cav_a,
        "cav_b": d.cav_b,
        "cav_n": u(1.9, 2.6),
        "cav_coef": d.coef,
        "inlet_lr": d.inlet_lr,
        "inlet_ap": u(0.6, 0.8),
        "t_narrow": u(0.45, 0.6),
        "wall_base": u(6, 12),
        "paraspinal": u(25, 50),
        "paraspinal_at": u(0.35, 0.5),
        "pectoral": u(6, 22),
        "fat": d.fat,
        "fat_lateral": u(-0.3, 0.3),
        "fat_coef": np.array([[u(0, 0.15), u(0, 2 * math.pi)], [u(0, 0.12), u(0, 2 * math.pi)]]),
        "fat_low": u(0, 0.5),
        "breast": (u(10, 30) + 0.6 * d.fat) if u() < 0.4 else 0.0,
        "breast_t": u(0.3, 0.55),
        "breast_half_h": u(45, 80),
        "breast_angle": u(0.45, 0.8),
        "skin": u(1.2, 2.5),
        "fat_plane": u(0.45, 0.65),
    }


def _mediastinum_fields(r: np.random.Generator, d: _Draws) -> dict[str, object]:
    """Spine, mediastinal band and heart."""
    u = r.uniform
    return {
        "r_vb": d.r_vb,
        "vb_inset": u(0.8, 1.1),
        "r_canal": u(6.5, 9.0),
        "disc_pitch": u(24, 30),
        "disc_t": u(4, 7),
        "disc_phase": u(0, 1),
        "scoliosis": u(-6, 6),
        "scoliosis_phase": u(0, 2 * math.pi),
        "paravertebral": u(*PARAVERTEBRAL_MM),
        "med_x0": u(-4, 6),
        "med_dx": u(0, 10),
        "band_top": d.band_top,
        "band_low": d.band_low,
        "band_ant": u(0.45, 0.8),
        "band_wave": np.array([u(0, 2.5), 2 * math.pi / u(50, 110), u(0, 2 * math.pi)]),
        "heart_c": np.array([0.0, d.heart_y, d.heart_x]),
        "heart_axes": d.axes,
        "heart_frame": d.frame,
        "pericardial_fat": u(2, 6) + 0.15 * d.fat,
        "myocardium": u(8, 13),
        "chambers": _chambers(r, d.axes),
    }


def _diaphragm_fissure_fields(r: np.random.Generator, d: _Draws) -> dict[str, object]:
    """Diaphragm domes, lung apices, hilum and fissures."""
    u = r.uniform
    return {
        "dome_depth": d.dome_depth,
        "dome_x": np.array([-d.dome_dx, d.dome_dx]),
        "dome_y": d.dome_y,
        "dome_ax": d.dome_ax,
        "dome_ay": d.dome_ay,
        "dome_gamma": d.dome_gamma,
        "dia_t": u(3, 6),
        "apex_top": np.array([d.apex_hi - u(0, 10), d.apex_hi - u(0, 10)]),
        "apex_x": np.array([-1.0, 1.0]) * u(0.35, 0.5) * d.cav_a * d.inlet_lr,
        "apex_y": u(0.0, 0.2) * d.cav_b,
        "apex_ax": u(0.6, 0.75) * d.cav_a,
        "apex_ay": u(0.8, 1.0) * d.cav_b,
        "apex_k": u(40, 70),
        "hilum_h": d.h_low + d.lung_height * u(0.5, 0.6),
        "obl_slope": np.array([u(0.9, 1.5), u(0.9, 1.5)]),
        "obl_y": np.array([u(-0.1, 0.15), u(-0.1, 0.15)]) * d.cav_b,
        "obl_wave": np.array([[u(0, 6), 2 * math.pi / u(80, 160), u(0, 2 * math.pi)] for _ in range(2)]),
        "obl_tilt": np.array([u(0.2, 0.5), u(0.2, 0.5)]),
        "hor_dh": u(0, 20),
    }


def _abdomen_arm_fields(r: np.random.Generator, d: _Draws) -> dict[str, object]:
    """Upper abdominal organs, arms and sternum."""
    u = r.uniform
    return {
        "liver_x": u(20, 60),
        "liver_slope": u(10, 40),
        "stomach_c": np.array(
            [d.h_low + d.dome_depth[1] - u(25, 45), u(-0.25, 0.1) * d.cav_b, u(0.45, 0.65) * d.cav_a]
        ),
        "stomach_axes": np.array([u(30, 50), u(30, 45), u(35, 55)]),
        "gas_level": u(-0.3, 0.6),
        "spleen_c": np.array([d.h_low + d.dome_depth[1] - u(40, 60), u(0.35, 0.6) * d.cav_b, u(0.6, 0.75) * d.cav_a]),
        "spleen_axes": np.array([u(45, 70), u(40, 60), u(22, 35)]),
        "arms_down": d.arms_down,
        "arm_axes": np.array([u(38, 55), u(40, 58)]) + 0.4 * d.fat,
        "arm_gap": u(0, 25),
        "arm_y": u(0.05, 0.35) * d.cav_b,
        "humerus_r": u(10, 14),
        "elbow_h": d.h_low + u(-40, 70),
        "sternum_top": d.apex_hi - u(15, 40),
        "sternum_w": u(12, 18),
        "sternum_t": u(5, 7),
    }


def _tissue_fields(r: np.random.Generator, d: _Draws) -> dict[str, object]:
    """Tissue densities and lung parenchyma texture."""
    u = r.uniform
    return {
        "hu_fat": u(-115, -80),
        "hu_muscle": u(35, 60),
        "hu_skin": u(0, 50),
        "hu_med_fat": u(-100, -60),
        "hu_soft": u(15, 35),
        "hu_cortex": u(600, 1100),
        "hu_marrow": u(130, 300),
        "hu_disc": u(70, 110),
        "hu_canal": u(15, 35),
        "hu_liver": u(45, 65),
        "hu_spleen": u(40, 55),
        "hu_stomach": u(5, 35),
        "hu_cartilage": u(90, 200),
        "hu_arm_marrow": u(-60, 60),
        "lung_median": u(-880, -780),
        "gravity": u(15, 80),
        "texture_sd": u(8, 25),
        "texture_beta": u(1.6, 3.0),
        "texture_dz": u(5, 10),
        "fissure_hu": u(40, 120),
    }


def draw_anatomy(seed: int) -> Anatomy:
    """The patient of ``seed`` (independent of the class label)."""
    r = rng_for(seed, Stream.ANATOMY)
    # The groups draw in this order: the order of draws is the patient (seeds stay reproducible).
    d = _draw_sizes(r)
    fields = {
        **_wall_fields(r, d),
        **_mediastinum_fields(r, d),
        **_diaphragm_fissure_fields(r, d),
        **_abdomen_arm_fields(r, d),
        **_tissue_fields(r, d),
    }
    an = Anatomy(**fields)  # type: ignore[arg-type]
    # The heart's centre stands above the diaphragm under it by part of its height.
    rest = float(an.diaphragm(np.array(d.heart_x), np.array(d.heart_y)))
    return dataclasses.replace(an, heart_c=np.array([rest + d.heart_rise, d.heart_y, d.heart_x]))
