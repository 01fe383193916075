"""The CT localizer (scout) of a volume: a projection radiograph with the scanner's geometry.

A CT scanner takes its localizer with the tube parked (above the table for an AP view)
while the table moves through the gantry: the beam fans out across the patient (x) from
a focal spot at ``source_to_isocenter_mm`` and is parallel along the table (z). Each
detector reading is the line integral of the linear attenuation along its ray;
``-ln(I / I0)`` of it is what the localizer shows (bone bright, air dark). This module
makes that image from a CTVolume (HU -> attenuation ``mu = mu_water * (1 + HU / 1000)``,
air and below 0), sampled with the fan's magnification at every depth and each ray's
slant, so that the phantoms of both families (pipeline.phantom, pipeline.phantoms) get
the localizer their scanner would have taken. Pure numpy; optional quantum noise
(Poisson counts of ``photons_per_pixel``) seeded.

The result is a ``pipeline.types.Radiograph``: rows from the head end down (row 0 the
most superior slice), columns from the patient's right to the left (as an AP film is
read), pixel spacing at the isocentre: (the slice spacing, the volume's x spacing).
``geometry`` records the distances, where row 0 and column 0 lie in the patient frame,
the attenuation of water used and the detector's pixel size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .types import CTVolume, InvalidInputError, Radiograph

__all__ = ["LocalizerGeometry", "project_localizer"]


@dataclass(frozen=True)
class LocalizerGeometry:
    """The acquisition of a localizer (typical values of a clinical CT)."""

    #: Focal spot to the rotation axis, and to the detector (mm).
    source_to_isocenter_mm: float = 570.0
    source_to_detector_mm: float = 1040.0
    #: Linear attenuation of water at the beam's effective energy (about 70 keV), 1/mm.
    mu_water_per_mm: float = 0.0193
    #: Photons reaching a detector pixel through air; 0: no quantum noise.
    photons_per_pixel: float = 0.0
    view: str = "AP"

    def __post_init__(self) -> None:
        if not 0 < self.source_to_isocenter_mm < self.source_to_detector_mm:
            raise InvalidInputError(
                "LocalizerGeometry: the source-to-isocentre distance must be positive and shorter than the "
                f"source-to-detector distance, got {self.source_to_isocenter_mm} and {self.source_to_detector_mm}"
            )
        if not self.mu_water_per_mm > 0 or self.photons_per_pixel < 0:
            raise InvalidInputError("LocalizerGeometry: mu_water_per_mm must be positive and photons_per_pixel >= 0")
        if self.view != "AP":
            raise InvalidInputError(f"LocalizerGeometry: only the AP view is projected, got {self.view!r}")


def _attenuation(hu_slab: np.ndarray, mu_water: float) -> np.ndarray:
    """Linear attenuation (1/mm) of HU values; air and anything below it attenuate nothing."""
    return np.clip(mu_water * (1.0 + hu_slab.astype(np.float32) / 1000.0), 0.0, None)


def _sample_columns(mu: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """``mu`` (z, x) sampled at fractional x indices ``fx`` (linear; 0 outside the volume)."""
    nx = mu.shape[1]
    i0 = np.floor(fx).astype(np.int64)
    w = (fx - i0).astype(np.float32)
    out = np.zeros((mu.shape[0], fx.size), dtype=np.float32)
    for idx, weight in ((i0, 1.0 - w), (i0 + 1, w)):
        ok = (idx >= 0) & (idx < nx)
        out[:, ok] += mu[:, idx[ok]] * weight[ok]
    return out


def _check_axial(volume: CTVolume) -> None:
    d = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    if not np.allclose(np.abs(d), np.eye(3), atol=1e-3):
        raise InvalidInputError(
            "project_localizer needs an axial volume whose axes are the patient's (identity or flipped "
            f"direction cosines), got {tuple(round(v, 3) for v in volume.direction)}"
        )


def project_localizer(
    volume: CTVolume, geometry: LocalizerGeometry = LocalizerGeometry(), seed: int | None = None
) -> Radiograph:
    """The AP localizer of ``volume`` (see the module docstring); ``seed`` drives the
    quantum noise when ``geometry.photons_per_pixel`` is set."""
    _check_axial(volume)
    nz, ny, nx = volume.shape
    dz, dy, dx = (float(s) for s in volume.spacing_mm)
    x0, y0, z0 = (float(o) for o in volume.origin_mm)
    sx, sy, sz = np.sign(np.diag(np.asarray(volume.direction, dtype=float).reshape(3, 3)))
    sod = geometry.source_to_isocenter_mm
    iso_x = x0 + sx * dx * (nx - 1) / 2.0
    iso_y = y0 + sy * dy * (ny - 1) / 2.0
    # Detector columns at the isocentre, one per voxel column, from the patient's right (-x).
    u = (np.arange(nx, dtype=np.float64) - (nx - 1) / 2.0) * dx
    slant = np.sqrt(1.0 + (u / sod) ** 2).astype(np.float32)  # each ray's path per mm of depth
    source_y = iso_y - sod  # the tube sits anterior (-y) for an AP view
    line = np.zeros((nz, nx), dtype=np.float32)
    for iy in range(ny):
        y = y0 + sy * iy * dy
        x_at_depth = iso_x + u * (y - source_y) / sod
        fx = (x_at_depth - x0) / (sx * dx)
        line += _sample_columns(_attenuation(volume.hu[:, iy, :], geometry.mu_water_per_mm), fx)
    line *= slant[None, :] * dy  # columns already run along +x (u is in the patient frame)
    if sz > 0:
        line = line[::-1]  # row 0: the most superior slice
    image = np.ascontiguousarray(line, dtype=np.float32)
    if geometry.photons_per_pixel > 0:
        rng = np.random.default_rng([0 if seed is None else int(seed), 0x5C047])
        counts = rng.poisson(geometry.photons_per_pixel * np.exp(-image.astype(np.float64)))
        image = (-np.log(np.maximum(counts, 1) / geometry.photons_per_pixel)).astype(np.float32)
    top_z = z0 + sz * dz * (nz - 1) if sz > 0 else z0
    return Radiograph(
        image=image,
        pixel_spacing_mm=(dz, dx),
        view=geometry.view,
        source="localizer",
        geometry={
            "source_to_isocenter_mm": sod,
            "source_to_detector_mm": geometry.source_to_detector_mm,
            "detector_pixel_mm": dx * geometry.source_to_detector_mm / sod,
            "mu_water_per_mm": geometry.mu_water_per_mm,
            "photons_per_pixel": geometry.photons_per_pixel,
            "first_row_z_mm": float(top_z),
            "first_column_x_mm": float(min(x0, x0 + sx * dx * (nx - 1))),
            "isocenter_x_mm": float(iso_x),
            "isocenter_y_mm": float(iso_y),
        },
    )
