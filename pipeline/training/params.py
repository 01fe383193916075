"""Named parameters of training, in one place (the chain's own live in pipeline.params)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation as the paper's code did it: small affine transforms, random erasing.

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


@dataclass(frozen=True)
class TrainParams:
    """Loss, schedule and labelling constants of the training loops."""

    #: A COVID-19 slice is "infected" when it holds more lesion pixels than this (paper code).
    locator_lesion_pixels: int = 50
    #: Cosine learning-rate decay ends at this fraction of the base rate.
    min_lr_fraction: float = 0.02
    weight_decay: float = 1e-4
    #: Threshold on the U-Net's foreground probability when measuring Dice.
    dice_threshold: float = 0.5
    augment: AugmentParams = AugmentParams()
