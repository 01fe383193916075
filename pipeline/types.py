"""Frozen dataclasses passed between the stages of the AI chain.

Arrays are numpy, axis order z/y/x, HU in float32. Each class validates itself in
``__post_init__`` so that a bad value is caught where it is made, not three stages later.
Nothing here imports DICOM code: ``slice_uids`` are plain strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

#: Class names, in the network's output order. Used everywhere (JSON keys, CSV columns).
CLASS_NAMES: tuple[str, ...] = ("non_pneumonia", "cap", "influenza", "covid19")
#: Binary tasks of the task-specific fusion; the multi-way task is ``probabilities``.
TASK_NAMES: tuple[str, ...] = (
    "pneumonia_vs_non_pneumonia",
    "covid19_vs_cap",
    "covid19_vs_influenza",
)
#: What a report states: one of the classes, or that the model cannot stand behind one.
#: ``indeterminate``: the evidence is split (scores within the card's margin of a
#: threshold or of each other, or the classifier and the lesion locator disagree);
#: ``out_of_domain``: the study differs from the bundle's training data (pipeline.domain).
DECISIONS: tuple[str, ...] = CLASS_NAMES + ("indeterminate", "out_of_domain")
PNEUMONIA_CLASSES: tuple[str, ...] = ("cap", "influenza", "covid19")


class PipelineError(Exception):
    """Base class of every error the AI chain raises on purpose."""


class InvalidInputError(PipelineError, ValueError):
    """An input to a stage is not what the stage can work on (says what and why)."""


class NotAChestCTError(InvalidInputError):
    """The series holds too little lung to be a chest CT (head, abdomen only...): the node
    skips it with this reason instead of reporting on it."""


class ModelBundleError(PipelineError):
    """A model bundle is missing, unreadable or does not match its model card."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidInputError(message)


@dataclass(frozen=True)
class CTVolume:
    """A CT volume in Hounsfield units.

    ``hu`` is float32 z/y/x. ``spacing_mm`` is (z, y, x). ``slice_uids`` holds the SOP
    Instance UID of each z slice (empty for NIfTI input), ``slice_numbers`` the
    InstanceNumber of each z slice (empty for NIfTI input: then z indices are used).
    ``origin_mm`` and ``direction`` describe the patient frame like SimpleITK does
    (origin of voxel (0,0,0) in x,y,z; direction cosines row-major, 9 values).
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    slice_uids: tuple[str, ...] = ()
    slice_numbers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _require(
            isinstance(self.hu, np.ndarray) and self.hu.ndim == 3,
            f"CTVolume.hu must be a 3-D array (z, y, x), got {getattr(self.hu, 'shape', type(self.hu))}",
        )
        _require(self.hu.dtype == np.float32, f"CTVolume.hu must be float32, got {self.hu.dtype}")
        _require(
            len(self.spacing_mm) == 3 and all(s > 0 for s in self.spacing_mm),
            f"CTVolume.spacing_mm must be three positive numbers, got {self.spacing_mm}",
        )
        _require(len(self.direction) == 9, "CTVolume.direction must have 9 values")
        nz = self.hu.shape[0]
        _require(
            len(self.slice_uids) in (0, nz), f"CTVolume.slice_uids has {len(self.slice_uids)} entries for {nz} slices"
        )
        _require(
            len(self.slice_numbers) in (0, nz),
            f"CTVolume.slice_numbers has {len(self.slice_numbers)} entries for {nz} slices",
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)

    @property
    def voxel_volume_ml(self) -> float:
        z, y, x = self.spacing_mm
        return z * y * x / 1000.0

    def slice_label(self, z: int) -> int:
        """The number a reader knows a slice by: InstanceNumber, else the z index."""
        return int(self.slice_numbers[z]) if self.slice_numbers else int(z)


@dataclass(frozen=True)
class LungMask:
    """Binary lung mask aligned with a CTVolume (bool, z/y/x).

    ``lesion`` (bool, inside ``mask``) is the U-Net's map of lesions of infection when the
    bundle's U-Net has a lesion head; None otherwise (classical masks, 2-class U-Nets).
    ``lobes`` (uint8, 1-5 in ``pipeline.severity.LOBES`` order, 0 outside ``mask``) is the
    lobe map of ``pipeline.lobes`` when the chain's "lobes" stage ran (severity measured,
    ``ChainParams.lobe_segmentation``); None otherwise. It sits here, beside the lesion
    map, because both describe the lung voxels and the SEG writer reads them from here.
    """

    mask: np.ndarray
    method: str  # "unet" or "classical"
    lesion: np.ndarray | None = None
    lobes: np.ndarray | None = None

    def __post_init__(self) -> None:
        _require(
            isinstance(self.mask, np.ndarray) and self.mask.ndim == 3 and self.mask.dtype == bool,
            "LungMask.mask must be a 3-D bool array",
        )
        _require(self.method in ("unet", "classical"), f"LungMask.method unknown: {self.method!r}")
        if self.lesion is not None:
            _require(
                self.lesion.shape == self.mask.shape and self.lesion.dtype == bool,
                "LungMask.lesion must be a bool array of the mask's shape",
            )
        if self.lobes is not None:
            _require(
                self.lobes.shape == self.mask.shape and self.lobes.dtype == np.uint8,
                "LungMask.lobes must be a uint8 array of the mask's shape",
            )


@dataclass(frozen=True)
class LesionBurden:
    """How much of the lung the U-Net's lesion map covers (the chain's lesion evidence).

    ``slice_area_mm2`` has one entry per z slice; ``lung_share`` is lesion volume over
    lung volume (0 to 1).
    """

    volume_ml: float
    lung_share: float
    slice_area_mm2: np.ndarray

    def __post_init__(self) -> None:
        _require(
            self.volume_ml >= 0 and 0.0 <= self.lung_share <= 1.0,
            f"LesionBurden out of range: {self.volume_ml} ml, share {self.lung_share}",
        )
        _require(self.slice_area_mm2.ndim == 1, "LesionBurden.slice_area_mm2 must be 1-D (one per z slice)")

    def slices_with_lesion(self, min_area_mm2: float) -> np.ndarray:
        """Bool per z slice: at least ``min_area_mm2`` of lesion."""
        return self.slice_area_mm2 >= float(min_area_mm2)


@dataclass(frozen=True)
class Involvement:
    """Severity (pipeline.severity): one region's lesion volumes and share (``name``: a lobe name or "lungs")."""

    name: str
    volume_ml: float
    lesion_ml: float
    ggo_ml: float
    consolidation_ml: float
    involvement_percent: float
    score: int  # 0-5 for a lobe; for the lungs the MosMedData grade 0-4

    def __post_init__(self) -> None:
        _require(
            self.volume_ml >= 0 and self.lesion_ml >= 0 and 0.0 <= self.involvement_percent <= 100.0,
            f"Involvement {self.name}: volumes or share out of range",
        )


@dataclass(frozen=True)
class Severity:
    """Whole-lung involvement, the MosMedData grade and, with lobes, each lobe and the
    CT severity score (None without all five lobes)."""

    lungs: Involvement
    lobes: tuple[Involvement, ...]
    ct_severity_score: int | None
    consolidation_hu: float

    @property
    def mosmed_grade(self) -> int:
        return self.lungs.score

    @property
    def mosmed_label(self) -> str:
        return f"CT-{self.lungs.score}"


@dataclass(frozen=True)
class LesionPattern:
    """The lesion map's pattern (pipeline.lesion_pattern): named features and the class
    probabilities the bundle's lesion pattern model gives them (None: no such model)."""

    features: Mapping[str, float]
    probabilities: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        _require(all(np.isfinite(float(v)) for v in self.features.values()), "LesionPattern.features must be finite")
        if self.probabilities is not None:
            _require(set(self.probabilities) <= set(CLASS_NAMES), "LesionPattern.probabilities keys must be classes")
            _require(abs(sum(self.probabilities.values()) - 1.0) < 1e-4, "LesionPattern.probabilities must sum to 1")


@dataclass(frozen=True)
class SliceScores:
    """Per-slice class probabilities of the slice classifier.

    ``z_indices`` are the classified slices (sorted, unique); ``probabilities`` has one
    row per classified slice and one column per CLASS_NAMES entry, rows summing to 1.
    ``features`` (optional) holds each slice's penultimate-layer features, for t-SNE.
    """

    z_indices: np.ndarray
    probabilities: np.ndarray
    features: np.ndarray | None = None

    def __post_init__(self) -> None:
        _require(self.z_indices.ndim == 1, "SliceScores.z_indices must be 1-D")
        _require(
            self.probabilities.shape == (len(self.z_indices), len(CLASS_NAMES)),
            f"SliceScores.probabilities must be ({len(self.z_indices)}, {len(CLASS_NAMES)}), "
            f"got {self.probabilities.shape}",
        )
        _require(len(self.z_indices) > 0, "SliceScores needs at least one classified slice")
        _require(bool(np.all(np.diff(self.z_indices) > 0)), "SliceScores.z_indices must be sorted and unique")
        if self.features is not None:
            _require(
                self.features.shape[0] == len(self.z_indices),
                "SliceScores.features must have one row per classified slice",
            )


@dataclass(frozen=True)
class CaseScores:
    """Case-level scores after task-specific fusion.

    ``probabilities`` maps each of CLASS_NAMES to the multi-way probability (sum 1);
    ``tasks`` maps each of TASK_NAMES to the fused probability of the first-named class
    (pneumonia, COVID-19, COVID-19); ``label`` is the multi-way decision.
    """

    probabilities: Mapping[str, float]
    tasks: Mapping[str, float]
    label: str
    top_k: int

    def __post_init__(self) -> None:
        _require(tuple(self.probabilities) == CLASS_NAMES, f"CaseScores.probabilities keys must be {CLASS_NAMES}")
        _require(tuple(self.tasks) == TASK_NAMES, f"CaseScores.tasks keys must be {TASK_NAMES}")
        _require(abs(sum(self.probabilities.values()) - 1.0) < 1e-4, "CaseScores.probabilities must sum to 1")
        _require(self.label in CLASS_NAMES, f"CaseScores.label unknown: {self.label!r}")


@dataclass(frozen=True)
class InfectedSlices:
    """COVID-infectious slice locating.

    ``scores`` holds the (median-filtered) abnormality probability of every z slice
    (NaN where a slice had too little lung to be scored); ``z_indices`` the slices at
    or above ``threshold``.
    """

    scores: np.ndarray
    z_indices: tuple[int, ...]
    threshold: float

    def __post_init__(self) -> None:
        _require(self.scores.ndim == 1, "InfectedSlices.scores must be 1-D (one per z slice)")
        _require(all(0 <= z < len(self.scores) for z in self.z_indices), "InfectedSlices.z_indices out of range")


@dataclass(frozen=True)
class AttentionMap:
    """Guided Grad-CAM of one slice, at the slice's full resolution (y/x).

    ``heat`` is float32 in [0, 1]; ``regions`` the attentional regions (bool), kept inside
    the lung margin and larger than the minimum area; ``target_class`` the class explained.
    """

    z_index: int
    heat: np.ndarray
    regions: np.ndarray
    target_class: str
    #: Share of the raw Guided Grad-CAM (before it is confined to the lung margin for
    #: display) that lay inside the lung mask: where the network really looked.
    raw_inside_lung: float = float("nan")

    def __post_init__(self) -> None:
        _require(
            self.heat.ndim == 2 and self.regions.shape == self.heat.shape,
            "AttentionMap.heat and .regions must be 2-D arrays of one shape",
        )
        _require(self.regions.dtype == bool, "AttentionMap.regions must be bool")
        _require(self.target_class in CLASS_NAMES, f"AttentionMap.target_class unknown: {self.target_class!r}")


@dataclass(frozen=True)
class Phenotype:
    """Radiomics phenotype features of the attentional regions (name -> value)."""

    features: Mapping[str, float]
    region_count: int


@dataclass(frozen=True)
class DomainCheck:
    """How far a study lies from the bundle's training data (pipeline.domain).

    ``score`` is the largest of the component scores, each a distance divided by its
    threshold chosen on validation data, so ``score > 1`` means out of domain.
    ``components`` maps each check (e.g. "deep_features", "lung_hu_median", "noise_hu") to
    its scaled score; ``reasons`` says in plain words which checks failed.
    """

    score: float
    in_domain: bool
    components: Mapping[str, float]
    reasons: tuple[str, ...] = ()
    #: The lung's image statistics the check measured (pipeline.domain.IMAGE_STATS).
    image_stats: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(np.isfinite(self.score) and self.score >= 0, f"DomainCheck.score must be >= 0, got {self.score}")


@dataclass(frozen=True)
class Decision:
    """The decision a report states, made once from the bundle's operating points.

    ``value`` is one of DECISIONS; ``reason`` says why in plain words (for an
    indeterminate or out-of-domain decision, what the model could not stand behind);
    ``thresholds`` the operating points used (task name -> threshold, and "margin").
    """

    value: str
    reason: str
    thresholds: Mapping[str, float]

    def __post_init__(self) -> None:
        _require(self.value in DECISIONS, f"Decision.value unknown: {self.value!r}; expected one of {DECISIONS}")

    @property
    def is_finding(self) -> bool:
        """True when the decision names a class (not indeterminate, not out of domain)."""
        return self.value in CLASS_NAMES

    @property
    def is_pneumonia(self) -> bool:
        return self.value in PNEUMONIA_CLASSES


@dataclass(frozen=True)
class ModelInfo:
    """What a report must say about the models that made it."""

    name: str
    version: str
    sha256: str
    disclaimer: str
    trained_on_synthetic_data: bool


@dataclass(frozen=True)
class Radiograph:
    """A projection radiograph: a CT localizer (scout) or a plain DX/CR chest film.

    ``image`` is float32 rows/columns, larger where the body attenuates more (a
    radiograph's grey scale: bone bright, air dark), in the units of ``source``: for a
    localizer the line integral of the linear attenuation (dimensionless, ``-ln(I/I0)``),
    for a plain radiograph the stored values. Row 0 is the patient's head end, column 0
    the patient's right for an AP/PA view. ``pixel_spacing_mm`` is (row, column) at the
    isocentre (the plane of the CT's rotation axis); ``view`` "AP", "PA" or "LAT";
    ``source`` "localizer" (a CT scout or a phantom's projection) or "radiograph" (DX/CR).
    ``geometry`` holds the acquisition as numbers (source-to-isocentre and
    source-to-detector distances in mm, the first row's and column's position in the
    patient frame, ...), ``sop_uids`` the SOP Instance UID of each image it came from
    (empty for a projection made in memory).
    """

    image: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    view: str = "AP"
    source: str = "localizer"
    geometry: Mapping[str, float] = field(default_factory=dict)
    sop_uids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require(
            isinstance(self.image, np.ndarray) and self.image.ndim == 2 and min(self.image.shape) >= 8,
            f"Radiograph.image must be a 2-D array of at least 8x8, got "
            f"{getattr(self.image, 'shape', type(self.image))}",
        )
        _require(self.image.dtype == np.float32, f"Radiograph.image must be float32, got {self.image.dtype}")
        _require(bool(np.all(np.isfinite(self.image))), "Radiograph.image must be finite")
        _require(
            len(self.pixel_spacing_mm) == 2 and all(s > 0 for s in self.pixel_spacing_mm),
            f"Radiograph.pixel_spacing_mm must be two positive numbers, got {self.pixel_spacing_mm}",
        )
        _require(self.view in ("AP", "PA", "LAT"), f"Radiograph.view must be AP, PA or LAT, got {self.view!r}")
        _require(
            self.source in ("localizer", "radiograph"),
            f"Radiograph.source must be 'localizer' or 'radiograph', got {self.source!r}",
        )


@dataclass(frozen=True)
class CxrResult:
    """The CXR branch (pipeline.cxr): the radiograph model's scores and their fusion with the CT.

    ``classes`` are the CXR model's classes (its card; the paper's COVID-19 vs CAP by
    default), ``probabilities`` its output over them (sum 1). ``fused`` maps the classes
    both the CXR model and the CT know to the mean of the two models' scores over those
    classes; ``fused_decision`` is what the fusion decides (one of DECISIONS). Both are
    None when nothing was fused: the CT decision is indeterminate or out of domain (a
    result the model cannot stand behind is not overridden by the radiograph), the CT
    names a class the CXR model does not know, or there is no CT (a radiograph alone).
    ``reason`` says which, in plain words. ``radiograph`` is the image it read (its
    ``sop_uids`` are the images a report references). ``ct`` holds the CT's scores over
    the same classes (what the fusion averages), None without a CT or out of domain.
    """

    classes: tuple[str, ...]
    probabilities: Mapping[str, float]
    radiograph: Radiograph
    ct: Mapping[str, float] | None
    fused: Mapping[str, float] | None
    fused_decision: str | None
    reason: str
    model_name: str = "cxr"

    def __post_init__(self) -> None:
        _require(len(self.classes) >= 2, f"CxrResult.classes needs at least two classes, got {self.classes}")
        _require(set(self.classes) <= set(CLASS_NAMES), f"CxrResult.classes must be among {CLASS_NAMES}")
        _require(tuple(self.probabilities) == self.classes, "CxrResult.probabilities keys must be its classes")
        _require(abs(sum(self.probabilities.values()) - 1.0) < 1e-4, "CxrResult.probabilities must sum to 1")
        _require(
            (self.fused is None) == (self.fused_decision is None), "CxrResult: fused and fused_decision go together"
        )
        if self.fused is not None:
            _require(abs(sum(self.fused.values()) - 1.0) < 1e-4, "CxrResult.fused must sum to 1")
            _require(self.fused_decision in DECISIONS, f"CxrResult.fused_decision unknown: {self.fused_decision!r}")

    @property
    def label(self) -> str:
        """The CXR model's most probable class (not a decision: see ``fused_decision``)."""
        return max(self.classes, key=lambda c: (float(self.probabilities[c]), -self.classes.index(c)))

    def summary(self) -> dict:
        """The ``cxr`` entry of the JSON summary (``dicomnode analyze``, FHIR, HL7)."""
        return {
            "classes": list(self.classes),
            "probabilities": {k: round(float(v), 4) for k, v in self.probabilities.items()},
            "label": self.label,
            "ct_probabilities": None if self.ct is None else {k: round(float(v), 4) for k, v in self.ct.items()},
            "fused_probabilities": None
            if self.fused is None
            else {k: round(float(v), 4) for k, v in self.fused.items()},
            "fused_decision": self.fused_decision,
            "reason": self.reason,
            "source": self.radiograph.source,
            "view": self.radiograph.view,
            "images": list(self.radiograph.sop_uids),
            "model": self.model_name,
        }


@dataclass(frozen=True)
class AnalysisResult:
    """Everything the chain found for one CT volume."""

    lung_mask: LungMask
    slice_scores: SliceScores
    case_scores: CaseScores
    infected: InfectedSlices
    attention: tuple[AttentionMap, ...]
    phenotype: Phenotype | None
    lung_volume_ml: float
    model: ModelInfo
    decision: Decision
    domain: DomainCheck
    timings_s: Mapping[str, float] = field(default_factory=dict)
    #: The U-Net's lesion evidence; None when the bundle's U-Net has no lesion head.
    lesion: LesionBurden | None = None
    #: Where the lesions lie and what type that points to; None without a lesion map.
    lesion_pattern: LesionPattern | None = None
    #: How much of the lungs (and lobes) the lesions involve; None without a lesion map or
    #: out of domain (the map of a study unlike the training data is not measured).
    severity: Severity | None = None
    #: The CXR branch (the study's localizer or a radiograph): None without one, or when
    #: the bundle has no CXR model.
    cxr: CxrResult | None = None

    def _severity_summary(self) -> dict:
        s = self.severity
        return {
            "lung_involvement_percent": None if s is None else round(s.lungs.involvement_percent, 2),
            "mosmed_grade": None if s is None else s.mosmed_label,
            "ct_severity_score": None if s is None else s.ct_severity_score,
            "ggo_volume_ml": None if s is None else round(s.lungs.ggo_ml, 1),
            "consolidation_volume_ml": None if s is None else round(s.lungs.consolidation_ml, 1),
            "lobes": []
            if s is None
            else [
                {"name": lobe.name, "involvement_percent": round(lobe.involvement_percent, 2), "score": lobe.score}
                for lobe in s.lobes
            ],
        }

    def summary(self, volume: CTVolume) -> dict:
        """The JSON summary that ``dicomnode analyze`` prints."""
        return {
            "decision": self.decision.value,
            "decision_reason": self.decision.reason,
            "thresholds": {k: float(v) for k, v in self.decision.thresholds.items()},
            "out_of_domain_score": round(float(self.domain.score), 4),
            "domain_checks": {k: round(float(v), 4) for k, v in self.domain.components.items()},
            "label": self.case_scores.label,
            "probabilities": {k: float(v) for k, v in self.case_scores.probabilities.items()},
            "tasks": {k: float(v) for k, v in self.case_scores.tasks.items()},
            "infected_slices": [volume.slice_label(z) for z in self.infected.z_indices],
            "lung_volume_ml": round(float(self.lung_volume_ml), 1),
            "lesion_volume_ml": None if self.lesion is None else round(float(self.lesion.volume_ml), 1),
            "lesion_share_of_lung": None if self.lesion is None else round(float(self.lesion.lung_share), 5),
            "lesion_pattern_probabilities": (
                None
                if self.lesion_pattern is None or self.lesion_pattern.probabilities is None
                else {k: round(float(v), 4) for k, v in self.lesion_pattern.probabilities.items()}
            ),
            **self._severity_summary(),
            "lung_segmentation": self.lung_mask.method,
            "model": {"name": self.model.name, "version": self.model.version, "sha256": self.model.sha256},
            "timings_s": {k: round(float(v), 3) for k, v in self.timings_s.items()},
            "cxr": None if self.cxr is None else self.cxr.summary(),
            "disclaimer": self.model.disclaimer,
        }
