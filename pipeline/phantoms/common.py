"""Shared machinery of phantom family B: random streams, the sampling grid, plane-wave
fields and the ball-splat renderer.

Family B draws tubular and small round structures (vessels, airways, ribs, the aorta,
small nodules) as *unions of balls* sampled densely along their centre lines and
scattered into the volume with ``np.maximum.at`` / ``np.minimum.at``: every ball gets a
small stencil of voxel offsets, the anti-aliased coverage of each offset is computed for
all balls of a stencil size at once, and the blend ``hu + w * (value - hu)`` is merged
into the volume by a max (bright structures) or min (air) rule. This is a different
construction from family A (``pipeline.phantom``), which evaluates the distance to each
tube segment in its bounding box; nothing here is shared with it.

Coordinates: the builder works in millimetres in the patient frame, ordered (h, y, x):
``h`` height above the bottom of the scanned range (so z index 0, the most inferior
slice, has the smallest ``h``), ``y`` posterior and ``x`` the patient's left, both
relative to the centre of the body outline.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Protocol, overload

import numpy as np

__all__ = [
    "Stream",
    "rng_for",
    "Grid",
    "Waves",
    "splat_balls",
    "segment_balls",
    "frame_from",
    "smoothstep",
    "unit_rows",
]

#: Mixed into every seed of family B so its random streams never coincide with another
#: generator seeded by the same integer.
FAMILY_B_TAG = 0xFB0B

#: Entries (balls x stencil offsets) handled per vectorised chunk of the splat renderer:
#: big enough to amortise numpy overhead, small enough to keep temporaries in ~100 MB.
_SPLAT_CHUNK = 1 << 21


class Stream(enum.IntEnum):
    """Independent random streams: the anatomy depends on the seed only, the lesions on
    (seed, label), so the four classes of one seed share one patient."""

    LOOK = 1  # acquisition: matrix, thickness, kernel, noise, phase, FOV, table
    ANATOMY = 2  # the patient's shape and tissue values
    TREES = 3  # vessel and airway trees
    LESIONS = 4  # class-specific findings (extra = class index)
    TEXTURE = 5  # parenchyma texture fields
    NOISE = 6  # quantum noise realisation


def rng_for(seed: int, stream: Stream, extra: int = 0) -> np.random.Generator:
    """A generator for one stream of one case (deterministic in its arguments)."""
    seed = int(seed)
    ss = np.random.SeedSequence(
        entropy=[seed & 0xFFFFFFFF, seed >> 32, FAMILY_B_TAG], spawn_key=(int(stream), int(extra))
    )
    return np.random.default_rng(ss)


@overload
def smoothstep(e0: float, e1: float, x: float) -> float: ...


@overload
def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray: ...


@overload
def smoothstep(e0: float, e1: float, x: np.ndarray | float) -> np.ndarray | float: ...


def smoothstep(e0: float, e1: float, x: np.ndarray | float) -> np.ndarray | float:
    """0 below e0, 1 above e1, a cubic in between (works for e0 > e1 too)."""
    t = np.clip((np.asarray(x, dtype=np.float64) - e0) / (e1 - e0), 0.0, 1.0)
    out = t * t * (3.0 - 2.0 * t)
    return float(out) if np.ndim(out) == 0 else out


def unit_rows(v: np.ndarray) -> np.ndarray:
    """Each row of ``v`` scaled to unit length (zero rows stay zero)."""
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


def frame_from(axis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random orthonormal frame (3x3, rows) whose first row is ``axis``."""
    a = axis / max(float(np.linalg.norm(axis)), 1e-9)
    r = rng.normal(size=3)
    b = r - a * float(a @ r)
    b /= max(float(np.linalg.norm(b)), 1e-9)
    return np.stack([a, b, np.cross(a, b)])


@dataclass(frozen=True)
class Grid:
    """The sampling grid. ``sub`` fine samples along z make one output slice: the volume
    is built at ``dz / sub`` and averaged over each slice thickness (partial volume)."""

    nz: int  # output slices
    sub: int  # fine samples per output slice
    ny: int
    nx: int
    dz: float  # output slice spacing (= thickness), mm
    dxy: float  # pixel spacing, mm
    iso_x: float  # patient-frame position (mm) of the image centre
    iso_y: float

    @property
    def nzf(self) -> int:
        return self.nz * self.sub

    @property
    def dzf(self) -> float:
        return self.dz / self.sub

    @property
    def shape_fine(self) -> tuple[int, int, int]:
        return self.nzf, self.ny, self.nx

    @property
    def h(self) -> np.ndarray:
        """Heights (mm) of the fine samples, increasing with the index."""
        return (np.arange(self.nzf) + 0.5) * self.dzf

    @property
    def y(self) -> np.ndarray:
        return (np.arange(self.ny) - (self.ny - 1) / 2.0) * self.dxy + self.iso_y

    @property
    def x(self) -> np.ndarray:
        return (np.arange(self.nx) - (self.nx - 1) / 2.0) * self.dxy + self.iso_x

    def frac_index(self, pts: np.ndarray) -> np.ndarray:
        """Fractional fine-voxel indices (k, j, i) of points (N, 3) in (h, y, x) mm."""
        pts = np.asarray(pts, dtype=np.float64)
        out = np.empty_like(pts)
        out[..., 0] = pts[..., 0] / self.dzf - 0.5
        out[..., 1] = (pts[..., 1] - self.iso_y) / self.dxy + (self.ny - 1) / 2.0
        out[..., 2] = (pts[..., 2] - self.iso_x) / self.dxy + (self.nx - 1) / 2.0
        return out

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Fine-voxel slices covering the mm box [lo, hi] in (h, y, x), or None if empty."""
        a, b = self.frac_index(np.asarray(lo)), self.frac_index(np.asarray(hi))
        out = []
        for lo_i, hi_i, n in zip(np.minimum(a, b), np.maximum(a, b), self.shape_fine, strict=True):
            s, e = max(int(math.floor(lo_i)), 0), min(int(math.ceil(hi_i)) + 1, n)
            if s >= e:
                return None
            out.append(slice(s, e))
        return out[0], out[1], out[2]


@dataclass(frozen=True)
class Waves:
    """A sum of random plane waves, ``sum amp * sin(k . p + phase)``: a smooth random
    field that costs a few multiply-adds per voxel. On a box it is evaluated separably
    (sin(a+b+c) from 1-D complex factors), so no transcendental runs per voxel."""

    k: np.ndarray  # (W, 3) rad/mm, (h, y, x)
    phase: np.ndarray  # (W,)
    amp: np.ndarray  # (W,)

    @staticmethod
    def draw(rng: np.random.Generator, count: int, wavelength_mm: tuple[float, float], rms: float = 1.0) -> "Waves":
        dirs = unit_rows(rng.normal(size=(count, 3)))
        lam = rng.uniform(*wavelength_mm, size=count)
        amp = rng.uniform(0.5, 1.0, size=count)
        amp *= rms / math.sqrt(max(float((amp**2).sum()) / 2.0, 1e-12))
        return Waves(dirs * (2 * math.pi / lam)[:, None], rng.uniform(0, 2 * math.pi, count), amp)

    def on_box(self, h: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The field on the grid h (nz,) x y (ny,) x x (nx,), float32 (nz, ny, nx)."""
        out = np.zeros((len(h), len(y), len(x)), dtype=np.float32)
        for (kh, ky, kx), ph, a in zip(self.k, self.phase, self.amp, strict=True):
            ezy = (np.exp(1j * (kh * h + ph))[:, None] * np.exp(1j * ky * y)[None, :])[..., None]
            ex = np.exp(1j * kx * x)[None, None, :]
            # Im(ezy * ex) = Re(ezy) Im(ex) + Im(ezy) Re(ex)
            out += (a * ezy.real).astype(np.float32) * ex.imag.astype(np.float32)
            out += (a * ezy.imag).astype(np.float32) * ex.real.astype(np.float32)
        return out

    def at(self, pts: np.ndarray) -> np.ndarray:
        """The field at points (N, 3)."""
        return (self.amp * np.sin(pts @ self.k.T + self.phase)).sum(axis=-1)


class BallSpacing(Protocol):
    """What ball spacing needs of a grid: its fine z and in-plane spacing (mm)."""

    @property
    def dzf(self) -> float: ...

    @property
    def dxy(self) -> float: ...


def segment_balls(
    p0: np.ndarray, p1: np.ndarray, r0: np.ndarray, r1: np.ndarray, grid: BallSpacing, spacing: float = 0.6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balls along straight segments (N, 3) -> (centres (M, 3), radii (M,), segment id).

    Balls are ``spacing`` x radius apart (or 0.7 voxel, if that is more), so the
    union is a smooth tube; consecutive segments share their end balls.
    """
    p0, p1 = np.atleast_2d(p0).astype(np.float64), np.atleast_2d(p1).astype(np.float64)
    r0 = np.broadcast_to(np.asarray(r0, dtype=np.float64), (len(p0),))
    r1 = np.broadcast_to(np.asarray(r1, dtype=np.float64), (len(p0),))
    length = np.linalg.norm(p1 - p0, axis=1)
    # 0.7 voxel apart is enough for thin tubes: anti-aliasing fills the gaps.
    floor = 0.7 * min(grid.dzf, grid.dxy) / spacing
    step = spacing * np.maximum(np.minimum(r0, r1), floor)
    n = np.maximum(np.ceil(length / step).astype(np.int64), 1)
    counts = n + 1
    seg = np.repeat(np.arange(len(p0)), counts)
    starts = np.cumsum(counts) - counts
    t = (np.arange(int(counts.sum())) - starts[seg]) / n[seg]
    centres = p0[seg] + (p1 - p0)[seg] * t[:, None]
    radii = r0[seg] + (r1 - r0)[seg] * t
    return centres, radii, seg


def _stencil(ez: int, exy: int, reach_z: float, reach_xy: float, grid: Grid) -> np.ndarray:
    """Voxel offsets (S, 3) that a ball reaching ``reach_z`` / ``reach_xy`` mm, centred
    within half a voxel of the origin, can touch."""
    oz, oy, ox = np.meshgrid(np.arange(-ez, ez + 1), np.arange(-exy, exy + 1), np.arange(-exy, exy + 1), indexing="ij")
    off = np.stack([oz.ravel(), oy.ravel(), ox.ravel()], axis=1)
    near = np.maximum(np.abs(off) - 0.5, 0.0) * np.array([grid.dzf, grid.dxy, grid.dxy])
    keep = (near[:, 0] / reach_z) ** 2 + (near[:, 1] ** 2 + near[:, 2] ** 2) / reach_xy**2 <= 1.0
    return off[keep]


def _stencil_voxels(
    centres: np.ndarray,
    stencil: np.ndarray,
    shape: np.ndarray,
    spacing: np.ndarray,
    semi: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For balls at fractional indices ``centres`` and each stencil offset: the true squared
    distance (mm), the squared distance in units of the ball's (z, in-plane) semi-axes, the
    flat voxel index and whether the voxel lies inside the grid."""
    base = np.rint(centres).astype(np.int64)
    frac = (centres - base).astype(np.float32)
    d2 = np.zeros((len(centres), len(stencil)), dtype=np.float32)  # true squared distance
    q2 = np.zeros((len(centres), len(stencil)), dtype=np.float32)  # in units of the ellipsoid
    idx = np.zeros((len(centres), len(stencil)), dtype=np.int64)
    ok = np.ones((len(centres), len(stencil)), dtype=bool)
    for ax in range(3):
        pos = base[:, ax : ax + 1] + stencil[None, :, ax]
        ok &= (pos >= 0) & (pos < shape[ax])
        idx = idx * shape[ax] + pos
        d = (stencil[None, :, ax] - frac[:, ax : ax + 1]) * spacing[ax]
        d2 += d * d
        q2 += (d / semi[0 if ax == 0 else 1]) ** 2
    return d2, q2, idx, ok


def _balls_in_grid(
    grid: Grid, centres: np.ndarray, radii: np.ndarray, vals: np.ndarray
) -> tuple[np.ndarray, ...] | None:
    """The balls that can touch the grid: fractional centres, radii, stretched semi-axes, gains,
    values, stencil extents and reaches (splat_balls); None when none can."""
    # Partial volume of thin balls: along z a ball thinner than half a fine slice is
    # stretched to it and dimmed by the length ratio; in-plane one thinner than 0.6
    # pixel is widened and dimmed by the area ratio.
    a_z = np.maximum(radii, 0.5 * grid.dzf)
    a_xy = np.maximum(radii, 0.6 * grid.dxy)
    gain = ((radii / a_z) * (radii / a_xy) ** 2).astype(np.float32)
    c = grid.frac_index(centres)
    # Reach of the anti-aliased ball: half a pixel beyond its surface (scaled along z);
    # a voxel whose centre lies within half a voxel of the reach can be touched.
    reach_z = a_z * (1.0 + 0.5 * grid.dxy / a_xy)
    reach_xy = a_xy + 0.5 * grid.dxy
    ez = np.floor(reach_z / grid.dzf + 0.5).astype(np.int64)
    exy = np.floor(reach_xy / grid.dxy + 0.5).astype(np.int64)
    shape = np.array(grid.shape_fine)
    reach = np.stack([ez, exy, exy], axis=1)
    inside = np.all((c + reach >= 0) & (c - reach <= shape - 1), axis=1)
    if not inside.any():
        return None
    return tuple(a[inside] for a in (c, radii, a_z, a_xy, gain, vals, ez, exy, reach_z, reach_xy))


def splat_balls(
    vol: np.ndarray,
    grid: Grid,
    centres: np.ndarray,
    radii: np.ndarray,
    values: np.ndarray | float,
    mode: str = "max",
    within: np.ndarray | None = None,
    mark: np.ndarray | None = None,
    clear: np.ndarray | None = None,
    clear_grow: float = 0.0,
) -> None:
    """Blend balls into ``vol`` (fine grid, float32) in place.

    Each voxel moves towards the ball's value by its coverage ``w`` (anti-aliased over one
    pixel); overlapping balls merge by ``mode``: "max" (structures brighter than their
    surroundings) or "min" (air). ``within`` (any array, nonzero = allowed) restricts the
    blend; ``mark`` (bool) is set and ``clear`` (bool or int) zeroed where a voxel centre
    lies inside a ball's true radius (``clear``: grown by ``clear_grow`` mm, at most
    about a pixel).

    Partial volume of thin balls: along z a ball is drawn at least half a fine slice
    tall with its contrast scaled by the length ratio, in-plane at least 0.6 pixel wide
    with its contrast scaled by the area ratio; a thin vessel fades instead of vanishing
    between samples.
    """
    centres = np.atleast_2d(np.asarray(centres, dtype=np.float64))
    if len(centres) == 0:
        return
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(centres),))
    vals = np.broadcast_to(np.asarray(values, dtype=np.float32), (len(centres),))
    prepared = _balls_in_grid(grid, centres, radii, vals)
    if prepared is None:
        return
    c, radii, a_z, a_xy, gain, vals, ez, exy, reach_z, reach_xy = prepared
    flat = vol.reshape(-1)
    within_f = None if within is None else within.reshape(-1)
    mark_f = None if mark is None else mark.reshape(-1)
    clear_f = None if clear is None else clear.reshape(-1)
    merge = np.maximum.at if mode == "max" else np.minimum.at
    shape = np.array(grid.shape_fine)
    spacing = np.array([grid.dzf, grid.dxy, grid.dxy], dtype=np.float32)
    key = ez * 4096 + exy
    for kv in np.unique(key):
        sel = np.flatnonzero(key == kv)
        stencil = _stencil(int(kv // 4096), int(kv % 4096), float(reach_z[sel].max()), float(reach_xy[sel].max()), grid)
        per = max(1, _SPLAT_CHUNK // len(stencil))
        for s0 in range(0, len(sel), per):
            b = sel[s0 : s0 + per]
            semi = (a_z[b, None].astype(np.float32), a_xy[b, None].astype(np.float32))
            d2, q2, idx, ok = _stencil_voxels(c[b], stencil, shape, spacing, semi)
            dist = np.sqrt(d2)
            if clear_f is not None:
                clear_f[idx[ok & (dist <= radii[b, None].astype(np.float32) + clear_grow)]] = 0
            # Anti-aliased over one pixel at the in-plane scale of the (stretched) ball.
            w = np.clip((1.0 - np.sqrt(q2)) * (semi[1] / np.float32(grid.dxy)) + 0.5, 0.0, 1.0)
            w *= gain[b, None]
            ok &= w > 0
            if within_f is not None:
                ok[ok] = within_f[idx[ok]] != 0
            if not ok.any():
                continue
            ii, ww = idx[ok], w[ok]
            vv = np.broadcast_to(vals[b, None], w.shape)[ok]
            cur = flat[ii]
            merge(flat, ii, cur + ww * (vv - cur))
            if mark_f is not None:
                mark_f[ii[dist[ok] <= np.broadcast_to(radii[b, None], w.shape)[ok]]] = True
