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
        out[i, :, y0 : y0 + eh, x0 : x0 + ew] = params.erase_value
    return out


def augment_images(images: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Classifier / locator augmentation: random affine, then random erasing."""
    theta = random_affine_matrices(images.shape[0], params, generator)
    return random_erase(affine(images, theta), params, generator)


def augment_pairs(
    images: torch.Tensor, masks: torch.Tensor, params: AugmentParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segmentation augmentation: the same affine for an image and its label mask.

    ``masks`` is (n, h, w) integer; it is warped with nearest neighbours so labels stay
    labels. No erasing here: a blanked lung would contradict its own label.
    """
    theta = random_affine_matrices(images.shape[0], params, generator)
    warped = affine(images, theta)
    warped_masks = affine(masks[:, None].to(images.dtype), theta, mode="nearest")[:, 0]
    return warped, warped_masks.round().to(masks.dtype)


# ------------------------------------------------------------------ HU domain randomisation


def _coin(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64) < p


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / max(sigma, 1e-3)) ** 2)
    return k / k.sum()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an (n, 1, h, w) batch (edges replicated)."""
    k = _gaussian_kernel(sigma).to(images.dtype)
    r = (len(k) - 1) // 2
    x = F.pad(images, (r, r, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, r, r), mode="replicate")
    return F.conv2d(x, k.view(1, 1, -1, 1))


def elastic_grids(n: int, h: int, w: int, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """(n, h, w, 2) smooth random displacements (normalised units), zero for the samples
    that draw no elastic deformation."""
    g = max(2, int(params.elastic_grid))
    coarse = torch.randn((n, 2, g, g), generator=generator, dtype=torch.float64).to(torch.float32)
    on = _coin(n, params.elastic_probability, generator).to(torch.float32).view(n, 1, 1, 1)
    field = F.interpolate(
        coarse * on * 2.0 * params.elastic_magnitude, size=(h, w), mode="bicubic", align_corners=False
    )
    return field.permute(0, 2, 3, 1)


def warp(
    images: torch.Tensor, theta: torch.Tensor, displacement: torch.Tensor | None = None, mode: str = "bilinear"
) -> torch.Tensor:
    """Affine warp plus an optional displacement field; outside pixels become 0."""
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    if displacement is not None:
        grid = grid + displacement.to(images.dtype)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def augment_hu(
    hu: torch.Tensor, params: AugmentParams, generator: torch.Generator, window: tuple[float, float]
) -> torch.Tensor:
    """Intensity domain randomisation of an (n, h, w) batch in HU.

    In order: lower resolution (down- and up-sampled), blur or sharpening (soft or sharp
    reconstruction kernel), noise (white or correlated, sd per sample), contrast about
    air, an HU offset, and a gamma on the ``window``-normalised value. Draws the same
    count of random numbers whatever is applied, so resumed runs stay aligned.
    """
    n, h, w = hu.shape
    d = torch.rand((n, 12), generator=generator, dtype=torch.float64)
    noise = torch.randn((n, 1, h, w), generator=generator, dtype=torch.float64).to(hu.dtype)
    out = hu.clone()[:, None]
    lerp = lambda u, r: float(r[0] + (r[1] - r[0]) * float(u))  # noqa: E731
    for i in range(n):
        x = out[i : i + 1]
        if d[i, 0] < params.lowres_probability:
            f = lerp(d[i, 1], params.lowres_factor)
            small = (max(4, int(round(h / f))), max(4, int(round(w / f))))
            x = F.interpolate(
                F.interpolate(x, size=small, mode="area"), size=(h, w), mode="bilinear", align_corners=False
            )
        if d[i, 2] < params.blur_probability:
            x = gaussian_blur(x, lerp(d[i, 3], params.blur_sigma_px))
        elif d[i, 2] < params.blur_probability + params.sharpen_probability:
            x = x + lerp(d[i, 3], params.sharpen_amount) * (x - gaussian_blur(x, 1.0))
        sd = lerp(d[i, 4], params.noise_sd_hu)
        e = noise[i : i + 1]
        if d[i, 5] < params.noise_correlated_probability:
            e = gaussian_blur(e, 0.8)
            e = e / e.std().clamp_min(1e-6)
        x = x + sd * e
        x = -1000.0 + (x + 1000.0) * lerp(d[i, 6], params.contrast_range)
        x = x + lerp(d[i, 7], (-params.offset_hu, params.offset_hu))
        lo, hi = float(window[0]), float(window[1])
        v = ((x - lo) / (hi - lo)).clamp(0.0, 1.0) ** lerp(d[i, 8], params.gamma_range)
        inside = (x > lo) & (x < hi)
        x = torch.where(inside, lo + v * (hi - lo), x)
        out[i : i + 1] = x
    return out[:, 0]


def augment_lung_pairs(
    pairs: torch.Tensor,
    params: AugmentParams,
    generator: torch.Generator,
    window: tuple[float, float],
    intensity: bool = True,
) -> torch.Tensor:
    """Classifier / locator augmentation of (n, 2, s, s) [HU, mask] pairs: one affine and
    elastic warp for both, then HU domain randomisation of the HU (``intensity``).

    Warping pads with 0 in both channels: mask 0 there, so the padding never reaches
    the network (its input is zero outside the lung).
    """
    n, _, h, w = pairs.shape
    theta = random_affine_matrices(n, params, generator)
    disp = elastic_grids(n, h, w, params, generator)
    warped = warp(pairs, theta, disp)
    hu, mask = warped[:, 0], warped[:, 1].clamp(0.0, 1.0)
    if intensity:
        hu = augment_hu(hu, params, generator, window)
    return torch.stack([hu, mask], dim=1)


def augment_unet_inputs(
    x: torch.Tensor, params: AugmentParams, generator: torch.Generator, hu_range: tuple[float, float]
) -> torch.Tensor:
    """HU domain randomisation of U-Net inputs (n, 1, h, w) scaled to [0, 1] over
    ``hu_range``: back to HU, randomised, clipped and scaled again."""
    lo, hi = float(hu_range[0]), float(hu_range[1])
    hu = augment_hu(lo + x[:, 0] * (hi - lo), params, generator, hu_range)
    return ((hu.clamp(lo, hi) - lo) / (hi - lo))[:, None]
