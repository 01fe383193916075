"""Lesion burden from the U-Net's lesion map: the chain's lesion evidence. Pure numpy.

A 3-class lung U-Net (pipeline.nets) marks the lesions of infection (ground glass,
consolidation, crazy paving) inside the lung; its training target came from the
phantoms' lesion masks, where nodules and tumours are lung but not lesions. The burden
(lesion volume, its share of the lung, lesion area per slice) is what the decision weighs
for pneumonia against non-pneumonia (pipeline.decision) and what a reported infectious
slice must show (pipeline.locate): a slice classifier trained on phantoms can be fooled by
texture, a lesion that is not there cannot be measured.
"""

from __future__ import annotations

import numpy as np

from .types import CTVolume, LesionBurden, LungMask


def measure_lesion_burden(volume: CTVolume, lung: LungMask) -> LesionBurden | None:
    """The lesion burden of ``lung.lesion``; None when the segmentation made no lesion map."""
    if lung.lesion is None:
        return None
    pixel_mm2 = float(volume.spacing_mm[1]) * float(volume.spacing_mm[2])
    per_slice = np.count_nonzero(lung.lesion.reshape(lung.lesion.shape[0], -1), axis=1)
    lesion_voxels = int(per_slice.sum())
    lung_voxels = int(np.count_nonzero(lung.mask))
    return LesionBurden(
        volume_ml=lesion_voxels * volume.voxel_volume_ml,
        lung_share=lesion_voxels / lung_voxels if lung_voxels else 0.0,
        slice_area_mm2=per_slice.astype(np.float64) * pixel_mm2,
    )
