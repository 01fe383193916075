"""The acquisition of a family-B phantom: what the scanner and the technologist chose.

Drawn per case from the seed ("domain randomisation"): matrix and pixel spacing (about
0.55-0.95 mm on 512, scaled by 512 / size), patient offset from the isocentre, slice
thickness (clinical values 0.625-10 mm), reconstruction kernel (soft / standard /
sharp), noise level, contrast phase (non-contrast / arterial / venous), the value
written outside the reconstruction circle (-2048, -1024 or -3024), beam-hardening
cupping, streaks between dense bones, and the table with its mattress.

Image formation on each output slice happens in the Fourier domain: the noise-free slice
is multiplied by the kernel's modulation transfer function (a Gaussian roll-off; sharp
kernels add a mid-frequency boost, which is edge enhancement with overshoot) and noise
is synthesised directly as a spectrum whose power follows ``f * MTF(f)^2`` (the ramp
filter of filtered back-projection times the kernel's apodisation), so soft kernels give
blotchy and sharp kernels fine-grained noise. One inverse FFT returns image plus noise.
Nothing here comes from family A (``pipeline.phantom``), which adds smoothed white noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from .common import Grid, Stream, rng_for

__all__ = ["Contrast", "Look", "draw_look", "make_grid", "form_image", "PHASES", "KERNELS"]

PHASES = ("non_contrast", "arterial", "venous")
KERNELS = ("soft", "standard", "sharp")
#: Clinical slice thicknesses, mm, and how often each is drawn.
THICKNESS_CHOICES = (0.625, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0, 7.5, 10.0)
THICKNESS_WEIGHTS = (0.05, 0.12, 0.1, 0.08, 0.12, 0.12, 0.1, 0.18, 0.06, 0.07)
SIZE_CHOICES = (256, 384, 512, 512, 512)
OUTSIDE_CHOICES = (-2048.0, -1024.0, -3024.0)
OUTSIDE_WEIGHTS = (0.45, 0.35, 0.2)
REFERENCE_MATRIX = 512
PIXEL_MM_512 = (0.55, 0.95)
#: Largest pixel spacing on 512 that the technologist ever picks (a very large patient).
PIXEL_MM_512_CAP = 0.98
#: Noise sd is drawn for this thickness and scales with 1/sqrt(thickness), the
#: thickness taken within this range (thicker slices are usually reconstructed from
#: a low-dose thin acquisition, so their noise stops falling).
NOISE_REF_MM = 2.5
NOISE_THICKNESS_MM = (0.6, 5.0)
NOISE_SD_RANGE = (8.0, 60.0)
#: Fine sampling along z for partial volume: at most this spacing, at most this many.
PV_FINE_MM = 3.5
PV_MAX_SUB = 4
#: Stored values inside the reconstruction circle.
HU_MIN, HU_MAX = -1024.0, 3071.0
#: Margin between the lungs and the edge of the reconstruction circle, mm.
FOV_LUNG_MARGIN = 8.0


@dataclass(frozen=True)
class Contrast:
    """Blood and organ values (HU) of the contrast phase."""

    phase: str
    aorta: float  # and left heart, pulmonary veins
    pa: float  # pulmonary arteries and right heart
    svc: float
    ivc: float
    myocardium: float
    liver: float | None  # None: the patient's non-contrast value
    spleen: float | None


@dataclass(frozen=True)
class Look:
    """Acquisition parameters of one case."""

    size_px: int
    thickness_mm: float  # drawn thickness (used when the slice count is not given)
    pixel_512: float  # drawn pixel spacing on a 512 matrix, before fitting the patient
    body_fit: float  # how much of the body the technologist keeps in the field (< 1 clips)
    off_x: float  # patient offset from the isocentre, mm
    off_y: float
    outside_hu: float
    kernel: str
    mtf_fc: float  # roll-off frequency, cycles/mm
    mtf_boost: float  # edge enhancement (0 = none)
    mtf_peak: float  # frequency of the boost, cycles/mm
    noise_ref: float  # noise sd at NOISE_REF_MM
    contrast: Contrast
    cupping: float  # HU lost at the body centre by beam hardening
    streak: float  # HU of dark streaks between dense bones (0 = none)
    streak_w: float
    table_radius: float
    table_half_w: float
    table_shell: float
    table_foam: float
    hu_shell: float
    hu_foam: float
    pad: float  # mattress thickness (0 = none)
    hu_pad: float
    compress: float  # how far the table flattens the back, mm

    def noise_sd(self, thickness: float) -> float:
        sd = self.noise_ref * math.sqrt(NOISE_REF_MM / float(np.clip(thickness, *NOISE_THICKNESS_MM)))
        return float(np.clip(sd, *NOISE_SD_RANGE))


def _contrast(r: np.random.Generator) -> Contrast:
    phase = PHASES[int(r.choice(3, p=(0.5, 0.2, 0.3)))]
    u = r.uniform
    if phase == "non_contrast":
        blood = u(30, 50)
        return Contrast(phase, blood, blood + u(-3, 3), blood, blood, blood + u(0, 8), None, None)
    if phase == "arterial":
        # Timing varies: sometimes the right heart is still denser than the aorta.
        return Contrast(phase, u(220, 420), u(150, 450), u(300, 1200), u(40, 80), u(80, 130), u(55, 80), u(70, 120))
    vein = u(130, 190)
    return Contrast(phase, vein + u(-10, 20), vein, vein, vein + u(-20, 10), u(90, 120), u(95, 125), u(105, 135))


def draw_look(seed: int, size_px: int | None) -> Look:
    r = rng_for(seed, Stream.LOOK)
    u = r.uniform
    size = int(r.choice(SIZE_CHOICES)) if size_px is None else int(size_px)
    thickness = float(r.choice(THICKNESS_CHOICES, p=np.array(THICKNESS_WEIGHTS) / sum(THICKNESS_WEIGHTS)))
    kernel = KERNELS[int(r.choice(3, p=(0.3, 0.35, 0.35)))]
    if kernel == "soft":
        fc, boost, peak, noise = u(0.3, 0.5), 0.0, 0.3, u(10, 25)
    elif kernel == "standard":
        fc, boost, peak, noise = u(0.5, 0.8), u(0.0, 0.15), u(0.3, 0.45), u(12, 32)
    else:
        fc, boost, peak, noise = u(0.9, 1.4), u(0.2, 0.7), u(0.35, 0.6), u(20, 50)
    streak = u(30, 150) if u() < 0.6 else 0.0
    return Look(
        size_px=size,
        thickness_mm=thickness,
        pixel_512=u(*PIXEL_MM_512),
        body_fit=u(0.82, 1.02),
        off_x=u(-30, 30),
        off_y=u(-25, 40),
        outside_hu=float(r.choice(OUTSIDE_CHOICES, p=OUTSIDE_WEIGHTS)),
        kernel=kernel,
        mtf_fc=fc,
        mtf_boost=boost,
        mtf_peak=peak,
        noise_ref=noise,
        contrast=_contrast(r),
        cupping=u(5, 35) if u() < 0.5 else 0.0,
        streak=streak,
        streak_w=u(2.5, 8),
        table_radius=u(350, 700),
        table_half_w=u(180, 260),
        table_shell=u(1.5, 3.0),
        table_foam=u(20, 50),
        hu_shell=u(150, 500),
        hu_foam=u(-980, -880),
        pad=u(5, 40) if u() < 0.6 else 0.0,
        hu_pad=u(-950, -150),
        compress=u(3, 25),
    )


def make_grid(look: Look, coverage: float, n_slices: int | None, lung_extent: float, body_extent: float) -> Grid:
    """The sampling grid: pixel spacing keeps the lungs (always) and part of the body in
    the reconstruction circle; a given slice count covers the whole chest."""
    size = look.size_px
    off = np.array([look.off_x, look.off_y])
    # The lungs must stay inside the circle: shrink the offset first, then widen the FOV.
    max_radius = PIXEL_MM_512_CAP * REFERENCE_MATRIX / 2.0 - FOV_LUNG_MARGIN
    if lung_extent + float(np.hypot(*off)) > max_radius:
        off *= max(max_radius - lung_extent, 0.0) / max(float(np.hypot(*off)), 1e-9)
    need_lung = 2.0 * (lung_extent + float(np.hypot(*off)) + FOV_LUNG_MARGIN) / REFERENCE_MATRIX
    need_body = 2.0 * body_extent * look.body_fit / REFERENCE_MATRIX
    pixel_512 = min(max(look.pixel_512, need_lung, min(need_body, PIXEL_MM_512[1])), PIXEL_MM_512_CAP)
    pixel_512 = max(pixel_512, need_lung)
    dxy = pixel_512 * REFERENCE_MATRIX / size
    nz = max(int(round(coverage / look.thickness_mm)), 8) if n_slices is None else int(n_slices)
    dz = coverage / nz
    sub = int(min(max(math.ceil(dz / PV_FINE_MM - 1e-9), 1), PV_MAX_SUB))
    # The image centre sits at -offset in the patient frame (the patient is off-centre).
    return Grid(
        nz=nz, sub=sub, ny=size, nx=size, dz=float(dz), dxy=float(dxy), iso_x=float(-off[0]), iso_y=float(-off[1])
    )


def _mtf(look: Look, f: np.ndarray) -> np.ndarray:
    m = np.exp(-((f / look.mtf_fc) ** 2))
    if look.mtf_boost > 0:
        g = (f / look.mtf_peak) ** 2
        m = m * (1.0 + look.mtf_boost * g * np.exp(1.0 - g))
    return m


def fov_outside(grid: Grid) -> np.ndarray:
    """Pixels (ny, nx) outside the reconstruction circle."""
    j = np.arange(grid.ny) - (grid.ny - 1) / 2.0
    i = np.arange(grid.nx) - (grid.nx - 1) / 2.0
    return (j[:, None] ** 2 + i[None, :] ** 2) > (min(grid.ny, grid.nx) / 2.0) ** 2


def form_image(hu: np.ndarray, grid: Grid, look: Look, seed: int) -> None:
    """Kernel, noise, reconstruction circle and value range, slice by slice, in place."""
    ny, nx = grid.ny, grid.nx
    fy = sfft.fftfreq(ny, d=grid.dxy)[:, None]
    fx = sfft.rfftfreq(nx, d=grid.dxy)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    mtf = _mtf(look, f)
    amp = np.sqrt(f) * mtf  # sqrt of the noise power spectrum
    # Normalise so that the synthesised noise has unit sd: with irfft2's 1/N, the output
    # variance is sum |S|^2 over the full spectrum / N^2 for unit-variance bins.
    full_f = np.sqrt(sfft.fftfreq(ny, d=grid.dxy)[:, None] ** 2 + sfft.fftfreq(nx, d=grid.dxy)[None, :] ** 2)
    full_power = float(((np.sqrt(full_f) * _mtf(look, full_f)) ** 2).sum())
    sd = look.noise_sd(grid.dz)
    # Bins with uniform real and imaginary parts on [-1/2, 1/2] (variance 1/12 each, 1/6
    # in all): by the central limit theorem the image noise is Gaussian; uniforms are
    # cheap to draw.
    scale = sd * (ny * nx) / math.sqrt(full_power / 6.0)
    noise_amp = (amp * scale).astype(np.float32)
    mtf32 = mtf.astype(np.complex64)
    outside = fov_outside(grid)
    rng = rng_for(seed, Stream.NOISE)
    half = (ny, nx // 2 + 1)
    for k in range(grid.nz):
        spec = sfft.rfft2(hu[k], workers=1)
        spec *= mtf32
        re = rng.random(half, dtype=np.float32)
        re -= 0.5
        im = rng.random(half, dtype=np.float32)
        im -= 0.5
        spec += noise_amp * (re + 1j * im)
        out = sfft.irfft2(spec, s=(ny, nx), workers=1)
        np.clip(out, HU_MIN, HU_MAX, out=out)
        out[outside] = look.outside_hu
        hu[k] = out
