"""Inputs for the writer tests: a small CT volume, its source datasets and an
AnalysisResult built directly from pipeline.types (no chain, no model), seeded.

The decision is given by hand (default: the most probable class, confidently, in
domain); ``make_indeterminate_inputs`` and ``make_out_of_domain_inputs`` give the two
decisions that name no class.

The volume is the shared phantom (pipeline.phantom) when it is there, else a small
synthetic chest: two ellipsoid lungs in a soft-tissue body, a lesion in one lung.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomnode.synthetic import ct_datasets
from pipeline.severity import quantify_severity
from pipeline.types import (
    CLASS_NAMES,
    TASK_NAMES,
    AnalysisResult,
    AttentionMap,
    CaseScores,
    CTVolume,
    Decision,
    DomainCheck,
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


#: Operating points of a model card, as the chain passes them in Decision.thresholds.
TEST_THRESHOLDS = {"pneumonia_vs_non_pneumonia": 0.5, "covid19_vs_cap": 0.5, "covid19_vs_influenza": 0.5, "margin": 0.1}
#: A study like the training data.
IN_DOMAIN = DomainCheck(
    score=0.3, in_domain=True, components={"deep_features": 0.3, "lung_hu_median": 0.2, "noise_hu": 0.1}
)
#: The class probabilities of an indeterminate split (CAP 50.2% vs COVID-19 49.7%).
SPLIT_PROBABILITIES = (0.001, 0.502, 0.0, 0.497)


_WORDS = {"non_pneumonia": "no pneumonia", "cap": "CAP", "influenza": "influenza", "covid19": "COVID-19"}


def confident_decision(probabilities: dict[str, float], thresholds: dict[str, float] = TEST_THRESHOLDS) -> Decision:
    """The most probable class, with the reason a chain would give."""
    ranked = sorted(probabilities, key=lambda n: -probabilities[n])
    first, second = ranked[0], ranked[1]
    reason = (
        f"{_WORDS[first]} {100 * probabilities[first]:.1f}% leads {_WORDS[second]} "
        f"{100 * probabilities[second]:.1f}% by more than the {100 * thresholds['margin']:g}-point margin, "
        f"and the fused scores agree with the bundle's operating points"
    )
    return Decision(value=first, reason=reason, thresholds=dict(thresholds))


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
        lungs |= (
            ((x - cx) / (0.14 * size)) ** 2 + ((y - yc) / (0.24 * size)) ** 2 + ((z - zc) / (0.55 * n_slices)) ** 2
        ) <= 1
    hu[lungs] = -850.0
    lesion = lungs & (
        (
            ((x - 0.32 * size) / (0.07 * size)) ** 2
            + ((y - yc) / (0.08 * size)) ** 2
            + ((z - zc) / (0.2 * n_slices)) ** 2
        )
        <= 1
    )
    hu[lesion] = -450.0
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    return hu, lungs, lesion


def toy_lobe_map(lungs: np.ndarray) -> np.ndarray:
    """Five lobes cut from a lung mask by straight planes (a writer's input, not anatomy):
    image columns left of the middle are the patient's right (LPS); the right lung in
    thirds along z, the left in halves (labels in pipeline.severity.LOBES order)."""
    nz, _, nx = lungs.shape
    z = np.arange(nz)[:, None, None]
    right = np.broadcast_to((np.arange(nx) < nx // 2)[None, None, :], lungs.shape)
    thirds = np.minimum(3 * z // nz, 2)
    halves = np.minimum(2 * z // nz, 1)
    lobes = np.where(right, 1 + thirds, 4 + halves).astype(np.uint8)
    return np.where(lungs, lobes, 0).astype(np.uint8)


def make_inputs(
    seed: int = 0,
    n_slices: int = 24,
    size: int = 96,
    label: str = "covid19",
    infected: bool = True,
    with_attention: bool = True,
    decision: Decision | None = None,
    domain: DomainCheck | None = None,
    probabilities: Sequence[float] | None = None,
    with_lobes: bool = True,
) -> WriterInputs:
    """A consistent volume / sources / result triple. ``label``: the phantom's class and the
    most probable class; ``infected=False`` gives a result with no infectious slice (the
    fallbacks), ``with_attention=False`` no Grad-CAM. ``decision`` defaults to ``label``
    with a plausible reason and TEST_THRESHOLDS, ``domain`` to IN_DOMAIN;
    ``probabilities`` (in CLASS_NAMES order) replaces the default confident ones;
    ``with_lobes`` gives the lung a lobe map (toy_lobe_map) and the severity its lobes."""
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
    volume = CTVolume(
        hu=hu.astype(np.float32),
        spacing_mm=spacing,
        origin_mm=origin,
        direction=direction,
        slice_uids=uids,
        slice_numbers=tuple(range(1, nz + 1)),
    )
    sources = ct_datasets(
        volume,
        study_uid=str(generate_uid(entropy_srcs=[f"study-{seed}"])),
        series_uid=str(generate_uid(entropy_srcs=[f"series-{seed}"])),
    )

    rng = np.random.default_rng(seed)
    lung_z = np.flatnonzero(lungs.reshape(nz, -1).sum(1) > 50)
    classified = lung_z[:: max(1, len(lung_z) // 10)]
    raw = rng.dirichlet(np.ones(len(CLASS_NAMES)), size=len(classified))
    slice_scores = SliceScores(z_indices=classified.astype(int), probabilities=raw)
    probs = (
        np.array([0.05, 0.1, 0.15, 0.7])
        if label == "covid19"
        else np.roll([0.7, 0.1, 0.15, 0.05], CLASS_NAMES.index(label))
    )
    if probabilities is not None:
        probs = np.asarray(probabilities, dtype=float)
    probs_by_class = dict(zip(CLASS_NAMES, map(float, probs), strict=True))
    top = CLASS_NAMES[int(np.argmax(probs))]
    case = CaseScores(
        probabilities=probs_by_class, tasks=dict(zip(TASK_NAMES, (0.93, 0.81, 0.77), strict=True)), label=top, top_k=3
    )

    lesion_area = lesion.reshape(nz, -1).sum(1)
    scores = np.where(lungs.reshape(nz, -1).sum(1) > 50, np.clip(lesion_area / 40.0, 0, 1), np.nan)
    scores = np.round(scores, 3)
    infected_z = tuple(int(z) for z in np.flatnonzero(np.nan_to_num(scores) >= 0.5)) if infected else ()
    if not infected:
        scores = np.where(np.isnan(scores), np.nan, 0.1)

    attention = []
    if with_attention:
        explain_z = list(infected_z[:3]) or [int(z) for z in classified[:2]]
        yy, xx = np.mgrid[0 : hu.shape[1], 0 : hu.shape[2]]
        for z in explain_z:
            cy, cx = np.argwhere(lesion[z]).mean(0) if lesion[z].any() else np.argwhere(lungs[z]).mean(0)
            heat = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.08 * size) ** 2))).astype(np.float32)
            regions = (heat > 0.5) & lungs[z]
            attention.append(AttentionMap(z_index=z, heat=heat, regions=regions, target_class=top))

    decision = decision or confident_decision(probs_by_class)
    lobes = toy_lobe_map(lungs.astype(bool)) if with_lobes else None
    severity = (
        None
        if decision.value == "out_of_domain"
        else quantify_severity(lungs, lesion, volume.voxel_volume_ml, hu, lobes=lobes)
    )
    result = AnalysisResult(
        lung_mask=LungMask(mask=lungs.astype(bool), method="classical", lobes=lobes),
        slice_scores=slice_scores,
        case_scores=case,
        infected=InfectedSlices(scores=scores.astype(np.float32), z_indices=infected_z, threshold=0.5),
        attention=tuple(attention),
        phenotype=None,
        lung_volume_ml=float(lungs.sum() * volume.voxel_volume_ml),
        model=TEST_MODEL,
        decision=decision,
        domain=domain or IN_DOMAIN,
        severity=severity,
    )
    return WriterInputs(volume=volume, sources=sources, result=result, lesion=lesion.astype(bool))


def make_indeterminate_inputs(seed: int = 0, n_slices: int = 24, size: int = 96, **kwargs) -> WriterInputs:
    """CAP 50.2% vs COVID-19 49.7% (within the 10-point margin): decision indeterminate,
    with infectious slices found by the locator and Grad-CAM of the most probable class."""
    decision = Decision(
        value="indeterminate",
        reason="CAP 50.2% and COVID-19 49.7% are within the 10-point margin",
        thresholds=dict(TEST_THRESHOLDS),
    )
    return make_inputs(
        seed, n_slices, size, label="cap", decision=decision, probabilities=SPLIT_PROBABILITIES, **kwargs
    )


def make_out_of_domain_inputs(
    seed: int = 0, n_slices: int = 24, size: int = 96, score: float = 1.7, **kwargs
) -> WriterInputs:
    """A study unlike the training data (out-of-domain score 1.7) whose classifier still
    says CAP 99%: the decision is out_of_domain and no object may claim CAP."""
    domain = DomainCheck(
        score=score,
        in_domain=False,
        components={"deep_features": score, "lung_hu_median": 0.4, "noise_hu": 0.2},
        reasons=("deep features are far from the training data's",),
    )
    decision = Decision(
        value="out_of_domain",
        reason=f"out-of-domain score {score:.2f} is above its threshold 1",
        thresholds=dict(TEST_THRESHOLDS),
    )
    return make_inputs(
        seed,
        n_slices,
        size,
        label="cap",
        decision=decision,
        domain=domain,
        probabilities=(0.004, 0.99, 0.003, 0.003),
        **kwargs,
    )


#: One result per kind of decision (what every object must state): a confident COVID-19, a
#: confident CAP, an indeterminate split and an out-of-domain study.
DECISION_CASES = {
    "covid19": lambda: make_inputs(seed=3, n_slices=24, size=96, label="covid19"),
    "cap": lambda: make_inputs(seed=3, n_slices=24, size=96, label="cap"),
    "indeterminate": lambda: make_indeterminate_inputs(seed=3, n_slices=24, size=96),
    "out_of_domain": lambda: make_out_of_domain_inputs(seed=3, n_slices=24, size=96),
}


# --- dciodvfy ------------------------------------------------------------------------

#: Warnings dciodvfy gives for our objects on purpose (docs/objects.md says why).
#: Anything else fails the tests, so a new warning has to be looked at and documented.
EXPECTED_WARNINGS = (
    # Our private coding scheme (declared in Coding Scheme Identification Sequence).
    "Unrecognized defined term <99COVIDNODE> for value 1 of attribute <Coding Scheme Designator>",
    # Every object: the model's Contributing Equipment item carries a Device UID (IHE AIR).
    "Attribute is not present in standard DICOM IOD - (0x0018,0x1002) UI Device UID",
    # SC: geometry copied from the source slice so that viewers can place the overlay.
    "Attribute is not present in standard DICOM IOD - (0x0018,0x0050) DS Slice Thickness",
    "Attribute is not present in standard DICOM IOD - (0x0020,0x0032) DS Image Position (Patient)",
    "Attribute is not present in standard DICOM IOD - (0x0020,0x0037) DS Image Orientation (Patient)",
    "Attribute is not present in standard DICOM IOD - (0x0020,0x0052) UI Frame of Reference UID",
    "Attribute is not present in standard DICOM IOD - (0x0020,0x1040) LO Position Reference Indicator",
    "Attribute is not present in standard DICOM IOD - (0x0020,0x1041) DS Slice Location",
    # SEG: each frame's Frame Anatomy (the lung, Frame Laterality B / R / L) and its code.
    "Attribute is not present in standard DICOM IOD - (0x0020,0x9071) SQ Frame Anatomy Sequence",
    "Attribute is not present in standard DICOM IOD - (0x0020,0x9072) CS Frame Laterality",
    "Attribute is not present in standard DICOM IOD - (0x0008,0x2218) SQ Anatomic Region Sequence",
    "Attribute is not present in standard DICOM IOD - (0x0008,0x0100) SH Code Value",
    "Attribute is not present in standard DICOM IOD - (0x0008,0x0102) SH Coding Scheme Designator",
    "Attribute is not present in standard DICOM IOD - (0x0008,0x0104) LO Code Meaning",
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


#: PixelMed (Debian libpixelmed-java): the validators IHE AI Results testing names.
PIXELMED_JARS = ("/usr/share/java/pixelmed.jar", "/usr/share/java/commons-codec.jar")
#: PixelMed's compiled rules exceed the JDK's default XPath limits (JAXP0801003).
_JAVA_XPATH = ("-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0")
#: PixelMed errors that the standard does not support, each with the reason (docs/objects.md).
#: PixelMed errors we leave on purpose (docs/objects.md says why); none today: its General
#: Series rule wanted Laterality for the SEG until each frame said its Frame Laterality.
PIXELMED_KNOWN_ERRORS: tuple[str, ...] = ()


def pixelmed(dataset: Dataset, tmp_dir, name: str = "object.dcm") -> Validation:
    """Validate ``dataset`` with PixelMed: DicomSRValidator (IOD and templates, TID 1500
    and TID 2010 included) for SR documents, DicomInstanceValidator otherwise. This
    PixelMed build knows few non-SR IODs (SEG among them): "IOD (SOP Class) unrecognized"
    is returned as an error so that a test states which objects it covers."""
    import os
    import shutil
    import subprocess

    import pytest

    java = shutil.which("java")
    if java is None or not all(os.path.exists(j) for j in PIXELMED_JARS):
        pytest.skip(
            "PixelMed not installed (Debian packages libpixelmed-java, default-jre-headless; .ci/run installs them)"
        )
    path = tmp_dir / name
    dataset.save_as(path, enforce_file_format=True)
    is_sr = dataset.Modality in ("SR", "KO")
    tool = "com.pixelmed.validate.DicomSRValidator" if is_sr else "com.pixelmed.validate.DicomInstanceValidator"
    proc = subprocess.run(
        [java, *_JAVA_XPATH, "-cp", ":".join(PIXELMED_JARS), tool, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    lines = [line.strip() for line in output.splitlines()]
    errors = [line for line in lines if line.startswith("Error") or "unrecognized" in line or "Exception" in line]
    if proc.returncode != 0 and not errors:
        errors.append(f"PixelMed exited with {proc.returncode}")
    return Validation(errors=errors, warnings=[line for line in lines if line.startswith("Warning")], output=output)
