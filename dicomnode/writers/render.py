"""Grad-CAM overlay pictures: lung-windowed CT, heat map blended, lung outline, caption.

Pure numpy (+ matplotlib's colormap, Pillow's text): an (rows, cols, 3) uint8 RGB array in,
nothing written anywhere.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

#: Lung window (W1500/L-600): what a radiologist reads chest CT for pneumonia with.
LUNG_WINDOW_HU = (-1350.0, 150.0)
#: Heat below this fraction of the maximum is not drawn (keeps the lung visible).
HEAT_FLOOR = 0.15
#: Opacity of the heat map where the heat is 1.
HEAT_MAX_ALPHA = 0.55
LUNG_OUTLINE_RGB = (0, 220, 0)
ATTENTION_OUTLINE_RGB = (255, 255, 255)
TEXT_RGB = (255, 255, 0)


def window_to_gray(hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW_HU) -> np.ndarray:
    """HU -> uint8 grey levels in the window (linear, clipped)."""
    lo, hi = window
    scaled = (np.asarray(hu, dtype=np.float32) - lo) / (hi - lo)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@lru_cache(maxsize=1)
def _jet_lut() -> np.ndarray:
    from matplotlib import colormaps  # imported late: only overlays need it

    return (colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.float32)


def outline(mask: np.ndarray) -> np.ndarray:
    """The one-pixel border of a 2-D mask (bool)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def render_overlay(
    hu: np.ndarray,
    heat: np.ndarray,
    lung: np.ndarray,
    regions: np.ndarray | None = None,
    caption: list[str] | None = None,
) -> np.ndarray:
    """One overlay picture (rows, cols, 3) uint8.

    ``hu`` the CT slice, ``heat`` the Grad-CAM in [0, 1], ``lung`` the lung mask of the
    slice, ``regions`` the attention regions (outlined in white), ``caption`` lines burned
    in at the top left.
    """
    if hu.shape != heat.shape or hu.shape != lung.shape:
        raise ValueError(f"render_overlay: slice {hu.shape}, heat {heat.shape} and lung {lung.shape} differ")
    gray = window_to_gray(hu).astype(np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    h = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0.0, 1.0)
    if h.max() > 0:
        h = h / h.max()
    colors = _jet_lut()[(h * 255.0).astype(np.uint8)]
    alpha = np.where(h >= HEAT_FLOOR, HEAT_MAX_ALPHA * h, 0.0)[..., None]
    rgb = (1.0 - alpha) * rgb + alpha * colors
    out = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    out[outline(lung)] = LUNG_OUTLINE_RGB
    if regions is not None and regions.any():
        out[outline(regions)] = ATTENTION_OUTLINE_RGB
    if caption:
        out = burn_text(out, caption)
    return out


def burn_text(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """Write ``lines`` at the top left, on a dark band so they read on any image."""
    from PIL import Image, ImageDraw, ImageFont

    rows, cols = rgb.shape[:2]
    size = max(8, min(18, cols // 36))
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed bitmap font
        font = ImageFont.load_default()
    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    y: float = 2
    for line in lines:
        box = draw.textbbox((3, y), line, font=font)
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
        draw.text((3, y), line, fill=TEXT_RGB, font=font)
        y = box[3] + 3
        if y >= rows - size:
            break
    return np.asarray(image, dtype=np.uint8).copy()
