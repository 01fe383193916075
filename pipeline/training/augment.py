"""Batch augmentation in torch, driven by an explicit generator (reproducible on resume).

Small affine transforms (rotation, isotropic scale, translation) and random erasing,
as the paper's training code used. Everything runs on whole batches with
``affine_grid``/``grid_sample``; the random numbers come from the generator passed in,
never from torch's global state, so a run resumed at epoch N draws exactly what an
uninterrupted run draws.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .params import AugmentParams


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def random_affine_matrices(n: int, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) float32 matrices for ``affine_grid`` (normalised coordinates)."""
    angle = torch.deg2rad(_uniform(n, -params.max_rotation_deg, params.max_rotation_deg, generator))
    scale = _uniform(n, 1.0 - params.max_scale_change, 1.0 + params.max_scale_change, generator)
    # Normalised coordinates span 2 units, so a translation of fraction f is 2 f.
    tx = 2.0 * _uniform(n, -params.max_translation, params.max_translation, generator)
    ty = 2.0 * _uniform(n, -params.max_translation, params.max_translation, generator)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1)
    return theta.to(torch.float32)


def affine(images: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Warp an (n, c, h, w) batch; pixels from outside the image become 0."""
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def random_erase(images: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Blank one random rectangle per image (all channels) with the configured probability.

    Draws the same count of random numbers whatever happens, so the stream stays aligned.
    """
    n, _, h, w = images.shape
    out = images.clone()
    draws = torch.rand((n, 5), generator=generator, dtype=torch.float64)
    lo_a, hi_a = params.erase_area
    log_lo, log_hi = math.log(params.erase_aspect[0]), math.log(params.erase_aspect[1])
    for i in range(n):
        p, area_u, aspect_u, y_u, x_u = (float(v) for v in draws[i])
        if p >= params.erase_probability:
            continue
        area = (lo_a + (hi_a - lo_a) * area_u) * h * w
        aspect = math.exp(log_lo + (log_hi - log_lo) * aspect_u)
        eh = min(h, max(1, int(round(math.sqrt(area * aspect)))))
        ew = min(w, max(1, int(round(math.sqrt(area / aspect)))))
        y0 = int(y_u * (h - eh + 1))
        x0 = int(x_u * (w - ew + 1))
        out[i, :, y0:y0 + eh, x0:x0 + ew] = params.erase_value
    return out


def augment_images(images: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Classifier / locator augmentation: random affine, then random erasing."""
    theta = random_affine_matrices(images.shape[0], params, generator)
    return random_erase(affine(images, theta), params, generator)


def augment_pairs(images: torch.Tensor, masks: torch.Tensor, params: AugmentParams,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Segmentation augmentation: the same affine for an image and its label mask.

    ``masks`` is (n, h, w) integer; it is warped with nearest neighbours so labels stay
    labels. No erasing here: a blanked lung would contradict its own label.
    """
    theta = random_affine_matrices(images.shape[0], params, generator)
    warped = affine(images, theta)
    warped_masks = affine(masks[:, None].to(images.dtype), theta, mode="nearest")[:, 0]
    return warped, warped_masks.round().to(masks.dtype)
