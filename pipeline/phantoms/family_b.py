"""Phantom family B: a second, independently constructed synthetic chest CT.

``make_phantom_b(label, seed, n_slices=None, size_px=None) -> Phantom`` has the output
contract of family A (``pipeline.phantom.make_phantom``): the shared ``Phantom`` type,
axes z/y/x, LPS frame with the identity direction (+x patient left, +y posterior, z
index 0 the most inferior slice), HU float32, ``lung_mask`` covering the lungs with
everything inside them, ``lesion_mask`` (lesions of infection only, inside the lung
mask), ``infected_z`` by the shared ``INFECTED_MIN_PIXELS`` rule and ``lobe_mask`` (the
lobe of each lung voxel, from the anatomy's fissure surfaces). Only ``Phantom``
and ``INFECTED_MIN_PIXELS`` are imported from family A.

How a case is built (each step its own module):

1. ``anatomy``: the patient, drawn from the seed: an implicit-field chest (polar
   superellipse cavity with Fourier perturbations, CSG mediastinum, diaphragm domes,
   apical caps, fissures), habitus, arms, tissue values, parenchyma statistics.
2. ``scanner``: the acquisition, drawn from the seed: matrix, pixel spacing, offset,
   thickness, kernel, noise, phase, outside-FOV value, cupping, streaks, table.
3. ``vessels``: central tubes (aorta, pulmonary arteries and veins, cavae, trachea,
   main bronchi, oesophagus), ribs and clavicles, and vessel and airway trees grown by a
   vectorised random walk from the hila.
4. ``lesions``: the class's findings, drawn from (seed, label).
5. ``body``: the slices, painted at a fine z spacing (``PV_FINE_MM``); then tubes,
   trees, lesions, airways (air bronchograms) and masses are splatted or rendered in
   bounding boxes, and groups of fine slices are averaged into each output slice
   (partial volume over the slice thickness).
6. ``scanner.form_image``: kernel MTF, kernel-shaped noise, reconstruction circle.

Why it is independent of family A: no construction helper, constant, random stream or
shape model of ``pipeline.phantom`` is used; the lungs are carved out of one cavity
field instead of two drawn outlines, tubes are unions of splatted balls instead of
distances to segments, trees grow by random walk instead of by target splitting, the
texture is 1/f noise instead of smoothed white noise, and the image goes through a
kernel MTF and a shaped noise spectrum.

Cost (CPU seconds, one core, measured on a shared and loaded machine): 48 x 192 x 192
about 1.0-1.7 s, 300 x 512 x 512 about 9-12 s with a peak memory of about 1 GB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..phantom import INFECTED_MIN_PIXELS, Phantom
from ..types import CLASS_NAMES, CTVolume, InvalidInputError
from .anatomy import Anatomy, draw_anatomy
from .body import body_extent, lung_extent, paint_slices
from .common import Grid, Stream, rng_for
from .lesions import plan_lesions, render_lesions, render_masses
from .scanner import Look, draw_look, form_image, fov_outside, make_grid
from .vessels import central_tubes, grow_trees, render_airways, render_tree, render_tubes, rib_tubes

__all__ = ["make_phantom_b", "build_phantom_b", "phantom_b_grid", "TruthB"]

N_SLICES_RANGE = (8, 2000)
SIZE_PX_RANGE = (32, 1024)


@dataclass(frozen=True)
class TruthB:
    """What was drawn for a case beyond the ``Phantom``: the look, the findings, and the
    masks of structures that are not lesions (bool z/y/x, output grid)."""

    look: dict
    findings: dict
    effusion_mask: np.ndarray
    mass_mask: np.ndarray  # solid nodules and tumours (inside lung_mask, not lesions)
    extra: dict = field(default_factory=dict)


def _check(label: str, seed: int, n_slices: int | None, size_px: int | None) -> None:
    if label not in CLASS_NAMES:
        raise InvalidInputError(f"Phantom label {label!r} is not one of {CLASS_NAMES}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"Phantom seed must be a non-negative integer, got {seed!r}")
    for name, value, (lo, hi) in (("n_slices", n_slices, N_SLICES_RANGE), ("size_px", size_px, SIZE_PX_RANGE)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= int(value) <= hi:
            raise InvalidInputError(f"{name} must be a whole number between {lo} and {hi}, got {value!r}")


def _setup(seed: int, n_slices: int | None, size_px: int | None) -> tuple[Anatomy, Look, Grid]:
    an = draw_anatomy(seed)
    look = draw_look(seed, None if size_px is None else int(size_px))
    grid = make_grid(look, an.coverage, None if n_slices is None else int(n_slices), lung_extent(an), body_extent(an))
    return an, look, grid


def phantom_b_grid(
    seed: int, n_slices: int | None = None, size_px: int | None = None
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape (z, y, x) and spacing_mm (z, y, x) that ``make_phantom_b`` would use, cheaply."""
    _check(CLASS_NAMES[0], seed, n_slices, size_px)
    _, _, grid = _setup(int(seed), n_slices, size_px)
    return (grid.nz, grid.ny, grid.nx), (grid.dz, grid.dxy, grid.dxy)


def _average(a: np.ndarray, grid: Grid) -> np.ndarray:
    """Mean over the fine samples of each output slice (float32)."""
    if grid.sub == 1:
        return a
    return a.reshape(grid.nz, grid.sub, grid.ny, grid.nx).mean(axis=1, dtype=np.float32)


def _majority(mask: np.ndarray, grid: Grid) -> np.ndarray:
    if grid.sub == 1:
        return mask.astype(bool, copy=False)
    count = mask.reshape(grid.nz, grid.sub, grid.ny, grid.nx).sum(axis=1, dtype=np.int16)
    return 2 * count >= grid.sub


def _lobe_labels(an: Anatomy, grid: Grid, lung: np.ndarray) -> np.ndarray:
    """Lobe ids (uint8, 1-5 as ``anatomy.LOBES``) of the output lung voxels, from the
    fissure surfaces at each output voxel's centre (``Anatomy.lobe_at``): truth only,
    computed after the image, so no draw and no pixel depends on it."""
    lobes = np.zeros(lung.shape, dtype=np.uint8)
    zs = np.flatnonzero(lung.any(axis=(1, 2)))
    if zs.size == 0:
        return lobes
    plane = np.asarray(lung[zs[0] : zs[-1] + 1].any(axis=0))
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    y, x = grid.y[box[0]][:, None], grid.x[box[1]][None, :]
    # The fissure heights do not depend on the slice: evaluated once, compared per slice.
    oblique = [np.broadcast_to(an.oblique(i, y, x), (y.size, x.size)) for i in (0, 1)]
    horizontal = np.broadcast_to(an.horizontal(y, x), (y.size, x.size))
    for k in zs:
        h = (k + 0.5) * grid.dz  # the centre of output slice k (fine samples average into it)
        here = lung[k][box]
        right = x < float(an.band(h)[0])
        u8 = np.uint8  # uint8 scalars keep the temporaries small
        lab = np.where(
            right,
            np.where(h < oblique[0], u8(3), np.where(h >= horizontal, u8(1), u8(2))),
            np.where(h < oblique[1], u8(5), u8(4)),
        )
        np.copyto(lobes[k][box], lab, where=here)
    return lobes


def _look_info(grid: Grid, look: Look, an: Anatomy) -> dict[str, object]:
    """What the scanner and the patient looked like (TruthB.look)."""
    con = look.contrast
    return {
        "size_px": grid.nx,
        "pixel_mm": grid.dxy,
        "slice_mm": grid.dz,
        "fine_samples": grid.sub,
        "kernel": look.kernel,
        "noise_sd": look.noise_sd(grid.dz),
        "phase": con.phase,
        "outside_hu": look.outside_hu,
        "offset_mm": (-grid.iso_x, -grid.iso_y),
        "cupping_hu": look.cupping,
        "streak_hu": look.streak if an.arms_down else 0.0,
        "table_pad_mm": look.pad,
        "arms_down": an.arms_down,
        "fat_mm": an.fat,
        "lung_median_hu": an.lung_median,
        "gravity_hu": an.gravity,
        "breast_mm": an.breast,
    }


def build_phantom_b(
    label: str, seed: int, n_slices: int | None = None, size_px: int | None = None
) -> tuple[Phantom, TruthB]:
    """``make_phantom_b`` and what was drawn (see TruthB)."""
    _check(label, seed, n_slices, size_px)
    seed = int(seed)
    an, look, grid = _setup(seed, n_slices, size_px)
    con = look.contrast
    trees_rng = rng_for(seed, Stream.TREES)
    tubes, hila = central_tubes(an, con, trees_rng)
    ribs = rib_tubes(an, trees_rng)
    arteries, veins, bronchi = grow_trees(an, hila, trees_rng, grid.dxy)
    plan = plan_lesions(label, seed, an, arteries)

    painted = paint_slices(grid, an, look, plan.effusions, seed)
    hu, side = painted.hu, painted.side
    render_tubes(hu, side, grid, tubes)  # central tubes leave the lungs
    render_tubes(hu, side, grid, ribs)
    render_tree(hu, side, grid, arteries, con.pa)
    render_tree(hu, side, grid, veins, con.aorta)  # pulmonary veins carry arterial blood
    lesion_f = np.zeros(grid.shape_fine, dtype=bool)
    render_lesions(hu, side, lesion_f, grid, an, plan, painted.lung_boxes)
    render_airways(hu, side, grid, bronchi, plan.wall_factor)
    mass_f = np.zeros(grid.shape_fine, dtype=bool)
    render_masses(hu, side, mass_f, grid, an, plan, painted.lung_boxes)

    hu = _average(hu, grid)
    lung = _majority(side > 0, grid)
    del side
    fov_in = ~fov_outside(grid)[None]
    lung &= fov_in
    lesion = _majority(lesion_f, grid) & lung
    mass = _majority(mass_f, grid) & lung
    effusion = (
        _majority(painted.effusion, grid) & ~lung & fov_in
        if painted.effusion is not None
        else np.zeros(lung.shape, dtype=bool)
    )
    form_image(hu, grid, look, seed)

    infected = np.flatnonzero(lesion.sum(axis=(1, 2)) > INFECTED_MIN_PIXELS)
    volume = CTVolume(
        hu=hu,
        spacing_mm=(grid.dz, grid.dxy, grid.dxy),
        origin_mm=(-(grid.nx - 1) / 2.0 * grid.dxy, -(grid.ny - 1) / 2.0 * grid.dxy, -(grid.nz - 1) * grid.dz),
        slice_numbers=tuple(range(1, grid.nz + 1)),
    )
    phantom = Phantom(
        volume=volume,
        lung_mask=lung,
        lesion_mask=lesion,
        label=label,
        infected_z=tuple(int(z) for z in infected),
        seed=seed,
        lobe_mask=_lobe_labels(an, grid, lung),
    )
    truth = TruthB(
        look=_look_info(grid, look, an),
        findings=dict(plan.findings),
        effusion_mask=effusion,
        mass_mask=mass,
        extra={"vessel_segments": int(len(arteries.p0) + len(veins.p0)), "airway_segments": int(len(bronchi.p0))},
    )
    return phantom, truth


def make_phantom_b(label: str, seed: int, n_slices: int | None = None, size_px: int | None = None) -> Phantom:
    """Build a family-B synthetic chest CT of class ``label`` (one of CLASS_NAMES).

    ``n_slices`` and ``size_px`` are drawn from the seed when None. The slices always
    cover the whole chest, so a given ``n_slices`` sets the slice spacing; a drawn one
    follows from a drawn clinical thickness (0.625-10 mm). Pixel spacing is about
    0.55-0.95 mm on a 512 matrix (wider for a large patient), scaled by 512 / size_px.
    The same arguments always give the same phantom.
    """
    return build_phantom_b(label, seed, n_slices, size_px)[0]
