"""Lung segmentation (METHOD.md, module 1).

Two methods, one result type (``LungMask``):

* ``unet``: the 2-D U-Net of the model bundle, slice by slice in batches at
  ``unet_input_size``; its lung probability is resized back to the full slice and
  thresholded, and only the two largest 3-D components are kept.
* ``classical``: HU thresholds and morphology, used when a bundle has no segmentation
  weights and as a reference. Body = largest 3-D region above ``classical_body_hu`` with
  holes filled per slice; lung candidates = air (below ``classical_air_hu``) inside the
  body; trachea and main bronchi = small central air regions per slice, removed; lungs =
  the largest one or two 3-D components; each lung is closed and hole-filled per slice
  (vessels and juxta-pleural lesions belong to the lung). Components and morphology run
  at about ``classical_work_px`` in-plane; the lung edge is then refined at full
  resolution with the air threshold, so a 512 x 512 series costs little more than a
  128 x 128 one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .params import ChainParams
from .preprocess import unet_batch, upsample_mask
from .types import CTVolume, InvalidInputError, LungMask

#: In-plane 8-connectivity, no connection across z: labels each slice on its own.
_PER_SLICE = np.zeros((3, 3, 3), dtype=bool)
_PER_SLICE[1] = True
#: 3-D 6-connectivity.
_FACE_3D = ndimage.generate_binary_structure(3, 1)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise InvalidInputError(f"dice needs masks of one shape, got {a.shape} and {b.shape}")
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / total


def segment_lungs(volume: CTVolume, params: ChainParams, unet: torch.nn.Module | None = None,
                  device: torch.device | str = "cpu") -> LungMask:
    """Lung mask of ``volume``: with ``unet`` when given, else the classical method."""
    if unet is None:
        return LungMask(mask=segment_lungs_classical(volume, params), method="classical")
    return LungMask(mask=segment_lungs_unet(volume, params, unet, device), method="unet")


# ------------------------------------------------------------------------------ U-Net

def segment_lungs_unet(volume: CTVolume, params: ChainParams, unet: torch.nn.Module,
                       device: torch.device | str = "cpu") -> np.ndarray:
    """Bool z/y/x lung mask from a 2-D U-Net (2 output classes, class 1 = lung)."""
    hu = volume.hu
    nz = hu.shape[0]
    dev = torch.device(device)
    prob = np.empty((nz, params.unet_input_size, params.unet_input_size), dtype=np.float32)
    batch = max(1, int(params.batch_size)) * 4  # the U-Net input is small: larger batches are cheap
    with torch.inference_mode():
        for start in range(0, nz, batch):
            x = torch.from_numpy(unet_batch(hu[start:start + batch], params)).to(dev)
            logits = unet(x)
            prob[start:start + batch] = F.softmax(logits.float(), dim=1)[:, 1].cpu().numpy()
    # Keep the two largest components at the U-Net's size (cheap): the probability of the
    # other foreground components is set to 0, the background's is left as it is so the
    # kept lungs' edges interpolate unchanged; then upsample and threshold.
    foreground = prob > params.unet_threshold
    keep = largest_components(foreground, max_count=2, min_fraction=params.lung_second_min_fraction)
    prob[foreground & ~keep] = 0.0
    return upsample_mask(prob, hu.shape[1:], threshold=params.unet_threshold)


# -------------------------------------------------------------------------- classical

def segment_lungs_classical(volume: CTVolume, params: ChainParams) -> np.ndarray:
    """Bool z/y/x lung mask from HU thresholds and morphology (see the module doc)."""
    hu = volume.hu
    nz, ny, nx = hu.shape
    factor = max(1, int(round(max(ny, nx) / float(params.classical_work_px))))
    small = _block_mean(hu, factor)
    pixel_mm = (volume.spacing_mm[1] * factor, volume.spacing_mm[2] * factor)

    body = _body_mask(small, params)
    air = (small < params.classical_air_hu) & body
    air &= ~_airway_regions(air, body, params, pixel_mm)
    lungs = largest_components(air, max_count=2, min_fraction=params.lung_second_min_fraction,
                               structure=_FACE_3D)
    if not lungs.any():
        return np.zeros(hu.shape, dtype=bool)
    lungs = _close_and_fill_each(lungs, params, pixel_mm)
    if factor == 1:
        return lungs
    # Edge refinement: inside the eroded coarse lung everything is lung; in the band of
    # one coarse pixel around the coarse edge the full-resolution air threshold decides.
    core = ndimage.binary_erosion(lungs, structure=_PER_SLICE)
    outer = ndimage.binary_dilation(lungs, structure=_PER_SLICE)
    core_full = _repeat_up(core, factor, hu.shape)
    band_full = _repeat_up(outer & ~core, factor, hu.shape)
    return core_full | (band_full & (hu < params.classical_air_hu))


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
    return big[:, :shape[1], :shape[2]]


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of every z slice: background not connected to the slice's border."""
    background, _ = ndimage.label(~mask, structure=_PER_SLICE)
    border = np.unique(np.concatenate([background[:, 0, :].ravel(), background[:, -1, :].ravel(),
                                       background[:, :, 0].ravel(), background[:, :, -1].ravel()]))
    outside = np.isin(background, border[border > 0])
    return ~outside


def largest_components(mask: np.ndarray, max_count: int, min_fraction: float = 0.0,
                       structure: np.ndarray | None = None) -> np.ndarray:
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


def _airway_regions(air: np.ndarray, body: np.ndarray, params: ChainParams,
                    pixel_mm: tuple[float, float]) -> np.ndarray:
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

    # Body middle and width per slice, from the body's extent along x.
    cols = body.any(axis=1)  # (nz, nx)
    has = cols.any(axis=1)
    first = np.where(has, cols.argmax(axis=1), 0)
    last = np.where(has, air.shape[2] - 1 - cols[:, ::-1].argmax(axis=1), air.shape[2] - 1)
    mid = (first + last) / 2.0
    width = np.maximum(last - first + 1, 1)

    central = np.abs(cx - mid[z_of]) <= params.airway_central_fraction * width[z_of]
    airway = (area_mm2 < params.airway_max_area_mm2) & central
    lut = np.zeros(n + 1, dtype=bool)
    lut[1:] = airway
    return lut[labels]


def _close_and_fill_each(lungs: np.ndarray, params: ChainParams, pixel_mm: tuple[float, float]) -> np.ndarray:
    """Per lung (3-D component): closing per slice with a disk, then holes filled.

    Closing each lung alone keeps the two lungs from being bridged across the mediastinum.
    """
    radius_px = max(1, int(round(params.classical_closing_mm / min(pixel_mm))))
    yy, xx = np.mgrid[-radius_px:radius_px + 1, -radius_px:radius_px + 1]
    disk = np.zeros((1, 2 * radius_px + 1, 2 * radius_px + 1), dtype=bool)
    disk[0] = (yy ** 2 + xx ** 2) <= radius_px ** 2
    labels, n = ndimage.label(lungs, structure=_FACE_3D)
    out = np.zeros(lungs.shape, dtype=bool)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        # Work inside the component's box padded by the radius: closing is local.
        zs = sl[0]
        ys = slice(max(sl[1].start - radius_px, 0), min(sl[1].stop + radius_px, lungs.shape[1]))
        xs = slice(max(sl[2].start - radius_px, 0), min(sl[2].stop + radius_px, lungs.shape[2]))
        part = labels[zs, ys, xs] == i
        padded = np.pad(part, ((0, 0), (radius_px, radius_px), (radius_px, radius_px)))
        closed = ndimage.binary_closing(padded, structure=disk)[:, radius_px:-radius_px, radius_px:-radius_px]
        out[zs, ys, xs] |= fill_holes_per_slice(closed | part)
    return out
