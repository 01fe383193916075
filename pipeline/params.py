"""Named parameters of the AI chain, in one place (no magic numbers inside stages)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChainParams:
    # Preprocessing (METHOD.md, module 2)
    hu_window: tuple[float, float] = (-1200.0, 700.0)
    input_size: int = 224
    max_slices: int = 35
    min_lung_pixels: int = 500  # slices with less lung are not classified (paper code)
    # Lung segmentation
    unet_input_size: int = 128  # U-Net runs at this in-plane size, mask upsampled back
    hu_clip_min: float = -1024.0
    # Fusion
    top_k: int = 3
    decision_threshold: float = 0.5
    # Locating
    locator_threshold: float = 0.5
    locator_median_width: int = 5
    # Interpretation
    max_explained_slices: int = 5
    attention_min_area_px: int = 200
    attention_threshold: float = 0.5  # of the normalised Guided Grad-CAM
    lung_margin_px: int = 5  # attention kept inside the lung dilated by this margin
    # Compute
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    batch_size: int = 16
    compute_phenotype: bool = True
