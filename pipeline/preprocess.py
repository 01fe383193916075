"""Array preprocessing shared by training and inference (METHOD.md, modules 1 and 2).

Every function here is a plain function over numpy arrays (z/y/x, HU float32), so the
training code and the inference chain prepare slices in exactly the same way. Resizing
is bilinear with integer block means first when shrinking by 2 or more, in numpy for the
small per-slice crops (``resize_batch``) and in torch on the CPU for whole volumes (the
U-Net's input and output), so the numbers do not depend on the networks' device.

Slice classifier / locator input (one lung slice):

1. the slice's lung bounding box (``lung_box``; the whole slice when it has no lung),
2. crop HU and mask to that box and resize both to ``input_size`` x ``input_size``
   (``crop_resize``; the mask becomes a soft mask in [0, 1]),
3. three channels ``[mask, mask * HU(hu_window), mask * HU(lung_detail_window)]``, each
   HU window mapped to [0, 1] (``lung_channels``): nothing outside the lung reaches the
   network.

Lung U-Net input: HU clipped at ``hu_clip_min`` (and at the top of ``hu_window``),
scaled to [0, 1], resized to ``unet_input_size`` (``unet_batch``); its foreground
probability is resized back to the full slice and thresholded (``upsample_mask``).

Which slices are classified: slices with more than ``min_lung_pixels`` lung pixels
(``lung_slice_indices``), at most ``max_slices`` of them taken with a uniform stride
(``sample_slices``).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .params import ChainParams
from .types import CTVolume, InvalidInputError, LungMask

#: ``min_lung_pixels`` is counted on 512 x 512 slices (the paper code's images); other
#: matrix sizes scale it by their area so that a 128-px phantom is judged alike.
REFERENCE_MATRIX_PX = 512


class Box(NamedTuple):
    """A half-open in-plane box: rows ``y0:y1``, columns ``x0:x1``."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


# --------------------------------------------------------------------------- HU values


def normalize_hu(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip HU to ``window`` = (low, high) and map it linearly to [0, 1] (float32)."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise InvalidInputError(f"HU window must have low < high, got {window}")
    out = np.clip(np.asarray(hu, dtype=np.float32), lo, hi)
    out -= lo
    out *= 1.0 / (hi - lo)
    return out


# --------------------------------------------------------------------- slice selection


def min_lung_pixels_for(shape_yx: tuple[int, int], params: ChainParams) -> float:
    """``params.min_lung_pixels`` scaled from a 512 x 512 slice to this slice's area."""
    ny, nx = int(shape_yx[0]), int(shape_yx[1])
    return params.min_lung_pixels * (ny * nx) / float(REFERENCE_MATRIX_PX**2)


def lung_pixel_counts(mask: np.ndarray) -> np.ndarray:
    """Number of lung pixels of every z slice of a z/y/x mask (int64, one per slice)."""
    mask = _mask_array(mask)
    return np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1).astype(np.int64)


def lung_slice_indices(mask: np.ndarray | LungMask, params: ChainParams) -> np.ndarray:
    """z indices (sorted) of the slices with more lung than ``min_lung_pixels``.

    Only these slices are classified and located: a slice with a sliver of lung carries
    no diagnostic content and its crop would be mostly interpolation.
    """
    mask = _mask_array(mask)
    counts = lung_pixel_counts(mask)
    return np.flatnonzero(counts > min_lung_pixels_for(mask.shape[1:], params)).astype(np.int64)


def sample_slices(z_indices: Sequence[int] | np.ndarray, max_slices: int) -> np.ndarray:
    """At most ``max_slices`` of ``z_indices`` taken with a uniform stride.

    The first and the last slice are always kept; with fewer slices than
    ``max_slices`` all are returned. Output is sorted and unique.
    """
    z = np.unique(np.asarray(z_indices, dtype=np.int64))
    if max_slices < 1:
        raise InvalidInputError(f"max_slices must be at least 1, got {max_slices}")
    if len(z) <= max_slices:
        return z
    # With more slices than wanted the stride exceeds 1, so rounding keeps them unique.
    picks = np.round(np.linspace(0, len(z) - 1, max_slices)).astype(np.int64)
    return z[np.unique(picks)]


# ----------------------------------------------------------------- crop to the lung box


def lung_box(mask_slice: np.ndarray) -> Box:
    """Bounding box of the lung pixels of one y/x slice; the whole slice if it has none."""
    m = np.asarray(mask_slice, dtype=bool)
    if m.ndim != 2:
        raise InvalidInputError(f"lung_box needs a 2-D slice mask, got shape {m.shape}")
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return Box(0, m.shape[0], 0, m.shape[1])
    cols = np.flatnonzero(m.any(axis=0))
    return Box(int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def lung_boxes(mask: np.ndarray | LungMask, z_indices: Sequence[int] | np.ndarray) -> list[Box]:
    """``lung_box`` of each listed slice of a z/y/x mask."""
    mask = _mask_array(mask)
    return [lung_box(mask[int(z)]) for z in z_indices]


def _box_shrink(arr: np.ndarray, ky: int, kx: int) -> np.ndarray:
    """Mean of ky x kx blocks of an (n, y, x) stack; the edge is padded by repetition."""
    n, h, w = arr.shape
    ph, pw = -h % ky, -w % kx
    if ph or pw:
        arr = np.pad(arr, ((0, 0), (0, ph), (0, pw)), mode="edge")
    return arr.reshape(n, (h + ph) // ky, ky, (w + pw) // kx, kx).mean(axis=(2, 4), dtype=np.float32)


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour indices and weights of 1-D linear interpolation, pixel centres aligned
    (the ``align_corners=False`` convention), clamped at the edges."""
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def resize_batch(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (n, y, x) float stack to ``size`` (float32).

    Shrinking by 2 or more first averages integer blocks (so noise does not alias), then
    interpolates linearly. Plain numpy on purpose: per-slice crops are small, and torch's
    threaded kernels cost more in overhead than they save here.
    """
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim != 3:
        raise InvalidInputError(f"resize_batch needs an (n, y, x) stack, got shape {arr.shape}")
    oh, ow = (int(size[0]), int(size[1])) if isinstance(size, (tuple, list, np.ndarray)) else (int(size), int(size))
    if oh < 1 or ow < 1:
        raise InvalidInputError(f"resize_batch needs a positive size, got {(oh, ow)}")
    ky, kx = max(1, arr.shape[1] // oh), max(1, arr.shape[2] // ow)
    if ky > 1 or kx > 1:
        arr = _box_shrink(arr, ky, kx)
    if arr.shape[1:] == (oh, ow):
        return np.array(arr, dtype=np.float32, copy=True)
    y0, y1, wy = _linear_taps(arr.shape[1], oh)
    x0, x1, wx = _linear_taps(arr.shape[2], ow)
    wy = wy[None, :, None]
    rows = arr[:, y0, :] * (1.0 - wy) + arr[:, y1, :] * wy
    wx = wx[None, None, :]
    return (rows[:, :, x0] * (1.0 - wx) + rows[:, :, x1] * wx).astype(np.float32, copy=False)


def crop_resize(image: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Crop one y/x slice to ``box`` and resize it to ``size`` x ``size`` (float32)."""
    crop = np.asarray(image, dtype=np.float32)[box.y0 : box.y1, box.x0 : box.x1]
    return resize_batch(crop[None], size)[0]


def uncrop(image: np.ndarray, box: Box, shape_yx: tuple[int, int], fill: float = 0.0) -> np.ndarray:
    """Inverse of ``crop_resize``: resize a square map back to ``box`` inside a slice.

    Used to bring a Grad-CAM computed on the classifier's input back onto the full slice;
    pixels outside the box get ``fill``.
    """
    out = np.full(tuple(int(s) for s in shape_yx), fill, dtype=np.float32)
    out[box.y0 : box.y1, box.x0 : box.x1] = resize_batch(
        np.asarray(image, dtype=np.float32)[None], (box.height, box.width)
    )[0]
    return out


# ------------------------------------------------------------------- classifier input


def crop_pair(hu_slice: np.ndarray, mask_slice: np.ndarray, size: int, box: Box | None = None) -> np.ndarray:
    """(2, S, S) float32: HU and soft lung mask of one slice, cropped to ``box`` (default:
    the slice's lung box) and resized to ``size``. What training stores and augments in
    HU, before ``lung_channels`` makes the network input."""
    hu_slice = np.asarray(hu_slice)
    mask_slice = np.asarray(mask_slice)
    if hu_slice.ndim != 2 or hu_slice.shape != mask_slice.shape:
        raise InvalidInputError(
            f"classifier_input needs a 2-D HU slice and a mask of the same shape, "
            f"got {hu_slice.shape} and {mask_slice.shape}"
        )
    if box is None:
        box = lung_box(mask_slice)
    both = np.stack(
        [
            hu_slice[box.y0 : box.y1, box.x0 : box.x1].astype(np.float32),
            mask_slice[box.y0 : box.y1, box.x0 : box.x1].astype(np.float32),
        ]
    )
    out = resize_batch(both, size)
    np.clip(out[1], 0.0, 1.0, out=out[1])
    return out


def lung_channels(pairs, params: ChainParams):
    """Network input from (n, 2, S, S) [HU, mask] pairs (numpy or torch, same maths):
    channels ``[mask, mask * HU in hu_window, mask * HU in lung_detail_window]``.

    Everything outside the lung is zero: the network sees the lung and nothing else, so
    it cannot learn the mediastinum, the chest wall or the table of one generator (the
    shortcut that made the first bundle call every unknown CT "CAP" and look outside the
    lung). The second window spreads ground glass (-750..-450 HU) over the range.
    """
    hu, mask = pairs[:, 0], pairs[:, 1]
    out = []
    for lo, hi in (params.hu_window, params.lung_detail_window):
        scale = 1.0 / (float(hi) - float(lo))
        v = (hu - float(lo)) * scale
        v = v.clip(0.0, 1.0) if isinstance(v, np.ndarray) else v.clamp(0.0, 1.0)
        out.append(mask * v)
    if isinstance(hu, np.ndarray):
        return np.stack([mask, *out], axis=1).astype(np.float32, copy=False)
    return torch.stack([mask, *out], dim=1)


def classifier_input(
    hu_slice: np.ndarray, mask_slice: np.ndarray, params: ChainParams, box: Box | None = None
) -> np.ndarray:
    """The (3, S, S) float32 input of one slice (``crop_pair`` then ``lung_channels``).

    ``box`` defaults to the slice's lung bounding box. S = ``params.input_size``.
    """
    return lung_channels(crop_pair(hu_slice, mask_slice, params.input_size, box)[None], params)[0]


def pair_batch(
    volume: np.ndarray | CTVolume, lung_mask: np.ndarray | LungMask, z_indices: Sequence[int] | np.ndarray, size: int
) -> np.ndarray:
    """``crop_pair`` of the listed slices: (n, 2, S, S) float32, in z_indices order."""
    hu = _hu_array(volume)
    mask = _mask_array(lung_mask)
    if hu.shape != mask.shape:
        raise InvalidInputError(f"volume {hu.shape} and lung mask {mask.shape} differ in shape")
    z_list = [int(z) for z in z_indices]
    out = np.empty((len(z_list), 2, size, size), dtype=np.float32)
    for i, z in enumerate(z_list):
        if not 0 <= z < hu.shape[0]:
            raise InvalidInputError(f"slice index {z} is outside the volume's {hu.shape[0]} slices")
        out[i] = crop_pair(hu[z], mask[z], size)
    return out


def classifier_batch(
    volume: np.ndarray | CTVolume,
    lung_mask: np.ndarray | LungMask,
    z_indices: Sequence[int] | np.ndarray,
    params: ChainParams,
) -> np.ndarray:
    """Classifier input of the listed slices: (n, 3, S, S) float32, in z_indices order."""
    return lung_channels(pair_batch(volume, lung_mask, z_indices, params.input_size), params)


# ------------------------------------------------------------------------ lung U-Net


def _torch_resize(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Whole-volume resize in torch (one large call, where its threads pay off): integer
    block means when shrinking by 2 or more, then bilinear; upsampling is bilinear."""
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    with torch.inference_mode():
        ky, kx = max(1, t.shape[2] // size[0]), max(1, t.shape[3] // size[1])
        if ky > 1 or kx > 1:
            t = F.avg_pool2d(t, kernel_size=(ky, kx), stride=(ky, kx), ceil_mode=True, count_include_pad=False)
        if tuple(t.shape[2:]) != tuple(size):
            t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return t[:, 0].numpy()


def unet_batch(hu: np.ndarray, params: ChainParams) -> np.ndarray:
    """U-Net input of a stack of slices: (n, 1, U, U) float32 in [0, 1].

    HU below ``hu_clip_min`` (outside the scanner's field of view, often -2000 or
    -3024) is clipped to it, as in the paper code; values above the top of
    ``hu_window`` carry nothing for the lungs and are clipped too. U =
    ``params.unet_input_size``.
    """
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim == 2:
        hu = hu[None]
    if hu.ndim != 3:
        raise InvalidInputError(f"unet_batch needs (n, y, x) HU slices, got shape {hu.shape}")
    lo, hi = float(params.hu_clip_min), float(params.hu_window[1])
    size = (params.unet_input_size, params.unet_input_size)
    small = _torch_resize(np.clip(hu, lo, hi), size)
    return normalize_hu(small, (lo, hi))[:, None]


def upsample_mask(
    foreground_prob: np.ndarray, shape_yx: tuple[int, int], threshold: float = 0.5, chunk: int = 32
) -> np.ndarray:
    """Resize (n, U, U) foreground probabilities to (n, y, x) and threshold them (bool).

    Interpolating the probability and thresholding afterwards gives smoother lung edges
    than resizing a binary mask with nearest neighbours. Works ``chunk`` slices at a
    time so that no full-size float copy of the volume is made.
    """
    prob = np.asarray(foreground_prob, dtype=np.float32)
    if prob.ndim == 2:
        prob = prob[None]
    size = (int(shape_yx[0]), int(shape_yx[1]))
    out = np.empty((prob.shape[0], *size), dtype=bool)
    for start in range(0, prob.shape[0], max(1, int(chunk))):
        out[start : start + chunk] = _torch_resize(prob[start : start + chunk], size) > threshold
    return out


# --------------------------------------------------------------------------- helpers


def _hu_array(volume: np.ndarray | CTVolume) -> np.ndarray:
    hu = volume.hu if isinstance(volume, CTVolume) else np.asarray(volume)
    if hu.ndim != 3:
        raise InvalidInputError(f"expected a z/y/x HU volume, got shape {hu.shape}")
    return hu


def _mask_array(mask: np.ndarray | LungMask) -> np.ndarray:
    m = mask.mask if isinstance(mask, LungMask) else np.asarray(mask)
    if m.ndim != 3:
        raise InvalidInputError(f"expected a z/y/x lung mask, got shape {m.shape}")
    return m.astype(bool, copy=False)
