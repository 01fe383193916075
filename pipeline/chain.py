"""The AI chain composed: CTVolume + loaded models -> AnalysisResult (pure compute).

Like an application's ``compose()``: it only wires the stages, in the order of
METHOD.md, and times each one. Lung segmentation (U-Net when the bundle has one, else
the classical method) -> lung slices (too little lung: not a chest CT) -> at most
``max_slices`` of them classified -> out-of-domain check (pipeline.domain) ->
task-specific fusion -> lesion burden (a 3-class U-Net's lesion map) -> every lung slice
located (a reported slice needs a lesion too, when there is a map) -> the lesion pattern
and the type it points to (pipeline.lesion_pattern) -> the decision from the bundle's
operating points (pipeline.decision) -> lobes (pipeline.lobes, kept in the LungMask) and
severity per lobe (pipeline.severity), with a lesion map and a decision in domain ->
Guided Grad-CAM of the slices that drive it (none out of domain) -> radiomics phenotype
of the attentional regions (pneumonia decisions).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Mapping

import numpy as np

from .classify import classify_slices
from .decision import decide
from .domain import check_domain, image_statistics
from .explain import explain_slices, select_slices
from .fusion import fuse_slice_scores
from .lesion_burden import measure_lesion_burden
from .lesion_pattern import lesion_pattern_features
from .lobes import segment_lobes
from .locate import locate_infected
from .lung import segment_lungs
from .models import ModelBundle
from .params import ChainParams
from .phenotype import compute_phenotype
from .preprocess import lung_slice_indices, min_lung_pixels_for, sample_slices
from .severity import quantify_severity
from .types import (
    AnalysisResult,
    AttentionMap,
    CaseScores,
    CTVolume,
    Decision,
    InfectedSlices,
    LesionPattern,
    LungMask,
    NotAChestCTError,
    Severity,
    SliceScores,
)

#: Keys of AnalysisResult.timings_s, in chain order.
STAGES = (
    "lung_segmentation",
    "classification",
    "domain_check",
    "fusion",
    "locating",
    "lesion_pattern",
    "decision",
    "lobes",
    "severity",
    "explanation",
    "phenotype",
)


def sized_for(params: ChainParams, arch: Mapping[str, Any] | None, field: str = "input_size") -> ChainParams:
    """``params`` with the input size a network was trained at (its architecture dict says
    it); a bundle trained at another size than the default is then fed what it expects."""
    size = (arch or {}).get("input_size")
    # ``field`` names an int field of ChainParams; mypy cannot check a keyword made at run time.
    return replace(params, **{field: int(size)}) if size else params  # type: ignore[arg-type]


def _chest_lung_ml(volume: CTVolume, lung: LungMask, lung_z: np.ndarray, params: ChainParams) -> float:
    """The lung volume (ml); NotAChestCTError when it is too little for a chest CT."""
    lung_ml = float(np.count_nonzero(lung.mask)) * volume.voxel_volume_ml
    if len(lung_z) == 0 or lung_ml < params.min_chest_lung_ml:
        need = min_lung_pixels_for(volume.shape[1:], params)
        raise NotAChestCTError(
            f"not a chest CT: the {volume.shape[0]}-slice volume holds {lung_ml:.0f} ml of lung "
            f"({lung.method} segmentation; a chest CT holds at least {params.min_chest_lung_ml:.0f} ml, and a slice "
            f"needs more than {need:.0f} lung pixels); send a chest CT series covering the lungs"
        )
    return lung_ml


def _lesion_pattern(volume: CTVolume, lung: LungMask, models: ModelBundle) -> LesionPattern | None:
    """Where the lesions lie and how dense they are, with the bundle's pattern model's
    probabilities when it has one (None without lesion features)."""
    features = lesion_pattern_features(volume, lung)
    if features is None:
        return None
    return LesionPattern(
        features=features,
        probabilities=(None if models.lesion_pattern is None else models.lesion_pattern.probabilities(features)),
    )


def _stage_params(params: ChainParams, models: ModelBundle) -> tuple[ChainParams, ChainParams, ChainParams]:
    """The parameters of the segmentation, classifier and locator stages: each network's
    input size from its card, the locator's threshold from the operating points."""
    card = models.card
    seg_params = sized_for(params, card.architecture("segmentation"), "unet_input_size")
    cls_params = sized_for(params, card.architecture("classifier"))
    loc_params = sized_for(params, card.architecture("locator"))
    return seg_params, cls_params, replace(loc_params, locator_threshold=models.operating_points.locator_threshold)


def _with_lobes(volume: CTVolume, lung: LungMask, params: ChainParams) -> LungMask:
    """``lung`` with its lobe map (pipeline.lobes) when ``params`` asks for lobes."""
    if not params.lobe_segmentation:
        return lung
    # z grows towards the head unless the series' direction says otherwise (as lung.py reads it).
    superior_up = float(volume.direction[8]) >= 0.0
    return replace(lung, lobes=segment_lobes(volume.hu, lung.mask, volume.spacing_mm, superior_up))


def _severity(volume: CTVolume, lung: LungMask, params: ChainParams) -> Severity:
    """Whole-lung and (with a lobe map) per-lobe involvement of the U-Net's lesion map."""
    assert lung.lesion is not None  # the chain measures severity only with a lesion map
    return quantify_severity(
        lung.mask,
        lung.lesion,
        volume.voxel_volume_ml,
        volume.hu,
        lobes=lung.lobes,
        consolidation_hu=params.severity_consolidation_hu,
        min_involved_ml=params.severity_min_involved_ml,
    )


class _Stopwatch:
    """Seconds per stage of one analysis (AnalysisResult.timings_s), and the total."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.start = self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = now - self.last
        self.last = now

    def finish(self) -> dict[str, float]:
        self.timings["total"] = time.perf_counter() - self.start
        return self.timings


def _explain(
    volume: CTVolume,
    lung: LungMask,
    case: CaseScores,
    slice_scores: SliceScores,
    infected: InfectedSlices,
    decision: Decision,
    models: ModelBundle,
    params: ChainParams,
    cls_params: ChainParams,
) -> tuple[AttentionMap, ...]:
    """Guided Grad-CAM of the chosen slices; none out of domain (nothing the model can
    stand behind to explain)."""
    if decision.value == "out_of_domain":
        return ()
    target, explain_z = select_slices(case, slice_scores, infected, params, decision.value)
    return tuple(explain_slices(volume, lung, explain_z, target, models.classifier, cls_params))


def analyze(volume: CTVolume, models: ModelBundle, params: ChainParams) -> AnalysisResult:
    """Run the whole chain on one CT volume.

    Raises NotAChestCTError (an InvalidInputError) when the series holds too little lung (not a
    chest CT, or a lung window outside the field of view).
    """
    clock = _Stopwatch()
    lap = clock.lap
    device = models.device
    op = models.operating_points
    seg_params, cls_params, loc_params = _stage_params(params, models)
    lung = segment_lungs(volume, seg_params, models.segmentation, device)
    lap("lung_segmentation")

    lung_z = lung_slice_indices(lung, params)
    lung_ml = _chest_lung_ml(volume, lung, lung_z, params)
    slice_scores = classify_slices(
        volume, lung, sample_slices(lung_z, params.max_slices), models.classifier, cls_params, device
    )
    lap("classification")

    domain = check_domain(slice_scores.features, image_statistics(volume, lung), models.domain_reference)
    lap("domain_check")

    case = fuse_slice_scores(slice_scores, params)
    lap("fusion")

    lesion = measure_lesion_burden(volume, lung)
    gate = None if lesion is None else lesion.slices_with_lesion(params.lesion_slice_min_mm2)
    infected = locate_infected(volume, lung, lung_z, models.locator, loc_params, device, gate)
    lap("locating")

    pattern = _lesion_pattern(volume, lung, models)
    lap("lesion_pattern")

    decision = decide(case, infected, domain, op, lesion, pattern)
    lap("decision")

    measure_severity = lung.lesion is not None and decision.value != "out_of_domain"
    lung = _with_lobes(volume, lung, params) if measure_severity else lung
    lap("lobes")

    severity = _severity(volume, lung, params) if measure_severity else None
    lap("severity")

    attention = _explain(volume, lung, case, slice_scores, infected, decision, models, params, cls_params)
    lap("explanation")

    phenotype = None
    if params.compute_phenotype and decision.is_pneumonia:
        phenotype = compute_phenotype(volume, lung, attention, params)
    lap("phenotype")
    timings = clock.finish()

    return AnalysisResult(
        lung_mask=lung,
        slice_scores=slice_scores,
        case_scores=case,
        infected=infected,
        attention=attention,
        phenotype=phenotype,
        lung_volume_ml=lung_ml,
        model=models.info,
        decision=decision,
        domain=domain,
        timings_s=timings,
        lesion=lesion,
        lesion_pattern=pattern,
        severity=severity,
    )
