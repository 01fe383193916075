"""Consolidation painting: dense disease drawn into the lungs of U-Net training slices.

A U-Net learns what lung looks like from the lungs it is shown. Phantoms of one
generator hold few slices where a whole lobe is consolidated against the heart or the
chest wall, and a network that has not seen enough of them calls such a lobe
mediastinum and cuts it out of the lung, which hides exactly the disease from every
later stage (issue "The AI tells the truth on CTs it was not trained on": lesion
inclusion 0.17-0.5 on the other family's lobar consolidations). Painting makes the
rule explicit and independent of any one generator's look: any density inside the lung
outline is still lung, and it is lesion.

Per sample, with probability ``paint_probability``, one lung side (the pixels left or
right of the lungs' median column) gets a region, either

* a half-plane cut of that side at a random angle (lobar consolidation with a straight
  fissure-like border; it reaches the chest wall, the diaphragm or the mediastinum), or
* a smooth random blob (patchy consolidation),

covering ``paint_share`` of the side, filled with a density drawn in ``paint_hu`` plus
smooth texture, with a soft (partial-volume) edge that stays inside the lung. Its pixels
stay lung in the label, or become lesion (still lung) with ``paint_as_lesion``; the
label of everything else is unchanged.
Random numbers come from the generator passed in, the same count whatever is painted.
"""

from __future__ import annotations

import math

import torch

from .augment import gaussian_blur
from .params import AugmentParams

#: Below this many lung pixels on the chosen side nothing is painted (apex, base).
MIN_SIDE_PIXELS = 150


def paint_consolidation(
    x: torch.Tensor,
    y: torch.Tensor,
    params: AugmentParams,
    generator: torch.Generator,
    hu_range: tuple[float, float],
    lesion_label: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Painted copies of U-Net inputs ``x`` (n, 1, h, w) scaled to [0, 1] over
    ``hu_range`` and labels ``y`` (n, h, w): 0 background, >0 lung, ``lesion_label``
    lesion (module doc)."""
    n, _, h, w = x.shape
    draws = torch.rand((n, 6), generator=generator, dtype=torch.float64)
    fields = torch.randn((n, 2, h, w), generator=generator, dtype=torch.float64).to(torch.float32)
    if params.paint_probability <= 0:
        return x, y
    lo, hi = float(hu_range[0]), float(hu_range[1])
    x_out, y_out = x.clone(), y.clone()
    for i in range(n):
        d = draws[i]
        if float(d[0]) >= params.paint_probability:
            continue
        region = _region(y[i] > 0, d, fields[i, 0], params)
        if region is None:
            continue
        hu = lo + x[i, 0] * (hi - lo)
        density = params.paint_hu[0] + float(d[4]) * (params.paint_hu[1] - params.paint_hu[0])
        texture = gaussian_blur(fields[i : i + 1, 1:2], 1.5)[0, 0]
        texture = texture / texture.std().clamp_min(1e-6) * (float(d[5]) * params.paint_texture_sd_hu)
        # Partial volume: a soft edge, but only inside the lung (the wall stays the wall).
        alpha = gaussian_blur(region[None, None].to(torch.float32), 0.8)[0, 0] * (y[i] > 0)
        alpha = torch.maximum(alpha, region.to(torch.float32))
        painted = hu * (1.0 - alpha) + (density + texture) * alpha
        x_out[i, 0] = ((painted.clamp(lo, hi) - lo) / (hi - lo)).to(x.dtype)
        if params.paint_as_lesion:
            y_out[i][region] = lesion_label
    return x_out, y_out


def _region(lung: torch.Tensor, d: torch.Tensor, field: torch.Tensor, params: AugmentParams) -> torch.Tensor | None:
    """The pixels to paint in one slice's ``lung`` (h, w), or None when too little lung."""
    ys, xs = torch.nonzero(lung, as_tuple=True)
    if len(xs) < 2 * MIN_SIDE_PIXELS:
        return None
    mid = torch.quantile(xs.float(), 0.5)  # interpolated: a gap between the lungs splits them
    right = bool(d[1] < 0.5)
    cols = torch.arange(lung.shape[1])[None, :]
    side = lung & ((cols < mid) if right else (cols >= mid))
    count = int(side.sum())
    if count < MIN_SIDE_PIXELS:
        return None
    share = params.paint_share[0] + float(d[2]) * (params.paint_share[1] - params.paint_share[0])
    if float(d[3]) < params.paint_halfplane_fraction:
        # Half-plane: project the side's pixels on a random direction, keep the far share.
        angle = 2.0 * math.pi * float(d[3]) / max(params.paint_halfplane_fraction, 1e-6)
        sy, sx = torch.nonzero(side, as_tuple=True)
        proj = sx.float() * math.cos(angle) + sy.float() * math.sin(angle)
        cut = torch.quantile(proj, 1.0 - share)
        region = torch.zeros_like(side)
        region[sy[proj >= cut], sx[proj >= cut]] = True
        return region
    # Blob: a smooth random field thresholded at the share's quantile inside the side.
    smooth = gaussian_blur(field[None, None], 6.0)[0, 0]
    values = smooth[side]
    cut = torch.quantile(values, 1.0 - share)
    return side & (smooth >= cut)
