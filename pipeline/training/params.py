"""Named parameters of training, in one place (the chain's own live in pipeline.params)."""

from __future__ import annotations

from dataclasses import dataclass

from ..params import INFECTED_SLICE_MIN_PIXELS


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation: the paper code's small affine transforms and random erasing, plus
    elastic deformation and HU intensity changes (contrast, offset, gamma, noise, blur,
    sharpening, lower resolution) that stand for other scanners, kernels and doses.

    Rotation, scale and translation are drawn uniformly in the given ranges per sample;
    random erasing blanks one rectangle (area a fraction of the image, aspect ratio
    drawn log-uniformly) with probability ``erase_probability``.
    """

    max_rotation_deg: float = 10.0
    max_scale_change: float = 0.10  # scale drawn in [1 - x, 1 + x]
    max_translation: float = 0.05  # fraction of the image size, each axis
    erase_probability: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.15)
    erase_aspect: tuple[float, float] = (0.3, 3.3)
    erase_value: float = 0.0
    # Intensity and geometry augmentation in HU (domain randomisation: every batch is
    # seen through another scanner, kernel and dose). Each is drawn per sample.
    elastic_probability: float = 0.3
    elastic_magnitude: float = 0.03  # displacement, fraction of the image (normalised units / 2)
    elastic_grid: int = 5  # control points per side of the smooth displacement field
    contrast_range: tuple[float, float] = (0.9, 1.1)  # HU scaled about -1000 (air) by this
    offset_hu: float = 30.0  # HU shift drawn in [-x, x]
    #: Gamma on the window-normalised value: gentle, since on the wide window a strong
    #: gamma moves normal lung (-850 HU) into the ground-glass range.
    gamma_range: tuple[float, float] = (0.92, 1.08)
    noise_sd_hu: tuple[float, float] = (0.0, 45.0)  # additive noise, sd drawn per sample
    noise_correlated_probability: float = 0.5  # noise blurred (like a soft kernel) before adding
    blur_probability: float = 0.3
    blur_sigma_px: tuple[float, float] = (0.4, 1.5)
    sharpen_probability: float = 0.2
    sharpen_amount: tuple[float, float] = (0.3, 1.0)  # unsharp mask, like a sharp kernel
    lowres_probability: float = 0.25
    lowres_factor: tuple[float, float] = (1.3, 2.5)  # down- then up-sampled by this
    # Consolidation painting of U-Net slices (pipeline.training.paint): dense disease drawn
    # into the lung so that no generator's look decides what lung is. Not in the shipped
    # recipe (0). Tried on 2026-12-03 (`--paint-consolidation 0.5`, with and without
    # `--paint-as-lesion`; the 0.4.0 recipe otherwise, the 0.4.0 classifier and locator,
    # lesion pattern refitted and recalibrated; held-out seeds 900000/900001 at 224 px):
    # 4-class macro AUC rose (pooled 0.900 -> 0.918 / 0.914) and, labelled lesion, lesion
    # inclusion too (0.912 -> 0.936), but the U-Net then called epicardial fat and
    # paravertebral tissue lung and lesion in healthy lungs (non-pneumonia lesion share up
    # to 0.018 / 0.027 against 0.007), the calibrated lesion threshold rose and decision
    # accuracy fell (pooled 0.750 -> 0.516 / 0.594). Kept as an option for a larger run.
    paint_probability: float = 0.0
    paint_hu: tuple[float, float] = (-350.0, 60.0)  # the painted region's mean density
    paint_texture_sd_hu: float = 30.0  # smooth texture on it, sd drawn in [0, x]
    paint_share: tuple[float, float] = (0.15, 0.7)  # of one lung side's pixels in the slice
    paint_halfplane_fraction: float = 0.6  # lobar (half-plane) regions; the rest are blobs
    #: Painted pixels labelled lesion (True) or left lung (False: the lesion head learns
    #: lesions only from the phantoms' own, and painting teaches the lung class alone).
    paint_as_lesion: bool = False


@dataclass(frozen=True)
class TrainParams:
    """Loss, schedule and labelling constants of the training loops."""

    #: A COVID-19 slice is "infected" when it holds more lesion pixels than this (paper code).
    locator_lesion_pixels: int = INFECTED_SLICE_MIN_PIXELS
    #: Cosine learning-rate decay ends at this fraction of the base rate.
    min_lr_fraction: float = 0.02
    weight_decay: float = 1e-4
    #: Threshold on the U-Net's foreground probability when measuring Dice.
    dice_threshold: float = 0.5
    augment: AugmentParams = AugmentParams()
    #: Classifier slice labels: "lesion" (from lesion masks where a scan has them: a
    #: lesion-free slice of a pneumonia scan is labelled non-pneumonia) or "case" (the
    #: paper's weak labels: every slice takes its scan's label).
    slice_labels: str = "lesion"
    #: U-Net loss weight of lung pixels with a lesion (dense disease must stay lung).
    lesion_weight: float = 5.0
    #: Share of a case's U-Net training slices (``max_slices_per_case``) taken among the
    #: slices that hold a lesion, the rest evenly over the whole scan. 0 (evenly spaced
    #: slices only) is the shipped bundle's recipe. Tried at 0.5 on 2026-12-02 (the 0.4.0
    #: recipe otherwise, held-out seeds 900000/900001 at 224 px): lesion Dice rose (family A
    #: 0.77 -> 0.84, B 0.46 -> 0.51) and lesion inclusion a little (B 0.84 -> 0.86), but the
    #: U-Net then marked more lesion in healthy family-B lungs: one non-pneumonia case got
    #: a pneumonia decision with 12 infectious slices and decision accuracy fell (A 0.84 ->
    #: 0.78, B 0.66 -> 0.53). Not shipped; kept as an option for a larger run.
    seg_lesion_slice_share: float = 0.0
    #: Apply the HU intensity augmentation (AugmentParams) as well as the affine.
    intensity_augmentation: bool = True
