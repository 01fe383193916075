"""Lobe segmentation, classical: the five lobes from the fissures. Pure numpy/scipy.

``segment_lobes(hu, lung_mask, spacing_mm)`` labels every voxel of ``lung_mask`` with
its lobe, 1-5 in the order of ``pipeline.severity.LOBES`` (right upper, middle, lower;
left upper, lower), 0 elsewhere. No training: it needs no labelled lobes.

What it assumes: a chest CT of a supine patient in the usual frame (rows run from
anterior to posterior, columns from the patient's right to the left, as in LPS with
the identity direction; ``superior_up`` says which way z runs), both lungs in the
mask, and lungs that can be told apart at the body's midline (the midline of the
mask's columns; pieces mostly on one side go to that side, as ``pipeline.lung`` splits
them).

How (on a copy at about ``WORK_MM`` voxels, cropped to the lungs):

1. Each lung gets normalised coordinates: height ``t`` (0 lowest lung voxel, 1 apex),
   depth ``s`` (0 anterior, 1 posterior) and lateral ``w`` (0 medial, 1 lateral).
2. Fissures are bright thin sheets (a pleural double layer, 0.5-1 mm, tens of HU above
   the parenchyma). A Hessian plate filter at ``PLATE_SIGMA_MM`` marks them: one strongly
   negative eigenvalue, the other two small (vessels have two, nodules three); a
   candidate must also be brighter than the lung on both sides along its normal (an
   edge of a lesion is bright on one side only).
3. Each fissure is a height function ``t = f(s, w)``: the oblique fissure a quadratic in
   (s, w), the right horizontal one linear. A coarse search over the surfaces the
   anatomical prior allows picks the one with most candidates lying on it with a
   matching normal; an iteratively reweighted least-squares fit on the candidates near
   it refines it.
4. A fit is kept when candidates cover enough of the fissure's area
   (``MIN_COVERAGE``), hold far more weight than parallel surfaces nearby
   (``MIN_CONTRAST``) and, for the oblique fissure, than the best surface the same
   search finds among mirrored hypotheses that rise to the front (``MIN_MIRROR_RATIO``:
   what texture and vessels alone give a search over that many surfaces); otherwise
   the oblique fissure goes on to step 5, the horizontal one to the prior.
5. Thick slices average a fissure into a band a few HU brighter than the lung, too faint
   for the plate filter. An oblique fissure not found by it is searched again with a
   matched filter for a bright sheet (the HU minus its local mean, summed over a band
   around each surface of the same hypotheses, as a z-score); the best surface is kept
   when it beats the best mirrored one clearly (``RIDGE_MIN_*``). Otherwise it falls
   back to the anatomical prior (``PRIOR_*``): the oblique fissure from the back at about T4-T5 (upper third of the
   lung's height) down and forwards to the diaphragm near the front, the horizontal
   fissure at about the hilum's level. This is what happens without visible fissures
   (thick slices, smooth kernels, dense disease over the fissure, phantoms that draw
   none); the prior split is plausible but not the patient's.
6. Lobes follow from which side of each surface a voxel lies on; a lobe split into
   pieces keeps its largest piece and the others join the neighbouring lobe they are
   nearest to, so each lobe is one connected piece on the working grid (on the full
   grid too, unless the lung is only joined through voxels the blocks merge); labels go
   back to the full grid by nearest block.

Incomplete fissures (common in real lungs) are handled only by the smooth surface
bridging the gap; accessory fissures are ignored; a lung resected or collapsed breaks
the normalised coordinates and the prior.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from .lung import _split_at_midline
from .types import InvalidInputError

__all__ = ["segment_lobes", "fit_lobes", "LobeFit", "WORK_MM"]

#: Working voxel size (mm): fissures are found and lobes labelled at about this size.
WORK_MM = 2.0
#: Scale of the plate filter (mm): a fissure is thinner than a voxel at WORK_MM.
PLATE_SIGMA_MM = 1.5
#: Working voxels denser than this (vessels, walls, disease) are no fissure evidence.
DENSE_HU = -650.0
#: How flat a plate must be: the second eigenvalue against the first (Frangi's alpha).
PLATE_ALPHA = 0.3
#: Share of the lung's voxels kept as sheet candidates (the strongest plate responses).
CANDIDATE_SHARE = 0.06
#: A candidate lies on a surface within this distance (mm) and with normals this aligned.
ON_SURFACE_MM = 4.0
NORMAL_COS = 0.8
#: The search scores its hypotheses on at most this many of the strongest sheets.
SEARCH_SHEETS = 2000
#: A fit is kept when this share of the fissure's surface has a candidate on it.
MIN_COVERAGE = 0.3
#: ... and when it holds this many times the sheet weight of parallel surfaces shifted
#: by these distances (mm; texture and vessels are not flat over such an area).
MIN_CONTRAST = 4.0
NULL_SHIFTS_MM = (-24.0, -14.0, 14.0, 24.0)
#: ... and, for the oblique fissure, when the best surface holds this many times the sheet
#: weight of the best one the same search finds among the mirrored hypotheses (rising to
#: the front, which no oblique fissure does): that search runs on the same sheets, so
#: what it finds is what texture and vessels offer the search itself, selection included.
MIN_MIRROR_RATIO = 1.3
#: Thick slices (a fissure a few HU over a band, too faint for the plate filter): the
#: oblique fissure is then searched with a matched filter for a bright sheet, the HU
#: over the lung's (at ``RIDGE_FINE_MM``) minus its local mean (``RIDGE_COARSE_MM``), in
#: units of its spread, summed over the voxels within ``RIDGE_BAND_MM`` of each surface
#: (a z-score, voxels taken as independent) on at most ``RIDGE_MAX_VOXELS`` per lung.
RIDGE_FINE_MM, RIDGE_COARSE_MM, RIDGE_BAND_MM = 1.5, 8.0, 2.5
RIDGE_MAX_VOXELS = 150_000
#: The search ranks all surfaces on every RIDGE_COARSE_STEP-th sample, then scores the
#: RIDGE_TOP best on all.
RIDGE_COARSE_STEP, RIDGE_TOP = 4, 24
#: A surface counts where it crosses at least half the (s, w) cells of this grid with
#: ``RIDGE_CELL_VOXELS`` voxels each (not a corner of the lung).
RIDGE_CELLS, RIDGE_CELL_VOXELS = (4, 3), 20
#: The best oblique surface is kept when its score exceeds that of the best mirrored
#: surface (rising to the front: texture and vessels, with the search's own selection)
#: by this much and by this factor. Family A draws no fissures: on its development
#: cases (seeds 777001-777032, 224 px x 48 slices, true and classical lung masks, 127
#: oblique searches) one passes these (5.3, 2.1). Family B (777001-777016): 16 of 64
#: pass, all on the fissure.
RIDGE_MIN_EXCESS, RIDGE_MIN_RATIO = 3.6, 1.6
#: The same for the horizontal fissure, whose null (the same search in the lower lobe: a
#: region of another size and place) is less alike: on family A's cases up to 3.9 and
#: 1.94 (none of 64 passes); family B's: 14 of 32 pass.
RIDGE_MIN_EXCESS_H, RIDGE_MIN_RATIO_H = 5.0, 2.0
#: Anatomical prior, lung height fraction t (0 base, 1 apex): the oblique fissure at the
#: front (s = 0) and the back (s = 1), how much lower it runs laterally, and the height
#: of the right horizontal fissure.
PRIOR_OBLIQUE_ANT, PRIOR_OBLIQUE_POST, PRIOR_OBLIQUE_LAT = 0.22, 0.68, 0.03
PRIOR_HORIZONTAL = 0.58
#: The least rise (lung height fraction) of the oblique fissure from front to back.
MIN_OBLIQUE_RISE = 0.4
#: Sheets whose normal is closer to the z axis than this (|n_z|) are no oblique evidence.
OBLIQUE_MAX_NZ = 0.9
RIGHT, LEFT = 1, 2
#: Connectivity of a lobe's piece: any shared face, edge or corner.
_FULL_3D = np.ones((3, 3, 3), dtype=bool)


class _Frame(NamedTuple):
    """One lung on the working grid: its voxels (mm) and normalised coordinates."""

    idx: tuple[np.ndarray, np.ndarray, np.ndarray]  # working-grid indices of its voxels
    t: np.ndarray
    s: np.ndarray
    w: np.ndarray
    origin_mm: tuple[float, float, float]  # (z, y, x) where t, s and w are 0
    height_mm: float
    depth_mm: float
    width_mm: float
    lateral_sign: float  # +1 when w grows with the column index (the left lung)

    def normalised(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t, s, w) of points in working-grid millimetres."""
        z0, y0, x0 = self.origin_mm
        return (z - z0) / self.height_mm, (y - y0) / self.depth_mm, self.lateral_sign * (x - x0) / self.width_mm


class _Ridge(NamedTuple):
    """Matched-filter samples of one lung: normalised coordinates and the filter's value."""

    t: np.ndarray
    s: np.ndarray
    w: np.ndarray
    value: np.ndarray


class _Sheets(NamedTuple):
    """Sheet candidates of one lung: normalised coordinates, unit normals (z, y, x), weights."""

    t: np.ndarray
    s: np.ndarray
    w: np.ndarray
    normal: np.ndarray
    weight: np.ndarray


def _subset(sh: _Sheets, keep: np.ndarray) -> _Sheets:
    return _Sheets(sh.t[keep], sh.s[keep], sh.w[keep], sh.normal[keep], sh.weight[keep])


@dataclass(frozen=True)
class LobeFit:
    """``labels`` (uint8, the input's shape) and, per fissure ("right_oblique",
    "right_horizontal", "left_oblique"), "fitted" or "prior" with the evidence's
    contrast (sheet weight on the fitted surface over that on parallel ones)."""

    labels: np.ndarray
    fissures: dict[str, str] = field(default_factory=dict)
    contrast: dict[str, float] = field(default_factory=dict)


def segment_lobes(
    hu: np.ndarray, lung_mask: np.ndarray, spacing_mm: tuple[float, float, float], superior_up: bool = True
) -> np.ndarray:
    """Lobe labels (uint8 z/y/x, 1-5 in ``severity.LOBES`` order, 0 outside the lung)."""
    return fit_lobes(hu, lung_mask, spacing_mm, superior_up).labels


def fit_lobes(
    hu: np.ndarray, lung_mask: np.ndarray, spacing_mm: tuple[float, float, float], superior_up: bool = True
) -> LobeFit:
    """``segment_lobes`` with what was fitted and what fell back to the prior."""
    lung = np.asarray(lung_mask, dtype=bool)
    if hu.shape != lung.shape or hu.ndim != 3:
        raise InvalidInputError(
            f"segment_lobes needs a 3-D HU volume and mask of one shape, got {hu.shape}, {lung.shape}"
        )
    out = np.zeros(lung.shape, dtype=np.uint8)
    if not lung.any():
        return LobeFit(out)
    box = _bounding_box(lung)
    step = 1 if superior_up else -1  # the work below reads z as growing upwards
    sub_hu, sub_lung = hu[box][::step], lung[box][::step]
    factors = _work_factors(spacing_mm)
    work_hu, work_lung, evidence = _downsample(sub_hu, sub_lung, factors)
    work_mm = tuple(float(s) * f for s, f in zip(spacing_mm, factors, strict=True))
    labels, fissures, contrast = _label_work_grid(work_hu, work_lung, evidence, work_mm)
    full = _upsample(labels, factors, sub_lung.shape) * sub_lung
    out[box] = full[::step]
    return LobeFit(out, fissures, contrast)


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    plane = np.asarray(mask[zs[0] : zs[-1] + 1].any(axis=0))
    ys, xs = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    return slice(int(zs[0]), int(zs[-1]) + 1), slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1)


def _work_factors(spacing_mm: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(max(1, int(round(WORK_MM / float(s)))) for s in spacing_mm)  # type: ignore[return-value]


def _downsample(hu: np.ndarray, lung: np.ndarray, f: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block means of HU over the lung (the rest at the lung's median, so the lung's
    outline makes no edge for the plate filter), the blocks holding any lung, and those
    of them that can hold fissure evidence."""
    pad = [(0, (-n) % k) for n, k in zip(hu.shape, f, strict=True)]
    # Lung HU (0 elsewhere), padded to whole blocks.
    hu_p = np.pad(np.where(lung, hu, 0).astype(np.float32, copy=False), pad)
    lung_p = np.pad(lung.view(np.uint8), pad)
    shape = [n // k for n, k in zip(hu_p.shape, f, strict=True)]
    blocks = (shape[0], f[0], shape[1], f[1], shape[2], f[2])
    inside = lung_p.reshape(blocks).sum(axis=(1, 3, 5), dtype=np.float32)
    total = hu_p.reshape(blocks).sum(axis=(1, 3, 5), dtype=np.float32)
    work_lung = inside > 0
    mean = total / np.maximum(inside, 1.0)
    median = float(np.median(mean[work_lung])) if work_lung.any() else -850.0
    # Vessels, airway walls and dense disease (and a voxel around them) hold no fissure
    # evidence: their walls and ends answer the plate filter more strongly than a
    # fissure does. Outside the lung and there, the image is the lung's median.
    dense = ndimage.binary_dilation(work_lung & (mean > DENSE_HU), iterations=1)
    work_hu = np.where(work_lung & ~dense, mean, np.float32(median)).astype(np.float32)
    return work_hu, work_lung, work_lung & ~dense


def _upsample(labels: np.ndarray, f: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    idx = [np.minimum(np.arange(n) // k, m - 1) for n, k, m in zip(shape, f, labels.shape, strict=True)]
    return labels[np.ix_(*idx)]


def _label_work_grid(
    hu: np.ndarray, lung: np.ndarray, evidence: np.ndarray, spacing: tuple[float, ...]
) -> tuple[np.ndarray, dict[str, str], dict[str, float]]:
    """Lobe labels on the working grid, and how each fissure was found."""
    midline = _columns_midline(lung)
    right_half = np.arange(lung.shape[2])[None, None, :] < midline
    right, left = _split_at_midline(lung, np.broadcast_to(right_half, lung.shape))
    plates = _plate_candidates(hu, evidence, spacing)
    ridge = _ridge_image(hu, evidence, spacing)
    labels = np.zeros(lung.shape, dtype=np.uint8)
    fissures: dict[str, str] = {}
    coverage: dict[str, float] = {}
    for name, side, mask in (("right", RIGHT, right), ("left", LEFT, left)):
        if not mask.any():
            continue
        frame = _lung_frame(mask, spacing, side)
        sheets = _sheets_in(frame, mask, plates, spacing)
        lab, how, cov = _lobes_of_lung(frame, sheets, _ridge_in(frame, ridge, evidence), side)
        fissures.update({f"{name}_{k}": v for k, v in how.items()})
        coverage.update({f"{name}_{k}": v for k, v in cov.items()})
        labels[frame.idx] = lab
    return _connected_lobes(labels, lung), fissures, coverage


def _columns_midline(lung: np.ndarray) -> float:
    """The column midway between the lungs' outer edges (the body's midline, near enough)."""
    cols = np.flatnonzero(lung.any(axis=(0, 1)))
    return (float(cols[0]) + float(cols[-1]) + 1.0) / 2.0


def _lung_frame(mask: np.ndarray, spacing: tuple[float, ...], side: int) -> _Frame:
    """Normalised coordinates of one lung's voxels (robust extents: 0.5-99.5 percentiles)."""
    k, j, i = np.nonzero(mask)
    z, y, x = (a * float(s) for a, s in zip((k, j, i), spacing, strict=True))
    z0, z1 = np.percentile(z, (0.5, 99.5))
    y0, y1 = np.percentile(y, (0.5, 99.5))
    x0, x1 = np.percentile(x, (0.5, 99.5))
    height, depth, width = (max(float(b - a), 1.0) for a, b in ((z0, z1), (y0, y1), (x0, x1)))
    sign = 1.0 if side == LEFT else -1.0  # the right lung's lateral edge has the low columns
    origin = (float(z0), float(y0), float(x0 if side == LEFT else x1))
    frame = _Frame((k, j, i), z, z, z, origin, height, depth, width, sign)
    t, s, w = frame.normalised(z, y, x)
    return frame._replace(t=t, s=s, w=w)


def _plate_candidates(hu: np.ndarray, lung: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """Bright-sheet voxels of the lung: flat indices, unit normals (N, 3, in mm axes),
    plate strength (HU/mm^2 at the filter's scale)."""
    # At least a voxel along each axis: noise independent from slice to slice would
    # otherwise read as sheets lying in the slices.
    sigma = [max(PLATE_SIGMA_MM / float(s), 1.0) for s in spacing]
    smooth = ndimage.gaussian_filter(hu, sigma, mode="nearest")
    grads = np.gradient(smooth, *[float(s) for s in spacing])
    # A first cut on the Laplacian (a bright sheet's is strongly negative) keeps the
    # eigen-decomposition to a few per cent of the lung.
    lap = sum(np.gradient(g, float(s), axis=a) for a, (g, s) in enumerate(zip(grads, spacing, strict=True)))
    inner = ndimage.binary_erosion(lung, iterations=1)
    flat = np.flatnonzero(inner)
    if flat.size == 0:
        return (flat, np.zeros((0, 3)), np.zeros(0))
    cut = np.quantile(lap.ravel()[flat], 2.0 * CANDIDATE_SHARE)
    flat = flat[lap.ravel()[flat] <= min(cut, 0.0)]
    hess = np.empty((flat.size, 3, 3), dtype=np.float32)
    for a in range(3):
        for b in range(a, 3):
            hab = np.gradient(grads[a], float(spacing[b]), axis=b).ravel()[flat]
            hess[:, a, b] = hess[:, b, a] = hab
    vals, vecs = np.linalg.eigh(hess)  # ascending: vals[:, 0] the most negative
    l1, l2 = vals[:, 0], np.maximum(np.abs(vals[:, 1]), np.abs(vals[:, 2]))
    strength = np.where(l1 < 0, -l1 * np.exp(-0.5 * (l2 / (PLATE_ALPHA * l1 + 1e-9)) ** 2), 0.0) * PLATE_SIGMA_MM**2
    normal = vecs[:, :, 0]
    keep = _brighter_both_sides(smooth, flat, normal, spacing) & (strength > 0)
    flat, normal, strength = flat[keep], normal[keep], strength[keep]
    n_keep = max(int(CANDIDATE_SHARE * np.count_nonzero(lung)), 1)
    order = np.argsort(-strength)[:n_keep]
    return flat[order], normal[order], strength[order]


def _brighter_both_sides(
    smooth: np.ndarray, flat: np.ndarray, normal: np.ndarray, spacing: tuple[float, ...]
) -> np.ndarray:
    """Whether the smoothed HU at each point exceeds both neighbours 2 sigma along its
    normal (a sheet), not just one (the edge of a dense region)."""
    pos = np.stack(np.unravel_index(flat, smooth.shape), axis=1).astype(np.float32)
    step = normal * (2.0 * PLATE_SIGMA_MM) / np.asarray(spacing, dtype=np.float32)
    here = smooth.ravel()[flat]
    ahead = ndimage.map_coordinates(smooth, (pos + step).T, order=1, mode="nearest")
    behind = ndimage.map_coordinates(smooth, (pos - step).T, order=1, mode="nearest")
    return (here > ahead) & (here > behind)


def _sheets_in(frame: _Frame, mask: np.ndarray, plates: tuple[np.ndarray, ...], spacing: tuple[float, ...]) -> _Sheets:
    """The plate candidates inside one lung, in its normalised coordinates."""
    flat, normal, strength = plates
    inside = mask.ravel()[flat]
    flat, normal, strength = flat[inside], normal[inside], strength[inside]
    k, j, i = np.unravel_index(flat, mask.shape)
    z, y, x = (a * float(s) for a, s in zip((k, j, i), spacing, strict=True))
    scale = np.median(strength) if strength.size else 1.0
    weight = np.minimum(strength / max(float(scale), 1e-9), 3.0)
    t, s, w = frame.normalised(z, y, x)
    return _Sheets(t, s, w, normal, weight)


def _ridge_image(hu: np.ndarray, evidence: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """The bright-sheet matched filter over the ``evidence`` voxels: fine minus coarse
    local means (normalised convolution, so the outline and the vessels left out bias
    neither), clipped against what the exclusion missed, in units of its spread."""
    weight = evidence.astype(np.float32)
    values = np.where(evidence, hu, 0.0).astype(np.float32)

    def local_mean(sigma_mm: float) -> np.ndarray:
        sigma = [max(sigma_mm / float(s), 0.4) for s in spacing]
        num = ndimage.gaussian_filter(values, sigma, mode="constant")
        return num / np.maximum(ndimage.gaussian_filter(weight, sigma, mode="constant"), 1e-3)

    ridge = np.clip(local_mean(RIDGE_FINE_MM) - local_mean(RIDGE_COARSE_MM), -30.0, 30.0)
    spread = float(ridge[evidence].std()) if evidence.any() else 0.0
    return np.where(evidence, ridge / spread, 0.0).astype(np.float32) if spread > 0 else np.zeros_like(ridge)


def _ridge_in(frame: _Frame, ridge: np.ndarray, evidence: np.ndarray) -> _Ridge:
    """The filter's samples in one lung (its evidence voxels, evenly thinned to at most
    ``RIDGE_MAX_VOXELS``)."""
    keep = np.flatnonzero(evidence[frame.idx])
    keep = keep[:: max(1, -(-keep.size // RIDGE_MAX_VOXELS))]
    k, j, i = (a[keep] for a in frame.idx)
    f32 = np.float32
    return _Ridge(frame.t[keep].astype(f32), frame.s[keep].astype(f32), frame.w[keep].astype(f32), ridge[k, j, i])


# ----------------------------------------------------------------- fissure surfaces


def _basis(s: np.ndarray, w: np.ndarray, quadratic: bool) -> np.ndarray:
    cols = [np.ones_like(s), s, w]
    if quadratic:
        cols += [s * s, s * w, w * w]
    return np.stack(cols, axis=1)


def _surface_normal(coef: np.ndarray, sh: _Sheets, frame: _Frame, quadratic: bool) -> np.ndarray:
    """Unit normals (z, y, x in mm) of the surface t = f(s, w) at the sheets' (s, w)."""
    ds = coef[1] + (2 * coef[3] * sh.s + coef[4] * sh.w if quadratic else 0.0)
    dw = coef[2] + (coef[4] * sh.s + 2 * coef[5] * sh.w if quadratic else 0.0)
    ds, dw = np.broadcast_to(ds, sh.s.shape), np.broadcast_to(dw, sh.s.shape)
    nz = np.ones_like(sh.s)
    ny = -frame.height_mm * ds / frame.depth_mm
    nx = -frame.height_mm * dw * frame.lateral_sign / frame.width_mm
    n = np.stack([nz, ny, nx], axis=1)
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def _on_surface(coef: np.ndarray, sh: _Sheets, frame: _Frame, quadratic: bool, band_mm: float) -> np.ndarray:
    """Weights of the sheets lying on the surface (within ``band_mm``, normals aligned)."""
    n = _surface_normal(coef, sh, frame, quadratic)
    gap_mm = np.abs(sh.t - _basis(sh.s, sh.w, quadratic) @ coef) * frame.height_mm * n[:, 0]
    aligned = np.abs(np.einsum("ij,ij->i", n, sh.normal)) >= NORMAL_COS
    return np.where((gap_mm <= band_mm) & aligned, sh.weight, 0.0)


def _search(sh: _Sheets, frame: _Frame, hypotheses: np.ndarray, quadratic: bool) -> np.ndarray:
    """The hypothesis (rows of coefficients) with the most sheet weight on it; all at
    once on at most ``SEARCH_SHEETS`` of the strongest sheets."""
    top = np.argsort(-sh.weight, kind="stable")[:SEARCH_SHEETS]
    f32 = np.float32
    s, w, t, weight = (a[top].astype(f32) for a in (sh.s, sh.w, sh.t, sh.weight))
    normal = sh.normal[top].astype(f32)
    c = hypotheses.astype(f32)
    pred = c[:, :1] + c[:, 1:2] * s + c[:, 2:3] * w  # (H, N)
    ds, dw = np.broadcast_to(c[:, 1:2], pred.shape), np.broadcast_to(c[:, 2:3], pred.shape)
    if quadratic:
        pred = pred + c[:, 3:4] * s * s + c[:, 4:5] * s * w + c[:, 5:6] * w * w
        ds = ds + 2 * c[:, 3:4] * s + c[:, 4:5] * w
        dw = dw + c[:, 4:5] * s + 2 * c[:, 5:6] * w
    ny = -frame.height_mm * ds / frame.depth_mm
    nx = -frame.height_mm * frame.lateral_sign * dw / frame.width_mm
    norm = np.sqrt(1.0 + ny * ny + nx * nx)
    gap_mm = np.abs(t - pred) * frame.height_mm / norm
    cos = np.abs(normal[:, 0] + ny * normal[:, 1] + nx * normal[:, 2]) / norm
    scores = (((gap_mm <= ON_SURFACE_MM) & (cos >= NORMAL_COS)) * weight).sum(axis=1)
    return hypotheses[int(np.argmax(scores))]


def _refine(coef: np.ndarray, sh: _Sheets, frame: _Frame, quadratic: bool) -> np.ndarray:
    """Weighted least squares on the sheets near the surface, narrowing the band; the
    searched surface stays in as a few weak pseudo-points where sheets are missing."""
    grid_s, grid_w = (a.ravel() for a in np.meshgrid(np.linspace(0, 1, 7), np.linspace(0, 1, 5)))
    for band in (2.0 * ON_SURFACE_MM, 1.5 * ON_SURFACE_MM, ON_SURFACE_MM):
        wt = _on_surface(coef, sh, frame, quadratic, band)
        if np.count_nonzero(wt) < 12:
            break
        anchor = _basis(grid_s, grid_w, quadratic)
        a = np.concatenate([_basis(sh.s, sh.w, quadratic), anchor])
        b = np.concatenate([sh.t, anchor @ coef])
        wts = np.concatenate([wt, np.full(len(anchor), 0.02 * float(wt.sum()) / len(anchor))])
        sw = np.sqrt(wts)[:, None]
        coef = np.linalg.lstsq(a * sw, b * sw[:, 0], rcond=None)[0]
    return coef


def _coverage(coef: np.ndarray, sh: _Sheets, frame: _Frame, quadratic: bool, region: np.ndarray) -> float:
    """Share of the surface's (s, w) cells where it crosses the lung (``region``: the
    lung's voxels in normalised coordinates, as a boolean per voxel of the frame) that
    hold a sheet on it."""
    cells = 12
    on = _on_surface(coef, sh, frame, quadratic, ON_SURFACE_MM) > 0
    hit = np.zeros((cells, cells), dtype=bool)
    ci = np.clip((sh.s[on] * cells).astype(int), 0, cells - 1), np.clip((sh.w[on] * cells).astype(int), 0, cells - 1)
    hit[ci] = True
    near = np.abs(frame.t - _basis(frame.s, frame.w, quadratic) @ coef) * frame.height_mm <= WORK_MM
    near &= region
    crossed = np.zeros((cells, cells), dtype=bool)
    cj = (
        np.clip((frame.s[near] * cells).astype(int), 0, cells - 1),
        np.clip((frame.w[near] * cells).astype(int), 0, cells - 1),
    )
    crossed[cj] = True
    return float((hit & crossed).sum()) / max(int(crossed.sum()), 1)


def _oblique_prior() -> np.ndarray:
    return np.array([PRIOR_OBLIQUE_ANT, PRIOR_OBLIQUE_POST - PRIOR_OBLIQUE_ANT, 0.0, 0.0, 0.0, -PRIOR_OBLIQUE_LAT])


def _oblique_hypotheses() -> np.ndarray:
    """Oblique fissures the search tries: heights at the front and the back, lateral drop."""
    out = []
    for ant in np.linspace(-0.15, 0.55, 15):
        for post in np.linspace(0.45, 1.05, 13):
            if post - ant < MIN_OBLIQUE_RISE:
                continue  # that flat, it would be the horizontal fissure
            for drop in (0.0, 0.08, 0.16, 0.24):
                out.append([ant, post - ant, 0.0, 0.0, 0.0, -drop])
    return np.array(out)


def _horizontal_hypotheses() -> np.ndarray:
    """Horizontal fissures the search tries: height and tilt from front to back."""
    return np.array([[h, tilt, 0.0] for h in np.linspace(0.35, 0.85, 26) for tilt in (-0.1, -0.05, 0.0, 0.05, 0.1)])


def _contrast(coef: np.ndarray, sh: _Sheets, frame: _Frame, quadratic: bool) -> float:
    """Sheet weight on the surface over the mean on parallel surfaces ``NULL_SHIFTS_MM``
    above and below: lung texture puts about as much on each (near 1), a fissure far
    more on itself."""
    on = float(_on_surface(coef, sh, frame, quadratic, ON_SURFACE_MM).sum())
    shifted = []
    for shift_mm in NULL_SHIFTS_MM:
        moved = coef.copy()
        moved[0] += shift_mm / frame.height_mm
        shifted.append(float(_on_surface(moved, sh, frame, quadratic, ON_SURFACE_MM).sum()))
    return on / max(float(np.mean(shifted)), 1e-9)


def _mirrored(hypotheses: np.ndarray) -> np.ndarray:
    """The quadratic surfaces t = f(1 - s, w) of ``hypotheses`` (front and back swapped)."""
    a, b, c, d, e, f = hypotheses.T
    return np.stack([a + b + d, -b - 2.0 * d, c + e, d, -e, f], axis=1)


def _mirror_ratio(coef: np.ndarray, sh: _Sheets, frame: _Frame, hypotheses: np.ndarray) -> float:
    """Sheet weight on the fitted oblique surface over that on the best mirrored one
    (searched and refined the same way): near 1 or below where nothing but texture and
    vessels answered, well above where a fissure did."""
    mirror = _refine(_search(sh, frame, _mirrored(hypotheses), True), sh, frame, True)
    on = float(_on_surface(coef, sh, frame, True, ON_SURFACE_MM).sum())
    return on / max(float(_on_surface(mirror, sh, frame, True, ON_SURFACE_MM).sum()), 1e-9)


def _fit(
    sh: _Sheets, frame: _Frame, prior: np.ndarray, hypotheses: np.ndarray, region: np.ndarray, quadratic: bool
) -> tuple[np.ndarray, str, float]:
    """A fissure fitted to the sheets, or the prior when they do not show one: too little
    of the surface covered, no more sheets on it than on parallel surfaces nearby, or
    (oblique) no more than on the best surface of the wrong orientation."""
    if sh.t.size < 12:
        return prior, "prior", 0.0
    coef = _refine(_search(sh, frame, hypotheses, quadratic), sh, frame, quadratic)
    cov = _coverage(coef, sh, frame, quadratic, region)
    contrast = _contrast(coef, sh, frame, quadratic)
    if cov < MIN_COVERAGE or contrast < MIN_CONTRAST:
        return prior, "prior", contrast
    if quadratic and _mirror_ratio(coef, sh, frame, hypotheses) < MIN_MIRROR_RATIO:
        return prior, "prior", contrast
    return coef, "fitted", contrast


def _ridge_scores(frame: _Frame, rd: _Ridge, hypotheses: np.ndarray, min_cell: float, min_cells: int) -> np.ndarray:
    """The matched filter's z-score of each quadratic hypothesis (-inf where the surface
    crosses too little of the lung: fewer than ``min_cells`` cells with ``min_cell``
    samples)."""
    ns, nw = RIDGE_CELLS
    cell = np.clip((rd.s * ns).astype(int), 0, ns - 1) * nw + np.clip((rd.w * nw).astype(int), 0, nw - 1)
    onehot = np.eye(ns * nw, dtype=np.float32)[cell]
    c = hypotheses.astype(np.float32)
    out = np.empty(len(c))
    for a in range(0, len(c), 64):
        h = c[a : a + 64]
        pred = h[:, :1] + h[:, 1:2] * rd.s + h[:, 2:3] * rd.w + h[:, 3:4] * rd.s**2
        pred = pred + h[:, 4:5] * rd.s * rd.w + h[:, 5:6] * rd.w**2
        ds = h[:, 1:2] + 2 * h[:, 3:4] * rd.s + h[:, 4:5] * rd.w
        dw = h[:, 2:3] + h[:, 4:5] * rd.s + 2 * h[:, 5:6] * rd.w
        gy, gx = frame.height_mm * ds / frame.depth_mm, frame.height_mm * dw / frame.width_mm
        norm = np.sqrt(1.0 + gy * gy + gx * gx)
        near = (np.abs(rd.t - pred) * (frame.height_mm / norm) <= RIDGE_BAND_MM).astype(np.float32)
        counts = near @ onehot
        total, n = (near * rd.value) @ onehot, counts.sum(axis=1)
        crossed = (counts >= min_cell).sum(axis=1) >= min_cells
        out[a : a + 64] = np.where(crossed, total.sum(axis=1) / np.sqrt(np.maximum(n, 1.0)), -np.inf)
    return out


def _ridge_best(frame: _Frame, rd: _Ridge, hypotheses: np.ndarray, min_cells: int) -> tuple[int, float]:
    """The best hypothesis (index, z-score): all ranked on every ``RIDGE_COARSE_STEP``-th
    sample, the ``RIDGE_TOP`` best of them scored on all."""
    if rd.t.size == 0:
        return 0, -np.inf
    step = RIDGE_COARSE_STEP
    coarse = _ridge_scores(
        frame, _ridge_subset(rd, slice(None, None, step)), hypotheses, RIDGE_CELL_VOXELS / step, min_cells
    )
    top = np.argsort(-coarse, kind="stable")[:RIDGE_TOP]
    fine = _ridge_scores(frame, rd, hypotheses[top], RIDGE_CELL_VOXELS, min_cells)
    return int(top[int(np.argmax(fine))]), float(fine.max())


def _ridge_subset(rd: _Ridge, keep: np.ndarray | slice) -> _Ridge:
    return _Ridge(rd.t[keep], rd.s[keep], rd.w[keep], rd.value[keep])


def _ridge_accepts(best: float, null: float, excess: float, ratio: float) -> bool:
    """Whether the best surface beats the null's best by ``excess`` and by ``ratio``."""
    return bool(np.isfinite(best) and best - null >= excess and best >= ratio * max(null, 1e-9))


def _ridge_oblique(frame: _Frame, rd: _Ridge, prior: np.ndarray) -> tuple[np.ndarray, str]:
    """The oblique fissure from the matched filter, or ``prior`` when its best surface
    does not beat the best mirrored one clearly (``RIDGE_MIN_EXCESS``, ``RIDGE_MIN_RATIO``)."""
    if rd.t.size == 0 or not rd.value.any():
        return prior, "prior"
    hypotheses, half = _oblique_hypotheses(), int(np.prod(RIDGE_CELLS)) // 2
    best_i, best = _ridge_best(frame, rd, hypotheses, half)
    null = _ridge_best(frame, rd, _mirrored(hypotheses), half)[1]
    if _ridge_accepts(best, null, RIDGE_MIN_EXCESS, RIDGE_MIN_RATIO):
        return hypotheses[best_i], "fitted"
    return prior, "prior"


def _ridge_horizontal(frame: _Frame, rd: _Ridge, oblique: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, str]:
    """The right horizontal fissure from the matched filter, searched above the oblique
    fissure, or ``prior`` when its best surface does not clearly beat the best the same
    search finds below the oblique fissure (the lower lobe, where no horizontal fissure
    runs)."""
    if rd.t.size == 0 or not rd.value.any():
        return prior, "prior"
    gap = rd.t - _basis(rd.s, rd.w, True) @ oblique
    margin = ON_SURFACE_MM / frame.height_mm
    linear = _horizontal_hypotheses()
    hypotheses = np.concatenate([linear, np.zeros((len(linear), 3))], axis=1)
    quarter = int(np.prod(RIDGE_CELLS)) // 4
    best_i, best = _ridge_best(frame, _ridge_subset(rd, gap > margin), hypotheses, quarter)
    null = _ridge_best(frame, _ridge_subset(rd, gap < -margin), hypotheses, quarter)[1]
    if _ridge_accepts(best, null, RIDGE_MIN_EXCESS_H, RIDGE_MIN_RATIO_H):
        return linear[best_i], "fitted"
    return prior, "prior"


def _lobes_of_lung(
    frame: _Frame, sh: _Sheets, rd: _Ridge, side: int
) -> tuple[np.ndarray, dict[str, str], dict[str, float]]:
    """Lobe labels of one lung's voxels, and how each fissure was found."""
    everywhere = np.ones(frame.t.shape, dtype=bool)
    # Sheets lying nearly flat belong to the horizontal fissure, not the oblique one.
    steep = np.abs(sh.normal[:, 0]) < OBLIQUE_MAX_NZ
    oblique_sh = _subset(sh, steep)
    oblique, how_o, cov_o = _fit(oblique_sh, frame, _oblique_prior(), _oblique_hypotheses(), everywhere, True)
    if how_o == "prior":  # too faint for the plate filter (thick slices): the matched filter
        oblique, how_o = _ridge_oblique(frame, rd, oblique)
    lower = frame.t < _basis(frame.s, frame.w, True) @ oblique
    if side == LEFT:
        return np.where(lower, 5, 4).astype(np.uint8), {"oblique": how_o}, {"oblique": cov_o}
    # The horizontal fissure lies above the oblique one: only sheets there count.
    above = sh.t > _basis(sh.s, sh.w, True) @ oblique + ON_SURFACE_MM / frame.height_mm
    upper_sh = _subset(sh, above)
    prior_h = np.array([PRIOR_HORIZONTAL, 0.0, 0.0])
    horizontal, how_h, cov_h = _fit(upper_sh, frame, prior_h, _horizontal_hypotheses(), ~lower, False)
    if how_h == "prior":
        horizontal, how_h = _ridge_horizontal(frame, rd, oblique, horizontal)
    middle = ~lower & (frame.t < _basis(frame.s, frame.w, False) @ horizontal)
    lab = np.where(lower, 3, np.where(middle, 2, 1)).astype(np.uint8)
    return lab, {"oblique": how_o, "horizontal": how_h}, {"oblique": cov_o, "horizontal": cov_h}


def _connected_lobes(labels: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """Each lobe its largest connected piece (26-connected); the other pieces join the
    nearest other lobe. A few passes: a piece that joins a lobe can touch it only
    diagonally or not at all (the lung itself in islands), so what can be is joined."""
    for _ in range(3):
        stray = _stray_pieces(labels, lung)
        if not stray.any():
            break
        labels = _join_nearest(labels, stray)
    return labels


def _stray_pieces(labels: np.ndarray, lung: np.ndarray) -> np.ndarray:
    stray = lung & (labels == 0)
    for lobe in range(1, 6):
        pieces, n = ndimage.label(labels == lobe, structure=_FULL_3D)
        if n > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            stray |= (pieces > 0) & (pieces != 1 + int(np.argmax(sizes)))
    return stray


def _join_nearest(labels: np.ndarray, stray: np.ndarray) -> np.ndarray:
    """``labels`` with the ``stray`` voxels given the nearest other voxel's lobe."""
    keep = labels.copy()
    keep[stray] = 0
    # The nearest kept lobe, searched in the box around the strays (not the whole grid).
    lo = [max(int(a.min()) - 8, 0) for a in np.nonzero(stray)]
    hi = [int(a.max()) + 9 for a in np.nonzero(stray)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    kept, strays = keep[box], stray[box]
    if not kept.any():
        return labels
    _, nearest = ndimage.distance_transform_edt(kept == 0, return_indices=True)
    out = labels.copy()
    out[box][strays] = kept[tuple(ix[strays] for ix in nearest)]
    return out
