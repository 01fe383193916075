"""Lung segmentation (METHOD.md, module 1).

Two methods, one result type (``LungMask``), one post-processing (``refine_lung_mask``):

* ``unet``: the 2-D U-Net of the model bundle, slice by slice in batches at
  ``unet_input_size``; its lung probability is thresholded at that size, the two largest
  3-D components are kept and refined (below), and the probability, with the recovered
  regions set to 1, is resized back to the full slice and thresholded.
* ``classical``: HU thresholds and morphology, used when a bundle has no segmentation
  weights and as a reference. Body = largest 3-D region above ``classical_body_hu`` with
  holes filled per slice; lung candidates = air (below ``classical_air_hu``) inside the
  body; trachea and main bronchi = small central air regions per slice, removed; lungs =
  the largest one or two 3-D components, then refined (below). Components and
  morphology run at about ``classical_work_px`` in-plane; the lung edge is then refined
  at full resolution with the air threshold (the recovered dense regions keep their
  working-size outline), so a 512 x 512 series costs little more than a 128 x 128 one.

Refinement (``refine_lung_mask``), shared by both methods so that neither cuts dense
disease out of the lung (consolidation, tumours and nodules touching the pleura or the
mediastinum are lung), at the working size (classical) or the U-Net's size:

1. The mask is split into the two lungs at the body's midline (per slice, by connected
   piece; the airway tree joins them in 3-D), and each lung is treated alone so that
   they are never bridged across the mediastinum.
2. Each lung is closed per slice with a disk of ``classical_closing_mm`` (classical
   only: vessels and small juxta-pleural lesions; the U-Net's mask holds its vessels),
   then with a 3-D ball of ``lung_ball_mm`` that only adds voxels of disease density
   (``lung_dense_hu``) with lung above them: tumours and nodules against the chest wall
   or the mediastinum. The heart, larger than the ball, keeps its outline.
3. Dense regions bounded by one lung and the chest wall join that lung: disease-density
   tissue inside the rib-cage envelope (the convex hull of bone per slice) deeper than
   the normal chest-wall band, in pieces that touch only this lung, stay on its side of
   the midline and have aerated lung below part of them (the dome of the diaphragm, an
   island or bay of soft tissue in the lung's lowest slices, has none). The mediastinum
   and heart touch both lungs or cross the midline, so they stay out. The recovered
   regions, whose edge against the wall or mediastinum cannot be seen, grow by
   ``lung_dense_grow_px``.
4. Holes are filled per slice, except those with no lung below them (the dome again).
5. Lung lies inside the rib cage: dense voxels of the mask (``lung_dense_hu``) more than
   ``lung_outside_ribs_mm`` outside the rib-cage envelope are dropped. The envelope is
   the convex hull of the bone of the trunk, each slice's largest piece of soft tissue
   (denser than ``lung_trunk_hu``) with its holes filled, so that arms lying beside the
   chest, separate pieces there, do not widen it; slices with almost no bone are left
   as they are. Aerated lung is never dropped. A U-Net trained to keep dense disease in
   the lung can otherwise spill into soft tissue that looks like it (the arms, the
   axilla).

Known limit: a consolidation that fills a lobe against the heart or the mediastinum,
or that rests on the diaphragm with no aerated lung below it, looks like those organs
to HU and shape alone and is only partly recovered.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .nets import UNET_LESION, UNET_LUNG
from .params import ChainParams
from .preprocess import unet_batch, upsample_mask
from .types import CTVolume, InvalidInputError, LungMask

#: In-plane 8-connectivity, no connection across z: labels each slice on its own.
_PER_SLICE = np.zeros((3, 3, 3), dtype=bool)
_PER_SLICE[1] = True
#: 3-D 6-connectivity.
_FACE_3D = ndimage.generate_binary_structure(3, 1)
#: A slice with fewer bone pixels has no rib-cage envelope (apex, neck): not constrained.
ENVELOPE_MIN_BONE_PIXELS = 3


def _check_pair(name: str, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise InvalidInputError(f"{name} needs masks of one shape, got {a.shape} and {b.shape}")
    return a, b


def lesion_inclusion(lung_mask: np.ndarray, lesion_mask: np.ndarray) -> float:
    """Share of the lesion voxels that lie inside the lung mask (1.0 without lesion voxels).

    A lung mask that cuts disease out of the lung hides it from every later stage, so
    this is measured beside ``dice``, which barely moves when a lesion is left out.
    """
    lung, lesion = _check_pair("lesion_inclusion", lung_mask, lesion_mask)
    n = int(np.count_nonzero(lesion))
    if n == 0:
        return 1.0
    return int(np.count_nonzero(lung & lesion)) / n


def segment_lungs(
    volume: CTVolume, params: ChainParams, unet: torch.nn.Module | None = None, device: torch.device | str = "cpu"
) -> LungMask:
    """Lung mask of ``volume``: with ``unet`` when given, else the classical method."""
    if unet is None:
        return LungMask(mask=segment_lungs_classical(volume, params), method="classical")
    mask, lesion = segment_lungs_unet(volume, params, unet, device)
    return LungMask(mask=mask, method="unet", lesion=lesion)


# ------------------------------------------------------------------------------ U-Net


def segment_lungs_unet(
    volume: CTVolume, params: ChainParams, unet: torch.nn.Module, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray | None]:
    """(lung mask, lesion mask or None) from a 2-D U-Net: the lung is classes 1 + 2; a
    3-class U-Net's class 2 is its lesion map, thresholded at full size inside the lung."""
    hu = volume.hu
    nz, ny, nx = hu.shape
    size = int(params.unet_input_size)
    run_z = unet_slices(nz, float(volume.spacing_mm[0]), params.unet_max_z_step_mm)
    prob, lesion_prob = _unet_probabilities(hu, run_z, params, unet, device)
    if len(run_z) < nz:
        prob = interpolate_slices(prob, run_z, nz)
        lesion_prob = None if lesion_prob is None else interpolate_slices(lesion_prob, run_z, nz)
    # Keep the two largest components and refine them at the U-Net's size (cheap), with
    # the HU resampled to that grid: a U-Net trained on phantoms may still cut a real
    # tumour out. Then the probability of everything dropped is set to 0 and that of
    # everything recovered to 1; the rest is left as it is so the lungs' edges
    # interpolate unchanged; then upsample and threshold.
    foreground = prob > params.unet_threshold
    keep = largest_components(foreground, max_count=2, min_fraction=params.lung_second_min_fraction)
    small_hu = _resize_hu(hu, (size, size))
    spacing = (
        float(volume.spacing_mm[0]),
        float(volume.spacing_mm[1]) * ny / size,
        float(volume.spacing_mm[2]) * nx / size,
    )
    refined, _ = refine_lung_mask(
        keep, small_hu, _body_mask(small_hu, params), spacing, params, closing_mm=0.0, superior_up=_superior_up(volume)
    )
    prob[foreground & ~refined] = 0.0
    prob[refined & ~foreground] = 1.0
    lung = upsample_mask(prob, hu.shape[1:], threshold=params.unet_threshold)
    if lesion_prob is None:
        return lung, None
    lesion_prob[~refined] = 0.0  # lesions of dropped components (outside the lungs) are not lesions
    return lung, upsample_mask(lesion_prob, hu.shape[1:], threshold=params.lesion_threshold) & lung


def unet_slices(nz: int, dz_mm: float, max_step_mm: float) -> np.ndarray:
    """The z indices the U-Net runs on: every k-th slice (k x ``dz_mm`` <= ``max_step_mm``,
    k >= 1) and always the last one, so interpolation never extrapolates."""
    step = max(1, int(math.floor(max_step_mm / dz_mm + 1e-6))) if max_step_mm > 0 and dz_mm > 0 else 1
    zs = np.arange(0, nz, step, dtype=np.int64)
    return zs if zs[-1] == nz - 1 else np.append(zs, nz - 1)


def interpolate_slices(values: np.ndarray, run_z: np.ndarray, nz: int) -> np.ndarray:
    """(nz, h, w) from the (len(run_z), h, w) ``values`` of the slices ``run_z`` (sorted,
    first 0, last nz - 1): each other slice linearly between its two neighbours."""
    out = np.empty((nz, *values.shape[1:]), dtype=values.dtype)
    out[run_z] = values
    for i in range(len(run_z) - 1):
        z0, z1 = int(run_z[i]), int(run_z[i + 1])
        for z in range(z0 + 1, z1):
            w = np.float32((z - z0) / (z1 - z0))
            out[z] = (1.0 - w) * values[i] + w * values[i + 1]
    return out


def _unet_probabilities(
    hu: np.ndarray, run_z: np.ndarray, params: ChainParams, unet: torch.nn.Module, device: torch.device | str
) -> tuple[np.ndarray, np.ndarray | None]:
    """The U-Net's lung (classes 1 + 2) and, with 3 classes, lesion probabilities of the
    slices ``run_z``, at the U-Net's size, in batches of ``unet_batch_size``."""
    size = int(params.unet_input_size)
    dev = torch.device(device)
    prob = np.empty((len(run_z), size, size), dtype=np.float32)
    lesion_prob: np.ndarray | None = None
    batch = max(1, int(params.unet_batch_size))
    with torch.inference_mode():
        for start in range(0, len(run_z), batch):
            x = torch.from_numpy(unet_batch(hu[run_z[start : start + batch]], params)).to(dev)
            p = F.softmax(unet(x).float(), dim=1)
            prob[start : start + batch] = p[:, UNET_LUNG:].sum(dim=1).cpu().numpy()
            if p.shape[1] > UNET_LESION:
                if lesion_prob is None:
                    lesion_prob = np.zeros((len(run_z), size, size), dtype=np.float32)
                lesion_prob[start : start + batch] = p[:, UNET_LESION].cpu().numpy()
    return prob, lesion_prob


def _resize_hu(hu: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HU resampled in-plane to ``size``: area means when shrinking, bilinear otherwise."""
    t = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[:, None]
    shrink = t.shape[2] >= size[0] and t.shape[3] >= size[1]
    with torch.inference_mode():
        out = (
            F.interpolate(t, size=size, mode="area")
            if shrink
            else F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        )
    return out[:, 0].numpy()


# -------------------------------------------------------------------------- classical


def segment_lungs_classical(volume: CTVolume, params: ChainParams) -> np.ndarray:
    """Bool z/y/x lung mask from HU thresholds and morphology (see the module doc)."""
    hu = volume.hu
    nz, ny, nx = hu.shape
    factor = max(1, int(round(max(ny, nx) / float(params.classical_work_px))))
    small = _block_mean(hu, factor)
    spacing = (float(volume.spacing_mm[0]), float(volume.spacing_mm[1]) * factor, float(volume.spacing_mm[2]) * factor)
    pixel_mm = spacing[1:]

    body = _body_mask(small, params)
    air = (small < params.classical_air_hu) & body
    air &= ~_airway_regions(air, body, params, pixel_mm)
    air &= ~_outside_rib_cage(air, small, body, params, pixel_mm)
    lungs = largest_components(air, max_count=2, min_fraction=params.lung_second_min_fraction, structure=_FACE_3D)
    if not lungs.any():
        return np.zeros(hu.shape, dtype=bool)
    lungs, dense = refine_lung_mask(lungs, small, body, spacing, params, superior_up=_superior_up(volume))
    if factor == 1:
        return lungs
    # Edge refinement: inside the eroded coarse lung everything is lung; in the band of
    # one coarse pixel around the coarse edge the full-resolution air threshold decides.
    # Recovered dense regions have no air edge to refine: they keep their coarse outline.
    core = _erode8(lungs) | dense
    band = _dilate8(lungs) & ~core
    out = _repeat_up(core, factor, hu.shape)
    out |= _repeat_up(band, factor, hu.shape) & (hu < params.classical_air_hu)
    return out


def _block_mean(hu: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` in-plane blocks (partial blocks at the edge too)."""
    if factor == 1:
        return hu
    t = torch.from_numpy(np.ascontiguousarray(hu))[:, None]
    with torch.inference_mode():
        out = F.avg_pool2d(t, kernel_size=factor, stride=factor, ceil_mode=True, count_include_pad=False)
    return out[:, 0].numpy()


def _repeat_up(small: np.ndarray, factor: int, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour upsampling of a coarse mask back to ``shape``."""
    big = np.repeat(np.repeat(small, factor, axis=1), factor, axis=2)
    return big[:, : shape[1], : shape[2]]


#: In-plane offsets of the 3 x 3 square (the in-plane part of _PER_SLICE).
_SQUARE = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _disk_offsets(radius: int) -> list[tuple[int, int]]:
    """In-plane offsets of a digital disk of ``radius`` pixels."""
    r = int(radius)
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= r * r]


def _shift_slices(mask: np.ndarray, offsets: list[tuple[int, int]], erode: bool) -> np.ndarray:
    """Per-slice dilation (or erosion, outside the array counting as background) by a
    small in-plane structuring element given as offsets: shifted views OR-ed (AND-ed),
    several times faster than ``ndimage`` for 3 x 3 elements on large volumes."""
    ny, nx = mask.shape[1:]
    out = mask.copy()
    for dy, dx in offsets:
        if dy == 0 and dx == 0:
            continue
        # out[y, x] combines mask[y + dy, x + dx] (dilation by the mirrored element is the
        # same for the symmetric elements used here).
        ys_out = slice(max(-dy, 0), ny - max(dy, 0))
        xs_out = slice(max(-dx, 0), nx - max(dx, 0))
        ys_in = slice(max(dy, 0), ny - max(-dy, 0))
        xs_in = slice(max(dx, 0), nx - max(-dx, 0))
        if erode:
            out[:, ys_out, xs_out] &= mask[:, ys_in, xs_in]
            # Pixels whose neighbour falls outside the array erode away.
            if dy > 0:
                out[:, ny - dy :, :] = False
            elif dy < 0:
                out[:, :-dy, :] = False
            if dx > 0:
                out[:, :, nx - dx :] = False
            elif dx < 0:
                out[:, :, :-dx] = False
        else:
            out[:, ys_out, xs_out] |= mask[:, ys_in, xs_in]
    return out


def _dilate8(mask: np.ndarray) -> np.ndarray:
    """Per-slice dilation by the 3 x 3 square."""
    return _shift_slices(mask, _SQUARE, erode=False)


def _erode8(mask: np.ndarray) -> np.ndarray:
    """Per-slice erosion by the 3 x 3 square (outside the array is background)."""
    return _shift_slices(mask, _SQUARE, erode=True)


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of every z slice: background not connected to the slice's border."""
    background, n = ndimage.label(~mask, structure=_PER_SLICE)
    border = np.concatenate(
        [
            background[:, 0, :].ravel(),
            background[:, -1, :].ravel(),
            background[:, :, 0].ravel(),
            background[:, :, -1].ravel(),
        ]
    )
    outside = np.zeros(n + 1, dtype=bool)
    outside[border] = True
    outside[0] = False  # label 0 is the mask itself
    return ~outside[background]


def largest_components(
    mask: np.ndarray, max_count: int, min_fraction: float = 0.0, structure: np.ndarray | None = None
) -> np.ndarray:
    """The largest connected component of ``mask`` and up to ``max_count - 1`` more, each
    kept only when at least ``min_fraction`` of the largest one's size."""
    labels, n = ndimage.label(mask, structure=structure if structure is not None else _FACE_3D)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:max_count]
    kept = [int(i) + 1 for i in order if sizes[i] >= min_fraction * sizes[order[0]]]
    lut = np.zeros(n + 1, dtype=bool)
    lut[kept] = True
    return lut[labels]


def _body_mask(hu: np.ndarray, params: ChainParams) -> np.ndarray:
    """The largest 3-D region denser than air, with every slice's holes (lungs) filled."""
    dense = hu > params.classical_body_hu
    body = largest_components(dense, max_count=1)
    return fill_holes_per_slice(body)


def _airway_regions(
    air: np.ndarray, body: np.ndarray, params: ChainParams, pixel_mm: tuple[float, float]
) -> np.ndarray:
    """Small air regions near the middle of the body in each slice: trachea, main bronchi.

    A lung's cross-section near the apex is also small, but it lies lateral to the
    midline, so it is kept.
    """
    labels, n = ndimage.label(air, structure=_PER_SLICE)
    if n == 0:
        return np.zeros(air.shape, dtype=bool)
    index = np.arange(1, n + 1)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    area_mm2 = counts * (pixel_mm[0] * pixel_mm[1])
    xs = np.arange(air.shape[2], dtype=np.float64)[None, None, :]
    cx = np.asarray(ndimage.sum(np.broadcast_to(xs, air.shape), labels, index)) / np.maximum(counts, 1)
    z_of = ndimage.maximum(np.broadcast_to(np.arange(air.shape[0])[:, None, None], air.shape), labels, index)
    z_of = np.asarray(z_of, dtype=np.int64)

    first, last = _body_columns(body)
    mid = (first + last) / 2.0
    width = np.maximum(last - first + 1, 1)

    central = np.abs(cx - mid[z_of]) <= params.airway_central_fraction * width[z_of]
    airway = (area_mm2 < params.airway_max_area_mm2) & central
    lut = np.zeros(n + 1, dtype=bool)
    lut[1:] = airway
    return lut[labels]


def _outside_rib_cage(
    air: np.ndarray, hu: np.ndarray, body: np.ndarray, params: ChainParams, pixel_mm: tuple[float, float]
) -> np.ndarray:
    """Air regions (3-D) lying mostly outside the rib cage: the gap between the back and a
    curved table or its pad, which hole filling made part of the body and which can be
    larger than a lung. Nothing when the volume shows no bone (no rib cage to judge by)."""
    bone, depth = _rib_cage(hu, body, pixel_mm, params)
    if np.count_nonzero(bone) < ENVELOPE_MIN_BONE_PIXELS:
        return np.zeros(air.shape, dtype=bool)
    inside = depth > 0
    labels, n = ndimage.label(air, structure=_FACE_3D)
    if n == 0:
        return np.zeros(air.shape, dtype=bool)
    total = np.bincount(labels.ravel(), minlength=n + 1)
    within = np.bincount(labels[inside & air], minlength=n + 1)
    outside = within < 0.5 * total
    outside[0] = False
    return outside[labels]


def _body_columns(body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per slice, the first and last column (x) the body occupies (whole width if none)."""
    cols = np.asarray(body.any(axis=1))  # (nz, nx)
    has = cols.any(axis=1)
    nx = body.shape[2]
    first = np.where(has, cols.argmax(axis=1), 0)
    last = np.where(has, nx - 1 - cols[:, ::-1].argmax(axis=1), nx - 1)
    return first, last


# --------------------------------------------------------------------- refinement


def refine_lung_mask(
    lungs: np.ndarray,
    hu: np.ndarray,
    body: np.ndarray,
    spacing_mm: tuple[float, float, float],
    params: ChainParams,
    closing_mm: float | None = None,
    superior_up: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The shared post-processing of a lung mask (module doc, steps 1-4).

    ``lungs``, ``hu`` and ``body`` are z/y/x on one grid (the working size of the
    classical method, the U-Net's size), ``spacing_mm`` is that grid's (z, y, x) spacing.
    ``superior_up``: z index grows towards the head (sorted DICOM series and LPS NIfTI
    do; see ``_superior_up``), which the lung-above / lung-below rules rely on.
    Returns the refined mask and the voxels of it that were recovered as dense tissue
    (not in ``lungs``, denser than air: their outline cannot be refined on air).
    """
    lungs = np.asarray(lungs, dtype=bool)
    if lungs.shape != hu.shape or body.shape != hu.shape:
        raise InvalidInputError(f"refine_lung_mask needs one grid, got {lungs.shape}, {hu.shape}, {body.shape}")
    mask = np.zeros(lungs.shape, dtype=bool)
    dense = np.zeros(lungs.shape, dtype=bool)
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))
    if zs.size == 0:
        return mask, dense
    # Everything happens in the lungs' slices and the box of the body (and lungs) there:
    # a large share of a series is neck, abdomen or air around the body.
    zbox = slice(int(zs[0]), int(zs[-1]) + 1)
    in_body = np.asarray(body[zbox].any(axis=0) | lungs[zbox].any(axis=0))
    rows, cols = np.flatnonzero(in_body.any(axis=1)), np.flatnonzero(in_body.any(axis=0))
    box = (zbox, slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    disk_mm = params.classical_closing_mm if closing_mm is None else float(closing_mm)
    step = 1 if superior_up else -1  # the rules below read z as growing upwards
    m, d = _refine_box(lungs[box][::step], hu[box][::step], body[box][::step], spacing_mm, params, disk_mm)
    mask[box] = m[::step]
    dense[box] = d[::step]
    return mask, dense


def _superior_up(volume: CTVolume) -> bool:
    """Whether the volume's z index grows towards the head (the z axis's direction
    cosine on the patient's z, S in LPS, is not negative)."""
    return float(volume.direction[8]) >= 0.0


def _refine_box(
    lungs: np.ndarray,
    hu: np.ndarray,
    body: np.ndarray,
    spacing_mm: tuple[float, float, float],
    params: ChainParams,
    disk_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``refine_lung_mask`` inside the box that holds the lungs and the body around them."""
    lo, hi = params.lung_dense_hu
    dense_hu = (hu > lo) & (hu < hi) & body
    first, last = _body_columns(body)
    right_half = np.arange(hu.shape[2])[None, None, :] < ((first + last) / 2.0)[:, None, None]
    right, left = _split_at_midline(lungs, right_half)
    sides = [_close_side(side, dense_hu, spacing_mm, params, disk_mm) for side in (right, left)]
    closed = sides[0] | sides[1]
    below = _lung_below(closed)
    bone, depth = _rib_cage(hu, body, spacing_mm[1:], params)
    extra = _recover_dense(sides, lungs, closed, dense_hu, below, right_half, depth, params)
    out = np.zeros(lungs.shape, dtype=bool)
    for side, more in zip(sides, extra, strict=True):
        out |= _fill_holes_with_lung_below(side | more, below, params)
    has_bone = np.count_nonzero(bone.reshape(bone.shape[0], -1), axis=1) >= ENVELOPE_MIN_BONE_PIXELS
    outside = (depth < -params.lung_outside_ribs_mm) & has_bone[:, None, None] & (hu > lo)
    out &= ~outside
    return out, out & ~lungs & (hu >= params.classical_air_hu)


def _rib_cage(
    hu: np.ndarray, body: np.ndarray, pixel_mm: tuple[float, float], params: ChainParams
) -> tuple[np.ndarray, np.ndarray]:
    """The trunk's bone (ribs, sternum, spine; not the arms') and each pixel's depth (mm)
    inside its per-slice convex hull (``_envelope_depth``)."""
    bone = (hu >= params.lung_dense_hu[1]) & _trunk(body & (hu > params.lung_trunk_hu))
    return bone, _envelope_depth(bone, pixel_mm, int(params.lung_envelope_directions))


def _trunk(tissue: np.ndarray) -> np.ndarray:
    """Each slice's largest connected piece of ``tissue``, holes filled: the trunk,
    without arms that lie apart from it in that slice. ``tissue`` is the body denser
    than ``lung_trunk_hu``: the thin air gap between arm and chest, partly filled at a
    small matrix size, must not join them."""
    labels, n = ndimage.label(tissue, structure=_PER_SLICE)
    if n == 0:
        return tissue.copy()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    z_of = np.zeros(n, dtype=np.int64)
    zz = np.broadcast_to(np.arange(tissue.shape[0])[:, None, None], tissue.shape)
    z_of[labels[tissue] - 1] = zz[tissue]  # every piece lies in one slice
    order = np.lexsort((-sizes, z_of))  # by slice, then largest first
    first = order[np.r_[True, z_of[order][1:] != z_of[order][:-1]]]
    lut = np.zeros(n + 1, dtype=bool)
    lut[first + 1] = True
    return fill_holes_per_slice(lut[labels])


def _split_at_midline(lungs: np.ndarray, right_half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The right and left lung: each slice's connected pieces go to the side of the
    midline that holds most of them; a piece with much of itself on both sides (lungs
    touching in front of the mediastinum, a bronchus joining them) is cut at the midline.

    The airway tree joins the two lungs into one 3-D component, so components cannot
    tell them apart; the midline can, slice by slice.
    """
    labels, n = ndimage.label(lungs, structure=_PER_SLICE)
    if n == 0:
        return lungs.copy(), lungs.copy()
    total = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
    on_right = np.bincount(labels[right_half & lungs], minlength=n + 1)
    share = on_right / np.maximum(total, 1.0)
    # Pieces mostly on one side go there whole; the others are cut.
    whole_right = share >= 0.8
    whole_left = share <= 0.2
    cut = ~whole_right & ~whole_left
    right = (whole_right[labels] | (cut[labels] & right_half)) & lungs
    left = lungs & ~right
    return right, left


def _close_side(
    side: np.ndarray, dense_hu: np.ndarray, spacing_mm: tuple[float, float, float], params: ChainParams, disk_mm: float
) -> np.ndarray:
    """One lung closed per slice with a disk of ``disk_mm`` (anything: vessels), then with
    a 3-D ball that adds only disease-density voxels with lung above them (tumours,
    nodules).

    Works inside the lung's box padded by the radii (closing is local).
    """
    out = np.zeros(side.shape, dtype=bool)
    box = ndimage.find_objects(side.astype(np.uint8))
    if not box or box[0] is None:
        return out
    dz, dy, dx = spacing_mm
    r_disk = int(round(disk_mm / min(dy, dx))) if disk_mm > 0 else 0
    r_ball = float(params.lung_ball_mm)
    pad_y = max(r_disk, int(math.ceil(r_ball / dy))) + 1
    pad_x = max(r_disk, int(math.ceil(r_ball / dx))) + 1
    zs, ys, xs = box[0]
    ys = slice(max(ys.start - pad_y, 0), min(ys.stop + pad_y, side.shape[1]))
    xs = slice(max(xs.start - pad_x, 0), min(xs.stop + pad_x, side.shape[2]))
    part = side[zs, ys, xs]
    closed = part.copy()
    if r_disk > 0:
        yy, xx = np.mgrid[-r_disk : r_disk + 1, -r_disk : r_disk + 1]
        disk = ((yy**2 + xx**2) <= r_disk**2)[None]
        padded = np.pad(part, ((0, 0), (r_disk, r_disk), (r_disk, r_disk)))
        closed |= ndimage.binary_closing(padded, structure=disk)[:, r_disk:-r_disk, r_disk:-r_disk]
    if r_ball > 0:
        ball = _ball_closing(closed, r_ball, (dz, dy, dx), params.lung_ball_z_mm)
        # Lung above: the ball must not round the lung's base off into the diaphragm's
        # dome or its apex into the neck; a tumour or consolidation has lung above it.
        # (Lung within the ball's reach above would also spare the lower end of the heart
        # but lose the inside of lobar consolidations taller than the ball.)
        closed |= ball & dense_hu[zs, ys, xs] & _lung_above(closed)
    out[zs, ys, xs] = closed
    return out


def _ball_closing(
    mask: np.ndarray, radius_mm: float, spacing_mm: tuple[float, float, float], pool_z_mm: float
) -> np.ndarray:
    """Closing with a ball of ``radius_mm`` (anisotropic spacing), by two distance maps.

    Thin slices are first pooled along z (any voxel of ``pool_z_mm`` of slices) so that a
    300-slice series costs no more than a 60-slice one; the ball is much larger than a
    pooled slice, so the result barely changes.
    """
    dz, dy, dx = spacing_mm
    nz = mask.shape[0]
    fz = max(1, int(round(pool_z_mm / dz))) if pool_z_mm > 0 else 1
    if fz > 1:
        n_blocks = -(-nz // fz)
        pad = n_blocks * fz - nz
        pooled = np.pad(mask, ((0, pad), (0, 0), (0, 0))).reshape(n_blocks, fz, *mask.shape[1:]).any(axis=1)
    else:
        pooled = mask
    sampling = (dz * fz, dy, dx)
    pads = [int(math.ceil(radius_mm / s)) + 1 for s in sampling]
    work = np.pad(pooled, [(p, p) for p in pads])
    grown = ndimage.distance_transform_edt(~work, sampling=sampling) <= radius_mm
    # The erosion's threshold is half a pixel above the dilation's: a digital ball
    # closing otherwise leaves one-pixel rims along smooth convex outlines (the heart).
    closed = ndimage.distance_transform_edt(grown, sampling=sampling) > radius_mm + 0.5 * max(sampling[1:])
    closed = closed[pads[0] : -pads[0], pads[1] : -pads[1], pads[2] : -pads[2]]
    if fz > 1:
        closed = np.repeat(closed, fz, axis=0)[:nz]
    return closed


def _lung_above(lungs: np.ndarray) -> np.ndarray:
    """Voxels with lung somewhere above them (higher z index = superior) in their column."""
    above = np.flip(np.maximum.accumulate(np.flip(lungs, 0), axis=0), 0)
    return np.concatenate([above[1:], np.zeros_like(above[:1])])


def _lung_below(lungs: np.ndarray) -> np.ndarray:
    """Voxels with lung somewhere below them (lower z index = inferior) in their column."""
    below = np.maximum.accumulate(lungs, axis=0)
    return np.concatenate([np.zeros_like(below[:1]), below[:-1]])


def _fill_holes_with_lung_below(mask: np.ndarray, below: np.ndarray, params: ChainParams) -> np.ndarray:
    """Per-slice hole filling, except holes with (almost) no lung below them: in the
    lung's lowest slices the dome of the diaphragm is an island inside the lung."""
    box = ndimage.find_objects(mask.astype(np.uint8))
    if not box or box[0] is None:
        return mask
    # Holes lie inside the mask's box: work there (a lung is about half the slice).
    sub = _fill_holes_box(mask[box[0]], below[box[0]], params)
    out = mask.copy()
    out[box[0]] = sub
    return out


def _fill_holes_box(mask: np.ndarray, below: np.ndarray, params: ChainParams) -> np.ndarray:
    holes = fill_holes_per_slice(mask) & ~mask
    labels, n = ndimage.label(holes, structure=_PER_SLICE)
    if n == 0:
        return mask
    area = np.bincount(labels.ravel(), minlength=n + 1)
    with_below = np.bincount(labels[below & holes], minlength=n + 1)
    keep = with_below >= params.lung_below_min_fraction * area
    keep[0] = False
    return mask | keep[labels]


def _envelope_depth(bone: np.ndarray, pixel_mm: tuple[float, float], directions: int) -> np.ndarray:
    """Per slice, the depth (mm) of each pixel inside the convex hull of ``bone``: the
    rib cage, sternum and spine. Negative outside the hull or where a slice has no bone.

    The hull is the intersection of ``directions`` half-planes, each at the bone's
    farthest extent that way; a pixel's depth is its smallest slack to them (the
    distance to the hull's edge for a hull of that many sides).
    """
    nz, ny, nx = bone.shape
    theta = np.arange(directions) * (2.0 * math.pi / directions)
    ys = (np.arange(ny, dtype=np.float32) * np.float32(pixel_mm[0]))[:, None]
    xs = (np.arange(nx, dtype=np.float32) * np.float32(pixel_mm[1]))[None, :]
    # Farthest bone extent per slice and direction, from the bone pixels alone (few).
    kb, yb, xb = np.nonzero(bone)
    yb, xb = yb.astype(np.float32), xb.astype(np.float32)
    has = np.bincount(kb, minlength=nz) >= ENVELOPE_MIN_BONE_PIXELS
    depth = np.full(bone.shape, np.inf, dtype=np.float32)
    if not has.any():
        return np.full(bone.shape, -1.0, dtype=np.float32)
    starts = np.flatnonzero(np.r_[True, kb[1:] != kb[:-1]])
    half_px = np.float32(0.5 * max(pixel_mm))
    slack = np.empty(bone.shape, dtype=np.float32)
    for t in theta:
        c, s = np.float32(math.cos(t)), np.float32(math.sin(t))
        proj_b = xb * (c * np.float32(pixel_mm[1])) + yb * (s * np.float32(pixel_mm[0]))
        reach = np.full(nz, -np.inf, dtype=np.float32)
        reach[kb[starts]] = np.maximum.reduceat(proj_b, starts) + half_px
        # One direction at a time over the whole stack: long contiguous array operations.
        np.subtract(reach[:, None, None], xs * c + ys * s, out=slack)
        np.minimum(depth, slack, out=depth)
    depth[~has] = -1.0
    return depth


def _recover_dense(
    sides: list[np.ndarray],
    lungs: np.ndarray,
    closed: np.ndarray,
    dense_hu: np.ndarray,
    below: np.ndarray,
    right_half: np.ndarray,
    depth: np.ndarray,
    params: ChainParams,
) -> list[np.ndarray]:
    """Per lung, the dense regions that join it (module doc, step 3).

    Candidates: disease-density pixels inside the rib-cage envelope, deeper than the
    normal chest-wall band (per slice, ``lung_wall_band_percentile`` of the lungs' edge
    depths: the band of pleura, ribs and intercostal muscle that healthy lung leaves),
    not lung (``depth``: ``_envelope_depth`` of the trunk's bone). A per-slice opening
    cuts the thin strips between the lung's edge and the ribs, which would join
    everything along the wall into one piece. A piece is
    accepted for a lung when it touches that lung only, has no pixel on the other side of
    the midline and has lung below at least ``lung_below_min_fraction`` of it; it then
    gets back what the opening took from it. With the dense voxels the closings added,
    it grows ``lung_dense_grow_px`` pixels (see below).
    """
    nz = closed.shape[0]
    edge = closed & ~_erode8(closed)
    band = np.full(nz, np.inf, dtype=np.float32)
    for k in np.flatnonzero(edge.any(axis=(1, 2))):
        d = depth[k][edge[k]]
        d = d[d > 0]
        if d.size >= 5:
            band[k] = np.percentile(d, params.lung_wall_band_percentile)
    deep = depth > band[:, None, None]
    cand = dense_hu & deep & ~closed
    r = int(params.lung_wall_open_px)
    disk = _disk_offsets(r) if r > 0 else [(0, 0)]
    opened = _shift_slices(_shift_slices(cand, disk, erode=True), disk, erode=False) if r > 0 else cand
    labels, n = ndimage.label(opened, structure=_PER_SLICE)
    if n == 0:
        return [np.zeros(closed.shape, dtype=bool) for _ in sides]
    area = np.bincount(labels.ravel(), minlength=n + 1)
    with_below = np.bincount(labels[below & opened], minlength=n + 1)
    on_right = np.bincount(labels[right_half & opened], minlength=n + 1)
    touch = [np.bincount(labels[_dilate8(s) & opened], minlength=n + 1) > 0 for s in sides]
    enough_below = with_below >= params.lung_below_min_fraction * area
    # Where a recovered region may grow: dense tissue inside the rib cage, not lung yet.
    growable = dense_hu & (depth > 0) & ~closed
    out = []
    for i, side in enumerate(sides):
        other = touch[1 - i]
        own_half = on_right == area if i == 0 else on_right == 0
        ok = touch[i] & ~other & own_half & enough_below
        ok[0] = False
        got = ok[labels]
        if got.any():
            got = _shift_slices(got, disk, erode=False) & cand
        got |= side & ~lungs & dense_hu  # what the closings added, where dense
        if not got.any():
            out.append(got)
            continue
        # The true edge of a dense region against the chest wall or the mediastinum is
        # invisible and lies a pixel either side of any estimate: regions at least 3
        # pixels thick grow by ``lung_dense_grow_px`` (thin slivers, the ball's corner
        # fills along the whole outline, would only add a rim of mediastinum).
        grown = _dilate8(_erode8(got))
        for _ in range(int(params.lung_dense_grow_px)):
            grown = grown | (_dilate8(grown) & growable)
        out.append((got | grown) & ~sides[1 - i])
    return out
