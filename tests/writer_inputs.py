"""Inputs for the writer tests: a small CT volume, its source datasets and an
AnalysisResult built directly from pipeline.types (no chain, no model), seeded.

The volume is the shared phantom (pipeline.phantom) when it is there, else a small
synthetic chest: two ellipsoid lungs in a soft-tissue body, a lesion in one lung.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomnode.synthetic import ct_datasets
from pipeline.types import (
    CLASS_NAMES,
    TASK_NAMES,
    AnalysisResult,
    AttentionMap,
    CaseScores,
    CTVolume,
    InfectedSlices,
    LungMask,
    ModelInfo,
    SliceScores,
)

TEST_MODEL = ModelInfo(
    name="writer-test-bundle",
    version="1.2",
    sha256="ab" * 32,
    disclaimer="TEST MODEL for the writer tests. Not for clinical use.",
    trained_on_synthetic_data=True,
)


@dataclass(frozen=True)
class WriterInputs:
    volume: CTVolume
    sources: list[Dataset]
    result: AnalysisResult
    lesion: np.ndarray  # bool z/y/x


def _synthetic_chest(seed: int, n_slices: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:n_slices, 0:size, 0:size].astype(np.float32)
    zc, yc = (n_slices - 1) / 2, size / 2
    hu = np.full((n_slices, size, size), -1000.0, np.float32)
    body = ((x - size / 2) / (0.45 * size)) ** 2 + ((y - yc) / (0.35 * size)) ** 2 <= 1
    hu[body] = 40.0
    lungs = np.zeros_like(body)
    for cx in (0.32 * size, 0.68 * size):
        lungs |= (((x - cx) / (0.14 * size)) ** 2 + ((y - yc) / (0.24 * size)) ** 2
                  + ((z - zc) / (0.55 * n_slices)) ** 2) <= 1
    hu[lungs] = -850.0
    lesion = lungs & ((((x - 0.32 * size) / (0.07 * size)) ** 2 + ((y - yc) / (0.08 * size)) ** 2
                       + ((z - zc) / (0.2 * n_slices)) ** 2) <= 1)
    hu[lesion] = -450.0
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    return hu, lungs, lesion


def make_inputs(seed: int = 0, n_slices: int = 24, size: int = 96, label: str = "covid19",
                infected: bool = True, with_attention: bool = True) -> WriterInputs:
    """A consistent volume / sources / result triple. ``infected=False`` gives a result
    with no infectious slice (the fallbacks), ``with_attention=False`` no Grad-CAM."""
    try:
        from pipeline.phantom import make_phantom  # lands with the phantom engineer's work

        ph = make_phantom(label, seed, n_slices=n_slices, size_px=size)
        hu, lungs, lesion = ph.volume.hu, ph.lung_mask, ph.lesion_mask
        spacing, origin, direction = ph.volume.spacing_mm, ph.volume.origin_mm, ph.volume.direction
    except ImportError:
        hu, lungs, lesion = _synthetic_chest(seed, n_slices, size)
        spacing, origin, direction = (2.5, 0.8, 0.8), (-40.0, -40.0, -100.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    nz = hu.shape[0]
    uids = tuple(str(generate_uid(entropy_srcs=[f"writer-test-{seed}", str(z)])) for z in range(nz))
    volume = CTVolume(hu=hu.astype(np.float32), spacing_mm=spacing, origin_mm=origin, direction=direction,
                      slice_uids=uids, slice_numbers=tuple(range(1, nz + 1)))
    sources = ct_datasets(volume, study_uid=str(generate_uid(entropy_srcs=[f"study-{seed}"])),
                          series_uid=str(generate_uid(entropy_srcs=[f"series-{seed}"])))

    rng = np.random.default_rng(seed)
    lung_z = np.flatnonzero(lungs.reshape(nz, -1).sum(1) > 50)
    classified = lung_z[:: max(1, len(lung_z) // 10)]
    raw = rng.dirichlet(np.ones(len(CLASS_NAMES)), size=len(classified))
    slice_scores = SliceScores(z_indices=classified.astype(int), probabilities=raw)
    probs = np.array([0.05, 0.1, 0.15, 0.7]) if label == "covid19" else np.roll([0.7, 0.1, 0.15, 0.05],
                                                                               CLASS_NAMES.index(label))
    case = CaseScores(probabilities=dict(zip(CLASS_NAMES, map(float, probs))),
                      tasks=dict(zip(TASK_NAMES, (0.93, 0.81, 0.77))), label=label, top_k=3)

    lesion_area = lesion.reshape(nz, -1).sum(1)
    scores = np.where(lungs.reshape(nz, -1).sum(1) > 50, np.clip(lesion_area / 40.0, 0, 1), np.nan)
    scores = np.round(scores, 3)
    infected_z = tuple(int(z) for z in np.flatnonzero(np.nan_to_num(scores) >= 0.5)) if infected else ()
    if not infected:
        scores = np.where(np.isnan(scores), np.nan, 0.1)

    attention = []
    if with_attention:
        explain_z = list(infected_z[:3]) or [int(z) for z in classified[:2]]
        yy, xx = np.mgrid[0:hu.shape[1], 0:hu.shape[2]]
        for z in explain_z:
            cy, cx = np.argwhere(lesion[z]).mean(0) if lesion[z].any() else np.argwhere(lungs[z]).mean(0)
            heat = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.08 * size) ** 2))).astype(np.float32)
            regions = (heat > 0.5) & lungs[z]
            attention.append(AttentionMap(z_index=z, heat=heat, regions=regions, target_class=label))

    result = AnalysisResult(
        lung_mask=LungMask(mask=lungs.astype(bool), method="classical"),
        slice_scores=slice_scores,
        case_scores=case,
        infected=InfectedSlices(scores=scores.astype(np.float32), z_indices=infected_z, threshold=0.5),
        attention=tuple(attention),
        phenotype=None,
        lung_volume_ml=float(lungs.sum() * volume.voxel_volume_ml),
        model=TEST_MODEL,
    )
    return WriterInputs(volume=volume, sources=sources, result=result, lesion=lesion.astype(bool))


# --- dciodvfy ------------------------------------------------------------------------

#: Warnings dciodvfy gives for our objects on purpose (docs/objects.md says why).
#: Anything else fails the tests, so a new warning has to be looked at and documented.
EXPECTED_WARNINGS = (
    # Our private coding scheme (declared in Coding Scheme Identification Sequence).
    "Unrecognized defined term <99COVIDNODE> for value 1 of attribute <Coding Scheme Designator>",
    # SC: geometry copied from the source slice so that viewers can place the overlay.
    "Attribute is not present in standard DICOM IOD",
    "Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended SOP Class",
)


@dataclass(frozen=True)
class Validation:
    errors: list[str]
    warnings: list[str]
    output: str

    @property
    def unexpected_warnings(self) -> list[str]:
        return [w for w in self.warnings if not any(e in w for e in EXPECTED_WARNINGS)]


def dciodvfy(dataset: Dataset, tmp_dir, name: str = "object.dcm") -> Validation:
    """Write ``dataset`` to tmp_dir and validate it with dicom3tools' dciodvfy."""
    import shutil
    import subprocess

    import pytest

    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools; .ci/run installs it)")
    path = tmp_dir / name
    dataset.save_as(path, enforce_file_format=True)
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    lines = [line.strip() for line in output.splitlines()]
    return Validation(
        errors=[line for line in lines if line.startswith("Error")],
        warnings=[line for line in lines if line.startswith("Warning")],
        output=output,
    )


def to_bytes_and_back(dataset: Dataset) -> Dataset:
    """Encode as a DICOM file in memory and read it again (what a receiver sees)."""
    from io import BytesIO

    import pydicom

    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)
