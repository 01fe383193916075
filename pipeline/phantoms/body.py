"""Slice painter of family B: body, chest wall, bones, mediastinum, heart, abdomen, lungs.

Each fine slice is painted inside the body's bounding box from a handful of 2-D arrays
computed once per case (polar radius and angle index of every pixel around the body
centre, the dome, apex and fissure quadrics, the table surface). Per slice, the outlines
of the cavity, wall and body come from polar look-up tables (``Anatomy.cavity_radius``
etc. evaluated at N_ANGLES angles) gathered through the angle index, so a 512 x 512
slice costs a few dozen cheap array operations and no transcendental per pixel.

The lung region painted here is exactly ``Anatomy.lung_depth > 0`` (same inequalities),
filled with parenchyma: the drawn median, a dependent-density gradient (posterior
denser) and 1/f^beta fractal texture. The texture is made of independent 2-D fields at
levels a few millimetres apart and interpolated in height (variance-preserving), so it
is coherent along z at the cost of one FFT per level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.fft as sfft

from .anatomy import LEFT, N_ANGLES, RIGHT, Anatomy
from .common import Grid, Stream, rng_for, smoothstep
from .scanner import Contrast, Look

__all__ = ["Effusion", "Painted", "paint_slices", "body_extent", "lung_extent"]

HU_AIR = -1000.0
HU_GAS = -995.0  # stomach gas
HU_SCAPULA = 550.0
#: Cortical shell of vertebrae, sternum and humerus, mm.
CORTEX_MM = 1.6
#: Thickness of the stomach wall, mm.
STOMACH_WALL_MM = 4.0
#: Half thickness of the intermuscular fat plane of the chest wall, mm.
FAT_PLANE_HALF_MM = 0.75
#: Low-frequency corner and high-frequency roll-off of the parenchyma texture, 1/mm.
TEXTURE_F0, TEXTURE_FHI = 1.0 / 60.0, 0.6
#: Fissures: visible half-width, mm (partial volume widens and dims them).
FISSURE_W_MM = 0.6
#: Scapulae: from this lung-height fraction up; half angular width at the top, rad.
SCAPULA_T0, SCAPULA_HALF_ANGLE = 0.5, 0.42
#: Scapula centre lines: this far (rad) from the posterior midline, each side.
SCAPULA_OFFSET = 0.8
SCAPULA_THICK_MM = 4.0


@dataclass(frozen=True)
class Effusion:
    """A dependent (posterior, basal) pleural effusion on one side."""

    side: int
    thickness: float  # largest depth from the chest wall, mm
    h_top: float  # it fades out towards this height
    hu: float


@dataclass
class Painted:
    hu: np.ndarray  # fine grid float32
    side: np.ndarray  # int8: 0 not lung, 1 right, 2 left
    effusion: np.ndarray | None  # bool, or None when there is none
    #: per side (RIGHT, LEFT): fine-voxel bounding box [k0, k1) x [j0, j1) x [i0, i1)
    lung_boxes: dict[int, tuple[slice, slice, slice]] = field(default_factory=dict)


def _angles() -> np.ndarray:
    return -math.pi + (np.arange(N_ANGLES) + 0.5) * (2 * math.pi / N_ANGLES)


def _outline_samples(an: Anatomy, fn) -> np.ndarray:
    th = np.linspace(-math.pi, math.pi, 128, endpoint=False)
    hs = np.linspace(0.0, an.coverage, 24)
    return np.stack([fn(th, h) for h in hs])


def lung_extent(an: Anatomy) -> float:
    """Largest distance of the lungs from the body centre, mm (outline samples)."""
    return float(_outline_samples(an, an.cavity_radius).max())


def body_extent(an: Anatomy) -> float:
    """Largest distance of the body (arms included) from the body centre, mm."""
    rb = _outline_samples(
        an, lambda th, h: an.cavity_radius(th, h) + an.wall_thickness(th, h) + an.fat_thickness(th, h)
    ).max()
    if an.arms_down:
        rb += an.arm_gap + 2 * an.arm_axes[0]
    return float(rb)


def _table_curve(grid: Grid, look: Look) -> np.ndarray:
    """How far the table surface rises at each column (1, nx), mm: the table is centred
    on the isocentre, not on the (off-centre) patient."""
    x = grid.x[None, :] - grid.iso_x
    rad = look.table_radius
    return rad - np.sqrt(np.maximum(rad * rad - x * x, 0.0))


def _table(grid: Grid, look: Look, ysurf0: float) -> np.ndarray:
    """Air and the curved table (shell, foam core, shell) with its mattress, (ny, nx)."""
    x = grid.x[None, :] - grid.iso_x
    y = grid.y[:, None]
    depth = y - (ysurf0 + look.pad - _table_curve(grid, look))  # > 0 below the table top
    img = np.full((grid.ny, grid.nx), HU_AIR, dtype=np.float32)
    on = np.broadcast_to(np.abs(x) < look.table_half_w, img.shape)
    s, fm = look.table_shell, look.table_foam
    img[on & (depth >= 0) & (depth < s)] = look.hu_shell
    img[on & (depth >= s) & (depth < s + fm)] = look.hu_foam
    img[on & (depth >= s + fm) & (depth < 2 * s + fm)] = look.hu_shell
    if look.pad > 0:
        pad_on = np.broadcast_to(np.abs(x) < look.table_half_w * 0.92, img.shape)
        img[pad_on & (depth >= -look.pad) & (depth < 0)] = look.hu_pad
    return img


def _texture_levels(grid: Grid, an: Anatomy, seed: int, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Unit-sd 1/f^beta fields (levels, bh, bw) at heights j * spacing - spacing."""
    rng = rng_for(seed, Stream.TEXTURE)
    spacing = an.texture_dz
    n = int(math.ceil(an.coverage / spacing)) + 3
    bh, bw = shape
    fy = sfft.fftfreq(bh, d=grid.dxy)[:, None]
    fx = sfft.rfftfreq(bw, d=grid.dxy)[None, :]
    f2 = fy * fy + fx * fx
    amp = ((f2 + TEXTURE_F0**2) ** (-an.texture_beta / 4.0) * np.exp(-f2 / TEXTURE_FHI**2)).astype(np.float32)
    levels = np.empty((n, bh, bw), dtype=np.float32)
    for j in range(n):
        spec = amp * (
            rng.standard_normal(amp.shape, dtype=np.float32) + 1j * rng.standard_normal(amp.shape, dtype=np.float32)
        )
        field = sfft.irfft2(spec, s=shape, workers=1).astype(np.float32)
        sd = float(field.std())
        levels[j] = field / (sd if sd > 0 else 1.0)
    return levels, spacing


def _posterior_limits(an: Anatomy, look: Look) -> float:
    """Where the back meets the mattress (y, mm): the table flattens the back's fat but
    never the muscle wall."""
    th = np.linspace(math.pi / 2 - 0.7, math.pi / 2 + 0.7, 64)
    hs = np.linspace(0.0, an.coverage, 24)
    wall = max(float(((an.cavity_radius(th, h) + an.wall_thickness(th, h)) * np.sin(th)).max()) for h in hs)
    body = max(
        float(((an.cavity_radius(th, h) + an.wall_thickness(th, h) + an.fat_thickness(th, h)) * np.sin(th)).max())
        for h in hs
    )
    return max(wall + 3.0, body - look.compress)


@dataclass
class _Frame:
    """What every slice of the painter shares: the body's box (``rows``, ``cols``), its
    pixel coordinates and per-pixel profiles, and the height-only look-up tables (one
    row per fine slice)."""

    rows: slice
    cols: slice
    X: np.ndarray
    Y: np.ndarray
    R: np.ndarray
    TI: np.ndarray
    qd: list[np.ndarray]
    qa: list[np.ndarray]
    obl: list[np.ndarray]
    hor: np.ndarray
    ynorm: np.ndarray
    ysurf: np.ndarray
    levels: np.ndarray
    lev_dz: float
    parenchyma0: float
    fis_w: float
    fis_amp: float
    scap_dist: list[np.ndarray]
    liver_hu: float
    spleen_hu: float
    eff_wy: list[np.ndarray]
    lut_c: np.ndarray
    lut_w: np.ndarray
    lut_b: np.ndarray
    band_x0: np.ndarray
    band_w0: np.ndarray
    band_f: np.ndarray
    band_wave: np.ndarray
    spine_all: np.ndarray
    cav_rows: list[slice]
    cav_cols: list[slice]


def paint_slices(grid: Grid, an: Anatomy, look: Look, effusions: Sequence[Effusion], seed: int) -> Painted:
    hu = np.empty(grid.shape_fine, dtype=np.float32)
    side = np.zeros(grid.shape_fine, dtype=np.int8)
    eff_mask = np.zeros(grid.shape_fine, dtype=bool) if effusions else None
    ysurf0 = _posterior_limits(an, look)
    template = _table(grid, look, ysurf0)
    fr = _frame(grid, an, look, effusions, seed, ysurf0)
    if fr is None:
        for k in range(grid.nzf):
            hu[k] = template
        return Painted(hu, side, eff_mask)
    boxes = {RIGHT: [np.inf, -np.inf] * 3, LEFT: [np.inf, -np.inf] * 3}
    for k, h in enumerate(grid.h):
        hu[k] = template
        eff_k = None if eff_mask is None else eff_mask[k, fr.rows, fr.cols]
        got = _paint_slice_b(
            hu[k, fr.rows, fr.cols], side[k, fr.rows, fr.cols], eff_k, k, float(h), fr, an, look, effusions
        )
        for side_id, (r0, r1, c0, c1) in got.items():
            b = boxes[side_id]
            r_off, c_off = fr.rows.start + fr.cav_rows[k].start, fr.cols.start + fr.cav_cols[k].start
            b[:] = [
                min(b[0], k),
                max(b[1], k + 1),
                min(b[2], r0 + r_off),
                max(b[3], r1 + r_off),
                min(b[4], c0 + c_off),
                max(b[5], c1 + c_off),
            ]
    lung_boxes = {
        sd: (slice(int(b[0]), int(b[1])), slice(int(b[2]), int(b[3])), slice(int(b[4]), int(b[5])))
        for sd, b in boxes.items()
        if np.isfinite(b[0])
    }
    return Painted(hu, side, eff_mask, lung_boxes)


def _painter_box(grid: Grid, an: Anatomy, ysurf0: float) -> tuple[slice, slice]:
    """Rows and columns of the bounding box of everything but the table."""
    ext_x = body_extent(an) + 4.0
    ext_ant = (
        float(
            _outline_samples(
                an, lambda th, h: an.cavity_radius(th, h) + an.wall_thickness(th, h) + an.fat_thickness(th, h)
            ).max()
        )
        + 4.0
    )
    xs, ys = grid.x, grid.y
    cols = slice(int(np.searchsorted(xs, -ext_x)), int(np.searchsorted(xs, ext_x, "right")))
    rows = slice(int(np.searchsorted(ys, -ext_ant)), int(np.searchsorted(ys, ysurf0 + 2.0, "right")))
    return rows, cols


def _radius_tables(an: Anatomy, hs_all: np.ndarray, ang: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per height and angle: the cavity's radius, the wall's thickness and the body's outer radius."""
    f32 = np.float32
    cos_a, sin_a = np.cos(ang), np.sin(ang)
    wall_base, wall_pect = an.wall_profiles(ang)
    fat_ring, fat_breast = an.fat_profiles(ang)
    lut_c = an.cavity_radius_cs(cos_a[None], sin_a[None], hs_all[:, None]).astype(f32)
    pect_all = np.broadcast_to(an.pectoral_weight(hs_all), hs_all.shape)
    lut_w = (wall_base[None] + pect_all[:, None] * wall_pect[None]).astype(f32)
    low_all, bw_all = (np.broadcast_to(v, hs_all.shape) for v in an.fat_weights(hs_all))
    lut_b = (
        lut_c
        + lut_w
        + np.maximum(fat_ring[None] * low_all[:, None] + fat_breast[None] * bw_all[:, None], 1.0).astype(f32)
    )
    return lut_c, lut_w, lut_b


def _cavity_boxes(lut_c: np.ndarray, ang: np.ndarray, X: np.ndarray, Y: np.ndarray) -> tuple[list[slice], list[slice]]:
    """The cavity's box on each slice (rows, cols of the painter's box), 2 mm margin."""
    cos_a, sin_a = np.cos(ang), np.sin(ang)
    cx_lo, cx_hi = (lut_c * cos_a[None]).min(axis=1) - 2, (lut_c * cos_a[None]).max(axis=1) + 2
    cy_lo, cy_hi = (lut_c * sin_a[None]).min(axis=1) - 2, (lut_c * sin_a[None]).max(axis=1) + 2
    cav_rows = [
        slice(int(np.searchsorted(Y[:, 0], a)), int(np.searchsorted(Y[:, 0], b, "right")))
        for a, b in zip(cy_lo, cy_hi, strict=True)
    ]
    cav_cols = [
        slice(int(np.searchsorted(X[0], a)), int(np.searchsorted(X[0], b, "right")))
        for a, b in zip(cx_lo, cx_hi, strict=True)
    ]
    return cav_rows, cav_cols


def _frame(
    grid: Grid, an: Anatomy, look: Look, effusions: Sequence[Effusion], seed: int, ysurf0: float
) -> _Frame | None:
    """The painter's shared frame; None when the body's box is empty."""
    f32 = np.float32
    con: Contrast = look.contrast
    rows, cols = _painter_box(grid, an, ysurf0)
    X = grid.x[cols][None, :].astype(f32)
    Y = grid.y[rows][:, None].astype(f32)
    if X.size == 0 or Y.size == 0:
        return None
    R = np.hypot(X, Y).astype(f32)
    TH = np.arctan2(Y, X)
    TI = (((TH + math.pi) / (2 * math.pi) * N_ANGLES).astype(np.intp)) % N_ANGLES
    ang = _angles()
    qd = [an.dome_q(i, X, Y).astype(f32) for i in (0, 1)]
    qa = [an.apex_q(i, X, Y).astype(f32) for i in (0, 1)]
    obl = [an.oblique(i, Y, X).astype(f32) for i in (0, 1)]
    hor = np.broadcast_to(an.horizontal(Y, X), R.shape).astype(f32)
    ynorm = np.clip(0.5 + 0.5 * Y / an.cav_b, 0.0, 1.0).astype(f32)  # 0 anterior, 1 posterior
    # The back rests on the mattress, following the table's curve.
    ysurf = (ysurf0 - _table_curve(grid, look)[:, cols]).astype(f32)
    levels, lev_dz = _texture_levels(grid, an, seed, R.shape)
    fis_w = max(FISSURE_W_MM, 0.5 * grid.dzf)
    # Scapulae: angular distance of each pixel from each scapula's centre line.
    scap_dist = [
        np.abs((TH - c + math.pi) % (2 * math.pi) - math.pi).astype(f32)
        for c in (math.pi / 2 + SCAPULA_OFFSET, math.pi / 2 - SCAPULA_OFFSET)
    ]
    # Everything that depends on the height only, for all slices at once.
    hs_all = grid.h
    lut_c, lut_w, lut_b = _radius_tables(an, hs_all, ang)
    band_x0, band_w0 = (np.broadcast_to(v, hs_all.shape) for v in an.band(hs_all))
    band_f, band_wave = (np.asarray(v, dtype=f32) for v in an.band_across(Y))
    spine_all = np.stack(np.broadcast_arrays(*an.spine_at(hs_all)), axis=1)
    cav_rows, cav_cols = _cavity_boxes(lut_c, ang, X, Y)
    return _Frame(
        rows=rows,
        cols=cols,
        X=X,
        Y=Y,
        R=R,
        TI=TI,
        qd=qd,
        qa=qa,
        obl=obl,
        hor=hor,
        ynorm=ynorm,
        ysurf=ysurf,
        levels=levels,
        lev_dz=lev_dz,
        parenchyma0=an.lung_median - 0.5 * an.gravity,
        fis_w=fis_w,
        fis_amp=an.fissure_hu * FISSURE_W_MM / fis_w,  # partial volume: wider, fainter
        scap_dist=scap_dist,
        liver_hu=con.liver if con.liver is not None else an.hu_liver,
        spleen_hu=con.spleen if con.spleen is not None else an.hu_spleen,
        eff_wy=[np.clip((Y / an.cav_b - 0.1) / 0.8, 0.0, 1.0).astype(f32) ** 0.7 for _ in effusions],
        lut_c=lut_c,
        lut_w=lut_w,
        lut_b=lut_b,
        band_x0=band_x0,
        band_w0=band_w0,
        band_f=band_f,
        band_wave=band_wave,
        spine_all=spine_all,
        cav_rows=cav_rows,
        cav_cols=cav_cols,
    )


def _paint_slice_b(
    hb: np.ndarray,
    sb: np.ndarray,
    eff_b: np.ndarray | None,
    k: int,
    h: float,
    fr: _Frame,
    an: Anatomy,
    look: Look,
    effusions: Sequence[Effusion],
) -> dict:
    """One fine slice in the body's box (``hb`` HU, ``sb`` lung sides, ``eff_b``
    effusion); returns the lung boxes ``_fill_lungs`` found, relative to the cavity's box."""
    X, Y, R = fr.X, fr.Y, fr.R
    t = float(an.t_of(h))
    lc, lw, lb = fr.lut_c[k], fr.lut_w[k], fr.lut_b[k]
    Rc = lc[fr.TI]
    W = lw[fr.TI]
    Rb = lb[fr.TI]
    body = (R < Rb) & (Y < fr.ysurf)
    hb[body] = an.hu_fat
    hb[body & ((R > Rb - an.skin) | (Y > fr.ysurf - an.skin))] = an.hu_skin
    wall = body & (R < Rc + W)
    hb[wall] = an.hu_muscle
    hb[wall & (np.abs(R - (Rc + an.fat_plane * W)) < FAT_PLANE_HALF_MM)] = an.hu_fat
    if t > SCAPULA_T0:
        half = SCAPULA_HALF_ANGLE * math.sqrt(smoothstep(SCAPULA_T0, SCAPULA_T0 + 0.25, t))
        plate = np.abs(R - (Rc + 0.62 * W)) < SCAPULA_THICK_MM / 2
        hb[plate & ((fr.scap_dist[0] < half) | (fr.scap_dist[1] < half))] = HU_SCAPULA
    got, xm, (sx, sy, sr) = _paint_cavity(hb, sb, eff_b, k, h, t, Rc, fr, an, look, effusions)
    i_ant, i_left, i_right = N_ANGLES // 4, N_ANGLES // 2, 0  # angle -pi/2, 0, -pi
    _spine(hb, h, Y, X, sx, sy, sr, an)
    _sternum(hb, h, Y, X, xm, float(lc[i_ant]), an)
    if an.arms_down:
        _arms(hb, h, Y, X, fr.ysurf, (float(lb[i_left]), float(lb[i_right])), an, look)
    if look.cupping > 0:
        hb[body] -= (look.cupping * (1.0 - (R / Rb) ** 2))[body]
    return got


def _paint_cavity(
    hb: np.ndarray,
    sb: np.ndarray,
    eff_b: np.ndarray | None,
    k: int,
    h: float,
    t: float,
    Rc: np.ndarray,
    fr: _Frame,
    an: Anatomy,
    look: Look,
    effusions: Sequence[Effusion],
) -> tuple[dict, float, tuple[float, float, float]]:
    """The thoracic cavity of one slice, in its own box (a third of the body's box):
    mediastinal fat, diaphragm, abdomen, heart, lungs. Returns the lung boxes, the
    mediastinal band's centre and the spine (x, y, radius)."""
    cr, cc = fr.cav_rows[k], fr.cav_cols[k]
    hc, Rk, Rck, Xk, Yk = hb[cr, cc], fr.R[cr, cc], Rc[cr, cc], fr.X[:, cc], fr.Y[cr]
    qdk, qak = [q[cr, cc] for q in fr.qd], [q[cr, cc] for q in fr.qa]
    cav = Rk < Rck
    hc[cav] = an.hu_med_fat + (an.hu_soft + 10.0 - an.hu_med_fat) * smoothstep(0.88, 1.05, t)
    thr = [an.dome_threshold(i, h) for i in (0, 1)]
    thr_m = [an.dome_threshold(i, h + an.dia_t) for i in (0, 1)]
    above = (qdk[0] > thr[0]) & (qdk[1] > thr[1])
    above_m = (qdk[0] > thr_m[0]) & (qdk[1] > thr_m[1])
    thorax = cav & above
    hc[cav & above_m & ~above] = an.hu_muscle
    abdomen = cav & ~above_m
    if abdomen.any():
        hc[abdomen] = an.hu_soft
        hc[abdomen & (Xk < an.liver_x - an.liver_slope * Yk / an.cav_b)] = fr.liver_hu
        _ellipsoid_organ(hc, abdomen, h, Yk, Xk, an.spleen_c, an.spleen_axes, fr.spleen_hu)
        _stomach(hc, abdomen, h, Yk, Xk, an)
    xm, wb = float(fr.band_x0[k]), fr.band_w0[k] * fr.band_f[cr] + fr.band_wave[cr]
    lung = thorax & (np.abs(Xk - xm) > wb)
    _heart(hc, lung, thorax, h, Yk, Xk, an, look.contrast)
    sx, sy, sr = (float(v) for v in fr.spine_all[k])
    lung &= (Xk - sx) ** 2 + (Yk - sy) ** 2 > (sr + an.paravertebral) ** 2
    right = Xk < xm
    gap_r, gap_l = an.apex_top[0] - h, an.apex_top[1] - h
    if gap_r <= 0 and gap_l <= 0:
        lung[:] = False
    else:
        lung &= np.where(right, qak[0] < gap_r / an.apex_k, qak[1] < gap_l / an.apex_k)
    got: dict = {}
    if lung.any():
        got = _fill_lungs(
            hc,
            sb[cr, cc],
            None if eff_b is None else eff_b[cr, cc],
            lung,
            h,
            xm,
            Xk,
            Rk,
            Rck,
            fr.levels[:, cr, cc],
            fr.lev_dz,
            fr.parenchyma0,
            fr.ynorm[cr],
            [o[cr, cc] for o in fr.obl],
            fr.hor[cr, cc],
            fr.fis_w,
            fr.fis_amp,
            effusions,
            [wy[cr] for wy in fr.eff_wy],
            an,
        )
    return got, xm, (sx, sy, sr)


def _fill_lungs(
    hb: np.ndarray,
    sb: np.ndarray,
    eff: np.ndarray | None,
    lung: np.ndarray,
    h: float,
    xm: float,
    X: np.ndarray,
    R: np.ndarray,
    Rc: np.ndarray,
    levels: np.ndarray,
    lev_dz: float,
    parenchyma0: float,
    ynorm: np.ndarray,
    obl: list[np.ndarray],
    hor: np.ndarray,
    fis_w: float,
    fis_amp: float,
    effusions: Sequence[Effusion],
    eff_wy: list[np.ndarray],
    an: Anatomy,
) -> dict[int, tuple[int, int, int, int]]:
    """Parenchyma (texture, dependent gradient, fissures) and effusions, each lung in
    its own bounding box (the right lung lies left of the midline column). Returns the
    box (rows, cols within the painter's box) of each lung drawn."""
    f32 = np.float32
    rr, cc = np.flatnonzero(lung.any(axis=1)), np.flatnonzero(lung.any(axis=0))
    r0, r1, c0, c1 = int(rr[0]), int(rr[-1]) + 1, int(cc[0]), int(cc[-1]) + 1
    cm = min(max(int(np.searchsorted(X[0], xm)), c0), c1)
    j = min(max(int(h // lev_dz) + 1, 0), len(levels) - 2)
    wgt = min(max(h / lev_dz + 1.0 - j, 0.0), 1.0)
    norm = an.texture_sd / math.sqrt((1 - wgt) ** 2 + wgt**2)  # keeps the texture sd
    drawn: dict[int, tuple[int, int, int, int]] = {}
    for a, b, side_id in ((c0, cm, RIGHT), (cm, c1, LEFT)):
        if a >= b:
            continue
        sub = (slice(r0, r1), slice(a, b))
        lg = lung[sub]
        if not lg.any():
            continue
        val = levels[j][sub] * f32((1 - wgt) * norm) + levels[j + 1][sub] * f32(wgt * norm)
        val += parenchyma0 + an.gravity * ynorm[r0:r1]
        if side_id == RIGHT:
            ob = obl[0][sub]
            fis = np.maximum(np.exp(-(((h - ob) / fis_w) ** 2)), np.exp(-(((h - hor[sub]) / fis_w) ** 2)) * (h > ob))
        else:
            fis = np.exp(-(((h - obl[1][sub]) / fis_w) ** 2))
        val += fis_amp * fis
        hs = hb[sub]
        for e, wy in zip(effusions, eff_wy, strict=True):
            t_eff = e.thickness * smoothstep(e.h_top, e.h_top - 60.0, h)
            if e.side != side_id or t_eff <= 0:
                continue
            fluid = lg & (Rc[sub] - R[sub] < t_eff * wy[r0:r1])
            lg = lg & ~fluid
            hs[fluid] = e.hu
            if eff is not None:
                eff[sub] |= fluid
        np.copyto(hs, val, where=lg)
        sb[sub][lg] = side_id
        drawn[side_id] = (r0, r1, a, b)
    return drawn


def _ellipsoid_organ(
    hb: np.ndarray,
    allowed: np.ndarray,
    h: float,
    Y: np.ndarray,
    X: np.ndarray,
    c: np.ndarray,
    axes: np.ndarray,
    value: float,
) -> np.ndarray | None:
    dh = (h - c[0]) / axes[0]
    if abs(dh) >= 1:
        return None
    inside = ((Y - c[1]) / axes[1]) ** 2 + ((X - c[2]) / axes[2]) ** 2 < 1.0 - dh * dh
    inside &= allowed
    hb[inside] = value
    return inside


def _stomach(hb: np.ndarray, abdomen: np.ndarray, h: float, Y: np.ndarray, X: np.ndarray, an: Anatomy) -> None:
    c, ax = an.stomach_c, an.stomach_axes
    dh = (h - c[0]) / ax[0]
    if abs(dh) >= 1:
        return
    q = ((Y - c[1]) / ax[1]) ** 2 + ((X - c[2]) / ax[2]) ** 2 + dh * dh
    outer = abdomen & (q < 1.0)
    hb[outer] = an.hu_muscle  # wall
    inner_q = (1.0 - STOMACH_WALL_MM / float(ax.min())) ** 2
    content = outer & (q < inner_q)
    hb[content] = an.hu_stomach
    if an.gas_level > 0:
        # Supine: gas rises to the anterior (non-dependent) part.
        hb[content & (Y < c[1] - ax[1] + 2 * ax[1] * an.gas_level)] = HU_GAS


def _heart(
    hb: np.ndarray,
    lung: np.ndarray,
    thorax: np.ndarray,
    h: float,
    Y: np.ndarray,
    X: np.ndarray,
    an: Anatomy,
    con: Contrast,
) -> None:
    grow = an.heart_zone_grow
    reach = float(an.heart_axes.max()) + grow
    if abs(h - an.heart_c[0]) > reach:
        return
    cy, cx = an.heart_c[1], an.heart_c[2]
    r0, r1 = np.searchsorted(Y[:, 0], cy - reach), np.searchsorted(Y[:, 0], cy + reach, "right")
    c0, c1 = np.searchsorted(X[0], cx - reach), np.searchsorted(X[0], cx + reach, "right")
    if r0 >= r1 or c0 >= c1:
        return
    sub = (slice(r0, r1), slice(c0, c1))
    y, x = Y[r0:r1], X[:, c0:c1]
    p, q, s = an.heart_local(np.float32(h), y, x)
    th = thorax[sub]
    lung[sub] &= an.heart_rho(p, q, s, grow=grow) >= 1.0
    hs = hb[sub]
    fat = th & (an.heart_rho(p, q, s, grow=an.pericardial_fat) < 1.0)
    hs[fat] = an.hu_fat
    heart = th & (an.heart_rho(p, q, s) < 1.0)
    hs[heart] = con.myocardium
    # Blood pools: right heart, left heart (contrast phase), the rest is myocardium.
    for (pc, qc, sc, pa, qa, sa), value in zip(an.chambers, (con.aorta, con.pa, con.aorta, con.pa), strict=True):
        pool = heart & (((p - pc) / pa) ** 2 + ((q - qc) / qa) ** 2 + ((s - sc) / sa) ** 2 < 1.0)
        hs[pool] = value


def _spine(
    hb: np.ndarray, h: float, Y: np.ndarray, X: np.ndarray, sx: float, sy: float, sr: float, an: Anatomy
) -> None:
    reach = sr + 2 * an.r_canal + 40.0
    r0, r1 = np.searchsorted(Y[:, 0], sy - sr - 2), np.searchsorted(Y[:, 0], sy + reach, "right")
    c0, c1 = np.searchsorted(X[0], sx - reach), np.searchsorted(X[0], sx + reach, "right")
    if r0 >= r1 or c0 >= c1:
        return
    hs = hb[r0:r1, c0:c1]
    dy, dx = Y[r0:r1] - sy, X[:, c0:c1] - sx
    d = np.sqrt(dx * dx + dy * dy)
    phase = (h / an.disc_pitch + an.disc_phase) % 1.0
    if phase < an.disc_t / an.disc_pitch:
        hs[d < sr] = an.hu_disc
    else:
        hs[d < sr] = an.hu_cortex
        hs[d < sr - CORTEX_MM] = an.hu_marrow
    cy = sy + sr + an.r_canal + 1.5
    dc = np.sqrt(dx * dx + (Y[r0:r1] - cy) ** 2)
    # Neural arch: a bony ring behind the vertebral body, open at the front.
    arch = (dc < an.r_canal + 4.0) & (Y[r0:r1] > sy + 0.6 * sr)
    hs[arch] = an.hu_cortex
    hs[dc < an.r_canal] = an.hu_canal
    if 0.15 < phase < 0.85:  # spinous process
        hs[(np.abs(dx) < 4.0) & (Y[r0:r1] > cy + an.r_canal) & (Y[r0:r1] < cy + an.r_canal + 28.0)] = an.hu_cortex
    if 0.3 < phase < 0.7:  # transverse processes
        tp = ((np.abs(dx) - (an.r_canal + 12.0)) / 11.0) ** 2 + ((Y[r0:r1] - cy) / 5.0) ** 2 < 1.0
        hs[tp] = an.hu_cortex


def _sternum(hb: np.ndarray, h: float, Y: np.ndarray, X: np.ndarray, xm: float, front: float, an: Anatomy) -> None:
    """The sternum in the anterior wall (``front``: cavity radius on the anterior midline)."""
    bottom = an.heart_c[0] - 0.8 * an.heart_axes[2]
    if not bottom < h < an.sternum_top:
        return
    cy = -(front + an.sternum_t + 1.0)
    w = an.sternum_w * (1.0 + 0.5 * smoothstep(an.sternum_top - 50.0, an.sternum_top, h))
    r0, r1 = np.searchsorted(Y[:, 0], cy - an.sternum_t), np.searchsorted(Y[:, 0], cy + an.sternum_t, "right")
    c0, c1 = np.searchsorted(X[0], xm - w), np.searchsorted(X[0], xm + w, "right")
    if r0 >= r1 or c0 >= c1:
        return
    hs, ys, xs = hb[r0:r1, c0:c1], Y[r0:r1], X[:, c0:c1]
    hs[((xs - xm) / w) ** 2 + ((ys - cy) / an.sternum_t) ** 2 < 1.0] = an.hu_cortex
    hs[((xs - xm) / (w - CORTEX_MM)) ** 2 + ((ys - cy) / (an.sternum_t - CORTEX_MM)) ** 2 < 1.0] = an.hu_marrow


def _arms(
    hb: np.ndarray,
    h: float,
    Y: np.ndarray,
    X: np.ndarray,
    ysurf: np.ndarray,
    lateral: tuple[float, float],
    an: Anatomy,
    look: Look,
) -> None:
    """Arms beside the body (``lateral``: body radius towards the left and the right)."""
    ax, ay = an.arm_axes
    fat = 0.5 * an.fat + 3.0
    centres = []
    cy = an.arm_y
    for lat, sign in zip(lateral, (1.0, -1.0), strict=True):
        cx = (lat + an.arm_gap + ax) * sign
        # The arm rests on the table: never below its surface.
        col = min(int(np.searchsorted(X[0], cx)), X.shape[1] - 1)
        cy = min(an.arm_y, float(ysurf[0, col]) - ay - 1.0)
        centres.append(cx)
        r0, r1 = np.searchsorted(Y[:, 0], cy - ay), np.searchsorted(Y[:, 0], cy + ay, "right")
        c0, c1 = np.searchsorted(X[0], cx - ax), np.searchsorted(X[0], cx + ax, "right")
        if r0 >= r1 or c0 >= c1:
            continue
        hs, ys, xs = hb[r0:r1, c0:c1], Y[r0:r1], X[:, c0:c1]
        hs[((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2 < 1.0] = an.hu_fat
        hs[((xs - cx) / (ax - fat)) ** 2 + ((ys - cy) / (ay - fat)) ** 2 < 1.0] = an.hu_muscle
        bones = ((cx, an.humerus_r),) if h > an.elbow_h else ((cx - 12.0, 7.0), (cx + 12.0, 6.0))
        for bx, br in bones:
            d = np.sqrt((xs - bx) ** 2 + (ys - cy) ** 2)
            hs[d < br] = an.hu_cortex
            hs[d < br - 2 * CORTEX_MM] = an.hu_arm_marrow
    if look.streak > 0 and h > an.elbow_h:
        # Beam hardening between the two humeri: a dark band along the line joining them.
        lo, hi = min(centres), max(centres)
        r0 = np.searchsorted(Y[:, 0], cy - 3 * look.streak_w)
        r1 = np.searchsorted(Y[:, 0], cy + 3 * look.streak_w, "right")
        c0, c1 = np.searchsorted(X[0], lo), np.searchsorted(X[0], hi, "right")
        if r0 < r1 and c0 < c1:
            band = np.exp(-(((Y[r0:r1] - cy) / look.streak_w) ** 2))
            hb[r0:r1, c0:c1] -= np.broadcast_to((look.streak * band).astype(np.float32), (int(r1 - r0), int(c1 - c0)))
